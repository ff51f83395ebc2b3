//! The Postgres placing write, as a group commit.
//!
//! A placing is one statement (`UNNEST` for the lines), one round trip, atomic by itself; it
//! `NOTIFY`s the dispatchers at commit. Callers queue their orders with the [`Placer`] and wait;
//! one writer takes whatever is queued when it is free and writes it as one statement
//! (`sql/place_many.pg.sql`), answering each caller once it has committed:
//!
//! - **No timer.** A lone order is written at once (the single statement, `place_order.pg.sql`);
//!   under load a batch is whatever arrived while the last one was being written. Each
//!   statement is a round trip and a commit flushed: per batch now, not per order.
//! - **Its own connection.** The writer holds one connection outside the pool (the kit's
//!   `HeldConnection`), planning every statement by key: no pool round trips per statement
//!   (a pooled connection is pinged twice as it goes back).
//! - **Bounded.** At most [`MAX_BATCH`] orders a statement and [`QUEUE`] waiting; a caller
//!   beyond waits for room (back-pressure onto the gRPC calls).
//! - **Bounded in time.** A statement that has not finished within [`WRITE_LIMIT`] is given up
//!   (its callers answered unavailable; they place again with the same idempotency key, which
//!   replays the order if it was written after all): dropped, and its connection closed (the
//!   next statement opens another). Without it a connection to a host that went silent would
//!   hold up every placing behind it, not only its own.
//! - **One order to blame.** A batch the database refuses (a value it cannot hold, say) wrote
//!   nothing; its orders are then written one at a time, so only the order at fault fails. A
//!   batch that failed because the database could not be reached answers every caller
//!   unavailable at once (each would wait for a new connection in turn).

use std::{collections::HashSet, sync::OnceLock, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, Row as _, postgres::PgArguments, query::Query};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;
use uuid::Uuid;
use waybill_service_kit::db::{HeldConnection, within};

use super::{error::StoreError, statements::bind_order};
use crate::{convert::outbox_message, domain::model::NewOrder};

const PLACE_ORDER: &str = include_str!("sql/place_order.pg.sql");
const PLACE_MANY: &str = include_str!("sql/place_many.pg.sql");

type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

/// What a statement given up is called in its callers' error.
const PLACING: &str = "the placing statement";

/// How long a placing statement may take before it is given up (see the module docs).
pub const WRITE_LIMIT: Duration = Duration::from_secs(10);

/// Most orders written by one statement.
pub const MAX_BATCH: usize = 64;
/// Orders queued for the writer at most; a caller beyond waits for room.
pub const QUEUE: usize = 4 * MAX_BATCH;

/// One caller's order and where its answer goes: `true` when it was written, `false` when its
/// idempotency key exists.
struct Job {
    order: NewOrder,
    answer: oneshot::Sender<Result<bool, StoreError>>,
}

/// The queue to the placing writer, opened with the first order (the writer stops when the
/// store is dropped: the queue closes).
#[derive(Debug)]
pub(super) struct Placer {
    queue: OnceLock<mpsc::Sender<Job>>,
    limit: Duration,
}

impl Placer {
    /// A writer whose statements are given up after `limit`.
    pub(super) fn new(limit: Duration) -> Self {
        Self {
            queue: OnceLock::new(),
            limit,
        }
    }

    /// Writes `order` on `pool` with the next batch; `false` (nothing written) when its
    /// idempotency key exists.
    pub(super) async fn place(&self, pool: &PgPool, order: &NewOrder) -> Result<bool, StoreError> {
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(QUEUE);
            tokio::spawn(write(pool.clone(), self.limit, receiver));
            sender
        });
        let (answer, answered) = oneshot::channel();
        let job = Job {
            order: order.clone(),
            answer,
        };
        // The writer stops only when the store is dropped, or its runtime shuts down.
        let stopped = || StoreError::Unavailable(sqlx::Error::PoolClosed);
        queue.send(job).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// The writer, until the queue closes: takes what is queued, writes it, answers.
async fn write(pool: PgPool, limit: Duration, mut queue: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    let mut held = HeldConnection::default();
    while queue.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        if jobs.len() == 1
            && let Some(job) = jobs.pop()
        {
            let placed = place_alone(&mut held, &pool, limit, &job.order).await;
            let _ = job.answer.send(placed);
            continue;
        }
        let orders: Vec<&NewOrder> = jobs.iter().map(|job| &job.order).collect();
        let many = held.run(&pool, async |conn| {
            place_many(conn, &orders).await.map_err(StoreError::from)
        });
        let written = within(limit, PLACING, many).await;
        match written {
            Ok(written) => answer(jobs.drain(..), |order| Ok(written.contains(&order.id))),
            Err(StoreError::Unavailable(error)) => {
                // Each caller gets the failure as its own error (sqlx's is not `Clone`).
                let text = error.to_string();
                answer(jobs.drain(..), |_| {
                    let io = std::io::Error::other(text.clone());
                    Err(StoreError::Unavailable(sqlx::Error::Io(io)))
                });
            }
            Err(error) => {
                debug!(%error, orders = jobs.len(), "placing batch refused; writing its orders one at a time");
                for job in jobs.drain(..) {
                    let placed = place_alone(&mut held, &pool, limit, &job.order).await;
                    // A caller that went away (its call cancelled) needs no answer.
                    let _ = job.answer.send(placed);
                }
            }
        }
    }
}

