-- A counter that every change to partners or routes moves on, in the changing transaction (a
-- trigger, so an operator's own SQL counts too). The relay reads it with each lease, in the
-- lease's snapshot, and keeps its routing table until the counter moves: a batch no longer
-- reads both tables (two statements, each a pool round trip) to route what it leased, and a
-- change committed before a lease is always seen by that lease's batch.
CREATE TABLE routing_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT  NOT NULL
);
INSERT INTO routing_version (id, version) VALUES (1, 0);

CREATE FUNCTION routing_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE routing_version SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END;
$$;

CREATE TRIGGER partners_routing_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON partners
    FOR EACH STATEMENT EXECUTE FUNCTION routing_changed();
CREATE TRIGGER routes_routing_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON routes
    FOR EACH STATEMENT EXECUTE FUNCTION routing_changed();
