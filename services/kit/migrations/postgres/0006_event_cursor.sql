-- History events are published by a cursor over transaction ids instead of being marked one by
-- one. Marking took two writes per event (the claim's row lock and `published_at`, a new tuple
-- and index entries): twice per order, the largest share of the relay's database work.
--
-- Every event now records the id of the transaction that wrote it (`xid`, filled by default).
-- The publisher walks events in (xid, order_id, seq) order after its cursor, and only up to the
-- oldest transaction still running anywhere (`pg_snapshot_xmin(pg_current_snapshot())`): every
-- transaction below that has ended, and none that starts later gets a smaller id, so nothing
-- can ever appear behind the cursor. Publishing a batch is a read and one cursor update.
--
-- A transaction left open holds publishing back (never dispatching) until it ends; Postgres's
-- idle_in_transaction_session_timeout bounds that.
ALTER TABLE order_status_events ADD COLUMN xid XID8;
-- Set apart from ADD COLUMN so existing rows stay NULL (not this migration's id) and the table
-- is not rewritten.
ALTER TABLE order_status_events ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
CREATE INDEX order_status_events_by_xid ON order_status_events (xid, order_id, seq)
    WHERE xid IS NOT NULL;

-- Events written before this migration (no xid) are still claimed and marked the old way; this
-- index holds only those not yet published, so it empties and stays empty.
DROP INDEX order_status_events_unpublished;
CREATE INDEX order_status_events_unpublished ON order_status_events (recorded_at, order_id, seq)
    WHERE published_at IS NULL AND xid IS NULL;

-- The publisher's cursor: one row. Its row lock is the publishing lease, so one dispatcher
-- publishes at a time and the others skip (publishing is a read, it needs no more).
CREATE TABLE event_cursor (
    id BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    xid XID8 NOT NULL,
    order_id UUID NOT NULL,
    seq BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
INSERT INTO event_cursor (xid, order_id, seq, updated_at)
VALUES ('0', '00000000-0000-0000-0000-000000000000', 0, now());
