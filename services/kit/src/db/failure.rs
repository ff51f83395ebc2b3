//! What a database error means to a store, decided once for every service: whether trying
//! again later may help, and which schema rule a refused write broke.

/// The kind of a database failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The database could not be reached in time (pool exhausted or closed, connection
    /// broken, session ended by the server, no room for a connection): trying again later may
    /// succeed.
    Unavailable,
    /// The transaction lost a deadlock or a serialization conflict and was rolled back:
    /// running it again at once may succeed (and callers that do not should answer as for
    /// [`Failure::Unavailable`]).
    Conflict,
    /// A unique key exists already.
    Duplicate,
    /// A referenced row does not exist.
    MissingReference,
    /// A value broke a `CHECK` rule.
    CheckViolation,
    /// Anything else: a bug or a broken schema, not the caller's fault.
    Other,
}

/// The kind of `error`, alike on Postgres and SQLite. Every store maps its database errors
/// through here once per failed call, so a timed-out acquire is also counted here (the pool's
/// `waybill_db_pool_acquire_timeouts_total`: sqlx has no hook of its own for it).
pub fn classify(error: &sqlx::Error) -> Failure {
    use sqlx::error::ErrorKind;
    super::pool_metrics::note(error);
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            Failure::Unavailable
        }
        sqlx::Error::Database(db_error) => match db_error.kind() {
            ErrorKind::UniqueViolation => Failure::Duplicate,
            ErrorKind::ForeignKeyViolation => Failure::MissingReference,
            ErrorKind::CheckViolation => Failure::CheckViolation,
            _ if is_conflict(db_error.as_ref()) => Failure::Conflict,
            _ if is_transient(db_error.as_ref()) => Failure::Unavailable,
            _ => Failure::Other,
        },
        _ => Failure::Other,
    }
}

/// Postgres chose this transaction to break a deadlock (40P01) or a serialization conflict
/// (40001).
fn is_conflict(error: &dyn sqlx::error::DatabaseError) -> bool {
    error
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some_and(|error| matches!(error.code(), "40P01" | "40001"))
}

/// Whether the database refused for a reason that passes: it is shutting down or restarting,
/// it ended this session, or it has no room for another connection.
fn is_transient(error: &dyn sqlx::error::DatabaseError) -> bool {
    if let Some(error) = error.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        postgres_transient(error.code())
    } else if error
        .try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .is_some()
    {
        error.code().is_some_and(|code| sqlite_transient(&code))
    } else {
        false
    }
}

/// Postgres SQLSTATEs that say "try again later": class 08 (connection exception), class 53
/// (insufficient resources: too many connections, out of memory, disk full), and the session
/// ended by the server (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now,
/// 57P05 idle session timeout).
fn postgres_transient(sqlstate: &str) -> bool {
    sqlstate.starts_with("08")
        || sqlstate.starts_with("53")
        || matches!(sqlstate, "57P01" | "57P02" | "57P03" | "57P05")
}

/// SQLite's (extended) result codes whose primary code is `SQLITE_BUSY` (5) or `SQLITE_LOCKED`
/// (6): another connection holds the lock longer than the busy timeout.
fn sqlite_transient(code: &str) -> bool {
    code.parse::<u32>()
        .is_ok_and(|code| matches!(code & 0xff, 5 | 6))
}

/// `work`'s outcome, or — once `limit` has passed — a timed-out I/O error (which [`classify`]
/// calls [`Failure::Unavailable`]) saying that `what` did not finish; `work` is dropped then,
/// and its connection with it (a pooled one goes back to the pool, whose guard replaces one
/// that no longer answers; a [`super::HeldConnection`]'s is closed).
/// For a writer that many callers wait behind (a group commit), so that a connection whose host
/// went silent holds up its own callers and not every one after them.
pub async fn within<T, E>(
    limit: std::time::Duration,
    what: &str,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E>
where
    E: From<sqlx::Error>,
{
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        let io = std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what} did not finish within {limit:?}; try again"),
        );
        Err(sqlx::Error::Io(io).into())
    })
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

    #[test]
    fn a_server_going_away_is_transient_and_a_broken_rule_is_not() {
        for code in [
            "08006", "08003", "53300", "53100", "57P01", "57P02", "57P03", "57P05",
        ] {
            assert!(postgres_transient(code), "{code}");
        }
        for code in [
            "23505", "22001", "42P01", "57014", "XX000", "0A000", "40P01",
        ] {
            assert!(!postgres_transient(code), "{code}");
        }
        // SQLITE_BUSY, SQLITE_BUSY_SNAPSHOT (5 | 2 << 8), SQLITE_LOCKED.
        for code in ["5", "517", "6"] {
            assert!(sqlite_transient(code), "{code}");
        }
        // SQLITE_CONSTRAINT_UNIQUE, SQLITE_CORRUPT, not a number.
        for code in ["2067", "11", "busy"] {
            assert!(!sqlite_transient(code), "{code}");
        }
    }

    #[tokio::test]
    async fn work_past_its_limit_is_dropped_and_unavailable() {
        let limit = std::time::Duration::from_millis(10);
        let gave_up: Result<(), sqlx::Error> =
            within(limit, "the test's write", std::future::pending()).await;
        let error = gave_up.expect_err("the pending work was given up");
        assert_eq!(classify(&error), Failure::Unavailable);
        assert!(
            error
                .to_string()
                .contains("the test's write did not finish within 10ms"),
            "{error}"
        );
        let done: Result<u8, sqlx::Error> = within(limit, "quick", async { Ok(7) }).await;
        assert_eq!(done.expect("quick work finishes"), 7);
    }
}
