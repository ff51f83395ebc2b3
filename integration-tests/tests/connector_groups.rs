//! Connector instances sharing a consumer group, and a connector consuming two clusters.
//! Instances that share partitions share a Postgres inbox, so the one taking over knows what
//! the other did; an instance is stopped gracefully in one test and SIGKILLed (a child
//! process) in another.
#![allow(clippy::unwrap_used)]

#[path = "support/connector.rs"]
mod support;

use std::{process::Stdio, time::Duration};

use support::*;
use waybill_connector_sdk::{Connector, inbox::SqlInbox};
use waybill_integration_tests::{AUDIENCE, TestStack};
use waybill_proto::v1::OrderStatus;
use waybill_test_kit::{TestBackend, TestDatabase};

const WITHIN: Duration = Duration::from_secs(40);

async fn all_received_once(stack: &TestStack, order_ids: &[String]) {
    for order_id in order_ids {
        wait_for_status(stack, order_id, OrderStatus::ReceivedByPartner, WITHIN).await;
    }
    for order_id in order_ids {
        let order = get_order(stack, order_id).await;
        assert_eq!(
            events(&order, OrderStatus::ReceivedByPartner),
            1,
            "order {order_id} received once"
        );
        assert_eq!(order.tracking_id, tracking_id(order_id));
    }
}

