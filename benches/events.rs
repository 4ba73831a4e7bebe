//! Change events, measured end to end with the release binary on a durable
//! PostgreSQL (fsync on), two service processes on one database (replicas
//! A and B):
//!
//! - CreateCustomer throughput and latency at 32 concurrent callers on A
//!   (every create appends its event), with no watch open, then with a
//!   watch open on each replica;
//! - write-to-event latency: callers create customers at a steady pace on A
//!   while one watch on A (same replica) and one on B (woken through
//!   LISTEN/NOTIFY only) receive them; latency is the time the watcher got
//!   the event minus the event's `create_time` (taken in the writing
//!   transaction just before its commit, on the same machine's clock);
//! - replay: `BENCH_EVENTS` events (default 100,000) with realistic
//!   customers, streamed to one watch from the start, in events/s;
//! - the cost of 200 idle watches on A: memory (RSS), CPU time and database
//!   reads over `BENCH_SECONDS` idle, against the same period with none.
//!
//! ```sh
//! cargo bench --bench events
//! BENCH_SECONDS=5 BENCH_EVENTS=20000 cargo bench --bench events   # a quick run
//! ```

#[path = "common/mod.rs"]
mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use common::{
    Auth, Server, authorized, cpu_time, default_app_key, ms, on_durable_cluster, owner_connection,
    percentile, rss_kib, scrape, spawn_service,
};
use customers::{
    domain::AppId,
    embedded_pg::Cluster,
    pb::{self, customer_service_client::CustomerServiceClient},
    storage,
};
use tonic::transport::Channel;

const CALLERS: usize = 32;
const CHANNELS: usize = 4;
/// Callers of the latency run, each pausing between creates.
const PACED_CALLERS: usize = 8;
const PACE: Duration = Duration::from_millis(25);
const IDLE_WATCHES: usize = 200;

type Client = CustomerServiceClient<Channel>;

fn main() -> anyhow::Result<()> {
    let number = |name: &str, default: u64| -> anyhow::Result<u64> {
        match std::env::var(name) {
            Ok(v) => Ok(v.trim().replace('_', "").parse()?),
            Err(_) => Ok(default),
        }
    };
    let seconds = number("BENCH_SECONDS", 10)?.max(1);
    let events = number("BENCH_EVENTS", 100_000)?.max(1000);
    on_durable_cluster("events", async |cluster| {
        run(cluster, Duration::from_secs(seconds), events).await
    })
}

/// A replica: no call rate limit, no watch limit.
async fn start_service(url: &str) -> anyhow::Result<(Server, String, String)> {
    let env = [
        ("CUSTOMERS_APP_RATE_LIMIT", "0"),
        ("CUSTOMERS_APP_MAX_WATCHES", "0"),
    ];
    let (server, endpoint, metrics) = spawn_service(url, true, &env).await?;
    Ok((server, endpoint, metrics.unwrap_or_default()))
}

async fn clients(endpoint: &str, n: usize) -> anyhow::Result<Vec<Client>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
            .connect()
            .await?;
        out.push(CustomerServiceClient::new(channel));
    }
    Ok(out)
}

static EMAILS: AtomicU64 = AtomicU64::new(0);

fn new_customer() -> pb::CreateCustomerRequest {
    let n = EMAILS.fetch_add(1, Ordering::Relaxed);
    pb::CreateCustomerRequest {
        customer: Some(pb::Customer {
            email: format!("event{n}@example.com"),
            name: format!("Event Customer {n}"),
            metadata: [("plan".to_owned(), "pro".to_owned())].into(),
            ..Default::default()
        }),
    }
}

