//! `waybill admin routes list|set|delete|explain`: which partner carries an order to where.

use waybill_proto::v1::{
    self as pb, dispatch_admin_client::DispatchAdminClient, explain_route_request::Target as Ask,
};

use super::{
    connection::{Connection, Target, usage},
    output::{Table, fields, impact, or_dash, print_json, yes_no},
};

/// `waybill admin routes …`.
#[derive(Debug, clap::Subcommand)]
pub enum RoutesCommand {
    /// Every route, by priority.
    List,
    /// Create a route, or replace the one with the same id (every field: what is not given
    /// takes its default); prints the change's impact on the last day's orders.
    Set(SetArgs),
    /// Delete a route; prints the countries left without a route and the last day's orders
    /// that would go elsewhere.
    Delete {
        /// The route id.
        route: String,
        /// Show the consequences; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Which route an order (or an address) matches, and why each other did not.
    Explain(ExplainArgs),
}

/// `routes set`.
#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// The route id.
    route: String,
    /// The partner it sends to.
    #[arg(long)]
    partner: String,
    /// ISO 3166-1 alpha-2 country code of the destination.
    #[arg(long)]
    country: String,
    /// Only addresses in this region (case-insensitive).
    #[arg(long, default_value = "")]
    region: String,
    /// Only postal codes starting with this.
    #[arg(long, default_value = "")]
    postal_prefix: String,
    /// Among matching routes the lowest number wins; ties go to the more specific route.
    #[arg(long, default_value_t = 100)]
    priority: i32,
    /// Create it disabled (it is skipped until set again without --disabled).
    #[arg(long)]
    disabled: bool,
    /// Show the route as it would be and the consequences; change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// `routes explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// An order's id: how its address routes now.
    #[arg(long, conflicts_with_all = ["country", "region", "postal_code"])]
    order: Option<String>,
    /// Or an address: its country (ISO 3166-1 alpha-2).
    #[arg(long)]
    country: Option<String>,
    /// The address's region.
    #[arg(long, default_value = "")]
    region: String,
    /// The address's postal code.
    #[arg(long, default_value = "")]
    postal_code: String,
}

fn route_row(r: &pb::Route) -> Vec<String> {
    vec![
        r.id.clone(),
        r.partner_id.clone(),
        r.country_code.clone(),
        or_dash(&r.region),
        or_dash(&r.postal_prefix),
        r.priority.to_string(),
        yes_no(r.enabled),
    ]
}

const ROUTE_HEADER: [&str; 7] = [
    "ID", "PARTNER", "COUNTRY", "REGION", "POSTAL", "PRIORITY", "ENABLED",
];

/// Runs a `routes` command.
pub async fn run(
    command: RoutesCommand,
    connection: &Connection,
    json: bool,
) -> anyhow::Result<()> {
    let c = connection;
    if let RoutesCommand::Explain(args) = &command
        && args.order.is_none()
        && args.country.is_none()
    {
        return Err(usage(
            "name an order (--order ID) or an address (--country CC …)",
        ));
    }
    let mut client = DispatchAdminClient::new(c.channel(Target::Dispatcher).await?);
    match command {
        RoutesCommand::List => {
            let answer = c
                .answer(
                    Target::Dispatcher,
                    "ListRoutes",
                    client.list_routes(c.request(pb::ListRoutesRequest {})?),
                )
                .await?;
            if json {
                return print_json(&answer, "waybill.v1.ListRoutesResponse");
            }
            let mut table = Table::new(&ROUTE_HEADER);
            for route in &answer.routes {
                table.row(route_row(route));
            }
            table.print("no routes");
        }
        RoutesCommand::Set(args) => {
            let route = pb::Route {
                id: args.route,
                partner_id: args.partner,
                country_code: args.country,
                region: args.region,
                postal_prefix: args.postal_prefix,
                priority: args.priority,
                enabled: !args.disabled,
                ..Default::default()
            };
            let route = c
                .answer(
                    Target::Dispatcher,
                    "SetRoute",
                    client.set_route(c.request(pb::SetRouteRequest {
                        route: Some(route),
                        dry_run: args.dry_run,
                    })?),
                )
                .await?;
            if json {
                return print_json(&route, "waybill.v1.Route");
            }
            let mut table = Table::new(&ROUTE_HEADER);
            table.row(route_row(&route));
            print!("{}", table.render());
            if let Some(change) = &route.impact {
                print!("\n{}", impact(change));
            }
        }
        RoutesCommand::Delete { route, dry_run } => {
            let answer = c
                .answer(
                    Target::Dispatcher,
                    "DeleteRoute",
                    client.delete_route(c.request(pb::DeleteRouteRequest {
                        route_id: route.clone(),
                        dry_run,
                    })?),
                )
                .await?;
            if json {
                return print_json(&answer, "waybill.v1.DeleteRouteResponse");
            }
            if dry_run {
                println!("dry run: route {route} would be deleted; nothing was changed");
            } else {
                println!("deleted route {route}");
            }
            if let Some(change) = &answer.impact {
                print!("\n{}", impact(change));
            }
        }
        RoutesCommand::Explain(args) => {
            let target = match args.order {
                Some(order) => Ask::OrderId(order),
                None => Ask::Address(pb::Address {
                    country_code: args.country.unwrap_or_default(),
                    region: args.region,
                    postal_code: args.postal_code,
                    ..Default::default()
                }),
            };
            let answer = c
                .answer(
                    Target::Dispatcher,
                    "ExplainRoute",
                    client.explain_route(c.request(pb::ExplainRouteRequest {
                        target: Some(target),
                    })?),
                )
                .await?;
            if json {
                return print_json(&answer, "waybill.v1.ExplainRouteResponse");
            }
            let chosen = answer.chosen.as_ref().map_or_else(
                || "none: the order would be UNROUTABLE".to_owned(),
                |r| format!("{} (partner {})", r.id, r.partner_id),
            );
            print!("{}", fields(&[("chosen", chosen)]));
            let mut table = Table::new(&["ROUTE", "PARTNER", "PRIORITY", "MATCHED", "REASON"]);
            for verdict in &answer.verdicts {
                let route = verdict.route.clone().unwrap_or_default();
                table.row(vec![
                    route.id,
                    route.partner_id,
                    route.priority.to_string(),
                    yes_no(verdict.matched),
                    or_dash(&verdict.reason),
                ]);
            }
            if !answer.verdicts.is_empty() {
                println!();
            }
            table.print("no routes to weigh");
        }
    }
    Ok(())
}
