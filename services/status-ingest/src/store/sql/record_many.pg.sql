-- Records the head of a batch in one statement, without waiting for a row lock: reports that
-- share no order, token id or report id (so no report's decision depends on another's), and
-- are not rejections (those go one at a time: the kit's dispatch_moves::REROUTE).
--
-- One element per report in $1-$12: order, partner, report id, token id, until when the token
-- id is kept, the token's key id, the reported status, tracking id, detail, the partner's time,
-- detail code, action required. $13 is the writer's time (recorded_at; the rows are locked by
-- the time it is used). $14-$19 are the effects of accepting each report ($14: its position in
-- $1, from 1) for every status the order may have now ($15): the order's status afterwards,
-- whether the tracking id is recorded, whether the handover is acknowledged, whether the event
-- is flagged for review — what decide() answers for that status, computed by the service.
--
-- Locks each order's dispatch row, then the order row (FOR NO KEY UPDATE, the lock its update
-- takes anyway), both SKIP LOCKED: a report whose rows another transaction holds is answered
-- `locked = false` and nothing is done for it (the service records it alone, waiting). For the
-- locked ones it reads what decide() needs (as snapshot.pg.sql), then:
--   * keeps the token id in the replay guard exactly when decide() answers "accept" or
--     "duplicate": the key is still enrolled and not revoked, the order is routed to the
--     reporter or the reporter refused it, and the report id was used before on this order, or
--     never and the order is routed to the reporter (`fresh`: the token id was new);
--   * accepts exactly when decide() does: the token id was new, the report id never used, the
--     order routed to the reporter; then, with the effects for the order's status, appends the
--     event after the order's latest (as append.pg.sql), updates the order, acknowledges the
--     handover (the lease cleared: a relay batch holding the row is fenced out), and wakes the
--     order's watchers with one NOTIFY naming every order it appended to, sent at commit.
-- The service decides every report again from the snapshot returned, and rolls the batch back
-- if the two ever disagree. One row per report, in input order: the snapshot (with the order's
-- placing time, the start of its placed → acknowledged latency), whether the token
-- id was taken (`taken`) or, when no attempt was made, seen before (`seen`), and the new event's
-- sequence if accepted.
WITH input AS (
    SELECT *
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[],
                $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::text[], $12::bool[])
        WITH ORDINALITY AS r (order_id, partner_id, report_id, jti, kept_until, key_id, status,
                              tracking_id, detail, occurred_at, detail_code, action_required, n)
), effect AS (
    SELECT *
    FROM unnest($14::bigint[], $15::text[], $16::text[], $17::bool[], $18::bool[], $19::bool[])
        AS e (n, current_status, order_status, record_tracking, acknowledge, needs_review)
), dispatch_row AS MATERIALIZED (
    SELECT d.order_id, d.partner_id, d.state
    FROM dispatch d
    WHERE d.order_id = ANY ($1)
    FOR UPDATE SKIP LOCKED
), order_row AS MATERIALIZED (
    SELECT o.id, o.status, o.placed_at
    FROM orders o
    WHERE o.id IN (SELECT order_id FROM dispatch_row)
    FOR NO KEY UPDATE SKIP LOCKED
), snapshot AS MATERIALIZED (
    SELECT i.*,
           x.id IS NOT NULL AS present,
           o.id IS NOT NULL AS locked,
           o.status AS current_status,
           o.placed_at,
           d.partner_id AS routed_partner,
           d.state AS dispatch_state,
           d.partner_id IS NOT DISTINCT FROM i.partner_id AS routed_now,
           r.order_id IS NOT NULL AS rejected,
           (
               SELECT e.order_id = i.order_id FROM order_status_events e
               WHERE e.partner_id = i.partner_id AND e.report_id = i.report_id
           ) AS earlier_same_order,
           k.partner_id IS NOT NULL AS key_enrolled,
           k.revoked_at AS key_revoked_at,
           t.jti IS NOT NULL AS seen
    FROM input i
    LEFT JOIN orders x ON x.id = i.order_id
    LEFT JOIN order_row o ON o.id = i.order_id
    LEFT JOIN dispatch_row d ON d.order_id = i.order_id
    LEFT JOIN partner_keys k ON k.partner_id = i.partner_id AND k.key_id = i.key_id
    LEFT JOIN dispatch_rejections r ON r.order_id = i.order_id AND r.partner_id = i.partner_id
    LEFT JOIN report_token_ids t ON t.partner_id = i.partner_id AND t.jti = i.jti
), guard AS (
    INSERT INTO report_token_ids (partner_id, jti, expires_at)
    SELECT s.partner_id, s.jti, s.kept_until
    FROM snapshot s
    WHERE s.locked AND s.key_enrolled AND s.key_revoked_at IS NULL
      AND (s.routed_now OR s.rejected)
      AND (s.earlier_same_order OR (s.earlier_same_order IS NULL AND s.routed_now))
    ON CONFLICT DO NOTHING
    RETURNING partner_id, jti
), accepted AS (
    SELECT s.order_id, s.partner_id, s.report_id, s.status, s.tracking_id, s.detail,
           s.occurred_at, s.detail_code, s.action_required, e.order_status, e.record_tracking,
           e.acknowledge, e.needs_review
    FROM snapshot s
    JOIN guard g ON g.partner_id = s.partner_id AND g.jti = s.jti
    JOIN effect e ON e.n = s.n AND e.current_status = s.current_status
    WHERE s.earlier_same_order IS NULL AND s.routed_now
), bumped AS (
    UPDATE orders o
    SET status_seq = (SELECT max(e.seq) FROM order_status_events e WHERE e.order_id = o.id) + 1,
        status = a.order_status,
        tracking_id = CASE WHEN a.record_tracking THEN a.tracking_id ELSE o.tracking_id END
    FROM accepted a
    WHERE o.id = a.order_id
    RETURNING o.id, o.status_seq
), acknowledged AS (
    UPDATE dispatch d
    SET state = 'ACKNOWLEDGED', ack_due_at = NULL, lease_owner = NULL, lease_expires_at = NULL,
        batch_id = NULL, updated_at = $13
    FROM accepted a
    WHERE a.acknowledge AND d.order_id = a.order_id AND d.partner_id = a.partner_id
      AND d.state <> 'ACKNOWLEDGED'
), event AS (
    INSERT INTO order_status_events (order_id, seq, status, partner_id, detail, tracking_id,
                                     report_id, occurred_at, recorded_at, detail_code,
                                     action_required, needs_review)
    SELECT a.order_id, b.status_seq, a.status, a.partner_id, a.detail, a.tracking_id,
           a.report_id, a.occurred_at, $13, a.detail_code, a.action_required, a.needs_review
    FROM accepted a
    JOIN bumped b ON b.id = a.order_id
    RETURNING order_id, seq
), woken AS (
    SELECT count(pg_notify('waybill_order_status', ids))
    FROM (SELECT string_agg(order_id::text, ',') AS ids FROM event) AS w
    WHERE ids IS NOT NULL
)
SELECT s.present, s.locked, s.current_status AS status, s.placed_at, s.routed_partner,
       s.dispatch_state,
       s.rejected, s.earlier_same_order, s.key_enrolled, s.key_revoked_at,
       g.jti IS NOT NULL AS taken, s.seen, ev.seq
FROM snapshot s
LEFT JOIN guard g ON g.partner_id = s.partner_id AND g.jti = s.jti
LEFT JOIN event ev ON ev.order_id = s.order_id
CROSS JOIN woken
ORDER BY s.n
