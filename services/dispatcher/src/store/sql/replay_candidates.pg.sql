-- The rows a replay may take at $1 (the guard of cycle::replay): those in $2, or (with $2
-- empty) those in state $3 (any if NULL) of partner $4 (any if NULL); only rows in a retryable
-- state ($5) and not under a live lease. The oldest first (created_at, then id), at most $6,
-- each with how many match in all (`matched`, counted before the limit).
SELECT order_id, count(*) OVER () AS matched
FROM dispatch
WHERE state = ANY($5)
  AND (lease_expires_at IS NULL OR lease_expires_at <= $1)
  AND CASE WHEN cardinality($2::uuid[]) > 0 THEN order_id = ANY($2)
           ELSE ($3::text IS NULL OR state = $3) AND ($4::text IS NULL OR partner_id = $4)
      END
ORDER BY created_at, order_id
LIMIT $6