/// Creates for `duration` with `callers` callers (pausing `pace` between
/// calls, if any); returns calls/s and the sorted latencies.
async fn create_load(
    clients: &[Client],
    auth: &Auth,
    callers: usize,
    duration: Duration,
    pace: Option<Duration>,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let stop = Instant::now() + duration;
    let mut tasks = Vec::new();
    for i in 0..callers {
        let mut client = clients[i % clients.len()].clone();
        let auth = auth.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < stop {
                let started = Instant::now();
                let response = client
                    .create_customer(authorized(new_customer(), &auth))
                    .await?;
                anyhow::ensure!(response.into_inner().created, "a create found a customer");
                latencies.push(started.elapsed());
                if let Some(pace) = pace {
                    tokio::time::sleep(pace).await;
                }
            }
            Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    all.sort();
    Ok((all.len() as f64 / duration.as_secs_f64(), all))
}

/// A watch that records, for each event, when it arrived after its
/// `create_time`; stops when `stop` is set.
fn latency_watch(
    mut client: Client,
    auth: Auth,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<anyhow::Result<Vec<Duration>>> {
    tokio::spawn(async move {
        let mut stream = client
            .watch_customer_events(authorized(pb::WatchCustomerEventsRequest::default(), &auth))
            .await?
            .into_inner();
        let mut latencies = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let message =
                match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
                    Ok(message) => message?,
                    Err(_) => continue,
                };
            let Some(message) = message else { break };
            let Some(event) = message.event else { continue };
            let created = SystemTime::try_from(event.create_time.unwrap_or_default())?;
            let now = SystemTime::now();
            latencies.push(now.duration_since(created).unwrap_or_default());
        }
        Ok(latencies)
    })
}

