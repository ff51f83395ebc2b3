-- Appends an accepted report to order $1's history: the event at the sequence the bump before
-- returned ($4), status $5, partner $2, report id $3, at $8 (partner's time) recorded at $9.
INSERT INTO order_status_events (order_id, seq, status, partner_id, detail, tracking_id,
                                 report_id, occurred_at, recorded_at, detail_code,
                                 action_required, needs_review)
VALUES ($1, $4, $5, $2, $6, $7, $3, $8, $9, $10, $11, $12)
