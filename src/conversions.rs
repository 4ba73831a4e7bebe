//! Conversions between wire types (`pb`) and domain types.
//!
//! proto3 strings cannot be absent, so an empty string means "not set".

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::{
    domain::{self, CustomerFields, ListFilter, Order, State},
    error::Error,
    pb,
};

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range of
/// `google.protobuf.Timestamp`.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

fn from_timestamp(field: &str, t: Timestamp) -> Result<DateTime<Utc>, Error> {
    (MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS)
        .contains(&t.seconds)
        .then_some(())
        .and_then(|()| u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000))
        .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
        .ok_or_else(|| {
            Error::invalid(
                field,
                "must be a valid timestamp from 0001-01-01 to 9999-12-31 (UTC)",
            )
        })
}

impl From<pb::Address> for domain::Address {
    fn from(a: pb::Address) -> Self {
        Self {
            line1: non_empty(a.line1),
            line2: non_empty(a.line2),
            city: non_empty(a.city),
            state: non_empty(a.state),
            postal_code: non_empty(a.postal_code),
            country: non_empty(a.country),
        }
    }
}

impl From<domain::Address> for pb::Address {
    fn from(a: domain::Address) -> Self {
        Self {
            line1: a.line1.unwrap_or_default(),
            line2: a.line2.unwrap_or_default(),
            city: a.city.unwrap_or_default(),
            state: a.state.unwrap_or_default(),
            postal_code: a.postal_code.unwrap_or_default(),
            country: a.country.unwrap_or_default(),
        }
    }
}

/// The writable fields of a request's customer; output-only fields are
/// ignored.
impl From<pb::Customer> for CustomerFields {
    fn from(c: pb::Customer) -> Self {
        Self {
            external_id: c.external_id.and_then(non_empty),
            email: c.email,
            name: non_empty(c.name),
            phone: non_empty(c.phone),
            address: c.address.map(Into::into).unwrap_or_default(),
            timezone: non_empty(c.timezone),
            metadata: c.metadata.into_iter().collect(),
            provider_ids: c.provider_ids.into_iter().collect(),
        }
    }
}

impl From<State> for pb::customer::State {
    fn from(s: State) -> Self {
        match s {
            State::Active => Self::Active,
            State::Archived => Self::Archived,
            State::Deleted => Self::Deleted,
        }
    }
}

impl From<domain::Customer> for pb::Customer {
    fn from(c: domain::Customer) -> Self {
        let etag = c.etag();
        let address = (c.address != domain::Address::default()).then(|| c.address.into());
        Self {
            id: c.id.to_string(),
            external_id: c.external_id,
            email: c.email.unwrap_or_default(),
            name: c.name.unwrap_or_default(),
            phone: c.phone.unwrap_or_default(),
            address,
            timezone: c.timezone.unwrap_or_default(),
            metadata: c.metadata.into_iter().collect(),
            provider_ids: c.provider_ids.into_iter().collect(),
            state: pb::customer::State::from(c.state).into(),
            create_time: Some(timestamp(c.create_time)),
            update_time: Some(timestamp(c.update_time)),
            archive_time: c.archive_time.map(timestamp),
            delete_time: c.delete_time.map(timestamp),
            etag,
        }
    }
}

impl TryFrom<pb::ListCustomersRequest> for ListFilter {
    type Error = Error;

    fn try_from(r: pb::ListCustomersRequest) -> Result<Self, Error> {
        let order = match pb::list_customers_request::Order::try_from(r.order) {
            Ok(pb::list_customers_request::Order::CreateTimeDesc) => Order::Descending,
            Ok(_) => Order::Ascending,
            Err(_) => return Err(Error::invalid("order", "unknown order")),
        };
        let resume_after = match non_empty(r.resume_after) {
            Some(id) => Some(domain::parse_id("resume_after", &id)?),
            None => None,
        };
        ListFilter {
            email: non_empty(r.email.trim().to_owned()),
            query: non_empty(r.query),
            created_after: r
                .created_after
                .map(|t| from_timestamp("created_after", t))
                .transpose()?,
            created_before: r
                .created_before
                .map(|t| from_timestamp("created_before", t))
                .transpose()?,
            metadata: r.metadata.into_iter().collect::<BTreeMap<_, _>>(),
            include_archived: r.include_archived,
            order,
            limit: (r.limit > 0).then_some(u64::from(r.limit)),
            resume_after,
        }
        .validate()
    }
}

/// An optional etag from a request.
pub fn etag(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_outside_the_protobuf_range_are_invalid() {
        let at = |seconds, nanos| from_timestamp("t", Timestamp { seconds, nanos });
        assert!(at(MIN_TIMESTAMP_SECONDS, 0).is_ok());
        assert!(at(MAX_TIMESTAMP_SECONDS, 999_999_999).is_ok());
        assert!(at(MIN_TIMESTAMP_SECONDS - 1, 0).is_err());
        assert!(at(MAX_TIMESTAMP_SECONDS + 1, 0).is_err());
        assert!(at(-8_000_000_000_000, 0).is_err());
        assert!(at(0, -1).is_err());
        assert!(at(0, 1_000_000_000).is_err());
    }
}
