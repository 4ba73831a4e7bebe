//! Per-call telemetry: a tower layer that gives every RPC a span and records
//! Prometheus metrics named as Go's grpc-prometheus made conventional
//! (`grpc_server_started_total`, `grpc_server_handled_total`,
//! `grpc_server_handling_seconds`, `grpc_server_msg_sent_total`), plus
//! connection-pool gauges, served as text on `GET /metrics`.
//!
//! A call's status is in the response headers when it fails before sending
//! anything (a "trailers-only" response) and otherwise in the trailers at the
//! end of the body, so the body is wrapped to read them. A body dropped
//! before its trailers is a call the client cancelled.

use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http_body::{Body, Frame};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::{Instrument, Span, field};

use crate::{
    domain::AppId,
    error::AuthFailure,
    service::{CustomerApi, EventStats, StreamStats},
    storage::Pool,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_type: &'static str,
    grpc_service: &'static str,
    grpc_method: &'static str,
}

/// Every method this server serves. Labels come only from here: any other
/// path (which any caller, authenticated or not, can send) is `unknown`, so
/// the metrics cannot be made to grow without bound.
const KNOWN_METHODS: &[(&str, &str)] = &[
    ("customers.v1.CustomerService", "CreateCustomer"),
    ("customers.v1.CustomerService", "GetCustomer"),
    ("customers.v1.CustomerService", "UpdateCustomer"),
    ("customers.v1.CustomerService", "ListCustomers"),
    ("customers.v1.CustomerService", "ArchiveCustomer"),
    ("customers.v1.CustomerService", "DeleteCustomer"),
    ("grpc.health.v1.Health", "Check"),
    ("grpc.health.v1.Health", "Watch"),
    (
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        "ServerReflectionInfo",
    ),
];

/// The `(service, method)` labels of a request path ("/package.Service/Method").
fn method_of(path: &str) -> (&'static str, &'static str) {
    path.strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .and_then(|(service, method)| {
            KNOWN_METHODS
                .iter()
                .find(|(s, m)| *s == service && *m == method)
        })
        .copied()
        .unwrap_or(("unknown", "unknown"))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_type: &'static str,
    grpc_service: &'static str,
    grpc_method: &'static str,
    grpc_code: &'static str,
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The call metrics; cheap to clone (shared counters).
#[derive(Clone)]
pub struct Metrics {
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    handling_seconds: Family<MethodLabels, Histogram, fn() -> Histogram>,
    auth_failures: Family<ReasonLabels, Counter>,
    /// Database reads made to check keys: one key's record, or every key id.
    auth_lookups: Family<KindLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            started: Family::default(),
            handled: Family::default(),
            handling_seconds: Family::new_with_constructor(latency_histogram),
            auth_failures: Family::default(),
            auth_lookups: Family::default(),
        }
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// The tower layer that records calls into these metrics.
    pub fn layer(&self) -> MetricsLayer {
        MetricsLayer {
            metrics: self.clone(),
        }
    }

    /// Counts a database read made to check keys: `"key"` (one key's
    /// record) or `"key_ids"` (every key id).
    pub fn auth_lookup(&self, kind: &'static str) {
        self.auth_lookups.get_or_create(&KindLabels { kind }).inc();
    }

    /// Counts a failed authentication by its reason.
    pub fn auth_failure(&self, failure: AuthFailure) {
        self.auth_failures
            .get_or_create(&ReasonLabels {
                reason: failure.reason(),
            })
            .inc();
    }

    /// A registry of these metrics, the pool's gauges and the stream and
    /// watch counters of `api`.
    pub fn registry(&self, api: &CustomerApi) -> Registry {
        let mut registry = Registry::default();
        registry.register(
            "grpc_server_started",
            "RPCs started on the server",
            self.started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "RPCs completed on the server, by status code",
            self.handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status (streams: to the end of the stream)",
            self.handling_seconds.clone(),
        );
        registry.register(
            "customers_auth_failures",
            "Calls refused for a missing, invalid or revoked API key",
            self.auth_failures.clone(),
        );
        registry.register(
            "customers_auth_lookups",
            "Database reads made to check API keys, by kind (key: one key's record; key_ids: every key id)",
            self.auth_lookups.clone(),
        );
        registry.register_collector(Box::new(StateCollector {
            pool: api.pool().clone(),
            streams: api.stream_stats(),
            watches: api.watch_stats(),
            events: api.events().stats().clone(),
        }));
        registry
    }
}

