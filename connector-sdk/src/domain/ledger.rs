//! One partition's bookkeeping on the poll thread: which offsets are in flight, which offset is
//! safe to commit, and which record of a key runs next.
//!
//! **Contiguous commit.** Records of one partition finish out of order (different keys run
//! concurrently), but a Kafka commit says "everything below this offset is done". Committing
//! offset i+n while i is still running would lose i on a crash (rust-rdkafka's
//! `at_least_once.rs` warns about exactly this), so the safe offset is the lowest offset still
//! in flight — or one past the highest seen when nothing is.
//!
//! **Per-key lanes.** The record key is the order id. Records of one key run one at a time in
//! offset order (a resend of an order never overtakes the first copy, and a retrying order
//! holds back only its own later copies); records of different keys run side by side.

use std::collections::{BTreeSet, HashMap, VecDeque};

/// Bookkeeping of one assigned partition. `J` is whatever the caller runs for a record.
#[derive(Debug)]
pub struct PartitionLedger<J> {
    in_flight: BTreeSet<i64>,
    next_offset: Option<i64>,
    committed: Option<i64>,
    lanes: HashMap<String, VecDeque<(i64, J)>>,
    running: usize,
}

impl<J> Default for PartitionLedger<J> {
    fn default() -> Self {
        Self {
            in_flight: BTreeSet::new(),
            next_offset: None,
            committed: None,
            lanes: HashMap::new(),
            running: 0,
        }
    }
}

impl<J> PartitionLedger<J> {
    /// A record at `offset` with `key` arrived. Returns the job to start now, or `None` when
    /// an earlier record of the same key is still running (the job waits in its lane).
    pub fn receive(&mut self, offset: i64, key: &str, job: J) -> Option<J> {
        self.in_flight.insert(offset);
        self.next_offset = Some(self.next_offset.map_or(offset + 1, |n| n.max(offset + 1)));
        match self.lanes.get_mut(key) {
            Some(lane) => {
                lane.push_back((offset, job));
                None
            }
            None => {
                self.lanes.insert(key.to_owned(), VecDeque::new());
                self.running += 1;
                Some(job)
            }
        }
    }

    /// The job of `key` at `offset` ended; `safe` says whether its work is safe (done, set
    /// aside) or was abandoned (its offset then stays uncommitted, so the next owner redoes
    /// it). Returns the key's next job to start, if any.
    pub fn finish(&mut self, offset: i64, key: &str, safe: bool) -> Option<J> {
        if safe {
            self.in_flight.remove(&offset);
        }
        let lane = self.lanes.get_mut(key)?;
        match lane.pop_front() {
            Some((_, next)) => Some(next),
            None => {
                self.lanes.remove(key);
                self.running = self.running.saturating_sub(1);
                None
            }
        }
    }

    /// Drops every job still waiting in a lane (the partition is being released): their
    /// offsets stay in flight, so nothing at or above them is committed. Returns how many.
    pub fn drop_waiting(&mut self) -> usize {
        let mut dropped = 0;
        for lane in self.lanes.values_mut() {
            dropped += lane.len();
            lane.clear();
        }
        dropped
    }

    /// Jobs running now (one per key at most).
    pub fn running(&self) -> usize {
        self.running
    }

    /// Records received and not yet safe (running, waiting, or abandoned).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The offset a commit may name now: everything below it is safe.
    pub fn safe_offset(&self) -> Option<i64> {
        self.in_flight.first().copied().or(self.next_offset)
    }

    /// The offset to commit, if it moved past the last commit.
    pub fn to_commit(&self) -> Option<i64> {
        let safe = self.safe_offset()?;
        match self.committed {
            Some(committed) if committed >= safe => None,
            _ => Some(safe),
        }
    }

    /// A commit of `offset` succeeded.
    pub fn committed(&mut self, offset: i64) {
        self.committed = Some(self.committed.map_or(offset, |c| c.max(offset)));
    }

    /// The last committed offset, if any commit happened while this ledger lived.
    pub fn last_committed(&self) -> Option<i64> {
        self.committed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_up_to_the_lowest_record_in_flight() {
        let mut ledger = PartitionLedger::default();
        assert_eq!(ledger.to_commit(), None, "nothing seen, nothing to commit");
        for (offset, key) in [(10, "a"), (11, "b"), (12, "c")] {
            assert_eq!(ledger.receive(offset, key, offset), Some(offset));
        }
        // 11 and 12 finish first: 10 still runs, so nothing may be committed.
        assert_eq!(ledger.finish(12, "c", true), None);
        assert_eq!(ledger.finish(11, "b", true), None);
        assert_eq!(ledger.safe_offset(), Some(10));
        ledger.committed(10);
        assert_eq!(ledger.to_commit(), None);
        // 10 finishes: everything up to 12 is safe, commit 13 (the next offset to read).
        ledger.finish(10, "a", true);
        assert_eq!(ledger.to_commit(), Some(13));
        ledger.committed(13);
        assert_eq!(ledger.to_commit(), None);
        assert_eq!(ledger.in_flight(), 0);
        assert_eq!(ledger.running(), 0);
    }

    #[test]
    fn an_abandoned_record_holds_the_commit_below_it() {
        let mut ledger = PartitionLedger::default();
        ledger.receive(5, "a", ());
        ledger.receive(6, "b", ());
        ledger.finish(6, "b", true);
        ledger.finish(5, "a", false);
        assert_eq!(
            ledger.to_commit(),
            Some(5),
            "5 must be redone by the next owner"
        );
    }

    #[test]
    fn records_of_one_key_run_one_at_a_time_in_order() {
        let mut ledger = PartitionLedger::default();
        assert_eq!(ledger.receive(1, "order-1", "first"), Some("first"));
        assert_eq!(ledger.receive(2, "order-1", "second"), None, "waits");
        assert_eq!(
            ledger.receive(3, "order-2", "other"),
            Some("other"),
            "other keys run"
        );
        assert_eq!(ledger.running(), 2);
        assert_eq!(ledger.finish(1, "order-1", true), Some("second"));
        assert_eq!(ledger.finish(2, "order-1", true), None);
        assert_eq!(ledger.finish(3, "order-2", true), None);
        assert_eq!(ledger.running(), 0);
        assert_eq!(ledger.to_commit(), Some(4));
    }

    #[test]
    fn dropping_waiting_jobs_keeps_their_offsets_uncommitted() {
        let mut ledger = PartitionLedger::default();
        ledger.receive(1, "k", 1);
        ledger.receive(2, "k", 2);
        ledger.receive(3, "k", 3);
        assert_eq!(ledger.drop_waiting(), 2);
        assert_eq!(
            ledger.finish(1, "k", true),
            None,
            "nothing left in the lane"
        );
        assert_eq!(ledger.to_commit(), Some(2));
    }

    #[test]
    fn finishing_an_unknown_key_is_harmless() {
        let mut ledger: PartitionLedger<()> = PartitionLedger::default();
        assert_eq!(ledger.finish(7, "nobody", true), None);
        assert_eq!(ledger.running(), 0);
    }
}
