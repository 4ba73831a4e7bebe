//! SIGTERM against the real binary.

use std::time::Duration;

use customers::{domain::AppId, pb};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use nix::sys::signal::Signal;
use tonic::{Code, transport::Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_calls_cuts_streams_and_exits_zero() {
    let database = fresh_database().await;
    let url = database.url.clone();
    seed(&url, 5_000).await;
    let key = create_key(&url, AppId::DEFAULT).await;
    let port = free_port();
    let log_path = std::env::temp_dir().join(format!("customers-shutdown-{port}.log"));
    let mut process = Process::start(
        &[
            ("DATABASE_URL", url.as_str()),
            ("CUSTOMERS_LISTEN", &format!("127.0.0.1:{port}")),
            ("CUSTOMERS_SHUTDOWN_GRACE", "10s"),
            ("CUSTOMERS_LOG_FORMAT", "json"),
            ("RUST_LOG", "info"),
        ],
        std::fs::File::create(&log_path).unwrap().into(),
    );
    let mut watch = watch_health(port).await;
    health_becomes(&mut watch, ServingStatus::Serving, Duration::from_secs(10)).await;

    let channel = small_window_channel(([127, 0, 0, 1], port).into()).await;
    let client_channel = channel.clone();
    let mut client = client(channel, &key);
    let mut private = customer("private.person@example.com");
    private.phone = "+14155550199".into();
    let c = create_new(&mut client, private).await;
    // A failed authentication, to find in the log (without the key).
    let bogus = customers::auth::ApiKey::generate(AppId::DEFAULT).reveal();
    let refused = get_by_id(
        &mut crate::common::client(client_channel.clone(), &bogus),
        &c.id,
    )
    .await;
    assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);

    // An open stream whose client reads slowly.
    let mut stream = open_listing(&mut client).await;

    // An in-flight unary call: an update waiting on a row we lock.
    let mut lock = AsyncPgConnection::establish(&url).await.unwrap();
    let uuid =
        c.id.parse::<customers::domain::CustomerId>()
            .unwrap()
            .uuid();
    lock.batch_execute(&format!(
        "BEGIN; SELECT 1 FROM customers \
         WHERE app_id = '00000000-0000-0000-0000-000000000000' AND id = '{uuid}' FOR UPDATE"
    ))
    .await
    .unwrap();
    // On a connection of its own: the slow stream fills its connection's
    // HTTP/2 window, which every call on that connection shares.
    let update = {
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = crate::common::client(channel, &key);
        let id = c.id.clone();
        tokio::spawn(async move {
            client
                .update_customer(pb::UpdateCustomerRequest {
                    customer: Some(pb::Customer {
                        id,
                        name: "Finished".into(),
                        ..Default::default()
                    }),
                    update_mask: None,
                    ..Default::default()
                })
                .await
        })
    };
    let mut probe = AsyncPgConnection::establish(&url).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // On Citus the wait happens on a worker, seen through
        // citus_stat_activity (the coordinator's backend waits on the network).
        let waiting = count_on(
            &mut probe,
            if citus_workers().is_empty() {
                "SELECT count(*) AS n FROM pg_stat_activity
                 WHERE application_name = 'customers' AND wait_event_type = 'Lock'"
            } else {
                "SELECT count(*) AS n FROM citus_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'"
            },
        )
        .await;
        if waiting == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the update never waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    process.signal(Signal::SIGTERM);
    // Readiness goes first.
    health_becomes(
        &mut watch,
        ServingStatus::NotServing,
        Duration::from_secs(10),
    )
    .await;
    drop(watch);

    // New connections get nowhere.
    let fresh = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(1))
        .connect()
        .await;
    if let Ok(channel) = fresh {
        let refused = get_by_id(&mut crate::common::client(channel, &key), &c.id).await;
        assert!(refused.is_err(), "a new call was served during shutdown");
    }

    // The in-flight update finishes once the lock goes.
    lock.batch_execute("COMMIT").await.unwrap();
    let updated = update
        .await
        .unwrap()
        .expect("the in-flight update completes");
    assert_eq!(updated.into_inner().customer.unwrap().name, "Finished");

    // The stream delivers what it had sent, then says it was cut.
    let status = final_status(&mut stream).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_error(Err::<(), _>(status), Code::Unavailable, "SHUTTING_DOWN");

    let exit = process.exit(Duration::from_secs(15)).await;
    assert!(exit.success(), "{exit:?}");

    // Logs: JSON lines, no personal data.
    let log = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("CreateCustomer"), "calls are logged: {log}");
    assert!(log.contains("authentication failed"), "{log}");
    assert!(
        log.contains(&AppId::DEFAULT.to_string()),
        "calls are logged with their app: {log}"
    );
    for line in log.lines().filter(|l| !l.is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            !line.contains("private.person") && !line.contains("4155550199"),
            "personal data in the log: {line}"
        );
        assert!(
            !line.contains(&bogus[10..]) && !line.contains(&key[10..]),
            "a key in the log: {line}"
        );
    }
    // The access log: a line per call naming it, its status and its app
    // (once authenticated), and no span (spans are for traces only).
    let access: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "customers::access")
        .collect();
    let line_of = |method: &str, code: &str| {
        access
            .iter()
            .find(|v| v["grpc.method"] == method && v["grpc.code"] == code)
            .unwrap_or_else(|| panic!("no {method} {code} line in {access:?}"))
    };
    let created = line_of("CreateCustomer", "OK");
    assert_eq!(created["grpc.service"], "customers.v1.CustomerService");
    assert_eq!(created["app"], AppId::DEFAULT.to_string());
    assert!(
        created["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{created}"
    );
    let refused = line_of("GetCustomer", "Unauthenticated");
    assert!(refused.get("app").is_none(), "{refused}");
    assert_eq!(line_of("UpdateCustomer", "OK")["app"], created["app"]);
    line_of("ListCustomers", "Unavailable");
    for line in &access {
        assert!(
            line.get("span").is_none() && line.get("spans").is_none(),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_embedded_postgres_too() {
    let data = std::env::temp_dir().join(format!("customers-test-{}-embedded", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let port = free_port();
    // Its default logs (text, `info`), into a file: not a terminal.
    let log_path = std::env::temp_dir().join(format!("customers-embedded-{port}.log"));
    let mut process = Process::start(
        &[
            ("CUSTOMERS_DATA_DIR", data.to_str().unwrap()),
            ("CUSTOMERS_LISTEN", &format!("127.0.0.1:{port}")),
        ],
        std::fs::File::create(&log_path).unwrap().into(),
    );
    let mut watch = watch_health(port).await;
    health_becomes(&mut watch, ServingStatus::Serving, Duration::from_secs(10)).await;
    drop(watch);
    let pid_file = data.join("pgdata/postmaster.pid");
    let pid_lines = std::fs::read_to_string(&pid_file).unwrap();
    let mut pid_lines = pid_lines.lines();
    let postmaster: u32 = pid_lines.next().unwrap().parse().unwrap();
    assert!(customers::embedded_pg::process_alive(postmaster));

    // The service reaches its PostgreSQL through the cluster's private
    // socket (no client address), as its own role; the owner, over TCP.
    let pg_port = pid_lines.nth(2).unwrap();
    let password = std::fs::read_to_string(data.join("superuser-password")).unwrap();
    let mut owner = AsyncPgConnection::establish(&format!(
        "postgres://postgres:{}@127.0.0.1:{pg_port}/customers",
        password.trim()
    ))
    .await
    .unwrap();
    let service = "FROM pg_stat_activity WHERE application_name = 'customers' \
                   AND datname = 'customers' AND pid <> pg_backend_pid()";
    assert!(count_on(&mut owner, &format!("SELECT count(*) AS n {service}")).await > 0);
    assert_eq!(
        count_on(
            &mut owner,
            &format!(
                "SELECT count(*) AS n {service} \
                 AND (client_addr IS NOT NULL OR usename <> 'customers_service')"
            )
        )
        .await,
        0
    );
    assert!(
        std::fs::metadata(data.join("socket")).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.permissions().mode() & 0o077 == 0
        }),
        "the socket's directory is private"
    );
    drop(owner);

    process.signal(Signal::SIGINT);
    let exit = process.exit(Duration::from_secs(30)).await;
    assert!(exit.success(), "{exit:?}");
    // A clean PostgreSQL shutdown removes its pid file.
    assert!(!pid_file.exists());
    assert!(!customers::embedded_pg::process_alive(postmaster));
    let _ = std::fs::remove_dir_all(&data);
    // The log thread wrote every line before the process ended, the last
    // one included, and no terminal colours into a file.
    let log = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    assert!(
        log.lines().last().is_some_and(|l| l.ends_with("shut down")),
        "{log}"
    );
    assert!(!log.contains('\x1b'), "terminal escapes in a file:\n{log}");
}
