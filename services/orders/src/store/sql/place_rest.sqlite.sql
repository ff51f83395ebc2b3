-- The rest of the placing transaction after its first statement (place_order.sqlite.sql), sent
-- together with it as one query: one hand-off to sqlx's SQLite thread instead of four. Each
-- insert happens only when the order row was just written ($1 is a fresh id, so a row with it
-- exists only then): when the idempotency key existed, nothing at all is written.
-- $18: the lines as a JSON array of {sku, name, quantity, unit_price_minor, line_total_minor},
-- numbered from 1 in their order; $19, $20: traceparent, tracestate; $21: the outbox message.
INSERT INTO order_lines
    (order_id, line_no, sku, name, quantity, unit_price_minor, line_total_minor)
SELECT $1, line.key + 1, json_extract(line.value, '$.sku'), json_extract(line.value, '$.name'),
       json_extract(line.value, '$.quantity'), json_extract(line.value, '$.unit_price_minor'),
       json_extract(line.value, '$.line_total_minor')
FROM json_each($18) AS line
WHERE EXISTS (SELECT 1 FROM orders WHERE id = $1);
INSERT INTO order_status_events (order_id, seq, status, occurred_at, recorded_at)
SELECT $1, 1, 'PLACED', $17, $17
WHERE EXISTS (SELECT 1 FROM orders WHERE id = $1);
INSERT INTO dispatch (order_id, state, next_attempt_at, traceparent, tracestate, message,
                      created_at, updated_at)
SELECT $1, 'PENDING', $17, $19, $20, $21, $17, $17
WHERE EXISTS (SELECT 1 FROM orders WHERE id = $1);
