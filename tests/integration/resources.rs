//! What a replica holds, and that no caller can make it hold more: database
//! backends of abandoned calls, readiness under a busy pool, stream buffers,
//! vanished and stalled stream clients, metric labels and error sizes.

use std::{num::NonZeroU32, sync::atomic::Ordering, time::Duration};

use customers::{pb, server::ServeOptions, service::StreamOptions, storage::PoolOptions};
use diesel_async::SimpleAsyncConnection;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tonic::{Code, Request, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

use crate::common::*;

fn with_pool(max_size: usize) -> Options {
    Options {
        pool: PoolOptions {
            max_size,
            ..PoolOptions::default()
        },
        ..Default::default()
    }
}

/// Holds an ACCESS EXCLUSIVE lock on `customers` until dropped: every read
/// of the table waits in PostgreSQL meanwhile.
async fn lock_table(svc: &TestService) -> diesel_async::AsyncPgConnection {
    let mut conn = svc.sql().await;
    conn.batch_execute("BEGIN; LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread")]
async fn abandoned_reads_stop_in_postgres_and_the_pool_bounds_the_backends() {
    let svc = TestService::start_with(Options {
        stream: StreamOptions {
            max_per_app: None,
            ..StreamOptions::default()
        },
        ..with_pool(4)
    })
    .await;
    let c = create_new(&mut svc.client.clone(), customer("held@example.com")).await;
    let lock = lock_table(&svc).await;

    // 20 listings and 20 gets whose clients go away after 300 ms (no
    // grpc-timeout: the server learns of it only from the reset stream).
    let mut calls = Vec::new();
    for _ in 0..20 {
        let mut client = svc.client.clone();
        calls.push(tokio::spawn(async move {
            let listing = async {
                let mut stream = client
                    .list_customers(pb::ListCustomersRequest::default())
                    .await?
                    .into_inner();
                stream.message().await
            };
            tokio::time::timeout(Duration::from_millis(300), listing)
                .await
                .is_err()
        }));
        let mut client = svc.client.clone();
        let id = c.id.clone();
        calls.push(tokio::spawn(async move {
            tokio::time::timeout(Duration::from_millis(300), get_by_id(&mut client, &id))
                .await
                .is_err()
        }));
    }
    for call in calls {
        assert!(call.await.unwrap(), "the call waited on the lock");
    }
    // The lock is still held, yet nothing of the service waits on it: each
    // abandoned query was cancelled in PostgreSQL.
    eventually_async(
        Duration::from_secs(10),
        "abandoned queries cancelled",
        || {
            let svc = &svc;
            async move { svc.backends("wait_event_type = 'Lock'").await == 0 }
        },
    )
    .await;
    // The pool's four, and the readiness ping's own connection.
    assert!(svc.backends("true").await <= 5);
    drop(lock);
    assert_eq!(get_by_id(&mut svc.client.clone(), &c.id).await.unwrap(), c);
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_stays_serving_while_slow_calls_fill_the_pool() {
    let svc = TestService::start_with(with_pool(2)).await;
    let c = create_new(&mut svc.client.clone(), customer("busy@example.com")).await;
    let mut watch = HealthClient::new(svc.channel.clone())
        .watch(HealthCheckRequest {
            service: "customers.v1.CustomerService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    health_becomes(&mut watch, ServingStatus::Serving, Duration::from_secs(10)).await;
    let lock = lock_table(&svc).await;
    // Four reads wait on the lock: two hold the whole pool, two wait for it.
    let mut reads = Vec::new();
    for _ in 0..4 {
        let mut client = svc.client.clone();
        let id = c.id.clone();
        reads.push(tokio::spawn(
            async move { get_by_id(&mut client, &id).await },
        ));
    }
    eventually_async(Duration::from_secs(5), "the pool is busy", || {
        let svc = &svc;
        async move { svc.backends("wait_event_type = 'Lock'").await == 2 }
    })
    .await;

    let mut health = HealthClient::new(svc.channel.clone());
    // Ten checks over a second, ten times the readiness interval.
    for _ in 0..10 {
        let status = health
            .check(HealthCheckRequest {
                service: "customers.v1.CustomerService".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(lock);
    for read in reads {
        assert_eq!(read.await.unwrap().unwrap(), c);
    }
}

/// A customer of about 55 KB: 50 metadata values of 500 two-byte characters.
fn big_customer(i: usize) -> pb::Customer {
    let mut c = customer(&format!("big{i}@example.com"));
    c.metadata = (0..50)
        .map(|k| (format!("key{k}"), "é".repeat(500)))
        .collect();
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_buffers_a_bounded_number_of_bytes_for_a_client_that_does_not_read() {
    const BUDGET: usize = 256 << 10;
    let svc = TestService::start_with(Options {
        stream: StreamOptions {
            buffer_bytes: BUDGET,
            ..StreamOptions::default()
        },
        ..Default::default()
    })
    .await;
    let mut client = svc.client.clone();
    for i in 0..120 {
        create_new(&mut client, big_customer(i)).await;
    }
    let mut slow = small_window_client(&svc).await;
    let mut stream = slow
        .list_customers(pb::ListCustomersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let stats = svc.stats.clone();
    eventually(Duration::from_secs(10), "the buffer fills", || {
        stats.buffered_bytes.load(Ordering::Relaxed) > (BUDGET / 2) as u64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let buffered = stats.buffered_bytes.load(Ordering::Relaxed);
    assert!(
        buffered <= BUDGET as u64,
        "{buffered} bytes buffered, budget {BUDGET}"
    );
    let text = scrape(&svc).await;
    assert!(text.contains("customers_stream_buffered_bytes "), "{text}");

    // Nothing is lost to the budget: read on, everything arrives.
    let mut n = 0;
    while stream.message().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 120);
    assert_eq!(stats.buffered_bytes.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_stream_is_ended_resumably_and_frees_its_slot() {
    let svc = TestService::start_with(Options {
        stream: StreamOptions {
            stall_timeout: Duration::from_millis(300),
            max_per_app: NonZeroU32::new(1),
            ..StreamOptions::default()
        },
        ..Default::default()
    })
    .await;
    seed(&svc.database_url, 3_000).await;
    let mut slow = small_window_client(&svc).await;
    let mut stream = slow
        .list_customers(pb::ListCustomersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap().customer.unwrap();
    let stats = svc.stats.clone();
    eventually(Duration::from_secs(10), "the stalled stream ended", || {
        stats.open.load(Ordering::Relaxed) == 0
    })
    .await;
    // Its slot is free for the app's next stream.
    let all = list(&mut svc.client.clone(), Default::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 3_000);

    // The stalled client gets what was sent, then a resumable error.
    let mut received = vec![first];
    let status = loop {
        match stream.message().await {
            Ok(Some(m)) => received.push(m.customer.unwrap()),
            Ok(None) => panic!("a stalled stream ended as if complete"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.get_error_details().error_info().unwrap().reason,
        "STREAM_STALLED"
    );
    let rest = list(
        &mut svc.client.clone(),
        pb::ListCustomersRequest {
            resume_after: received.last().unwrap().id.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    received.extend(rest);
    assert_eq!(received, all, "resumed without gaps or repeats");
}

/// A TCP proxy to `target` that, once `freeze` says so, stops passing bytes
/// either way but keeps both connections open: a peer that vanished without
/// closing (a stopped process, a dead host).
async fn freezing_proxy(
    target: std::net::SocketAddr,
) -> (std::net::SocketAddr, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (freeze, frozen) = watch::channel(false);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(target).await.unwrap();
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pipe(client_read, server_write, frozen.clone()));
            tokio::spawn(pipe(server_read, client_write, frozen.clone()));
        }
    });
    (address, freeze)
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0; 16 << 10];
    loop {
        tokio::select! {
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if to.write_all(&buf[..n]).await.is_err() { return },
            },
            _ = frozen.changed() => if *frozen.borrow_and_update() { break },
        }
    }
    // Hold both halves open and pass nothing, for the test's life.
    std::future::pending::<()>().await;
    drop((from, to));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vanished_client_is_dropped_by_keepalive_and_frees_its_stream_slot() {
    let svc = TestService::start_with(Options {
        stream: StreamOptions {
            max_per_app: NonZeroU32::new(1),
            ..StreamOptions::default()
        },
        serve: ServeOptions {
            keepalive_interval: Duration::from_millis(1000),
            keepalive_timeout: Duration::from_millis(1000),
            ..Options::default().serve
        },
        ..Default::default()
    })
    .await;
    seed(&svc.database_url, 3_000).await;
    let (proxy, freeze) = freezing_proxy(svc.address).await;
    let channel = Channel::from_shared(format!("http://{proxy}"))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut vanishing = client(channel, &svc.key);
    let _stream = open_listing(&mut vanishing).await;
    assert_error(
        list(&mut svc.client.clone(), Default::default()).await,
        Code::ResourceExhausted,
        "TOO_MANY_STREAMS",
    );

    freeze.send(true).unwrap();
    let stats = svc.stats.clone();
    eventually(
        Duration::from_secs(10),
        "the vanished client's stream ended",
        || stats.open.load(Ordering::Relaxed) == 0,
    )
    .await;
    let all = list(&mut svc.client.clone(), Default::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 3_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_sent_counts_what_left_the_buffer_not_what_entered_it() {
    let svc = TestService::start_with(Options {
        stream: StreamOptions {
            batch_size: 5_000,
            ..StreamOptions::default()
        },
        ..Default::default()
    })
    .await;
    seed(&svc.database_url, 8_000).await;
    let mut slow = small_window_client(&svc).await;
    let _stream = open_listing(&mut slow).await;
    let stats = svc.stats.clone();
    // The client reads no more: the window fills, then the buffer.
    eventually(Duration::from_secs(10), "the buffer fills", || {
        stats.buffered_bytes.load(Ordering::Relaxed) > 200_000
    })
    .await;
    let sent = stats.messages.load(Ordering::Relaxed);
    assert!(
        (1..3_000).contains(&sent),
        "{sent} counted as sent to a client that holds a 64 KiB window"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_methods_do_not_grow_the_metrics() {
    let svc = TestService::start().await;
    let call = |path: String| {
        let channel = svc.channel.clone();
        async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.unwrap();
            grpc.unary::<_, pb::GetCustomerResponse, _>(
                Request::new(pb::GetCustomerRequest::default()),
                path.parse().unwrap(),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err()
            .code()
        }
    };
    for i in 0..200 {
        let code = call(format!("/made.up{i}.Service/Method{i}")).await;
        assert_eq!(code, Code::Unimplemented);
        let code = call(format!("/customers.v1.CustomerService/Nope{i}")).await;
        assert_eq!(code, Code::Unauthenticated);
    }
    let text = scrape(&svc).await;
    assert!(!text.contains("made.up"), "{text}");
    assert!(!text.contains("Nope"), "{text}");
    assert!(
        text.contains(r#"grpc_service="unknown",grpc_method="unknown""#),
        "{text}"
    );
    assert!(text.len() < 32 << 10, "{} bytes of metrics", text.len());
}

/// The size of an error's trailers: `grpc-message` (percent-encoded, at most
/// three bytes per byte) and `grpc-status-details-bin` (base64).
fn trailer_bytes(status: &tonic::Status) -> usize {
    status.message().len() * 3 + status.details().len().div_ceil(3) * 4
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_stay_small_whatever_the_request_holds() {
    let mut svc = TestService::start().await;
    let status = get_by_id(&mut svc.client, &"x".repeat(10_000))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(bad_fields(Err::<(), _>(status.clone())), ["id"]);
    assert!(
        trailer_bytes(&status) < 4 << 10,
        "{}",
        trailer_bytes(&status)
    );

    let c = create_new(&mut svc.client, customer("mask@example.com")).await;
    let update = |paths: Vec<String>| {
        let mut client = svc.client.clone();
        let id = c.id.clone();
        async move {
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            update(&mut client, patch(&id), &paths).await
        }
    };
    // 250,000 unknown paths (3.5 MB): one violation, about the count.
    let status = update((0..250_000).map(|i| format!("nope{i:09}")).collect())
        .await
        .unwrap_err();
    assert_eq!(bad_fields(Err::<(), _>(status.clone())), ["update_mask"]);
    assert!(
        trailer_bytes(&status) < 4 << 10,
        "{}",
        trailer_bytes(&status)
    );

    // 100 long unknown paths: the first ten listed, the rest counted.
    let status = update(
        (0..100)
            .map(|i| format!("{i}{}", "p".repeat(5_000)))
            .collect(),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let details = status.get_error_details();
    assert_eq!(details.bad_request().unwrap().field_violations.len(), 10);
    assert!(
        status.message().ends_with("(and 90 more)"),
        "{}",
        status.message()
    );
    assert!(
        trailer_bytes(&status) < 4 << 10,
        "{}",
        trailer_bytes(&status)
    );
    assert_eq!(get_by_id(&mut svc.client, &c.id).await.unwrap(), c);
}

#[tokio::test(flavor = "multi_thread")]
async fn database_errors_reach_the_log_not_the_caller() {
    // A database that does not exist on a server that answers.
    let missing = database_url("no_such_database_here");
    let mut svc = TestService::start_on(missing, Options::fail_fast()).await;
    let status = get_by_id(&mut svc.client, "cus_01h2xcejqtf2nbrexx3vqjhp41")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "the database is unavailable; retry later");
    assert!(!format!("{status:?}").contains("no_such_database_here"));
}
