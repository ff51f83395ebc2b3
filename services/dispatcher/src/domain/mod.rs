//! The dispatcher's pure logic: no tonic, sqlx or rdkafka in here, so it is unit-tested in place.
//!
//! - [`cycle`]: the relay's decisions for a leased batch — what each order needs, and what a
//!   send's outcome makes of its row (the dispatch state machine); an operator's replay is its
//!   [`cycle::replay`] move.
//! - [`record`]: what a batch's outcome writes (row updates, attempt log, audit copies).
//! - [`model`]: the records the relay and the operators work with.
//! - [`routing`]: which partner carries an order, and why (the explanation operators see).
//! - [`route_change`]: what a change to routes or partners does to routing (countries left
//!   without a route, the last day's orders rerouted), weighed by [`routing`] itself.
//! - [`partner_change`]: a change to a partner, field by field, old -> new.
//! - [`backoff`]: when a failed send is tried again (exponential, full jitter, capped).
//! - [`audit`]: which order totals also go to the audit topic.
//! - [`request`]: the checks of `DispatchAdmin` requests, each refusal naming the field and
//!   its rule.

pub mod audit;
pub mod backoff;
pub mod cycle;
pub mod model;
pub mod partner_change;
pub mod record;
pub mod request;
pub mod route_change;
pub mod routing;
