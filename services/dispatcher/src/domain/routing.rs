//! Routing: which partner carries an order, decided from the partners and routes in the
//! database (re-read for every batch, so a change applies to the next order without a restart).
//!
//! Routes are weighed in a fixed order: priority (lower first), then specificity (a route with
//! a postal prefix or region is more specific than one for the whole country; longer prefixes
//! are more specific), then id. The first route that matches wins. A route matches when it is
//! enabled, its partner exists and is enabled, the country is the same, its region (if set)
//! equals the address's region ignoring case, and the address's postal code starts with its
//! prefix (if set) ignoring case and spaces.

use std::collections::{BTreeSet, HashMap};

use super::model::{PartnerRecord, RouteRecord, ShipTo};

/// The partners and routes at one moment.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    partners: HashMap<String, PartnerRecord>,
    /// In weighing order.
    routes: Vec<RouteRecord>,
}

/// The outcome of weighing one route against one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The route.
    pub route: RouteRecord,
    /// Whether it matches the destination (a later matching route still loses to the chosen).
    pub matched: bool,
    /// Why, for people: `"country DE != FR"`, `"partner acme disabled"`.
    pub reason: String,
}

/// Every route weighed, and the one chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The winning route; `None` means the order is unroutable.
    pub chosen: Option<RouteRecord>,
    /// Every route, in weighing order.
    pub verdicts: Vec<Verdict>,
}

/// A decision for one order.
#[derive(Debug, Clone, Copy)]
pub struct Decision<'a> {
    /// The route that matched.
    pub route: &'a RouteRecord,
    /// Its partner.
    pub partner: &'a PartnerRecord,
}

impl RoutingTable {
    /// A table of `partners` and `routes` (in any order).
    pub fn new(partners: Vec<PartnerRecord>, mut routes: Vec<RouteRecord>) -> Self {
        routes.sort_by(|a, b| {
            a.priority
                .cmp(&b.priority)
                .then_with(|| specificity(b).cmp(&specificity(a)))
                .then_with(|| a.id.cmp(&b.id))
        });
        Self {
            partners: partners.into_iter().map(|p| (p.id.clone(), p)).collect(),
            routes,
        }
    }

    /// Whether no route is set up at all: every order is unroutable, and the operator's fix is
    /// enrolment, not a missing country.
    pub fn has_no_routes(&self) -> bool {
        self.routes.is_empty()
    }

    /// A partner by id.
    pub fn partner(&self, id: &str) -> Option<&PartnerRecord> {
        self.partners.get(id)
    }

