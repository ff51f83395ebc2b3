-- Leases up to $2 SENT rows whose handover deadline passed by $1, for owner $3 until $4 with
-- batch id $5. `acknowledged` tells whether the partner confirmed receipt in the meantime (an
-- event of that partner with a status in $6, the acknowledging statuses).
WITH due AS (
    SELECT order_id FROM dispatch
    WHERE state = 'SENT'
      AND ack_due_at <= $1
      AND (lease_expires_at IS NULL OR lease_expires_at <= $1)
    ORDER BY ack_due_at
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
       -- A probe of the order's own events (the primary key's prefix) per row. Not EXISTS: the
       -- planner may run that as one hashed scan of every acknowledging event in the table.
       (SELECT TRUE FROM order_status_events e
        WHERE e.order_id = l.order_id
          AND e.partner_id = l.partner_id
          AND e.status = ANY($6)
        LIMIT 1) IS NOT NULL AS acknowledged,
       NULL::text AS rejected_partners
FROM leased l
