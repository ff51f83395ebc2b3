-- Carries out a replay (cycle::replay) at $1: each row of $2 (a JSON array of {id, state,
-- attempts, resends, due}) is written, the handover deadline cleared, only if the row is still
-- in a retryable state ($3, a JSON array) and not under a live lease: the guard checked again
-- as it writes.
UPDATE dispatch
SET state = r.state, attempts = r.attempts, resends = r.resends, next_attempt_at = r.due,
    ack_due_at = NULL, updated_at = $1
FROM (SELECT value ->> '$.id' AS id, value ->> '$.state' AS state,
             value ->> '$.attempts' AS attempts, value ->> '$.resends' AS resends,
             value ->> '$.due' AS due
      FROM json_each($2)) AS r
WHERE dispatch.order_id = r.id
  AND dispatch.state IN (SELECT value FROM json_each($3))
  AND (dispatch.lease_expires_at IS NULL OR dispatch.lease_expires_at <= $1)
RETURNING order_id
