//! The scenarios: each attacks the adapter through its real interface (its topic, its
//! StatusIngest, its process) and turns what it saw into findings. The invariants every
//! scenario checks on top (one shipment per order, retried reports unchanged) are in
//! [`super::report::check_shipments`].

use std::time::Duration;

use super::{
    ingest::Outcome,
    kit::{TestOrder, undecodable_record, unknown_version_record},
    report::Findings,
    scene::Scene,
};

/// Every scenario, by name.
pub const ALL: &[&str] = &[
    "same-record-twice",
    "resend-higher-count",
    "restart-redelivery",
    "restart-during-outage",
    "undecodable-record",
    "unknown-schema-version",
    "ingest-unavailable",
    "ingest-slow",
    "replay-refused",
    "clock-skew",
    "key-rotation",
    "second-region",
    "rejection",
];

/// How many calls for one report refused as replayed are allowed within [`REPLAY_WINDOW`]
/// (counted per report: an adapter with several reports owed on the order, each retried with
/// its own backoff, is not looping).
const REPLAY_BOUND: usize = 10;
/// The window the replay bound is counted over.
const REPLAY_WINDOW: Duration = Duration::from_secs(6);
/// How long the kit keeps watching after the adapter consumed duplicate copies (their effect,
/// a second report, comes right after).
const SETTLE: Duration = Duration::from_millis(1500);
/// How long an answer takes in `ingest-slow`.
const SLOW: Duration = Duration::from_millis(1500);
/// The clock shift of `clock-skew`, within the 60 s allowed.
const SKEW_SECS: i64 = 50;

/// Runs scenario `name` on `scene` (the adapter already started).
pub async fn run(name: &str, s: &mut Scene<'_>, f: &mut Findings) -> anyhow::Result<()> {
    match name {
        "same-record-twice" => copies(s, f, 1).await,
        "resend-higher-count" => copies(s, f, 2).await,
        "restart-redelivery" => restart_redelivery(s, f).await,
        "restart-during-outage" => restart_during_outage(s, f).await,
        "undecodable-record" => bad_record(s, f, false).await,
        "unknown-schema-version" => bad_record(s, f, true).await,
        "ingest-unavailable" => ingest_unavailable(s, f).await,
        "ingest-slow" => ingest_slow(s, f).await,
        "replay-refused" => replay_refused(s, f).await,
        "clock-skew" => clock_skew(s, f).await,
        "key-rotation" => key_rotation(s, f).await,
        "second-region" => second_region(s, f).await,
        "rejection" => rejection(s, f).await,
        other => anyhow::bail!("no scenario {other:?}"),
    }
}

fn refs(orders: &[TestOrder]) -> Vec<&TestOrder> {
    orders.iter().collect()
}

fn never_answered(f: &mut Findings, missing: &[String], what: &str) {
    if !missing.is_empty() {
        f.broke(format!("order {} was never answered{what}", missing[0]));
        f.saw(format!("unanswered: {}", missing.join(", ")));
    }
}

/// Each order sent, then a second copy: the identical record (`second = 1`) or a re-send with
/// send count 2. One shipment each.
async fn copies(s: &mut Scene<'_>, f: &mut Findings, second: i32) -> anyhow::Result<()> {
    let orders = s.orders(3);
    let mut records = Vec::new();
    for (i, order) in orders.iter().enumerate() {
        records.push(s.record(order, 1, 0, i));
        records.push(s.record(order, second, 0, i));
    }
    s.send(&records).await?;
    let missing = s.wait_answered(&refs(&orders), 0, f).await;
    never_answered(f, &missing, "");
    consumed(s, f).await;
    f.saw(format!(
        "{} orders, each delivered twice (send counts 1 and {second})",
        orders.len()
    ));
    Ok(())
}

/// Waits until the group committed past everything sent, then watches a moment longer.
async fn consumed(s: &mut Scene<'_>, f: &mut Findings) {
    if !s.wait_committed(s.stage.timeout).await {
        f.saw("the group did not commit past every record within the timeout");
    }
    let _ = s.wait_for(SETTLE, |_| false).await;
}

