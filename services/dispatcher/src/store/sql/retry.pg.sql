-- Sends rows back to PENDING at $1 with a fresh budget: those in $2, or (with $2 empty) those
-- in state $3 (any if NULL) of partner $4 (any if NULL); only rows in a retryable state ($5)
-- and not under a live lease. One NOTIFY per transaction reaches every dispatcher (Postgres
-- folds identical ones).
WITH retried AS (
    UPDATE dispatch
    SET state = 'PENDING', attempts = 0, resends = 0, next_attempt_at = $1, ack_due_at = NULL,
        updated_at = $1
    WHERE state = ANY($5)
      AND (lease_expires_at IS NULL OR lease_expires_at <= $1)
      AND CASE WHEN cardinality($2::uuid[]) > 0 THEN order_id = ANY($2)
               ELSE ($3::text IS NULL OR state = $3) AND ($4::text IS NULL OR partner_id = $4)
          END
    RETURNING order_id
)
SELECT r.order_id FROM retried r
CROSS JOIN LATERAL (SELECT pg_notify('waybill_outbox', '')) AS wake
ORDER BY r.order_id
