//! What this build's librdkafka can do, and refusing a Kafka client setting it cannot honour
//! before a service starts (the dispatcher and the connector SDK).
//!
//! librdkafka checks most settings only when a client is created (a SASL mechanism without a
//! provider, TLS without OpenSSL, a CA file it cannot read), and a service creates its clients
//! after it has started listening. [`check_client_config`] creates a client from the settings
//! and drops it at once, so that such a setting stops start-up with a message that names what
//! the build supports.

use rdkafka::{ClientConfig, producer::BaseProducer};

/// A Kafka client setting this build cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kafka settings refused: {reason}; {}", supported())]
pub struct UnsupportedKafkaSetting {
    /// What librdkafka said.
    pub reason: String,
}

/// Creates (and drops) a client from `config`: `Err` names the setting librdkafka refused
/// and what this build supports. Connects to nothing it waits for: an unreachable broker is
/// not an error here.
pub fn check_client_config(config: &ClientConfig) -> Result<(), UnsupportedKafkaSetting> {
    // librdkafka says "ssl.ca.location failed: … system lib" for a file it cannot read, without
    // the path: name it. (`probe` is ssl.ca.location's "find the system's CA bundle".)
    let settings = config.config_map();
    let files = settings
        .iter()
        .filter(|(key, value)| key.ends_with(".location") && **value != "probe");
    for (key, file) in files {
        if let Err(error) = std::fs::File::open(file) {
            return Err(UnsupportedKafkaSetting {
                reason: format!("{key}: cannot read {file}: {error}"),
            });
        }
    }
    match config.create::<BaseProducer>() {
        Ok(client) => {
            drop(client);
            Ok(())
        }
        Err(error) => Err(UnsupportedKafkaSetting {
            reason: error.to_string(),
        }),
    }
}

/// librdkafka's own list of what it was built with (`builtin.features`), e.g.
/// `gzip,snappy,ssl,sasl,regex,lz4,sasl_plain,sasl_scram,plugins,sasl_oauthbearer`.
pub fn builtin_features() -> Vec<String> {
    ClientConfig::new()
        .create_native_config()
        .and_then(|native| native.get("builtin.features"))
        .map(|features| features.split(',').map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The security protocols and SASL mechanisms this build supports, read from librdkafka.
pub fn supported() -> String {
    let features = builtin_features();
    let has = |feature: &str| features.iter().any(|f| f == feature);
    let mut protocols = vec!["PLAINTEXT"];
    if has("ssl") {
        protocols.push("SSL");
    }
    let mut mechanisms = Vec::new();
    if has("sasl_plain") {
        mechanisms.push("PLAIN");
    }
    if has("sasl_scram") {
        mechanisms.extend(["SCRAM-SHA-256", "SCRAM-SHA-512"]);
    }
    if has("sasl_oauthbearer") {
        mechanisms.push(if has("oidc") {
            "OAUTHBEARER (with sasl.oauthbearer.method=oidc)"
        } else {
            "OAUTHBEARER (without sasl.oauthbearer.method=oidc)"
        });
    }
    if has("sasl_gssapi") {
        mechanisms.push("GSSAPI");
    }
    if !mechanisms.is_empty() {
        protocols.push("SASL_PLAINTEXT");
        if has("ssl") {
            protocols.push("SASL_SSL");
        }
    }
    let (_, version) = rdkafka::util::get_rdkafka_version();
    format!(
        "this build (librdkafka {version}) supports security.protocol {} and sasl.mechanism {}",
        protocols.join(", "),
        if mechanisms.is_empty() {
            "none".to_owned()
        } else {
            mechanisms.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(settings: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        // Nothing listens here: creating a client must not need a broker.
        config.set("bootstrap.servers", "127.0.0.1:9");
        for (key, value) in settings {
            config.set(*key, *value);
        }
        config
    }

    #[test]
    fn the_build_has_tls_and_every_sasl_mechanism_managed_kafka_asks_for() {
        let features = builtin_features();
        for feature in ["ssl", "sasl_plain", "sasl_scram", "sasl_oauthbearer"] {
            assert!(
                features.iter().any(|f| f == feature),
                "{feature} missing: {features:?}"
            );
        }
        let supported = supported();
        assert!(supported.contains("SASL_SSL"), "{supported}");
        assert!(supported.contains("SCRAM-SHA-512"), "{supported}");
    }

    #[test]
    fn tls_with_scram_or_plain_is_accepted() {
        for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] {
            check_client_config(&config(&[
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", mechanism),
                ("sasl.username", "waybill"),
                ("sasl.password", "secret"),
            ]))
            .unwrap_or_else(|e| panic!("{mechanism}: {e}"));
        }
        check_client_config(&config(&[("security.protocol", "SSL")])).expect("SSL");
    }

    #[test]
    fn what_the_build_cannot_do_is_refused_naming_what_it_can() {
        // GSSAPI (Kerberos) needs Cyrus SASL, which this build leaves out.
        let error = check_client_config(&config(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "GSSAPI"),
        ]))
        .expect_err("GSSAPI");
        let message = error.to_string();
        assert!(message.contains("GSSAPI"), "{message}");
        assert!(message.contains("SCRAM-SHA-256"), "{message}");
        // A CA file that does not exist is refused at start-up, not at the first connection.
        let error = check_client_config(&config(&[
            ("security.protocol", "SSL"),
            ("ssl.ca.location", "/nonexistent/ca.pem"),
        ]))
        .expect_err("missing CA");
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
        let error = check_client_config(&config(&[("security.protocol", "TLS")])).expect_err("TLS");
        assert!(error.to_string().contains("security.protocol"), "{error}");
    }
}
