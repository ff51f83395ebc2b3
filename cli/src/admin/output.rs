//! What `waybill admin` prints: aligned tables and `name: value` blocks for people, and with
//! `--json` the response itself as proto3 JSON.
//!
//! The JSON is the canonical proto3 mapping (lowerCamelCase names, enums by name, 64-bit
//! integers as strings, timestamps in RFC 3339, durations as `"600s"`), the same grpcurl
//! prints, with every field present — default values too (`"canSend": false`, `"enabled":
//! false`), so that a script never has to guess whether a missing field means false. It is made
//! by `prost-reflect` from the descriptor set `waybill-proto` already embeds for server
//! reflection: the contracts crate needs no generated serde code.

use std::fmt::Write as _;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use waybill_proto::v1 as pb;

/// A table: a header line and rows, each column as wide as its widest cell.
#[derive(Debug)]
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

/// One line of text: control characters (a newline in an error message) become spaces, so
/// every row stays one line.
fn cell(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl Table {
    /// An empty table with these column names.
    pub fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as columns).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| cell(c)).collect());
    }

    /// The table as text; empty when it has no rows.
    pub fn render(&self) -> String {
        if self.rows.is_empty() {
            return String::new();
        }
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut text = String::new();
        let header = self.header.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ");
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }

    /// Prints the table on stdout; with no rows, says `empty` on stderr instead (stdout
    /// stays empty for scripts).
    pub fn print(&self, empty: &str) {
        if self.rows.is_empty() {
            eprintln!("{empty}");
        } else {
            print!("{}", self.render());
        }
    }
}

/// `name: value` lines, the values aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(name, _)| name.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let mut text = String::new();
    for (name, value) in pairs {
        let label = format!("{name}:");
        let _ = writeln!(text, "{label:<width$} {}", cell(value));
    }
    text
}

