//! [`InboxError`]: why the inbox could not be read or written, and whether trying again may
//! succeed.

/// Why the inbox could not be read or written. The SDK's own loops retry every inbox error
/// (the inbox is the truth: the partition waits for it); [`InboxError::is_retryable`] tells a
/// partner's program, calling the inbox through a [`StatusReporter`](crate::StatusReporter) or
/// its own tools, whether a retry can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboxError {
    /// The database could not be reached or was busy (a broken connection, a pool timeout, a
    /// locked SQLite file, a Postgres serialization failure, deadlock or shutdown).
    #[error("inbox unavailable: {0}")]
    Unavailable(String),
    /// The database refused the statement (a constraint, a permission, a schema that is not
    /// the SDK's): the same statement is refused again.
    #[error("inbox refused the statement: {0}")]
    Refused(String),
    /// A row holds a value this SDK cannot read (an unknown state, an instant out of range).
    #[error("inbox row unreadable: {0}")]
    Corrupt(String),
    /// The SQLite inbox's directory could not be created.
    #[error("inbox: cannot create directory {path}: {reason}")]
    Directory {
        /// The directory.
        path: String,
        /// What the file system said.
        reason: String,
    },
    /// The inbox was closed (its pool, or the writer every write goes through, has stopped:
    /// the connector or the runtime is shutting down).
    #[error("inbox closed: {0}")]
    Closed(&'static str),
}

impl InboxError {
    /// Whether the same operation may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<sqlx::Error> for InboxError {
    fn from(error: sqlx::Error) -> Self {
        let message = error.to_string();
        match &error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::WorkerCrashed => Self::Unavailable(message),
            sqlx::Error::PoolClosed => Self::Closed("its connection pool is closed"),
            sqlx::Error::Database(database) if transient(database.as_ref()) => {
                Self::Unavailable(message)
            }
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::TypeNotFound { .. } => Self::Corrupt(message),
            _ => Self::Refused(message),
        }
    }
}

/// Whether a database's error passes by itself: SQLite's busy and locked (primary codes 5 and
/// 6, whatever the extended code), Postgres's connection exceptions (class 08), transaction
/// rollbacks (40: serialization failure, deadlock), insufficient resources (53) and operator
/// intervention (57: shutdown, cancelled).
fn transient(error: &dyn sqlx::error::DatabaseError) -> bool {
    let Some(code) = error.code() else {
        return false;
    };
    if error
        .try_downcast_ref::<sqlx::sqlite::SqliteError>()
        .is_some()
    {
        return code
            .parse::<i32>()
            .is_ok_and(|code| matches!(code & 0xff, 5 | 6));
    }
    ["08", "40", "53", "57"]
        .iter()
        .any(|class| code.starts_with(class))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unavailable_database_is_worth_a_retry() {
        assert!(InboxError::from(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(InboxError::from(sqlx::Error::Io(std::io::Error::other("reset"))).is_retryable());
        assert_eq!(
            InboxError::from(sqlx::Error::PoolClosed),
            InboxError::Closed("its connection pool is closed")
        );
        assert!(!InboxError::from(sqlx::Error::RowNotFound).is_retryable());
        assert!(!InboxError::Corrupt("unknown order state \"x\"".into()).is_retryable());
        let refused = InboxError::Refused("permission denied".into());
        assert_eq!(
            refused.to_string(),
            "inbox refused the statement: permission denied"
        );
    }
}
