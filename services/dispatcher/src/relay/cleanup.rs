//! The retention job: what operators no longer need goes once it is older than `--retention`
//! (attempt-log entries, and the stored message of orders their partner acknowledged), so the
//! tables the relay writes on every send stop growing without bound. Orders and their history
//! are kept: they are what customers see.

use tracing::info;

use super::Relay;
use crate::{error::DispatchError, store::Cleaned};

/// Rows of each kind one round removes: each round is one short statement per kind, so the job
/// never holds locks for long while the relay works beside it.
const ROUND: u32 = 5_000;

impl Relay {
    /// Removes everything older than the retention setting, a round at a time until a round
    /// finds less than a full one; what it removed. Each round is given up after one lease's
    /// length (see the relay's notes on bounds).
    pub async fn clean_up(&self) -> Result<Cleaned, DispatchError> {
        let retention = chrono::Duration::from_std(self.settings.retention).map_err(|_| {
            waybill_service_kit::text::InvalidField::new("--retention", "is too long")
        })?;
        let before = self.clock.now() - retention;
        let mut total = Cleaned::default();
        loop {
            let round = self
                .bounded("a retention round", async {
                    Ok(self.store.clean_up(before, ROUND).await?)
                })
                .await?;
            self.metrics.add_retention_attempts(round.attempts);
            self.metrics.add_retention_messages(round.messages);
            total.attempts += round.attempts;
            total.messages += round.messages;
            if round.attempts < u64::from(ROUND) && round.messages < u64::from(ROUND) {
                break;
            }
        }
        if total != Cleaned::default() {
            info!(
                attempts = total.attempts,
                messages = total.messages,
                %before,
                "retention job removed what is no longer kept"
            );
        }
        Ok(total)
    }
}
