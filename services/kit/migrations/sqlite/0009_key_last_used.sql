-- When StatusIngest last accepted a report signed with a partner's key, so that an operator
-- rotating keys can see the old key is no longer used before revoking it (ListPartnerKeys).
-- StatusIngest writes it at most once a minute per key and instance, never backwards, in a
-- statement of its own after the report's commit: not a write per report. NULL: never used
-- since this migration. Microseconds since the epoch, as every instant here.
ALTER TABLE partner_keys ADD COLUMN last_used_at INTEGER;
