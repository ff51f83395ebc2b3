-- First successful sends ($1, a JSON array of {id, partner}) at $2, step one: a SENT_TO_PARTNER
-- event for each order whose history is at PLACED (or REJECTED_BY_PARTNER: sent to the next
-- partner), read before the bump of step two; the write lock is already this transaction's, so
-- nothing comes between them.
INSERT INTO order_status_events (order_id, seq, status, partner_id, occurred_at, recorded_at)
SELECT o.id, o.status_seq + 1, 'SENT_TO_PARTNER', i.partner, $2, $2
FROM orders o
JOIN (SELECT value ->> '$.id' AS id, value ->> '$.partner' AS partner FROM json_each($1)) AS i
    ON o.id = i.id
WHERE o.status IN ('PLACED', 'REJECTED_BY_PARTNER')
RETURNING order_id
