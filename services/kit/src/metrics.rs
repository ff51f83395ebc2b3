//! Metrics in the Prometheus text exposition format (OpenMetrics 1.0, which Prometheus and
//! every compatible scraper read), served on `GET /metrics` of a plain HTTP listener. A
//! scraper whose `Accept` header asks for `text/plain` and not OpenMetrics (older scrapers,
//! `promtool check metrics`) gets the same series in the classic text format 0.0.4 instead
//! ([`classic_text`]), as Prometheus' own client libraries negotiate.
//!
//! Each service registers its series in a [`Metrics`] handed to it (no process-wide registry,
//! so several services in one process — `waybill dev`, tests — each own their series, or share
//! one handle on purpose). Figures only the database knows (backlogs, ages) are read at scrape
//! time by refreshers registered with [`Metrics::on_scrape`], each bounded by
//! [`REFRESH_TIMEOUT`]; a slow or failing refresher leaves its last values.
//!
//! The listener is off unless `--metrics-listen` / `WAYBILL_METRICS_LISTEN` names an address
//! (`waybill dev` turns it on). It serves figures, never data or credentials, but has no TLS and
//! no caller check: bind it to an interface only the scraper reaches.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::{
    Router,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use futures::future::BoxFuture;
use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of the classic text format, for scrapers that ask for it.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long one scrape waits for each refresher before answering with the last values.
pub const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);

type Refresher = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// A registry of series and the refreshers that run before each scrape. Cheap to clone; clones
/// share the registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    refreshers: Arc<Mutex<Vec<Refresher>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry holding the process's own series (`process_*`, read from `/proc/self` at
    /// each scrape) and nothing else yet.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(crate::process_metrics::ProcessCollector));
        Self {
            registry: Arc::new(Mutex::new(registry)),
            refreshers: Arc::default(),
        }
    }

    /// Registers series: `register` gets the registry under `prefix` (e.g. `waybill_dispatcher`;
    /// every name it registers becomes `prefix_name`).
    pub fn register(&self, prefix: &str, register: impl FnOnce(&mut Registry)) {
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        register(registry.sub_registry_with_prefix(prefix));
    }

    /// Runs `refresh` before every scrape (e.g. to read a backlog from the database into gauges).
    pub fn on_scrape(&self, refresh: impl Fn() -> BoxFuture<'static, ()> + Send + Sync + 'static) {
        self.refreshers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(refresh));
    }

    /// Runs the refreshers, then encodes every series.
    pub async fn render(&self) -> Result<String, std::fmt::Error> {
        let refreshers: Vec<Refresher> = self
            .refreshers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let refreshing = refreshers.iter().map(|refresh| async move {
            if tokio::time::timeout(REFRESH_TIMEOUT, refresh())
                .await
                .is_err()
            {
                warn!(
                    timeout_ms = REFRESH_TIMEOUT.as_millis() as u64,
                    "a metrics refresher timed out; its series keep their last values"
                );
            }
        });
        futures::future::join_all(refreshing).await;
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        encode(&mut text, &registry)?;
        Ok(text)
    }
}

/// Where metrics are served, if anywhere (flags with environment fallbacks, for every service).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics on `http://ADDR/metrics` (off when unset). Plain HTTP: bind it
    /// to an interface only the scraper reaches.
    #[arg(long, env = "WAYBILL_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

impl MetricsArgs {
    /// Binds the metrics listener if one is configured (a taken port fails here, before the
    /// service starts) and serves `metrics` on it until `shutdown`.
    pub async fn start(
        &self,
        metrics: &Metrics,
        shutdown: CancellationToken,
    ) -> std::io::Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>> {
        let Some(addr) = self.metrics_listen else {
            return Ok(None);
        };
        let listener = TcpListener::bind(addr).await?;
        Ok(Some(tokio::spawn(serve(
            listener,
            metrics.clone(),
            shutdown,
        ))))
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics on http://{addr}/metrics");
    }
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn scrape(
    axum::extract::State(metrics): axum::extract::State<Metrics>,
    headers: HeaderMap,
) -> Response {
    let classic = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .fold((false, false), |(plain, open), accept| {
            (
                plain || accept.contains("text/plain"),
                open || accept.contains("application/openmetrics-text"),
            )
        });
    match metrics.render().await {
        Ok(text) if classic == (true, false) => (
            [(header::CONTENT_TYPE, CLASSIC_CONTENT_TYPE)],
            classic_text(&text),
        )
            .into_response(),
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            warn!(%error, "cannot encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response()
        }
    }
}

/// The OpenMetrics exposition `open_metrics` (as [`Metrics::render`] writes it) in the classic
/// text format 0.0.4: a counter's family is named by its samples (`x_total`), an info series is
/// a gauge `x_info`, `unknown` is `untyped`; `# UNIT` and `# EOF` lines and exemplars, which
/// the classic format has not, are left out. Samples are as they were.
pub fn classic_text(open_metrics: &str) -> String {
    // HELP comes before TYPE: the family's type, by its OpenMetrics name, first.
    let types: std::collections::HashMap<&str, &str> = open_metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .collect();
    let renamed = |name: &str| match types.get(name) {
        Some(&"counter") => format!("{name}_total"),
        Some(&"info") => format!("{name}_info"),
        _ => name.to_owned(),
    };
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some((name, help)) = line
            .strip_prefix("# HELP ")
            .and_then(|rest| rest.split_once(' '))
        {
            out.push_str(&format!("# HELP {} {help}\n", renamed(name)));
        } else if let Some((name, kind)) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.split_once(' '))
        {
            let kind = match kind {
                "info" => "gauge",
                "unknown" => "untyped",
                other => other,
            };
            out.push_str(&format!("# TYPE {} {kind}\n", renamed(name)));
        } else {
            // An exemplar follows the value after " # ".
            out.push_str(line.split_once(" # ").map_or(line, |(sample, _)| sample));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    };

