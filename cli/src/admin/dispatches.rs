//! `waybill admin dispatches list|get|retry`: the relay's state of each order (DispatchAdmin's
//! ListDispatches, GetDispatch, RetryDispatches).

use waybill_proto::v1::{self as pb, DispatchState, dispatch_admin_client::DispatchAdminClient};

use super::{
    connection::{Connection, Target, usage},
    output::{Table, fields, money, or_dash, print_json, timestamp, to_proto_duration},
};

/// `waybill admin dispatches …`.
#[derive(Debug, clap::Subcommand)]
pub enum DispatchesCommand {
    /// Orders' dispatches, oldest first, filtered by state and partner.
    List(ListArgs),
    /// One order's dispatch with its attempt log.
    Get {
        /// The order id.
        order_id: String,
    },
    /// Send orders back to PENDING with a fresh attempt budget: the ids given, or the orders
    /// matching --state (required for a filter) and --partner, oldest first, at most --max per
    /// call, their due times spread over --spread; --dry-run shows which and changes nothing.
    Retry(RetryArgs),
}

/// The filter flags.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// Only dispatches in this state: pending, retrying, sent, acknowledged, dead, unroutable,
    /// unacknowledged.
    #[arg(long, value_parser = parse_state)]
    state: Option<DispatchState>,
    /// Only dispatches to this partner.
    #[arg(long)]
    partner: Option<String>,
}

/// `dispatches list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// At most this many (the rest is left for --page-token).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Continue after a previous listing (the token it printed).
    #[arg(long, default_value = "")]
    page_token: String,
}

/// `dispatches retry`.
#[derive(Debug, clap::Args)]
pub struct RetryArgs {
    /// Order ids; without them, --state (and optionally --partner) picks the orders.
    order_ids: Vec<String>,
    #[command(flatten)]
    filter: FilterArgs,
    /// The most orders this call retries (the dispatcher's default: 1,000; at most 10,000):
    /// more ids are refused, more matching orders are left for the next call.
    #[arg(long = "max", value_name = "N")]
    max_orders: Option<i32>,
    /// Spread the retried orders' due times evenly over this window from now (e.g. 10m), so
    /// the partner does not get them all at once; at most 24h.
    #[arg(long, value_parser = waybill_service_kit::duration::parse_duration)]
    spread: Option<std::time::Duration>,
    /// Show which orders would be retried and when; change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// A state as operators write it (`dead`, `DEAD`, `DISPATCH_STATE_DEAD`).
pub fn parse_state(text: &str) -> Result<DispatchState, String> {
    let upper = text.trim().to_ascii_uppercase();
    let short = upper.strip_prefix("DISPATCH_STATE_").unwrap_or(&upper);
    DispatchState::from_short_name(short).ok_or_else(|| {
        format!(
            "unknown state {text:?}: use pending, retrying, sent, acknowledged, dead, unroutable or unacknowledged"
        )
    })
}

impl FilterArgs {
    fn is_empty(&self) -> bool {
        self.state.is_none() && self.partner.is_none()
    }

