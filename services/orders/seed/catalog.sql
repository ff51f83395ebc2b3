-- Sample catalog for `waybill dev`, `waybill demo`, benchmarks and tests. Idempotent.
-- Prices in minor units (cents).
INSERT INTO catalog_items (sku, name, unit_price_minor, currency_code) VALUES
    ('MUG-001',     'Enamel camp mug',              1250, 'USD'),
    ('TEE-BLK-M',   'Black T-shirt, M',             1999, 'USD'),
    ('TEE-WHT-L',   'White T-shirt, L',             1999, 'USD'),
    ('BOOK-042',    'The Hitchhiker''s Guide',       899, 'USD'),
    ('LAMP-DESK',   'Desk lamp',                    4500, 'USD'),
    ('CHAIR-ERGO',  'Ergonomic office chair',      34900, 'USD'),
    ('BIKE-ROAD',   'Road bicycle',               129900, 'USD'),
    ('WATCH-GOLD',  'Gold wristwatch',           1250000, 'USD'),
    ('SOCKS-3PK',   'Wool socks, 3 pairs',          1500, 'USD'),
    ('CABLE-USB-C', 'USB-C cable, 2 m',              999, 'USD'),
    ('TEA-EARL',    'Earl Grey tea, 100 g',          650, 'EUR'),
    ('KETTLE-EU',   'Electric kettle (EU plug)',    3900, 'EUR')
ON CONFLICT (sku) DO NOTHING;
