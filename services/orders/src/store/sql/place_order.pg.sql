-- The whole placing transaction as ONE statement: one round trip, atomic by itself.
-- If the idempotency key exists, nothing is written and no row is returned. The outbox row
-- carries its message ($26: the encoded order as partners receive it, see `outbox_message`).
WITH new_order AS (
    INSERT INTO orders (
        id, idempotency_key, request_hash,
        customer_id, customer_name, customer_email, customer_phone,
        ship_line1, ship_line2, ship_city, ship_region, ship_postal_code, ship_country_code,
        currency_code, total_minor, region, status, status_seq, placed_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, 'PLACED', 1, $17)
    ON CONFLICT ON CONSTRAINT orders_idempotency_key_unique DO NOTHING
    RETURNING id, placed_at
), lines AS (
    INSERT INTO order_lines (order_id, line_no, sku, name, quantity, unit_price_minor, line_total_minor)
    SELECT new_order.id, l.line_no, l.sku, l.name, l.quantity, l.unit_price_minor, l.line_total_minor
    FROM new_order,
         UNNEST($18::int[], $19::text[], $20::text[], $21::int[], $22::bigint[], $23::bigint[])
             AS l (line_no, sku, name, quantity, unit_price_minor, line_total_minor)
), placed AS (
    INSERT INTO order_status_events (order_id, seq, status, occurred_at, recorded_at)
    SELECT id, 1, 'PLACED', placed_at, placed_at FROM new_order
), outbox AS (
    INSERT INTO dispatch (order_id, state, next_attempt_at, traceparent, tracestate, message, created_at, updated_at)
    SELECT id, 'PENDING', placed_at, $24, $25, $26, placed_at, placed_at FROM new_order
)
-- Wakes dispatchers in other processes at commit (Postgres folds identical notifications).
SELECT new_order.id FROM new_order CROSS JOIN LATERAL (SELECT pg_notify('waybill_outbox', '')) AS wake
