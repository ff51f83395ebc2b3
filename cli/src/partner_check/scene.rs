//! One scenario's stage: a fresh broker and topic, fresh keys enrolled with both regions, a
//! fresh check directory, the adapter started with the contract's environment, and the waits
//! the scenarios are made of (deadlines and polling, never a sleep as a pass condition).

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use waybill_token::{SigningKey, keys};

use super::{
    adapter::Adapter,
    ingest::{Call, Keys, Region},
    kit::{Broker, PARTITIONS, Record, Sender, TestOrder, order_record},
    report::{Findings, answered},
};

/// How often the kit looks again.
const POLL: Duration = Duration::from_millis(50);
/// The group session timeout the kit asks adapters to use (`WAYBILL_KAFKA_SESSION_TIMEOUT_MS`),
/// so that a killed adapter's group membership expires soon after it is restarted.
pub const SESSION_TIMEOUT_MS: u64 = 6000;

/// What every scenario shares: the regions, the keys, the settings.
pub struct Stage {
    /// The partner id checked.
    pub partner_id: String,
    /// The audience tokens must carry.
    pub audience: String,
    /// The adapter's start command.
    pub start: String,
    /// How long an order may take to be answered.
    pub timeout: Duration,
    /// Where each scenario's check directory goes.
    pub work: PathBuf,
    /// Regions A and B.
    pub regions: [Region; 2],
    /// The partner's enrolled keys.
    pub keys: Arc<Keys>,
}

/// One scenario in progress.
pub struct Scene<'a> {
    /// The stage.
    pub stage: &'a Stage,
    /// This scenario's broker.
    pub broker: Broker,
    /// The partner's topic.
    pub topic: String,
    /// The check directory.
    pub dir: PathBuf,
    /// The adapter.
    pub adapter: Adapter,
    /// The scenario's random source (from the seed).
    pub rng: StdRng,
    /// The current key's number (1, then 2 after a rotation).
    pub key_number: u32,
    started: Instant,
}

