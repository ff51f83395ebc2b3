//! Bounds both sides of a call must agree on: the server enforces them, a client sizes its
//! calls by them.

/// The largest request StatusIngest reads, a `ReportStatuses` call included: a report is a few
/// hundred bytes plus its token (64 typical ones fit with room to spare); tonic's 4 MiB is not
/// a deliberate limit, and this one times the calls in flight bounds what requests can hold.
pub const STATUS_INGEST_MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The most reports one `ReportStatuses` call may carry (within
/// [`STATUS_INGEST_MAX_REQUEST_BYTES`] in all, like any call).
pub const MAX_BATCH_REPORTS: usize = 64;