/// The adapter is killed while its first report is in flight, then restarted: nothing lost,
/// nothing shipped twice. Then stopped, sent the same records again (a redelivery) and
/// restarted: nothing new.
async fn restart_redelivery(s: &mut Scene<'_>, f: &mut Findings) -> anyhow::Result<()> {
    let orders = s.orders(3);
    let records: Vec<_> = orders.iter().map(|o| s.record(o, 1, 0, 0)).collect();
    s.region(0).set(|m| m.hold_next = true);
    s.send(&records).await?;
    let region = s.region(0).clone();
    let held = s.wait_for(s.stage.timeout, |_| region.holding()).await;
    if held {
        s.adapter.kill().await;
        f.saw("killed (SIGKILL) while its first report was in flight");
    } else {
        f.saw("no report arrived to kill the adapter at");
    }
    s.region(0).set(|m| m.hold_next = false);
    release(s);
    s.adapter.start()?;
    let missing = s.wait_answered(&refs(&orders), 0, f).await;
    if !missing.is_empty() {
        f.broke(format!(
            "offset committed before the report was accepted or stored: order {} was lost on restart",
            missing[0]
        ));
        f.saw(format!(
            "unanswered after the restart: {}",
            missing.join(", ")
        ));
    }
    s.adapter.stop().await;
    s.send(&records).await?;
    s.adapter.start()?;
    consumed(s, f).await;
    f.saw(format!(
        "{} orders; restarted twice, the second time with every record delivered again",
        orders.len()
    ));
    Ok(())
}

/// Lets a held call go (it is answered UNAVAILABLE).
fn release(s: &Scene<'_>) {
    s.region(0).release();
}

/// StatusIngest down; once the group committed past the orders (or a while passed) the adapter
/// is killed, StatusIngest comes back, the adapter restarts: every order must still be reported.
async fn restart_during_outage(s: &mut Scene<'_>, f: &mut Findings) -> anyhow::Result<()> {
    let orders = s.orders(3);
    let records = s.first_sends(&orders, 0);
    s.region(0).set(|m| m.unavailable = true);
    s.send(&records).await?;
    let within = s.stage.timeout.min(Duration::from_secs(8));
    let committed = s.wait_committed(within).await;
    f.saw(if committed {
        "the group committed past every order while StatusIngest was down"
    } else {
        "the group had not committed past every order while StatusIngest was down"
    });
    s.adapter.kill().await;
    s.region(0).set(|m| m.unavailable = false);
    s.adapter.start()?;
    let missing = s.wait_answered(&refs(&orders), 0, f).await;
    if !missing.is_empty() {
        if committed {
            f.broke(format!(
                "offset committed before the report was accepted or stored: order {} was lost on restart",
                missing[0]
            ));
        } else {
            f.broke(format!(
                "order {} was never answered after the restart",
                missing[0]
            ));
        }
        f.saw(format!("unanswered: {}", missing.join(", ")));
    }
    Ok(())
}

/// A record it cannot believe (undecodable, or of an unknown schema version), then good orders
/// behind it in the same partition: nothing reported for it, the others answered.
async fn bad_record(s: &mut Scene<'_>, f: &mut Findings, version: bool) -> anyhow::Result<()> {
    let bad = s.orders(1).remove(0);
    let orders = s.orders(2);
    let sender = s.sender(s.region(0));
    let first = if version {
        unknown_version_record(&bad, sender, 0)
    } else {
        undecodable_record(&bad, sender, 0)
    };
    let mut records = vec![first];
    records.extend(orders.iter().map(|o| s.record(o, 1, 0, 0)));
    s.send(&records).await?;
    let missing = s.wait_answered(&refs(&orders), 0, f).await;
    let what = if version {
        "a record of an unknown schema version stopped the partition"
    } else {
        "a record it cannot decode stopped the partition"
    };
    if !missing.is_empty() {
        f.broke(what);
        f.saw(format!(
            "record {} then {} good orders on partition 0; unanswered: {}",
            bad.id,
            orders.len(),
            missing.join(", ")
        ));
    }
    consumed(s, f).await;
    if s.calls().iter().any(|c| c.order_id == bad.id) {
        f.broke(if version {
            "guessed at a schema version it does not know: reported on that record"
        } else {
            "reported on a record it could not decode"
        });
    }
    f.saw(format!(
        "record {} ({}) set aside, {} orders behind it answered",
        bad.id,
        if version {
            "schema version 99"
        } else {
            "not protobuf"
        },
        orders.len() - missing.len()
    ));
    Ok(())
}

/// StatusIngest answers UNAVAILABLE until each order was tried once, then comes back.
async fn ingest_unavailable(s: &mut Scene<'_>, f: &mut Findings) -> anyhow::Result<()> {
    let orders = s.orders(3);
    let records = s.first_sends(&orders, 0);
    s.region(0).set(|m| m.unavailable = true);
    s.send(&records).await?;
    let ids: Vec<String> = orders.iter().map(|o| o.id.clone()).collect();
    let tried = s
        .wait_for(s.stage.timeout, |calls| {
            ids.iter().all(|id| calls.iter().any(|c| &c.order_id == id))
        })
        .await;
    let refused = s.calls().len();
    s.region(0).set(|m| m.unavailable = false);
    f.saw(format!(
        "UNAVAILABLE for {refused} calls{}, then back",
        if tried {
            ""
        } else {
            " (not every order was tried)"
        }
    ));
    let missing = s.wait_answered(&refs(&orders), 0, f).await;
    never_answered(f, &missing, " after StatusIngest came back");
    Ok(())
}

