-- The dispatcher's tables: partners, their signing keys, routes, the attempt log; plus the
-- columns the relay needs on the shared tables. Times come from the services' clock.

CREATE TABLE partners (
    -- Lower-case letters, digits and '-': it names the partner's topic.
    id                   TEXT PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    display_name         TEXT NOT NULL,
    enabled              BOOLEAN NOT NULL,
    -- How long the partner has to confirm receipt (RECEIVED_BY_PARTNER) after a send.
    handover_deadline_ms BIGINT NOT NULL CHECK (handover_deadline_ms > 0),
    -- How many times an unconfirmed order is sent again before it is flagged UNACKNOWLEDGED.
    resend_budget        INTEGER NOT NULL CHECK (resend_budget >= 0),
    topic                TEXT NOT NULL,
    created_at           TIMESTAMPTZ NOT NULL,
    updated_at           TIMESTAMPTZ NOT NULL
);

-- Ed25519 public keys partners sign status reports with (read by StatusIngest).
CREATE TABLE partner_keys (
    partner_id TEXT NOT NULL REFERENCES partners (id),
    key_id     TEXT NOT NULL,
    public_key BYTEA NOT NULL CHECK (length(public_key) = 32),
    created_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ,
    PRIMARY KEY (partner_id, key_id)
);

-- Destination → partner. Among enabled routes of enabled partners that match, the lowest
-- priority wins; ties go to the more specific route, then to the smaller id.
CREATE TABLE routes (
    id            TEXT PRIMARY KEY,
    partner_id    TEXT NOT NULL REFERENCES partners (id),
    country_code  TEXT NOT NULL CHECK (country_code ~ '^[A-Z]{2}$'),
    region        TEXT NOT NULL DEFAULT '',
    postal_prefix TEXT NOT NULL DEFAULT '',
    priority      INTEGER NOT NULL,
    enabled       BOOLEAN NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);

-- Every send, resend and failure of an order, for operators (GetDispatch).
CREATE TABLE dispatch_attempts (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id    UUID NOT NULL REFERENCES orders (id),
    attempt     INTEGER NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    -- Empty for a successful send.
    error       TEXT NOT NULL DEFAULT '',
    partner_id  TEXT NOT NULL DEFAULT '',
    topic       TEXT NOT NULL DEFAULT '',
    lease_owner TEXT NOT NULL,
    batch_id    UUID NOT NULL
);

CREATE INDEX dispatch_attempts_by_order ON dispatch_attempts (order_id, id);

-- When a SENT order must have been confirmed by its partner (sent time + partner deadline).
ALTER TABLE dispatch ADD COLUMN ack_due_at TIMESTAMPTZ;
CREATE INDEX dispatch_handover_due ON dispatch (ack_due_at) WHERE state = 'SENT';

-- The order-events topic relays every history event; NULL means not yet published. The
-- column's default makes every writer's events pending without changes to the writers.
ALTER TABLE order_status_events ADD COLUMN published_at TIMESTAMPTZ;
CREATE INDEX order_status_events_unpublished ON order_status_events (recorded_at)
    WHERE published_at IS NULL;
