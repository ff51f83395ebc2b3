-- The publishing lease and where publishing stands: the cursor row, locked until the batch
-- settles (no row when another dispatcher holds it: that one is publishing), and the
-- watermark: the oldest transaction still running. This statement's snapshot is taken before
-- the lock gives this transaction an id of its own, so the watermark is not held back by the
-- publisher itself (only when pre-0006 events were just claimed, which is conservative). The walk that follows runs on a later snapshot, which sees every event
-- below the watermark. The walk reads one batch in index order (sorting is already off in this
-- transaction) with no parallel workers: starting them costs more than the batch.
SELECT c.xid::text AS xid, c.order_id, c.seq,
       pg_snapshot_xmin(pg_current_snapshot())::text AS watermark,
       set_config('max_parallel_workers_per_gather', '0', TRUE) AS one_process
FROM event_cursor c
FOR UPDATE SKIP LOCKED
