-- The snapshot a report is decided on inside a batch (with the order's placing time, as
-- snapshot.pg.sql), in one round trip and without waiting for
-- a row lock: locks order $1's dispatch row, then the order row, both NOWAIT (if another
-- transaction holds either, the statement fails with lock_not_available and the report is left
-- out of the batch, to be recorded in a transaction of its own that waits: see snapshot.pg.sql),
-- takes the token id into the replay guard ($4 for partner $2, kept until $5; `fresh` says
-- whether it was new), and reads the order's status, where it is routed (from the locked row),
-- whether partner $2 refused it, whether report id $3 of partner $2 exists already (TRUE:
-- for this order, FALSE: for another), and the state of the token's key $6 (as
-- snapshot.pg.sql). No row: the order does not exist.
--
-- The dispatch row is locked in the CTE, which the join reads before the order row reaches the
-- locking step: dispatch row first, then order, as every writer of an order's history locks
-- them. The order is locked FOR NO KEY UPDATE, the lock its update takes anyway: it does not
-- conflict with the key-share locks of rows inserted referring to the order.
WITH dispatch_row AS MATERIALIZED (
    SELECT d.order_id, d.partner_id, d.state
    FROM dispatch d
    WHERE d.order_id = $1
    FOR UPDATE NOWAIT
), guard AS (
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
LEFT JOIN dispatch_row d ON d.order_id = o.id
WHERE o.id = $1
FOR NO KEY UPDATE OF o NOWAIT
