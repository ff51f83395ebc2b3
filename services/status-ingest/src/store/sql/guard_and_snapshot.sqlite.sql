-- A report's replay guard and the snapshot it is decided on, as one query after the opening of
-- its savepoint (sent with it): one hand-off to sqlx's SQLite thread where there were three.
--
-- The guard: token id $5 of partner $2 kept until $6, unless already kept (the batch's first
-- guard takes the write lock). The snapshot (and the order's placing time, the start of its
-- placed → acknowledged latency): order $1's status, where it is routed, whether partner $2
-- refused it, and whether report id $3 of partner $2 exists already (TRUE: for this order,
-- FALSE: for another); `fresh`, whether the guard's insert found the token id new (`changes()`:
-- the rows the last insert wrote); whether the token's key $4 is still enrolled and when it was
-- revoked (see snapshot.pg.sql); and whether a relay batch holds the dispatch row right now
-- (its lease columns set: the order is being handed to a partner and the relay has not
-- recorded to whom yet). No row: no such order.
INSERT INTO report_token_ids (partner_id, jti, expires_at) VALUES ($2, $5, $6)
ON CONFLICT DO NOTHING;
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
       changes() = 1 AS fresh,
       EXISTS (
           SELECT 1 FROM partner_keys k WHERE k.partner_id = $2 AND k.key_id = $4
       ) AS key_enrolled,
       (
           SELECT k.revoked_at FROM partner_keys k WHERE k.partner_id = $2 AND k.key_id = $4
       ) AS key_revoked_at,
       d.lease_owner IS NOT NULL AS in_flight
FROM orders o
LEFT JOIN dispatch d ON d.order_id = o.id
WHERE o.id = $1
