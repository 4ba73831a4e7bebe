//! Customer change events: what a change records, where a watch starts and
//! what it keeps, and the resume token that names a position in an app's
//! log.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    customer::{AddressPart, Customer, CustomerFields},
    ids::{AppId, CustomerId, EventId, KeyId},
};

/// What a change was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Created,
    Updated,
    Archived,
    Deleted,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        EventType::Created,
        EventType::Updated,
        EventType::Archived,
        EventType::Deleted,
    ];

    /// The value stored in the `type` column.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "created",
            EventType::Updated => "updated",
            EventType::Archived => "archived",
            EventType::Deleted => "deleted",
        }
    }

    pub fn from_db(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// A change about to be recorded, in the transaction that makes it.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub kind: EventType,
    /// The customer right after the change.
    pub customer: &'a Customer,
    pub changed_fields: Vec<String>,
}

/// A recorded change.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: EventId,
    /// Its place in its app's log: 1, 2, 3... with no holes.
    pub position: u64,
    pub kind: EventType,
    pub customer_id: CustomerId,
    /// The customer right after the change; `None` once the customer is
    /// erased (redacted).
    pub customer: Option<Customer>,
    pub changed_fields: Vec<String>,
    pub create_time: DateTime<Utc>,
    pub key_id: Option<KeyId>,
}

/// Which events a watch wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this customer's.
    pub customer: Option<CustomerId>,
    /// Only these types; empty: every type.
    pub types: Vec<EventType>,
}

impl EventFilter {
    pub fn matches(&self, event: &Event) -> bool {
        self.customer.is_none_or(|c| c == event.customer_id)
            && (self.types.is_empty() || self.types.contains(&event.kind))
    }

    /// The types to read: the filter's, or all.
    pub fn types_or_all(&self) -> Vec<EventType> {
        if self.types.is_empty() {
            EventType::ALL.to_vec()
        } else {
            self.types.clone()
        }
    }
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchStart {
    /// With the next change.
    Now,
    /// Right after a position.
    After(ResumeToken),
    /// At the first event recorded at or after a time.
    At(DateTime<Utc>),
}

/// WatchCustomerEvents.
#[derive(Debug, Clone)]
pub struct WatchEvents {
    pub start: WatchStart,
    pub filter: EventFilter,
}

/// A position in an app's event log, as an opaque string: the client resumes
/// right after it. Versioned, and bound to its app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeToken {
    pub app: AppId,
    /// Every event at or before this position was sent (or filtered out).
    pub position: u64,
}

/// Version byte of today's token layout: version, app (16 bytes), position
/// (8 bytes, big-endian).
const TOKEN_V1: u8 = 1;
const TOKEN_V1_BYTES: usize = 1 + 16 + 8;

impl ResumeToken {
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(TOKEN_V1_BYTES);
        bytes.push(TOKEN_V1);
        bytes.extend_from_slice(self.app.0.as_bytes());
        bytes.extend_from_slice(&self.position.to_be_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The token of `s`, if it is one this server wrote (any version it
    /// still reads).
    pub fn parse(s: &str) -> Option<ResumeToken> {
        if s.len() > 64 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
        if bytes.len() != TOKEN_V1_BYTES || bytes[0] != TOKEN_V1 {
            return None;
        }
        let app = Uuid::from_slice(&bytes[1..17]).ok()?;
        let position = u64::from_be_bytes(bytes[17..25].try_into().ok()?);
        // Positions are stored as PostgreSQL bigints.
        if position > i64::MAX as u64 {
            return None;
        }
        Some(ResumeToken {
            app: AppId(app),
            position,
        })
    }
}

/// The update-mask paths whose values differ between `old` and `new`, in the
/// order of the customer's fields (map keys sorted): an update's
/// `changed_fields`.
pub fn changed_fields(old: &CustomerFields, new: &CustomerFields) -> Vec<String> {
    let mut changed = Vec::new();
    let mut check = |path: &str, differs: bool| {
        if differs {
            changed.push(path.to_owned());
        }
    };
    check("external_id", old.external_id != new.external_id);
    check("email", old.email != new.email);
    check("name", old.name != new.name);
    check("phone", old.phone != new.phone);
    for part in AddressPart::ALL {
        let path = format!("address.{}", part.name());
        check(&path, old.address.part(part) != new.address.part(part));
    }
    check("timezone", old.timezone != new.timezone);
    for (prefix, old_map, new_map) in [
        ("metadata", &old.metadata, &new.metadata),
        ("provider_ids", &old.provider_ids, &new.provider_ids),
    ] {
        let mut keys: Vec<&String> = old_map.keys().chain(new_map.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            if old_map.get(key) != new_map.get(key) {
                changed.push(format!("{prefix}.{}", mask_key(key)));
            }
        }
    }
    changed
}

/// A map key as a mask path segment: backtick-quoted unless it is a plain
/// identifier (AIP-161).
fn mask_key(key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        key.to_owned()
    } else {
        format!("`{key}`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_everything_else() {
        let token = ResumeToken {
            app: AppId(Uuid::now_v7()),
            position: 42,
        };
        assert_eq!(ResumeToken::parse(&token.encode()), Some(token));
        for bad in [
            "",
            "x",
            "AAAA",
            &token.encode()[1..],
            &format!("{}A", token.encode()),
        ] {
            assert_eq!(ResumeToken::parse(bad), None, "{bad:?}");
        }
        let too_far = ResumeToken {
            position: u64::MAX,
            ..token
        };
        assert_eq!(ResumeToken::parse(&too_far.encode()), None);
    }

    #[test]
    fn changed_fields_name_each_changed_path() {
        let old = CustomerFields {
            email: "a@example.com".into(),
            metadata: [
                ("plan".to_owned(), "free".to_owned()),
                ("a b".into(), "x".into()),
            ]
            .into(),
            ..Default::default()
        };
        let mut new = old.clone();
        assert!(changed_fields(&old, &new).is_empty());
        new.email = "b@example.com".into();
        new.address.city = Some("Paris".into());
        new.metadata.remove("a b");
        new.metadata.insert("plan".into(), "pro".into());
        new.provider_ids.insert("stripe".into(), "cus_1".into());
        assert_eq!(
            changed_fields(&old, &new),
            [
                "email",
                "address.city",
                "metadata.`a b`",
                "metadata.plan",
                "provider_ids.stripe"
            ]
        );
    }
}
