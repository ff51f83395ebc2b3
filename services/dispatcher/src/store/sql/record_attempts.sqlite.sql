-- Attempt-log entries at $1 under lease owner $2 and batch $3: $4, a JSON array of
-- {id, attempt, error, partner, topic}.
INSERT INTO dispatch_attempts (order_id, attempt, at, error, partner_id, topic, lease_owner,
                               batch_id)
SELECT value ->> '$.id', value ->> '$.attempt', $1, value ->> '$.error', value ->> '$.partner',
       value ->> '$.topic', $2, $3
FROM json_each($4)
