//! Faults, end to end against a real PostgreSQL: the server killed, its
//! connections terminated, a restart in the middle of a stream, a pool held
//! by slow calls. Each test checks that nothing acknowledged is lost, that
//! failures are clean (UNAVAILABLE, never INTERNAL), and that the service
//! recovers without a restart.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use customers::{
    embedded_pg::{Cluster, ClusterOptions},
    pb,
    service::StreamOptions,
    storage::{self, PoolOptions},
};
use diesel_async::SimpleAsyncConnection;
use tonic::Code;

use crate::common::*;

/// A durable cluster of the test's own (fsync and synchronous commit on, as
/// in production: a throwaway cluster would lose acknowledged commits to a
/// kill), on a fixed port so that it can come back where it was.
struct OwnCluster {
    options: ClusterOptions,
    cluster: Option<Cluster>,
}

impl OwnCluster {
    async fn start(name: &str) -> (OwnCluster, String) {
        let root =
            std::env::temp_dir().join(format!("customers-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let options = ClusterOptions {
            root,
            throwaway: false,
            port: Some(free_port()),
            tls: None,
        };
        let mut own = OwnCluster {
            options,
            cluster: None,
        };
        own.restart().await;
        let cluster = own.cluster.as_ref().unwrap();
        storage::create_database(&cluster.url("postgres"), "customers", None)
            .await
            .unwrap();
        let url = cluster.url("customers");
        storage::migrate(&url).await.unwrap();
        (own, url)
    }

    /// Starts the cluster again, retrying while the killed one's backends
    /// still hold its shared memory.
    async fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let options = self.options.clone();
            match tokio::task::spawn_blocking(move || Cluster::start(&options))
                .await
                .unwrap()
            {
                Ok(cluster) => {
                    self.cluster = Some(cluster);
                    return;
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "PostgreSQL did not restart: {e:#}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// `kill -9` of the postmaster: no shutdown, no flush.
    async fn kill(&mut self) {
        let cluster = self.cluster.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(cluster.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        // Reaps the process; the signal it then sends finds nothing.
        tokio::task::spawn_blocking(move || cluster.stop())
            .await
            .unwrap();
    }

    /// A clean, fast shutdown (sessions are ended).
    async fn stop(&mut self) {
        if let Some(cluster) = self.cluster.take() {
            tokio::task::spawn_blocking(move || cluster.stop())
                .await
                .unwrap();
        }
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        if let Some(cluster) = self.cluster.take() {
            cluster.stop();
        }
        let _ = std::fs::remove_dir_all(&self.options.root);
    }
}

/// What concurrent writers were told: each acknowledged customer and the
/// last name acknowledged for it, and every error code.
#[derive(Default)]
struct Acknowledged {
    names: HashMap<String, u32>,
    errors: HashMap<Code, usize>,
    ok_after: Vec<Instant>,
}

/// Writers that create customers and rename them (`n1`, `n2`, ...) until
/// `stop`, recording what was acknowledged.
fn writers(
    client: &Client,
    n: usize,
    stop: &Arc<AtomicBool>,
    seen: &Arc<Mutex<Acknowledged>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|w| {
            let (mut client, stop, seen) = (client.clone(), stop.clone(), seen.clone());
            tokio::spawn(async move {
                let mut i = 0;
                let mut mine: Vec<(String, u32)> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let result = if i % 2 == 1 || mine.is_empty() {
                        create(&mut client, customer(&format!("w{w}-{i}@example.com")))
                            .await
                            .map(|r| {
                                let c = r.customer.unwrap();
                                mine.push((c.id.clone(), 0));
                                (c.id, 0)
                            })
                    } else {
                        let k = i % mine.len();
                        let (id, name) = mine[k].clone();
                        update(
                            &mut client,
                            pb::Customer {
                                name: format!("n{}", name + 1),
                                ..patch(&id)
                            },
                            &["name"],
                        )
                        .await
                        .map(|_| {
                            mine[k].1 = name + 1;
                            (id, name + 1)
                        })
                    };
                    let failed = result.is_err();
                    {
                        let mut seen = seen.lock().unwrap();
                        match result {
                            Ok((id, name)) => {
                                seen.names.insert(id, name);
                                seen.ok_after.push(Instant::now());
                            }
                            Err(status) => *seen.errors.entry(status.code()).or_default() += 1,
                        }
                    }
                    if failed {
                        // No busy loop while the database is away.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            })
        })
        .collect()
}

/// Waits until more than `n` writes were acknowledged after `since`.
async fn writes_succeed_after(
    seen: &Arc<Mutex<Acknowledged>>,
    since: Instant,
    n: usize,
    within: Duration,
) {
    eventually(within, "writes succeed again", || {
        seen.lock()
            .unwrap()
            .ok_after
            .iter()
            .filter(|t| **t > since)
            .count()
            > n
    })
    .await;
}

/// Every acknowledged customer exists with at least its acknowledged name
/// (a later rename may have committed without its answer arriving), and
/// has its events.
async fn assert_durable(client: &mut Client, seen: &Acknowledged) {
    for (id, name) in &seen.names {
        let stored = get_by_id(client, id)
            .await
            .unwrap_or_else(|e| panic!("acknowledged customer {id} is gone: {e:?}"));
        let stored_name: u32 = stored
            .name
            .strip_prefix('n')
            .map_or(0, |n| n.parse().unwrap());
        assert!(
            stored_name >= *name,
            "{id}: acknowledged name n{name}, stored {:?}",
            stored.name
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_postgres_under_load_loses_no_acknowledged_write() {
    let (mut pg, url) = OwnCluster::start("kill9").await;
    let mut svc = TestService::start_on(url.clone(), Options::fail_fast()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Acknowledged::default()));
    let tasks = writers(&svc.client, 8, &stop, &seen);
    eventually_async(Duration::from_secs(30), "writes under way", || {
        let seen = seen.clone();
        async move { seen.lock().unwrap().ok_after.len() > 50 }
    })
    .await;

    pg.kill().await;
    let killed = Instant::now();
    // Writes meanwhile fail (UNAVAILABLE), fast.
    let mut client = svc.client.clone();
    let started = Instant::now();
    assert_error(
        create(&mut client, customer("during@example.com")).await,
        Code::Unavailable,
        "DATABASE_UNAVAILABLE",
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(300)).await;

    pg.restart().await;
    let restarted = Instant::now();
    // The same service recovers: writes succeed again.
    writes_succeed_after(&seen, restarted, 20, Duration::from_secs(30)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    let before_kill = seen.ok_after.iter().filter(|t| **t < killed).count();
    assert!(
        before_kill > 20,
        "load before the kill: {before_kill} writes"
    );
    for code in seen.errors.keys() {
        assert_eq!(*code, Code::Unavailable, "errors: {:?}", seen.errors);
    }
    assert_durable(&mut svc.client, &seen).await;
    // Nothing lost, nothing invented: one created event per customer.
    let customers = svc.count("customers").await;
    assert!(customers as usize >= seen.names.len());
    assert_eq!(
        svc.count("customer_events WHERE type = 'created'").await,
        customers
    );
    svc.stop().await;
    pg.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn terminated_connections_fail_calls_cleanly_and_the_pool_heals() {
    let svc = TestService::start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Acknowledged::default()));
    let tasks = writers(&svc.client, 8, &stop, &seen);
    let mut admin = svc.sql().await;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        admin
            .batch_execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'customers'
                 AND pid <> pg_backend_pid()",
            )
            .await
            .unwrap();
    }
    let calm = Instant::now();
    writes_succeed_after(&seen, calm, 50, Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    for code in seen.errors.keys() {
        assert_eq!(*code, Code::Unavailable, "errors: {:?}", seen.errors);
    }
    assert!(
        seen.errors.values().sum::<usize>() > 0,
        "terminations were noticed"
    );
    assert_durable(&mut svc.client.clone(), &seen).await;
    // No connection is left inside a transaction.
    assert_eq!(svc.backends("state LIKE 'idle in transaction%'").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_during_a_listing_ends_it_resumably_and_resuming_completes_it() {
    let (mut pg, url) = OwnCluster::start("liststream").await;
    seed(&url, 3_000).await;
    let svc = TestService::start_on(
        url,
        Options {
            stream: StreamOptions {
                batch_size: 50,
                ..Default::default()
            },
            ..Options::fail_fast()
        },
    )
    .await;
    let mut client = small_window_client(&svc).await;
    let mut stream = client
        .list_customers(pb::ListCustomersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(
            stream
                .message()
                .await
                .unwrap()
                .unwrap()
                .customer
                .unwrap()
                .id,
        );
    }
    pg.stop().await;
    // What was buffered arrives, then a resumable error.
    let status = loop {
        match stream.message().await {
            Ok(Some(m)) => ids.push(m.customer.unwrap().id),
            Ok(None) => panic!("the listing ended as if complete"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(ids.len() < 3_000);
    pg.restart().await;
    let resumed = eventually_list(&mut client, ids.last().unwrap()).await;
    ids.extend(resumed.into_iter().map(|c| c.id));
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "no customer twice");
    assert_eq!(ids.len(), 3_000, "no customer missing");
    pg.stop().await;
}

/// The rest of the default listing after `last`, retrying while the
/// database comes back.
async fn eventually_list(client: &mut Client, last: &str) -> Vec<pb::Customer> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match list(
            client,
            pb::ListCustomersRequest {
                resume_after: last.to_owned(),
                ..Default::default()
            },
        )
        .await
        {
            Ok(rest) => return rest,
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("resuming failed: {status:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_held_by_slow_calls_answers_others_unavailable_within_the_acquire_timeout() {
    let svc = TestService::start_with(Options {
        pool: PoolOptions {
            max_size: 2,
            acquire_timeout: Duration::from_millis(500),
            ..PoolOptions::default()
        },
        ..Default::default()
    })
    .await;
    let mut client = svc.client.clone();
    let c = create_new(&mut client, customer("held@example.com")).await;
    // Two renames wait on a row locked from outside: they hold the pool.
    let mut lock = svc.sql().await;
    lock.batch_execute("BEGIN; LOCK TABLE customers IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut slow = Vec::new();
    for i in 0..2 {
        let mut client = client.clone();
        let id = c.id.clone();
        slow.push(tokio::spawn(async move {
            update(
                &mut client,
                pb::Customer {
                    name: format!("slow {i}"),
                    ..patch(&id)
                },
                &["name"],
            )
            .await
        }));
    }
    eventually_async(Duration::from_secs(5), "the pool is held", || async {
        svc.backends("wait_event_type = 'Lock'").await == 2
    })
    .await;
    for _ in 0..5 {
        let started = Instant::now();
        assert_error(
            get_by_id(&mut client, &c.id).await,
            Code::Unavailable,
            "DATABASE_UNAVAILABLE",
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_secs(2),
            "answered after {took:?}, not at the 500 ms acquire timeout"
        );
    }
    drop(lock);
    for call in slow {
        call.await.unwrap().unwrap();
    }
    get_by_id(&mut client, &c.id).await.unwrap();
}

/// A read or a write whose future is dropped halfway through its
/// transaction (as an HTTP handler's is when its client goes away) leaves
/// no open transaction in the pool: the next calls on the same
/// one-connection pool work, and the dropped write wrote nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_dropped_halfway_leaves_nothing_open_in_the_pool() {
    use customers::{
        context::RequestContext,
        domain::{AppId, Customer, CustomerFields, ListFilter, Lookup},
        storage::customers as store,
    };
    use tokio_util::sync::CancellationToken;

    let svc = TestService::start().await;
    let pool = storage::pool(
        &svc.database_url,
        &PoolOptions {
            max_size: 1,
            ..PoolOptions::default()
        },
    )
    .unwrap();
    let ctx = RequestContext::new(AppId::DEFAULT, Duration::from_secs(30));
    let fields = |email: &str| {
        CustomerFields {
            email: email.into(),
            ..Default::default()
        }
        .validate("")
        .unwrap()
    };
    for round in ["read", "write"] {
        // Every read and write of customers waits behind this lock.
        let mut locker = svc.sql().await;
        locker
            .batch_execute("BEGIN; LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        let cancel = CancellationToken::new();
        let stuck = Duration::from_millis(300);
        let dropped = match round {
            "read" => tokio::time::timeout(stuck, async {
                store::list_batch::<Customer>(
                    &pool,
                    &ctx,
                    &ListFilter::default(),
                    None,
                    10,
                    &cancel,
                )
                .await
                .map(|_| ())
            })
            .await
            .is_err(),
            _ => tokio::time::timeout(stuck, async {
                store::create(&pool, &ctx, &fields("dropped@example.com"))
                    .await
                    .map(|_| ())
            })
            .await
            .is_err(),
        };
        assert!(dropped, "the {round} waited for the lock, and was dropped");
        locker.batch_execute("COMMIT").await.unwrap();
        let (created, _) =
            store::create(&pool, &ctx, &fields(&format!("after-{round}@example.com")))
                .await
                .unwrap_or_else(|e| panic!("a write after the dropped {round}: {e}"));
        store::get(
            &pool,
            &ctx,
            &Lookup::Id(created.id),
            &CancellationToken::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("a read after the dropped {round}: {e}"));
    }
    assert_eq!(
        svc.count("customers WHERE email = 'dropped@example.com'")
            .await,
        0
    );
    eventually_async(
        Duration::from_secs(5),
        "no backend left idle in a transaction",
        || async { svc.backends("state LIKE 'idle in transaction%'").await == 0 },
    )
    .await;
}
