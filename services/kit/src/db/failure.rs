//! What a database error means to a store, decided once for every service: whether trying
//! again later may help, and which schema rule a refused write broke.

/// The kind of a database failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The database could not be reached in time (pool exhausted or closed, connection
    /// broken): trying again later may succeed.
    Unavailable,
    /// A unique key exists already.
    Duplicate,
    /// A referenced row does not exist.
    MissingReference,
    /// A value broke a `CHECK` rule.
    CheckViolation,
    /// Anything else: a bug or a broken schema, not the caller's fault.
    Other,
}

/// The kind of `error`, alike on Postgres and SQLite.
pub fn classify(error: &sqlx::Error) -> Failure {
    use sqlx::error::ErrorKind;
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            Failure::Unavailable
        }
        sqlx::Error::Database(db_error) => match db_error.kind() {
            ErrorKind::UniqueViolation => Failure::Duplicate,
            ErrorKind::ForeignKeyViolation => Failure::MissingReference,
            ErrorKind::CheckViolation => Failure::CheckViolation,
            _ => Failure::Other,
        },
        _ => Failure::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_that_cannot_serve_is_unavailable_and_a_decode_error_is_not() {
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Failure::Unavailable);
        assert_eq!(classify(&sqlx::Error::PoolClosed), Failure::Unavailable);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(classify(&sqlx::Error::Io(io)), Failure::Unavailable);
        assert_eq!(classify(&sqlx::Error::RowNotFound), Failure::Other);
    }
}
