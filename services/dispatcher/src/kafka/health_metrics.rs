//! The producer's health as Prometheus series (`waybill_dispatcher_` + these names), read from
//! [`SendHealth`] at every scrape: whether the relay can send now, how many messages failed and
//! how often the producer was rebuilt since start. The same figures are in gRPC health (the
//! relay component) and `GetRelayStats`.

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::producer::SendHealth;

/// Registers `health`'s series in `registry` (the dispatcher's, under its prefix).
pub fn register(registry: &mut Registry, health: Arc<SendHealth>) {
    registry.register_collector(Box::new(HealthCollector(health)));
}

#[derive(Debug)]
struct HealthCollector(Arc<SendHealth>);

impl Collector for HealthCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = self.0.snapshot();
        let gauges = [
            (
                "can_send",
                "1 while the latest batch got at least one message acknowledged by the broker (0: the relay cannot send; health NOT_SERVING)",
                i64::from(now.can_send),
            ),
            (
                "failed_batches_in_a_row",
                "Batches in a row in which no message was acknowledged",
                i64::from(now.failed_batches_in_a_row),
            ),
        ];
        for (name, help, value) in gauges {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(metric)?;
        }
        let counters = [
            (
                "send_failures",
                "Messages the broker did not take since start (each retried or re-sent by the relay's rules)",
                now.failed_sends,
            ),
            (
                "producer_rebuilds",
                "Producers rebuilt since start (fenced, broken, or failing batch after batch)",
                now.rebuilds,
            ),
        ];
        for (name, help, value) in counters {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn a_healthy_producer_reads_can_send_with_nothing_failed() {
        let mut registry = Registry::with_prefix("waybill_dispatcher");
        register(&mut registry, Arc::new(SendHealth::default()));
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            "waybill_dispatcher_can_send 1",
            "waybill_dispatcher_failed_batches_in_a_row 0",
            "waybill_dispatcher_send_failures_total 0",
            "waybill_dispatcher_producer_rebuilds_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }
}
