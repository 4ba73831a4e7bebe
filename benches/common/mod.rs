#![allow(dead_code)] // Each benchmark uses a part.

//! What the benchmarks share: the service as a child process, a readiness
//! wait, and its memory and CPU figures.

use std::{
    process::Child,
    time::{Duration, Instant},
};

use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

pub mod seed;

/// Kills the server when dropped.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the service at `endpoint` answers its readiness check.
pub async fn wait_serving(endpoint: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
            .connect()
            .await
            && HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: "customers.v1.CustomerService".into(),
                })
                .await
                .is_ok()
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A memory figure of `/proc/<pid>/status`, in KiB.
pub fn rss_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .ok_or_else(|| anyhow::anyhow!("no {field} for {pid}"))
}

/// CPU time a process has used so far (user and system, all its threads),
/// from `/proc/<pid>/stat`: fields 14 and 15, in clock ticks of 1/100 s
/// (Linux's USER_HZ).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after "pid (comm)" start at field 3; comm may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    match (ticks(14), ticks(15)) {
        (Some(user), Some(system)) => Ok(Duration::from_millis((user + system) * 10)),
        _ => anyhow::bail!("no CPU times in /proc/{pid}/stat"),
    }
}

/// CPU time used so far by every PostgreSQL process on this machine: the
/// live ones (user and system), plus, for each postmaster, what its ended
/// children used (fields 16 and 17: a backend's time is added there when
/// its connection closes and the postmaster reaps it).
pub fn postgres_cpu_time() -> anyhow::Result<Duration> {
    let mut processes = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may end while the directory is read.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.ends_with("(postgres") {
            continue;
        }
        let fields: Vec<u64> = rest
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // Field n of stat is fields[n - 3] here; field 4 is the parent.
        let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0);
        processes.push((pid, field(4), field(14) + field(15), field(16) + field(17)));
    }
    let pids: std::collections::HashSet<u32> = processes.iter().map(|p| p.0).collect();
    let ticks: u64 = processes
        .iter()
        .map(|&(_, parent, own, children)| {
            let postmaster = !pids.contains(&(parent as u32));
            own + if postmaster { children } else { 0 }
        })
        .sum();
    Ok(Duration::from_millis(ticks * 10))
}

/// An API key as request metadata.
pub type Auth = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// `message` with `authorization: <auth>`.
pub fn authorized<T>(message: T, auth: &Auth) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", auth.clone());
    request
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(
        std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port(),
    )
}

/// The sum of the metric lines starting with `prefix` in a Prometheus
/// scrape of `address`.
pub async fn scrape(address: &str, prefix: &str) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

/// The `p` quantile of sorted latencies.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// A duration in milliseconds, for tables.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Runs `work` on a durable PostgreSQL cluster of its own (fsync on, as the
/// service's embedded mode runs it), removed afterwards.
pub fn on_durable_cluster(
    name: &str,
    work: impl AsyncFnOnce(&customers::embedded_pg::Cluster) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use customers::embedded_pg::{Cluster, ClusterOptions};
    let root = std::env::temp_dir().join(format!("customers-{name}-{}", std::process::id()));
    let cluster = Cluster::start(&ClusterOptions {
        root: root.clone(),
        throwaway: false,
        port: None,
        tls: None,
    })?;
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(work(&cluster));
    drop(runtime);
    cluster.stop();
    let _ = std::fs::remove_dir_all(root);
    result
}

/// The release binary serving `url` on a port of its own (and its metrics on
/// another, when `metrics`), with `env` added; returned once it is ready,
/// with its endpoint and metrics address.
pub async fn spawn_service(
    url: &str,
    metrics: bool,
    env: &[(&str, &str)],
) -> anyhow::Result<(Server, String, Option<String>)> {
    let port = free_port()?;
    let metrics = metrics
        .then(|| free_port().map(|p| format!("127.0.0.1:{p}")))
        .transpose()?;
    // `BENCH_SERVICE_BIN`: another build of the service (an older commit's
    // release binary, say), to compare two builds on the same machine.
    let binary = std::env::var_os("BENCH_SERVICE_BIN")
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_customers").into());
    let mut command = std::process::Command::new(binary);
    command
        .env("DATABASE_URL", url)
        .env("CUSTOMERS_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "CUSTOMERS_METRICS_LISTEN",
            metrics.as_deref().unwrap_or("off"),
        )
        .stdout(std::process::Stdio::null())
        // Logged as it runs by default (`info`: a line per call), its
        // stderr read through a pipe, as a log collector reads it.
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn()?;
    // Its warnings and errors are shown; its access log is read and dropped.
    if let Some(logs) = child.stderr.take() {
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(logs).lines().map_while(Result::ok) {
                if !line.contains(" INFO ") {
                    eprintln!("service: {line}");
                }
            }
        });
    }
    let server = Server(child);
    let endpoint = format!("http://127.0.0.1:{port}");
    wait_serving(&endpoint).await?;
    Ok((server, endpoint, metrics))
}

/// An API key of the default app in the (migrated) database at `url`, as
/// request metadata.
pub async fn default_app_key(url: &str) -> anyhow::Result<Auth> {
    let pool = customers::storage::pool(url, &customers::storage::PoolOptions::default())?;
    let key = customers::admin::create_key(&pool, customers::domain::AppId::DEFAULT)
        .await?
        .reveal();
    pool.close();
    Ok(format!("Bearer {key}").parse()?)
}

/// A plain PostgreSQL connection as the tables' owner (row-level security
/// does not apply), for seeding, COPY and checks.
pub async fn owner_connection(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}
