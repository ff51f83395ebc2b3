//! `waybill catalog import FILE` (also `waybill admin catalog import`): loading a catalog file
//! into `waybill.v1.CatalogService`.
//!
//! It reads a whole CSV (header `sku,name,price_minor,currency`) or JSON-lines file, checks
//! every row with the rules the service applies (`waybill_orders::domain::catalog_rules`) and
//! prints each bad row by line with the rule it breaks; only when every row is valid does it
//! send them, in one `UpsertCatalogItems` call (up to 10,000 items), which the service applies
//! in one transaction: all or nothing. `--dry-run` prints what would change. The other catalog
//! commands (list, upsert, retire) are in `admin::catalog`; the connection is `waybill admin`'s.

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use tonic::transport::Channel;
use waybill_orders::domain::catalog_rules::{self, ItemInput, MAX_BATCH};
use waybill_proto::v1::{
    self as pb, catalog_change::Kind, catalog_service_client::CatalogServiceClient,
};

use crate::admin::{
    connection::{Connection, Target},
    output::print_json,
};

/// `waybill catalog import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The file: `.csv`, or `.jsonl`/`.ndjson` (one object per line with the same fields).
    file: PathBuf,
    /// The file's format, when its name does not tell.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Print what would change and change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// A catalog file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Comma-separated, header `sku,name,price_minor,currency`.
    Csv,
    /// One JSON object per line: `{"sku":…,"name":…,"price_minor":…,"currency":…}`.
    Jsonl,
}

/// The columns of a CSV file, in order.
const HEADER: [&str; 4] = ["sku", "name", "price_minor", "currency"];

/// One row of a JSON-lines file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRow {
    sku: String,
    name: String,
    price_minor: serde_json::Value,
    currency: String,
}

/// Imports the file; `Ok(false)` when it refused (bad rows printed, nothing sent).
pub async fn import(args: ImportArgs, connection: &Connection, json: bool) -> anyhow::Result<bool> {
    let format = match args.format {
        Some(format) => format,
        None => format_of(&args.file)?,
    };
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let items = match parse(&text, format) {
        Ok(items) => items,
        Err(problems) => {
            for problem in &problems {
                eprintln!("{problem}");
            }
            eprintln!(
                "{} bad row(s) in {}: nothing was applied",
                problems.len(),
                args.file.display()
            );
            return Ok(false);
        }
    };
    let count = items.len();
    let mut client = client(connection).await?;
    let answer = connection
        .answer(
            Target::Orders,
            "UpsertCatalogItems",
            client.upsert_catalog_items(connection.request(pb::UpsertCatalogItemsRequest {
                items,
                dry_run: args.dry_run,
            })?),
        )
        .await
        .context("nothing was applied")?;
    if json {
        print_json(&answer, "waybill.v1.UpsertCatalogItemsResponse")?;
        return Ok(true);
    }
    print!("{}", report(&answer));
    println!(
        "{count} row(s): {} created, {} changed, {} unchanged{}",
        answer.created,
        answer.changed,
        answer.unchanged,
        if answer.dry_run {
            " (dry run: nothing was applied)"
        } else {
            ""
        }
    );
    Ok(true)
}

/// The format a file's name tells.
fn format_of(path: &Path) -> anyhow::Result<Format> {
    match path.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("csv") => Ok(Format::Csv),
        Some(ext)
            if ["jsonl", "ndjson"]
                .iter()
                .any(|j| ext.eq_ignore_ascii_case(j)) =>
        {
            Ok(Format::Jsonl)
        }
        _ => bail!(
            "cannot tell the format of {} from its name: pass --format csv or --format jsonl",
            path.display()
        ),
    }
}

