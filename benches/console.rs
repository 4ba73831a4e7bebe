//! The operator console at scale: how long its customers page, its search
//! and a detail page take with `BENCH_CUSTOMERS` customers (default
//! 1,000,000) in one app.
//!
//! One durable PostgreSQL cluster (fsync on, as the embedded mode runs it);
//! the release binary as its own process, serving as the non-owner role
//! `customers_service` would (its `DATABASE_URL` here is the owner's, and
//! every page's transaction switches to the service role, under row-level
//! security, exactly as the gRPC calls do); one operator signed in, asking
//! for each page `BENCH_REPEATS` times (default 50) one after another.
//! Reported per page: the server's own time (its `Server-Timing` header,
//! from request to response, the database included) and the time the
//! client waited, p50 and p99, and the rows shown.
//!
//! ```sh
//! cargo bench --bench console                        # 1,000,000 customers
//! BENCH_CUSTOMERS=100000 cargo bench --bench console # a quick run
//! ```

#[path = "common/mod.rs"]
mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{
    ms, on_durable_cluster, owner_connection, percentile,
    seed::{customer_id, seed},
    spawn_service,
};
use customers::storage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(value) => Ok(value.trim().replace('_', "").parse()?),
        Err(_) => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    let n = number("BENCH_CUSTOMERS", 1_000_000)?;
    let repeats = number("BENCH_REPEATS", 50)? as usize;
    anyhow::ensure!(n >= 10_000, "BENCH_CUSTOMERS must be at least 10000");
    on_durable_cluster("console", async |cluster| {
        storage::create_database(&cluster.url("postgres"), "bench", None).await?;
        let url = cluster.url("bench");
        storage::migrate(&url).await?;
        let db = owner_connection(&url).await?;
        println!("Seeding {n} customers...");
        let started = Instant::now();
        seed(&db, n).await?;
        println!("seeded in {:.0} s", started.elapsed().as_secs_f64());
        run(&url, n, repeats).await
    })
}

/// One HTTP/1.1 GET over a fresh connection: status, headers, body.
async fn get(
    address: SocketAddr,
    path: &str,
    cookie: &str,
) -> anyhow::Result<(u16, String, String)> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nhost: {address}\r\ncookie: {cookie}\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8(response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP response"))?;
    Ok((head[9..12].parse()?, head.to_owned(), body.to_owned()))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(": "))
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

async fn run(url: &str, n: u64, repeats: usize) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("customers-console-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let token = customers::console::generate_token();
    let token_file = dir.join("token");
    std::fs::write(&token_file, &token)?;
    let admin = common::free_port()?;
    let env = [
        ("CUSTOMERS_ADMIN_LISTEN", format!("127.0.0.1:{admin}")),
        (
            "CUSTOMERS_ADMIN_TOKEN_FILE",
            token_file.display().to_string(),
        ),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_server, _, _) = spawn_service(url, false, &env).await?;
    let address: SocketAddr = format!("127.0.0.1:{admin}").parse()?;
    let (status, head, _) = get(address, &format!("/admin/login?token={token}"), "").await?;
    anyhow::ensure!(status == 303, "sign-in answered {status}");
    let cookie = header(&head, "set-cookie")
        .and_then(|c| c.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("no session cookie"))?
        .to_owned();

    let app = customers::domain::AppId::DEFAULT;
    let base = format!("/admin/apps/{app}/customers");
    // Page 5,000 of 50 rows, newest first: after the 250,000th newest.
    let deep = n.saturating_sub(250_000).max(1);
    let pages = [
        ("customers page 1 (newest first)", base.clone()),
        (
            "page 5,000 (after the 250,000th newest)",
            format!("{base}?after={}", customer_id(deep)),
        ),
        ("oldest first, page 1", format!("{base}?order=oldest")),
        (
            "search, rare term \"customer12345\"",
            format!("{base}?q=customer12345"),
        ),
        (
            "search, common term \"Number 99\"",
            format!("{base}?q=Number+99"),
        ),
        ("search, no match \"zzzq\"", format!("{base}?q=zzzq")),
        (
            "exact email",
            format!("{base}?email=customer{}%40example.com", n / 2),
        ),
        (
            "metadata seat_count=777",
            format!("{base}?meta_key=seat_count&meta_value=777"),
        ),
        (
            "created in one day",
            format!(
                "{base}?from={day}&to={day}",
                day = (chrono::Utc::now() - chrono::Duration::days(100)).format("%Y-%m-%d")
            ),
        ),
        ("detail page", format!("{base}/{}", customer_id(n / 3))),
    ];
    println!("\n{n} customers in one app; {repeats} requests per page, one after another:\n");
    println!(
        "| page | rows | server p50 | server p99 | client p50 | client p99 |\n| --- | ---: | ---: | ---: | ---: | ---: |"
    );
    for (name, path) in pages {
        // One request first, not counted: the plan and the pages it reads
        // are then cached, as they are for an operator's second click.
        get(address, &path, &cookie).await?;
        let mut server = Vec::with_capacity(repeats);
        let mut client = Vec::with_capacity(repeats);
        let mut rows = 0;
        for _ in 0..repeats {
            let started = Instant::now();
            let (status, head, body) = get(address, &path, &cookie).await?;
            client.push(started.elapsed());
            anyhow::ensure!(status == 200, "{name}: status {status}: {body}");
            let timing = header(&head, "server-timing")
                .and_then(|t| t.strip_prefix("app;dur="))
                .ok_or_else(|| anyhow::anyhow!("no Server-Timing"))?;
            server.push(Duration::from_secs_f64(timing.parse::<f64>()? / 1000.0));
            rows = body.matches("<tr>").count().saturating_sub(1);
        }
        server.sort();
        client.sort();
        println!(
            "| {name} | {rows} | {} | {} | {} | {} |",
            ms(percentile(&server, 0.5)),
            ms(percentile(&server, 0.99)),
            ms(percentile(&client, 0.5)),
            ms(percentile(&client, 0.99)),
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
