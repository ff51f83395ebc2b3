-- The new values of a batch's dispatch rows, all row-locked by this transaction since the lease
-- (see `lease_due.pg.sql`): the join is on the primary key alone, so the plan is linear in the
-- batch at any table size. (With a lease filter here, the planner — which sees almost no leased
-- rows in its statistics — picks a nested loop that rescans the input once per row: quadratic
-- in the batch.)
UPDATE dispatch d
SET state = i.state,
    attempts = i.attempts,
    next_attempt_at = i.next_attempt_at,
    last_error = NULLIF(COALESCE(i.last_error, d.last_error), ''),
    partner_id = COALESCE(i.partner_id, d.partner_id),
    route_id = COALESCE(i.route_id, d.route_id),
    resends = i.resends,
    sent_at = COALESCE(i.sent_at, d.sent_at),
    ack_due_at = i.ack_due_at,
    sent_partition = i.sent_partition,
    sent_offset = i.sent_offset,
    lease_owner = NULL,
    lease_expires_at = NULL,
    batch_id = NULL,
    updated_at = $1
FROM UNNEST($2::uuid[], $3::text[], $4::int[], $5::timestamptz[], $6::text[], $7::text[],
            $8::text[], $9::int[], $10::timestamptz[], $11::timestamptz[], $12::int[],
            $13::bigint[])
    AS i (order_id, state, attempts, next_attempt_at, last_error, partner_id, route_id, resends,
          sent_at, ack_due_at, sent_partition, sent_offset)
WHERE d.order_id = i.order_id
