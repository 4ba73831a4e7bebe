//! A soak run and a bad-key flood, against the release binary on a durable
//! PostgreSQL. Not part of CI.
//!
//! 1. Good calls alone, then good calls during a flood of made-up API keys
//!    (`FLOOD_RATE` calls/s, default 5,000, each with a fresh well-formed
//!    key): the p50/p99 of the good calls in both, and the database reads
//!    the flood caused (`customers_auth_lookups_total`).
//! 2. `SOAK_CALLS` (default 1,000,000) mixed calls from 32 callers: creates,
//!    gets by id and external id, updates, short listings and short-lived
//!    watches. The service's RSS and open database connections are sampled
//!    every tenth of the way: they must stay flat.
//!
//! ```sh
//! cargo bench --bench soak
//! SOAK_CALLS=100000 FLOOD_SECONDS=5 cargo bench --bench soak   # a quick run
//! ```

#[path = "common/mod.rs"]
mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    Auth, authorized, default_app_key, on_durable_cluster, percentile, rss_kib, scrape,
    spawn_service,
};
use customers::{
    auth::ApiKey,
    domain::AppId,
    embedded_pg::Cluster,
    pb::{self, customer_service_client::CustomerServiceClient, get_customer_request::Lookup},
    storage,
};
use tonic::transport::Channel;

const CALLERS: usize = 32;
const CHANNELS: usize = 4;

type Client = CustomerServiceClient<Channel>;

fn number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => Ok(v.trim().replace('_', "").parse()?),
        Err(_) => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    on_durable_cluster("soak", async |cluster| run(cluster).await)
}

