-- Catalog, orders, their lines and status history, and the dispatch outbox (SQLite).
-- Ids are UUID text; instants are INTEGER microseconds since the Unix epoch.

CREATE TABLE catalog_items (
    sku              TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    unit_price_minor INTEGER NOT NULL CHECK (unit_price_minor >= 0),
    currency_code    TEXT NOT NULL CHECK (length(currency_code) = 3 AND currency_code = upper(currency_code)),
    active           INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE orders (
    id                 TEXT PRIMARY KEY,
    idempotency_key    TEXT NOT NULL,
    request_hash       BLOB NOT NULL,
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
    total_minor        INTEGER NOT NULL CHECK (total_minor >= 0),
    region             TEXT NOT NULL,
    partner_id         TEXT,
    tracking_id        TEXT,
    status             TEXT NOT NULL,
    status_seq         INTEGER NOT NULL,
    placed_at          INTEGER NOT NULL,
    CONSTRAINT orders_idempotency_key_unique UNIQUE (idempotency_key)
);

CREATE INDEX orders_by_customer ON orders (customer_id, placed_at DESC, id DESC);

CREATE TABLE order_lines (
    order_id         TEXT NOT NULL REFERENCES orders (id),
    line_no          INTEGER NOT NULL,
    sku              TEXT NOT NULL,
    name             TEXT NOT NULL,
    quantity         INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_minor INTEGER NOT NULL,
    line_total_minor INTEGER NOT NULL,
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE order_status_events (
    order_id    TEXT NOT NULL REFERENCES orders (id),
    seq         INTEGER NOT NULL,
    status      TEXT NOT NULL,
    partner_id  TEXT NOT NULL DEFAULT '',
    detail      TEXT NOT NULL DEFAULT '',
    tracking_id TEXT NOT NULL DEFAULT '',
    report_id   TEXT,
    occurred_at INTEGER NOT NULL,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (order_id, seq)
);

CREATE UNIQUE INDEX order_status_events_report_unique
    ON order_status_events (partner_id, report_id) WHERE report_id IS NOT NULL;

CREATE TABLE dispatch (
    order_id         TEXT PRIMARY KEY REFERENCES orders (id),
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    batch_id         TEXT,
    traceparent      TEXT NOT NULL DEFAULT '',
    tracestate       TEXT NOT NULL DEFAULT '',
    partner_id       TEXT,
    route_id         TEXT,
    last_error       TEXT,
    sent_at          INTEGER,
    resends          INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);

CREATE INDEX dispatch_due ON dispatch (next_attempt_at) WHERE state IN ('PENDING', 'RETRYING');
CREATE INDEX dispatch_by_state ON dispatch (state, order_id);
