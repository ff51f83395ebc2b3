//! The consequences of a change to routing — a route set or deleted, a partner disabled or
//! enabled — before (or as) it is made: `ExplainRoute` for the whole change. The table after
//! the change is the table before with the change made ([`RoutingChange::apply`]), and both are
//! weighed by the relay's own routing ([`RoutingTable::route_excluding`], partners that refused
//! an order skipped as the relay skips them), so the answer is what the relay would do, not a
//! second opinion.
//!
//! Two consequences are reported ([`impact`]): the countries no route could carry orders to any
//! more (every order to them becomes `UNROUTABLE`), and how the last day's orders would be
//! routed now — how many to another partner, how many to none, by partner before and after.
//! The orders are weighed by destination (the store counts them per address and refusals), so
//! the work grows with the number of distinct destinations, not of orders.

use std::collections::BTreeMap;

use chrono::Duration;

use super::{
    model::{PartnerRecord, RouteRecord, ShipTo},
    routing::RoutingTable,
};

/// Most distinct destinations weighed (the busiest first); beyond it the answer says
/// `partial`.
pub const MAX_DESTINATIONS: u32 = 100_000;

/// How far back the orders weighed go: the last day's traffic.
pub fn recent_window() -> Duration {
    Duration::hours(24)
}

/// A change to routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutingChange {
    /// A route created, or replacing the one with its id.
    SetRoute(RouteRecord),
    /// The route with this id removed.
    DeleteRoute(String),
    /// A partner enabled or disabled.
    PartnerEnabled {
        /// The partner.
        partner_id: String,
        /// Enabled after the change.
        enabled: bool,
    },
}

impl RoutingChange {
    /// `table` with this change made.
    pub fn apply(&self, table: &RoutingTable) -> RoutingTable {
        let mut partners: Vec<PartnerRecord> = table.partners().cloned().collect();
        let mut routes: Vec<RouteRecord> = table.routes().to_vec();
        match self {
            Self::SetRoute(route) => {
                routes.retain(|r| r.id != route.id);
                routes.push(route.clone());
            }
            Self::DeleteRoute(id) => routes.retain(|r| &r.id != id),
            Self::PartnerEnabled {
                partner_id,
                enabled,
            } => {
                for partner in partners.iter_mut().filter(|p| &p.id == partner_id) {
                    partner.enabled = *enabled;
                }
            }
        }
        RoutingTable::new(partners, routes)
    }
}

/// Recent orders to one destination, with the same refusals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecentDestination {
    /// Where they ship to.
    pub ship_to: ShipTo,
    /// Partners that refused them (routing skips them).
    pub rejected_partners: Vec<String>,
    /// How many orders.
    pub orders: i64,
}

/// Orders that would route differently: from one partner (`None`: none) to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shift {
    /// The partner they route to now (`None`: unroutable).
    pub from: Option<String>,
    /// The partner they would route to after the change (`None`: unroutable).
    pub to: Option<String>,
    /// How many orders.
    pub orders: i64,
}

/// What a change does to routing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingImpact {
    /// Countries a route could carry orders to before and none after, by code.
    pub countries_left_without_route: Vec<String>,
    /// The recent orders weighed.
    pub orders_considered: i64,
    /// Of those, the ones that would route to another partner or none.
    pub orders_rerouted: i64,
    /// Of the rerouted, the ones that would route to none.
    pub orders_unroutable: i64,
    /// The rerouted by partner before and after (ordered by partner ids).
    pub shifts: Vec<Shift>,
}

/// What changing routing from `before` to `after` does, given the recent orders.
pub fn impact(
    before: &RoutingTable,
    after: &RoutingTable,
    recent: &[RecentDestination],
) -> RoutingImpact {
    let served_after = after.countries_served();
    let countries_left_without_route = before
        .countries_served()
        .difference(&served_after)
        .cloned()
        .collect();
    let mut shifts: BTreeMap<(Option<String>, Option<String>), i64> = BTreeMap::new();
    let mut orders_considered = 0_i64;
    for destination in recent {
        orders_considered = orders_considered.saturating_add(destination.orders);
        let partner = |table: &RoutingTable| {
            table
                .route_excluding(&destination.ship_to, &destination.rejected_partners)
                .map(|decision| decision.partner.id.clone())
        };
        let (from, to) = (partner(before), partner(after));
        if from != to {
            let orders = shifts.entry((from, to)).or_default();
            *orders = orders.saturating_add(destination.orders);
        }
    }
    let shifts: Vec<Shift> = shifts
        .into_iter()
        .map(|((from, to), orders)| Shift { from, to, orders })
        .collect();
    RoutingImpact {
        countries_left_without_route,
        orders_considered,
        orders_rerouted: shifts.iter().map(|s| s.orders).sum(),
        orders_unroutable: shifts
            .iter()
            .filter(|s| s.to.is_none())
            .map(|s| s.orders)
            .sum(),
        shifts,
    }
}