/// Every row of `text` as catalog items, or every problem (`line N: …`), in line order.
pub fn parse(text: &str, format: Format) -> Result<Vec<pb::CatalogItem>, Vec<String>> {
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    match format {
        Format::Csv => parse_csv(text, &mut rows, &mut problems),
        Format::Jsonl => parse_jsonl(text, &mut rows, &mut problems),
    }
    let mut first_line: HashMap<String, u64> = HashMap::new();
    let mut items = Vec::with_capacity(rows.len());
    for (line, item) in rows {
        let input = ItemInput {
            sku: &item.sku,
            name: &item.name,
            price_minor: item.price_minor,
            currency_code: &item.currency_code,
        };
        if let Err(broken) = catalog_rules::check_item("", &input) {
            let field = if broken.field == "currency_code" {
                "currency"
            } else {
                &broken.field
            };
            problems.push((line, format!("line {line}: {field} {}", broken.rule)));
        } else if let Some(first) = first_line.get(&item.sku) {
            problems.push((
                line,
                format!("line {line}: sku {:?} is also on line {first}", item.sku),
            ));
        } else {
            first_line.insert(item.sku.clone(), line);
        }
        items.push(item);
    }
    if items.is_empty() && problems.is_empty() {
        problems.push((1, "line 1: the file has no rows".to_owned()));
    }
    if items.len() > MAX_BATCH {
        problems.push((
            0,
            format!(
                "the file has {} rows; at most {MAX_BATCH} are applied at once: split it",
                items.len()
            ),
        ));
    }
    if problems.is_empty() {
        Ok(items)
    } else {
        problems.sort_by_key(|(line, _)| *line);
        Err(problems.into_iter().map(|(_, text)| text).collect())
    }
}

type Rows = Vec<(u64, pb::CatalogItem)>;
type Problems = Vec<(u64, String)>;

fn item(sku: String, name: String, price_minor: i64, currency: String) -> pb::CatalogItem {
    pb::CatalogItem {
        sku,
        name,
        price_minor,
        currency_code: currency,
        retired: false,
    }
}

/// A price as written: a whole number of minor units.
fn price(text: &str) -> Result<i64, String> {
    text.parse::<i64>().map_err(|_| {
        format!("price_minor {text:?}: must be a whole number of minor units (cents), e.g. 1250")
    })
}

fn parse_csv(text: &str, rows: &mut Rows, problems: &mut Problems) {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(text.trim_start_matches('\u{feff}').as_bytes());
    match reader.headers() {
        Ok(header) if header.iter().eq(HEADER) => {}
        Ok(header) => {
            problems.push((
                1,
                format!(
                    "line 1: the header must be {:?}, got {:?}",
                    HEADER.join(","),
                    header.iter().collect::<Vec<_>>().join(",")
                ),
            ));
            return;
        }
        Err(error) => {
            problems.push((1, format!("line 1: not CSV: {error}")));
            return;
        }
    }
    for record in reader.records() {
        let record = match record {
            Ok(record) => record,
            Err(error) => {
                let line = error.position().map_or(0, csv::Position::line);
                problems.push((line, format!("line {line}: not CSV: {error}")));
                continue;
            }
        };
        let line = record.position().map_or(0, csv::Position::line);
        if record.len() != HEADER.len() {
            problems.push((
                line,
                format!(
                    "line {line}: has {} fields; each row has 4: {}",
                    record.len(),
                    HEADER.join(",")
                ),
            ));
            continue;
        }
        match price(&record[2]) {
            Ok(price) => rows.push((
                line,
                item(
                    record[0].to_owned(),
                    record[1].to_owned(),
                    price,
                    record[3].to_owned(),
                ),
            )),
            Err(rule) => problems.push((line, format!("line {line}: {rule}"))),
        }
    }
}

fn parse_jsonl(text: &str, rows: &mut Rows, problems: &mut Problems) {
    for (line, content) in (1_u64..).zip(text.lines()) {
        if content.trim().is_empty() {
            continue;
        }
        let row: JsonRow = match serde_json::from_str(content) {
            Ok(row) => row,
            Err(error) => {
                problems.push((
                    line,
                    format!(
                        "line {line}: must be one JSON object with sku, name, price_minor, currency: {error}"
                    ),
                ));
                continue;
            }
        };
        let price = match &row.price_minor {
            serde_json::Value::Number(n) => n.as_i64().map_or_else(|| price(&n.to_string()), Ok),
            serde_json::Value::String(text) => price(text),
            other => price(&other.to_string()),
        };
        match price {
            Ok(price) => rows.push((line, item(row.sku, row.name, price, row.currency))),
            Err(rule) => problems.push((line, format!("line {line}: {rule}"))),
        }
    }
}

