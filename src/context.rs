//! What a call carries into the domain and storage: its app and its
//! deadline.

use std::time::Duration;

use tokio::time::Instant;
use tonic::Request;

use crate::{
    domain::{AppId, KeyId},
    error::{AuthFailure, Error},
};

/// The scope and time budget of one call.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext {
    pub app: AppId,
    /// The API key of the call, recorded with the changes it makes.
    pub key: Option<KeyId>,
    /// When the caller stops waiting; the database work is bounded by it.
    pub deadline: Option<Instant>,
    /// The server's own limit on one SQL statement (`--statement-timeout`):
    /// a distant client deadline never lifts it.
    pub statement_limit: Duration,
}

/// The longest `statement_timeout` PostgreSQL accepts: `i32::MAX` ms, about
/// 24.8 days.
pub const MAX_STATEMENT_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

impl RequestContext {
    pub fn new(app: AppId, statement_limit: Duration) -> Self {
        Self {
            app,
            key: None,
            deadline: None,
            statement_limit,
        }
    }

    /// The context of a gRPC request: the app its API key belongs to (put
    /// there by the authentication layer, never taken from a request field),
    /// and the client's `grpc-timeout`.
    pub fn of<T>(request: &Request<T>, statement_limit: Duration) -> Result<Self, Error> {
        let app = *request
            .extensions()
            .get::<AppId>()
            .ok_or(Error::Unauthenticated(AuthFailure::Missing))?;
        let timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        Ok(Self {
            app,
            key: request.extensions().get::<KeyId>().copied(),
            // A deadline too far to represent is no deadline.
            deadline: timeout.and_then(|t| Instant::now().checked_add(t.saturating_sub(margin(t)))),
            statement_limit,
        })
    }

    /// Time left before the deadline, if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The `statement_timeout` of this call's next statement: the time left
    /// before the deadline, never more than the server's own limit, and
    /// within what PostgreSQL accepts. `None` once the deadline has passed.
    pub fn statement_timeout(&self) -> Option<Duration> {
        let limit = self.statement_limit.min(MAX_STATEMENT_TIMEOUT);
        match self.remaining() {
            Some(remaining) if remaining.is_zero() => None,
            Some(remaining) => Some(remaining.min(limit).max(Duration::from_millis(1))),
            None => Some(limit.max(Duration::from_millis(1))),
        }
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
    fn statement_timeouts_are_capped() {
        let app = AppId::DEFAULT;
        let mut ctx = RequestContext::new(app, Duration::from_secs(2));
        assert_eq!(ctx.statement_timeout(), Some(Duration::from_secs(2)));
        // A far deadline does not lift the server's limit.
        ctx.deadline = Some(Instant::now() + Duration::from_secs(100_000));
        assert_eq!(ctx.statement_timeout(), Some(Duration::from_secs(2)));
        // A near one lowers it.
        ctx.deadline = Some(Instant::now() + Duration::from_millis(500));
        assert!(ctx.statement_timeout().unwrap() <= Duration::from_millis(500));
        // Neither exceeds what PostgreSQL accepts.
        let mut ctx = RequestContext::new(app, Duration::from_secs(40 * 86_400));
        ctx.deadline = Some(Instant::now() + Duration::from_secs(30 * 86_400));
        assert_eq!(ctx.statement_timeout(), Some(MAX_STATEMENT_TIMEOUT));
    }

    #[test]
    fn margins_are_bounded() {
        assert_eq!(margin(Duration::from_millis(10)), Duration::from_millis(2));
        assert_eq!(margin(Duration::from_secs(1)), Duration::from_millis(50));
        assert_eq!(margin(Duration::from_secs(60)), Duration::from_millis(100));
    }
}
