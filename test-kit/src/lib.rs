//! What the workspace's tests share (crate `waybill-test-kit`, a dev-dependency only, never
//! published): throw-away databases on either backend ([`TestDatabase`], one test suite on both
//! with [`on_both_backends!`]), [`eventually`] for waiting on an effect, the sample data
//! ([`fixtures`]), a test PKI ([`tls`]), Postgres over TLS ([`postgres_tls`]), a TCP/TLS proxy
//! ([`proxy`]), child processes stopped by construction ([`process`]), skips that fail under
//! `WAYBILL_REQUIRE_ALL=1` ([`require!`]), a Kafka-protocol test broker ([`broker`]), and a
//! service's `/metrics` fetched over plain HTTP ([`metrics_http`]).
//!
//! Each test gets its own Postgres database (created from `WAYBILL_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`) or its own SQLite file, dropped when the
//! handle is dropped, so tests run in parallel without interfering.

pub mod broker;
pub mod fixtures;
pub mod metrics_http;
pub mod plans;
pub mod postgres_tls;
pub mod process;
pub mod proxy;
pub mod require;
pub mod tls;

use std::{future::Future, path::PathBuf, time::Duration};

use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use waybill_service_kit::db::{Database, PoolSettings};

/// The Postgres server tests use, as an admin URL to its maintenance database.
pub fn postgres_admin_url() -> String {
    std::env::var("WAYBILL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Which backend a test database is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    /// A fresh database on the test Postgres server.
    Postgres,
    /// A fresh SQLite file in the temp directory.
    Sqlite,
}

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDatabase {
    /// The URL services connect to.
    pub url: String,
    backend: TestBackend,
    name: String,
    shutdown: CancellationToken,
}

impl TestDatabase {
    /// Creates an empty database on `backend` (not yet migrated: [`TestDatabase::connect`] does).
    pub async fn create(backend: TestBackend) -> Self {
        let name = format!("waybill_test_{}", Uuid::new_v4().simple());
        let url = match backend {
            TestBackend::Postgres => {
                let admin = postgres_admin_url();
                let mut conn = PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("cannot reach test postgres at {admin}: {e}"));
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let _ = conn.close().await;
                replace_database(&admin, &name)
            }
            TestBackend::Sqlite => format!("sqlite://{}", sqlite_path(&name).display()),
        };
        Self {
            url,
            backend,
            name,
            shutdown: CancellationToken::new(),
        }
    }

    /// Connects (and migrates) with default pool settings.
    pub async fn connect(&self) -> Database {
        Database::connect(&self.url, &PoolSettings::default(), self.shutdown.clone())
            .await
            .expect("connect to test database")
    }

    /// The backend this database is on.
    pub fn backend(&self) -> TestBackend {
        self.backend
    }

    /// A plaintext [`proxy::Proxy`] in front of this Postgres database's server, and this
    /// database's URL through it: for tests of a host that stops answering
    /// ([`proxy::Proxy::stall`]).
    pub fn behind_proxy(&self) -> (proxy::Proxy, String) {
        use std::str::FromStr;
        assert_eq!(
            self.backend,
            TestBackend::Postgres,
            "a proxy is for Postgres"
        );
        let options = sqlx::postgres::PgConnectOptions::from_str(&self.url).expect("test url");
        let host = match options.get_host() {
            "localhost" => "127.0.0.1",
            other => other,
        };
        let server = format!("{host}:{}", options.get_port())
            .parse()
            .expect("the test server's address");
        let proxy = proxy::Proxy::start(server);
        let url = format!(
            "postgres://{}@{}/{}",
            options.get_username(),
            proxy.addr(),
            options.get_database().unwrap_or_default()
        );
        (proxy, url)
    }

    /// Pool settings that notice a silent host quickly (a ping answered within 500 ms), with
    /// room for a writer's connection beside the listener's: for tests through a proxy.
    pub fn quick_pool_settings() -> PoolSettings {
        PoolSettings {
            max_connections: 3,
            acquire_timeout: Duration::from_secs(20),
            answer_timeout: Duration::from_millis(500),
            ..PoolSettings::default()
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        self.shutdown.cancel();
        match self.backend {
            TestBackend::Sqlite => {
                let path = sqlite_path(&self.name);
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    let _ = std::fs::remove_file(file);
                }
            }
            TestBackend::Postgres => {
                let name = self.name.clone();
                // Drop cannot await; a short-lived runtime on another thread does the DROP.
                let dropped = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .ok()?;
                    runtime.block_on(async {
                        let mut conn = PgConnection::connect(&postgres_admin_url()).await.ok()?;
                        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .execute(&mut conn)
                            .await
                            .ok()?;
                        conn.close().await.ok()
                    })
                })
                .join();
                if !matches!(dropped, Ok(Some(()))) {
                    eprintln!("warning: could not drop test database {}", self.name);
                }
            }
        }
    }
}

fn sqlite_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{name}.db"))
}

/// `url` with its database name replaced by `database`.
fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    // postgres://user@host:port/dbname — the database is after the last '/' past the authority.
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// Declares each named `async fn name(backend: TestBackend)` of the calling module as two
/// tests, `postgres::name` and `sqlite::name`: one conformance suite, both backends.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::TestBackend::Postgres).await;
            })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::TestBackend::Sqlite).await;
            })*
        }
    };
}

/// What an [`eventually`] check returns: `bool` (done or not) or `Option<T>` (the value once
/// there).
pub trait Ready {
    /// What [`eventually`] returns once the check holds.
    type Value;
    /// `Some` once the check holds.
    fn ready(self) -> Option<Self::Value>;
}

impl Ready for bool {
    type Value = ();

    fn ready(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Ready for Option<T> {
    type Value = T;

    fn ready(self) -> Option<T> {
        self
    }
}

/// Polls `check` until it holds (`true`, or `Some(value)`: then returns the value); fails the
/// test, naming `what`, when `within` passes first. For waiting on an effect (a row written, a
/// message consumed), never on time logic: time-dependent decisions use the manual clock.
/// Deadlines should be generous (CI is slow): the wait ends as soon as the effect is there.
pub async fn eventually<R, F, Fut>(within: Duration, what: &str, mut check: F) -> R::Value
where
    R: Ready,
    F: FnMut() -> Fut,
    Fut: Future<Output = R>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await.ready() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            replace_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            replace_database("postgres://u@h/db?sslmode=disable", "t2"),
            "postgres://u@h/t2?sslmode=disable"
        );
        assert_eq!(
            replace_database("postgres://u@h", "t3"),
            "postgres://u@h/t3"
        );
    }
}
