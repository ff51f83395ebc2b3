//! What the CLI's process-level tests share.
//!
//! - [`processes`]: one `waybill` process (start, kill, stop, restart, peak memory), free
//!   addresses, waiting for SERVING.
//! - [`enrolment`]: an order request for a country; a partner enrolled with its route (and key).
//! - [`partner_topics`]: the chaos checker — reading the partner topics as a partner would and
//!   confirming what it saw.
//! - [`scrape`]: a process's `/metrics` read over HTTP as OpenMetrics and as the classic text
//!   format `promtool check metrics` judges; the series names a dashboard or rules file uses.

pub mod enrolment;
pub mod partner_topics;
pub mod processes;
pub mod scrape;