/// The impact for the audit trail: `countries left without a route: DE; 12 of 40 recent
/// orders rerouted (3 to none)`.
pub fn describe(impact: &RoutingImpact) -> String {
    let countries = if impact.countries_left_without_route.is_empty() {
        "none".to_owned()
    } else {
        impact.countries_left_without_route.join(",")
    };
    format!(
        "countries left without a route: {countries}; {} of {} recent orders rerouted ({} to none)",
        impact.orders_rerouted, impact.orders_considered, impact.orders_unroutable
    )
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn partner(id: &str) -> PartnerRecord {
        PartnerRecord {
            id: id.to_owned(),
            display_name: id.to_owned(),
            enabled: true,
            handover_deadline: Duration::minutes(10),
            resend_budget: 5,
            topic: format!("t.{id}"),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn route(id: &str, partner: &str, country: &str, priority: i32) -> RouteRecord {
        RouteRecord {
            id: id.to_owned(),
            partner_id: partner.to_owned(),
            country_code: country.to_owned(),
            region: String::new(),
            postal_prefix: String::new(),
            priority,
            enabled: true,
        }
    }

    fn to(country: &str, orders: i64) -> RecentDestination {
        RecentDestination {
            ship_to: ShipTo {
                country_code: country.to_owned(),
                postal_code: "10115".to_owned(),
                ..ShipTo::default()
            },
            rejected_partners: Vec::new(),
            orders,
        }
    }

    fn table() -> RoutingTable {
        RoutingTable::new(
            vec![partner("a"), partner("b")],
            vec![
                route("de-a", "a", "DE", 1),
                route("de-b", "b", "DE", 2),
                route("fr-a", "a", "FR", 1),
            ],
        )
    }

    #[test]
    fn deleting_the_only_route_of_a_country_leaves_it_without_one() {
        let before = table();
        let after = RoutingChange::DeleteRoute("fr-a".into()).apply(&before);
        let impact = impact(&before, &after, &[to("FR", 7), to("DE", 5)]);
        assert_eq!(impact.countries_left_without_route, ["FR"]);
        assert_eq!(
            (
                impact.orders_considered,
                impact.orders_rerouted,
                impact.orders_unroutable
            ),
            (12, 7, 7)
        );
        assert_eq!(
            impact.shifts,
            [Shift {
                from: Some("a".into()),
                to: None,
                orders: 7
            }]
        );
        assert_eq!(
            describe(&impact),
            "countries left without a route: FR; 7 of 12 recent orders rerouted (7 to none)"
        );
    }

    #[test]
    fn disabling_a_partner_moves_its_orders_to_the_next_route() {
        let before = table();
        let after = RoutingChange::PartnerEnabled {
            partner_id: "a".into(),
            enabled: false,
        }
        .apply(&before);
        let impact = impact(&before, &after, &[to("DE", 5), to("FR", 2), to("IT", 1)]);
        assert_eq!(impact.countries_left_without_route, ["FR"]);
        assert_eq!(
            impact.shifts,
            [
                Shift {
                    from: Some("a".into()),
                    to: None,
                    orders: 2
                },
                Shift {
                    from: Some("a".into()),
                    to: Some("b".into()),
                    orders: 5
                },
            ]
        );
        assert_eq!((impact.orders_rerouted, impact.orders_unroutable), (7, 2));
    }

    #[test]
    fn a_new_route_reroutes_without_leaving_anyone_out_and_respects_refusals() {
        let before = table();
        let after = RoutingChange::SetRoute(route("de-first", "b", "DE", 0)).apply(&before);
        let refused_by_b = RecentDestination {
            rejected_partners: vec!["b".into()],
            ..to("DE", 3)
        };
        let impact = impact(&before, &after, &[to("DE", 4), refused_by_b, to("IT", 1)]);
        assert!(impact.countries_left_without_route.is_empty());
        assert_eq!(
            impact.shifts,
            [Shift {
                from: Some("a".into()),
                to: Some("b".into()),
                orders: 4
            }],
            "the orders b refused stay with a, as the relay would route them"
        );
        assert_eq!(impact.orders_considered, 8);
    }

    #[test]
    fn replacing_a_route_is_weighed_as_the_new_route() {
        let before = table();
        let mut moved = route("fr-a", "a", "IT", 1);
        moved.enabled = true;
        let after = RoutingChange::SetRoute(moved).apply(&before);
        assert_eq!(after.routes().len(), 3, "replaced, not added");
        let impact = impact(&before, &after, &[to("IT", 2), to("FR", 1)]);
        assert_eq!(impact.countries_left_without_route, ["FR"]);
        assert_eq!(
            impact.shifts,
            [
                Shift {
                    from: None,
                    to: Some("a".into()),
                    orders: 2
                },
                Shift {
                    from: Some("a".into()),
                    to: None,
                    orders: 1
                },
            ]
        );
    }

    #[test]
    fn nothing_changes_when_nothing_is_changed() {
        let before = table();
        let after = RoutingChange::PartnerEnabled {
            partner_id: "b".into(),
            enabled: true,
        }
        .apply(&before);
        let impact = impact(&before, &after, &[to("DE", 5)]);
        assert_eq!(
            impact,
            RoutingImpact {
                orders_considered: 5,
                ..RoutingImpact::default()
            }
        );
    }
}
