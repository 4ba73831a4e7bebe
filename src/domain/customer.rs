//! The customer: its lifecycle, its writable fields, and the stored whole.

use std::{borrow::Cow, collections::BTreeMap};

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
        Etag(self.revision).to_string()
    }

    /// Whether a caller's etag, if any, is the current one.
    pub fn etag_matches(&self, etag: Option<&str>) -> bool {
        etag.is_none_or(|etag| etag == self.etag())
    }
}

/// The etag of a revision, as shown: the revision, quoted like an HTTP
/// entity tag.
pub struct Etag(pub i64);

impl std::fmt::Display for Etag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\"", self.0)
    }
}

/// A customer borrowed from the row it was read from, before any of it is
/// copied: a listing builds each of its items from one of these, either the
/// owned [`Customer`] or (the gRPC stream) the encoded message, with no
/// owned customer in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerRef<'a> {
    pub id: CustomerId,
    pub state: State,
    pub external_id: Option<&'a str>,
    /// `None` once deleted.
    pub email: Option<&'a str>,
    pub name: Option<&'a str>,
    pub phone: Option<&'a str>,
    /// line1, line2, city, state, postal code, country.
    pub address: [Option<&'a str>; 6],
    pub timezone: Option<&'a str>,
    /// Ordered by key (as a `BTreeMap` orders them), keys unique.
    pub metadata: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Ordered by key, keys unique.
    pub provider_ids: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    pub revision: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub archive_time: Option<DateTime<Utc>>,
    pub delete_time: Option<DateTime<Utc>>,
}

/// What a listing makes of each customer it reads.
pub trait FromCustomerRef: Sized + Send + 'static {
    fn from_ref(customer: CustomerRef<'_>) -> Self;

    /// Where it stands in the listing's keyset order: its creation time
    /// and id.
    fn position(&self) -> (DateTime<Utc>, uuid::Uuid);
}

impl FromCustomerRef for Customer {
    fn from_ref(c: CustomerRef<'_>) -> Customer {
        // Every field, named: a new one does not compile until it is read.
        let CustomerRef {
            id,
            state,
            external_id,
            email,
            name,
            phone,
            address: [line1, line2, city, address_state, postal_code, country],
            timezone,
            metadata,
            provider_ids,
            revision,
            create_time,
            update_time,
            archive_time,
            delete_time,
        } = c;
        let owned = |s: Option<&str>| s.map(str::to_owned);
        let map = |entries: Vec<(Cow<'_, str>, Cow<'_, str>)>| {
            entries
                .into_iter()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        };
        Customer {
            id,
            state,
            fields: CustomerFields {
                external_id: owned(external_id),
                email: email.unwrap_or_default().to_owned(),
                name: owned(name),
                phone: owned(phone),
                address: Address {
                    line1: owned(line1),
                    line2: owned(line2),
                    city: owned(city),
                    state: owned(address_state),
                    postal_code: owned(postal_code),
                    country: owned(country),
                },
                timezone: owned(timezone),
                metadata: map(metadata),
                provider_ids: map(provider_ids),
            },
            revision,
            create_time,
            update_time,
            archive_time,
            delete_time,
        }
    }

    fn position(&self) -> (DateTime<Utc>, uuid::Uuid) {
        (self.create_time, self.id.uuid())
    }
}
