-- Leases up to $2 due rows for owner $3 until $4 with batch id $5, at time $1, and returns them
-- with what producing needs: the row's stored message (the order tables are not read). SKIP
-- LOCKED lets any number of dispatchers lease side by side: rows another transaction is leasing
-- right now are skipped, not waited for.
WITH due AS (
    SELECT order_id FROM dispatch
    WHERE state IN ('PENDING', 'RETRYING')
      AND next_attempt_at <= $1
      AND (lease_expires_at IS NULL OR lease_expires_at <= $1)
    ORDER BY next_attempt_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE dispatch d
    SET lease_owner = $3, lease_expires_at = $4, batch_id = $5, updated_at = $1
    FROM due
    WHERE d.order_id = due.order_id
    RETURNING d.order_id, d.state, d.attempts, d.resends, d.partner_id, d.traceparent, d.tracestate,
              d.message
)
SELECT l.order_id, l.state, l.attempts, l.resends, l.partner_id, l.traceparent, l.tracestate,
       l.message,
       FALSE AS acknowledged,
       -- Partners that refused the order, comma-separated: routing skips them.
       array_to_string(ARRAY(SELECT r.partner_id FROM dispatch_rejections r
                             WHERE r.order_id = l.order_id ORDER BY r.partner_id), ',')
           AS rejected_partners
FROM leased l
