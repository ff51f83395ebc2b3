//! librdkafka's own log lines and errors, logged once per change instead of once per callback.
//!
//! While a broker cannot be reached, librdkafka reports it on every reconnect attempt: an
//! `AllBrokersDown` error and a connection-failure log line several times a second per client
//! (about 25 lines a second per partner), for as long as the outage lasts. [`ClientLog`] turns
//! that into one WARN line when the brokers go down (naming the failed connection before it)
//! and one INFO line when the client shows they are back ([`ClientLog::reachable`]: a
//! delivered message, a fetched record, a request that got its answer); every other repeated
//! error or log line, a failed connection to one broker among several too, is logged at most
//! once per [`REPEAT_INTERVAL`], with the count of those left out since.
//!
//! The lines are `tracing` events (target `librdkafka`, fields `client`, `code` or
//! `facility`), not `log` records: rdkafka's default context logs through the `log` crate,
//! whose bridge into `tracing` adds `log.file`, `log.line` and `log.module_path` fields naming
//! paths on the build machine to every JSON line.
//!
//! The decisions are [`LogGate`]'s, a pure state machine given the time of each callback, so it
//! is tested without waiting. [`LogContext`] is the client context that hands
//! librdkafka's callbacks over, shared by the dispatcher's clients and the connector SDK's.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tracing::{debug, error, info, warn};

/// The longest a repeated error or log line (same code, same facility) stays unlogged.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(60);

/// The error code librdkafka reports when no broker of a client can be reached.
const ALL_BROKERS_DOWN: &str = "AllBrokersDown";

/// Error codes of one failed broker connection.
const CONNECTION_CODES: [&str; 2] = ["BrokerTransportFailure", "Resolve"];

/// librdkafka's log facility of one failed broker connection (`Connect to … failed`).
const CONNECTION_FACILITY: &str = "FAIL";

/// How bad a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Needs someone (librdkafka's emergency to error levels, a fatal client error).
    Error,
    /// Worth a look (warnings, broker errors).
    Warn,
    /// For the record (notices, one failed connection).
    Info,
    /// Only when librdkafka's `debug` setting asked for it.
    Debug,
}

/// What to log for a callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// No broker can be reached any more (WARN).
    BrokersDown {
        /// What librdkafka said.
        reason: String,
        /// The failed connection that came before, if one did (it says why).
        last_failure: Option<String>,
    },
    /// A broker answered again (INFO).
    BrokersBack {
        /// How long they were down.
        down_for: Duration,
        /// Errors and log lines left out meanwhile.
        suppressed: u64,
    },
    /// An error, a log line or a failed connection.
    Report {
        /// How bad.
        severity: Severity,
        /// What reported it.
        source: Source,
        /// What librdkafka said.
        message: String,
        /// Lines like it left out since the last one was logged.
        suppressed: u64,
    },
}

/// What reported a [`Line::Report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An error callback, with librdkafka's error code name (e.g. `SaslAuthenticationFailed`).
    Error(String),
    /// A log callback, with librdkafka's facility (e.g. `CONFWARN`).
    Log(String),
    /// A failed broker connection, whether an error (`BrokerTransportFailure`, `Resolve`) or a
    /// log line (`FAIL`) said so: librdkafka says it both ways at once.
    Connection,
}

/// Since when the brokers are down, and what was left out meanwhile.
#[derive(Debug, Clone, Copy)]
struct Outage {
    since: Instant,
    suppressed: u64,
}

/// When a repeated line was last logged, and how many like it were left out since.
#[derive(Debug, Clone, Copy)]
struct Repeat {
    logged_at: Instant,
    suppressed: u64,
}

/// The decisions: which callback becomes a line. Pure: every call is given the time.
///
/// The brokers are down from `AllBrokersDown` until [`Self::reachable`]: one WARN line, then
/// nothing about connections. Before that, failed connections (of one broker among several,
/// or the first attempts of an outage) are INFO lines, at most one per interval, and the
/// latest one goes into the WARN line, which so says why.
#[derive(Debug)]
pub struct LogGate {
    interval: Duration,
    outage: Option<Outage>,
    last_failure: Option<String>,
    /// Keyed by error code, log facility or `connection`: a handful of entries at most.
    repeats: HashMap<String, Repeat>,
}

impl Default for LogGate {
    fn default() -> Self {
        Self::new(REPEAT_INTERVAL)
    }
}