async fn place_many(stack: &TestStack, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(place(stack, "US", "").await);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_the_partitions_and_one_takes_over_when_the_other_stops() {
    let stack = stack().await;
    let key = enroll(&stack, "acme", "US", 1).await;
    let inbox_db = TestDatabase::create(TestBackend::Postgres).await;
    let recorder = Recorder::default();
    let first = start(
        builder(&stack, "acme", &key)
            .inbox_url(&inbox_db.url)
            .build()
            .await
            .unwrap(),
        recorder.clone(),
    );
    let second = start(
        builder(&stack, "acme", &key)
            .inbox_url(&inbox_db.url)
            .build()
            .await
            .unwrap(),
        recorder.clone(),
    );
    eventually(
        WITHIN,
        "the three partitions split between both",
        || async {
            let (a, b) = (first.partitions(), second.partitions());
            !a.is_empty() && !b.is_empty() && a.len() + b.len() == 3
        },
    )
    .await;

    let mut order_ids = place_many(&stack, 6).await;
    all_received_once(&stack, &order_ids).await;
    let (by_first, by_second) = (
        first.health.metrics().orders_accepted,
        second.health.metrics().orders_accepted,
    );
    println!("orders handled: first {by_first}, second {by_second}");

    first.stop().await;
    eventually(WITHIN, "the survivor owns every partition", || async {
        second.partitions().len() == 3
    })
    .await;
    order_ids.extend(place_many(&stack, 6).await);
    all_received_once(&stack, &order_ids).await;
    for order_id in &order_ids {
        assert_eq!(
            recorder.calls_for(order_id),
            1,
            "order {order_id} handled once"
        );
    }
    second.stop().await;
}

/// Run as a child process by the test below (never on its own): a connector with a slow
/// adapter that never commits, until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of the SIGKILL test"]
async fn child_connector_until_killed() {
    let (Ok(bootstrap), Ok(prefix), Ok(inbox)) = (
        std::env::var("WAYBILL_CHILD_BOOTSTRAP"),
        std::env::var("WAYBILL_CHILD_PREFIX"),
        std::env::var("WAYBILL_CHILD_INBOX"),
    ) else {
        panic!("run by the SIGKILL test only");
    };
    logs();
    let connector = Connector::builder("acme")
        .cluster(
            waybill_connector_sdk::ClusterConfig::new("local", bootstrap)
                .topic_prefix(prefix)
                .session_timeout(Duration::from_secs(6)),
        )
        .signing_key(signing_key(1, "acme-k1"))
        .audience(AUDIENCE)
        .inbox_url(inbox)
        // Never commits: everything it did is redelivered to the next owner.
        .commit_interval(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    let adapter = Recorder {
        delay: Duration::from_millis(1500),
        ..Recorder::default()
    };
    connector
        .run(adapter, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_killed_mid_flight_is_taken_over_with_nothing_lost_or_doubled() {
    let stack = stack().await;
    let key = enroll(&stack, "acme", "US", 1).await;
    let inbox_db = TestDatabase::create(TestBackend::Postgres).await;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_connector_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .env(
            "WAYBILL_CHILD_BOOTSTRAP",
            stack.broker().bootstrap_servers(),
        )
        .env("WAYBILL_CHILD_PREFIX", &stack.topics.partner_prefix)
        .env("WAYBILL_CHILD_INBOX", &inbox_db.url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // A first wave the child answers (and never commits), then a second one it is killed in
    // the middle of: calls under way, answers not stored.
    let mut order_ids = place_many(&stack, 6).await;
    let inbox = SqlInbox::connect_postgres(&inbox_db.url).await.unwrap();
    use waybill_connector_sdk::inbox::Inbox as _;
    eventually(WITHIN, "the child answered the first wave", || async {
        inbox.counts("acme").await.unwrap().accepted == 6
    })
    .await;
    order_ids.extend(place_many(&stack, 6).await);
    eventually(
        WITHIN,
        "the child is calling the adapter for the second wave",
        || async { inbox.counts("acme").await.unwrap().started >= 1 },
    )
    .await;
    child.kill().unwrap();
    let _ = child.wait();
    let at_kill = inbox.counts("acme").await.unwrap();
    println!("at the kill: {at_kill:?}");
    assert!(
        (at_kill.accepted as usize) < order_ids.len(),
        "the child was killed mid-flight"
    );

    let recorder = Recorder::default();
    let survivor = start(
        builder(&stack, "acme", &key)
            .inbox_url(&inbox_db.url)
            .build()
            .await
            .unwrap(),
        recorder.clone(),
    );
    all_received_once(&stack, &order_ids).await;
    // In effect once: orders the child had answered were answered from the inbox; only an
    // order whose call was under way at the kill may be asked again (same idempotency key).
    let mut asked_twice = 0;
    for order_id in &order_ids {
        let row = inbox.order("acme", order_id).await.unwrap().unwrap();
        assert!(row.adapter_calls <= 2, "{order_id}: {row:?}");
        if row.adapter_calls == 2 {
            asked_twice += 1;
        }
    }
    assert!(
        asked_twice <= order_ids.len() - at_kill.accepted as usize,
        "only orders without a stored answer were asked again"
    );
    // The child's answered orders were RECEIVED before the survivor re-read them: wait for
    // the survivor to reach them too.
    eventually(
        WITHIN,
        "every order the child answered recognised from the inbox",
        || async { survivor.health.metrics().duplicates_skipped >= at_kill.accepted as u64 },
    )
    .await;
    survivor.stop().await;
    inbox.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connector_on_two_clusters_answers_each_order_at_its_own_reply_to() {
    let east = stack().await;
    let west = stack().await;
    let key = enroll(&east, "acme", "US", 1).await;
    // The same partner and key, enrolled in each region.
    let _ = enroll(&west, "acme", "US", 1).await;
    assert_ne!(east.ingest_addr(), west.ingest_addr());
    let recorder = Recorder::default();
    let running = start(
        builder(&east, "acme", &key)
            .cluster(cluster(&west, "west"))
            .build()
            .await
            .unwrap(),
        recorder.clone(),
    );
    let from_east = place(&east, "US", "").await;
    let from_west = place(&west, "US", "").await;
    wait_for_status(&east, &from_east, OrderStatus::ReceivedByPartner, WITHIN).await;
    wait_for_status(&west, &from_west, OrderStatus::ReceivedByPartner, WITHIN).await;
    // Each region's database knows only its own order.
    let row = running
        .inbox
        .order("acme", &from_west)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.reply_to, format!("http://{}", west.ingest_addr()));
    let row = running
        .inbox
        .order("acme", &from_east)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.reply_to, format!("http://{}", east.ingest_addr()));
    assert_eq!(recorder.calls_for(&from_east), 1);
    assert_eq!(recorder.calls_for(&from_west), 1);
    let clusters = running.health.clusters();
    assert_eq!(clusters.len(), 2);
    assert!(
        clusters
            .iter()
            .all(|c| c.polling && !c.partitions.is_empty())
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_partitions_stuck_orders_are_abandoned_within_the_bound_and_fenced() {
    let stack = stack().await;
    let key = enroll(&stack, "acme", "US", 1).await;
    let inbox_db = TestDatabase::create(TestBackend::Postgres).await;
    // The first instance's adapter hangs far longer than the revocation bound.
    let stuck = Recorder {
        delay: Duration::from_secs(8),
        ..Recorder::default()
    };
    let first = start(
        builder(&stack, "acme", &key)
            .inbox_url(&inbox_db.url)
            .adapter_timeout(Duration::from_secs(30))
            .revoke_bound(Duration::from_millis(500))
            .build()
            .await
            .unwrap(),
        stuck.clone(),
    );
    first.wait_assigned().await;
    let order_ids = place_many(&stack, 3).await;
    eventually(
        WITHIN,
        "the first instance is stuck in the adapter",
        || async { stuck.calls.lock().unwrap().len() == 3 },
    )
    .await;

    // A second member joins: the rebalance revokes the first's partitions, which gives its
    // stuck calls half a second, abandons them and fences their completions.
    let quick = Recorder::default();
    let second = start(
        builder(&stack, "acme", &key)
            .inbox_url(&inbox_db.url)
            .build()
            .await
            .unwrap(),
        quick.clone(),
    );
    eventually(WITHIN, "the stuck orders abandoned and fenced", || async {
        let metrics = first.health.metrics();
        metrics.abandoned >= 1 && metrics.fenced_completions >= 1
    })
    .await;
    // Whoever owns each partition now redoes what was abandoned (same idempotency key).
    for order_id in &order_ids {
        let order = wait_for_status(&stack, order_id, OrderStatus::ReceivedByPartner, WITHIN).await;
        assert_eq!(events(&order, OrderStatus::ReceivedByPartner), 1);
    }
    // An order is asked again only after a call for it was abandoned: one more call per
    // abandonment at most (a loaded machine may rebalance more than once, and an instance that
    // gets a partition back asks again).
    let abandoned = first.health.metrics().abandoned + second.health.metrics().abandoned;
    for order_id in &order_ids {
        let calls = stuck.calls_for(order_id) + quick.calls_for(order_id);
        assert!(
            calls as u64 <= 1 + abandoned,
            "{order_id}: {calls} adapter calls after {abandoned} abandoned"
        );
    }
    assert_eq!(
        first.health.metrics().orders_accepted + second.health.metrics().orders_accepted,
        3,
        "each order answered once in effect"
    );
    second.stop().await;
    first.stop().await;
}
