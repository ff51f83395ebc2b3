//! Structured logs and OpenTelemetry traces, set up once per process by the binary.
//!
//! Logs go to stderr, human-readable or JSON (`WAYBILL_LOG_FORMAT=json`), filtered by
//! `RUST_LOG` (default `info`). Every span is also an OpenTelemetry span, so trace ids exist
//! and propagate even when nothing is exported; spans are exported over OTLP/gRPC only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set. The W3C trace context travels in gRPC metadata, in the
//! dispatch row and in Kafka headers; the helpers here read and write it.
//!
//! Libraries (the connector SDK) never call [`init`]: installing global subscribers is the
//! application's choice.

use std::{
    collections::HashMap,
    io::IsTerminal,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tonic::codegen::http::HeaderMap;
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter,
    fmt::{
        FmtContext, FormatEvent, FormatFields, MakeWriter,
        format::{Format, Json, JsonFields, Writer},
    },
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event, for log pipelines.
    Json,
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built (bad endpoint).
    #[error("cannot set up the OTLP trace exporter: {0}")]
    Exporter(String),
    /// A global subscriber was already installed.
    #[error("cannot install the log subscriber: {0}")]
    Subscriber(String),
}

/// Whether [`init_with`] set up an exporter in this process.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans leave this process. Hot paths that open a span per item only to pass its
/// context on (the relay, per order) skip it when they do not: an unexported span is a parent
/// no one can see, and creating it costs more than the work it would describe.
pub fn spans_exported() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Flushes and shuts down trace export when the process ends.
#[must_use = "dropping the guard shuts telemetry down at once"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl TelemetryGuard {
    /// Exports what is buffered now (blocks until the exporter answers).
    pub fn flush(&self) {
        if let Err(error) = self.provider.force_flush() {
            eprintln!("telemetry flush: {error}");
        }
    }

    /// Exports what is buffered, waiting at most `timeout`.
    pub fn shutdown(self, timeout: Duration) {
        if let Err(error) = self.provider.shutdown_with_timeout(timeout) {
            eprintln!("telemetry shutdown: {error}");
        }
    }
}

/// Installs the global log subscriber, tracer provider and W3C propagator. Spans are exported
/// over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the exporter reads it and the
/// other standard `OTEL_EXPORTER_OTLP_*` variables). Call it inside the Tokio runtime: the
/// exporter's gRPC channel runs on it.
pub fn init(service_name: &str, format: LogFormat) -> Result<TelemetryGuard, TelemetryError> {
    let export = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").map(|_| Export::FromEnvironment);
    init_with(service_name, format, export)
}

/// Where spans go, for [`init_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    /// The endpoint and settings in the standard `OTEL_EXPORTER_OTLP_*` variables.
    FromEnvironment,
    /// This OTLP/gRPC endpoint (e.g. `http://127.0.0.1:4317`), whatever the environment says.
    Endpoint(String),
}

/// [`init`] with the export chosen by the caller (`None`: spans exist and propagate but are not
/// exported) — for a program or test that knows its collector.
pub fn init_with(
    service_name: &str,
    format: LogFormat,
    export: Option<Export>,
) -> Result<TelemetryGuard, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig as _;

    global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(export) = export {
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        let exporter = match export {
            Export::FromEnvironment => exporter,
            Export::Endpoint(endpoint) => exporter.with_endpoint(endpoint),
        };
        let exporter = exporter
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
        EXPORTING.store(true, Ordering::Relaxed);
    }
    let provider = builder.build();
    global::set_tracer_provider(provider.clone());
    let otel_layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("waybill"));

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let installed = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(colour_on_stderr())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry.with(json_layer(std::io::stderr)).try_init(),
    };
    installed.map_err(|e| TelemetryError::Subscriber(e.to_string()))?;
    Ok(TelemetryGuard { provider })
}

/// Whether text logs written to stderr get colour escape codes (see [`use_colour`]): for the
/// binary's own log set-ups too (`waybill demo`).
pub fn colour_on_stderr() -> bool {
    use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

/// The JSON log layer, writing to `writer`.
fn json_layer<S, W>(
    writer: W,
) -> tracing_subscriber::fmt::Layer<S, JsonFields, JsonWithoutLogFields, W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .event_format(JsonWithoutLogFields(
            tracing_subscriber::fmt::format()
                .json()
                .with_current_span(true),
        ))
        .with_writer(writer)
}

