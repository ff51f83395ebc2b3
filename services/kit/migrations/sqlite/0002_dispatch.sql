-- The dispatcher's tables (SQLite): partners, their signing keys, routes, the attempt log; plus
-- the columns the relay needs on the shared tables. Instants are INTEGER microseconds.

CREATE TABLE partners (
    id                   TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 63 AND id NOT GLOB '*[^a-z0-9-]*' AND id NOT GLOB '-*'),
    display_name         TEXT NOT NULL,
    enabled              INTEGER NOT NULL,
    handover_deadline_ms INTEGER NOT NULL CHECK (handover_deadline_ms > 0),
    resend_budget        INTEGER NOT NULL CHECK (resend_budget >= 0),
    topic                TEXT NOT NULL,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
);

CREATE TABLE partner_keys (
    partner_id TEXT NOT NULL REFERENCES partners (id),
    key_id     TEXT NOT NULL,
    public_key BLOB NOT NULL CHECK (length(public_key) = 32),
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    PRIMARY KEY (partner_id, key_id)
);

CREATE TABLE routes (
    id            TEXT PRIMARY KEY,
    partner_id    TEXT NOT NULL REFERENCES partners (id),
    country_code  TEXT NOT NULL CHECK (length(country_code) = 2 AND country_code = upper(country_code)),
    region        TEXT NOT NULL DEFAULT '',
    postal_prefix TEXT NOT NULL DEFAULT '',
    priority      INTEGER NOT NULL,
    enabled       INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE dispatch_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id    TEXT NOT NULL REFERENCES orders (id),
    attempt     INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    error       TEXT NOT NULL DEFAULT '',
    partner_id  TEXT NOT NULL DEFAULT '',
    topic       TEXT NOT NULL DEFAULT '',
    lease_owner TEXT NOT NULL,
    batch_id    TEXT NOT NULL
);

CREATE INDEX dispatch_attempts_by_order ON dispatch_attempts (order_id, id);

ALTER TABLE dispatch ADD COLUMN ack_due_at INTEGER;
CREATE INDEX dispatch_handover_due ON dispatch (ack_due_at) WHERE state = 'SENT';

ALTER TABLE order_status_events ADD COLUMN published_at INTEGER;
CREATE INDEX order_status_events_unpublished ON order_status_events (recorded_at)
    WHERE published_at IS NULL;
