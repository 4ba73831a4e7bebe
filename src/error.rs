//! The service's one error type: every way a call can fail, with its stable
//! reason. How each becomes a gRPC status is decided in one place,
//! [`crate::wire::status`].

use crate::domain::{CustomerId, Invalid};

/// Which unique key a write collided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Email,
    ExternalId,
    ProviderId,
}

/// Why a caller was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    /// No key in the request.
    Missing,
    /// Not a key of ours: malformed, unknown, or a wrong secret.
    Invalid,
    /// A real key, revoked or past its expiry.
    Revoked,
}

impl AuthFailure {
    /// The stable `ErrorInfo.reason`, also the metric label.
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::Missing => "API_KEY_MISSING",
            AuthFailure::Invalid => "API_KEY_INVALID",
            AuthFailure::Revoked => "API_KEY_REVOKED",
        }
    }

    fn message(self) -> &'static str {
        match self {
            AuthFailure::Missing => {
                "send an API key as `authorization: Bearer <key>` or `x-api-key: <key>`"
            }
            AuthFailure::Invalid => "the API key is not valid",
            AuthFailure::Revoked => "the API key is revoked or expired",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the request has invalid fields")]
    InvalidArgument(Invalid),
    #[error("customer not found")]
    NotFound,
    #[error("{} is already held by another active customer", key_name(*.key))]
    AlreadyExists {
        key: Key,
        /// The customer holding the key, when known.
        holder: Option<CustomerId>,
    },
    #[error("the etag does not match the customer's current etag")]
    EtagMismatch,
    #[error("the customer is archived and can no longer be updated")]
    Archived,
    #[error("the customer is deleted")]
    Deleted,
    #[error("the request conflicted with a concurrent write; retry it")]
    Contention,
    #[error("{}", .0.message())]
    Unauthenticated(AuthFailure),
    #[error("this app is calling too fast; retry later")]
    RateLimited,
    #[error("this app has too many ListCustomers streams open; retry later")]
    TooManyStreams,
    #[error("this app has too many WatchCustomerEvents streams open; retry later")]
    TooManyWatches,
    /// A watch's start is older than the retained events.
    #[error(
        "the resume position is older than the retained events; start again from oldest_resume_token (or from now) after a full listing"
    )]
    ResumeTokenExpired {
        /// The token of the oldest position still available.
        oldest: String,
    },
    #[error("the deadline passed before the call completed")]
    DeadlineExceeded,
    #[error("the server is shutting down; retry (streams: resume after the last id received)")]
    ShuttingDown,
    #[error(
        "the client read nothing for too long; the stream was ended (resume after the last id received)"
    )]
    StreamStalled,
    /// The caller went away; nobody reads this.
    #[error("the call was cancelled")]
    Cancelled,
    /// The cause is logged, never sent: driver text can name users, hosts
    /// and databases.
    #[error("the database is unavailable; retry later")]
    Unavailable(String),
    /// A fault of ours, with its cause (logged, never sent).
    #[error("internal error: {0:#}")]
    Internal(anyhow::Error),
}

fn key_name(key: Key) -> &'static str {
    match key {
        Key::Email => "the email",
        Key::ExternalId => "the external id",
        Key::ProviderId => "a provider id",
    }
}

impl Error {
    /// The stable, machine-readable `ErrorInfo.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "INVALID_FIELDS",
            Error::NotFound => "CUSTOMER_NOT_FOUND",
            Error::AlreadyExists { key, .. } => match key {
                Key::Email => "EMAIL_TAKEN",
                Key::ExternalId => "EXTERNAL_ID_TAKEN",
                Key::ProviderId => "PROVIDER_ID_TAKEN",
            },
            Error::EtagMismatch => "ETAG_MISMATCH",
            Error::Archived => "CUSTOMER_ARCHIVED",
            Error::Deleted => "CUSTOMER_DELETED",
            Error::Contention => "CONCURRENT_MODIFICATION",
            Error::Unauthenticated(failure) => failure.reason(),
            Error::RateLimited => "RATE_LIMITED",
            Error::TooManyStreams => "TOO_MANY_STREAMS",
            Error::TooManyWatches => "TOO_MANY_WATCHES",
            Error::ResumeTokenExpired { .. } => "RESUME_TOKEN_EXPIRED",
            Error::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Error::ShuttingDown => "SHUTTING_DOWN",
            Error::StreamStalled => "STREAM_STALLED",
            Error::Cancelled => "CANCELLED",
            Error::Unavailable(_) => "DATABASE_UNAVAILABLE",
            Error::Internal(_) => "INTERNAL",
        }
    }

    /// A single invalid field.
    pub fn invalid(field: impl std::fmt::Display, description: impl Into<String>) -> Error {
        Error::InvalidArgument(Invalid::field(field, description))
    }

    /// A fault of ours, keeping its cause.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Error {
        Error::Internal(cause.into())
    }
}

impl From<Invalid> for Error {
    fn from(invalid: Invalid) -> Error {
        Error::InvalidArgument(invalid)
    }
}
