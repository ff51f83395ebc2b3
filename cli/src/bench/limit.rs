//! The relay's bare bookkeeping as a limit to compare with, as `bench drain` measures it and
//! `bench e2e --find-max` reuses it: on one connection, plain SQL leases 1,000 due rows
//! (`FOR UPDATE SKIP LOCKED`), marks them `SENT` and appends a `SENT_TO_PARTNER` event each
//! (`outbox.rs`). It runs right before what it is compared with, on orders placed `ahead`
//! earlier (due at once), and right after it, on orders placed `ahead` later (due for nobody
//! else meanwhile), so the machine's drift falls on both; each run starts right after a
//! `CHECKPOINT`. Postgres only.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use waybill_dispatcher::{
    domain::model::{PartnerRecord, RouteRecord},
    kafka::TopicNames,
    store::DispatchStore,
};
use waybill_service_kit::db::Database;

use super::{
    measure::{Rate, with_steal},
    outbox::{LIMIT_BATCH, checkpoint, mark_limit_events_published, measure_limit, place},
};

/// A partner of the bench's own and its route: orders to Germany with a postal code starting
/// with a prefix no other order has, at the highest priority.
pub(crate) struct BenchRoute {
    pub(crate) partner_id: String,
    pub(crate) postal_prefix: String,
    pub(crate) topic: String,
}

impl BenchRoute {
    /// Enrols the partner and its route for run `run` (its topic is not created: nothing is
    /// produced to it unless a relay drains the bench's orders).
    pub(crate) async fn enrol(
        store: &Arc<dyn DispatchStore>,
        names: &TopicNames,
        run: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Self> {
        let partner_id = format!("bench-{}", &run[..8]);
        let postal_prefix = format!("B{}", &run[..8]).to_ascii_uppercase();
        let topic = names.partner_topic(&partner_id);
        store
            .upsert_partner(&PartnerRecord {
                id: partner_id.clone(),
                display_name: "bench".to_owned(),
                enabled: true,
                handover_deadline: chrono::Duration::days(1),
                resend_budget: 0,
                topic: topic.clone(),
                created_at: now,
                updated_at: now,
            })
            .await?;
        // A unique postal prefix at the highest priority: only the bench orders take this route.
        store
            .set_route(
                &RouteRecord {
                    id: partner_id.clone(),
                    partner_id: partner_id.clone(),
                    country_code: "DE".to_owned(),
                    region: String::new(),
                    postal_prefix: postal_prefix.clone(),
                    priority: i32::MIN,
                    enabled: true,
                },
                now,
            )
            .await?;
        Ok(Self {
            partner_id,
            postal_prefix,
            topic,
        })
    }
}

/// The bookkeeping limit's orders, placed and ready to be measured before and after.
pub(crate) struct BookkeepingLimit {
    pool: PgPool,
    partner_id: String,
    /// Orders per run, a whole number of batches.
    orders: usize,
    ahead: chrono::Duration,
    /// Whether the latest checkpoint could be taken (`None` before the first).
    checkpointed: Option<bool>,
}

impl BookkeepingLimit {
    /// `orders` rounded up to whole batches of the limit.
    pub(crate) fn whole_batches(orders: usize) -> usize {
        orders.div_ceil(LIMIT_BATCH) * LIMIT_BATCH
    }

    /// Places the orders of both runs through the Orders store (`in_flight` at once) for
    /// `route`, as customer `{customer}-limit`, `ahead` before and after `now`, and counts
    /// their `PLACED` events as published (the relay's publisher would otherwise publish them
    /// alongside what is measured: work that is not its).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn place(
        db: &Database,
        pool: &PgPool,
        route: &BenchRoute,
        run: &str,
        customer: &str,
        orders: usize,
        in_flight: usize,
        ahead: chrono::Duration,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Self> {
        let orders = Self::whole_batches(orders);
        for (when, placed_at) in [("before", now - ahead), ("after", now + ahead)] {
            place(
                db,
                // Its own idempotency keys: the same ones would place the same orders again.
                &format!("{run}-limit-{when}"),
                &format!("{customer}-limit"),
                &route.postal_prefix,
                placed_at,
                orders,
                in_flight,
            )
            .await?;
        }
        mark_limit_events_published(pool, customer).await?;
        Ok(Self {
            pool: pool.clone(),
            partner_id: route.partner_id.clone(),
            orders,
            ahead,
            checkpointed: None,
        })
    }

    /// Takes a checkpoint if the first one could be taken (see `outbox::checkpoint`).
    pub(crate) async fn checkpoint(&mut self) {
        if self.checkpointed != Some(false) {
            self.checkpointed = Some(checkpoint(&self.pool).await);
        }
    }

    /// Whether every checkpoint could be taken.
    pub(crate) fn checkpointed(&self) -> Option<bool> {
        self.checkpointed
    }

    /// The run before: after a checkpoint, on the orders placed `ahead` earlier. `steal` is
    /// set to the CPU time the host took meanwhile.
    pub(crate) async fn before(&mut self, steal: &mut Option<f64>) -> anyhow::Result<Rate> {
        self.checkpoint().await;
        let limit = measure_limit(
            &self.pool,
            self.orders,
            &self.partner_id,
            chrono::Duration::zero(),
        );
        with_steal(steal, limit).await
    }

    /// The run after: after a checkpoint, on the orders placed `ahead` later (due with the
    /// clock moved on twice as far).
    pub(crate) async fn after(&mut self, steal: &mut Option<f64>) -> anyhow::Result<Rate> {
        self.checkpoint().await;
        let limit = measure_limit(&self.pool, self.orders, &self.partner_id, self.ahead * 2);
        with_steal(steal, limit).await
    }
}