impl LogGate {
    /// A gate that logs a repeated line at most once per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            outage: None,
            last_failure: None,
            repeats: HashMap::new(),
        }
    }

    /// Whether the brokers are down (since the last `AllBrokersDown`, until [`Self::reachable`]).
    pub fn is_down(&self) -> bool {
        self.outage.is_some()
    }

    /// An error callback: `code` is librdkafka's error code name (empty if it has none).
    pub fn error(&mut self, code: &str, message: &str, now: Instant) -> Option<Line> {
        if code == ALL_BROKERS_DOWN {
            return self.all_down(message, now);
        }
        if CONNECTION_CODES.contains(&code) {
            return self.connection_failed(message, now);
        }
        let severity = if code == "Fatal" {
            Severity::Error
        } else {
            Severity::Warn
        };
        let suppressed = self.throttle(&format!("error {code}"), now)?;
        Some(Line::Report {
            severity,
            source: Source::Error(code.to_owned()),
            message: message.to_owned(),
            suppressed,
        })
    }

    /// A log callback at syslog `level` (0 emergency … 7 debug) from `facility`.
    pub fn log(&mut self, level: i32, facility: &str, message: &str, now: Instant) -> Option<Line> {
        let severity = match level {
            // Debug lines exist only when librdkafka's `debug` setting asks for them: all of them.
            7.. => {
                return Some(Line::Report {
                    severity: Severity::Debug,
                    source: Source::Log(facility.to_owned()),
                    message: message.to_owned(),
                    suppressed: 0,
                });
            }
            _ if facility == CONNECTION_FACILITY => return self.connection_failed(message, now),
            ..=3 => Severity::Error,
            4 => Severity::Warn,
            _ => Severity::Info,
        };
        let suppressed = self.throttle(&format!("log {facility}"), now)?;
        Some(Line::Report {
            severity,
            source: Source::Log(facility.to_owned()),
            message: message.to_owned(),
            suppressed,
        })
    }

    /// The client got an answer from a broker: ends an outage (and its line says so).
    pub fn reachable(&mut self, now: Instant) -> Option<Line> {
        let outage = self.outage.take()?;
        // A later outage gets its own first lines.
        self.repeats.clear();
        self.last_failure = None;
        Some(Line::BrokersBack {
            down_for: now.saturating_duration_since(outage.since),
            suppressed: outage.suppressed,
        })
    }

    fn all_down(&mut self, reason: &str, now: Instant) -> Option<Line> {
        if let Some(outage) = &mut self.outage {
            outage.suppressed += 1;
            return None;
        }
        self.outage = Some(Outage {
            since: now,
            suppressed: 0,
        });
        Some(Line::BrokersDown {
            reason: reason.to_owned(),
            last_failure: self.last_failure.take(),
        })
    }

    fn connection_failed(&mut self, message: &str, now: Instant) -> Option<Line> {
        if let Some(outage) = &mut self.outage {
            outage.suppressed += 1;
            return None;
        }
        self.last_failure = Some(message.to_owned());
        let suppressed = self.throttle("connection", now)?;
        Some(Line::Report {
            severity: Severity::Info,
            source: Source::Connection,
            message: message.to_owned(),
            suppressed,
        })
    }

    /// `Some(left out since the last line)` when a line of this kind is due now.
    fn throttle(&mut self, key: &str, now: Instant) -> Option<u64> {
        if let Some(repeat) = self.repeats.get_mut(key) {
            if now.saturating_duration_since(repeat.logged_at) < self.interval {
                repeat.suppressed += 1;
                return None;
            }
            repeat.logged_at = now;
            return Some(std::mem::take(&mut repeat.suppressed));
        }
        self.repeats.insert(
            key.to_owned(),
            Repeat {
                logged_at: now,
                suppressed: 0,
            },
        );
        Some(0)
    }
}

/// One Kafka client's (or several clients' of one cluster) librdkafka lines: a [`LogGate`] on
/// the system's time, writing what it lets through as `tracing` events. Cheap to clone; clones
/// share the gate.
#[derive(Clone)]
pub struct ClientLog {
    client: Arc<str>,
    gate: Arc<Mutex<LogGate>>,
    /// Mirrors the gate's outage, so [`Self::reachable`] on every delivered message costs a load.
    down: Arc<AtomicBool>,
}