impl<'a> Scene<'a> {
    /// Sets the stage for `name` (the `index`-th scenario run): broker, topic, key 1, the check
    /// directory, both regions reset. The adapter is not started yet.
    pub fn new(stage: &'a Stage, name: &str, seed: u64) -> anyhow::Result<Self> {
        for region in &stage.regions {
            region.reset();
        }
        stage.keys.clear();
        let broker = Broker::start()?;
        let prefix = "waybill.partner.".to_owned();
        let topic = format!("{prefix}{}", stage.partner_id);
        broker.create_topic(&topic)?;
        let dir = stage.work.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot empty {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let env = vec![
            ("WAYBILL_PARTNER_ID", stage.partner_id.clone()),
            ("WAYBILL_KAFKA_BROKERS", broker.bootstrap().to_owned()),
            ("WAYBILL_TOPIC_PREFIX", prefix),
            ("WAYBILL_TOKEN_AUDIENCE", stage.audience.clone()),
            ("WAYBILL_CHECK_DIR", dir.to_string_lossy().into_owned()),
            (
                "WAYBILL_KAFKA_SESSION_TIMEOUT_MS",
                SESSION_TIMEOUT_MS.to_string(),
            ),
            ("WAYBILL_KAFKA_FETCH_WAIT_MS", "5".to_owned()),
        ];
        let env = env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let adapter = Adapter::new(&stage.start, env, &dir.join("adapter.log"));
        let mut scene = Self {
            stage,
            broker,
            topic,
            dir,
            adapter,
            rng: StdRng::seed_from_u64(seed),
            key_number: 0,
            started: Instant::now(),
        };
        scene.rotate_key()?;
        Ok(scene)
    }

    /// Makes key `n + 1`, writes it to the check directory, enrols it, and gives it to the next
    /// start of the adapter; the previous key is revoked.
    pub fn rotate_key(&mut self) -> anyhow::Result<()> {
        let previous = self.key_id();
        self.key_number += 1;
        let key = SigningKey::from_bytes(&self.rng.random::<[u8; 32]>());
        let pem = keys::signing_key_to_pem(&key).map_err(|e| anyhow::anyhow!("{e}"))?;
        let file = self.dir.join(format!("key-{}.pem", self.key_number));
        std::fs::write(&file, pem).with_context(|| format!("cannot write {}", file.display()))?;
        let key_id = self.key_id();
        self.stage.keys.enrol(&key_id, key.verifying_key());
        if self.key_number > 1 {
            self.stage.keys.revoke(&previous);
        }
        self.adapter
            .set_env("WAYBILL_PARTNER_KEY_FILE", &file.to_string_lossy());
        self.adapter.set_env("WAYBILL_PARTNER_KEY_ID", &key_id);
        Ok(())
    }

    /// The current key's id.
    pub fn key_id(&self) -> String {
        format!("{}-check-{}", self.stage.partner_id, self.key_number)
    }

    /// Region A (`0`) or B (`1`).
    pub fn region(&self, index: usize) -> &Region {
        &self.stage.regions[index]
    }

    /// Seconds since the scenario started.
    pub fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// `n` new orders (address line 2 empty).
    pub fn orders(&mut self, n: usize) -> Vec<TestOrder> {
        (0..n).map(|_| TestOrder::new(&mut self.rng, "")).collect()
    }

    /// The record of `order`'s `send_count`-th send from region `region`, to `partition`
    /// (taken modulo the topic's partitions).
    pub fn record(
        &self,
        order: &TestOrder,
        send_count: i32,
        region: usize,
        partition: usize,
    ) -> Record {
        let region = self.region(region);
        let partition = i32::try_from(partition).unwrap_or(0) % PARTITIONS;
        order_record(order, send_count, self.sender(region), partition)
    }

    /// The first send of each of `orders` from region `region`, spread over the partitions.
    pub fn first_sends(&self, orders: &[TestOrder], region: usize) -> Vec<Record> {
        orders
            .iter()
            .enumerate()
            .map(|(i, order)| self.record(order, 1, region, i))
            .collect()
    }

    /// Who sends from `region`.
    pub fn sender<'r>(&'r self, region: &'r Region) -> Sender<'r> {
        Sender {
            partner_id: &self.stage.partner_id,
            region: &region.name,
            reply_to: &region.reply_to,
        }
    }

    /// Produces `records`, each registered with the region whose reply-to it carries.
    pub async fn send(&self, records: &[Record]) -> anyhow::Result<()> {
        for record in records {
            for region in &self.stage.regions {
                let carries = record.headers.iter().any(|(name, value)| {
                    name == waybill_proto::headers::REPLY_TO && *value == region.reply_to
                });
                if carries {
                    region.sent(&record.key);
                }
            }
            self.broker.produce(&self.topic, record).await?;
        }
        Ok(())
    }

    /// Every call either region received.
    pub fn calls(&self) -> Vec<Call> {
        let mut calls = self.region(0).calls();
        calls.extend(self.region(1).calls());
        calls
    }

    /// Waits until each of `orders` is answered at region `region`; the ones that are not by
    /// the deadline. An adapter that exits on its own is a finding.
    pub async fn wait_answered(
        &mut self,
        orders: &[&TestOrder],
        region: usize,
        findings: &mut Findings,
    ) -> Vec<String> {
        let deadline = Instant::now() + self.stage.timeout;
        loop {
            let calls = self.region(region).calls();
            let missing: Vec<String> = orders
                .iter()
                .filter(|o| !answered(&calls, &o.id))
                .map(|o| o.id.clone())
                .collect();
            if missing.is_empty() || Instant::now() >= deadline {
                return missing;
            }
            if self.check_running(findings) {
                return missing;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether the adapter exited on its own (a finding, with its log's end).
    pub fn check_running(&mut self, findings: &mut Findings) -> bool {
        match self.adapter.exited() {
            Some(status) => {
                findings.broke(format!("the adapter exited on its own ({status})"));
                findings.saw(format!("its log ends:\n{}", self.adapter.log_tail(15)));
                true
            }
            None => false,
        }
    }

    /// Waits until the group has committed every partition up to the log's end; whether it did
    /// before `within`.
    pub async fn wait_committed(&self, within: Duration) -> bool {
        let group = format!("waybill-connector.{}", self.stage.partner_id);
        let deadline = Instant::now() + within;
        loop {
            let positions = {
                let broker = &self.broker;
                let topic = self.topic.clone();
                tokio::task::block_in_place(|| broker.positions(&group, &topic))
            };
            if let Ok(positions) = positions
                && positions
                    .iter()
                    .all(|(committed, end)| *end == 0 || committed >= end)
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits up to `within` for a call that `stop` says ends the wait; whether one came.
    pub async fn wait_for(&self, within: Duration, stop: impl Fn(&[Call]) -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if stop(&self.calls()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops the adapter (end of the scenario).
    pub async fn finish(&mut self) {
        self.adapter.stop().await;
    }
}
