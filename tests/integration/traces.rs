//! OpenTelemetry traces over OTLP, received by a real OTLP/gRPC receiver
//! (the collector's trace service from `opentelemetry-proto`, served here):
//! a call continues the caller's W3C trace, its database transaction is a
//! child span, and no span carries personal data.

use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use customers::{domain::AppId, pb};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    trace::v1::Span,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::common::*;

/// Every span the receiver was sent.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_are_traced_over_otlp_under_the_callers_trace_without_personal_data() {
    let receiver = Receiver::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let database = fresh_database().await;
    let key = create_key(&database.url, AppId::DEFAULT).await;
    let port = free_port();
    let otlp_endpoint = format!("http://{otlp}");
    let mut service = Process::start(
        &[
            ("DATABASE_URL", database.url.as_str()),
            ("CUSTOMERS_LISTEN", &format!("127.0.0.1:{port}")),
            ("RUST_LOG", "warn"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp_endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "customers-under-test"),
        ],
        Stdio::inherit(),
    );
    // Ready (and so accepting calls) before the traced call.
    let mut health = watch_health(port).await;
    health_becomes(
        &mut health,
        tonic_health::pb::health_check_response::ServingStatus::Serving,
        Duration::from_secs(30),
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .ok();
    let mut client = client(channel.expect("the service did not start"), &key);

    // The caller's trace: 4bf9... / 00f0...
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(pb::CreateCustomerRequest {
        customer: Some(pb::Customer {
            email: "traced.person@example.com".into(),
            name: "Traced Person".into(),
            phone: "+14155550123".into(),
            ..Default::default()
        }),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{parent_id}-01").parse().unwrap(),
    );
    let created = client
        .create_customer(request)
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap();
    get_by_id(&mut client, &created.id).await.unwrap();

    // SIGTERM: the service flushes its spans as it exits.
    service.signal(nix::sys::signal::Signal::SIGTERM);
    let status = service.exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");

    let spans = receiver.0.lock().unwrap().clone();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let create = spans
        .iter()
        .find(|s| s.name == "customers.v1.CustomerService/CreateCustomer")
        .unwrap_or_else(|| {
            panic!(
                "no CreateCustomer span in {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(
        hex(&create.trace_id),
        trace_id,
        "continues the caller's trace"
    );
    assert_eq!(
        hex(&create.parent_span_id),
        parent_id,
        "under the caller's span"
    );
    let transaction = spans
        .iter()
        .find(|s| s.name == "transaction create")
        .expect("a span for the database transaction");
    assert_eq!(transaction.trace_id, create.trace_id);
    assert_eq!(transaction.parent_span_id, create.span_id);
    assert!(
        spans
            .iter()
            .any(|s| s.name == "customers.v1.CustomerService/GetCustomer"
                && s.parent_span_id.is_empty()),
        "a call without traceparent starts its own trace"
    );
    assert!(spans.iter().any(|s| s.name == "transaction read"));

    // No personal data anywhere in what was exported.
    let exported = format!("{spans:?}");
    for personal in [
        "traced.person",
        "example.com",
        "Traced Person",
        "4155550123",
    ] {
        assert!(!exported.contains(personal), "{personal} in the spans");
    }
}
