-- A rejection by partner $2 at $3: the dispatch row of order $1 goes back to PENDING for
-- routing with a fresh budget, partner and route cleared, note $4 for operators. Both backends.
UPDATE dispatch
SET state = 'PENDING', partner_id = NULL, route_id = NULL, attempts = 0, resends = 0,
    next_attempt_at = $3, ack_due_at = NULL, sent_at = NULL, last_error = $4,
    lease_owner = NULL, lease_expires_at = NULL, batch_id = NULL, updated_at = $3
WHERE order_id = $1 AND partner_id = $2
