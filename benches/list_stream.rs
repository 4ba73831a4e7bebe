//! Streams every customer through ListCustomers and reports the time taken
//! and the server's peak memory, for several table sizes; then measures
//! GetCustomer by id (32 concurrent callers) for throughput and latency.
//!
//! The service runs as its own process (the release binary), so that its
//! peak resident memory (`VmHWM`) is its alone; PostgreSQL is a throwaway
//! cluster. Run with `cargo bench --bench list_stream`; set
//! `BENCH_SIZES=10000,100000,1000000` to choose the sizes.

#[path = "common/mod.rs"]
mod common;

use std::{
    net::{Ipv4Addr, TcpListener},
    process::{Command, Stdio},
    time::Instant,
};

use common::{Server, rss_kib, wait_serving};
use customers::{
    domain::{AppId, CustomerId},
    embedded_pg::{Cluster, ClusterOptions},
    pb::{self, customer_service_client::CustomerServiceClient},
    storage,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let root = std::env::temp_dir().join(format!("customers-bench-{}", std::process::id()));
    let cluster = Cluster::start(&ClusterOptions {
        root: root.clone(),
        throwaway: true,
        port: None,
        tls: None,
    })?;
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(run(&cluster, &sizes));
    cluster.stop();
    let _ = std::fs::remove_dir_all(root);
    result
}

async fn run(cluster: &Cluster, sizes: &[usize]) -> anyhow::Result<()> {
    println!("ListCustomers, every customer:");
    let mut gets = Vec::new();
    println!(
        "{:>9}  {:>9}  {:>12}  {:>14}  {:>14}",
        "customers", "seconds", "customers/s", "idle RSS (MiB)", "peak RSS (MiB)"
    );
    for &n in sizes {
        let db = format!("bench_{n}");
        storage::create_database(&cluster.url("postgres"), &db, None).await?;
        let url = cluster.url(&db);
        storage::migrate(&url).await?;
        seed(&url, n).await?;
        let pool = storage::pool(&url, &storage::PoolOptions::default())?;
        let key = customers::admin::create_key(&pool, AppId::DEFAULT)
            .await?
            .reveal();
        pool.close();

        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let server = Server(
            Command::new(env!("CARGO_BIN_EXE_customers"))
                .env("DATABASE_URL", &url)
                .env("CUSTOMERS_LISTEN", format!("127.0.0.1:{port}"))
                .env("RUST_LOG", "warn")
                // Measure the service, not the per-app limit.
                .env("CUSTOMERS_APP_RATE_LIMIT", "0")
                .stdout(Stdio::null())
                .spawn()?,
        );
        let endpoint = format!("http://127.0.0.1:{port}");
        wait_serving(&endpoint).await?;
        let idle = rss_kib(server.0.id(), "VmRSS")?;

        let mut client = CustomerServiceClient::connect(endpoint).await?;
        let started = Instant::now();
        let mut request = tonic::Request::new(pb::ListCustomersRequest::default());
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse()?);
        let mut stream = client.list_customers(request).await?.into_inner();
        let mut received = 0usize;
        let mut ids = Vec::new();
        while let Some(message) = stream.message().await? {
            received += 1;
            if ids.len() < 10_000 {
                ids.push(message.customer.map(|c| c.id).unwrap_or_default());
            }
        }
        let elapsed = started.elapsed();
        anyhow::ensure!(received == n, "streamed {received} of {n}");
        let peak = rss_kib(server.0.id(), "VmHWM")?;
        println!(
            "{n:>9}  {:>9.2}  {:>12.0}  {:>14.1}  {:>14.1}",
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64(),
            idle as f64 / 1024.0,
            peak as f64 / 1024.0
        );
        gets.push((n, get_by_id(&client, &key, &ids).await?));
    }
    println!("\nGetCustomer by id, 32 concurrent callers, 20000 calls:");
    println!(
        "{:>9}  {:>9}  {:>9}  {:>9}",
        "customers", "calls/s", "p50 ms", "p99 ms"
    );
    for (n, (rate, p50, p99)) in gets {
        println!("{n:>9}  {rate:>9.0}  {p50:>9.2}  {p99:>9.2}");
    }
    Ok(())
}

/// 20,000 GetCustomer calls from 32 concurrent callers; calls/s, p50, p99.
async fn get_by_id(
    client: &CustomerServiceClient<tonic::transport::Channel>,
    key: &str,
    ids: &[String],
) -> anyhow::Result<(f64, f64, f64)> {
    const CALLERS: usize = 32;
    const CALLS: usize = 20_000;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let mut client = client.clone();
        let key = key.to_owned();
        let ids = ids.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            for i in (caller..CALLS).step_by(CALLERS) {
                let mut request = tonic::Request::new(pb::GetCustomerRequest {
                    lookup: Some(pb::get_customer_request::Lookup::Id(
                        ids[i % ids.len()].clone(),
                    )),
                });
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {key}").parse()?);
                let call = Instant::now();
                client.get_customer(request).await?;
                latencies.push(call.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Ok((CALLS as f64 / elapsed, at(0.5), at(0.99)))
}

/// Inserts `n` customers with realistic field sizes, in chunks.
async fn seed(url: &str, n: usize) -> anyhow::Result<()> {
    let mut conn = AsyncPgConnection::establish(url).await?;
    let mut left = n;
    while left > 0 {
        let chunk = left.min(50_000);
        let ids: Vec<uuid::Uuid> = (0..chunk).map(|_| CustomerId::generate().uuid()).collect();
        diesel::sql_query(
            "INSERT INTO customers (app_id, id, email, name, phone, address_city,
                                    address_country, metadata)
             SELECT '00000000-0000-0000-0000-000000000000', id,
                    'customer' || n || '@example.com', 'Customer Number ' || n,
                    '+14155550100', 'San Francisco', 'US',
                    jsonb_build_object('plan', 'pro', 'seat_count', n::text)
             FROM (SELECT id, ord + $2 AS n
                   FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, ord)) AS t",
        )
        .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
        .bind::<diesel::sql_types::BigInt, _>((n - left) as i64)
        .execute(&mut conn)
        .await?;
        left -= chunk;
    }
    diesel::sql_query("ANALYZE customers")
        .execute(&mut conn)
        .await?;
    Ok(())
}
