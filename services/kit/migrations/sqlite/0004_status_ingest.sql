-- StatusIngest (SQLite): the replay guard for report tokens, the partner's machine-readable
-- detail on history events, the flag for reports after a final state, and the partners that
-- refused an order. Instants are INTEGER microseconds. See the Postgres migration for the why.

CREATE TABLE report_token_ids (
    partner_id TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (partner_id, jti)
);

CREATE INDEX report_token_ids_expiry ON report_token_ids (expires_at);

ALTER TABLE order_status_events ADD COLUMN detail_code TEXT NOT NULL DEFAULT '';
ALTER TABLE order_status_events ADD COLUMN action_required INTEGER NOT NULL DEFAULT 0;
ALTER TABLE order_status_events ADD COLUMN needs_review INTEGER NOT NULL DEFAULT 0;
CREATE INDEX order_status_events_needs_review ON order_status_events (recorded_at)
    WHERE needs_review = 1;

CREATE TABLE dispatch_rejections (
    order_id    TEXT NOT NULL REFERENCES orders (id),
    partner_id  TEXT NOT NULL,
    report_id   TEXT NOT NULL,
    rejected_at INTEGER NOT NULL,
    PRIMARY KEY (order_id, partner_id)
);
