-- First successful sends ($1 orders, $2 partners) at $3: the order's partner is set and a
-- SENT_TO_PARTNER event appended (bumping status_seq row-locks the order, so its events commit
-- in sequence order). An order whose history is already past PLACED keeps its status: its seq
-- is not bumped, so the insert conflicts with its latest event and is skipped — the history
-- never holds the same event twice. A rejected order (REJECTED_BY_PARTNER) sent to the next
-- partner gets a SENT_TO_PARTNER event for that partner. Watchers in other processes are woken
-- by NOTIFY.
WITH input AS (
    SELECT * FROM UNNEST($1::uuid[], $2::text[]) AS i (order_id, partner_id)
), bumped AS (
    UPDATE orders o
    SET partner_id = i.partner_id,
        status_seq = CASE WHEN o.status IN ('PLACED', 'REJECTED_BY_PARTNER') THEN o.status_seq + 1 ELSE o.status_seq END,
        status = CASE WHEN o.status IN ('PLACED', 'REJECTED_BY_PARTNER') THEN 'SENT_TO_PARTNER' ELSE o.status END
    FROM input i
    WHERE o.id = i.order_id
    RETURNING o.id, o.status_seq, i.partner_id
), appended AS (
    INSERT INTO order_status_events (order_id, seq, status, partner_id, occurred_at, recorded_at)
    SELECT id, status_seq, 'SENT_TO_PARTNER', partner_id, $3, $3 FROM bumped
    ON CONFLICT (order_id, seq) DO NOTHING
    RETURNING order_id
)
SELECT a.order_id
FROM appended a
CROSS JOIN LATERAL (SELECT pg_notify('waybill_order_status', a.order_id::text)) AS wake
