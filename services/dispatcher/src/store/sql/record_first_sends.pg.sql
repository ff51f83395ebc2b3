-- First successful sends ($1 orders, $2 partners) at $3: a SENT_TO_PARTNER event is appended to
-- each order whose latest event is PLACED, or REJECTED_BY_PARTNER (sent to the next partner).
-- An order whose history is already past that (its partner reported before this record) gets
-- none: the history never holds the same step twice. The order row is not written: its status
-- and partner are read from the history. The event's sequence follows the latest one; every
-- writer of an order's history holds its dispatch row's lock (here the lease's) from before
-- reading the latest sequence until commit, so one order's events commit in sequence order.
-- Watchers in other processes are woken by NOTIFY, 200 order ids to a notification
-- (comma-separated; a payload holds at most 8,000 bytes): one per order cost the server a queue
-- entry and every listening process a wake-up per order.
WITH latest AS (
    SELECT i.order_id, i.partner_id, e.seq, e.status
    FROM UNNEST($1::uuid[], $2::text[]) AS i (order_id, partner_id)
    CROSS JOIN LATERAL (
        SELECT seq, status FROM order_status_events
        WHERE order_id = i.order_id
        ORDER BY seq DESC
        LIMIT 1
    ) AS e
), appended AS (
    INSERT INTO order_status_events (order_id, seq, status, partner_id, occurred_at, recorded_at)
    SELECT order_id, seq + 1, 'SENT_TO_PARTNER', partner_id, $3, $3 FROM latest
    WHERE status IN ('PLACED', 'REJECTED_BY_PARTNER')
    RETURNING order_id
), woken AS (
    SELECT pg_notify('waybill_order_status', string_agg(order_id::text, ','))
    FROM (SELECT order_id, (row_number() OVER () - 1) / 200 AS chunk FROM appended) AS c
    GROUP BY chunk
)
-- `woken` is read (counted) so that it runs: a plain CTE nobody reads is never evaluated.
SELECT a.order_id
FROM appended a
CROSS JOIN (SELECT count(*) FROM woken) AS wake
