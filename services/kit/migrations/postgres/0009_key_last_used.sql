-- When StatusIngest last accepted a report signed with a partner's key, so that an operator
-- rotating keys can see the old key is no longer used before revoking it (ListPartnerKeys).
-- StatusIngest writes it at most once a minute per key and instance, never backwards, in a
-- statement of its own after the report's commit: not a write per report, and no lock on the
-- key's row inside the reports' transactions. NULL: never used since this migration.
-- Nullable and without a default: adding it rewrites nothing.
ALTER TABLE partner_keys ADD COLUMN last_used_at TIMESTAMPTZ;
