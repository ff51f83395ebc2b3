-- Sends rows back to PENDING at $1 with a fresh budget: those in $2 (a JSON array), or (with
-- $2 empty) those in state $3 (any if NULL) of partner $4 (any if NULL); only rows in a
-- retryable state ($5, a JSON array) and not under a live lease.
UPDATE dispatch
SET state = 'PENDING', attempts = 0, resends = 0, next_attempt_at = $1, ack_due_at = NULL,
    updated_at = $1
WHERE state IN (SELECT value FROM json_each($5))
  AND (lease_expires_at IS NULL OR lease_expires_at <= $1)
  AND CASE WHEN json_array_length($2) > 0 THEN order_id IN (SELECT value FROM json_each($2))
           ELSE ($3 IS NULL OR state = $3) AND ($4 IS NULL OR partner_id = $4)
      END
RETURNING order_id