/// Answers every job with what `outcome` says of its order.
fn answer(
    jobs: impl Iterator<Item = Job>,
    mut outcome: impl FnMut(&NewOrder) -> Result<bool, StoreError>,
) {
    for job in jobs {
        let result = outcome(&job.order);
        let _ = job.answer.send(result);
    }
}

/// [`place_order`] on `held`'s connection, given up after `limit`.
async fn place_alone(
    held: &mut HeldConnection,
    pool: &PgPool,
    limit: Duration,
    order: &NewOrder,
) -> Result<bool, StoreError> {
    let alone = held.run(pool, async |conn| place_order(conn, order).await);
    within(limit, PLACING, alone).await
}

/// Writes `order` with its lines, `PLACED` event and `PENDING` dispatch row; `false` (nothing
/// written) when its idempotency key exists.
async fn place_order(conn: &mut PgConnection, order: &NewOrder) -> Result<bool, StoreError> {
    let count = order.lines.len();
    let mut lines = Lines::with_capacity(count);
    lines.add(order);
    let inserted = lines
        .bind_to(bind_order(sqlx::query(PLACE_ORDER), order))
        .bind(&order.traceparent)
        .bind(&order.tracestate)
        .bind(outbox_message(order))
        .fetch_optional(conn)
        .await?;
    Ok(inserted.is_some())
}

/// Writes `orders` in one statement; the ids of those written (the others' keys exist).
async fn place_many(
    conn: &mut PgConnection,
    orders: &[&NewOrder],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    let texts = |field: fn(&NewOrder) -> &str| -> Vec<&str> {
        orders.iter().map(|order| field(order)).collect()
    };
    let mut lines = Lines::with_capacity(orders.iter().map(|o| o.lines.len()).sum());
    for order in orders {
        lines.add(order);
    }
    let query = sqlx::query(PLACE_MANY)
        .bind(orders.iter().map(|o| o.id).collect::<Vec<_>>())
        .bind(texts(|o| &o.idempotency_key))
        .bind(
            orders
                .iter()
                .map(|o| o.request_hash.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(texts(|o| &o.customer.id))
        .bind(texts(|o| &o.customer.name))
        .bind(texts(|o| &o.customer.email))
        .bind(texts(|o| &o.customer.phone))
        .bind(texts(|o| &o.ship_to.line1))
        .bind(texts(|o| &o.ship_to.line2))
        .bind(texts(|o| &o.ship_to.city))
        .bind(texts(|o| &o.ship_to.region))
        .bind(texts(|o| &o.ship_to.postal_code))
        .bind(texts(|o| &o.ship_to.country_code))
        .bind(texts(|o| &o.currency_code))
        .bind(orders.iter().map(|o| o.total_minor).collect::<Vec<_>>())
        .bind(texts(|o| &o.region))
        .bind(
            orders
                .iter()
                .map(|o| o.placed_at)
                .collect::<Vec<DateTime<Utc>>>(),
        )
        .bind(texts(|o| &o.traceparent))
        .bind(texts(|o| &o.tracestate))
        .bind(orders.iter().map(|o| outbox_message(o)).collect::<Vec<_>>())
        .bind(&lines.order_id);
    let written = lines.bind_to(query).fetch_all(conn).await?;
    written
        .iter()
        .map(|row| row.try_get::<Uuid, _>(0))
        .collect()
}

/// Order lines as the statements' columns.
#[derive(Debug, Default)]
struct Lines<'a> {
    order_id: Vec<Uuid>,
    line_no: Vec<i32>,
    sku: Vec<&'a str>,
    name: Vec<&'a str>,
    quantity: Vec<i32>,
    unit_price: Vec<i64>,
    total: Vec<i64>,
}

impl<'a> Lines<'a> {
    fn with_capacity(count: usize) -> Self {
        Self {
            order_id: Vec::with_capacity(count),
            line_no: Vec::with_capacity(count),
            sku: Vec::with_capacity(count),
            name: Vec::with_capacity(count),
            quantity: Vec::with_capacity(count),
            unit_price: Vec::with_capacity(count),
            total: Vec::with_capacity(count),
        }
    }

    /// Binds the lines' columns but their orders' ids, in the statements' order.
    fn bind_to<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q> {
        query
            .bind(&self.line_no)
            .bind(&self.sku)
            .bind(&self.name)
            .bind(&self.quantity)
            .bind(&self.unit_price)
            .bind(&self.total)
    }

    /// Adds `order`'s lines, numbered from 1.
    fn add(&mut self, order: &'a NewOrder) {
        for (line_no, line) in (1_i32..).zip(&order.lines) {
            self.order_id.push(order.id);
            self.line_no.push(line_no);
            self.sku.push(line.sku.as_str());
            self.name.push(line.name.as_str());
            // Validation caps quantities at 10,000.
            self.quantity
                .push(i32::try_from(line.quantity).unwrap_or(i32::MAX));
            self.unit_price.push(line.unit_price_minor);
            self.total.push(line.line_total_minor);
        }
    }
}
