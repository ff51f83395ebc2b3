//! Who is calling: the [`Role`] that decides what a caller may do, and the [`Caller`] that the
//! credentials file maps a credential to and the auth layer puts on each call.

use std::sync::Arc;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Places and reads orders (`OrderService`).
    Storefront,
    /// Steers the dispatcher (`DispatchAdmin`).
    Operator,
}

impl Role {
    /// Lower-case name, as in the credentials file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Storefront => "storefront",
            Self::Operator => "operator",
        }
    }
}

/// An authenticated caller; a request extension on every call that carried a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Name from the credentials file (what audit records and rate limits use).
    pub name: Arc<str>,
    /// Role.
    pub role: Role,
}
