-- The new values of a batch's dispatch rows, applied only where the lease is still ours
-- (owner $1, batch $2): the fence. Returns the rows it changed.
UPDATE dispatch d
SET state = i.state,
    attempts = i.attempts,
    next_attempt_at = i.next_attempt_at,
    last_error = NULLIF(COALESCE(i.last_error, d.last_error), ''),
    partner_id = COALESCE(i.partner_id, d.partner_id),
    route_id = COALESCE(i.route_id, d.route_id),
    resends = i.resends,
    sent_at = COALESCE(i.sent_at, d.sent_at),
    ack_due_at = i.ack_due_at,
    lease_owner = NULL,
    lease_expires_at = NULL,
    batch_id = NULL,
    updated_at = $3
FROM UNNEST($4::uuid[], $5::text[], $6::int[], $7::timestamptz[], $8::text[], $9::text[],
            $10::text[], $11::int[], $12::timestamptz[], $13::timestamptz[])
    AS i (order_id, state, attempts, next_attempt_at, last_error, partner_id, route_id, resends,
          sent_at, ack_due_at)
WHERE d.order_id = i.order_id
  AND d.lease_owner = $1
  AND d.batch_id = $2
RETURNING d.order_id
