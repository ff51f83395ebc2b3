-- Audit copies that could not be produced together with the partner copy. The partner copy's
-- outcome alone decides the order's dispatch state, so a failing audit topic never holds an
-- order back nor sends the partner a second copy; the audit copy waits here, ready to produce
-- (payload and headers as built at send time), until the audit topic takes it.
CREATE TABLE audit_outbox (
    order_id   UUID PRIMARY KEY REFERENCES orders (id),
    topic      TEXT NOT NULL,
    payload    BYTEA NOT NULL,
    -- JSON array of [name, value] pairs.
    headers    TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    due_at     TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX audit_outbox_due ON audit_outbox (due_at);
