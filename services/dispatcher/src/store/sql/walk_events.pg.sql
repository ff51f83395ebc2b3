-- Up to $5 events after the cursor ($1 xid, $2 order, $3 seq) written by transactions that
-- have ended (xid below the watermark $4), in (xid, order_id, seq) order, with their order's
-- routing fields. Events already marked published (by a tool that wrote them so) are returned
-- too, flagged, so the cursor moves past them.
SELECT e.order_id, e.seq, e.status, e.partner_id, e.detail, e.tracking_id, e.occurred_at,
       e.recorded_at, e.detail_code, e.action_required, e.needs_review,
       o.customer_id, o.customer_email, o.region,
       e.xid::text AS xid, e.published_at IS NOT NULL AS published
FROM order_status_events e JOIN orders o ON o.id = e.order_id
WHERE e.xid IS NOT NULL
  AND (e.xid, e.order_id, e.seq) > ($1::xid8, $2::uuid, $3::bigint)
  AND e.xid < $4::xid8
ORDER BY e.xid, e.order_id, e.seq
LIMIT $5
