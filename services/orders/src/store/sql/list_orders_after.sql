-- A customer's ($1) orders strictly after ($2 placed_at, $3 id), newest first, at most $4.
-- Both backends.
SELECT id, customer_id, customer_name, customer_email, customer_phone,
       ship_line1, ship_line2, ship_city, ship_region, ship_postal_code, ship_country_code,
       currency_code, total_minor, region, tracking_id, placed_at
FROM orders
WHERE customer_id = $1 AND (placed_at, id) < ($2, $3)
ORDER BY placed_at DESC, id DESC
LIMIT $4