    /// The route and partner for `ship_to`, or `None` when nothing matches.
    pub fn route(&self, ship_to: &ShipTo) -> Option<Decision<'_>> {
        self.route_excluding(ship_to, &[])
    }

    /// [`RoutingTable::route`] skipping the routes of partners in `rejected`: a partner that
    /// refused an order (`REJECTED_BY_PARTNER`) is never offered it again, so the order goes to
    /// the next matching route, or nowhere (`UNROUTABLE`, for operators) when none is left.
    pub fn route_excluding(&self, ship_to: &ShipTo, rejected: &[String]) -> Option<Decision<'_>> {
        self.routes
            .iter()
            .filter(|route| !rejected.contains(&route.partner_id))
            .find_map(|route| match self.check(route, ship_to) {
                Ok(partner) => Some(Decision { route, partner }),
                Err(_) => None,
            })
    }

    /// Every route weighed against `ship_to`, with reasons.
    pub fn explain(&self, ship_to: &ShipTo) -> Explanation {
        let mut chosen: Option<RouteRecord> = None;
        let verdicts = self
            .routes
            .iter()
            .map(|route| {
                let (matched, reason) = match (self.check(route, ship_to), &chosen) {
                    (Ok(_), None) => {
                        chosen = Some(route.clone());
                        (true, "matches; chosen".to_owned())
                    }
                    (Ok(_), Some(winner)) => (
                        true,
                        format!("matches, but route {} is weighed first", winner.id),
                    ),
                    (Err(reason), _) => (false, reason),
                };
                Verdict {
                    route: route.clone(),
                    matched,
                    reason,
                }
            })
            .collect();
        Explanation { chosen, verdicts }
    }

    /// Every partner, in no particular order.
    pub fn partners(&self) -> impl Iterator<Item = &PartnerRecord> {
        self.partners.values()
    }

    /// Every route, in weighing order.
    pub fn routes(&self) -> &[RouteRecord] {
        &self.routes
    }

    /// The countries at least one route can carry orders to (the route and its partner
    /// enabled), by code: a country missing here makes every order to it unroutable.
    pub fn countries_served(&self) -> BTreeSet<String> {
        self.routes
            .iter()
            .filter(|route| self.usable(route).is_ok())
            .map(|route| route.country_code.to_ascii_uppercase())
            .collect()
    }

    /// The route's partner when the route can match anything at all: the route enabled, its
    /// partner known and enabled.
    fn usable(&self, route: &RouteRecord) -> Result<&PartnerRecord, String> {
        if !route.enabled {
            return Err("route disabled".to_owned());
        }
        let partner = self
            .partners
            .get(&route.partner_id)
            .ok_or_else(|| format!("partner {} unknown", route.partner_id))?;
        if !partner.enabled {
            return Err(format!("partner {} disabled", partner.id));
        }
        Ok(partner)
    }

    fn check(&self, route: &RouteRecord, ship_to: &ShipTo) -> Result<&PartnerRecord, String> {
        let partner = self.usable(route)?;
        if !route
            .country_code
            .eq_ignore_ascii_case(ship_to.country_code.trim())
        {
            return Err(format!(
                "country {} != {}",
                ship_to.country_code, route.country_code
            ));
        }
        if !route.region.is_empty() && !route.region.eq_ignore_ascii_case(ship_to.region.trim()) {
            return Err(format!("region {:?} != {:?}", ship_to.region, route.region));
        }
        if !route.postal_prefix.is_empty()
            && !normalize_postal(&ship_to.postal_code)
                .starts_with(&normalize_postal(&route.postal_prefix))
        {
            return Err(format!(
                "postal code {:?} does not start with {:?}",
                ship_to.postal_code, route.postal_prefix
            ));
        }
        Ok(partner)
    }
}

fn specificity(route: &RouteRecord) -> usize {
    usize::from(!route.region.is_empty()) + normalize_postal(&route.postal_prefix).len()
}

