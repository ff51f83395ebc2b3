-- Where the orders created since $1 ship to (their dispatch rows', any state), counted per
-- destination as routing sees it (country, region, postal code) and the partners that refused
-- the order (comma-separated, ordered: routing skips them). The busiest first, at most $2.
-- Read by a routing change's impact (domain/route_change.rs), an operator's call: a scan of
-- the dispatch rows of the last day.
SELECT o.ship_country_code AS country_code, o.ship_region AS region,
       o.ship_postal_code AS postal_code, d.rejected_partners, count(*) AS orders
FROM (SELECT dispatch.order_id,
             array_to_string(ARRAY(SELECT r.partner_id FROM dispatch_rejections r
                                   WHERE r.order_id = dispatch.order_id
                                   ORDER BY r.partner_id), ',') AS rejected_partners
      FROM dispatch
      WHERE dispatch.created_at >= $1) AS d
JOIN orders o ON o.id = d.order_id
GROUP BY o.ship_country_code, o.ship_region, o.ship_postal_code, d.rejected_partners
ORDER BY orders DESC, country_code, region, postal_code, d.rejected_partners
LIMIT $2
