//! Postgres over TLS, as managed Postgres requires it: `sslmode=verify-full` against a server
//! whose certificate the test's CA issued, a client certificate instead of a password, and the
//! refusals: a server certificate from another CA, and no TLS at all where the server demands
//! it. The server is a private cluster of the test's own ([`TlsPostgres`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use tokio_util::sync::CancellationToken;
use waybill_service_kit::db::{Database, DbError, PoolSettings};
use waybill_test_kit::{
    TestBackend, TestDatabase,
    postgres_tls::{CERT_ROLE, TlsPostgres},
    tls::TestPki,
};

async fn connect(url: &str) -> Result<Database, DbError> {
    Database::connect(url, &PoolSettings::default(), CancellationToken::new()).await
}

#[tokio::test]
async fn verify_full_connects_to_the_right_server_and_refuses_another_ca() {
    let pki = TestPki::new();
    let server = TlsPostgres::start(&pki);
    let ca = pki.dir.join("ca.pem");

    let url = server.url(
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    let db = connect(&url).await.expect("verify-full with the right CA");
    assert_eq!(
        db.location(),
        format!(
            "postgres localhost:{}/postgres (sslmode verify-full)",
            server.port
        )
    );
    assert!(db.schema_version() > 0);
    db.close().await;
    // Every session the services opened was encrypted (the server also refuses any other).
    assert_eq!(
        server.psql("SELECT count(*) FROM pg_stat_ssl WHERE NOT ssl AND pid IN (SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND client_addr IS NOT NULL)"),
        "0"
    );

    // A server certificate from a CA the client does not trust: refused, naming why.
    let other = TestPki::new();
    let url = server.url(
        "postgres",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            other.dir.join("ca.pem").display()
        ),
    );
    let error = connect(&url).await.expect_err("a server from another CA");
    let message = error.to_string();
    assert!(matches!(error, DbError::Connect(_)), "{message}");
    assert!(
        message.contains("certificate") || message.contains("UnknownIssuer"),
        "{message}"
    );

    // verify-ca checks the issuer but not the name: the right CA is enough.
    let url = server.url(
        "postgres",
        &format!("sslmode=verify-ca&sslrootcert={}", ca.display()),
    );
    connect(&url).await.expect("verify-ca").close().await;

    // Without TLS the server (hostnossl … reject) refuses: TLS really is what carried the rest.
    let url = server.url("postgres", "sslmode=disable");
    let error = connect(&url).await.expect_err("plaintext");
    assert!(error.to_string().contains("no encryption"), "{error}");
}

#[tokio::test]
async fn a_client_certificate_logs_in_without_a_password() {
    let pki = TestPki::new();
    let server = TlsPostgres::start(&pki);
    let url = server.url(
        CERT_ROLE,
        &format!(
            "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            pki.dir.join("ca.pem").display(),
            pki.dir.join("client.pem").display(),
            pki.dir.join("client.key").display(),
        ),
    );
    connect(&url)
        .await
        .expect("certificate login")
        .close()
        .await;
    // The same role without the certificate is refused by the server's `cert` rule.
    let url = server.url(
        CERT_ROLE,
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            pki.dir.join("ca.pem").display()
        ),
    );
    let error = connect(&url).await.expect_err("no client certificate");
    assert!(error.to_string().contains("certificate"), "{error}");
}

#[tokio::test]
async fn sslmode_require_works_against_the_machines_server() {
    // The test server of the suite runs with ssl = on (the machine's default set-up).
    let database = TestDatabase::create(TestBackend::Postgres).await;
    let separator = if database.url.contains('?') { '&' } else { '?' };
    let db = connect(&format!("{}{separator}sslmode=require", database.url))
        .await
        .expect("sslmode=require");
    assert!(
        db.location().ends_with("(sslmode require)"),
        "{}",
        db.location()
    );
    db.close().await;
}
