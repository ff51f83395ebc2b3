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
    RETURNING d.order_id, d.state, d.attempts, d.resends, d.partner_id, d.traceparent, d.tracestate
)
SELECT l.order_id, l.state, l.attempts, l.resends, l.partner_id, l.traceparent, l.tracestate,
       o.placed_at, o.customer_id, o.customer_name, o.customer_email, o.customer_phone,
       o.ship_line1, o.ship_line2, o.ship_city, o.ship_region, o.ship_postal_code,
       o.ship_country_code, o.currency_code, o.total_minor, o.region,
       EXISTS (
           SELECT 1 FROM order_status_events e
           WHERE e.order_id = l.order_id
             AND e.partner_id = l.partner_id
             AND e.status = ANY($6)
       ) AS acknowledged,
       NULL::text AS rejected_partners
FROM leased l
JOIN orders o ON o.id = l.order_id
