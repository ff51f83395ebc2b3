//! The chaos test of the example partners (issue 25, item 5): the deployment's shape as OS
//! processes — Postgres, a Tansu broker process, `waybill orders`, `waybill status-ingest`, a
//! `waybill dispatcher`, and `waybill partner local-express` and `waybill partner
//! distance-freight` — while orders are placed in bursts (several in the same millisecond, the
//! case where tracking ids taken from a UUIDv7's timestamp prefix collided). The local-express
//! connector is killed with SIGKILL and restarted again and again, always inside the window in
//! which it owes orders their later `SHIPPED` (reported `--shipped-after-ms` after accepting);
//! distance-freight and StatusIngest are killed too.
//!
//! At the end: every order local-express acknowledged is `SHIPPED` (exactly once, the
//! `SHIPPED` it scheduled with its answer, kept in its inbox across the kills), every order of
//! distance-freight acknowledged, each order with one tracking id, and no tracking id shared by
//! two orders, across both partners.
//!
//! The short version runs in the test suite; a longer one:
//!
//! ```text
//! WAYBILL_CHAOS_EXAMPLES_SECONDS=120 WAYBILL_CHAOS_EXAMPLES_RATE=100 \
//!   cargo test --release -p waybill --test chaos_examples -- --nocapture
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)] // the helpers this file does not use (the partner-topic checker)
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{
    enrolment::{add_key, enroll, order_request},
    processes::{Loop, Service},
};
use sqlx::PgPool;
use uuid::Uuid;
use waybill_proto::v1::{
    dispatch_admin_client::DispatchAdminClient, order_service_client::OrderServiceClient,
};
use waybill_test_kit::{TestBackend, TestDatabase, broker::TestBroker};

const LOCAL: (&str, &str) = ("local-express", "DE");
const FREIGHT: (&str, &str) = ("distance-freight", "FR");
const AUDIENCE: &str = "waybill-chaos-examples";
/// How long after accepting local-express reports an order `SHIPPED`.
const SHIPPED_AFTER_MS: u64 = 2000;
/// Orders placed at once (one burst: several ids in the same millisecond).
const BURST: u64 = 8;
/// How many SHIPPED reports local-express should owe when it is killed.
const OWING_AT_KILL: usize = 12;

/// How a run is shaped; the defaults are the suite's short version.
struct Plan {
    seconds: u64,
    rate: u64,
    kill_every: Duration,
}

impl Plan {
    fn from_env() -> Self {
        let var = common::processes::env_u64;
        Self {
            seconds: var("WAYBILL_CHAOS_EXAMPLES_SECONDS", 24),
            rate: var("WAYBILL_CHAOS_EXAMPLES_RATE", 24),
            kill_every: Duration::from_secs(var("WAYBILL_CHAOS_EXAMPLES_KILL_EVERY", 6)),
        }
    }
}

/// `waybill partner <id>`'s flags: its key, its inbox (a file kept across kills), Tansu's
/// settings.
fn partner_args(id: &str, brokers: &str, prefix: &str, dir: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "partner",
        id,
        "--kafka-brokers",
        brokers,
        "--topic-prefix",
        prefix,
        "--session-timeout-ms",
        "6000",
        "--fetch-wait-ms",
        "5",
        "--key-file",
        &dir.join(format!("{id}.pem")).display().to_string(),
        "--key-id",
        &format!("{id}-k1"),
        "--audience",
        AUDIENCE,
        "--inbox",
        &dir.join(format!("{id}-inbox.db")).display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    if id == LOCAL.0 {
        args.extend([
            "--shipped-after-ms".to_owned(),
            SHIPPED_AFTER_MS.to_string(),
        ]);
    }
    args
}

/// What the orders' history says, per order.
#[derive(Debug, Default)]
struct Journey {
    received: usize,
    shipped: usize,
    tracking_ids: BTreeSet<String>,
}

async fn journeys(pool: &PgPool) -> BTreeMap<Uuid, Journey> {
    let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT order_id, status, tracking_id FROM order_status_events \
         WHERE status IN ('RECEIVED_BY_PARTNER', 'SHIPPED')",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut journeys: BTreeMap<Uuid, Journey> = BTreeMap::new();
    for (id, status, tracking_id) in rows {
        let journey = journeys.entry(id).or_default();
        match status.as_str() {
            "RECEIVED_BY_PARTNER" => journey.received += 1,
            _ => journey.shipped += 1,
        }
        if !tracking_id.is_empty() {
            journey.tracking_ids.insert(tracking_id);
        }
    }
    journeys
}

