-- Locks up to $2 SENT rows whose handover deadline passed by $1, for the rest of the
-- transaction (as `lease_due.pg.sql`). `acknowledged` tells whether the partner confirmed
-- receipt in the meantime (an event of that partner with a status in $3, the acknowledging
-- statuses); `sent_at`, `sent_partition` and `sent_offset` where and when the latest send
-- landed (the relay asks the partner's consumer group whether it has read that far).
WITH due AS (
    SELECT order_id, state, attempts, resends, partner_id, traceparent, tracestate, message,
           sent_at, sent_partition, sent_offset
    FROM dispatch
    WHERE state = 'SENT'
      AND ack_due_at <= $1
      AND (lease_expires_at IS NULL OR lease_expires_at <= $1)
    ORDER BY ack_due_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
SELECT d.order_id, d.state, d.attempts, d.resends, d.partner_id, d.traceparent, d.tracestate,
       d.message, d.sent_at, d.sent_partition, d.sent_offset,
       -- A probe of the order's own events (the primary key's prefix) per row. Not EXISTS: the
       -- planner may run that as one hashed scan of every acknowledging event in the table.
       (SELECT TRUE FROM order_status_events e
        WHERE e.order_id = d.order_id
          AND e.partner_id = d.partner_id
          AND e.status = ANY($3)
        LIMIT 1) IS NOT NULL AS acknowledged,
       NULL::text AS rejected_partners,
       -- The routing tables' version in the lease's snapshot (migration 0010): the relay keeps
       -- its routing table while this is unchanged.
       (SELECT version FROM routing_version WHERE id = 1) AS routing_version
FROM due d
