-- First successful sends ($1, a JSON array of {id, partner}) at $2: a SENT_TO_PARTNER event is
-- appended to each order whose latest event is PLACED, or REJECTED_BY_PARTNER (sent to the next
-- partner), with the next sequence. An order whose history is already past that gets none. The
-- order row is not written: its status and partner are read from the history. The write lock
-- is this transaction's, so nothing comes between reading the latest event and appending.
INSERT INTO order_status_events (order_id, seq, status, partner_id, occurred_at, recorded_at)
SELECT i.id, e.seq + 1, 'SENT_TO_PARTNER', i.partner, $2, $2
FROM (SELECT value ->> '$.id' AS id, value ->> '$.partner' AS partner FROM json_each($1)) AS i
JOIN order_status_events e
    ON e.order_id = i.id
   AND e.seq = (SELECT max(seq) FROM order_status_events WHERE order_id = i.id)
WHERE e.status IN ('PLACED', 'REJECTED_BY_PARTNER')
RETURNING order_id
