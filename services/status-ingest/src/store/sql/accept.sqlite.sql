-- An accepted report's writes as one query (one hand-off to sqlx's SQLite thread where there
-- were three), under the batch's write lock, so nothing comes in between:
--   * order $1 bumped: status $4, the next sequence after its latest event (the relay appends
--     SENT_TO_PARTNER without writing the order row), tracking id $6 recorded if $5;
--   * the event at that sequence: status $7 from partner $2, report id $3, detail $8, tracking
--     id $6, at $9 (the partner's time), recorded at $10, detail code $11, action required
--     $12, flagged for review if $13;
--   * if $14, the dispatch row to partner $2 acknowledged at $10 (the kit's
--     `dispatch_moves::ACKNOWLEDGE`, the same `SET` list);
-- and returns the new event's sequence.
UPDATE orders
SET status = $4,
    status_seq = (SELECT max(seq) FROM order_status_events WHERE order_id = $1) + 1,
    tracking_id = CASE WHEN $5 THEN $6 ELSE tracking_id END
WHERE id = $1;
INSERT INTO order_status_events (order_id, seq, status, partner_id, detail, tracking_id,
                                 report_id, occurred_at, recorded_at, detail_code,
                                 action_required, needs_review)
SELECT $1, status_seq, $7, $2, $8, $6, $3, $9, $10, $11, $12, $13
FROM orders
WHERE id = $1;
UPDATE dispatch
SET state = 'ACKNOWLEDGED', ack_due_at = NULL, lease_owner = NULL, lease_expires_at = NULL,
    batch_id = NULL, updated_at = $10
WHERE $14 AND order_id = $1 AND partner_id = $2 AND state <> 'ACKNOWLEDGED';
SELECT status_seq FROM orders WHERE id = $1
