//! `waybill demo`: the whole system in one process — SQLite in a temporary directory, the
//! embedded broker, Orders, the dispatcher, StatusIngest and both example partners with keys
//! made for this run — and a handful of sample orders that take every path: one to each
//! partner, one above the audit threshold, one a partner rejects (re-routed to the other), one
//! nobody ships to. Progress on stderr while they travel, then each order's journey on stdout.

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use waybill_connector_sdk::examples::{DISTANCE_FREIGHT, LOCAL_EXPRESS};
use waybill_dispatcher::RelaySettings;
use waybill_proto::v1::{
    self as pb, DispatchState, OrderStatus, dispatch_admin_client::DispatchAdminClient,
    order_service_client::OrderServiceClient,
};

use crate::system::{System, SystemSettings};

/// Settings of `waybill demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Print the result as one JSON object on the last line of stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Give up on orders still travelling after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

/// One sample order.
struct Sample {
    name: &'static str,
    what: &'static str,
    country: &'static str,
    line2: &'static str,
    sku: &'static str,
    quantity: u32,
    /// Who should acknowledge it; `None`: nobody (unroutable).
    expect: Option<&'static str>,
}

const SAMPLES: &[Sample] = &[
    Sample {
        name: "local",
        what: "to local-express (acknowledged at once, shipped later)",
        country: "US",
        line2: "",
        sku: "MUG-001",
        quantity: 2,
        expect: Some(LOCAL_EXPRESS),
    },
    Sample {
        name: "long-distance",
        what: "to distance-freight",
        country: "CA",
        line2: "",
        sku: "BOOK-042",
        quantity: 1,
        expect: Some(DISTANCE_FREIGHT),
    },
    Sample {
        name: "audit",
        what: "above the audit threshold (a copy goes to the audit topic)",
        country: "GB",
        line2: "",
        sku: "WATCH-GOLD",
        quantity: 1,
        expect: Some(DISTANCE_FREIGHT),
    },
    Sample {
        name: "rejected",
        what: "rejected by local-express, re-routed to distance-freight",
        country: "US",
        line2: "Back door [reject:local-express]",
        sku: "LAMP-DESK",
        quantity: 1,
        expect: Some(DISTANCE_FREIGHT),
    },
    Sample {
        name: "unroutable",
        what: "to a country no partner ships to (left for operators)",
        country: "BR",
        line2: "",
        sku: "TEE-BLK-M",
        quantity: 1,
        expect: None,
    },
];

/// What the demo found: the JSON object `--json` prints.
#[derive(Debug, Serialize)]
struct Outcome {
    ok: bool,
    elapsed_ms: u64,
    /// Records on the audit topic (`waybill.audit`) for the demo's orders.
    audit_copies: u64,
    orders: Vec<OrderOutcome>,
    failures: Vec<String>,
}

#[derive(Debug, Serialize)]
struct OrderOutcome {
    name: &'static str,
    what: &'static str,
    order_id: String,
    country: &'static str,
    total: String,
    audit: bool,
    /// Its copy was read back from the audit topic.
    audit_copy: bool,
    expected_partner: Option<&'static str>,
    acknowledged_by: Option<String>,
    tracking_id: String,
    rerouted: bool,
    unroutable: bool,
    dispatch_state: String,
    partners: Vec<String>,
    journey: Vec<Step>,
}

#[derive(Debug, Clone, Serialize)]
struct Step {
    status: String,
    after_ms: i64,
    partner_id: String,
    tracking_id: String,
    detail_code: String,
}

/// Runs the demo; `Ok(false)` when an order did not arrive (the output says which).
pub async fn run(args: DemoArgs) -> anyhow::Result<bool> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("waybill-demo-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = tokio::select! {
        result = run_in(&args, &dir, started) => result,
        // ctrl-c: still remove the temporary directory.
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let outcome = result?;
    if args.json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        print_table(&outcome);
    }
    for failure in &outcome.failures {
        eprintln!("waybill demo: FAILED: {failure}");
    }
    Ok(outcome.ok)
}

