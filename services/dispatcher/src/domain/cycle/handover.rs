//! At the handover deadline: is the partner merely behind, or gone?
//!
//! A `SENT` order its partner has not confirmed within the handover deadline used to be sent
//! again at once. Under overload that floods a partner that is consuming, only late, with
//! copies of orders it is about to read anyway (each lands behind the first, in the same
//! partition). So before re-sending, the relay asks the broker about the partner's consumer
//! group on its topic ([`crate::kafka::progress`], once per partner per overdue batch) and
//! [`judge`] compares that with where the order's latest send landed (the partition and
//! offset of the broker's delivery report, kept on the dispatch row):
//!
//! - **behind**: the group has live members and either has not consumed the record yet (it
//!   is still in the log, `low ≤ offset < high`, and the group's committed offset, the next
//!   record it reads, is `≤ offset`) or has **read** it (committed past it) without
//!   confirming it. The SDK commits a record only once the adapter's answer, with its report,
//!   is durable in its inbox, so a read record is held by the partner and its report is on its
//!   way (queued behind others when the partner is busy): a copy cannot help, it only adds to
//!   the queue. The deadline moves on by one handover deadline; nothing is sent and the resend
//!   budget is not touched.
//! - **behind for too long**: the same, but the order has waited as many handover deadlines
//!   as the resend budget would have allowed re-sends (`resends + deadlines passed since the
//!   latest send > resend budget`). A live group that never reaches a record is stuck (a copy
//!   would land behind the first, in the same partition), and one that read it and never
//!   confirmed it broke the SDK's contract or lost its inbox (operators must look): the order
//!   is flagged `UNACKNOWLEDGED` when today's rule would have flagged it, without the copies.
//! - **gone**: everything else — the record neither read nor in the log any more (the broker
//!   lost its data, or retention removed it), no live members, the group or the position
//!   unknown (no such group: a partner whose connector uses another group id; rows sent before
//!   positions were kept), the group never committed on the partition (it may read from the
//!   partition's end, a client's default `latest`, and would never reach the order: a
//!   connector that is merely slow to commit its first records gets one copy it answers from
//!   its inbox), or the broker did not answer. Today's rule applies: re-send within
//!   the budget, then `UNACKNOWLEDGED`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::domain::model::{LeasedOrder, PartnerRecord, SentPosition};

/// One partition of a partner's topic, and its consumer group's place in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionProgress {
    /// The first offset the log still holds (low watermark).
    pub low: i64,
    /// The offset the next record will get (high watermark).
    pub high: i64,
    /// The group's committed offset: the next record it reads. `None` when the group never
    /// committed on this partition (where it reads from is then unknown).
    pub committed: Option<i64>,
}

/// What the broker said about one partner's consumer group on the partner's topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupProgress {
    /// Whether the group has members now (a connector is consuming).
    pub live: bool,
    /// The partitions asked about (those the batch's orders landed on), by partition.
    pub partitions: HashMap<i32, PartitionProgress>,
}

/// The consumer groups the broker told about for one overdue batch, by partner id. A partner
/// the broker was not asked about, or did not answer for, is not in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    groups: HashMap<String, GroupProgress>,
}

impl Progress {
    /// What the broker said about `partner_id`'s group.
    pub fn insert(&mut self, partner_id: impl Into<String>, group: GroupProgress) {
        self.groups.insert(partner_id.into(), group);
    }

    /// `partner_id`'s group, if the broker told.
    pub fn group(&self, partner_id: &str) -> Option<&GroupProgress> {
        self.groups.get(partner_id)
    }

    /// Whether no group is known.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// The verdict on one overdue, unconfirmed order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// The partner is behind: its live group has not reached the order's record yet, or read
    /// it and has not confirmed it yet.
    Behind {
        /// Where the record is.
        position: SentPosition,
        /// Records the group reads before it (0 once read).
        ahead: i64,
        /// Whether the group has read (committed past) it.
        read: bool,
    },
    /// Behind for as many handover deadlines as the resend budget allows.
    BehindTooLong {
        /// Where the record is.
        position: SentPosition,
        /// Records the group reads before it (0 once read).
        ahead: i64,
        /// Whether the group has read (committed past) it.
        read: bool,
        /// Handover deadlines spent: re-sends plus deadlines passed since the latest send.
        deadlines: i64,
    },
    /// Anything else: today's rule (re-send within the budget, then `UNACKNOWLEDGED`).
    Gone,
}

/// Whether `partner`, which has not confirmed `order`, is behind or gone at `now`, from what
/// the broker said about its group (see the module documentation).
pub fn judge(
    order: &LeasedOrder,
    partner: &PartnerRecord,
    progress: &Progress,
    now: DateTime<Utc>,
) -> Handover {
    let (Some(position), Some(sent_at)) = (order.sent_position, order.sent_at) else {
        return Handover::Gone;
    };
    let Some(group) = progress.group(&partner.id).filter(|group| group.live) else {
        return Handover::Gone;
    };
    let Some(partition) = group.partitions.get(&position.partition) else {
        return Handover::Gone;
    };
    // Never committed here: where it reads from is unknown (see the module documentation).
    let Some(committed) = partition.committed else {
        return Handover::Gone;
    };
    let in_log = partition.low <= position.offset && position.offset < partition.high;
    // Read: committed past it (what the log still holds no longer matters: the partner has it).
    let read = committed > position.offset;
    if !read && !in_log {
        return Handover::Gone;
    }
    let deadline_ms = partner.handover_deadline.num_milliseconds();
    if deadline_ms <= 0 {
        return Handover::Gone;
    }
    // Below the log's start (retention removed what it had not read), it reads from the start.
    let next_read = committed.max(partition.low);
    let ahead = (position.offset - next_read).max(0);
    let passed = ((now - sent_at).num_milliseconds() / deadline_ms).max(0);
    let deadlines = i64::from(order.resends).saturating_add(passed);
    if deadlines > i64::from(partner.resend_budget) {
        Handover::BehindTooLong {
            position,
            ahead,
            read,
            deadlines,
        }
    } else {
        Handover::Behind {
            position,
            ahead,
            read,
        }
    }
}
