-- The placing transaction's first statement: the order, unless its idempotency key exists (then
-- nothing is written). Writing first takes SQLite's write lock at once.
INSERT INTO orders (
    id, idempotency_key, request_hash,
    customer_id, customer_name, customer_email, customer_phone,
    ship_line1, ship_line2, ship_city, ship_region, ship_postal_code, ship_country_code,
    currency_code, total_minor, region, status, status_seq, placed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, 'PLACED', 1, $17)
ON CONFLICT (idempotency_key) DO NOTHING
