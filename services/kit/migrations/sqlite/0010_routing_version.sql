-- A counter that every change to partners or routes moves on, in the changing transaction (a
-- trigger, so an operator's own SQL counts too). The relay reads it with each lease and keeps
-- its routing table until the counter moves: a batch no longer reads both tables to route what
-- it leased, and a change committed before a lease is always seen by that lease's batch.
CREATE TABLE routing_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO routing_version (id, version) VALUES (1, 0);

CREATE TRIGGER partners_inserted AFTER INSERT ON partners
BEGIN UPDATE routing_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER partners_updated AFTER UPDATE ON partners
BEGIN UPDATE routing_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER partners_deleted AFTER DELETE ON partners
BEGIN UPDATE routing_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER routes_inserted AFTER INSERT ON routes
BEGIN UPDATE routing_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER routes_updated AFTER UPDATE ON routes
BEGIN UPDATE routing_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER routes_deleted AFTER DELETE ON routes
BEGIN UPDATE routing_version SET version = version + 1 WHERE id = 1; END;
