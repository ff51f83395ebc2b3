-- Up to $1 history events written before migration 0006 (no transaction id) and not yet on the
-- order-events topic, oldest first, with their order's routing fields. The row locks are held
-- until the batch commits (or rolls back): another dispatcher skips these events instead of
-- publishing them twice. Newer events are walked by the cursor (walk_events.pg.sql).
SELECT e.order_id, e.seq, e.status, e.partner_id, e.detail, e.tracking_id, e.occurred_at,
       e.recorded_at, e.detail_code, e.action_required, e.needs_review,
       o.customer_id, o.customer_email, o.region
FROM order_status_events e JOIN orders o ON o.id = e.order_id
WHERE e.published_at IS NULL AND e.xid IS NULL
ORDER BY e.recorded_at, e.order_id, e.seq
LIMIT $1
FOR UPDATE OF e SKIP LOCKED