/// Whether order `id` of `partner` is where the test wants it: acknowledged, and shipped for
/// local-express.
fn done(journeys: &BTreeMap<Uuid, Journey>, id: &Uuid, partner: &str) -> bool {
    journeys
        .get(id)
        .is_some_and(|j| j.received >= 1 && (partner != LOCAL.0 || j.shipped >= 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_partners_ship_every_order_with_its_own_tracking_id_through_kills() {
    waybill_test_kit::require!(
        std::env::var_os("WAYBILL_TANSU_BIN").is_some(),
        "WAYBILL_TANSU_BIN is not set (scripts/test.sh installs Tansu and sets it)"
    );
    let plan = Plan::from_env();
    let dir = std::env::temp_dir().join(format!("waybill-chaos-examples-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let database = TestDatabase::create(TestBackend::Postgres).await;
    let broker = TestBroker::tansu();
    let brokers = broker.bootstrap_servers().to_owned();
    let prefix = format!("cx{}.partner.", &Uuid::new_v4().simple().to_string()[..8]);

    let Loop {
        orders: mut orders_service,
        mut ingest,
        mut dispatcher,
        orders_addr,
        dispatcher_addr,
        ..
    } = Loop::start(
        &database.url,
        &brokers,
        &prefix,
        AUDIENCE,
        &["--rate-limit", "1000000"],
        &dir,
    )
    .await;
    let mut admin = DispatchAdminClient::connect(format!("http://{dispatcher_addr}"))
        .await
        .unwrap();
    for (id, country) in [LOCAL, FREIGHT] {
        enroll(&mut admin, id, country, Duration::from_secs(600), 3).await;
        add_key(&mut admin, id, &dir.join(format!("{id}.pem"))).await;
    }
    let mut local = Service::start(
        "local-express",
        partner_args(LOCAL.0, &brokers, &prefix, &dir),
        &dir,
    );
    let mut freight = Service::start(
        "distance-freight",
        partner_args(FREIGHT.0, &brokers, &prefix, &dir),
        &dir,
    );

    // Bursts of orders at a steady rate (open loop), the two partners' countries alternating.
    let placed: Arc<Mutex<BTreeMap<Uuid, &'static str>>> = Arc::default();
    let placing = {
        let placed = placed.clone();
        let client = OrderServiceClient::connect(format!("http://{orders_addr}"))
            .await
            .unwrap();
        let (bursts_per_second, seconds) = ((plan.rate / BURST).max(1), plan.seconds);
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_secs_f64(1.0 / bursts_per_second as f64));
            let until = Instant::now() + Duration::from_secs(seconds);
            let mut calls = Vec::new();
            for burst in 0u64.. {
                tick.tick().await;
                if Instant::now() >= until {
                    break;
                }
                for n in burst * BURST..(burst + 1) * BURST {
                    let (partner, country) = if n % 2 == 0 { LOCAL } else { FREIGHT };
                    let (mut client, placed) = (client.clone(), placed.clone());
                    calls.push(tokio::spawn(async move {
                        let reply = client
                            .place_order(order_request(&format!("cx-{n}"), country))
                            .await
                            .unwrap();
                        let id = Uuid::parse_str(&reply.into_inner().order.unwrap().id).unwrap();
                        placed.lock().unwrap().insert(id, partner);
                    }));
                }
            }
            for call in calls {
                call.await.unwrap();
            }
        })
    };

    // The chaos: local-express killed (SIGKILL) and restarted every `kill_every`, with orders
    // accepted in the moments before each kill still owed their SHIPPED; distance-freight and
    // StatusIngest killed in between.
    let pool = PgPool::connect(&database.url).await.unwrap();
    let started = Instant::now();
    let run_for = Duration::from_secs(plan.seconds);
    let (mut local_kills, mut freight_kills, mut ingest_kills) = (0u32, 0u32, 0u32);
    let mut crashes: Vec<String> = Vec::new();
    let mut next_kill = plan.kill_every;
    let mut killed_owing = 0usize;
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for service in [&mut local, &mut freight, &mut ingest, &mut dispatcher] {
            if let Some(status) = service.restart_if_exited() {
                crashes.push(format!("{} {status}", service.role));
            }
        }
        if started.elapsed() < next_kill {
            continue;
        }
        // Kill local-express once it owes SHIPPED reports (acknowledged, not shipped yet): a
        // few, or any after half a period more.
        let journeys = journeys(&pool).await;
        let owing = placed
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, partner)| **partner == LOCAL.0)
            .filter_map(|(id, _)| journeys.get(id))
            .filter(|j| j.received >= 1 && j.shipped == 0)
            .count();
        if owing < OWING_AT_KILL && started.elapsed() < next_kill + plan.kill_every / 2 {
            continue;
        }
        killed_owing += owing;
        next_kill += plan.kill_every;
        local.kill_hard();
        local.spawn();
        local_kills += 1;
        match local_kills % 3 {
            1 => {
                freight.kill_hard();
                freight.spawn();
                freight_kills += 1;
            }
            2 => {
                ingest.kill_hard();
                tokio::time::sleep(Duration::from_millis(500)).await;
                ingest.spawn();
                ingest_kills += 1;
            }
            _ => {}
        }
    }
    placing.await.unwrap();
    let placing_done = started.elapsed();
    let placed = placed.lock().unwrap().clone();

    // Every order acknowledged, and every local-express order shipped.
    let deadline = Instant::now() + Duration::from_secs(150);
    let journeys = loop {
        for service in [&mut local, &mut freight, &mut ingest, &mut dispatcher] {
            if let Some(status) = service.restart_if_exited() {
                crashes.push(format!("{} {status}", service.role));
            }
        }
        let journeys = journeys(&pool).await;
        let waiting = placed
            .iter()
            .filter(|(id, partner)| !done(&journeys, id, partner))
            .count();
        if waiting == 0 || Instant::now() > deadline {
            break journeys;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let settled_after = started.elapsed();
    let tracking: Vec<(Uuid, Option<String>)> =
        sqlx::query_as("SELECT id, tracking_id FROM orders")
            .fetch_all(&pool)
            .await
            .unwrap();
    let stopped = [&mut local, &mut freight]
        .into_iter()
        .map(Service::stop)
        .filter(|ok| *ok)
        .count();
    println!(
        "chaos examples: placed {} orders in {:.1}s in bursts of {BURST}, settled after \
         {:.1}s; local-express killed {local_kills} times (owing {killed_owing} SHIPPED in \
         all), distance-freight {freight_kills}, StatusIngest {ingest_kills}; crashes \
         {crashes:?}; logs in {}",
        placed.len(),
        placing_done.as_secs_f64(),
        settled_after.as_secs_f64(),
        dir.display()
    );

    assert!(!placed.is_empty(), "orders were placed");
    assert!(local_kills >= 2, "local-express killed {local_kills} times");
    assert!(
        killed_owing > 0,
        "no kill came while SHIPPED reports were owed"
    );
    let not_done: Vec<String> = placed
        .iter()
        .filter(|(id, partner)| !done(&journeys, id, partner))
        .map(|(id, partner)| format!("{partner} {id}: {:?}", journeys.get(id)))
        .collect();
    assert!(
        not_done.is_empty(),
        "{} of {} orders not acknowledged (or, for local-express, never SHIPPED), e.g. {:?}",
        not_done.len(),
        placed.len(),
        &not_done[..not_done.len().min(5)]
    );
    for (id, partner) in &placed {
        let journey = &journeys[id];
        assert_eq!(journey.received, 1, "{partner} {id}: {journey:?}");
        if *partner == LOCAL.0 {
            assert_eq!(journey.shipped, 1, "{partner} {id}: {journey:?}");
        }
        assert_eq!(journey.tracking_ids.len(), 1, "{partner} {id}: {journey:?}");
    }
    // No tracking id shared by two orders, across both partners.
    let mut by_tracking: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    for (id, tracking_id) in &tracking {
        if let Some(&partner) = placed.get(id) {
            let tracking_id = tracking_id.clone().unwrap_or_default();
            let prefix = if partner == LOCAL.0 { "LX-" } else { "DF" };
            assert!(
                tracking_id.starts_with(prefix),
                "{partner} {id}: {tracking_id:?}"
            );
            assert!(journeys[id].tracking_ids.contains(&tracking_id), "{id}");
            by_tracking.entry(tracking_id).or_default().push(*id);
        }
    }
    let shared: Vec<_> = by_tracking
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .collect();
    assert!(shared.is_empty(), "tracking ids shared: {shared:?}");
    let unexplained: Vec<&String> = crashes.iter().collect();
    assert!(unexplained.is_empty(), "processes died: {unexplained:?}");
    assert_eq!(stopped, 2, "the partners stop cleanly");
    let _ = (orders_service.stop(), ingest.stop(), dispatcher.stop());
    drop(database);
    let _ = std::fs::remove_dir_all(&dir);
}
