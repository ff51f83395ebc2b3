//! Pure decisions, without I/O: which offset is safe to commit and which record runs next in a
//! partition ([`ledger`]), how long to wait before retrying ([`backoff`]), and whether a
//! StatusIngest answer is worth retrying ([`report_outcome`]). Each is unit-tested here; the
//! consumer, the worker and the report sender only gather inputs and carry out the result.

pub mod backoff;
pub mod ledger;
pub mod report_outcome;