/// Every answer takes a while.
async fn ingest_slow(s: &mut Scene<'_>, f: &mut Findings) -> anyhow::Result<()> {
    let orders = s.orders(3);
    let records = s.first_sends(&orders, 0);
    s.region(0).set(|m| m.delay = SLOW);
    s.send(&records).await?;
    let missing = s.wait_answered(&refs(&orders), 0, f).await;
    never_answered(f, &missing, " with StatusIngest slow");
    f.saw(format!("each answer delayed {} ms", SLOW.as_millis()));
    Ok(())
}

/// Every report on one order is refused as replayed: the adapter must give up or back off, not
/// loop; the other orders are answered.
async fn replay_refused(s: &mut Scene<'_>, f: &mut Findings) -> anyhow::Result<()> {
    let orders = s.orders(3);
    let victim = orders[0].id.clone();
    let records = s.first_sends(&orders, 0);
    let v = victim.clone();
    s.region(0).set(move |m| m.replay_order = Some(v));
    s.send(&records).await?;
    let missing = s.wait_answered(&refs(&orders[1..]), 0, f).await;
    never_answered(
        f,
        &missing,
        " while another order's reports were refused as replayed",
    );
    let on_victim = |calls: &[super::ingest::Call]| {
        calls
            .iter()
            .filter(|c| c.order_id == victim)
            .map(|c| c.at)
            .collect::<Vec<_>>()
    };
    // The calls for the victim's busiest report id up to `until`.
    let busiest = |calls: &[super::ingest::Call], until: std::time::Instant| {
        let mut by_report: std::collections::HashMap<&str, usize> =
            std::collections::HashMap::new();
        for call in calls
            .iter()
            .filter(|c| c.order_id == victim && c.at < until)
        {
            *by_report.entry(call.report_id.as_str()).or_default() += 1;
        }
        by_report.into_values().max().unwrap_or_default()
    };
    if !s
        .wait_for(s.stage.timeout, |calls| !on_victim(calls).is_empty())
        .await
    {
        f.broke(format!("order {victim} was never reported"));
        return Ok(());
    }
    let first = on_victim(&s.calls())[0];
    let window_end = first + REPLAY_WINDOW;
    let remaining = window_end.saturating_duration_since(std::time::Instant::now());
    s.wait_for(remaining, |calls| busiest(calls, window_end) > REPLAY_BOUND)
        .await;
    let within = busiest(&s.calls(), window_end);
    if within > REPLAY_BOUND {
        f.broke("looped on a replay refusal");
    }
    f.saw(format!(
        "order {victim}: at most {within} calls for one report within {} s of its first, all refused as replayed (at most {REPLAY_BOUND} allowed)",
        REPLAY_WINDOW.as_secs()
    ));
    Ok(())
}

/// StatusIngest's clock 50 s ahead, then 50 s behind: tokens still verify.
async fn clock_skew(s: &mut Scene<'_>, f: &mut Findings) -> anyhow::Result<()> {
    for (phase, shift) in [(0usize, SKEW_SECS), (1, -SKEW_SECS)] {
        let orders = s.orders(2);
        let records: Vec<_> = orders
            .iter()
            .enumerate()
            .map(|(i, o)| s.record(o, 1, 0, i + phase))
            .collect();
        s.region(0).set(|m| m.clock_shift_secs = shift);
        s.send(&records).await?;
        let missing = s.wait_answered(&refs(&orders), 0, f).await;
        if !missing.is_empty() {
            f.broke(format!(
                "its tokens are refused by a clock {} s {} (60 s are allowed)",
                shift.abs(),
                if shift > 0 { "ahead" } else { "behind" }
            ));
            f.saw(format!("unanswered: {}", missing.join(", ")));
        }
    }
    let refusals: Vec<String> = s
        .calls()
        .iter()
        .filter_map(|c| match &c.outcome {
            Outcome::Refused {
                reason: Some(r), ..
            } => Some(r.clone()),
            _ => None,
        })
        .collect();
    f.saw(format!(
        "StatusIngest's clock {SKEW_SECS} s ahead, then {SKEW_SECS} s behind; token refusals: {}",
        if refusals.is_empty() {
            "none".to_owned()
        } else {
            refusals.join(", ")
        }
    ));
    Ok(())
}

