-- The outbox row carries its message: the order as partners receive it (an encoded
-- waybill.v1.DispatchedOrder without the per-send fields — partner, send count, reply-to,
-- region — which the relay appends), written by Orders in the placing transaction. A lease
-- returns ready bytes and never reads the order tables. NULL on rows placed before this
-- migration: the relay builds those from the order tables.
ALTER TABLE dispatch ADD COLUMN message BYTEA;