    use clap::Parser as _;
    use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

    use super::*;

    #[tokio::test]
    async fn refreshers_run_before_each_scrape_and_series_carry_their_prefix() {
        let metrics = Metrics::new();
        let counter = Counter::<u64>::default();
        let gauge = Gauge::<i64, AtomicI64>::default();
        metrics.register("waybill_test", |registry| {
            registry.register("things", "Things done", counter.clone());
            registry.register("backlog", "Rows waiting", gauge.clone());
        });
        let reads = Arc::new(AtomicI64::new(0));
        metrics.on_scrape({
            let (gauge, reads) = (gauge.clone(), reads.clone());
            move || {
                let (gauge, reads) = (gauge.clone(), reads.clone());
                Box::pin(async move {
                    gauge.set(reads.fetch_add(1, Ordering::SeqCst) + 10);
                })
            }
        });
        counter.inc_by(3);
        let first = metrics.render().await.unwrap();
        assert!(first.contains("waybill_test_things_total 3\n"), "{first}");
        assert!(first.contains("waybill_test_backlog 10\n"), "{first}");
        assert!(first.ends_with("# EOF\n"), "{first}");
        let second = metrics.render().await.unwrap();
        assert!(second.contains("waybill_test_backlog 11\n"), "{second}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_refresher_does_not_stop_the_scrape() {
        let metrics = Metrics::new();
        let gauge = Gauge::<i64, AtomicI64>::default();
        gauge.set(7);
        metrics.register("waybill_test", |registry| {
            registry.register("backlog", "Rows waiting", gauge.clone());
        });
        metrics.on_scrape(|| Box::pin(futures::future::pending()));
        let text = metrics.render().await.unwrap();
        assert!(
            text.contains("waybill_test_backlog 7\n"),
            "last value: {text}"
        );
    }

    #[test]
    fn the_classic_format_names_counters_and_info_by_their_samples() {
        let open_metrics = "# HELP w_things Things done.\n# TYPE w_things counter\n\
                            w_things_total 3\n# HELP w_build The running build.\n\
                            # TYPE w_build info\nw_build_info{version=\"1\"} 1\n\
                            # HELP w_age Age.\n# TYPE w_age gauge\n# UNIT w_age seconds\n\
                            w_age_seconds 2.5\n# EOF\n";
        assert_eq!(
            classic_text(open_metrics),
            "# HELP w_things_total Things done.\n# TYPE w_things_total counter\n\
             w_things_total 3\n# HELP w_build_info The running build.\n\
             # TYPE w_build_info gauge\nw_build_info{version=\"1\"} 1\n\
             # HELP w_age Age.\n# TYPE w_age gauge\nw_age_seconds 2.5\n"
        );
    }

    #[tokio::test]
    async fn a_scraper_asking_for_text_plain_gets_the_classic_format() {
        let metrics = Metrics::new();
        let counter = Counter::<u64>::default();
        metrics.register("waybill_test", |registry| {
            registry.register("things", "Things done", counter.clone());
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, metrics, stop.clone()));
        for (accept, content_type, line) in [
            (None, CONTENT_TYPE, "# TYPE waybill_test_things counter"),
            (
                Some("text/plain;version=0.0.4;q=0.9,*/*;q=0.1"),
                CLASSIC_CONTENT_TYPE,
                "# TYPE waybill_test_things_total counter",
            ),
            (
                Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
                CONTENT_TYPE,
                "# TYPE waybill_test_things counter",
            ),
        ] {
            let (head, body) = get(addr, accept).await;
            assert!(
                head.to_ascii_lowercase()
                    .contains(&format!("content-type: {content_type}")),
                "{accept:?}: {head}"
            );
            assert!(body.contains(line), "{accept:?}: {body}");
        }
        stop.cancel();
        server.await.unwrap().unwrap();
    }

    /// `GET /metrics` over HTTP/1.1 with `accept`: the response's head and body.
    async fn get(addr: std::net::SocketAddr, accept: Option<&str>) -> (String, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
        stream
            .write_all(
                format!(
                    "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (head.to_owned(), body.to_owned())
    }

    #[derive(Debug, clap::Parser)]
    struct Args {
        #[command(flatten)]
        metrics: MetricsArgs,
    }

    #[tokio::test]
    async fn off_unless_an_address_is_given() {
        let off = Args::try_parse_from(["test"]).unwrap();
        assert_eq!(off.metrics.metrics_listen, None);
        let started = off
            .metrics
            .start(&Metrics::new(), CancellationToken::new())
            .await
            .unwrap();
        assert!(started.is_none());
        let on = Args::try_parse_from(["test", "--metrics-listen", "127.0.0.1:0"]).unwrap();
        assert_eq!(
            on.metrics.metrics_listen,
            Some("127.0.0.1:0".parse().unwrap())
        );
    }
}
