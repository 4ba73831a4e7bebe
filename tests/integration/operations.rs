//! What operators rely on: UNAVAILABLE when the database is gone, health,
//! reflection.

use std::time::{Duration, Instant};

use customers::{pb, storage::PoolOptions};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_is_unavailable_not_internal() {
    // Nothing listens on port 1.
    let mut svc = TestService::start_on(
        "postgres://postgres@127.0.0.1:1/customers".into(),
        Options {
            pool: PoolOptions {
                acquire_timeout: Duration::from_secs(1),
                ..PoolOptions::default()
            },
            ..Default::default()
        },
    )
    .await;
    let started = Instant::now();
    assert_error(
        create(&mut svc.client, customer("pat@example.com")).await,
        Code::Unavailable,
        "DATABASE_UNAVAILABLE",
    );
    assert_error(
        get_by_id(&mut svc.client, "cus_01h2xcejqtf2nbrexx3vqjhp41").await,
        Code::Unavailable,
        "DATABASE_UNAVAILABLE",
    );
    assert_error(
        list(&mut svc.client, Default::default()).await,
        Code::Unavailable,
        "DATABASE_UNAVAILABLE",
    );
    assert!(started.elapsed() < Duration::from_secs(10), "failed fast");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_answers_for_the_server_and_the_service() {
    let svc = TestService::start().await;
    let mut health = HealthClient::new(svc.channel.clone());
    for service in ["", "customers.v1.CustomerService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope.v1.Nope".into(),
        })
        .await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_lists_the_services_in_both_versions() {
    use tonic_reflection::pb::{v1, v1alpha};
    let svc = TestService::start().await;

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(svc.channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"customers.v1.CustomerService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );

    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::new(svc.channel.clone());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "customers.v1.CustomerService".into(),
            ),
        ),
    };
    let response = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        response.message_response,
        Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
    ));
    let _ = pb::Customer::default();
}
