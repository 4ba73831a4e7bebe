//! Readiness, deadlines, metrics, TLS and configuration errors.

use std::time::{Duration, Instant};

use customers::{
    embedded_pg::{Cluster, ClusterOptions},
    pb,
    server::ServeOptions,
    storage,
};
use diesel_async::SimpleAsyncConnection;
use tonic::{Code, Request};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_database_and_calls_fail_fast_while_it_is_gone() {
    // A cluster of this test's own, to stop and start on the same port.
    let root =
        std::env::temp_dir().join(format!("customers-test-{}-readiness", std::process::id()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = ClusterOptions {
        root: root.clone(),
        throwaway: true,
        port: Some(port),
        tls: None,
    };
    let start = {
        let options = options.clone();
        move || Cluster::start(&options).unwrap()
    };
    let cluster = tokio::task::spawn_blocking(start.clone()).await.unwrap();
    storage::create_database(&cluster.url("postgres"), "customers", None)
        .await
        .unwrap();
    let url = cluster.url("customers");
    storage::migrate(&url).await.unwrap();

    let mut svc = TestService::start_on(url, Options::fail_fast()).await;
    let mut health = HealthClient::new(svc.channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "customers.v1.CustomerService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    health_becomes(&mut watch, ServingStatus::Serving, Duration::from_secs(5)).await;
    let c = create_new(&mut svc.client, customer("up@example.com")).await;

    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap();
    health_becomes(
        &mut watch,
        ServingStatus::NotServing,
        Duration::from_secs(5),
    )
    .await;
    let started = Instant::now();
    assert_error(
        get_by_id(&mut svc.client, &c.id).await,
        Code::Unavailable,
        "DATABASE_UNAVAILABLE",
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the pool's 1 s acquire timeout: {:?}",
        started.elapsed()
    );
    // Liveness is unaffected.
    let overall = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(overall.status(), ServingStatus::Serving);

    let cluster = tokio::task::spawn_blocking(start).await.unwrap();
    health_becomes(&mut watch, ServingStatus::Serving, Duration::from_secs(10)).await;
    assert_eq!(get_by_id(&mut svc.client, &c.id).await.unwrap(), c);
    drop(watch);
    svc.stop().await;
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(root);
}

/// Locks a customer's row from outside the service until dropped (rolled
/// back), so that a write to it waits.
async fn lock_row(svc: &TestService, id: &str) -> diesel_async::AsyncPgConnection {
    let uuid = id.parse::<customers::domain::CustomerId>().unwrap().uuid();
    let mut conn = svc.sql().await;
    conn.batch_execute(&format!(
        "BEGIN; SELECT 1 FROM customers \
         WHERE app_id = '00000000-0000-0000-0000-000000000000' AND id = '{uuid}' FOR UPDATE"
    ))
    .await
    .unwrap();
    conn
}

/// Statements of the service that wait on a lock right now.
async fn service_statements_waiting(svc: &TestService) -> i64 {
    svc.backends("wait_event_type = 'Lock'").await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_deadline_is_deadline_exceeded_and_cancels_the_query() {
    let mut svc = TestService::start().await;
    let c = create_new(&mut svc.client, customer("slow@example.com")).await;
    let lock = lock_row(&svc, &c.id).await;

    let mut request = Request::new(pb::UpdateCustomerRequest {
        customer: Some(pb::Customer {
            id: c.id.clone(),
            name: "Never".into(),
            ..Default::default()
        }),
        update_mask: None,
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(500));
    let started = Instant::now();
    assert_error(
        svc.client.update_customer(request).await,
        Code::DeadlineExceeded,
        "DEADLINE_EXCEEDED",
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // PostgreSQL cancelled the statement: nothing of ours waits on the lock.
    assert_eq!(service_statements_waiting(&svc).await, 0);
    drop(lock);
    assert_eq!(get_by_id(&mut svc.client, &c.id).await.unwrap(), c);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_far_deadline_does_not_lift_the_statement_timeout() {
    let mut svc = TestService::start_with(Options {
        pool: customers::storage::PoolOptions {
            statement_timeout: Duration::from_secs(1),
            ..Options::default().pool
        },
        ..Default::default()
    })
    .await;
    let c = create_new(&mut svc.client, customer("capped@example.com")).await;
    let lock = lock_row(&svc, &c.id).await;
    let mut request = Request::new(pb::UpdateCustomerRequest {
        customer: Some(pb::Customer {
            id: c.id.clone(),
            name: "Blocked".into(),
            ..Default::default()
        }),
        update_mask: None,
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(100_000));
    let started = Instant::now();
    let result = svc.client.update_customer(request).await;
    let waited = started.elapsed();
    assert_error(result, Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    assert_eq!(service_statements_waiting(&svc).await, 0);
    drop(lock);
}

#[tokio::test(flavor = "multi_thread")]
async fn deadlines_of_a_month_work() {
    let mut svc = TestService::start().await;
    // grpc-go sends a 30-day deadline as "2592000S", past what PostgreSQL's
    // statement_timeout holds in milliseconds.
    let month = Duration::from_secs(30 * 86_400);
    let mut request = Request::new(pb::CreateCustomerRequest {
        customer: Some(customer("month@example.com")),
    });
    request.set_timeout(month);
    let c = svc
        .client
        .create_customer(request)
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap();
    let mut request = Request::new(pb::GetCustomerRequest {
        lookup: Some(pb::get_customer_request::Lookup::Id(c.id.clone())),
    });
    request.set_timeout(month);
    assert_eq!(
        svc.client
            .get_customer(request)
            .await
            .unwrap()
            .into_inner()
            .customer,
        Some(c)
    );
    let mut request = Request::new(pb::ListCustomersRequest::default());
    request.set_timeout(month);
    let mut stream = svc
        .client
        .list_customers(request)
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_past_its_deadline_ends_with_deadline_exceeded() {
    let svc = TestService::start().await;
    seed(&svc.database_url, 5_000).await;
    // A small HTTP/2 window, so that the stream cannot finish before the
    // deadline while the client sleeps.
    let mut client = small_window_client(&svc).await;
    let mut request = Request::new(pb::ListCustomersRequest::default());
    request.set_timeout(Duration::from_millis(400));
    let mut stream = client.list_customers(request).await.unwrap().into_inner();
    stream.message().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    // What was sent before the deadline is delivered, then the status.
    let status = final_status(&mut stream).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_start}\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_calls_by_method_and_code() {
    let mut svc = TestService::start().await;
    create_new(&mut svc.client, customer("m1@example.com")).await;
    create_new(&mut svc.client, customer("m2@example.com")).await;
    let _ = create(&mut svc.client, customer("bad")).await;
    let _ = get_by_id(&mut svc.client, "cus_01h2xcejqtf2nbrexx3vqjhp41").await;
    assert_eq!(
        list(&mut svc.client, Default::default())
            .await
            .unwrap()
            .len(),
        2
    );

    let text = scrape(&svc).await;
    let labels = |m: &str, kind: &str| {
        format!(
            r#"grpc_type="{kind}",grpc_service="customers.v1.CustomerService",grpc_method="{m}""#
        )
    };
    let unary = |m: &str| labels(m, "unary");
    assert_eq!(
        metric(
            &text,
            &format!("grpc_server_started_total{{{}}}", unary("CreateCustomer"))
        ),
        3.0
    );
    assert_eq!(
        metric(
            &text,
            &format!(
                "grpc_server_handled_total{{{},grpc_code=\"OK\"}}",
                unary("CreateCustomer")
            )
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            &format!(
                "grpc_server_handled_total{{{},grpc_code=\"InvalidArgument\"}}",
                unary("CreateCustomer")
            )
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!(
                "grpc_server_handled_total{{{},grpc_code=\"NotFound\"}}",
                unary("GetCustomer")
            )
        ),
        1.0
    );
    let stream = labels("ListCustomers", "server_stream");
    assert_eq!(
        metric(
            &text,
            &format!("grpc_server_handled_total{{{stream},grpc_code=\"OK\"}}")
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            &format!("grpc_server_handling_seconds_count{{{stream}}}")
        ),
        1.0
    );
    assert_eq!(
        metric(&text, &format!("grpc_server_msg_sent_total{{{stream}}}")),
        2.0
    );
    assert_eq!(metric(&text, "customers_db_pool_max_connections "), 8.0);
    assert!(metric(&text, "customers_db_pool_connections ") >= 1.0);
    assert_eq!(metric(&text, "customers_open_streams "), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_grpc_over_tls() {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = key.cert.pem();
    let key_pem = key.signing_key.serialize_pem();
    let mut svc = TestService::start_with(Options {
        serve: ServeOptions {
            tls: Some(tonic::transport::Identity::from_pem(&cert_pem, &key_pem)),
            ..ServeOptions::default()
        },
        client_tls: Some(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&cert_pem))
                .domain_name("localhost"),
        ),
        ..Default::default()
    })
    .await;
    let c = create_new(&mut svc.client, customer("tls@example.com")).await;
    assert_eq!(get_by_id(&mut svc.client, &c.id).await.unwrap(), c);

    // A plaintext client gets nowhere.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", svc.address))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut client = client(channel, &svc.key);
        assert!(get_by_id(&mut client, &c.id).await.is_err());
    }
}

/// Runs the binary with `args` and `env`; returns its exit code and stderr.
fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_customers"));
    command.args(args).env_remove("DATABASE_URL");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn invalid_configuration_is_one_line_naming_the_setting_and_exit_code_2() {
    let cert = std::env::temp_dir().join("customers-no-such-cert.pem");
    let cert = cert.to_str().unwrap();
    for (args, env, setting) in [
        (vec!["--listen", "nowhere"], vec![], "--listen"),
        (
            vec![],
            vec![("CUSTOMERS_POOL_MAX_SIZE", "0")],
            "--pool-max-size",
        ),
        (vec!["--shutdown-grace", "soon"], vec![], "--shutdown-grace"),
        (vec!["--tls-cert", cert], vec![], "--tls-key"),
        (
            vec!["--tls-cert", cert, "--tls-key", cert],
            vec![],
            "--tls-cert",
        ),
        (vec!["migrate"], vec![], "--database-url"),
    ] {
        let (code, stderr) = run_binary(&args, &env);
        assert_eq!(code, 2, "{args:?} {env:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(lines[0].contains(setting), "{args:?}: {stderr}");
    }
}

#[test]
fn help_documents_every_setting() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_customers"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for setting in [
        "CUSTOMERS_LISTEN",
        "DATABASE_URL",
        "CUSTOMERS_DATA_DIR",
        "CUSTOMERS_POOL_MAX_SIZE",
        "CUSTOMERS_POOL_ACQUIRE_TIMEOUT",
        "CUSTOMERS_STATEMENT_TIMEOUT",
        "CUSTOMERS_MAX_RECV_MESSAGE_SIZE",
        "CUSTOMERS_MAX_SEND_MESSAGE_SIZE",
        "CUSTOMERS_SHUTDOWN_GRACE",
        "CUSTOMERS_HEALTH_CHECK_INTERVAL",
        "CUSTOMERS_LOG_FORMAT",
        "CUSTOMERS_METRICS_LISTEN",
        "CUSTOMERS_TLS_CERT",
        "CUSTOMERS_TLS_KEY",
    ] {
        assert!(help.contains(setting), "--help lacks {setting}");
    }
}
