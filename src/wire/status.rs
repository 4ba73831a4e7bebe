//! The one place where errors become gRPC statuses (AIP-193): an
//! `ErrorInfo` on every error, a `BadRequest` listing the bad fields on
//! `INVALID_ARGUMENT`, and messages that never carry internal details.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    domain::{Invalid, MAX_DESCRIPTION_BYTES, MAX_FIELD_BYTES, MAX_VIOLATIONS, truncate},
    error::Error,
};

/// `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "customers.v1";

/// Longest status message, in bytes.
const MAX_MESSAGE_BYTES: usize = 400;

/// The gRPC code of each error.
pub fn code(error: &Error) -> Code {
    match error {
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::NotFound => Code::NotFound,
        Error::AlreadyExists { .. } => Code::AlreadyExists,
        Error::EtagMismatch | Error::Contention => Code::Aborted,
        Error::Archived | Error::Deleted => Code::FailedPrecondition,
        Error::Unauthenticated(_) => Code::Unauthenticated,
        Error::RateLimited | Error::TooManyStreams | Error::TooManyWatches => {
            Code::ResourceExhausted
        }
        Error::ResumeTokenExpired { .. } => Code::OutOfRange,
        Error::DeadlineExceeded => Code::DeadlineExceeded,
        Error::ShuttingDown | Error::StreamStalled | Error::Unavailable(_) => Code::Unavailable,
        Error::Cancelled => Code::Cancelled,
        Error::Internal(_) => Code::Internal,
    }
}

/// "invalid fields: a, b" (cut short), and how many more there were.
fn invalid_message(invalid: &Invalid) -> String {
    let listed = invalid.violations.len().min(MAX_VIOLATIONS);
    let fields: Vec<String> = invalid.violations[..listed]
        .iter()
        .map(|v| truncate(&v.field, MAX_FIELD_BYTES))
        .collect();
    let more = invalid.omitted + (invalid.violations.len() - listed);
    let mut message = truncate(
        &format!("invalid fields: {}", fields.join(", ")),
        MAX_MESSAGE_BYTES,
    );
    if more > 0 {
        message.push_str(&format!(" (and {more} more)"));
    }
    message
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
        if let Error::ResumeTokenExpired { oldest } = &error {
            metadata.insert("oldest_resume_token".to_owned(), oldest.clone());
        }
        let mut details = ErrorDetails::with_error_info(error.reason(), ERROR_DOMAIN, metadata);
        if let Error::InvalidArgument(invalid) = &error {
            details.set_bad_request(
                invalid
                    .violations
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
            Error::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error");
                "internal error".to_owned()
            }
            Error::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                error.to_string()
            }
            Error::InvalidArgument(invalid) => invalid_message(invalid),
            other => other.to_string(),
        };
        Status::with_error_details(code(&error), message, details)
    }
}

impl From<Invalid> for Status {
    fn from(invalid: Invalid) -> Status {
        Error::from(invalid).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CustomerId, FieldViolation};
    use crate::error::Key;

    #[test]
    fn statuses_carry_reason_and_violations() {
        let status = Status::from(Error::InvalidArgument(Invalid {
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
        }));
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

        let status = Status::from(Error::internal(anyhow::anyhow!("secret detail")));
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
        let status = Status::from(Error::InvalidArgument(Invalid {
            violations: (0..50)
                .map(|_| FieldViolation {
                    field: long.clone(),
                    description: long.clone(),
                })
                .collect(),
            omitted: 1000,
        }));
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
