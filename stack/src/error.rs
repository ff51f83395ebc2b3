//! What starting or running a stack can fail with.

use std::net::SocketAddr;

/// A service's own error, whatever its type.
pub type ServiceError = Box<dyn std::error::Error + Send + Sync>;

/// Why a stack could not start, or which of its services failed.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Connecting to the database, migrating it or seeding the catalog failed.
    #[error("cannot prepare the database")]
    Database(#[source] ServiceError),
    /// The embedded broker did not start, or refused a topic.
    #[error("the embedded broker: {0}")]
    Broker(String),
    /// The dispatcher refused its settings (its Kafka client could not be built).
    #[error("the dispatcher's settings")]
    Dispatcher(#[source] ServiceError),
    /// A service stopped with an error.
    #[error("{service} failed")]
    Failed {
        /// Which service.
        service: &'static str,
        /// Its error.
        #[source]
        source: ServiceError,
    },
    /// A service stopped without being asked to.
    #[error("{service} stopped by itself")]
    Stopped {
        /// Which service.
        service: &'static str,
    },
    /// A service's task panicked.
    #[error("{service} panicked")]
    Panicked {
        /// Which service.
        service: &'static str,
    },
}

impl StackError {
    /// The message with every cause after it (`a: b: c`), for a log line.
    pub fn chain(&self) -> String {
        let mut message = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(inner) = cause {
            message = format!("{message}: {inner}");
            cause = inner.source();
        }
        message
    }
}
