-- Attempt-log entries at $1 under lease owner $2 and batch $3: orders $4, attempt numbers $5,
-- errors $6, partners $7, topics $8.
INSERT INTO dispatch_attempts (order_id, attempt, at, error, partner_id, topic, lease_owner,
                               batch_id)
SELECT i.order_id, i.attempt, $1, i.error, i.partner_id, i.topic, $2, $3
FROM UNNEST($4::uuid[], $5::int[], $6::text[], $7::text[], $8::text[])
    AS i (order_id, attempt, error, partner_id, topic)
