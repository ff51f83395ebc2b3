-- Appends an accepted report to order $1's history and updates the order, in one statement:
-- the event's sequence follows the latest event's (the relay appends SENT_TO_PARTNER without
-- writing the order row); the dispatch row, locked first by this transaction as by every
-- writer of an order's history, keeps another append out until commit, so events commit in
-- sequence order; the status becomes $4; the tracking id becomes $6 if $5; if $14, the dispatch
-- row is marked ACKNOWLEDGED (handover done: ack_due_at cleared, and the lease too, which fences
-- out a relay batch holding the row so a re-send in flight cannot put it back to SENT). The
-- order's partner is not kept on its row (it is read from the history). $10 is the writer's
-- time once the rows are locked (recorded_at). Watchers are woken by the NOTIFY the
-- transaction sends before it commits (one for a whole batch). Returns the new event's
-- sequence.
WITH bumped AS (
    UPDATE orders
    SET status_seq = (SELECT max(seq) FROM order_status_events WHERE order_id = $1) + 1,
        status = $4,
        tracking_id = CASE WHEN $5 THEN $6 ELSE tracking_id END
    WHERE id = $1
    RETURNING id, status_seq
), acknowledged AS (
    UPDATE dispatch
    SET state = 'ACKNOWLEDGED', ack_due_at = NULL, lease_owner = NULL, lease_expires_at = NULL,
        batch_id = NULL, updated_at = $10
    WHERE $14 AND order_id = $1 AND partner_id = $2 AND state <> 'ACKNOWLEDGED'
), event AS (
    INSERT INTO order_status_events (order_id, seq, status, partner_id, detail, tracking_id,
                                     report_id, occurred_at, recorded_at, detail_code,
                                     action_required, needs_review)
    SELECT id, status_seq, $7, $2, $8, $6, $3, $9, $10, $11, $12, $13 FROM bumped
    RETURNING order_id, seq
)
SELECT seq FROM event
