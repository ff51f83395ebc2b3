//! `waybill admin relay stats` (the dispatcher's GetRelayStats) and `waybill admin reports
//! stats` (StatusIngest's GetReportStats).

use waybill_proto::v1::{
    self as pb, dispatch_admin_client::DispatchAdminClient,
    status_ingest_client::StatusIngestClient,
};

use super::{
    connection::{Connection, Target},
    output::{Table, duration, fields, or_dash, print_json, yes_no},
};

/// `waybill admin relay …`.
#[derive(Debug, clap::Subcommand)]
pub enum RelayCommand {
    /// The backlog by state (every instance's), whether this instance can send, and its
    /// counters and produce latency since it started.
    Stats,
}

/// `waybill admin reports …`.
#[derive(Debug, clap::Subcommand)]
pub enum ReportsCommand {
    /// Partners' status reports accepted, duplicated, flagged and refused (by reason) since
    /// this StatusIngest started.
    Stats,
}

/// Runs `relay stats`.
pub async fn relay(
    command: RelayCommand,
    connection: &Connection,
    json: bool,
) -> anyhow::Result<()> {
    let RelayCommand::Stats = command;
    let c = connection;
    let mut client = DispatchAdminClient::new(c.channel(Target::Dispatcher).await?);
    let stats = c
        .answer(
            Target::Dispatcher,
            "GetRelayStats",
            client.get_relay_stats(c.request(pb::GetRelayStatsRequest {})?),
        )
        .await?;
    if json {
        return print_json(&stats, "waybill.v1.RelayStats");
    }
    print!("{}", describe_relay(&stats));
    Ok(())
}

fn describe_relay(s: &pb::RelayStats) -> String {
    let mut text = fields(&[
        ("instance", or_dash(&s.instance_id)),
        ("can send", yes_no(s.can_send)),
        (
            "failed batches in a row",
            s.failed_batches_in_a_row.to_string(),
        ),
        ("last send error", or_dash(&s.last_send_error)),
        ("oldest due", duration(s.oldest_due_age.as_ref())),
        ("sent", s.sent.to_string()),
        ("retries", s.retries.to_string()),
        ("dead", s.dead.to_string()),
        ("unroutable", s.unroutable.to_string()),
        ("resent", s.resent.to_string()),
        ("resend failures", s.resend_failures.to_string()),
        ("unacknowledged", s.unacknowledged.to_string()),
        ("acknowledged", s.acknowledged.to_string()),
        ("fenced", s.fenced.to_string()),
        ("failed sends", s.failed_sends.to_string()),
        ("producer rebuilds", s.producer_rebuilds.to_string()),
        ("events published", s.events_published.to_string()),
        ("audit pending", s.audit_pending.to_string()),
        ("audit deferred", s.audit_deferred.to_string()),
        ("audits published", s.audits_published.to_string()),
        ("topics created", s.topics_created.to_string()),
        (
            "produce latency p50",
            duration(s.produce_latency_p50.as_ref()),
        ),
        (
            "produce latency p99",
            duration(s.produce_latency_p99.as_ref()),
        ),
        (
            "produce latency max",
            duration(s.produce_latency_max.as_ref()),
        ),
    ]);
    let mut table = Table::new(&["STATE", "BACKLOG"]);
    for count in &s.backlog {
        table.row(vec![
            count.state().short_name().to_owned(),
            count.count.to_string(),
        ]);
    }
    text.push('\n');
    if s.backlog.is_empty() {
        text.push_str("backlog: nothing to do\n");
    } else {
        text.push_str(&table.render());
    }
    text
}

/// Runs `reports stats`.
pub async fn reports(
    command: ReportsCommand,
    connection: &Connection,
    json: bool,
) -> anyhow::Result<()> {
    let ReportsCommand::Stats = command;
    let c = connection;
    let mut client = StatusIngestClient::new(c.channel(Target::StatusIngest).await?);
    let stats = c
        .answer(
            Target::StatusIngest,
            "GetReportStats",
            client.get_report_stats(c.request(pb::GetReportStatsRequest {})?),
        )
        .await?;
    if json {
        return print_json(&stats, "waybill.v1.ReportStats");
    }
    print!(
        "{}",
        fields(&[
            ("accepted", stats.accepted.to_string()),
            ("duplicates", stats.duplicates.to_string()),
            ("flagged for review", stats.flagged_for_review.to_string()),
        ])
    );
    let mut rejected: Vec<_> = stats.rejected.iter().collect();
    rejected.sort();
    let mut table = Table::new(&["REFUSED BECAUSE", "REPORTS"]);
    for (reason, count) in rejected {
        table.row(vec![reason.clone(), count.to_string()]);
    }
    println!();
    table.print("no refusal reasons reported");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_stats_say_when_the_relay_cannot_send() {
        let text = describe_relay(&pb::RelayStats {
            can_send: false,
            last_send_error: "broker down".into(),
            ..Default::default()
        });
        assert!(text.contains("can send:"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("can send:") && l.ends_with(" no"))
        );
        assert!(text.contains("backlog: nothing to do"));
    }
}
