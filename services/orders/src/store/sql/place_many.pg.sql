-- Several placings as ONE statement, atomic by itself (the group commit of `postgres.rs`): each
-- order as `place_order.pg.sql` writes it — the order, its lines, its PLACED event and its
-- PENDING dispatch row carrying its message — or nothing for an order whose idempotency key
-- exists (also when two orders of the batch share a key: the first one written keeps it).
-- Returns the ids of the orders written.
--
-- One element per order in $1-$20: id, idempotency key, request hash, customer id, name, email,
-- phone, ship-to line 1, line 2, city, region, postal code, country, currency, total, Waybill
-- region, placed at, traceparent, tracestate, outbox message. One element per line in $21-$27:
-- its order's id, line number, SKU, name, quantity, unit price, line total.
WITH input AS (
    SELECT *
    FROM UNNEST($1::uuid[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                $13::text[], $14::text[], $15::bigint[], $16::text[], $17::timestamptz[],
                $18::text[], $19::text[], $20::bytea[])
        WITH ORDINALITY
        AS i (id, idempotency_key, request_hash, customer_id, customer_name, customer_email,
              customer_phone, ship_line1, ship_line2, ship_city, ship_region, ship_postal_code,
              ship_country_code, currency_code, total_minor, region, placed_at, traceparent,
              tracestate, message, n)
), new_order AS (
    INSERT INTO orders (
        id, idempotency_key, request_hash,
        customer_id, customer_name, customer_email, customer_phone,
        ship_line1, ship_line2, ship_city, ship_region, ship_postal_code, ship_country_code,
        currency_code, total_minor, region, status, status_seq, placed_at)
    SELECT id, idempotency_key, request_hash,
           customer_id, customer_name, customer_email, customer_phone,
           ship_line1, ship_line2, ship_city, ship_region, ship_postal_code, ship_country_code,
           currency_code, total_minor, region, 'PLACED', 1, placed_at
    FROM input
    ORDER BY n
    ON CONFLICT ON CONSTRAINT orders_idempotency_key_unique DO NOTHING
    RETURNING id, placed_at
), lines AS (
    INSERT INTO order_lines (order_id, line_no, sku, name, quantity, unit_price_minor, line_total_minor)
    SELECT l.order_id, l.line_no, l.sku, l.name, l.quantity, l.unit_price_minor, l.line_total_minor
    FROM UNNEST($21::uuid[], $22::int[], $23::text[], $24::text[], $25::int[], $26::bigint[],
                $27::bigint[])
             AS l (order_id, line_no, sku, name, quantity, unit_price_minor, line_total_minor)
    JOIN new_order n ON n.id = l.order_id
), placed AS (
    INSERT INTO order_status_events (order_id, seq, status, occurred_at, recorded_at)
    SELECT id, 1, 'PLACED', placed_at, placed_at FROM new_order
), outbox AS (
    INSERT INTO dispatch (order_id, state, next_attempt_at, traceparent, tracestate, message, created_at, updated_at)
    SELECT n.id, 'PENDING', n.placed_at, i.traceparent, i.tracestate, i.message, n.placed_at, n.placed_at
    FROM new_order n
    JOIN input i ON i.id = n.id
)
-- Wakes dispatchers in other processes at commit (Postgres folds identical notifications).
SELECT new_order.id FROM new_order CROSS JOIN LATERAL (SELECT pg_notify('waybill_outbox', '')) AS wake
