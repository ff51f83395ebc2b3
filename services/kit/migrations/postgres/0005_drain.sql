-- The outbox row carries its message: the order as partners receive it (an encoded
-- waybill.v1.DispatchedOrder without the per-send fields — partner, send count, reply-to,
-- region — which the relay appends), written by Orders in the placing transaction. A lease
-- returns ready bytes and never reads the order tables. NULL on rows placed before this
-- migration: the relay builds those from the order tables.
ALTER TABLE dispatch ADD COLUMN message BYTEA;

-- Unpublished history events are claimed oldest first in (recorded_at, order_id, seq) order: an
-- index in exactly that order lets a claim read just its batch. On recorded_at alone, every
-- claim sorted the whole unpublished backlog (250 ms per claim of 500 at 80,000 pending, so
-- publishing a backlog took time quadratic in its size).
DROP INDEX order_status_events_unpublished;
CREATE INDEX order_status_events_unpublished ON order_status_events (recorded_at, order_id, seq)
    WHERE published_at IS NULL;

-- No schema change, a change of meaning: the relay no longer writes the order row when it sends.
-- An order's status and partner are read from its history. orders.status and status_seq are
-- the latest report's (StatusIngest's, for its own decisions), and orders.partner_id is no
-- longer kept. Every writer of an order's history numbers its event after the latest one while
-- holding the order's dispatch row lock (not the order row's, as 0001 says), so one order's
-- events still commit in sequence order.