    fn to_proto(&self) -> pb::DispatchFilter {
        pb::DispatchFilter {
            state: self.state.map_or(0, |s| s as i32),
            partner_id: self.partner.clone().unwrap_or_default(),
        }
    }
}

/// The largest page the dispatcher serves.
const MAX_PAGE: u32 = 1000;

/// Runs a `dispatches` command.
pub async fn run(
    command: DispatchesCommand,
    connection: &Connection,
    json: bool,
) -> anyhow::Result<()> {
    let mut client = DispatchAdminClient::new(connection.channel(Target::Dispatcher).await?);
    match command {
        DispatchesCommand::List(args) => list(&mut client, connection, args, json).await,
        DispatchesCommand::Get { order_id } => {
            let dispatch = connection
                .answer(
                    Target::Dispatcher,
                    "GetDispatch",
                    client.get_dispatch(connection.request(pb::GetDispatchRequest { order_id })?),
                )
                .await?;
            if json {
                return print_json(&dispatch, "waybill.v1.Dispatch");
            }
            print!("{}", describe(&dispatch));
            Ok(())
        }
        DispatchesCommand::Retry(args) => {
            if args.order_ids.is_empty() && args.filter.is_empty() {
                return Err(usage(
                    "name the orders to retry (order ids), or a filter: --state (and --partner)",
                ));
            }
            if !args.order_ids.is_empty() && !args.filter.is_empty() {
                return Err(usage(
                    "give either order ids or a filter (--state/--partner), not both",
                ));
            }
            let filter = (!args.filter.is_empty()).then(|| args.filter.to_proto());
            let answer = connection
                .answer(
                    Target::Dispatcher,
                    "RetryDispatches",
                    client.retry_dispatches(connection.request(pb::RetryDispatchesRequest {
                        order_ids: args.order_ids,
                        filter,
                        dry_run: args.dry_run,
                        max_orders: args.max_orders,
                        spread: args.spread.map(to_proto_duration),
                    })?),
                )
                .await?;
            if json {
                return print_json(&answer, "waybill.v1.RetryDispatchesResponse");
            }
            for id in &answer.order_ids {
                println!("{id}");
            }
            eprintln!("{}", retry_summary(&answer));
            Ok(())
        }
    }
}

async fn list(
    client: &mut DispatchAdminClient<tonic::transport::Channel>,
    connection: &Connection,
    args: ListArgs,
    json: bool,
) -> anyhow::Result<()> {
    if args.limit == 0 {
        return Err(usage("--limit must be at least 1"));
    }
    let mut all = pb::ListDispatchesResponse {
        dispatches: Vec::new(),
        next_page_token: args.page_token,
    };
    loop {
        let want = args.limit - all.dispatches.len() as u32;
        let page = connection
            .answer(
                Target::Dispatcher,
                "ListDispatches",
                client.list_dispatches(connection.request(pb::ListDispatchesRequest {
                    filter: Some(args.filter.to_proto()),
                    page_size: want.min(MAX_PAGE),
                    page_token: std::mem::take(&mut all.next_page_token),
                })?),
            )
            .await?;
        all.dispatches.extend(page.dispatches);
        all.next_page_token = page.next_page_token;
        if all.next_page_token.is_empty() || all.dispatches.len() as u32 >= args.limit {
            break;
        }
    }
    if json {
        return print_json(&all, "waybill.v1.ListDispatchesResponse");
    }
    let mut table = Table::new(&[
        "ORDER",
        "STATE",
        "PARTNER",
        "ROUTE",
        "ATTEMPTS",
        "RESENDS",
        "UPDATED",
        "LAST ERROR",
    ]);
    for d in &all.dispatches {
        table.row(vec![
            d.order_id.clone(),
            d.state().short_name().to_owned(),
            or_dash(&d.partner_id),
            or_dash(&d.route_id),
            d.attempts.to_string(),
            d.resends.to_string(),
            timestamp(d.updated_at.as_ref()),
            or_dash(&d.last_error),
        ]);
    }
    table.print("no dispatches match");
    if !all.next_page_token.is_empty() {
        eprintln!(
            "more: --page-token {} (or a larger --limit)",
            all.next_page_token
        );
    }
    Ok(())
}

/// What a retry did (or would do), for stderr.
fn retry_summary(answer: &pb::RetryDispatchesResponse) -> String {
    let count = answer.order_ids.len();
    let mut text = if answer.applied {
        format!("{count} order(s) sent back to PENDING with a fresh attempt budget")
    } else {
        format!("dry run: {count} order(s) would be sent back to PENDING; nothing was changed")
    };
    if count > 0 {
        text.push_str(&format!(
            ", due from {} to {}",
            timestamp(answer.first_due_at.as_ref()),
            timestamp(answer.last_due_at.as_ref())
        ));
    }
    if answer.truncated {
        text.push_str(&format!(
            "; {} matched, more than --max {}: the oldest were taken, call again for the rest",
            answer.matched, answer.max_orders
        ));
    }
    text
}

/// One dispatch, field by field, then its attempts.
fn describe(d: &pb::Dispatch) -> String {
    let mut text = fields(&[
        ("order", d.order_id.clone()),
        ("state", d.state().short_name().to_owned()),
        ("partner", or_dash(&d.partner_id)),
        ("route", or_dash(&d.route_id)),
        ("total", money(d.total.as_ref())),
        ("attempts", d.attempts.to_string()),
        ("next attempt", timestamp(d.next_attempt_at.as_ref())),
        ("last error", or_dash(&d.last_error)),
        ("sent", timestamp(d.sent_at.as_ref())),
        ("resends", d.resends.to_string()),
        ("lease", or_dash(&d.lease_owner)),
        ("lease expires", timestamp(d.lease_expires_at.as_ref())),
        ("created", timestamp(d.created_at.as_ref())),
        ("updated", timestamp(d.updated_at.as_ref())),
    ]);
    if !d.attempt_log.is_empty() {
        let mut table = Table::new(&["ATTEMPT", "AT", "PARTNER", "TOPIC", "ERROR"]);
        for a in &d.attempt_log {
            table.row(vec![
                a.attempt.to_string(),
                timestamp(a.at.as_ref()),
                or_dash(&a.partner_id),
                or_dash(&a.topic),
                or_dash(&a.error),
            ]);
        }
        text.push('\n');
        text.push_str(&table.render());
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn states_are_read_as_operators_write_them() {
        assert_eq!(parse_state("dead").unwrap(), DispatchState::Dead);
        assert_eq!(
            parse_state("DISPATCH_STATE_UNROUTABLE").unwrap(),
            DispatchState::Unroutable
        );
        assert!(parse_state("gone").unwrap_err().contains("unknown state"));
        assert!(parse_state("unspecified").is_err());
    }
}
