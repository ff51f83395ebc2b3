-- The rows $1 (a JSON array) just leased with batch id $2, with what producing needs
-- (the stored message: the order tables are not read) and where the latest send landed.
-- `acknowledged`: the partner confirmed receipt (an event of that partner with a status in $3,
-- the acknowledging statuses, a JSON array); `rejected_partners`: the partners that refused the
-- order, comma-separated (partner ids have no ','): routing skips them.
SELECT d.order_id, d.state, d.attempts, d.resends, d.partner_id, d.traceparent, d.tracestate,
       d.message, d.sent_at, d.sent_partition, d.sent_offset,
       EXISTS (SELECT 1 FROM order_status_events e
               WHERE e.order_id = d.order_id
                 AND e.partner_id = d.partner_id
                 AND e.status IN (SELECT value FROM json_each($3))) AS acknowledged,
       (SELECT group_concat(r.partner_id, ',') FROM dispatch_rejections r
        WHERE r.order_id = d.order_id) AS rejected_partners,
       -- The routing tables' version (migration 0010): the relay keeps its routing table
       -- while this is unchanged.
       (SELECT version FROM routing_version WHERE id = 1) AS routing_version
FROM dispatch d
WHERE d.order_id IN (SELECT value FROM json_each($1)) AND d.batch_id = $2
