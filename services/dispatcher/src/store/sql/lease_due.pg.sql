-- Locks up to $2 due rows at time $1 for the rest of the transaction and returns them with what
-- producing needs: the row's stored message (the order tables are not read). Nothing is
-- written: the lock is the lease, held until the batch's bookkeeping commits (see postgres.rs).
-- SKIP LOCKED lets any number of dispatchers lease side by side: rows another transaction holds
-- are skipped, not waited for. A lease written into the row (by SQLite's model, or by a
-- dispatcher of an earlier release during an upgrade) is respected until it expires.
WITH due AS (
    SELECT order_id, state, attempts, resends, partner_id, traceparent, tracestate, message,
           sent_at, sent_partition, sent_offset
    FROM dispatch
    WHERE state IN ('PENDING', 'RETRYING')
      AND next_attempt_at <= $1
      AND (lease_expires_at IS NULL OR lease_expires_at <= $1)
    ORDER BY next_attempt_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
SELECT d.order_id, d.state, d.attempts, d.resends, d.partner_id, d.traceparent, d.tracestate,
       d.message, d.sent_at, d.sent_partition, d.sent_offset,
       FALSE AS acknowledged,
       -- Partners that refused the order, comma-separated: routing skips them.
       array_to_string(ARRAY(SELECT r.partner_id FROM dispatch_rejections r
                             WHERE r.order_id = d.order_id ORDER BY r.partner_id), ',')
           AS rejected_partners,
       -- The routing tables' version in the lease's snapshot (migration 0010): the relay keeps
       -- its routing table while this is unchanged.
       (SELECT version FROM routing_version WHERE id = 1) AS routing_version
FROM due d
