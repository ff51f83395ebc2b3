-- Dispatch rows in state $1 (any if NULL) of partner $2 (any if NULL) after id $3, by id, at
-- most $4.
SELECT d.order_id, d.state, d.attempts, d.next_attempt_at, d.last_error, d.partner_id,
       d.route_id, d.lease_owner, d.lease_expires_at, d.sent_at, d.resends, d.ack_due_at,
       d.created_at, d.updated_at, o.currency_code, o.total_minor
FROM dispatch d JOIN orders o ON o.id = d.order_id
WHERE ($1::text IS NULL OR d.state = $1) AND ($2::text IS NULL OR d.partner_id = $2)
  AND ($3::uuid IS NULL OR d.order_id > $3)
ORDER BY d.order_id
LIMIT $4
