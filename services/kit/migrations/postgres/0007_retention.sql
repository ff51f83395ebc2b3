-- The retention job (dispatcher --retention) clears the stored message of dispatches their
-- partner acknowledged, oldest send first; this index holds exactly those still to clear, so a
-- round reads its batch whatever the table's size. (Attempt-log entries are deleted oldest
-- first by their primary key.) A message cleared is built again from the order tables should
-- the order ever be sent again. On sent_at, which a lease does not change.
CREATE INDEX dispatch_acknowledged_messages ON dispatch (sent_at)
    WHERE state = 'ACKNOWLEDGED' AND message IS NOT NULL;

-- Room in every page for a new version of its rows: a lease (owner, expiry, batch; no indexed
-- column) then writes its new row version beside the old one and touches no index (a HOT
-- update), instead of moving the row to another page with an entry in every index.
ALTER TABLE dispatch SET (fillfactor = 80);
