//! What operators rely on: UNAVAILABLE when the database is gone, health,
//! reflection.

use std::time::{Duration, Instant};

use customers::pb;
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
        Options::fail_fast(),
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
    let mut check = async |service: &str| {
        health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status()
    };
    // Liveness at once; readiness after the first database ping.
    assert_eq!(check("").await, ServingStatus::Serving);
    let deadline = Instant::now() + Duration::from_secs(5);
    while check("customers.v1.CustomerService").await != ServingStatus::Serving {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
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

#[tokio::test(flavor = "multi_thread")]
async fn replicas_migrating_at_once_take_turns() {
    // An empty database, not the migrated template.
    let name = format!("race_{}", uuid::Uuid::new_v4().simple());
    customers::storage::create_database(&database_url("postgres"), &name, None)
        .await
        .unwrap();
    let url = database_url(&name);
    let runs = (0..4).map(|_| customers::storage::migrate(&url));
    let results = futures_util::future::join_all(runs).await;
    let applied: Vec<usize> = results.into_iter().map(|r| r.unwrap().len()).collect();
    // One replica applied everything; the others found nothing left to do.
    assert_eq!(applied.iter().filter(|&&n| n > 0).count(), 1, "{applied:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_revert_and_reapply() {
    use customers::storage::MIGRATIONS;
    use diesel_async::{AsyncPgConnection, async_connection_wrapper::AsyncConnectionWrapper};
    use diesel_migrations::MigrationHarness;

    let database = fresh_database().await;
    let url = database.url.clone();
    let reverted = tokio::task::spawn_blocking(move || {
        let mut conn =
            <AsyncConnectionWrapper<AsyncPgConnection> as diesel::Connection>::establish(&url)
                .unwrap();
        let reverted = conn.revert_all_migrations(MIGRATIONS).unwrap().len();
        assert!(conn.has_pending_migration(MIGRATIONS).unwrap());
        conn.run_pending_migrations(MIGRATIONS).unwrap();
        reverted
    })
    .await
    .unwrap();
    assert!(reverted > 0);
}

#[test]
fn missing_postgres_binaries_is_a_one_line_error() {
    let dir = std::env::temp_dir().join(format!("customers-nobin-{}", std::process::id()));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_customers"))
        .env_remove("DATABASE_URL")
        .env("PG_BIN_DIR", "/nonexistent")
        .env("CUSTOMERS_DATA_DIR", &dir)
        .env("CUSTOMERS_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("PG_BIN_DIR") && errors[0].contains("DATABASE_URL"),
        "{stderr}"
    );
}

#[test]
fn the_embedded_cluster_refuses_a_symlinked_log() {
    let root = std::env::temp_dir().join(format!("customers-symlink-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&root).unwrap();
    let target = root.join("precious");
    std::fs::write(&target, "keep me\n").unwrap();
    std::os::unix::fs::symlink(&target, root.join("postgres.log")).unwrap();
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&target).unwrap());

    let started = customers::embedded_pg::Cluster::start(&customers::embedded_pg::ClusterOptions {
        root: root.clone(),
        throwaway: true,
        port: None,
        tls: None,
    });
    let error = started.expect_err("a symlinked log must be refused");
    assert!(format!("{error:#}").contains("postgres.log"), "{error:#}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
    let meta = std::fs::metadata(&target).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        owner,
        "not chowned"
    );
    std::fs::remove_dir_all(root).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn each_test_database_is_dropped_with_its_service() {
    let svc = TestService::start().await;
    let name = svc.database_url.rsplit('/').next().unwrap();
    let name = name.split('?').next().unwrap().to_owned();
    let other = TestService::start().await;
    let exists = |name: String| {
        let other = &other;
        async move {
            other
                .count(&format!("pg_database WHERE datname = '{name}'"))
                .await
        }
    };
    assert_eq!(exists(name.clone()).await, 1);
    drop(svc);
    assert_eq!(exists(name).await, 0);
}
