//! The customer: its lifecycle, its writable fields, and the stored whole.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::ids::CustomerId;

/// Lifecycle of a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Active,
    Archived,
    Deleted,
}

impl State {
    /// The value stored in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Archived => "archived",
            State::Deleted => "deleted",
        }
    }

    pub fn from_db(s: &str) -> Option<State> {
        match s {
            "active" => Some(State::Active),
            "archived" => Some(State::Archived),
            "deleted" => Some(State::Deleted),
            _ => None,
        }
    }
}

/// A postal address; every part optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Address {
    pub line1: Option<String>,
    pub line2: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub postal_code: Option<String>,
    pub country: Option<String>,
}

/// One part of an address, as named in field masks (`address.<part>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressPart {
    Line1,
    Line2,
    City,
    State,
    PostalCode,
    Country,
}

impl AddressPart {
    pub const ALL: [AddressPart; 6] = [
        AddressPart::Line1,
        AddressPart::Line2,
        AddressPart::City,
        AddressPart::State,
        AddressPart::PostalCode,
        AddressPart::Country,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AddressPart::Line1 => "line1",
            AddressPart::Line2 => "line2",
            AddressPart::City => "city",
            AddressPart::State => "state",
            AddressPart::PostalCode => "postal_code",
            AddressPart::Country => "country",
        }
    }
}

impl Address {
    pub fn part(&self, part: AddressPart) -> &Option<String> {
        match part {
            AddressPart::Line1 => &self.line1,
            AddressPart::Line2 => &self.line2,
            AddressPart::City => &self.city,
            AddressPart::State => &self.state,
            AddressPart::PostalCode => &self.postal_code,
            AddressPart::Country => &self.country,
        }
    }

    pub fn part_mut(&mut self, part: AddressPart) -> &mut Option<String> {
        match part {
            AddressPart::Line1 => &mut self.line1,
            AddressPart::Line2 => &mut self.line2,
            AddressPart::City => &mut self.city,
            AddressPart::State => &mut self.state,
            AddressPart::PostalCode => &mut self.postal_code,
            AddressPart::Country => &mut self.country,
        }
    }
}

/// The fields a caller writes, as sent: not yet validated. Empty strings are
/// `None` except for `email`, which is required.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerFields {
    pub external_id: Option<String>,
    pub email: String,
    pub name: Option<String>,
    pub phone: Option<String>,
    pub address: Address,
    pub timezone: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub provider_ids: BTreeMap<String, String>,
}

/// Fields that passed [`CustomerFields::validate`], normalised. Storage only
/// writes these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidFields(pub(super) CustomerFields);

impl std::ops::Deref for ValidFields {
    type Target = CustomerFields;

    fn deref(&self) -> &CustomerFields {
        &self.0
    }
}

/// A customer as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub id: CustomerId,
    pub state: State,
    /// What callers write. All empty once deleted (the email too).
    pub fields: CustomerFields,
    /// Bumped by every write.
    pub revision: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub archive_time: Option<DateTime<Utc>>,
    pub delete_time: Option<DateTime<Utc>>,
}

impl Customer {
    /// The opaque etag: the revision, quoted like an HTTP entity tag.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.revision)
    }

    /// Whether a caller's etag, if any, is the current one.
    pub fn etag_matches(&self, etag: Option<&str>) -> bool {
        etag.is_none_or(|etag| etag == self.etag())
    }
}