fn normalize_postal(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, Utc};

    use super::*;

    fn partner(id: &str, enabled: bool) -> PartnerRecord {
        PartnerRecord {
            id: id.to_owned(),
            display_name: id.to_owned(),
            enabled,
            handover_deadline: Duration::minutes(10),
            resend_budget: 3,
            topic: format!("t.{id}"),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn route(
        id: &str,
        partner: &str,
        country: &str,
        region: &str,
        prefix: &str,
        priority: i32,
    ) -> RouteRecord {
        RouteRecord {
            id: id.to_owned(),
            partner_id: partner.to_owned(),
            country_code: country.to_owned(),
            region: region.to_owned(),
            postal_prefix: prefix.to_owned(),
            priority,
            enabled: true,
        }
    }

    fn to(country: &str, region: &str, postal: &str) -> ShipTo {
        ShipTo {
            country_code: country.to_owned(),
            region: region.to_owned(),
            postal_code: postal.to_owned(),
            ..ShipTo::default()
        }
    }

    #[test]
    fn lower_priority_wins_then_specificity() {
        let table = RoutingTable::new(
            vec![partner("a", true), partner("b", true), partner("c", true)],
            vec![
                route("de-all", "a", "DE", "", "", 10),
                route("de-berlin", "b", "DE", "", "10", 10),
                route("de-first", "c", "DE", "", "", 5),
            ],
        );
        let decision = table.route(&to("DE", "", "10115")).expect("routed");
        assert_eq!(decision.route.id, "de-first");

        let table = RoutingTable::new(
            vec![partner("a", true), partner("b", true)],
            vec![
                route("de-all", "a", "DE", "", "", 10),
                route("de-berlin", "b", "DE", "", "10", 10),
            ],
        );
        assert_eq!(
            table
                .route(&to("DE", "", "10 115"))
                .expect("routed")
                .partner
                .id,
            "b"
        );
        assert_eq!(
            table
                .route(&to("DE", "", "80331"))
                .expect("routed")
                .partner
                .id,
            "a"
        );
    }

    #[test]
    fn partners_that_rejected_the_order_are_skipped() {
        let table = RoutingTable::new(
            vec![partner("a", true), partner("b", true)],
            vec![
                route("de-a", "a", "DE", "", "", 1),
                route("de-b", "b", "DE", "", "", 2),
            ],
        );
        let berlin = to("DE", "", "10115");
        assert_eq!(table.route(&berlin).expect("routed").partner.id, "a");
        let next = table
            .route_excluding(&berlin, &["a".to_owned()])
            .expect("the next matching route");
        assert_eq!(
            (next.route.id.as_str(), next.partner.id.as_str()),
            ("de-b", "b")
        );
        assert!(
            table
                .route_excluding(&berlin, &["a".to_owned(), "b".to_owned()])
                .is_none(),
            "every matching partner refused: unroutable"
        );
    }

    #[test]
    fn region_is_case_insensitive_and_optional() {
        let table = RoutingTable::new(
            vec![partner("a", true)],
            vec![route("us-ca", "a", "US", "CA", "", 1)],
        );
        assert!(table.route(&to("US", "ca", "94103")).is_some());
        assert!(table.route(&to("US", "NY", "10001")).is_none());
    }

    #[test]
    fn disabled_partners_and_routes_match_nothing() {
        let mut disabled_route = route("r2", "a", "FR", "", "", 1);
        disabled_route.enabled = false;
        let table = RoutingTable::new(
            vec![partner("off", false), partner("a", true)],
            vec![
                route("r1", "off", "FR", "", "", 1),
                disabled_route,
                route("r3", "ghost", "FR", "", "", 1),
            ],
        );
        let explanation = table.explain(&to("FR", "", "75001"));
        assert_eq!(explanation.chosen, None);
        let reasons: Vec<&str> = explanation
            .verdicts
            .iter()
            .map(|v| v.reason.as_str())
            .collect();
        assert_eq!(
            reasons,
            [
                "partner off disabled",
                "route disabled",
                "partner ghost unknown"
            ]
        );
    }

    #[test]
    fn countries_served_need_an_enabled_route_of_an_enabled_partner() {
        let mut off_route = route("it", "a", "IT", "", "", 1);
        off_route.enabled = false;
        let table = RoutingTable::new(
            vec![partner("a", true), partner("off", false)],
            vec![
                route("de", "a", "DE", "", "10", 1),
                route("fr", "off", "FR", "", "", 1),
                route("es", "ghost", "ES", "", "", 1),
                off_route,
            ],
        );
        assert_eq!(
            table.countries_served().into_iter().collect::<Vec<_>>(),
            ["DE"]
        );
    }

    #[test]
    fn explain_names_the_winner_and_the_losers() {
        let table = RoutingTable::new(
            vec![partner("a", true), partner("b", true)],
            vec![
                route("fr", "a", "FR", "", "", 1),
                route("fr-2", "b", "FR", "", "", 2),
                route("de", "a", "DE", "", "", 1),
            ],
        );
        let explanation = table.explain(&to("FR", "", "75001"));
        assert_eq!(explanation.chosen.map(|r| r.id), Some("fr".to_owned()));
        let verdicts: Vec<(String, bool, String)> = explanation
            .verdicts
            .into_iter()
            .map(|v| (v.route.id, v.matched, v.reason))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("de".to_owned(), false, "country FR != DE".to_owned()),
                ("fr".to_owned(), true, "matches; chosen".to_owned()),
                (
                    "fr-2".to_owned(),
                    true,
                    "matches, but route fr is weighed first".to_owned()
                ),
            ]
        );
    }
}