impl fmt::Debug for ClientLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientLog")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl ClientLog {
    /// The lines of `client` (named in each line's `client` field).
    pub fn new(client: impl Into<String>) -> Self {
        Self {
            client: Arc::from(client.into()),
            gate: Arc::new(Mutex::new(LogGate::default())),
            down: Arc::new(AtomicBool::new(false)),
        }
    }

    /// librdkafka's log callback: `level` is its syslog level.
    pub fn log(&self, level: i32, facility: &str, message: &str) {
        let line = self.with_gate(|gate| gate.log(level, facility, message, Instant::now()));
        self.write(line);
    }

    /// librdkafka's error callback (or an error a poll returned): `code` is the error's code,
    /// if it has one; `reason` may be empty.
    pub fn error(&self, code: Option<impl fmt::Debug>, error: &impl fmt::Display, reason: &str) {
        let code = code.map(|code| format!("{code:?}")).unwrap_or_default();
        let message = if reason.is_empty() {
            error.to_string()
        } else {
            format!("{error}: {reason}")
        };
        let line = self.with_gate(|gate| gate.error(&code, &message, Instant::now()));
        self.write(line);
    }

    /// The client got an answer from a broker.
    pub fn reachable(&self) {
        if self.down.load(Ordering::Relaxed) {
            let line = self.with_gate(|gate| gate.reachable(Instant::now()));
            self.write(line);
        }
    }

    fn with_gate(&self, decide: impl FnOnce(&mut LogGate) -> Option<Line>) -> Option<Line> {
        let mut gate = self
            .gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let line = decide(&mut gate);
        self.down.store(gate.is_down(), Ordering::Relaxed);
        line
    }

    fn write(&self, line: Option<Line>) {
        let client = &*self.client;
        match line {
            None => {}
            Some(Line::BrokersDown {
                reason,
                last_failure,
            }) => warn!(
                target: "librdkafka",
                client,
                reason,
                remedy = remedy(last_failure.as_deref().unwrap_or(&reason)),
                last_failure,
                "kafka brokers down: none can be reached; retrying quietly, logged again once one answers"
            ),
            Some(Line::BrokersBack {
                down_for,
                suppressed,
            }) => info!(
                target: "librdkafka",
                client,
                down_for_ms = down_for.as_millis() as u64,
                suppressed,
                "kafka brokers back"
            ),
            Some(Line::Report {
                severity,
                source,
                message,
                suppressed,
            }) => {
                let (code, facility) = match &source {
                    Source::Error(code) => (Some(code.as_str()), None),
                    Source::Log(facility) => (None, Some(facility.as_str())),
                    Source::Connection => (None, None),
                };
                match severity {
                    Severity::Error => {
                        error!(target: "librdkafka", client, code, facility, suppressed, "{message}")
                    }
                    Severity::Warn => {
                        warn!(target: "librdkafka", client, code, facility, suppressed, "{message}")
                    }
                    Severity::Info => {
                        info!(target: "librdkafka", client, code, facility, suppressed, "{message}")
                    }
                    Severity::Debug => debug!(target: "librdkafka", client, facility, "{message}"),
                }
            }
        }
    }
}

/// The librdkafka client context that logs through a [`ClientLog`]: every
/// Kafka client of the dispatcher and of the connector SDK is created with it, or forwards its
/// `log` and `error` callbacks the same way (the SDK's consumer, whose context has callbacks of
/// its own). rdkafka's default context would log each callback through the `log` crate.
#[derive(Debug, Clone)]
pub struct LogContext {
    log: ClientLog,
}

impl LogContext {
    /// Lines of `client` (its name in each line).
    pub fn new(client: impl Into<String>) -> Self {
        Self::from(ClientLog::new(client))
    }

    /// Where the client's owner reports that a broker answered (ends an outage's quiet).
    pub fn log(&self) -> &ClientLog {
        &self.log
    }
}

impl From<ClientLog> for LogContext {
    /// A context sharing `log` (and so its outages) with other clients of the same brokers.
    fn from(log: ClientLog) -> Self {
        Self { log }
    }
}

impl rdkafka::ClientContext for LogContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.log.log(level as i32, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.log.error(error.rdkafka_error_code(), &error, reason);
    }
}