/// Each created or changed item, one line each.
pub fn report(answer: &pb::UpsertCatalogItemsResponse) -> String {
    let mut text = String::new();
    let verb = if answer.dry_run { "would " } else { "" };
    for change in &answer.changes {
        let (Some(after), before) = (&change.after, &change.before) else {
            continue;
        };
        match (change.kind(), before) {
            (Kind::Created, _) => {
                let _ = writeln!(
                    text,
                    "{verb}create {}: {} {} {:?}",
                    after.sku, after.price_minor, after.currency_code, after.name
                );
            }
            (Kind::Changed, Some(before)) => {
                let mut parts = Vec::new();
                if (before.price_minor, &before.currency_code)
                    != (after.price_minor, &after.currency_code)
                {
                    parts.push(format!(
                        "price {} {} -> {} {}",
                        before.price_minor,
                        before.currency_code,
                        after.price_minor,
                        after.currency_code
                    ));
                }
                if before.name != after.name {
                    parts.push(format!("name {:?} -> {:?}", before.name, after.name));
                }
                if before.retired {
                    parts.push("retired -> active".to_owned());
                }
                let _ = writeln!(text, "{verb}change {}: {}", after.sku, parts.join(", "));
            }
            _ => {}
        }
    }
    text
}

/// A CatalogService client on `connection`'s Orders address, sized for a whole file.
pub async fn client(connection: &Connection) -> anyhow::Result<CatalogServiceClient<Channel>> {
    Ok(
        CatalogServiceClient::new(connection.channel(Target::Orders).await?)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(waybill_orders::MAX_CATALOG_REQUEST_BYTES),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_row_is_named_by_line_with_its_rule() {
        let csv = "sku,name,price_minor,currency\n\
                   MUG-1,Mug,1250,EUR\n\
                   MUG-2,Mug two,-3,EUR\n\
                   \"MUG 3\",\"Quoted, with comma\",5,EUR\n\
                   MUG-4,Mug four,12.50,EUR\n\
                   MUG-1,Again,1,eur\n\
                   MUG-1,Again,1,EUR\n\
                   MUG-7,,1,EUR\n";
        let problems = parse(csv, Format::Csv).unwrap_err();
        assert_eq!(problems.len(), 6, "{problems:#?}");
        assert_eq!(problems[0], "line 3: price_minor \"-3\": must be 0 or more");
        assert!(
            problems[1].starts_with("line 4: sku \"MUG 3\""),
            "{}",
            problems[1]
        );
        assert!(
            problems[2].starts_with("line 5: price_minor \"12.50\""),
            "{}",
            problems[2]
        );
        assert!(
            problems[3].starts_with("line 6: currency \"eur\""),
            "{}",
            problems[3]
        );
        assert_eq!(problems[4], "line 7: sku \"MUG-1\" is also on line 2");
        assert_eq!(problems[5], "line 8: name is required");

        let good = "sku,name,price_minor,currency\nA,\"Quoted, \"\"mug\"\"\",0,USD\n";
        let items = parse(good, Format::Csv).unwrap();
        assert_eq!(items[0].name, "Quoted, \"mug\"");
        assert!(parse("sku,price\nA,1\n", Format::Csv).unwrap_err()[0].contains("header"));
    }

    #[test]
    fn json_lines_too() {
        let jsonl = "{\"sku\":\"A\",\"name\":\"Mug\",\"price_minor\":1250,\"currency\":\"EUR\"}\n\
                     \n\
                     {\"sku\":\"B\",\"name\":\"Mug\",\"price_minor\":-1,\"currency\":\"EUR\"}\n\
                     {\"sku\":\"C\",\"name\":\"Mug\",\"price_minor\":1.5,\"currency\":\"EUR\"}\n\
                     not json\n";
        let problems = parse(jsonl, Format::Jsonl).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert_eq!(problems[0], "line 3: price_minor \"-1\": must be 0 or more");
        assert!(
            problems[1].starts_with("line 4: price_minor \"1.5\""),
            "{}",
            problems[1]
        );
        assert!(
            problems[2].starts_with("line 5: must be one JSON object"),
            "{}",
            problems[2]
        );
        let ok = parse(jsonl.lines().next().unwrap(), Format::Jsonl).unwrap();
        assert_eq!(ok[0].price_minor, 1250);
    }
}
