//! The customer on the wire and in the domain. Both directions name every
//! field (no `..`), so a field added on either side does not compile until
//! it is converted.
//!
//! proto3 strings cannot be absent, so an empty string means "not set".

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::{
    domain::{Address, Customer, CustomerFields, Event, EventType, Invalid, State},
    pb,
};

pub(super) fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub(super) fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range of
/// `google.protobuf.Timestamp`.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// A request's timestamp, within the range of `google.protobuf.Timestamp`
/// (PostgreSQL would reject some times outside it).
pub(super) fn from_timestamp(field: &str, t: Timestamp) -> Result<DateTime<Utc>, Invalid> {
    (MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS)
        .contains(&t.seconds)
        .then_some(())
        .and_then(|()| u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000))
        .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
        .ok_or_else(|| {
            Invalid::field(
                field,
                "must be a valid timestamp from 0001-01-01 to 9999-12-31 (UTC)",
            )
        })
}

impl From<pb::Address> for Address {
    fn from(a: pb::Address) -> Self {
        let pb::Address {
            line1,
            line2,
            city,
            state,
            postal_code,
            country,
        } = a;
        Self {
            line1: non_empty(line1),
            line2: non_empty(line2),
            city: non_empty(city),
            state: non_empty(state),
            postal_code: non_empty(postal_code),
            country: non_empty(country),
        }
    }
}

impl From<Address> for pb::Address {
    fn from(a: Address) -> Self {
        let Address {
            line1,
            line2,
            city,
            state,
            postal_code,
            country,
        } = a;
        Self {
            line1: line1.unwrap_or_default(),
            line2: line2.unwrap_or_default(),
            city: city.unwrap_or_default(),
            state: state.unwrap_or_default(),
            postal_code: postal_code.unwrap_or_default(),
            country: country.unwrap_or_default(),
        }
    }
}

/// The writable fields of a request's customer; output-only fields are
/// ignored.
impl From<pb::Customer> for CustomerFields {
    fn from(c: pb::Customer) -> Self {
        let pb::Customer {
            id: _,
            external_id,
            email,
            name,
            phone,
            address,
            timezone,
            metadata,
            provider_ids,
            state: _,
            create_time: _,
            update_time: _,
            archive_time: _,
            delete_time: _,
            etag: _,
        } = c;
        Self {
            external_id: external_id.and_then(non_empty),
            email,
            name: non_empty(name),
            phone: non_empty(phone),
            address: address.map(Into::into).unwrap_or_default(),
            timezone: non_empty(timezone),
            metadata,
            provider_ids,
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

impl From<Customer> for pb::Customer {
    fn from(c: Customer) -> Self {
        let etag = c.etag();
        let Customer {
            id,
            state,
            fields,
            revision: _,
            create_time,
            update_time,
            archive_time,
            delete_time,
        } = c;
        let CustomerFields {
            external_id,
            email,
            name,
            phone,
            address,
            timezone,
            metadata,
            provider_ids,
        } = fields;
        let address = (address != Address::default()).then(|| address.into());
        Self {
            id: id.to_string(),
            external_id,
            email,
            name: name.unwrap_or_default(),
            phone: phone.unwrap_or_default(),
            address,
            timezone: timezone.unwrap_or_default(),
            metadata,
            provider_ids,
            state: pb::customer::State::from(state).into(),
            create_time: Some(timestamp(create_time)),
            update_time: Some(timestamp(update_time)),
            archive_time: archive_time.map(timestamp),
            delete_time: delete_time.map(timestamp),
            etag,
        }
    }
}

impl From<EventType> for pb::customer_event::Type {
    fn from(t: EventType) -> Self {
        match t {
            EventType::Created => pb::customer_event::Type::Created,
            EventType::Updated => pb::customer_event::Type::Updated,
            EventType::Archived => pb::customer_event::Type::Archived,
            EventType::Deleted => pb::customer_event::Type::Deleted,
        }
    }
}

impl From<Event> for pb::CustomerEvent {
    fn from(e: Event) -> Self {
        // Every field, named: a new one does not compile until it is sent.
        let Event {
            id,
            position: _,
            kind,
            customer_id,
            customer,
            changed_fields,
            create_time,
            key_id,
        } = e;
        let redacted = customer.is_none();
        let customer = match customer {
            Some(customer) => customer.into(),
            None => pb::Customer {
                id: customer_id.to_string(),
                ..Default::default()
            },
        };
        pb::CustomerEvent {
            id: id.to_string(),
            r#type: pb::customer_event::Type::from(kind).into(),
            customer_id: customer_id.to_string(),
            customer: Some(customer),
            changed_fields,
            create_time: Some(timestamp(create_time)),
            key_id: key_id.map(|k| k.to_string()).unwrap_or_default(),
            redacted,
        }
    }
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
