-- Leases up to $5 due rows (PENDING, or RETRYING due by $4, not under a live lease) for owner
-- $1 until $2 with batch id $3, at time $4. One guarded UPDATE: atomic by itself, which is all
-- that several dispatchers on one SQLite file need.
UPDATE dispatch SET lease_owner = $1, lease_expires_at = $2, batch_id = $3, updated_at = $4
WHERE order_id IN (
    SELECT order_id FROM dispatch
    WHERE state IN ('PENDING', 'RETRYING')
      AND next_attempt_at <= $4
      AND (lease_expires_at IS NULL OR lease_expires_at <= $4)
    ORDER BY next_attempt_at
    LIMIT $5)
RETURNING order_id