/// The JSON event format without the `log.*` fields (`log.file`, `log.line`,
/// `log.module_path`, `log.target`) that the `log` → `tracing` bridge adds to a library's `log`
/// record: `log.file` is a path on the build machine (`/root/.cargo/registry/…`), and the
/// record's target is the line's `target` already. Only such lines are rewritten.
struct JsonWithoutLogFields(Format<Json>);

impl<S, N> FormatEvent<S, N> for JsonWithoutLogFields
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if event.metadata().fields().field("log.file").is_none() {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let Ok(mut json) = serde_json::from_str::<serde_json::Value>(&line) else {
            return writer.write_str(&line);
        };
        if let Some(fields) = json.get_mut("fields").and_then(|f| f.as_object_mut()) {
            fields.retain(|name, _| !name.starts_with("log."));
        }
        writeln!(writer, "{json}")
    }
}

/// Whether text logs get colour escape codes: only on a terminal, and never when `NO_COLOR`
/// is set to anything but the empty string (<https://no-color.org>), so a log written to a file
/// or a pipe stays plain text.
fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// A W3C trace context in its wire form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    /// `traceparent`; empty when there is no trace.
    pub traceparent: String,
    /// `tracestate`; often empty.
    pub tracestate: String,
}

impl TraceContext {
    /// The context of the current tracing span (empty if it has none).
    pub fn current() -> Self {
        let context = tracing::Span::current().context();
        let mut carrier = HashMap::new();
        global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut MapCarrier(&mut carrier));
        });
        Self {
            traceparent: carrier.remove("traceparent").unwrap_or_default(),
            tracestate: carrier.remove("tracestate").unwrap_or_default(),
        }
    }

    /// Makes this context the parent of `span`, if it is a valid one.
    pub fn set_as_parent_of(&self, span: &tracing::Span) {
        if self.traceparent.is_empty() {
            return;
        }
        let mut carrier = HashMap::from([("traceparent".to_owned(), self.traceparent.clone())]);
        if !self.tracestate.is_empty() {
            carrier.insert("tracestate".to_owned(), self.tracestate.clone());
        }
        let parent = global::get_text_map_propagator(|propagator| {
            propagator.extract(&MapCarrier(&mut carrier))
        });
        // Fails only when the span is disabled; then there is nothing to parent.
        let _ = span.set_parent(parent);
    }
}

/// Makes the trace context in HTTP/2 headers (gRPC metadata) the parent of `span`.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &HeaderMap) {
    let parent =
        global::get_text_map_propagator(|propagator| propagator.extract(&HeaderCarrier(headers)));
    let _ = span.set_parent(parent);
}

struct MapCarrier<'a>(&'a mut HashMap<String, String>);

impl Injector for MapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

impl Extractor for MapCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct HeaderCarrier<'a>(&'a HeaderMap);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

#[cfg(test)]
mod colour_tests {
    use std::ffi::OsStr;

    use super::use_colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None), "a file or a pipe gets plain text");
    }
}

#[cfg(test)]
mod json_tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::json_layer;

    /// Collects what the layer writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_no_log_bridge_fields() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(json_layer(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            // What the `log` bridge makes of a library's `log::warn!`.
            tracing::warn!(
                log.target = "rdkafka::client",
                log.module_path = "rdkafka::client",
                log.file =
                    "/root/.cargo/registry/src/index.crates.io-0000/rdkafka-0.39.0/src/client.rs",
                log.line = 116u32,
                "librdkafka: Global error: AllBrokersDown"
            );
            tracing::info!(order_id = "o-1", "an ordinary line");
        });
        let output = String::from_utf8(buffer.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default();
        let lines: Vec<serde_json::Value> = output
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_default())
            .collect();
        assert_eq!(lines.len(), 2, "{output}");
        assert!(!output.contains("log."), "{output}");
        assert!(!output.contains(".cargo/registry"), "{output}");
        assert_eq!(
            lines[0]["fields"]["message"],
            "librdkafka: Global error: AllBrokersDown"
        );
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[1]["fields"]["order_id"], "o-1");
    }
}
