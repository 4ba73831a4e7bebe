//! Logging and traces. Logs: `tracing` to stderr, text or JSON, level from
//! `RUST_LOG` (default `info`). Traces: OpenTelemetry over OTLP/gRPC, off
//! unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set,
//! configured by the standard `OTEL_*` variables as every OpenTelemetry SDK
//! reads them (`OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_SDK_DISABLED`, ...). A call's span
//! continues the W3C `traceparent` it arrives with; spans carry no personal
//! data (see `metrics` and `storage` for what they record).

use std::io::IsTerminal as _;

use opentelemetry::{propagation::Extractor, trace::TracerProvider as _};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{
    EnvFilter, Layer, filter::FilterExt as _, fmt, layer::SubscriberExt, util::SubscriberInitExt,
};

use crate::config::LogFormat;

/// Flushes and stops the trace exporter when dropped (at exit).
#[must_use = "traces are flushed when this is dropped"]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
    /// Writes what is left of the logs when dropped.
    _logs: tracing_appender::non_blocking::WorkerGuard,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.traces.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: flushing traces failed: {e}");
        }
    }
}

fn traces_configured() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Sets up logs, and traces when configured. Call within the tokio runtime
/// (the OTLP exporter's gRPC channel lives on it).
pub fn init(format: LogFormat) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Lines go to stderr from a thread of their own, buffered, so that a
    // call (one log line each at `info`) never waits on a write: several
    // lines per write under load. Past `LOG_LINES_BUFFERED` lines not yet
    // written (stderr blocked), lines are dropped rather than calls held.
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_LINES_BUFFERED)
        .thread_name("customers-logs")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let logs = match format {
        // Colours on a terminal only, not in a log collector's pipe.
        LogFormat::Text => fmt::layer().with_ansi(ansi).with_writer(writer).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(writer)
            .boxed(),
    };
    let mut traces = None;
    let otel = if traces_configured() {
        match exporter() {
            Ok(provider) => {
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("customers"))
                    .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                        // The spans of calls and of database transactions:
                        // neither carries personal data.
                        meta.is_span()
                            && (meta.target().starts_with("customers") || meta.name() == "grpc")
                    }));
                traces = Some(provider);
                Some(layer)
            }
            Err(e) => {
                eprintln!("warning: traces are off: the OTLP exporter failed: {e}");
                None
            }
        }
    } else {
        None
    };
    // The log shows events only: spans are for traces. A call's line
    // (`customers::access`) carries what names the call, and a span nobody
    // records is disabled at its callsite, so it costs a call nothing.
    // (A hint of `TRACE` leaves the level to `filter`: without one, the
    // pair would have no hint, and every `log` record of the libraries
    // would be built and offered to the subscriber.)
    let events_only = tracing_subscriber::filter::filter_fn(|meta| !meta.is_span())
        .with_max_level_hint(tracing_subscriber::filter::LevelFilter::TRACE);
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter.and(events_only)))
        .with(otel)
        .try_init();
    Telemetry {
        traces,
        _logs: guard,
    }
}

/// Log lines held for the log thread at most (about 4 MiB at the access
/// log's ~250 bytes a line).
const LOG_LINES_BUFFERED: usize = 16_384;

fn exporter() -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    let resource = Resource::builder()
        .with_service_name(
            std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "customers".into()),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(provider)
}

/// The trace context an incoming call carries (W3C `traceparent` and
/// `tracestate`), to continue as its span's parent. Empty without traces.
pub fn parent_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    struct Headers<'a>(&'a http::HeaderMap);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)))
}
