#![allow(dead_code)] // Each benchmark uses a part.

//! What the benchmarks share: the service as a child process, a readiness
//! wait, and its memory and CPU figures.

use std::{
    process::Child,
    time::{Duration, Instant},
};

use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

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
