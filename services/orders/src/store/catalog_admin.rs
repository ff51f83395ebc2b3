//! The catalog's own writes and listing (`waybill.v1.CatalogService`): upserts and retirements
//! of a whole batch in one transaction (all or nothing), and listing by SKU. `PlaceOrder` reads
//! the same rows through `OrderStore::catalog_items` (and the catalog cache).

use std::collections::HashMap;

use sqlx::{Postgres, QueryBuilder, Sqlite, Transaction};
use waybill_service_kit::db::{Backend, Database, Statement, TextList, begin};

use super::{error::StoreError, rows::CatalogRow, sql::CATALOG_ITEMS};
use crate::domain::model::CatalogItem;

const LIST: &str = "SELECT sku, name, unit_price_minor, currency_code, active FROM catalog_items \
                    WHERE sku > $1 AND ($2 OR active) ORDER BY sku LIMIT $3";
/// Postgres writes a batch as one statement.
const UPSERT_PG: &str = "INSERT INTO catalog_items (sku, name, unit_price_minor, currency_code, \
                         active) SELECT sku, name, price, currency, TRUE FROM UNNEST($1::text[], \
                         $2::text[], $3::bigint[], $4::text[]) AS u(sku, name, price, currency) \
                         ON CONFLICT (sku) DO UPDATE SET name = excluded.name, \
                         unit_price_minor = excluded.unit_price_minor, \
                         currency_code = excluded.currency_code, active = TRUE";
/// SQLite writes a batch a few hundred rows per statement (its bound-parameter limit).
const UPSERT_SQLITE: &str =
    "INSERT INTO catalog_items (sku, name, unit_price_minor, currency_code, active) ";
const UPSERT_SQLITE_CONFLICT: &str = " ON CONFLICT (sku) DO UPDATE SET name = excluded.name, \
                                      unit_price_minor = excluded.unit_price_minor, \
                                      currency_code = excluded.currency_code, active = 1";
/// SQLite: a write that takes the write lock (see `lock_catalog`).
const SQLITE_WRITE_LOCK: &str = "UPDATE catalog_items SET active = active WHERE 0";
const RETIRE: Statement = Statement {
    postgres: "UPDATE catalog_items SET active = FALSE WHERE active AND sku = ANY($1)",
    sqlite: "UPDATE catalog_items SET active = 0 WHERE active \
             AND sku IN (SELECT value FROM json_each($1))",
};
const SQLITE_ROWS_PER_STATEMENT: usize = 500;

/// What an upsert found for one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemChange {
    /// The item before the call; `None` when it is new.
    pub before: Option<CatalogItem>,
    /// The item as the call writes it.
    pub after: CatalogItem,
}

impl ItemChange {
    /// Whether writing `after` changes anything.
    pub fn changes(&self) -> bool {
        self.before.as_ref() != Some(&self.after)
    }
}

