//! What both benchmarks need: the service as a child process, a readiness
//! wait, and its memory figures.

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
