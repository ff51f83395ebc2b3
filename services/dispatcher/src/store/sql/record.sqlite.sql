-- A batch's record as one query (one hand-off to sqlx's SQLite thread where there were three),
-- every part of it applied only to the rows still leased by owner $1 with batch id $2 (the
-- fence), at $3. The write lock is this transaction's, so nothing comes between the fence's
-- checks and the update that clears it. Returns one row per order: ('appended', id) for each
-- SENT_TO_PARTNER event appended, ('applied', id) for each dispatch row updated.
--
-- First successful sends ($5, a JSON array of {id, partner}): a SENT_TO_PARTNER event is
-- appended to each order whose latest event is PLACED, or REJECTED_BY_PARTNER (sent to the next
-- partner), with the next sequence. An order whose history is already past that gets none. The
-- order row is not written: its status and partner are read from the history.
INSERT INTO order_status_events (order_id, seq, status, partner_id, occurred_at, recorded_at)
SELECT i.id, e.seq + 1, 'SENT_TO_PARTNER', i.partner, $3, $3
FROM (SELECT value ->> '$.id' AS id, value ->> '$.partner' AS partner FROM json_each($5)) AS i
JOIN order_status_events e
    ON e.order_id = i.id
   AND e.seq = (SELECT max(seq) FROM order_status_events WHERE order_id = i.id)
WHERE e.status IN ('PLACED', 'REJECTED_BY_PARTNER')
  AND EXISTS (SELECT 1 FROM dispatch d
              WHERE d.order_id = i.id AND d.lease_owner = $1 AND d.batch_id = $2)
RETURNING 'appended' AS kind, order_id;
-- Attempt-log entries ($6, a JSON array of {id, attempt, error, partner, topic}) under the
-- lease's owner and batch.
INSERT INTO dispatch_attempts (order_id, attempt, at, error, partner_id, topic, lease_owner,
                               batch_id)
SELECT a.value ->> '$.id', a.value ->> '$.attempt', $3, a.value ->> '$.error',
       a.value ->> '$.partner', a.value ->> '$.topic', $1, $2
FROM json_each($6) AS a
WHERE EXISTS (SELECT 1 FROM dispatch d
              WHERE d.order_id = a.value ->> '$.id' AND d.lease_owner = $1
                AND d.batch_id = $2);
-- The new values of the batch's dispatch rows ($4, a JSON array of objects), the lease cleared.
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
RETURNING 'applied' AS kind, dispatch.order_id
