//! Network round trips between the service and PostgreSQL, per RPC,
//! counted by a TCP proxy between the two: a round trip is the client
//! writing after the server has answered (or writing first). Each RPC is
//! made once to warm up (connection, statement cache, key cache), then
//! counted; the counts are printed and held to a bound.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use customers::{pb, server::ServeOptions, storage::PoolOptions};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Mutex,
};

use crate::common::*;

/// Who wrote last on one proxied connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Nobody,
    Client,
    Server,
}

/// A proxy to `target` that counts round trips over all its connections.
async fn counting_proxy(target: String) -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let trips = Arc::new(AtomicU64::new(0));
    let counter = trips.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(&target).await.unwrap();
            client.set_nodelay(true).unwrap();
            server.set_nodelay(true).unwrap();
            let last = Arc::new(Mutex::new(Side::Nobody));
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pipe(
                client_read,
                server_write,
                Side::Client,
                last.clone(),
                counter.clone(),
            ));
            tokio::spawn(pipe(
                server_read,
                client_write,
                Side::Server,
                last,
                counter.clone(),
            ));
        }
    });
    (port, trips)
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    side: Side,
    last: Arc<Mutex<Side>>,
    trips: Arc<AtomicU64>,
) {
    let mut buf = vec![0; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        {
            let mut last = last.lock().await;
            if side == Side::Client && *last != Side::Client {
                trips.fetch_add(1, Ordering::SeqCst);
            }
            *last = side;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trips_per_rpc_are_few() {
    let database = fresh_database().await;
    // postgres://user[:password]@127.0.0.1:PORT/db → the proxy's port.
    let (head, db) = database.url.rsplit_once('/').unwrap();
    let (userinfo, host) = head.rsplit_once('@').unwrap();
    let (port, trips) = counting_proxy(host.to_owned()).await;
    let proxied = format!("{userinfo}@127.0.0.1:{port}/{db}");
    let mut svc = TestService::start_on(
        proxied,
        Options {
            serve: ServeOptions {
                // One readiness ping at start, none while counting; the key
                // is checked once, then cached for the whole test.
                health_check_interval: Duration::from_secs(3600),
                auth: customers::auth::AuthOptions {
                    cache_ttl: Duration::from_secs(3600),
                    ..Default::default()
                },
                ..Options::default().serve
            },
            // One connection: each statement is prepared on it by the
            // warm-up call (with more, a call could land on a connection
            // that has not prepared its statements yet, and count their
            // preparation).
            pool: PoolOptions {
                max_size: 1,
                ..PoolOptions::default()
            },
            // Change notifications on a connection of their own, outside
            // the count: what is counted is each call's own work.
            events: customers::service::EventOptions {
                listen_url: Some(database.url.clone()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await;

    let mut c = customer("trips@example.com");
    c.external_id = Some("trips-1".into());
    c.provider_ids.insert("stripe".into(), "cus_trips".into());
    let created = create_new(&mut svc.client, c.clone()).await;
    let id = created.id.clone();

    let mut counts = Vec::new();
    macro_rules! count {
        ($name:expr, $call:expr) => {{
            // Warm up, then count.
            let _ = $call;
            let before = trips.load(Ordering::SeqCst);
            let _ = $call;
            counts.push(($name, trips.load(Ordering::SeqCst) - before));
        }};
    }
    let client = &mut svc.client;
    count!("GetCustomer by id", get_by_id(client, &id).await.unwrap());
    count!(
        "GetCustomer by external id",
        client
            .get_customer(pb::GetCustomerRequest {
                lookup: Some(pb::get_customer_request::Lookup::ExternalId(
                    "trips-1".into()
                )),
            })
            .await
            .unwrap()
    );
    count!(
        "CreateCustomer, repeated (by external id)",
        create(client, c.clone()).await.unwrap()
    );
    let mut by_email = customer("trips@example.com");
    by_email.external_id = None;
    count!(
        "CreateCustomer, repeated (by email)",
        create(client, by_email.clone()).await.unwrap()
    );
    let mut n = 0;
    count!("CreateCustomer, new", {
        n += 1;
        create_new(client, customer(&format!("new{n}@example.com"))).await
    });
    count!("UpdateCustomer", {
        n += 1;
        let mut p = patch(&id);
        p.name = format!("Name {n}");
        update(client, p, &[]).await.unwrap()
    });
    count!(
        "ListCustomers (one batch)",
        list(client, Default::default()).await.unwrap()
    );

    println!("round trips to PostgreSQL per call:");
    for (name, trips) in &counts {
        println!("{trips:>3}  {name}");
    }
    for (name, trips) in counts {
        // A read by id or external id: BEGIN with the scope, the row (its
        // provider ids in it) and COMMIT, pipelined. A listing batch: BEGIN
        // with the scope and the page, then COMMIT. Writes: BEGIN with the
        // scope and the first statement, then each statement that depends
        // on an answer, the event, COMMIT.
        let bound = match name {
            "GetCustomer by id" => 1,
            "GetCustomer by external id" => 1,
            // The holder looked up as a read (one round trip), then the
            // insert's transaction.
            "CreateCustomer, new" => 4,
            // Found by that read.
            "CreateCustomer, repeated (by external id)" => 1,
            "CreateCustomer, repeated (by email)" => 1,
            "ListCustomers (one batch)" => 2,
            _ => 4,
        };
        assert!(
            trips <= bound,
            "{name}: {trips} round trips (at most {bound})"
        );
    }
    drop(database);
}
