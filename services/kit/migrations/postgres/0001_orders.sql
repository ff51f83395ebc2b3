-- Catalog, orders, their lines and status history, and the dispatch outbox.
-- Times come from the services' clock, never from now(), so tests can control them.

CREATE TABLE catalog_items (
    sku              TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    unit_price_minor BIGINT NOT NULL CHECK (unit_price_minor >= 0),
    currency_code    TEXT NOT NULL CHECK (currency_code ~ '^[A-Z]{3}$'),
    active           BOOLEAN NOT NULL DEFAULT TRUE
);

CREATE TABLE orders (
    id                 UUID PRIMARY KEY,
    idempotency_key    TEXT NOT NULL,
    -- SHA-256 of the canonical request: tells a replay from a conflicting reuse of the key.
    request_hash       BYTEA NOT NULL,
    customer_id        TEXT NOT NULL,
    customer_name      TEXT NOT NULL,
    customer_email     TEXT NOT NULL,
    customer_phone     TEXT NOT NULL,
    ship_line1         TEXT NOT NULL,
    ship_line2         TEXT NOT NULL,
    ship_city          TEXT NOT NULL,
    ship_region        TEXT NOT NULL,
    ship_postal_code   TEXT NOT NULL,
    ship_country_code  TEXT NOT NULL,
    currency_code      TEXT NOT NULL,
    total_minor        BIGINT NOT NULL CHECK (total_minor >= 0),
    region             TEXT NOT NULL,
    partner_id         TEXT,
    tracking_id        TEXT,
    -- Current status and the sequence of the latest history event. Every append bumps
    -- status_seq with an UPDATE, which row-locks the order until commit: appends to one order
    -- commit in sequence order, so a reader resuming "after sequence N" never skips one.
    status             TEXT NOT NULL,
    status_seq         BIGINT NOT NULL,
    placed_at          TIMESTAMPTZ NOT NULL,
    CONSTRAINT orders_idempotency_key_unique UNIQUE (idempotency_key)
);

CREATE INDEX orders_by_customer ON orders (customer_id, placed_at DESC, id DESC);

CREATE TABLE order_lines (
    order_id         UUID NOT NULL REFERENCES orders (id),
    line_no          INTEGER NOT NULL,
    sku              TEXT NOT NULL,
    name             TEXT NOT NULL,
    quantity         INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_minor BIGINT NOT NULL,
    line_total_minor BIGINT NOT NULL,
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE order_status_events (
    order_id    UUID NOT NULL REFERENCES orders (id),
    seq         BIGINT NOT NULL,
    status      TEXT NOT NULL,
    partner_id  TEXT NOT NULL DEFAULT '',
    detail      TEXT NOT NULL DEFAULT '',
    tracking_id TEXT NOT NULL DEFAULT '',
    -- The partner's report id, for de-duplicating repeated reports.
    report_id   TEXT,
    occurred_at TIMESTAMPTZ NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (order_id, seq)
);

CREATE UNIQUE INDEX order_status_events_report_unique
    ON order_status_events (partner_id, report_id) WHERE report_id IS NOT NULL;

-- The transactional outbox: one row per order, written in the placing transaction.
CREATE TABLE dispatch (
    order_id         UUID PRIMARY KEY REFERENCES orders (id),
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    lease_owner      TEXT,
    lease_expires_at TIMESTAMPTZ,
    batch_id         UUID,
    -- W3C trace context of the placing request, so the relay continues the same trace.
    traceparent      TEXT NOT NULL DEFAULT '',
    tracestate       TEXT NOT NULL DEFAULT '',
    partner_id       TEXT,
    route_id         TEXT,
    last_error       TEXT,
    sent_at          TIMESTAMPTZ,
    resends          INTEGER NOT NULL DEFAULT 0,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);

CREATE INDEX dispatch_due ON dispatch (next_attempt_at) WHERE state IN ('PENDING', 'RETRYING');
CREATE INDEX dispatch_by_state ON dispatch (state, order_id);
