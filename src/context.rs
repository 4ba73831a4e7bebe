//! What a call carries into the domain and storage: its app and its
//! deadline.

use std::time::Duration;

use tokio::time::Instant;
use tonic::Request;

use crate::{domain::AppId, error::Error};

/// The scope and time budget of one call.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext {
    pub app: AppId,
    /// When the caller stops waiting; the database work is bounded by it.
    pub deadline: Option<Instant>,
}

impl RequestContext {
    pub fn new(app: AppId) -> Self {
        Self {
            app,
            deadline: None,
        }
    }

    /// The context of a gRPC request: the app its API key belongs to (put
    /// there by the authentication layer, never taken from a request field),
    /// and the client's `grpc-timeout`.
    pub fn of<T>(request: &Request<T>) -> Result<Self, Error> {
        let app = *request
            .extensions()
            .get::<AppId>()
            .ok_or(Error::Unauthenticated("API_KEY_MISSING"))?;
        let timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        Ok(Self {
            app,
            deadline: timeout.map(|t| Instant::now() + t.saturating_sub(margin(t))),
        })
    }

    /// Time left before the deadline, if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }
}

/// We give up a little before the client does, so that the client gets our
/// DEADLINE_EXCEEDED rather than tonic's own timer firing first (which
/// answers CANCELLED): 5% of the timeout, between 2 ms and 100 ms.
fn margin(timeout: Duration) -> Duration {
    (timeout / 20).clamp(Duration::from_millis(2), Duration::from_millis(100))
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit
/// (H, M, S, m, u, n), per the gRPC over HTTP/2 spec.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }

    #[test]
    fn margins_are_bounded() {
        assert_eq!(margin(Duration::from_millis(10)), Duration::from_millis(2));
        assert_eq!(margin(Duration::from_secs(1)), Duration::from_millis(50));
        assert_eq!(margin(Duration::from_secs(60)), Duration::from_millis(100));
    }
}
