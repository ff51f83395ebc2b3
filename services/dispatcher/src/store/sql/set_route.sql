-- Creates or replaces route $1 at $8. Both backends.
INSERT INTO routes (id, partner_id, country_code, region, postal_prefix, priority, enabled,
                    created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
ON CONFLICT (id) DO UPDATE SET
    partner_id = excluded.partner_id,
    country_code = excluded.country_code,
    region = excluded.region,
    postal_prefix = excluded.postal_prefix,
    priority = excluded.priority,
    enabled = excluded.enabled,
    updated_at = excluded.updated_at
RETURNING id, partner_id, country_code, region, postal_prefix, priority, enabled