async fn run_in(
    args: &DemoArgs,
    dir: &std::path::Path,
    started: Instant,
) -> anyhow::Result<Outcome> {
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let audit = RelaySettings::default().audit;
    let shutdown = CancellationToken::new();
    eprintln!(
        "starting Orders, the dispatcher, StatusIngest, the embedded broker and both example partners…"
    );
    let system = System::start(
        SystemSettings {
            orders_listen: any,
            dispatcher_listen: any,
            status_ingest_listen: any,
            audience: "waybill-demo".to_owned(),
            database_url: format!("sqlite://{}", dir.join("waybill.db").display()),
            kafka_brokers: None,
            region: "demo".to_owned(),
            data_dir: PathBuf::from(dir),
            keep_keys: false,
            shipped_after: Duration::from_millis(500),
            audit: audit.clone(),
            handover_deadline: Duration::from_secs(120),
            observe: Default::default(),
        },
        shutdown.clone(),
    )
    .await?;
    let ready = system.partners_ready(Duration::from_secs(30)).await;
    let result = match ready {
        Ok(()) => travel(args, &system, &audit, started).await,
        Err(error) => Err(error),
    };
    shutdown.cancel();
    let stopped = system.wait().await;
    let outcome = result?;
    stopped?;
    Ok(outcome)
}

