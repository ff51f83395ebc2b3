//! Before an overdue batch is planned: what the broker says about the consumer groups of the
//! partners that have not confirmed its orders (one question per partner, at once, within the
//! probe's timeout; see [`crate::kafka::progress`]). The verdict, behind or gone, is the pure
//! [`crate::domain::cycle::handover::judge`].

use std::collections::BTreeMap;

use tracing::debug;

use super::Relay;
use crate::{
    domain::{cycle::handover::Progress, model::LeasedOrder, routing::RoutingTable},
    kafka::progress::Ask,
};

impl Relay {
    /// How far the consumer groups of the partners of `orders` (an overdue batch) have read:
    /// only partners with an unconfirmed order whose position is known are asked about, on the
    /// partitions those orders landed on. A partner the broker does not answer for is left out
    /// (counted in `handover_probe_failures`): its orders follow the re-send rule.
    pub(super) async fn consumer_progress(
        &self,
        orders: &[LeasedOrder],
        table: &RoutingTable,
    ) -> Progress {
        let asks = asks(orders, table);
        if asks.is_empty() {
            return Progress::default();
        }
        let answers = self.probe.ask(asks).await;
        for (partner_id, error) in &answers.failed {
            debug!(partner_id, %error, "cannot tell how far the partner's consumers have read");
        }
        self.metrics
            .add_handover_probe_failures(answers.failed.len() as u64);
        answers.progress
    }
}

/// The questions for an overdue batch: per partner, its topic and the partitions its
/// unconfirmed orders landed on.
fn asks(orders: &[LeasedOrder], table: &RoutingTable) -> BTreeMap<String, Ask> {
    let mut asks: BTreeMap<String, Ask> = BTreeMap::new();
    for order in orders.iter().filter(|order| !order.acknowledged) {
        let (Some(position), Some(partner)) = (
            order.sent_position,
            order.partner_id.as_deref().and_then(|id| table.partner(id)),
        ) else {
            continue;
        };
        asks.entry(partner.id.clone())
            .or_insert_with(|| Ask {
                topic: partner.topic.clone(),
                ..Ask::default()
            })
            .partitions
            .insert(position.partition);
    }
    asks
}