/// A timestamp in RFC 3339 (UTC, to the second), or `-` when unset.
pub fn timestamp(at: Option<&prost_types::Timestamp>) -> String {
    at.and_then(waybill_proto::time::from_timestamp)
        .map_or_else(
            || "-".to_owned(),
            |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
}

/// A duration as people write it (`10m`, `90s`, `1.5s`, `250ms`), or `-` when unset.
pub fn duration(duration: Option<&prost_types::Duration>) -> String {
    let Some(d) = duration else {
        return "-".to_owned();
    };
    let nanos = i128::from(d.seconds) * 1_000_000_000 + i128::from(d.nanos);
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos % 1_000_000_000 == 0 {
        let seconds = nanos / 1_000_000_000;
        return if seconds % 3600 == 0 {
            format!("{}h", seconds / 3600)
        } else if seconds % 60 == 0 {
            format!("{}m", seconds / 60)
        } else {
            format!("{seconds}s")
        };
    }
    if nanos.abs() < 1_000_000_000 {
        let millis = nanos as f64 / 1e6;
        return format!("{}ms", trim_float(millis));
    }
    format!("{}s", trim_float(nanos as f64 / 1e9))
}

fn trim_float(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A `std` duration as a protobuf one (for requests).
pub fn to_proto_duration(duration: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

/// What a change to routes or partners does (or would do) to routing: the countries left
/// without a route and the last day's orders that would now go elsewhere, by partner.
pub fn impact(change: &pb::RoutingImpact) -> String {
    let countries = if change.countries_left_without_route.is_empty() {
        "none".to_owned()
    } else {
        change.countries_left_without_route.join(", ")
    };
    let mut text = fields(&[
        (
            "impact",
            if change.applied {
                "applied"
            } else {
                "not applied (dry run, or nothing changes)"
            }
            .to_owned(),
        ),
        ("countries left without a route", countries),
        (
            "orders weighed",
            format!(
                "{} since {}{}",
                change.orders_considered,
                timestamp(change.since.as_ref()),
                if change.partial {
                    " (the busiest destinations only)"
                } else {
                    ""
                }
            ),
        ),
        (
            "would route elsewhere",
            format!(
                "{} ({} to no partner: UNROUTABLE)",
                change.orders_rerouted, change.orders_unroutable
            ),
        ),
    ]);
    let mut shifts = Table::new(&["FROM", "TO", "ORDERS"]);
    for shift in &change.shifts {
        let partner = |id: &str| {
            if id.is_empty() {
                "(none)".to_owned()
            } else {
                id.to_owned()
            }
        };
        shifts.row(vec![
            partner(&shift.from_partner_id),
            partner(&shift.to_partner_id),
            shift.orders.to_string(),
        ]);
    }
    text.push_str(&shifts.render());
    text
}

/// An amount as minor units and currency (`1250 EUR`), or `-`.
pub fn money(money: Option<&pb::Money>) -> String {
    money.map_or_else(
        || "-".to_owned(),
        |m| format!("{} {}", m.minor_units, m.currency_code),
    )
}

/// `yes` / `no`.
pub fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// `text`, or `-` when empty.
pub fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// The `waybill.v1` descriptors.
fn pool() -> anyhow::Result<DescriptorPool> {
    DescriptorPool::decode(waybill_proto::FILE_DESCRIPTOR_SET)
        .map_err(|error| anyhow::anyhow!("cannot read the waybill.v1 descriptors: {error}"))
}

/// `message` (of proto type `full_name`, e.g. `waybill.v1.RelayStats`) as pretty proto3 JSON,
/// every field present.
pub fn json<M: prost::Message>(message: &M, full_name: &str) -> anyhow::Result<String> {
    let descriptor = pool()?
        .get_message_by_name(full_name)
        .ok_or_else(|| anyhow::anyhow!("no message {full_name} in the waybill.v1 descriptors"))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .map_err(|error| anyhow::anyhow!("cannot re-read the {full_name} answer: {error}"))?;
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::pretty(&mut out);
    dynamic.serialize_with_options(
        &mut serializer,
        &SerializeOptions::new().skip_default_fields(false),
    )?;
    Ok(String::from_utf8(out)?)
}

/// Prints `message` as JSON (see [`json`]) on stdout.
pub fn print_json<M: prost::Message>(message: &M, full_name: &str) -> anyhow::Result<()> {
    println!("{}", json(message, full_name)?);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_and_rows_stay_on_one_line() {
        let mut table = Table::new(&["ID", "NAME", "ENABLED"]);
        table.row(vec!["acme".into(), "Acme\nFreight".into(), "yes".into()]);
        table.row(vec!["b".into(), "B".into(), "no".into()]);
        assert_eq!(
            table.render(),
            "ID    NAME          ENABLED\nacme  Acme Freight  yes\nb     B             no\n"
        );
        assert_eq!(Table::new(&["ID"]).render(), "");
    }

    #[test]
    fn durations_read_as_written() {
        let d = |seconds, nanos| duration(Some(&prost_types::Duration { seconds, nanos }));
        assert_eq!(d(600, 0), "10m");
        assert_eq!(d(7200, 0), "2h");
        assert_eq!(d(90, 0), "90s");
        assert_eq!(d(1, 500_000_000), "1.5s");
        assert_eq!(d(0, 250_000_000), "250ms");
        assert_eq!(d(0, 1_500_000), "1.5ms");
        assert_eq!(d(0, 0), "0s");
        assert_eq!(duration(None), "-");
    }

    #[test]
    fn json_keeps_false_and_zero_fields() {
        let stats = pb::RelayStats {
            can_send: false,
            sent: 3,
            ..Default::default()
        };
        let value: serde_json::Value =
            serde_json::from_str(&json(&stats, "waybill.v1.RelayStats").unwrap()).unwrap();
        assert_eq!(value["canSend"], serde_json::Value::Bool(false));
        assert_eq!(value["sent"], "3");
        assert_eq!(value["failedBatchesInARow"], 0);
        let partner = pb::Partner {
            id: "acme".into(),
            handover_deadline: Some(prost_types::Duration {
                seconds: 600,
                nanos: 0,
            }),
            ..Default::default()
        };
        let value: serde_json::Value =
            serde_json::from_str(&json(&partner, "waybill.v1.Partner").unwrap()).unwrap();
        assert_eq!(value["handoverDeadline"], "600s");
        assert_eq!(value["enabled"], false);
    }
}
