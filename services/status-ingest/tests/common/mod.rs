//! A world for StatusIngest tests on either backend: partners, keys, orders routed the way the
//! dispatcher routes them (written with plain SQL, so these tests depend on no other service's
//! code), and read-backs of what a report changed.
#![allow(dead_code, clippy::unwrap_used)]

pub mod service;

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use sqlx::Row;
use uuid::Uuid;
use waybill_service_kit::{
    clock::ManualClock,
    db::{Backend, Database, from_unix_micros, to_unix_micros},
};
use waybill_status_ingest::{
    IngestDeps,
    metrics::IngestMetrics,
    store::{self, IngestStore},
};
use waybill_test_kit::{TestBackend, TestDatabase};
use waybill_token::{Report, ReportClaims, SigningKey, TokenSigner};

/// The audience the test service accepts.
pub const AUDIENCE: &str = "waybill-test";
/// How long after a send the partner must confirm receipt.
pub const HANDOVER: i64 = 600;

/// The fixed start of every test's clock.
pub fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0)
        .single()
        .unwrap()
}

/// A database, a controllable clock and the store.
pub struct World {
    pub test_db: TestDatabase,
    pub db: Database,
    pub clock: ManualClock,
    pub store: Arc<dyn IngestStore>,
    pub metrics: Arc<IngestMetrics>,
}

/// The order row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    pub status: String,
    pub status_seq: i64,
    pub partner_id: Option<String>,
    pub tracking_id: Option<String>,
}

/// The dispatch row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchRow {
    pub state: String,
    pub partner_id: Option<String>,
    pub ack_due_at: Option<DateTime<Utc>>,
    pub lease_owner: Option<String>,
    pub last_error: Option<String>,
}

/// One history event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub seq: i64,
    pub status: String,
    pub partner_id: String,
    pub tracking_id: String,
    pub report_id: Option<String>,
    pub detail: String,
    pub detail_code: String,
    pub action_required: bool,
    pub needs_review: bool,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
}

/// A signing key for partner `partner` enrolled as `kid`.
pub fn signer(seed: u8, kid: &str) -> TokenSigner {
    TokenSigner::new(SigningKey::from_bytes(&[seed; 32]), kid)
}

/// A token for `report` issued at `now`, valid two minutes, with a fresh token id.
pub fn token_for(signer: &TokenSigner, report: &Report, now: DateTime<Utc>) -> String {
    signer.sign(&ReportClaims::new(
        report,
        AUDIENCE,
        now,
        120,
        Uuid::new_v4().to_string(),
    ))
}

impl World {
    /// A fresh database on `backend`, migrated, with the clock at [`start`].
    pub async fn new(backend: TestBackend) -> Self {
        let test_db = TestDatabase::create(backend).await;
        let db = test_db.connect().await;
        let clock = ManualClock::new(start());
        let store = store::for_database_with_clock(&db, Arc::new(clock.clone()));
        Self {
            test_db,
            db,
            clock,
            store,
            metrics: Arc::new(IngestMetrics::default()),
        }
    }