/// The kind of each method, as grpc-prometheus labels it.
fn grpc_type(method: &str) -> &'static str {
    match method {
        "ListCustomers" | "Watch" => "server_stream",
        "ServerReflectionInfo" => "bidi_stream",
        _ => "unary",
    }
}

/// Go's spelling of each code, which grpc-prometheus uses for `grpc_code`.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(Code::from_i32(value))
}

#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Metrics,
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Metrics,
}

/// One call in progress: finished once, with its status.
struct Call {
    metrics: Metrics,
    labels: MethodLabels,
    start: Instant,
    span: Span,
    /// The caller's app, once authenticated (from the response's extensions).
    app: Option<AppId>,
}

/// The target of the access log: a line per call at `info`
/// (`RUST_LOG=info,customers::access=off` turns it off).
pub const ACCESS_LOG: &str = "customers::access";

impl Call {
    fn finish(self, code: Code) {
        let latency = self.start.elapsed();
        self.metrics
            .handling_seconds
            .get_or_create(&self.labels)
            .observe(latency.as_secs_f64());
        self.metrics
            .handled
            .get_or_create(&HandledLabels {
                grpc_type: self.labels.grpc_type,
                grpc_service: self.labels.grpc_service,
                grpc_method: self.labels.grpc_method,
                grpc_code: code_name(code),
            })
            .inc();
        self.span.record("rpc.grpc.status_code", code as i32);
        // A line of its own, not inside the call's span: the log shows no
        // spans (see `telemetry`), so a line costs the call one event.
        let (service, method) = (self.labels.grpc_service, self.labels.grpc_method);
        let latency_ms = latency.as_secs_f64() * 1000.0;
        let code = code_name(code);
        // No `app` field before the key is checked (`None` records nothing).
        tracing::event!(
            target: ACCESS_LOG,
            tracing::Level::INFO,
            grpc.service = service,
            grpc.method = method,
            grpc.code = code,
            latency_ms,
            app = self.app.map(tracing::field::display),
            "call finished"
        );
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for MetricsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let (service, method) = method_of(request.uri().path());
        let labels = MethodLabels {
            grpc_type: grpc_type(method),
            grpc_service: service,
            grpc_method: method,
        };
        // Named and attributed as OpenTelemetry's RPC conventions say; no
        // request content, so no personal data. A span for traces only (the
        // log shows none): without traces it is disabled, and costs nothing.
        let span = tracing::info_span!(
            "grpc",
            otel.name = format!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = field::Empty,
            app = field::Empty,
        );
        // Continue the caller's trace (W3C traceparent), if it sent one.
        let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(
            &span,
            crate::telemetry::parent_context(request.headers()),
        );
        self.metrics.started.get_or_create(&labels).inc();
        let mut call = Call {
            metrics: self.metrics.clone(),
            labels,
            start: Instant::now(),
            span: span.clone(),
            app: None,
        };
        let future = self.inner.call(request).instrument(span);
        Box::pin(async move {
            let response = future.await?;
            let (parts, body) = response.into_parts();
            call.app = parts.extensions.get::<AppId>().copied();
            let call = match status_of(&parts.headers) {
                // Trailers-only: the call is over.
                Some(code) => {
                    call.finish(code);
                    None
                }
                None => Some(call),
            };
            Ok(http::Response::from_parts(
                parts,
                ObservedBody { inner: body, call },
            ))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call's status from the trailers.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }

    impl<B> PinnedDrop for ObservedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(call) = this.project().call.take() {
                call.finish(Code::Cancelled);
            }
        }
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        let code = match &frame {
            Some(Ok(frame)) => frame
                .trailers_ref()
                .map(|t| status_of(t).unwrap_or(Code::Unknown)),
            Some(Err(_)) => Some(Code::Unknown),
            None => Some(Code::Ok),
        };
        if let Some(code) = code
            && let Some(call) = this.call.take()
        {
            call.finish(code);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Values read at scrape time: the pool's state and the stream counters.
struct StateCollector {
    pool: Pool,
    streams: Arc<StreamStats>,
    watches: Arc<StreamStats>,
    events: Arc<EventStats>,
}

impl fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateCollector")
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let status = self.pool.status();
        let gauges = [
            (
                "customers_db_pool_connections",
                "Database connections open",
                status.size as i64,
            ),
            (
                "customers_db_pool_idle_connections",
                "Database connections open and idle",
                status.available as i64,
            ),
            (
                "customers_db_pool_max_connections",
                "Most database connections the pool opens",
                status.max_size as i64,
            ),
            (
                "customers_db_pool_waiting",
                "Calls waiting for a database connection",
                status.waiting as i64,
            ),
            (
                "customers_open_streams",
                "ListCustomers streams being served",
                self.streams.open.load(Relaxed) as i64,
            ),
            (
                "customers_stream_buffered_bytes",
                "Bytes of customers waiting in ListCustomers buffers for their clients",
                self.streams.buffered_bytes.load(Relaxed) as i64,
            ),
            (
                "customers_open_watches",
                "WatchCustomerEvents streams being served",
                self.watches.open.load(Relaxed) as i64,
            ),
            (
                "customers_watch_buffered_bytes",
                "Bytes of events waiting in WatchCustomerEvents buffers for their clients",
                self.watches.buffered_bytes.load(Relaxed) as i64,
            ),
        ];
        let counters = [
            (
                "customers_event_feed_reads",
                "Database reads of change events by per-app feeds (shared by all watches of an app)",
                self.events.feed_reads.load(Relaxed),
            ),
            (
                "customers_event_watch_reads",
                "Database reads of change events by single watches (catching up)",
                self.events.watch_reads.load(Relaxed),
            ),
            (
                "customers_event_messages",
                "Events and bookmarks handed to WatchCustomerEvents streams",
                self.events.messages.load(Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }

        let sent = ConstCounter::new(self.streams.messages.load(Relaxed));
        let mut metric = encoder.encode_descriptor(
            "grpc_server_msg_sent",
            "Stream messages handed to the transport (not those still buffered)",
            None,
            sent.metric_type(),
        )?;
        sent.encode(metric.encode_family(&MethodLabels {
            grpc_type: "server_stream",
            grpc_service: "customers.v1.CustomerService",
            grpc_method: "ListCustomers",
        })?)?;

        let batches = ConstCounter::new(self.streams.batches.load(Relaxed));
        batches.encode(encoder.encode_descriptor(
            "customers_list_batches",
            "Keyset batches ListCustomers read from the database",
            None,
            batches.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Serves `registry` as Prometheus text on `GET /metrics` until `shutdown`.
pub async fn serve(listener: TcpListener, registry: Registry, shutdown: CancellationToken) {
    use axum::{http::header, response::IntoResponse, routing::get};
    let registry = Arc::new(registry);
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut text = String::new();
                match prometheus_client::encoding::text::encode(&mut text, &registry) {
                    Ok(()) => (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response(),
                    Err(_) => http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "metrics endpoint failed");
    }
}

#[cfg(test)]
mod tests {
    use super::method_of;

    #[test]
    fn only_known_methods_get_their_own_labels() {
        assert_eq!(
            method_of("/customers.v1.CustomerService/GetCustomer"),
            ("customers.v1.CustomerService", "GetCustomer")
        );
        assert_eq!(method_of("/grpc.health.v1.Health/Check").1, "Check");
        for path in [
            "/customers.v1.CustomerService/Nope",
            "/evil.Service/GetCustomer",
            "/",
            "",
            "no-slash",
        ] {
            assert_eq!(method_of(path), ("unknown", "unknown"), "{path}");
        }
    }
}
