-- One order ($1). Both backends.
SELECT id, customer_id, customer_name, customer_email, customer_phone,
       ship_line1, ship_line2, ship_city, ship_region, ship_postal_code, ship_country_code,
       currency_code, total_minor, region, tracking_id, placed_at
FROM orders
WHERE id = $1
