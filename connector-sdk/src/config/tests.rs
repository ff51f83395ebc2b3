//! Reading the connector's settings from variables, and the checks `build` makes.

use std::collections::HashMap;

use super::*;

const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIKwxdfQ/DTm2u3QXs+hnXqQPb0IKxYQrPgiuUdip1SSd
-----END PRIVATE KEY-----
";

fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| vars.get(name).cloned()
}

fn key_file() -> PathBuf {
    let path = std::env::temp_dir().join(format!("waybill-key-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&path, KEY_PEM).expect("write key");
    path
}

#[test]
fn reads_clusters_key_and_settings_from_variables() {
    let key = key_file();
    let key_path = key.to_string_lossy().into_owned();
    let builder = ConnectorBuilder::from_lookup(
        "local-express",
        lookup(&[
            ("WAYBILL_KAFKA_BROKERS", "eu=k1:9092,k2:9092; us=k3:9092"),
            ("WAYBILL_TOPIC_PREFIX", "prod.partner."),
            ("WAYBILL_KAFKA_SESSION_TIMEOUT_MS", "6000"),
            ("WAYBILL_KAFKA_FETCH_WAIT_MS", "5"),
            ("WAYBILL_PARTNER_KEY_FILE", &key_path),
            ("WAYBILL_PARTNER_KEY_ID", "lx-2026"),
            ("WAYBILL_TOKEN_AUDIENCE", "waybill-production"),
            ("WAYBILL_ADAPTER_TIMEOUT_MS", "1500"),
            (
                "WAYBILL_KAFKA_OPTIONS",
                "security.protocol=SASL_PLAINTEXT, sasl.username=lx",
            ),
        ]),
    )
    .expect("valid");
    assert_eq!(builder.partner_id, "local-express");
    assert_eq!(builder.clusters.len(), 2);
    assert_eq!(builder.clusters[0].name, "eu");
    assert_eq!(builder.clusters[0].bootstrap_servers, "k1:9092,k2:9092");
    assert_eq!(
        builder.clusters[1].topic_for("local-express"),
        "prod.partner.local-express"
    );
    assert_eq!(builder.clusters[1].session_timeout, Duration::from_secs(6));
    assert_eq!(builder.clusters[1].fetch_wait, Duration::from_millis(5));
    for cluster in &builder.clusters {
        assert_eq!(
            cluster.properties,
            [
                ("security.protocol".to_owned(), "SASL_PLAINTEXT".to_owned()),
                ("sasl.username".to_owned(), "lx".to_owned())
            ]
        );
    }
    assert_eq!(
        builder.signing_key.as_ref().map(ReportSigningKey::key_id),
        Some("lx-2026")
    );
    assert_eq!(builder.audience, "waybill-production");
    assert_eq!(builder.adapter_timeout, Duration::from_millis(1500));
    let _ = std::fs::remove_file(key);
}

#[test]
fn refuses_missing_keys_and_bad_numbers_with_a_clear_message() {
    let error = ConnectorBuilder::from_lookup("p", lookup(&[])).expect_err("no key");
    assert!(
        error.to_string().contains("WAYBILL_PARTNER_KEY_FILE"),
        "{error}"
    );
    let error = ConnectorBuilder::from_lookup("p", lookup(&[("WAYBILL_PARTNER_KEY_ID", "k")]))
        .expect_err("half a key");
    assert!(error.to_string().contains("both"), "{error}");
    let error =
        ConnectorBuilder::from_lookup("p", lookup(&[("WAYBILL_KAFKA_SESSION_TIMEOUT_MS", "soon")]))
            .expect_err("not a number");
    assert!(
        error
            .to_string()
            .contains("WAYBILL_KAFKA_SESSION_TIMEOUT_MS"),
        "{error}"
    );
    let error = ConnectorBuilder::from_lookup("p", lookup(&[("WAYBILL_KAFKA_OPTIONS", "sasl")]))
        .expect_err("not key=value");
    assert!(error.to_string().contains("key=value"), "{error}");
}

#[tokio::test]
async fn build_checks_the_settings() {
    let key = ReportSigningKey::from_key(waybill_token::SigningKey::from_bytes(&[1; 32]), "k")
        .expect("key");
    let error = ConnectorBuilder::new("acme")
        .signing_key(key.clone())
        .build()
        .await
        .expect_err("no cluster");
    assert!(error.to_string().contains("no cluster"), "{error}");
    let error = ConnectorBuilder::new("acme; drop")
        .signing_key(key.clone())
        .cluster(ClusterConfig::new("a", "k:9092"))
        .build()
        .await
        .expect_err("bad id");
    assert!(error.to_string().contains("partner id"), "{error}");
    let error = ConnectorBuilder::new("acme")
        .cluster(ClusterConfig::new("a", "k:9092"))
        .build()
        .await
        .expect_err("no key");
    assert!(error.to_string().contains("signing key"), "{error}");
    let error = ConnectorBuilder::new("acme")
        .signing_key(key)
        .cluster(ClusterConfig::new("a", "k:9092"))
        .cluster(ClusterConfig::new("a", "k2:9092"))
        .build()
        .await
        .expect_err("same name twice");
    assert!(error.to_string().contains("unique"), "{error}");
}