    /// Service dependencies over this world.
    pub fn deps(&self) -> IngestDeps {
        IngestDeps {
            store: self.store.clone(),
            clock: Arc::new(self.clock.clone()),
            audience: AUDIENCE.to_owned(),
            metrics: self.metrics.clone(),
            registry: Default::default(),
            relay_commits: Some(self.db.feed().clone()),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        use waybill_service_kit::clock::Clock as _;
        self.clock.now()
    }

    /// Enrols a partner.
    pub async fn partner(&self, id: &str) {
        let now = self.now();
        match self.db.backend() {
            Backend::Postgres(pool) => {
                sqlx::query("INSERT INTO partners (id, display_name, enabled, handover_deadline_ms, resend_budget, topic, created_at, updated_at) VALUES ($1, $1, TRUE, $2, 3, $3, $4, $4)")
                    .bind(id).bind(HANDOVER * 1000).bind(format!("waybill.partner.{id}")).bind(now)
                    .execute(pool).await.unwrap();
            }
            Backend::Sqlite(pool) => {
                sqlx::query("INSERT INTO partners (id, display_name, enabled, handover_deadline_ms, resend_budget, topic, created_at, updated_at) VALUES (?1, ?1, 1, ?2, 3, ?3, ?4, ?4)")
                    .bind(id).bind(HANDOVER * 1000).bind(format!("waybill.partner.{id}")).bind(to_unix_micros(now))
                    .execute(pool).await.unwrap();
            }
        }
    }

    /// Enrols a partner with a key `k1` (for store-level reports, whose `key_id` is `k1`).
    pub async fn partner_with_key(&self, id: &str) {
        self.partner(id).await;
        self.key(id, &signer(9, "k1")).await;
    }

    /// Enrols `signer`'s public key for `partner` (raw 32 bytes, as AddPartnerKey stores it).
    pub async fn key(&self, partner: &str, signer: &TokenSigner) {
        let now = self.now();
        let public = signer.verifying_key().to_bytes().to_vec();
        match self.db.backend() {
            Backend::Postgres(pool) => {
                sqlx::query("INSERT INTO partner_keys (partner_id, key_id, public_key, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(partner).bind(signer.key_id()).bind(public).bind(now)
                    .execute(pool).await.unwrap();
            }
            Backend::Sqlite(pool) => {
                sqlx::query("INSERT INTO partner_keys (partner_id, key_id, public_key, created_at) VALUES (?, ?, ?, ?)")
                    .bind(partner).bind(signer.key_id()).bind(public).bind(to_unix_micros(now))
                    .execute(pool).await.unwrap();
            }
        }
    }

    /// Revokes a key.
    pub async fn revoke(&self, partner: &str, kid: &str) {
        let now = self.now();
        match self.db.backend() {
            Backend::Postgres(pool) => {
                sqlx::query(
                    "UPDATE partner_keys SET revoked_at = $3 WHERE partner_id = $1 AND key_id = $2",
                )
                .bind(partner)
                .bind(kid)
                .bind(now)
                .execute(pool)
                .await
                .unwrap();
            }
            Backend::Sqlite(pool) => {
                sqlx::query(
                    "UPDATE partner_keys SET revoked_at = ?3 WHERE partner_id = ?1 AND key_id = ?2",
                )
                .bind(partner)
                .bind(kid)
                .bind(to_unix_micros(now))
                .execute(pool)
                .await
                .unwrap();
            }
        }
    }

    /// A placed order: its row, its PLACED event and a PENDING dispatch row.
    pub async fn order(&self) -> Uuid {
        let id = Uuid::now_v7();
        let now = self.now();
        let hash = vec![0_u8; 32];
        match self.db.backend() {
            Backend::Postgres(pool) => {
                let mut tx = waybill_service_kit::db::begin(pool).await.unwrap();
                sqlx::query("INSERT INTO orders (id, idempotency_key, request_hash, customer_id, customer_name, customer_email, customer_phone, ship_line1, ship_line2, ship_city, ship_region, ship_postal_code, ship_country_code, currency_code, total_minor, region, status, status_seq, placed_at) VALUES ($1, $2, $3, 'c1', 'Ada', 'ada@example.com', '', '1 Main St', '', 'Springfield', '', '12345', 'US', 'USD', 1000, 'local', 'PLACED', 1, $4)")
                    .bind(id).bind(id.to_string()).bind(&hash).bind(now).execute(&mut *tx).await.unwrap();
                sqlx::query("INSERT INTO order_status_events (order_id, seq, status, occurred_at, recorded_at) VALUES ($1, 1, 'PLACED', $2, $2)")
                    .bind(id).bind(now).execute(&mut *tx).await.unwrap();
                sqlx::query("INSERT INTO dispatch (order_id, state, next_attempt_at, created_at, updated_at) VALUES ($1, 'PENDING', $2, $2, $2)")
                    .bind(id).bind(now).execute(&mut *tx).await.unwrap();
                tx.commit().await.unwrap();
            }
            Backend::Sqlite(pool) => {
                let now = to_unix_micros(now);
                let mut tx = waybill_service_kit::db::begin(pool).await.unwrap();
                sqlx::query("INSERT INTO orders (id, idempotency_key, request_hash, customer_id, customer_name, customer_email, customer_phone, ship_line1, ship_line2, ship_city, ship_region, ship_postal_code, ship_country_code, currency_code, total_minor, region, status, status_seq, placed_at) VALUES (?1, ?1, ?2, 'c1', 'Ada', 'ada@example.com', '', '1 Main St', '', 'Springfield', '', '12345', 'US', 'USD', 1000, 'local', 'PLACED', 1, ?3)")
                    .bind(id.to_string()).bind(&hash).bind(now).execute(&mut *tx).await.unwrap();
                sqlx::query("INSERT INTO order_status_events (order_id, seq, status, occurred_at, recorded_at) VALUES (?1, 1, 'PLACED', ?2, ?2)")
                    .bind(id.to_string()).bind(now).execute(&mut *tx).await.unwrap();
                sqlx::query("INSERT INTO dispatch (order_id, state, next_attempt_at, created_at, updated_at) VALUES (?1, 'PENDING', ?2, ?2, ?2)")
                    .bind(id.to_string()).bind(now).execute(&mut *tx).await.unwrap();
                tx.commit().await.unwrap();
            }
        }
        id
    }

    /// What the relay records after a first successful send to `partner`: the dispatch row
    /// SENT with a handover deadline and a SENT_TO_PARTNER event (the order row is not
    /// written).
    pub async fn route(&self, order: Uuid, partner: &str) {
        let now = self.now();
        let due = now + Duration::seconds(HANDOVER);
        match self.db.backend() {
            Backend::Postgres(pool) => {
                let mut tx = waybill_service_kit::db::begin(pool).await.unwrap();
                sqlx::query("UPDATE dispatch SET state = 'SENT', partner_id = $2, route_id = 'r-' || $2, sent_at = $3, ack_due_at = $4, updated_at = $3 WHERE order_id = $1")
                    .bind(order).bind(partner).bind(now).bind(due).execute(&mut *tx).await.unwrap();
                sqlx::query("INSERT INTO order_status_events (order_id, seq, status, partner_id, occurred_at, recorded_at) SELECT $1, max(seq) + 1, 'SENT_TO_PARTNER', $2, $3, $3 FROM order_status_events WHERE order_id = $1")
                    .bind(order).bind(partner).bind(now).execute(&mut *tx).await.unwrap();
                tx.commit().await.unwrap();
            }
            Backend::Sqlite(pool) => {
                let (now, due) = (to_unix_micros(now), to_unix_micros(due));
                let mut tx = waybill_service_kit::db::begin(pool).await.unwrap();
                sqlx::query("UPDATE dispatch SET state = 'SENT', partner_id = ?2, route_id = 'r-' || ?2, sent_at = ?3, ack_due_at = ?4, updated_at = ?3 WHERE order_id = ?1")
                    .bind(order.to_string()).bind(partner).bind(now).bind(due).execute(&mut *tx).await.unwrap();
                sqlx::query("INSERT INTO order_status_events (order_id, seq, status, partner_id, occurred_at, recorded_at) SELECT ?1, max(seq) + 1, 'SENT_TO_PARTNER', ?2, ?3, ?3 FROM order_status_events WHERE order_id = ?1")
                    .bind(order.to_string()).bind(partner).bind(now).execute(&mut *tx).await.unwrap();
                tx.commit().await.unwrap();
            }
        }
    }

    /// Puts the dispatch row under a relay's lease (a batch in flight).
    pub async fn lease(&self, order: Uuid, owner: &str) {
        let until = self.now() + Duration::seconds(30);
        match self.db.backend() {
            Backend::Postgres(pool) => {
                sqlx::query("UPDATE dispatch SET lease_owner = $2, lease_expires_at = $3, batch_id = $4 WHERE order_id = $1")
                    .bind(order).bind(owner).bind(until).bind(Uuid::new_v4()).execute(pool).await.unwrap();
            }
            Backend::Sqlite(pool) => {
                sqlx::query("UPDATE dispatch SET lease_owner = ?2, lease_expires_at = ?3, batch_id = ?4 WHERE order_id = ?1")
                    .bind(order.to_string()).bind(owner).bind(to_unix_micros(until)).bind(Uuid::new_v4().to_string()).execute(pool).await.unwrap();
            }
        }
    }

    pub async fn order_row(&self, order: Uuid) -> OrderRow {
        let sql = "SELECT status, status_seq, partner_id, tracking_id FROM orders WHERE id = ";
        let read = |row: &dyn RowLike| OrderRow {
            status: row.text("status"),
            status_seq: row.int("status_seq"),
            partner_id: row.opt_text("partner_id"),
            tracking_id: row.opt_text("tracking_id"),
        };
        match self.db.backend() {
            Backend::Postgres(pool) => read(
                &sqlx::query(&format!("{sql}$1"))
                    .bind(order)
                    .fetch_one(pool)
                    .await
                    .unwrap(),
            ),
            Backend::Sqlite(pool) => read(
                &sqlx::query(&format!("{sql}?"))
                    .bind(order.to_string())
                    .fetch_one(pool)
                    .await
                    .unwrap(),
            ),
        }
    }

    pub async fn dispatch_row(&self, order: Uuid) -> DispatchRow {
        let sql = "SELECT state, partner_id, ack_due_at, lease_owner, last_error FROM dispatch WHERE order_id = ";
        let read = |row: &dyn RowLike| DispatchRow {
            state: row.text("state"),
            partner_id: row.opt_text("partner_id"),
            ack_due_at: row.opt_time("ack_due_at"),
            lease_owner: row.opt_text("lease_owner"),
            last_error: row.opt_text("last_error"),
        };
        match self.db.backend() {
            Backend::Postgres(pool) => read(
                &sqlx::query(&format!("{sql}$1"))
                    .bind(order)
                    .fetch_one(pool)
                    .await
                    .unwrap(),
            ),
            Backend::Sqlite(pool) => read(
                &sqlx::query(&format!("{sql}?"))
                    .bind(order.to_string())
                    .fetch_one(pool)
                    .await
                    .unwrap(),
            ),
        }
    }

    pub async fn history(&self, order: Uuid) -> Vec<EventRow> {
        let sql = "SELECT seq, status, partner_id, tracking_id, report_id, detail, detail_code, action_required, needs_review, occurred_at, recorded_at FROM order_status_events WHERE order_id = ";
        let read = |row: &dyn RowLike| EventRow {
            seq: row.int("seq"),
            status: row.text("status"),
            partner_id: row.text("partner_id"),
            tracking_id: row.text("tracking_id"),
            report_id: row.opt_text("report_id"),
            detail: row.text("detail"),
            detail_code: row.text("detail_code"),
            action_required: row.flag("action_required"),
            needs_review: row.flag("needs_review"),
            occurred_at: row.opt_time("occurred_at").unwrap(),
            recorded_at: row.opt_time("recorded_at").unwrap(),
        };
        match self.db.backend() {
            Backend::Postgres(pool) => sqlx::query(&format!("{sql}$1 ORDER BY seq"))
                .bind(order)
                .fetch_all(pool)
                .await
                .unwrap()
                .iter()
                .map(|r| read(r))
                .collect(),
            Backend::Sqlite(pool) => sqlx::query(&format!("{sql}? ORDER BY seq"))
                .bind(order.to_string())
                .fetch_all(pool)
                .await
                .unwrap()
                .iter()
                .map(|r| read(r))
                .collect(),
        }
    }

    /// Partners that refused the order.
    pub async fn rejections(&self, order: Uuid) -> Vec<String> {
        let sql = "SELECT partner_id FROM dispatch_rejections WHERE order_id = ";
        match self.db.backend() {
            Backend::Postgres(pool) => sqlx::query_scalar(&format!("{sql}$1 ORDER BY partner_id"))
                .bind(order)
                .fetch_all(pool)
                .await
                .unwrap(),
            Backend::Sqlite(pool) => sqlx::query_scalar(&format!("{sql}? ORDER BY partner_id"))
                .bind(order.to_string())
                .fetch_all(pool)
                .await
                .unwrap(),
        }
    }

    /// Token ids in the replay guard.
    pub async fn token_ids(&self) -> i64 {
        let sql = "SELECT count(*) FROM report_token_ids";
        match self.db.backend() {
            Backend::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
            Backend::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        }
    }

    /// Runs `postgres` or `sqlite` (one or more statements, no parameters), as the backend is.
    pub async fn execute(&self, postgres: &str, sqlite: &str) {
        match self.db.backend() {
            Backend::Postgres(pool) => {
                sqlx::raw_sql(postgres).execute(pool).await.unwrap();
            }
            Backend::Sqlite(pool) => {
                sqlx::raw_sql(sqlite).execute(pool).await.unwrap();
            }
        }
    }

    /// Everything a report may change, for "changes nothing" assertions.
    pub async fn state_of(
        &self,
        order: Uuid,
    ) -> (OrderRow, DispatchRow, Vec<EventRow>, Vec<String>, i64) {
        (
            self.order_row(order).await,
            self.dispatch_row(order).await,
            self.history(order).await,
            self.rejections(order).await,
            self.token_ids().await,
        )
    }
}

/// Reading a row the same way on both backends (SQLite keeps instants as microseconds and
/// booleans as integers).
pub trait RowLike {
    fn text(&self, name: &str) -> String;
    fn opt_text(&self, name: &str) -> Option<String>;
    fn int(&self, name: &str) -> i64;
    fn flag(&self, name: &str) -> bool;
    fn opt_time(&self, name: &str) -> Option<DateTime<Utc>>;
}

impl RowLike for sqlx::postgres::PgRow {
    fn text(&self, name: &str) -> String {
        self.try_get(name).unwrap()
    }
    fn opt_text(&self, name: &str) -> Option<String> {
        self.try_get(name).unwrap()
    }
    fn int(&self, name: &str) -> i64 {
        self.try_get(name).unwrap()
    }
    fn flag(&self, name: &str) -> bool {
        self.try_get(name).unwrap()
    }
    fn opt_time(&self, name: &str) -> Option<DateTime<Utc>> {
        self.try_get(name).unwrap()
    }
}

impl RowLike for sqlx::sqlite::SqliteRow {
    fn text(&self, name: &str) -> String {
        self.try_get(name).unwrap()
    }
    fn opt_text(&self, name: &str) -> Option<String> {
        self.try_get(name).unwrap()
    }
    fn int(&self, name: &str) -> i64 {
        self.try_get(name).unwrap()
    }
    fn flag(&self, name: &str) -> bool {
        self.try_get(name).unwrap()
    }
    fn opt_time(&self, name: &str) -> Option<DateTime<Utc>> {
        self.try_get::<Option<i64>, _>(name)
            .unwrap()
            .map(from_unix_micros)
    }
}
