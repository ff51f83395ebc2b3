-- Carries out a replay (cycle::replay) at $1: each row of $2-$6 (order, next state, attempts,
-- resends, due time) is written, the handover deadline cleared, only if the row is still in a
-- retryable state ($7) and not under a live lease: the guard checked again as it writes (a row
-- a relay's transaction holds is waited for, then checked). One NOTIFY per transaction reaches
-- every dispatcher (Postgres folds identical ones).
WITH replayed AS (
    UPDATE dispatch d
    SET state = r.state, attempts = r.attempts, resends = r.resends, next_attempt_at = r.due,
        ack_due_at = NULL, updated_at = $1
    FROM unnest($2::uuid[], $3::text[], $4::int[], $5::int[], $6::timestamptz[])
        AS r (order_id, state, attempts, resends, due)
    WHERE d.order_id = r.order_id
      AND d.state = ANY($7)
      AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= $1)
    RETURNING d.order_id
)
SELECT r.order_id FROM replayed r
CROSS JOIN LATERAL (SELECT pg_notify('waybill_outbox', '')) AS wake
ORDER BY r.order_id