/// Why a retirement was refused.
#[derive(Debug, thiserror::Error)]
pub enum RetireError {
    /// A SKU the catalog does not have (nothing was retired).
    #[error("sku {0:?} is not in the catalog")]
    Unknown(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The catalog's rows, for the operator RPCs.
#[derive(Debug, Clone)]
pub struct CatalogStore {
    db: Backend,
}

impl CatalogStore {
    /// The catalog of `db` (already migrated).
    pub fn new(db: &Database) -> Self {
        Self {
            db: db.backend().clone(),
        }
    }

    /// Up to `limit` items with a SKU after `after` ("" for the first), by SKU.
    pub async fn list(
        &self,
        after: &str,
        include_retired: bool,
        limit: u32,
    ) -> Result<Vec<CatalogItem>, StoreError> {
        let rows: Vec<CatalogRow> = waybill_service_kit::on_pool!(&self.db, |pool| {
            sqlx::query_as(LIST)
                .bind(after)
                .bind(include_retired)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Writes `items` (made active) in one transaction unless `dry_run`; answers, per item in
    /// order, what it was and what it becomes. Items already as given are not written.
    pub async fn upsert(
        &self,
        items: Vec<CatalogItem>,
        dry_run: bool,
    ) -> Result<Vec<ItemChange>, StoreError> {
        let skus: TextList = items.iter().map(|item| item.sku.as_str()).collect();
        let changes = waybill_service_kit::on_pool!(&self.db, CATALOG_ITEMS, |pool, read| {
            let mut tx = begin(pool).await?;
            if !dry_run {
                tx.lock_catalog().await?;
            }
            let existing = sqlx::query_as(read).bind(&skus).fetch_all(&mut *tx).await?;
            let changes = diff(items, existing);
            if !dry_run {
                tx.write_items(&written(&changes)).await?;
            }
            tx.commit().await?;
            changes
        });
        Ok(changes)
    }

    /// Retires every one of `skus` in one transaction; answers how many were active. An unknown
    /// SKU refuses the whole call.
    pub async fn retire(&self, skus: &[String]) -> Result<u64, RetireError> {
        let list: TextList = skus.iter().map(String::as_str).collect();
        let retired = waybill_service_kit::on_pool!(&self.db, RETIRE, |pool, retire| {
            let mut tx = begin(pool).await.map_err(StoreError::from)?;
            let found: Vec<CatalogRow> = sqlx::query_as(CATALOG_ITEMS.text(&self.db))
                .bind(&list)
                .fetch_all(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            let found: Vec<CatalogItem> = found.into_iter().map(Into::into).collect();
            if let Some(unknown) = skus
                .iter()
                .find(|sku| !found.iter().any(|item| &item.sku == *sku))
            {
                return Err(RetireError::Unknown(unknown.clone()));
            }
            let done = sqlx::query(retire)
                .bind(&list)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?
                .rows_affected();
            tx.commit().await.map_err(StoreError::from)?;
            done
        });
        Ok(retired)
    }
}

/// Each item with what the catalog holds for its SKU.
fn diff(items: Vec<CatalogItem>, existing: Vec<CatalogRow>) -> Vec<ItemChange> {
    let mut before: HashMap<String, CatalogItem> = existing
        .into_iter()
        .map(|row| {
            let item = CatalogItem::from(row);
            (item.sku.clone(), item)
        })
        .collect();
    items
        .into_iter()
        .map(|after| ItemChange {
            before: before.remove(&after.sku),
            after,
        })
        .collect()
}

/// The items of `changes` that must be written.
fn written(changes: &[ItemChange]) -> Vec<&CatalogItem> {
    changes
        .iter()
        .filter(|change| change.changes())
        .map(|change| &change.after)
        .collect()
}

/// What differs between the backends' upserts.
trait CatalogWrite {
    /// Prepares a transaction that reads and then writes the catalog.
    async fn lock_catalog(&mut self) -> Result<(), StoreError>;
    /// Writes `items` (made active).
    async fn write_items(&mut self, items: &[&CatalogItem]) -> Result<(), StoreError>;
}

impl CatalogWrite for Transaction<'static, Postgres> {
    /// Nothing: row locks are taken by the write itself.
    async fn lock_catalog(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn write_items(&mut self, items: &[&CatalogItem]) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let column =
            |f: fn(&CatalogItem) -> &str| -> Vec<&str> { items.iter().map(|i| f(i)).collect() };
        let prices: Vec<i64> = items.iter().map(|item| item.unit_price_minor).collect();
        sqlx::query(UPSERT_PG)
            .bind(column(|item| &item.sku))
            .bind(column(|item| &item.name))
            .bind(prices)
            .bind(column(|item| &item.currency_code))
            .execute(&mut **self)
            .await?;
        Ok(())
    }
}

impl CatalogWrite for Transaction<'static, Sqlite> {
    /// Takes the write lock before reading, so the read-then-write transaction does not fail
    /// upgrading its lock when another writer got in between.
    async fn lock_catalog(&mut self) -> Result<(), StoreError> {
        sqlx::query(SQLITE_WRITE_LOCK).execute(&mut **self).await?;
        Ok(())
    }

    async fn write_items(&mut self, items: &[&CatalogItem]) -> Result<(), StoreError> {
        for chunk in items.chunks(SQLITE_ROWS_PER_STATEMENT) {
            let mut insert = QueryBuilder::<Sqlite>::new(UPSERT_SQLITE);
            insert.push_values(chunk, |mut row, item| {
                row.push_bind(&item.sku)
                    .push_bind(&item.name)
                    .push_bind(item.unit_price_minor)
                    .push_bind(&item.currency_code)
                    .push_bind(true);
            });
            insert.push(UPSERT_SQLITE_CONFLICT);
            insert.build().execute(&mut **self).await?;
        }
        Ok(())
    }
}
