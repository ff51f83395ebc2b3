-- The new values of a batch's dispatch rows ($4, a JSON array of objects), applied only to rows
-- still leased by owner $1 with batch id $2 (the fence), at $3; returns the rows applied.
UPDATE dispatch
SET state = i.state,
    attempts = i.attempts,
    next_attempt_at = i.next,
    last_error = NULLIF(COALESCE(i.error, dispatch.last_error), ''),
    partner_id = COALESCE(i.partner, dispatch.partner_id),
    route_id = COALESCE(i.route, dispatch.route_id),
    resends = i.resends,
    sent_at = COALESCE(i.sent, dispatch.sent_at),
    ack_due_at = i.due,
    sent_partition = i.sent_partition,
    sent_offset = i.sent_offset,
    lease_owner = NULL,
    lease_expires_at = NULL,
    batch_id = NULL,
    updated_at = $3
FROM (SELECT value ->> '$.id' AS id, value ->> '$.state' AS state,
             value ->> '$.attempts' AS attempts, value ->> '$.next' AS next,
             value ->> '$.error' AS error, value ->> '$.partner' AS partner,
             value ->> '$.route' AS route, value ->> '$.resends' AS resends,
             value ->> '$.sent' AS sent, value ->> '$.due' AS due,
             value ->> '$.partition' AS sent_partition, value ->> '$.offset' AS sent_offset
      FROM json_each($4)) AS i
WHERE dispatch.order_id = i.id AND dispatch.lease_owner = $1 AND dispatch.batch_id = $2
RETURNING dispatch.order_id
