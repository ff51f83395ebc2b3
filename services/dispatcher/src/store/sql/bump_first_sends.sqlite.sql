-- First successful sends ($1, a JSON array of {id, partner}), step two: the order's partner is
-- set, and an order at PLACED (or REJECTED_BY_PARTNER) moves to SENT_TO_PARTNER with its
-- sequence bumped to the event step one appended.
UPDATE orders
SET partner_id = i.partner,
    status_seq = CASE WHEN orders.status IN ('PLACED', 'REJECTED_BY_PARTNER')
                      THEN orders.status_seq + 1 ELSE orders.status_seq END,
    status = CASE WHEN orders.status IN ('PLACED', 'REJECTED_BY_PARTNER')
                  THEN 'SENT_TO_PARTNER' ELSE orders.status END
FROM (SELECT value ->> '$.id' AS id, value ->> '$.partner' AS partner FROM json_each($1)) AS i
WHERE orders.id = i.id
