//! The chaos test's checker: reads every partner topic the way a partner's consumer would and
//! confirms each order it sees the way a partner's report would (`RECEIVED_BY_PARTNER`).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};
use sqlx::PgPool;
use uuid::Uuid;

/// What the checker saw on the partner topics.
#[derive(Default)]
pub struct Seen {
    /// (topic, order id) → copies seen (distinct records, not re-reads).
    pub copies: HashMap<(String, String), u32>,
    /// Records read: (consumer generation, topic, partition, offset). A restarted broker starts
    /// its offsets again, hence the generation; re-assigning re-reads, hence the set.
    pub records: HashSet<(u32, String, i32, i64)>,
    /// Order ids seen and not yet confirmed to the database.
    pub to_confirm: Vec<(Uuid, String)>,
}

/// Reads every partition of the partner topics from the beginning, the whole run, following
/// partitions that appear (a restarted broker re-creates topics) and offsets that reset.
///
/// While the broker restarts (`paused`), the consumer is dropped and made anew once the topics
/// exist again: librdkafka 2.12 crashes (SIGSEGV in its metadata cache) on the metadata Tansu
/// 0.6 answers for an assigned topic that vanished. The dispatchers' producers are not affected.
pub fn read_partner_topics(
    brokers: String,
    topic_prefix: &'static str,
    partners: Vec<&'static str>,
    seen: Arc<Mutex<Seen>>,
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let topics: Vec<String> = partners
        .iter()
        .map(|id| format!("{topic_prefix}{id}"))
        .collect();
    let mut generation = 0u32;
    while !stop.load(Ordering::Relaxed) {
        if paused.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        generation += 1;
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "waybill-chaos-checker")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .create()
            .unwrap();
        let mut assigned: HashSet<(String, i32)> = HashSet::new();
        let mut last_metadata = Instant::now() - Duration::from_secs(10);
        while !stop.load(Ordering::Relaxed) && !paused.load(Ordering::Relaxed) {
            if last_metadata.elapsed() > Duration::from_secs(1) {
                last_metadata = Instant::now();
                let mut grown = false;
                if let Ok(metadata) = consumer.fetch_metadata(None, Duration::from_secs(1)) {
                    for t in metadata.topics() {
                        if !topics.iter().any(|name| name == t.name()) {
                            continue;
                        }
                        for p in t.partitions() {
                            grown |= assigned.insert((t.name().to_owned(), p.id()));
                        }
                    }
                }
                if grown {
                    let mut list = TopicPartitionList::new();
                    for (topic, partition) in &assigned {
                        list.add_partition_offset(topic, *partition, Offset::Beginning)
                            .unwrap();
                    }
                    // Re-assigning restarts every partition from the beginning; re-read records
                    // are recognised by their (generation, partition, offset) below.
                    consumer.assign(&list).unwrap();
                }
            }
            let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
            let topic = message.topic().to_owned();
            let mut seen = seen.lock().unwrap();
            let record = (
                generation,
                topic.clone(),
                message.partition(),
                message.offset(),
            );
            if !seen.records.insert(record) {
                continue;
            }
            let copies = seen.copies.entry((topic.clone(), key.clone())).or_default();
            *copies += 1;
            if *copies == 1
                && let Ok(id) = Uuid::parse_str(&key)
            {
                let partner = topic.trim_start_matches(topic_prefix).to_owned();
                seen.to_confirm.push((id, partner));
            }
        }
    }
}

/// Confirms receipt of the orders the checker saw, as a partner's report would: one order per
/// transaction, written as StatusIngest writes them — the dispatch row locked first (as every
/// writer of an order's history does, the relay included), the event numbered after the latest.
pub async fn confirm(pool: &PgPool, orders: Vec<(Uuid, String)>) {
    use futures::StreamExt;
    futures::stream::iter(orders)
        .for_each_concurrent(8, |(id, partner)| async move {
            let mut tx = waybill_service_kit::db::begin(pool).await.unwrap();
            sqlx::query("SELECT 1 FROM dispatch WHERE order_id = $1 FOR UPDATE")
                .bind(id)
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query(
                "WITH bumped AS ( \
                     UPDATE orders SET status = 'RECEIVED_BY_PARTNER', \
                         status_seq = (SELECT max(seq) FROM order_status_events \
                                       WHERE order_id = $1) + 1 \
                     WHERE id = $1 RETURNING status_seq) \
                 INSERT INTO order_status_events \
                     (order_id, seq, status, partner_id, occurred_at, recorded_at) \
                 SELECT $1, status_seq, 'RECEIVED_BY_PARTNER', $2, now(), now() FROM bumped",
            )
            .bind(id)
            .bind(&partner)
            .execute(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();
        })
        .await;
}
