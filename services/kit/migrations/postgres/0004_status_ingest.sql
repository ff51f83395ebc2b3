-- StatusIngest: the replay guard for report tokens, the partner's machine-readable detail on
-- history events, the flag for reports that arrived after a final state, and the partners that
-- refused an order (the relay's routing skips them). Times come from the services' clock.

-- Report-token ids (jti) seen per partner, kept until the token could no longer be accepted
-- anyway (its exp plus the allowed clock skew), then deleted by StatusIngest. Being in the
-- database, the guard holds across restarts and across any number of StatusIngest instances.
CREATE TABLE report_token_ids (
    partner_id TEXT NOT NULL,
    jti        TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (partner_id, jti)
);

CREATE INDEX report_token_ids_expiry ON report_token_ids (expires_at);

-- Partner reports only: a machine-readable reason ('ADDRESS_NOT_FOUND', '' when none), whether
-- someone must act, and whether the report came after the order reached a final state
-- (DELIVERED): such a report is kept for operators but changes nothing on the order.
ALTER TABLE order_status_events ADD COLUMN detail_code TEXT NOT NULL DEFAULT '';
ALTER TABLE order_status_events ADD COLUMN action_required BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE order_status_events ADD COLUMN needs_review BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX order_status_events_needs_review ON order_status_events (recorded_at)
    WHERE needs_review;

-- Partners that refused an order (REJECTED_BY_PARTNER). StatusIngest writes a row and puts the
-- dispatch row back to PENDING (partner and route cleared); routing must then pick the next
-- matching route whose partner has no row here for the order, or leave the order UNROUTABLE.
CREATE TABLE dispatch_rejections (
    order_id    UUID NOT NULL REFERENCES orders (id),
    partner_id  TEXT NOT NULL,
    report_id   TEXT NOT NULL,
    rejected_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (order_id, partner_id)
);