async fn travel(
    args: &DemoArgs,
    system: &System,
    audit: &waybill_dispatcher::domain::audit::AuditThresholds,
    started: Instant,
) -> anyhow::Result<Outcome> {
    let mut orders = OrderServiceClient::connect(format!("http://{}", system.orders_addr))
        .await
        .context("cannot reach Orders")?;
    let mut admin = DispatchAdminClient::connect(format!("http://{}", system.dispatcher_addr))
        .await
        .context("cannot reach the dispatcher")?;
    eprintln!(
        "ready after {:.1} s; placing {} orders",
        started.elapsed().as_secs_f64(),
        SAMPLES.len()
    );
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut placed = Vec::new();
    for (index, sample) in SAMPLES.iter().enumerate() {
        let order = orders
            .place_order(pb::PlaceOrderRequest {
                idempotency_key: format!("demo-{run_id}-{index}"),
                customer: Some(pb::Customer {
                    id: "demo-customer".into(),
                    name: "Ada Lovelace".into(),
                    email: "ada@example.com".into(),
                    ..Default::default()
                }),
                shipping_address: Some(pb::Address {
                    line1: "1 Main St".into(),
                    line2: sample.line2.into(),
                    city: "Springfield".into(),
                    country_code: sample.country.into(),
                    ..Default::default()
                }),
                lines: vec![pb::LineItem {
                    sku: sample.sku.into(),
                    quantity: sample.quantity,
                }],
            })
            .await
            .with_context(|| format!("cannot place the {} order", sample.name))?
            .into_inner()
            .order
            .context("PlaceOrder answered without the order")?;
        eprintln!(
            "  placed #{} {:<13} {} ({})",
            index + 1,
            sample.name,
            order.id,
            sample.what
        );
        placed.push(order);
    }

    // Watch every order until each reached its end or the deadline passes.
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut seen: Vec<HashSet<i64>> = vec![HashSet::new(); SAMPLES.len()];
    let mut latest: Vec<(pb::Order, pb::Dispatch)> = Vec::new();
    loop {
        latest.clear();
        for (index, order) in placed.iter().enumerate() {
            let current = orders
                .get_order(pb::GetOrderRequest {
                    order_id: order.id.clone(),
                })
                .await
                .context("GetOrder")?
                .into_inner();
            let dispatch = admin
                .get_dispatch(pb::GetDispatchRequest {
                    order_id: order.id.clone(),
                })
                .await
                .context("GetDispatch")?
                .into_inner();
            for event in &current.status_history {
                if seen[index].insert(event.sequence) {
                    eprintln!(
                        "  {:>7}  #{} {:<13} {:<20} {} {}",
                        format!("+{}ms", since(&current, event.recorded_at.as_ref())),
                        index + 1,
                        SAMPLES[index].name,
                        event.status().short_name(),
                        event.partner_id,
                        event.tracking_id
                    );
                }
            }
            if dispatch.state() == DispatchState::Unroutable && seen[index].insert(-1) {
                eprintln!(
                    "  {:>7}  #{} {:<13} UNROUTABLE (no route to {})",
                    format!("+{}ms", since(&current, dispatch.updated_at.as_ref())),
                    index + 1,
                    SAMPLES[index].name,
                    SAMPLES[index].country
                );
            }
            latest.push((current, dispatch));
        }
        let done = SAMPLES
            .iter()
            .zip(&latest)
            .all(|(sample, (order, dispatch))| arrived(sample, order, dispatch));
        if done || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let audited: Vec<String> = SAMPLES
        .iter()
        .zip(&latest)
        .filter(|(_, (order, _))| {
            let total = order.total.clone().unwrap_or_default();
            audit.is_audited(&total.currency_code, total.minor_units)
        })
        .map(|(_, (order, _))| order.id.clone())
        .collect();
    let audit_topic = RelaySettings::default().topics.audit;
    let copies = read_audit_copies(system.brokers.clone(), audit_topic, audited.clone()).await?;

    let mut failures = Vec::new();
    let mut outcomes = Vec::new();
    for (sample, (order, dispatch)) in SAMPLES.iter().zip(latest) {
        let mut outcome = outcome_of(sample, &order, &dispatch, audit);
        outcome.audit_copy = copies.contains(&order.id);
        if !arrived(sample, &order, &dispatch) {
            let last = order
                .status_history
                .last()
                .map(|e| format!("{} {}", e.status().short_name(), e.partner_id))
                .unwrap_or_default();
            failures.push(match sample.expect {
                Some(partner) => format!(
                    "order {} ({}) was not acknowledged{} by {partner} within {} s (last: {}, dispatch {})",
                    order.id,
                    sample.name,
                    if partner == LOCAL_EXPRESS {
                        " and reported shipped"
                    } else {
                        ""
                    },
                    args.timeout_secs,
                    last.trim(),
                    dispatch.state().short_name()
                ),
                None => format!(
                    "order {} ({}) did not become UNROUTABLE within {} s (dispatch {})",
                    order.id,
                    sample.name,
                    args.timeout_secs,
                    dispatch.state().short_name()
                ),
            });
        }
        outcomes.push(outcome);
    }
    for order in outcomes.iter().filter(|o| o.audit && !o.audit_copy) {
        failures.push(format!(
            "order {} ({}) is above the audit threshold but no copy of it is on the audit topic",
            order.order_id, order.name
        ));
    }
    Ok(Outcome {
        ok: failures.is_empty(),
        elapsed_ms: started.elapsed().as_millis() as u64,
        audit_copies: copies.len() as u64,
        orders: outcomes,
        failures,
    })
}

/// Reads the audit topic from its beginning (no consumer group: nothing to wait for) until a
/// copy of each of `wanted` was seen or 10 s passed; returns the order ids seen.
async fn read_audit_copies(
    brokers: String,
    topic: String,
    wanted: Vec<String>,
) -> anyhow::Result<HashSet<String>> {
    use rdkafka::{
        ClientConfig, Message as _, Offset, TopicPartitionList,
        consumer::{BaseConsumer, Consumer as _},
    };
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "waybill-demo-audit-reader")
            .set("enable.auto.commit", "false")
            .create()
            .context("cannot create the audit topic reader")?;
        let mut partitions = TopicPartitionList::new();
        partitions
            .add_partition_offset(&topic, 0, Offset::Beginning)
            .context("audit topic partition")?;
        consumer
            .assign(&partitions)
            .context("cannot read the audit topic")?;
        let mut seen = HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !wanted.iter().all(|id| seen.contains(id)) && Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200))
                && let Some(key) = message.key()
                && let Ok(key) = std::str::from_utf8(key)
                && wanted.iter().any(|id| id == key)
            {
                seen.insert(key.to_owned());
            }
        }
        Ok(seen)
    })
    .await?
}

/// Whether `order` reached the end its sample expects: acknowledged by the expected partner
/// (and, at `local-express`, shipped), or unroutable.
fn arrived(sample: &Sample, order: &pb::Order, dispatch: &pb::Dispatch) -> bool {
    match sample.expect {
        None => dispatch.state() == DispatchState::Unroutable,
        Some(partner) => {
            let has = |status: OrderStatus| {
                order
                    .status_history
                    .iter()
                    .any(|e| e.status() == status && e.partner_id == partner)
            };
            has(OrderStatus::ReceivedByPartner)
                && (partner != LOCAL_EXPRESS || has(OrderStatus::Shipped))
        }
    }
}

