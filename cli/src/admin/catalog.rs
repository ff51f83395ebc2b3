//! `waybill admin catalog list|upsert|retire|import` — the same command as `waybill catalog …`
//! (one implementation reached by both names; `import` is `crate::catalog`'s): the catalog
//! PlaceOrder prices from, on Orders' CatalogService.

use waybill_proto::v1 as pb;

use super::{
    connection::{Connection, Target, usage},
    output::{Table, print_json, yes_no},
};
use crate::catalog::{self, ImportArgs};

/// `waybill catalog …` at the top level: the connection flags and the command.
#[derive(Debug, clap::Args)]
pub struct CatalogArgs {
    #[command(flatten)]
    connection: Connection,
    /// Print the response as proto3 JSON (every field, defaults included).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CatalogCommand,
}

/// `waybill [admin] catalog …`.
#[derive(Debug, clap::Subcommand)]
pub enum CatalogCommand {
    /// Load a CSV (`sku,name,price_minor,currency`) or JSON-lines file into the catalog: every
    /// row is checked first and nothing is applied unless all are valid; then all at once.
    Import(ImportArgs),
    /// Print the catalog (SKU, price, currency, name), by SKU.
    List {
        /// Retired items too.
        #[arg(long)]
        include_retired: bool,
    },
    /// Create or change one item (a retired one is restored); --dry-run shows the change.
    Upsert {
        /// The SKU: 1-64 letters, digits, '-', '_', '.'.
        sku: String,
        /// The product's name.
        #[arg(long)]
        name: String,
        /// The price in minor units (cents): 1250 is 12.50.
        #[arg(long)]
        price_minor: i64,
        /// ISO 4217 currency code (EUR).
        #[arg(long)]
        currency: String,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Retire items: PlaceOrder refuses them from then on (all or nothing; each must exist).
    Retire {
        /// The SKUs.
        #[arg(required = true)]
        skus: Vec<String>,
    },
}

impl CatalogArgs {
    /// Runs `waybill catalog …`; `Ok(false)` when an import refused its file.
    pub async fn run(self) -> anyhow::Result<bool> {
        run(self.command, &self.connection, self.json).await
    }
}

/// Runs a catalog command; `Ok(false)` when an import refused its file (bad rows printed).
pub async fn run(
    command: CatalogCommand,
    connection: &Connection,
    json: bool,
) -> anyhow::Result<bool> {
    let c = connection;
    match command {
        CatalogCommand::Import(args) => return catalog::import(args, c, json).await,
        CatalogCommand::List { include_retired } => list(c, include_retired, json).await?,
        CatalogCommand::Upsert {
            sku,
            name,
            price_minor,
            currency,
            dry_run,
        } => {
            let mut client = catalog::client(c).await?;
            let answer = c
                .answer(
                    Target::Orders,
                    "UpsertCatalogItems",
                    client.upsert_catalog_items(c.request(pb::UpsertCatalogItemsRequest {
                        items: vec![pb::CatalogItem {
                            sku,
                            name,
                            price_minor,
                            currency_code: currency,
                            retired: false,
                        }],
                        dry_run,
                    })?),
                )
                .await?;
            if json {
                print_json(&answer, "waybill.v1.UpsertCatalogItemsResponse")?;
            } else if answer.unchanged > 0 {
                println!("unchanged");
            } else {
                print!("{}", catalog::report(&answer));
            }
        }
        CatalogCommand::Retire { skus } => {
            if skus.iter().any(String::is_empty) {
                return Err(usage("a SKU must not be empty"));
            }
            let count = skus.len();
            let mut client = catalog::client(c).await?;
            let answer = c
                .answer(
                    Target::Orders,
                    "RetireCatalogItems",
                    client.retire_catalog_items(c.request(pb::RetireCatalogItemsRequest { skus })?),
                )
                .await?;
            if json {
                print_json(&answer, "waybill.v1.RetireCatalogItemsResponse")?;
            } else {
                println!(
                    "retired {} item(s) ({} already retired)",
                    answer.retired,
                    count.saturating_sub(answer.retired as usize)
                );
            }
        }
    }
    Ok(true)
}

async fn list(c: &Connection, include_retired: bool, json: bool) -> anyhow::Result<()> {
    let mut client = catalog::client(c).await?;
    let mut all = pb::ListCatalogItemsResponse::default();
    let mut page_token = String::new();
    loop {
        let page = c
            .answer(
                Target::Orders,
                "ListCatalogItems",
                client.list_catalog_items(c.request(pb::ListCatalogItemsRequest {
                    page_size: 1000,
                    page_token,
                    include_retired,
                })?),
            )
            .await?;
        all.items.extend(page.items);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if json {
        return print_json(&all, "waybill.v1.ListCatalogItemsResponse");
    }
    let mut header = vec!["SKU", "PRICE", "CURRENCY", "NAME"];
    if include_retired {
        header.push("RETIRED");
    }
    let mut table = Table::new(&header);
    for item in &all.items {
        let mut row = vec![
            item.sku.clone(),
            item.price_minor.to_string(),
            item.currency_code.clone(),
            item.name.clone(),
        ];
        if include_retired {
            row.push(yes_no(item.retired));
        }
        table.row(row);
    }
    table.print("the catalog is empty");
    Ok(())
}