async fn run(cluster: &Cluster, duration: Duration, events: u64) -> anyhow::Result<()> {
    storage::create_database(&cluster.url("postgres"), "bench", None).await?;
    let url = cluster.url("bench");
    storage::migrate(&url).await?;
    let auth = default_app_key(&url).await?;
    let (a, endpoint_a, metrics_a) = start_service(&url).await?;
    let (_b, endpoint_b, _) = start_service(&url).await?;
    let on_a = clients(&endpoint_a, CHANNELS).await?;
    let on_b = clients(&endpoint_b, 1).await?;
    let mut report = Vec::new();

    // 1. Create throughput.
    create_load(&on_a, &auth, CALLERS, Duration::from_secs(1), None).await?;
    let (rate, lat) = create_load(&on_a, &auth, CALLERS, duration, None).await?;
    report.push(format!(
        "CreateCustomer, {CALLERS} callers, no watch open: {rate:.0} calls/s, p50 {}, p99 {}",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let w1 = latency_watch(on_a[0].clone(), auth.clone(), stop.clone());
    let w2 = latency_watch(on_b[0].clone(), auth.clone(), stop.clone());
    let (rate, lat) = create_load(&on_a, &auth, CALLERS, duration, None).await?;
    report.push(format!(
        "CreateCustomer, {CALLERS} callers, a watch open on each replica: {rate:.0} calls/s, p50 {}, p99 {}",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    ));
    let mut loaded_same = w1;
    let mut loaded_other = w2;

    // 2. Write-to-event latency at a steady pace (the same watches, their
    // records of the full-speed run dropped).
    stop.store(true, Ordering::Relaxed);
    let under_load_same = loaded_same.await??;
    let under_load_other = loaded_other.await??;
    let stop = Arc::new(AtomicBool::new(false));
    loaded_same = latency_watch(on_a[0].clone(), auth.clone(), stop.clone());
    loaded_other = latency_watch(on_b[0].clone(), auth.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rate, _) = create_load(&on_a, &auth, PACED_CALLERS, duration, Some(PACE)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for (name, latencies) in [
        ("same replica, steady pace", loaded_same.await??),
        (
            "other replica (LISTEN/NOTIFY), steady pace",
            loaded_other.await??,
        ),
        ("same replica, during the full-speed run", under_load_same),
        ("other replica, during the full-speed run", under_load_other),
    ] {
        let mut latencies = latencies;
        latencies.sort();
        report.push(format!(
            "Write-to-event latency, {name}: p50 {}, p99 {} ({} events{})",
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            latencies.len(),
            if name.contains("steady") {
                format!(", {rate:.0} creates/s")
            } else {
                String::new()
            }
        ));
    }

    // 3. Replay.
    let db = owner_connection(&url).await?;
    let head: i64 = db
        .query_one(
            "SELECT position FROM customer_event_heads \
             WHERE app_id = '00000000-0000-0000-0000-000000000000'",
            &[],
        )
        .await?
        .get(0);
    seed_events(&db, events as i64).await?;
    let mut client = on_a[0].clone();
    let token = customers::domain::ResumeToken {
        app: AppId::DEFAULT,
        position: head as u64,
    }
    .encode();
    let started = Instant::now();
    let mut stream = client
        .watch_customer_events(authorized(
            pb::WatchCustomerEventsRequest {
                resume_token: token,
                ..Default::default()
            },
            &auth,
        ))
        .await?
        .into_inner();
    let mut received = 0u64;
    while received < events {
        let message = stream
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("ended"))?;
        if message.event.is_some() {
            received += 1;
        }
    }
    let replay = started.elapsed();
    drop(stream);
    report.push(format!(
        "Replay of {events} events from a resume token: {:.1} s, {:.0} events/s",
        replay.as_secs_f64(),
        events as f64 / replay.as_secs_f64()
    ));

    // 4. Idle watches.
    let pid = a.0.id();
    let idle = |label: &'static str| {
        let metrics = metrics_a.clone();
        async move {
            let reads_before = scrape(&metrics, "customers_event_").await?;
            let cpu_before = cpu_time(pid)?;
            tokio::time::sleep(duration).await;
            let cpu = cpu_time(pid)? - cpu_before;
            let reads = scrape(&metrics, "customers_event_").await? - reads_before;
            let rss = rss_kib(pid, "VmRSS")?;
            anyhow::Ok(format!(
                "{label}: RSS {:.1} MiB, CPU {:.2} s over {} s idle, {reads} event reads",
                rss as f64 / 1024.0,
                cpu.as_secs_f64(),
                duration.as_secs()
            ))
        }
    };
    report.push(idle("No watch open").await?);
    let mut idle_watches = Vec::new();
    for i in 0..IDLE_WATCHES {
        let mut client = on_a[i % on_a.len()].clone();
        let mut stream = client
            .watch_customer_events(authorized(pb::WatchCustomerEventsRequest::default(), &auth))
            .await?
            .into_inner();
        stream.message().await?;
        idle_watches.push(stream);
    }
    // Each new watch catches up once (one read) after its first message:
    // let that pass.
    tokio::time::sleep(Duration::from_secs(2)).await;
    report.push(idle("200 idle watches").await?);
    drop(idle_watches);

    println!(
        "\nChange events (2 replicas on one durable PostgreSQL, {} s per run):",
        duration.as_secs()
    );
    for line in report {
        println!("- {line}");
    }
    Ok(())
}

/// Appends `n` events with realistic customers to the default app's log,
/// as the tables' owner, in one statement.
async fn seed_events(db: &tokio_postgres::Client, n: i64) -> anyhow::Result<()> {
    db.batch_execute(&format!(
        "WITH head AS (
             UPDATE customer_event_heads SET position = position + {n}
             WHERE app_id = '00000000-0000-0000-0000-000000000000'
             RETURNING position - {n} AS start)
         INSERT INTO customer_events (app_id, position, id, type, customer_id, customer, changed_fields)
         SELECT '00000000-0000-0000-0000-000000000000', head.start + g, gen_random_uuid(),
                'updated', c.id,
                jsonb_build_object(
                    'id', c.id, 'email', 'replay' || g || '@example.com',
                    'name', 'Replay Customer ' || g, 'phone', '+33612345678',
                    'address_city', 'Paris', 'address_country', 'FR',
                    'metadata', jsonb_build_object('plan', 'pro', 'seats', g::text),
                    'state', 'active', 'revision', 2,
                    'create_time', now(), 'update_time', now(),
                    'provider_ids', jsonb_build_object('stripe', 'cus_' || g)),
                '{{name}}'
         FROM head, generate_series(1, {n}) g,
              LATERAL (SELECT gen_random_uuid() AS id) c;
         ANALYZE customer_events"
    ))
    .await?;
    Ok(())
}