fn outcome_of(
    sample: &Sample,
    order: &pb::Order,
    dispatch: &pb::Dispatch,
    audit: &waybill_dispatcher::domain::audit::AuditThresholds,
) -> OrderOutcome {
    let mut journey: Vec<Step> = order
        .status_history
        .iter()
        .map(|event| Step {
            status: event.status().short_name().to_owned(),
            after_ms: since(order, event.recorded_at.as_ref()),
            partner_id: event.partner_id.clone(),
            tracking_id: event.tracking_id.clone(),
            detail_code: event.detail_code.clone(),
        })
        .collect();
    let unroutable = dispatch.state() == DispatchState::Unroutable;
    if unroutable {
        journey.push(Step {
            status: "UNROUTABLE".to_owned(),
            after_ms: since(order, dispatch.updated_at.as_ref()),
            partner_id: String::new(),
            tracking_id: String::new(),
            detail_code: String::new(),
        });
    }
    let mut partners: Vec<String> = Vec::new();
    for step in &journey {
        if !step.partner_id.is_empty() && !partners.contains(&step.partner_id) {
            partners.push(step.partner_id.clone());
        }
    }
    let acknowledged_by = order
        .status_history
        .iter()
        .find(|e| e.status() == OrderStatus::ReceivedByPartner)
        .map(|e| e.partner_id.clone());
    let rerouted = order
        .status_history
        .iter()
        .any(|e| e.status() == OrderStatus::RejectedByPartner)
        && acknowledged_by.is_some();
    let total = order.total.clone().unwrap_or_default();
    OrderOutcome {
        name: sample.name,
        what: sample.what,
        order_id: order.id.clone(),
        country: sample.country,
        total: format!(
            "{} {}.{:02}",
            total.currency_code,
            total.minor_units / 100,
            total.minor_units % 100
        ),
        audit: audit.is_audited(&total.currency_code, total.minor_units),
        audit_copy: false,
        expected_partner: sample.expect,
        acknowledged_by,
        tracking_id: order.tracking_id.clone(),
        rerouted,
        unroutable,
        dispatch_state: dispatch.state().short_name().to_owned(),
        partners,
        journey,
    }
}

/// Milliseconds from the order's placing to `at`.
fn since(order: &pb::Order, at: Option<&prost_types::Timestamp>) -> i64 {
    let millis = |t: &prost_types::Timestamp| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000;
    match (order.placed_at.as_ref(), at) {
        (Some(placed), Some(at)) => (millis(at) - millis(placed)).max(0),
        _ => 0,
    }
}

fn print_table(outcome: &Outcome) {
    let acknowledged = outcome
        .orders
        .iter()
        .filter(|o| o.acknowledged_by.is_some())
        .count();
    let unroutable = outcome.orders.iter().filter(|o| o.unroutable).count();
    println!(
        "waybill demo: {} orders, {acknowledged} acknowledged by a partner, {unroutable} unroutable, {} on the audit topic, in {:.1} s — {}",
        outcome.orders.len(),
        outcome.audit_copies,
        outcome.elapsed_ms as f64 / 1000.0,
        if outcome.ok { "OK" } else { "FAILED" }
    );
    for (index, order) in outcome.orders.iter().enumerate() {
        println!();
        println!(
            "#{} {} — {}{}",
            index + 1,
            order.name,
            order.what,
            match (order.audit, order.audit_copy) {
                (true, true) => " [audit: copy on the audit topic]",
                (true, false) => " [audit: NO copy on the audit topic]",
                _ => "",
            }
        );
        println!(
            "   order {}  to {}  total {}  dispatch {}",
            order.order_id, order.country, order.total, order.dispatch_state
        );
        println!(
            "   {:>9}  {:<20}  {:<16}  tracking id",
            "after", "status", "partner"
        );
        for step in &order.journey {
            let detail = if step.detail_code.is_empty() {
                String::new()
            } else {
                format!("  ({})", step.detail_code)
            };
            println!(
                "   {:>9}  {:<20}  {:<16}  {}{detail}",
                format!("+{} ms", step.after_ms),
                step.status,
                step.partner_id,
                step.tracking_id
            );
        }
    }
}