/// Key 1, then a stop, key 2 enrolled and key 1 revoked, a restart with key 2: the new orders
/// are reported signed with key 2 and accepted.
async fn key_rotation(s: &mut Scene<'_>, f: &mut Findings) -> anyhow::Result<()> {
    let before = s.orders(2);
    let records = s.first_sends(&before, 0);
    s.send(&records).await?;
    let missing = s.wait_answered(&refs(&before), 0, f).await;
    never_answered(f, &missing, " before the key rotation");
    s.adapter.stop().await;
    let old = s.key_id();
    s.rotate_key()?;
    let new = s.key_id();
    s.adapter.start()?;
    let after = s.orders(2);
    let records = s.first_sends(&after, 0);
    s.send(&records).await?;
    let missing = s.wait_answered(&refs(&after), 0, f).await;
    if !missing.is_empty() {
        f.broke(format!(
            "after the key rotation, order {} was never accepted (key {old} revoked, {new} enrolled)",
            missing[0]
        ));
    }
    let calls = s.calls();
    let wrong: Vec<String> = calls
        .iter()
        .filter(|c| after.iter().any(|o| o.id == c.order_id) && c.key_id != new)
        .map(|c| format!("{} signed with {:?}", c.report_id, c.key_id))
        .collect();
    if !wrong.is_empty() {
        f.broke(format!(
            "signed reports with a key other than the current one ({new}) after the rotation"
        ));
        f.saw(wrong.join(", "));
    }
    f.saw(format!(
        "{old} then {new} (restart in between, {old} revoked)"
    ));
    Ok(())
}

/// Orders from region A and from region B on one partition: each answered at its own reply-to.
async fn second_region(s: &mut Scene<'_>, f: &mut Findings) -> anyhow::Result<()> {
    let orders = s.orders(3);
    let records: Vec<_> = orders
        .iter()
        .enumerate()
        .map(|(i, o)| s.record(o, 1, usize::from(i > 0), 0))
        .collect();
    s.send(&records).await?;
    let missing_a = s.wait_answered(&refs(&orders[..1]), 0, f).await;
    let missing_b = s.wait_answered(&refs(&orders[1..]), 1, f).await;
    let at_a: Vec<String> = s
        .region(0)
        .calls()
        .iter()
        .filter(|c| orders[1..].iter().any(|o| o.id == c.order_id))
        .map(|c| c.order_id.clone())
        .collect();
    if !at_a.is_empty() {
        f.broke(format!(
            "ignored the reply-to: reported order {} to region A",
            at_a[0]
        ));
    }
    for id in missing_a.iter().chain(&missing_b) {
        f.broke(format!("order {id} was never answered at its reply-to"));
    }
    f.saw(format!(
        "1 order from region A ({}), 2 from region B ({})",
        s.region(0).reply_to,
        s.region(1).reply_to
    ));
    Ok(())
}

/// An order marked `[reject]` in address line 2 is answered REJECTED_BY_PARTNER with a detail.
async fn rejection(s: &mut Scene<'_>, f: &mut Findings) -> anyhow::Result<()> {
    let normal = s.orders(1).remove(0);
    let marked = TestOrder::new(&mut s.rng, "[reject]");
    let records = vec![s.record(&marked, 1, 0, 0), s.record(&normal, 1, 0, 1)];
    s.send(&records).await?;
    let missing = s.wait_answered(&[&marked, &normal], 0, f).await;
    never_answered(f, &missing, "");
    let calls = s.calls();
    let landed = |status: &str| {
        calls
            .iter()
            .filter(|c| c.order_id == marked.id && c.landed() && c.status == status)
            .cloned()
            .collect::<Vec<_>>()
    };
    let rejected = landed("REJECTED_BY_PARTNER");
    if !landed("RECEIVED_BY_PARTNER").is_empty() {
        f.broke(format!(
            "order {} marked [reject] was accepted, not rejected",
            marked.id
        ));
    } else if rejected.is_empty() {
        if missing.is_empty() {
            f.broke(format!(
                "order {} marked [reject] was not rejected",
                marked.id
            ));
        }
    } else if rejected.iter().all(|c| c.detail.trim().is_empty()) {
        f.broke(format!(
            "the rejection of order {} carries no detail",
            marked.id
        ));
    }
    if let Some(call) = rejected.first() {
        f.saw(format!("order {} rejected: {:?}", marked.id, call.detail));
    }
    Ok(())
}
