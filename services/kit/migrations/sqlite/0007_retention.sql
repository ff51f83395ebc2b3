-- The retention job (dispatcher --retention) clears the stored message of dispatches their
-- partner acknowledged, oldest send first; this index holds exactly those still to clear, so a
-- round reads its batch whatever the table's size. (Attempt-log entries are deleted oldest
-- first by their primary key.) A message cleared is built again from the order tables should
-- the order ever be sent again. On sent_at, which a lease does not change.
CREATE INDEX dispatch_acknowledged_messages ON dispatch (sent_at)
    WHERE state = 'ACKNOWLEDGED' AND message IS NOT NULL;
