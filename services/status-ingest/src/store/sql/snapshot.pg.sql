-- The snapshot a report is decided on (and the order's placing time, the start of its placed →
-- acknowledged latency), in one round trip: takes the token id into the replay
-- guard ($4 for partner $2, kept until $5; `fresh` says whether it was new), locks order $1 (so
-- one order's reports append in sequence order), and reads its status, where it is routed,
-- whether partner $2 refused it, whether report id $3 of partner $2 exists already (TRUE:
-- for this order, FALSE: for another), and whether the token's key $6 is still enrolled and
-- when it was revoked (the service verifies with keys it remembers: revocation is checked here,
-- where it counts). No row: the order does not exist.
WITH guard AS (
    INSERT INTO report_token_ids (partner_id, jti, expires_at)
    VALUES ($2, $4, $5)
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT o.status,
       o.placed_at,
       d.partner_id AS routed_partner,
       d.state AS dispatch_state,
       EXISTS (
           SELECT 1 FROM dispatch_rejections r WHERE r.order_id = o.id AND r.partner_id = $2
       ) AS rejected,
       (
           SELECT e.order_id = o.id FROM order_status_events e
           WHERE e.partner_id = $2 AND e.report_id = $3
       ) AS earlier_same_order,
       EXISTS (SELECT 1 FROM guard) AS fresh,
       EXISTS (
           SELECT 1 FROM partner_keys k WHERE k.partner_id = $2 AND k.key_id = $6
       ) AS key_enrolled,
       (
           SELECT k.revoked_at FROM partner_keys k WHERE k.partner_id = $2 AND k.key_id = $6
       ) AS key_revoked_at
FROM orders o
LEFT JOIN dispatch d ON d.order_id = o.id
WHERE o.id = $1
FOR UPDATE OF o
