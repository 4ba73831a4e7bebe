//! The service's one error type, and the one place where errors become gRPC
//! statuses (AIP-193: an `ErrorInfo` on every error, a `BadRequest` listing
//! every bad field on `INVALID_ARGUMENT`).

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::{CustomerId, FieldViolation};

/// `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "customers.v1";

/// Which unique key a write collided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Email,
    ExternalId,
    ProviderId,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the request has invalid fields")]
    InvalidArgument {
        /// The first [`MAX_VIOLATIONS`] violations found.
        violations: Vec<FieldViolation>,
        /// How many more were found but are not listed.
        omitted: usize,
    },
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
    #[error("{}", unauthenticated_message(.0))]
    Unauthenticated(&'static str),
    #[error("this app is calling too fast; retry later")]
    RateLimited,
    #[error("this app has too many ListCustomers streams open; retry later")]
    TooManyStreams,
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
    #[error("internal error: {0}")]
    Internal(String),
}

fn unauthenticated_message(reason: &str) -> &'static str {
    match reason {
        "API_KEY_MISSING" => {
            "send an API key as `authorization: Bearer <key>` or `x-api-key: <key>`"
        }
        "API_KEY_REVOKED" => "the API key is revoked or expired",
        _ => "the API key is not valid",
    }
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
            Error::InvalidArgument { .. } => "INVALID_FIELDS",
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
            Error::Unauthenticated(reason) => reason,
            Error::RateLimited => "RATE_LIMITED",
            Error::TooManyStreams => "TOO_MANY_STREAMS",
            Error::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Error::ShuttingDown => "SHUTTING_DOWN",
            Error::StreamStalled => "STREAM_STALLED",
            Error::Cancelled => "CANCELLED",
            Error::Unavailable(_) => "DATABASE_UNAVAILABLE",
            Error::Internal(_) => "INTERNAL",
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::EtagMismatch | Error::Contention => Code::Aborted,
            Error::Archived | Error::Deleted => Code::FailedPrecondition,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::RateLimited | Error::TooManyStreams => Code::ResourceExhausted,
            Error::DeadlineExceeded => Code::DeadlineExceeded,
            Error::ShuttingDown | Error::StreamStalled | Error::Unavailable(_) => Code::Unavailable,
            Error::Cancelled => Code::Cancelled,
            Error::Internal(_) => Code::Internal,
        }
    }

    /// A single invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Error {
        Error::InvalidArgument {
            violations: vec![FieldViolation {
                field: truncate(&field.into(), MAX_FIELD_BYTES),
                description: truncate(&description.into(), MAX_DESCRIPTION_BYTES),
            }],
            omitted: 0,
        }
    }
}

/// Most violations one error lists. With the limits below, an error's
/// trailers stay under about 4 KiB, well within the 8 KiB that common
/// clients accept, whatever the request held.
pub const MAX_VIOLATIONS: usize = 10;
/// Longest field path in a violation, in bytes.
pub const MAX_FIELD_BYTES: usize = 80;
/// Longest violation description, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 160;
/// Longest status message, in bytes.
const MAX_MESSAGE_BYTES: usize = 400;

/// `s` cut to at most `max` bytes (at a character boundary), ending in "…"
/// when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let mut metadata = HashMap::new();
        if let Error::AlreadyExists {
            holder: Some(holder),
            ..
        } = &error
        {
            metadata.insert("customer_id".to_owned(), holder.to_string());
        }
        let mut details = ErrorDetails::with_error_info(error.reason(), ERROR_DOMAIN, metadata);
        if let Error::InvalidArgument { violations, .. } = &error {
            details.set_bad_request(
                violations
                    .iter()
                    .take(MAX_VIOLATIONS)
                    .map(|v| {
                        tonic_types::FieldViolation::new(
                            truncate(&v.field, MAX_FIELD_BYTES),
                            truncate(&v.description, MAX_DESCRIPTION_BYTES),
                        )
                    })
                    .collect::<Vec<_>>(),
            );
        }
        let message = match &error {
            // Internal details go to the log, not to the caller.
            Error::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error".to_owned()
            }
            Error::Unavailable(detail) => {
                tracing::warn!(error = %detail, "database unavailable");
                error.to_string()
            }
            Error::InvalidArgument {
                violations,
                omitted,
            } => {
                let listed = violations.len().min(MAX_VIOLATIONS);
                let fields: Vec<String> = violations[..listed]
                    .iter()
                    .map(|v| truncate(&v.field, MAX_FIELD_BYTES))
                    .collect();
                let more = omitted + (violations.len() - listed);
                let mut message = truncate(
                    &format!("invalid fields: {}", fields.join(", ")),
                    MAX_MESSAGE_BYTES,
                );
                if more > 0 {
                    message.push_str(&format!(" (and {more} more)"));
                }
                message
            }
            other => other.to_string(),
        };
        Status::with_error_details(error.code(), message, details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_reason_and_violations() {
        let status = Status::from(Error::InvalidArgument {
            violations: vec![
                FieldViolation {
                    field: "customer.email".into(),
                    description: "is required".into(),
                },
                FieldViolation {
                    field: "customer.phone".into(),
                    description: "bad".into(),
                },
            ],
            omitted: 0,
        });
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "INVALID_FIELDS");
        assert_eq!(details.bad_request().unwrap().field_violations.len(), 2);

        let holder = CustomerId::generate();
        let status = Status::from(Error::AlreadyExists {
            key: Key::Email,
            holder: Some(holder),
        });
        assert_eq!(status.code(), Code::AlreadyExists);
        let info = status.get_error_details().error_info().unwrap().clone();
        assert_eq!(info.reason, "EMAIL_TAKEN");
        assert_eq!(info.metadata["customer_id"], holder.to_string());

        let status = Status::from(Error::Internal("secret detail".into()));
        assert!(!status.message().contains("secret"));
        let status = Status::from(Error::Unavailable(
            "password authentication failed for user \"postgres\"".into(),
        ));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("postgres"), "{status:?}");
    }

    #[test]
    fn huge_violations_make_small_trailers() {
        let long = "é".repeat(10_000);
        let status = Status::from(Error::InvalidArgument {
            violations: (0..50)
                .map(|_| FieldViolation {
                    field: long.clone(),
                    description: long.clone(),
                })
                .collect(),
            omitted: 1000,
        });
        let details = status.get_error_details();
        assert_eq!(
            details.bad_request().unwrap().field_violations.len(),
            MAX_VIOLATIONS
        );
        assert!(
            status.message().ends_with("(and 1040 more)"),
            "{}",
            status.message()
        );
        assert!(status.message().len() <= 500);
        // Base64 in the trailer: 4/3 of the details.
        assert!(status.details().len() * 4 / 3 + status.message().len() * 3 < 6 * 1024);
    }

    #[test]
    fn truncation_keeps_short_strings_and_cuts_long_ones() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcdefgh", 7), "abcd…");
        assert_eq!(truncate("ééééé", 8), "éé…");
        assert_eq!(truncate("ééééé", 7), "éé…");
        assert_eq!(truncate("", 2), "");
        assert!(truncate(&"x".repeat(1000), 50).len() <= 50);
    }
}