/// Milliseconds with two decimals: good calls are fast.
fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// GetCustomer by id from `callers` callers for `duration`: sorted latencies.
async fn good_calls(
    clients: &[Client],
    auth: &Auth,
    id: &str,
    callers: usize,
    duration: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let stop = Instant::now() + duration;
    let mut tasks = Vec::new();
    for i in 0..callers {
        let (mut client, auth, id) = (
            clients[i % clients.len()].clone(),
            auth.clone(),
            id.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < stop {
                let started = Instant::now();
                client
                    .get_customer(authorized(
                        pb::GetCustomerRequest {
                            lookup: Some(Lookup::Id(id.clone())),
                        },
                        &auth,
                    ))
                    .await?;
                latencies.push(started.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    all.sort();
    Ok(all)
}

async fn run(cluster: &Cluster) -> anyhow::Result<()> {
    let soak_calls = number("SOAK_CALLS", 1_000_000)?;
    let flood_rate = number("FLOOD_RATE", 5_000)?;
    let flood_seconds = number("FLOOD_SECONDS", 10)?;
    storage::create_database(&cluster.url("postgres"), "bench", None).await?;
    let url = cluster.url("bench");
    storage::migrate(&url).await?;
    let auth = default_app_key(&url).await?;

    let (server, endpoint, metrics) = spawn_service(
        &url,
        true,
        // The flood's refusals would each log a warning.
        &[("CUSTOMERS_APP_RATE_LIMIT", "0"), ("RUST_LOG", "error")],
    )
    .await?;
    let metrics = metrics.unwrap_or_default();
    let pid = server.0.id();
    let mut clients = Vec::new();
    for _ in 0..CHANNELS {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())?
            .connect()
            .await?;
        clients.push(CustomerServiceClient::new(channel));
    }
    let mut first = clients[0].clone();
    let seed = first
        .create_customer(authorized(
            pb::CreateCustomerRequest {
                customer: Some(pb::Customer {
                    email: "soak@example.com".into(),
                    ..Default::default()
                }),
            },
            &auth,
        ))
        .await?
        .into_inner()
        .customer
        .unwrap();

    // 1. The bad-key flood.
    let window = Duration::from_secs(flood_seconds);
    let alone = good_calls(&clients, &auth, &seed.id, 8, window).await?;
    let lookups = "customers_auth_lookups_total";
    let lookups_before = scrape(&metrics, lookups).await?;
    let flooding = Arc::new(AtomicBool::new(true));
    let refused = Arc::new(AtomicU64::new(0));
    // The flood's own connections (a connection carries at most
    // --max-concurrent-streams calls at once, and refused calls are held
    // until the next load of the key ids, up to a second).
    let mut flood_channels = Vec::new();
    for _ in 0..32 {
        flood_channels.push(
            tonic::transport::Endpoint::from_shared(endpoint.clone())?
                .connect()
                .await?,
        );
    }
    let sent = Arc::new(AtomicU64::new(0));
    let flooder = {
        let (flooding, refused, sent) = (flooding.clone(), refused.clone(), sent.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let per_tick = (flood_rate / 100).max(1);
            // At most this many made-up calls in flight: the rest of a tick's
            // share is skipped (and the achieved rate reported).
            let slots = Arc::new(tokio::sync::Semaphore::new(6_000));
            let mut inflight = tokio::task::JoinSet::new();
            let mut n = 0usize;
            while flooding.load(Ordering::Relaxed) {
                tick.tick().await;
                for _ in 0..per_tick {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        break;
                    };
                    n += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                    let mut client = CustomerServiceClient::new(
                        flood_channels[n % flood_channels.len()].clone(),
                    );
                    let bad: Auth = format!("Bearer {}", ApiKey::generate(AppId::DEFAULT).reveal())
                        .parse()
                        .unwrap();
                    let refused = refused.clone();
                    inflight.spawn(async move {
                        let result = client
                            .get_customer(authorized(
                                pb::GetCustomerRequest {
                                    lookup: Some(Lookup::Id(
                                        "cus_01h2xcejqtf2nbrexx3vqjhp41".into(),
                                    )),
                                },
                                &bad,
                            ))
                            .await;
                        if result.is_err_and(|s| s.code() == tonic::Code::Unauthenticated) {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        drop(slot);
                    });
                }
                while inflight.try_join_next().is_some() {}
            }
            while inflight.join_next().await.is_some() {}
        })
    };
    let during = good_calls(&clients, &auth, &seed.id, 8, window).await?;
    flooding.store(false, Ordering::Relaxed);
    flooder.await?;
    let flood_lookups = scrape(&metrics, lookups).await? - lookups_before;
    let refused = refused.load(Ordering::Relaxed);
    println!(
        "\nBad-key flood: {flood_rate}/s asked, {} sent ({:.0}/s), {refused} refused UNAUTHENTICATED, \
         {flood_lookups} key lookups (customers_auth_lookups_total) in {flood_seconds} s:",
        sent.load(Ordering::Relaxed),
        sent.load(Ordering::Relaxed) as f64 / flood_seconds as f64
    );
    println!(
        "- good GetCustomer, 8 callers, alone:       {} calls, p50 {}, p99 {}",
        alone.len(),
        ms(percentile(&alone, 0.5)),
        ms(percentile(&alone, 0.99))
    );
    println!(
        "- good GetCustomer, 8 callers, under flood: {} calls, p50 {}, p99 {}",
        during.len(),
        ms(percentile(&during, 0.5)),
        ms(percentile(&during, 0.99))
    );

    // 2. The soak.
    println!("\nSoak: {soak_calls} mixed calls from {CALLERS} callers");
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let codes = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        String,
        u64,
    >::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CALLERS {
        let (mut client, auth, done, errors, codes) = (
            clients[c % CHANNELS].clone(),
            auth.clone(),
            done.clone(),
            errors.clone(),
            codes.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // (id, external id) of customers this caller created.
            let mut mine: Vec<(String, String)> = Vec::new();
            let mut i = 0u64;
            while done.fetch_add(1, Ordering::Relaxed) < soak_calls {
                i += 1;
                let outcome: Result<(), tonic::Status> = match i % 10 {
                    0 | 1 => client
                        .create_customer(authorized(
                            pb::CreateCustomerRequest {
                                customer: Some(pb::Customer {
                                    email: format!("s{c}-{i}@example.com"),
                                    external_id: Some(format!("s{c}-{i}")),
                                    metadata: [("n".to_owned(), i.to_string())].into(),
                                    ..Default::default()
                                }),
                            },
                            &auth,
                        ))
                        .await
                        .map(|r| {
                            let customer = r.into_inner().customer.unwrap();
                            let id = (customer.id, customer.external_id.unwrap_or_default());
                            if mine.len() < 1000 {
                                mine.push(id);
                            } else {
                                mine[(i as usize) % 1000] = id;
                            }
                        }),
                    2 if !mine.is_empty() => client
                        .update_customer(authorized(
                            pb::UpdateCustomerRequest {
                                customer: Some(pb::Customer {
                                    id: mine[(i as usize) % mine.len()].0.clone(),
                                    name: format!("Name {i}"),
                                    ..Default::default()
                                }),
                                update_mask: Some(prost_types::FieldMask {
                                    paths: vec!["name".into()],
                                }),
                                ..Default::default()
                            },
                            &auth,
                        ))
                        .await
                        .map(|_| ()),
                    3 => {
                        let request = pb::ListCustomersRequest {
                            limit: 20,
                            ..Default::default()
                        };
                        match client.list_customers(authorized(request, &auth)).await {
                            Ok(stream) => {
                                let mut stream = stream.into_inner();
                                loop {
                                    match stream.message().await {
                                        Ok(Some(_)) => {}
                                        Ok(None) => break Ok(()),
                                        Err(status) => break Err(status),
                                    }
                                }
                            }
                            Err(status) => Err(status),
                        }
                    }
                    4 if i % 100 == 4 => {
                        // A short-lived watch: its first message, then gone.
                        match client
                            .watch_customer_events(authorized(
                                pb::WatchCustomerEventsRequest::default(),
                                &auth,
                            ))
                            .await
                        {
                            Ok(stream) => stream.into_inner().message().await.map(|_| ()),
                            Err(status) => Err(status),
                        }
                    }
                    5 if !mine.is_empty() => client
                        .get_customer(authorized(
                            pb::GetCustomerRequest {
                                lookup: Some(Lookup::ExternalId(
                                    mine[(i as usize) % mine.len()].1.clone(),
                                )),
                            },
                            &auth,
                        ))
                        .await
                        .map(|_| ()),
                    _ if !mine.is_empty() => client
                        .get_customer(authorized(
                            pb::GetCustomerRequest {
                                lookup: Some(Lookup::Id(mine[(i as usize) % mine.len()].0.clone())),
                            },
                            &auth,
                        ))
                        .await
                        .map(|_| ()),
                    _ => Ok(()),
                };
                if let Err(status) = outcome {
                    errors.fetch_add(1, Ordering::Relaxed);
                    *codes
                        .lock()
                        .unwrap()
                        .entry(format!("{:?}", status.code()))
                        .or_default() += 1;
                }
            }
        }));
    }
    let mut samples = Vec::new();
    let mut next = soak_calls / 10;
    while tasks.iter().any(|t| !t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = done.load(Ordering::Relaxed).min(soak_calls);
        if n >= next {
            let rss = rss_kib(pid, "VmRSS")?;
            let connections = scrape(&metrics, "customers_db_pool_connections").await?;
            samples.push((n, rss, connections));
            next += soak_calls / 10;
        }
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed();
    let rss = rss_kib(pid, "VmRSS")?;
    let connections = scrape(&metrics, "customers_db_pool_connections").await?;
    samples.push((soak_calls, rss, connections));
    println!(
        "{soak_calls} calls in {:.0} s ({:.0} calls/s), {} failed: {:?}",
        elapsed.as_secs_f64(),
        soak_calls as f64 / elapsed.as_secs_f64(),
        errors.load(Ordering::Relaxed),
        codes.lock().unwrap()
    );
    println!("calls done | service RSS | pool connections");
    for (n, rss, connections) in samples {
        println!("{n:>10} | {:>7.1} MiB | {connections}", rss as f64 / 1024.0);
    }
    println!(
        "peak RSS (VmHWM): {:.1} MiB",
        rss_kib(pid, "VmHWM")? as f64 / 1024.0
    );
    drop(server);
    Ok(())
}