/// The setting to check for a connection failure whose cause is known; "" otherwise.
/// librdkafka names the setting itself only sometimes (its wording depends on what else is in
/// OpenSSL's error queue: "… verify that ssl.ca.location is correctly configured", or just
/// "certificate verify failed").
fn remedy(failure: &str) -> &'static str {
    if failure.contains("certificate verify failed") {
        "the broker's certificate is not signed by a CA this client trusts: set ssl.ca.location \
         to the CA that signed it (--kafka-option ssl.ca.location=ca.pem)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn report(severity: Severity, source: Source, message: &str, suppressed: u64) -> Option<Line> {
        Some(Line::Report {
            severity,
            source,
            message: message.to_owned(),
            suppressed,
        })
    }

    #[test]
    fn an_outage_is_one_line_down_and_one_line_back() {
        let start = Instant::now();
        let mut gate = LogGate::default();
        let refused = "Connect to ipv4#127.0.0.1:1 failed: Connection refused";
        // The first failed connection comes before the error (twice: as a log line and as an
        // error): one INFO line.
        assert_eq!(
            gate.log(3, "FAIL", refused, start),
            report(Severity::Info, Source::Connection, refused, 0)
        );
        assert_eq!(gate.error("BrokerTransportFailure", refused, start), None);
        assert_eq!(
            gate.error("AllBrokersDown", "1/1 brokers are down", start),
            Some(Line::BrokersDown {
                reason: "1/1 brokers are down".into(),
                last_failure: Some(refused.into()),
            })
        );
        // 25 a second for a minute and a half: nothing.
        for tick in 1..=2_250u32 {
            let now = start + SECOND * tick / 25;
            assert_eq!(
                gate.error("AllBrokersDown", "1/1 brokers are down", now),
                None
            );
            assert_eq!(gate.error("BrokerTransportFailure", refused, now), None);
            assert_eq!(gate.log(3, "FAIL", refused, now), None);
        }
        assert!(gate.is_down());
        assert_eq!(
            gate.reachable(start + SECOND * 91),
            Some(Line::BrokersBack {
                down_for: SECOND * 91,
                suppressed: 3 * 2_250
            })
        );
        assert!(!gate.is_down());
        assert_eq!(gate.reachable(start + SECOND * 92), None, "back only once");
        // The next outage is told again, its first failed connection too.
        assert!(gate.log(3, "FAIL", refused, start + SECOND * 93).is_some());
        assert!(matches!(
            gate.error("AllBrokersDown", "down", start + SECOND * 93),
            Some(Line::BrokersDown { .. })
        ));
    }

    #[test]
    fn one_unreachable_broker_among_several_is_told_once_per_interval() {
        let start = Instant::now();
        let mut gate = LogGate::new(SECOND * 60);
        let refused = "Connect to ipv4#10.0.0.3:9092 failed: Connection refused";
        assert!(gate.error("Resolve", "cannot resolve b2", start).is_some());
        for second in 1..60 {
            let now = start + SECOND * second;
            assert_eq!(gate.log(3, "FAIL", refused, now), None);
            assert_eq!(gate.error("BrokerTransportFailure", refused, now), None);
            // The other brokers answer all along: that ends no outage, and logs nothing.
            assert_eq!(gate.reachable(now), None);
        }
        assert_eq!(
            gate.log(3, "FAIL", refused, start + SECOND * 60),
            report(Severity::Info, Source::Connection, refused, 59 * 2)
        );
        assert!(!gate.is_down());
    }

    #[test]
    fn other_repeats_are_logged_once_per_interval_with_a_count() {
        let start = Instant::now();
        let mut gate = LogGate::new(SECOND * 60);
        let denied = "SASL authentication error: Authentication failed";
        let first = gate.error("SaslAuthenticationFailed", denied, start);
        let error = Source::Error("SaslAuthenticationFailed".into());
        assert_eq!(first, report(Severity::Warn, error.clone(), denied, 0));
        for second in 1..60 {
            assert_eq!(
                gate.error("SaslAuthenticationFailed", denied, start + SECOND * second),
                None
            );
        }
        // A different code is its own line.
        assert!(gate.error("Fatal", "fenced", start + SECOND).is_some());
        assert_eq!(
            gate.error("SaslAuthenticationFailed", denied, start + SECOND * 60),
            report(Severity::Warn, error, denied, 59)
        );
        // Log lines by facility, at their own level.
        let log = Source::Log("CONFWARN".into());
        assert_eq!(
            gate.log(4, "CONFWARN", "ignored", start),
            report(Severity::Warn, log.clone(), "ignored", 0)
        );
        assert_eq!(gate.log(4, "CONFWARN", "ignored", start + SECOND), None);
        assert_eq!(
            gate.log(2, "ERROR", "bad", start),
            report(Severity::Error, Source::Log("ERROR".into()), "bad", 0)
        );
    }

    #[test]
    fn fatal_errors_are_errors_and_debug_lines_all_pass() {
        let now = Instant::now();
        let mut gate = LogGate::default();
        assert!(matches!(
            gate.error("Fatal", "producer fenced", now),
            Some(Line::Report {
                severity: Severity::Error,
                ..
            })
        ));
        for _ in 0..3 {
            assert!(matches!(
                gate.log(7, "BROKER", "state UP", now),
                Some(Line::Report {
                    severity: Severity::Debug,
                    ..
                })
            ));
        }
    }

    #[test]
    fn a_client_log_follows_its_gate() {
        let log = ClientLog::new("test");
        log.reachable();
        assert!(!log.down.load(Ordering::Relaxed));
        log.error(
            Some(format_args!("AllBrokersDown")),
            &"Local: All broker connections are down",
            "",
        );
        assert!(log.down.load(Ordering::Relaxed));
        log.reachable();
        assert!(!log.down.load(Ordering::Relaxed));
    }

    #[test]
    fn a_certificate_the_client_cannot_verify_names_the_setting_to_fix() {
        let failure = "ssl://127.0.0.1:9093/bootstrap: error:0A000086:SSL routines::certificate \
                       verify failed (after 14ms in state SSL_HANDSHAKE)";
        assert!(remedy(failure).contains("ssl.ca.location"));
        assert_eq!(
            remedy("Connect to ipv4#127.0.0.1:9092 failed: Connection refused"),
            ""
        );
    }
}
