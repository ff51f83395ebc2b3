-- One dispatch row ($1) with its order's amount. Both backends.
SELECT d.order_id, d.state, d.attempts, d.next_attempt_at, d.last_error, d.partner_id,
       d.route_id, d.lease_owner, d.lease_expires_at, d.sent_at, d.resends, d.ack_due_at,
       d.created_at, d.updated_at, o.currency_code, o.total_minor
FROM dispatch d JOIN orders o ON o.id = d.order_id
WHERE d.order_id = $1
