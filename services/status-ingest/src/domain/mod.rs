//! StatusIngest's decisions, pure and unit-tested: what a request may contain
//! ([`validate`]) and what an accepted report does to the order and its dispatch row
//! ([`decision`]).

pub mod decision;
pub mod validate;
