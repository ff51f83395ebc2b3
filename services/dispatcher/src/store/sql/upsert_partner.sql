-- Creates or updates partner $1 at $7 (its created_at is kept on update). Both backends.
INSERT INTO partners (id, display_name, enabled, handover_deadline_ms, resend_budget, topic,
                      created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
ON CONFLICT (id) DO UPDATE SET
    display_name = excluded.display_name,
    enabled = excluded.enabled,
    handover_deadline_ms = excluded.handover_deadline_ms,
    resend_budget = excluded.resend_budget,
    topic = excluded.topic,
    updated_at = excluded.updated_at
RETURNING id, display_name, enabled, handover_deadline_ms, resend_budget, topic, created_at,
          updated_at
