-- Keeps an audit copy ($1 order) in the audit outbox, ready to produce, created at $8. Both
-- backends.
INSERT INTO audit_outbox (order_id, topic, payload, headers, attempts, last_error, due_at,
                          created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (order_id) DO UPDATE SET
    topic = excluded.topic,
    payload = excluded.payload,
    headers = excluded.headers,
    attempts = excluded.attempts,
    last_error = excluded.last_error,
    due_at = excluded.due_at
