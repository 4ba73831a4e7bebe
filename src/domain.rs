//! The customer resource: its types, its validation and its update rules.
//!
//! Nothing here knows about gRPC or SQL. Validation collects every violation
//! rather than stopping at the first, and normalises what it accepts (phone
//! numbers to E.164, country codes to upper case, emails trimmed).

use std::{collections::BTreeMap, fmt, str::FromStr};

use chrono::{DateTime, Utc};
use type_safe_id::{StaticType, TypeSafeId};
use uuid::Uuid;

use crate::error::{Error, MAX_DESCRIPTION_BYTES, MAX_FIELD_BYTES, MAX_VIOLATIONS, truncate};

/// A caller's value quoted in an error message, cut to a readable length.
pub fn echo(value: &str) -> String {
    format!("{:?}", truncate(value, 48))
}

/// Defines an id newtype over a UUID, shown and parsed as a TypeID
/// (`<prefix>_<26 base32>`).
macro_rules! typeid {
    ($(#[$doc:meta])* $name:ident, $tag:ident, $prefix:literal) => {
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        struct $tag;

        impl StaticType for $tag {
            const TYPE: &'static str = $prefix;
        }

        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub Uuid);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                TypeSafeId::from_type_and_uuid($tag, self.0).fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = type_safe_id::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let id: TypeSafeId<$tag> = s.parse()?;
                Ok(Self(id.uuid()))
            }
        }
    };
}

typeid!(
    /// The tenant a customer belongs to (`app_...`).
    AppId, AppTag, "app"
);

impl AppId {
    /// The app of the embedded development mode (created by the first
    /// migration).
    pub const DEFAULT: AppId = AppId(Uuid::nil());
}

typeid!(
    /// An API key's id, not the key itself (`key_...`).
    KeyId, KeyTag, "key"
);

impl KeyId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }
}

typeid!(
    /// A customer's id: a UUIDv7, shown as a TypeID
    /// (`cus_01h2xcejqtf2nbrexx3vqjhp41`), so ids sort by creation.
    CustomerId, CustomerTag, "cus"
);

impl CustomerId {
    /// A new id; ids created later sort after ids created earlier.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub fn uuid(&self) -> Uuid {
        self.0
    }
}

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
pub struct ValidFields(CustomerFields);

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
    pub external_id: Option<String>,
    /// `None` only once deleted.
    pub email: Option<String>,
    pub name: Option<String>,
    pub phone: Option<String>,
    pub address: Address,
    pub timezone: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub provider_ids: BTreeMap<String, String>,
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
        etag_of(self.revision)
    }

    /// The writable fields, as a base for an update.
    pub fn fields(&self) -> CustomerFields {
        CustomerFields {
            external_id: self.external_id.clone(),
            email: self.email.clone().unwrap_or_default(),
            name: self.name.clone(),
            phone: self.phone.clone(),
            address: self.address.clone(),
            timezone: self.timezone.clone(),
            metadata: self.metadata.clone(),
            provider_ids: self.provider_ids.clone(),
        }
    }

    /// Checks a caller's etag, if any, against the stored one.
    pub fn check_etag(&self, etag: Option<&str>) -> Result<(), Error> {
        match etag {
            Some(etag) if etag != self.etag() => Err(Error::EtagMismatch),
            _ => Ok(()),
        }
    }
}

fn etag_of(revision: i64) -> String {
    format!("\"{revision}\"")
}

/// A field that failed validation: its path in the request and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// Collects violations under a path prefix (`customer.` and so on). Keeps
/// the first [`MAX_VIOLATIONS`], each cut to a bounded length, and counts the
/// rest: an error never grows with the request.
#[derive(Debug, Default)]
pub struct Violations {
    prefix: String,
    list: Vec<FieldViolation>,
    omitted: usize,
}

impl Violations {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            list: Vec::new(),
            omitted: 0,
        }
    }

    pub fn add(&mut self, field: impl fmt::Display, description: impl Into<String>) {
        if self.list.len() >= MAX_VIOLATIONS {
            self.omitted += 1;
            return;
        }
        self.list.push(FieldViolation {
            field: truncate(&format!("{}{field}", self.prefix), MAX_FIELD_BYTES),
            description: truncate(&description.into(), MAX_DESCRIPTION_BYTES),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// `Ok(value)` when nothing was added, else `INVALID_ARGUMENT` with all.
    pub fn into_result<T>(self, value: T) -> Result<T, Error> {
        if self.list.is_empty() {
            Ok(value)
        } else {
            Err(Error::InvalidArgument {
                violations: self.list,
                omitted: self.omitted,
            })
        }
    }

    fn max_chars(&mut self, field: &str, value: &str, max: usize) {
        let n = value.chars().count();
        if n > max {
            self.add(field, format!("must be at most {max} characters (got {n})"));
        }
    }

    fn no_control(&mut self, field: &str, value: &str) {
        if value.chars().any(char::is_control) {
            self.add(field, "must not contain control characters");
        }
    }
}

pub const MAX_EMAIL_CHARS: usize = 512;
pub const MAX_TEXT_CHARS: usize = 512;
pub const MAX_EXTERNAL_ID_CHARS: usize = 255;
pub const MAX_METADATA_KEYS: usize = 50;
pub const MAX_METADATA_KEY_CHARS: usize = 40;
pub const MAX_METADATA_VALUE_CHARS: usize = 500;
pub const MAX_PROVIDERS: usize = 20;
pub const MAX_PROVIDER_CHARS: usize = 40;
pub const MAX_PROVIDER_ID_CHARS: usize = 255;
pub const MAX_QUERY_CHARS: usize = 200;
/// Most paths in an update mask: every field, address part, metadata key
/// and provider fits with room to spare.
pub const MAX_MASK_PATHS: usize = 100;

impl CustomerFields {
    /// Normalises and validates every field. Violations are reported with
    /// paths under `prefix` (e.g. `customer.`).
    pub fn validate(mut self, prefix: &str) -> Result<ValidFields, Error> {
        let mut v = Violations::new(prefix);

        if let Some(external_id) = &self.external_id {
            if external_id.trim().is_empty() {
                v.add("external_id", "must not be blank");
            }
            v.max_chars("external_id", external_id, MAX_EXTERNAL_ID_CHARS);
            v.no_control("external_id", external_id);
        }

        self.email = self.email.trim().to_owned();
        match check_email(&self.email) {
            Ok(()) => {}
            Err(why) => v.add("email", why),
        }

        if let Some(name) = &self.name {
            v.max_chars("name", name, MAX_TEXT_CHARS);
            v.no_control("name", name);
        }

        for part in AddressPart::ALL {
            if let Some(value) = self.address.part(part) {
                let field = format!("address.{}", part.name());
                v.max_chars(&field, value, MAX_TEXT_CHARS);
                v.no_control(&field, value);
            }
        }
        let mut country_ok = true;
        if let Some(country) = &mut self.address.country {
            match isocountry::CountryCode::for_alpha2_caseless(country) {
                Ok(code) => *country = code.alpha2().to_owned(),
                Err(_) => {
                    country_ok = false;
                    v.add(
                        "address.country",
                        "must be an ISO 3166-1 alpha-2 country code, e.g. \"US\"",
                    );
                }
            }
        }

        if let Some(phone) = &self.phone {
            let region = self.address.country.as_deref().filter(|_| country_ok);
            match normalize_phone(phone, region) {
                Ok(e164) => self.phone = Some(e164),
                Err(why) => v.add("phone", why),
            }
        }

        if let Some(tz) = &self.timezone
            && tz.parse::<chrono_tz::Tz>().is_err()
        {
            v.add(
                "timezone",
                "must be an IANA time zone, e.g. \"Europe/Paris\"",
            );
        }

        check_metadata(&mut v, "metadata", &self.metadata);
        check_provider_ids(&mut v, &self.provider_ids);

        v.into_result(ValidFields(self))
    }
}

fn check_email(email: &str) -> Result<(), String> {
    if email.is_empty() {
        return Err("is required".into());
    }
    let n = email.chars().count();
    if n > MAX_EMAIL_CHARS {
        return Err(format!(
            "must be at most {MAX_EMAIL_CHARS} characters (got {n})"
        ));
    }
    let options = email_address::Options::default()
        .with_required_tld()
        .without_domain_literal()
        .without_display_text();
    match email_address::EmailAddress::parse_with_options(email, options) {
        // The parser also accepts "Name <a@b.c>"; only a bare address will do.
        Ok(parsed) if parsed.email() == email => Ok(()),
        _ => Err(format!("{} is not a valid email address", echo(email))),
    }
}

/// Parses a phone number and formats it as E.164. A number without a leading
/// "+" is read as a national number of `region` (an ISO alpha-2 code).
fn normalize_phone(phone: &str, region: Option<&str>) -> Result<String, String> {
    let phone = phone.trim();
    let region = if phone.starts_with('+') {
        None
    } else {
        match region.and_then(|r| phonenumber::country::Id::from_str(r).ok()) {
            Some(id) => Some(id),
            None => {
                return Err(
                    "must be in international form (\"+14155551234\"), or address.country must \
                     be set to read it as a national number"
                        .into(),
                );
            }
        }
    };
    match phonenumber::parse(region, phone) {
        Ok(number) if phonenumber::is_valid(&number) => {
            Ok(number.format().mode(phonenumber::Mode::E164).to_string())
        }
        _ => Err(format!("{} is not a valid phone number", echo(phone))),
    }
}

fn check_metadata(v: &mut Violations, field: &str, metadata: &BTreeMap<String, String>) {
    if metadata.len() > MAX_METADATA_KEYS {
        v.add(
            field,
            format!(
                "must have at most {MAX_METADATA_KEYS} keys (got {})",
                metadata.len()
            ),
        );
    }
    for (key, value) in metadata {
        let path = format!("{field}[{}]", echo(key));
        if key.is_empty() {
            v.add(&path, "keys must not be empty");
        }
        if key.chars().count() > MAX_METADATA_KEY_CHARS {
            v.add(
                &path,
                format!("keys must be at most {MAX_METADATA_KEY_CHARS} characters"),
            );
        }
        v.no_control(&path, key);
        if value.chars().count() > MAX_METADATA_VALUE_CHARS {
            v.add(
                &path,
                format!("values must be at most {MAX_METADATA_VALUE_CHARS} characters"),
            );
        }
    }
}

fn check_provider_ids(v: &mut Violations, provider_ids: &BTreeMap<String, String>) {
    if provider_ids.len() > MAX_PROVIDERS {
        v.add(
            "provider_ids",
            format!("must have at most {MAX_PROVIDERS} providers"),
        );
    }
    for (provider, id) in provider_ids {
        let path = format!("provider_ids[{}]", echo(provider));
        let name_ok = !provider.is_empty()
            && provider.len() <= MAX_PROVIDER_CHARS
            && provider
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !name_ok {
            v.add(
                &path,
                format!(
                    "provider names must be 1 to {MAX_PROVIDER_CHARS} of [a-z0-9_-], e.g. \"stripe\""
                ),
            );
        }
        if id.trim().is_empty() {
            v.add(&path, "the provider's id must not be blank");
        }
        v.max_chars(&path, id, MAX_PROVIDER_ID_CHARS);
        v.no_control(&path, id);
    }
}

/// One path of an UpdateCustomer field mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldPath {
    ExternalId,
    Email,
    Name,
    Phone,
    Timezone,
    Address,
    AddressPart(AddressPart),
    Metadata,
    MetadataKey(String),
    ProviderIds,
    ProviderId(String),
}

impl FieldPath {
    /// Every writable field: what "*" stands for.
    fn all() -> Vec<FieldPath> {
        vec![
            FieldPath::ExternalId,
            FieldPath::Email,
            FieldPath::Name,
            FieldPath::Phone,
            FieldPath::Timezone,
            FieldPath::Address,
            FieldPath::Metadata,
            FieldPath::ProviderIds,
        ]
    }

    fn parse(path: &str) -> Option<Vec<FieldPath>> {
        let simple = match path {
            "*" => return Some(Self::all()),
            "external_id" => FieldPath::ExternalId,
            "email" => FieldPath::Email,
            "name" => FieldPath::Name,
            "phone" => FieldPath::Phone,
            "timezone" => FieldPath::Timezone,
            "address" => FieldPath::Address,
            "metadata" => FieldPath::Metadata,
            "provider_ids" => FieldPath::ProviderIds,
            _ => {
                let (head, rest) = path.split_once('.')?;
                // AIP-161: map keys that are not plain identifiers may be
                // quoted with backticks.
                let key = rest
                    .strip_prefix('`')
                    .and_then(|k| k.strip_suffix('`'))
                    .unwrap_or(rest);
                if key.is_empty() {
                    return None;
                }
                match head {
                    "address" => FieldPath::AddressPart(
                        AddressPart::ALL.into_iter().find(|p| p.name() == rest)?,
                    ),
                    "metadata" => FieldPath::MetadataKey(key.to_owned()),
                    "provider_ids" => FieldPath::ProviderId(key.to_owned()),
                    _ => return None,
                }
            }
        };
        Some(vec![simple])
    }
}

/// What an UpdateCustomer writes: the paths and the values they take.
#[derive(Debug, Clone)]
pub struct Patch {
    paths: Vec<FieldPath>,
    values: CustomerFields,
}

impl Patch {
    /// A patch from a field mask, or, without one (`None` or empty), from the
    /// fields that are set in `values` (maps merged key by key).
    pub fn new(mask: Option<&[String]>, values: CustomerFields) -> Result<Patch, Error> {
        let paths = match mask {
            Some(mask) if mask.len() > MAX_MASK_PATHS => {
                return Err(Error::invalid(
                    "update_mask",
                    format!(
                        "must have at most {MAX_MASK_PATHS} paths (got {})",
                        mask.len()
                    ),
                ));
            }
            Some(mask) if !mask.is_empty() => {
                let mut v = Violations::new("");
                let mut paths = Vec::new();
                for path in mask {
                    match FieldPath::parse(path) {
                        Some(parsed) => paths.extend(parsed),
                        None => v.add(
                            "update_mask",
                            format!("unknown or read-only field path {}", echo(path)),
                        ),
                    }
                }
                v.into_result(paths)?
            }
            _ => Self::populated(&values),
        };
        Ok(Patch { paths, values })
    }

    fn populated(values: &CustomerFields) -> Vec<FieldPath> {
        let mut paths = Vec::new();
        if values.external_id.is_some() {
            paths.push(FieldPath::ExternalId);
        }
        if !values.email.is_empty() {
            paths.push(FieldPath::Email);
        }
        if values.name.is_some() {
            paths.push(FieldPath::Name);
        }
        if values.phone.is_some() {
            paths.push(FieldPath::Phone);
        }
        if values.timezone.is_some() {
            paths.push(FieldPath::Timezone);
        }
        for part in AddressPart::ALL {
            if values.address.part(part).is_some() {
                paths.push(FieldPath::AddressPart(part));
            }
        }
        paths.extend(values.metadata.keys().cloned().map(FieldPath::MetadataKey));
        paths.extend(
            values
                .provider_ids
                .keys()
                .cloned()
                .map(FieldPath::ProviderId),
        );
        paths
    }

    /// Whether the patch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The fields after the patch. An email path with an empty value is left
    /// for validation to reject (email is required).
    pub fn apply(&self, mut current: CustomerFields) -> CustomerFields {
        let values = &self.values;
        for path in &self.paths {
            match path {
                FieldPath::ExternalId => current.external_id = values.external_id.clone(),
                FieldPath::Email => current.email = values.email.clone(),
                FieldPath::Name => current.name = values.name.clone(),
                FieldPath::Phone => current.phone = values.phone.clone(),
                FieldPath::Timezone => current.timezone = values.timezone.clone(),
                FieldPath::Address => current.address = values.address.clone(),
                FieldPath::AddressPart(part) => {
                    *current.address.part_mut(*part) = values.address.part(*part).clone();
                }
                FieldPath::Metadata => current.metadata = values.metadata.clone(),
                FieldPath::MetadataKey(key) => {
                    set_or_remove(&mut current.metadata, key, values.metadata.get(key))
                }
                FieldPath::ProviderIds => current.provider_ids = values.provider_ids.clone(),
                FieldPath::ProviderId(key) => {
                    set_or_remove(&mut current.provider_ids, key, values.provider_ids.get(key))
                }
            }
        }
        current
    }
}

fn set_or_remove(map: &mut BTreeMap<String, String>, key: &str, value: Option<&String>) {
    match value {
        Some(value) => {
            map.insert(key.to_owned(), value.clone());
        }
        None => {
            map.remove(key);
        }
    }
}

/// Sort order of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    #[default]
    Ascending,
    Descending,
}

/// Filters of ListCustomers, validated.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub email: Option<String>,
    pub query: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub metadata: BTreeMap<String, String>,
    pub include_archived: bool,
    pub order: Order,
    pub limit: Option<u64>,
    pub resume_after: Option<CustomerId>,
}

impl ListFilter {
    /// Checks the filter's free-form parts.
    pub fn validate(self) -> Result<ListFilter, Error> {
        let mut v = Violations::new("");
        if let Some(email) = &self.email {
            v.max_chars("email", email, MAX_EMAIL_CHARS);
        }
        if let Some(query) = &self.query {
            v.max_chars("query", query, MAX_QUERY_CHARS);
            v.no_control("query", query);
        }
        if self.metadata.len() > MAX_METADATA_KEYS {
            v.add(
                "metadata",
                format!("must have at most {MAX_METADATA_KEYS} pairs"),
            );
        }
        v.into_result(self)
    }
}

/// Parses a customer id from a request field, as a violation if malformed.
pub fn parse_id(field: &str, value: &str) -> Result<CustomerId, Error> {
    let mut v = Violations::new("");
    if value.is_empty() {
        v.add(field, "is required");
        return v.into_result(CustomerId::generate());
    }
    match value.parse() {
        Ok(id) => Ok(id),
        Err(_) => {
            v.add(
                field,
                format!(
                    "{} is not a customer id (\"cus_\" and 26 base32 characters)",
                    echo(value)
                ),
            );
            v.into_result(CustomerId::generate())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> CustomerFields {
        CustomerFields {
            email: "alice@example.com".into(),
            ..Default::default()
        }
    }

    fn violations(fields: CustomerFields) -> Vec<String> {
        match fields.validate("customer.") {
            Err(Error::InvalidArgument { violations, .. }) => {
                violations.into_iter().map(|v| v.field).collect()
            }
            other => panic!("expected violations, got {other:?}"),
        }
    }

    #[test]
    fn customer_ids_round_trip_and_sort() {
        let a = CustomerId::generate();
        let b = CustomerId::generate();
        let text = a.to_string();
        assert!(text.starts_with("cus_") && text.len() == 30, "{text}");
        assert_eq!(text.parse::<CustomerId>().unwrap(), a);
        assert!(a.to_string() < b.to_string());
        assert!(
            "usr_01h2xcejqtf2nbrexx3vqjhp41"
                .parse::<CustomerId>()
                .is_err()
        );
        assert!("cus_zzz".parse::<CustomerId>().is_err());
    }

    #[test]
    fn phone_is_normalised_to_e164() {
        let mut f = valid();
        f.phone = Some("+1 (415) 555-1234".into());
        assert_eq!(
            f.validate("").unwrap().phone.as_deref(),
            Some("+14155551234")
        );

        let mut f = valid();
        f.phone = Some("01 42 68 53 00".into());
        f.address.country = Some("fr".into());
        let valid = f.validate("").unwrap();
        assert_eq!(valid.phone.as_deref(), Some("+33142685300"));
        assert_eq!(valid.address.country.as_deref(), Some("FR"));
    }

    #[test]
    fn every_bad_field_is_reported() {
        let fields = CustomerFields {
            external_id: Some("  ".into()),
            email: "not-an-email".into(),
            name: Some("x".repeat(513)),
            phone: Some("12345".into()),
            address: Address {
                country: Some("XX".into()),
                ..Default::default()
            },
            timezone: Some("Mars/Olympus".into()),
            metadata: (0..51).map(|i| (format!("k{i}"), "v".into())).collect(),
            provider_ids: [("Stripe".to_owned(), "cus_1".to_owned())].into(),
        };
        let fields = violations(fields);
        for expected in [
            "customer.external_id",
            "customer.email",
            "customer.name",
            "customer.phone",
            "customer.address.country",
            "customer.timezone",
            "customer.metadata",
            "customer.provider_ids[\"Stripe\"]",
        ] {
            assert!(
                fields.iter().any(|f| f == expected),
                "{expected} in {fields:?}"
            );
        }
    }

    #[test]
    fn email_rules() {
        for bad in [
            "",
            "a@b",
            "Alice <a@example.com>",
            "a@[127.0.0.1]",
            "a b@example.com",
        ] {
            let mut f = valid();
            f.email = bad.into();
            assert_eq!(violations(f), ["customer.email"], "{bad:?}");
        }
        let mut f = valid();
        f.email = format!("{}@example.com", "a".repeat(500));
        assert_eq!(violations(f), ["customer.email"]);
        let mut f = valid();
        f.email = "  Alice@Example.COM ".into();
        assert_eq!(f.validate("").unwrap().email, "Alice@Example.COM");
    }

    #[test]
    fn metadata_limits() {
        let mut f = valid();
        f.metadata.insert("k".repeat(41), "v".into());
        f.metadata.insert("ok".into(), "v".repeat(501));
        f.metadata.insert(String::new(), "v".into());
        assert_eq!(violations(f).len(), 3);
        let mut f = valid();
        f.metadata.insert("k".repeat(40), "v".repeat(500));
        assert!(f.validate("").is_ok());
    }

    #[test]
    fn mask_paths_apply_as_documented() {
        let current = CustomerFields {
            email: "a@example.com".into(),
            name: Some("Old".into()),
            address: Address {
                city: Some("Paris".into()),
                country: Some("FR".into()),
                ..Default::default()
            },
            metadata: [("a", "1"), ("b", "2")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
            ..Default::default()
        };
        let values = CustomerFields {
            name: None,
            address: Address {
                city: Some("Lyon".into()),
                ..Default::default()
            },
            metadata: [("a".to_owned(), "9".to_owned())].into(),
            ..Default::default()
        };
        let mask: Vec<String> = ["name", "address.city", "metadata.a", "metadata.b"]
            .map(String::from)
            .into();
        let patched = Patch::new(Some(&mask), values)
            .unwrap()
            .apply(current.clone());
        assert_eq!(patched.name, None);
        assert_eq!(patched.address.city.as_deref(), Some("Lyon"));
        assert_eq!(patched.address.country.as_deref(), Some("FR"));
        assert_eq!(patched.metadata, [("a".to_owned(), "9".to_owned())].into());
        assert_eq!(patched.email, current.email);
    }

    #[test]
    fn no_mask_writes_populated_fields_and_merges_maps() {
        let current = CustomerFields {
            email: "a@example.com".into(),
            name: Some("Old".into()),
            metadata: [("a".to_owned(), "1".to_owned())].into(),
            ..Default::default()
        };
        let values = CustomerFields {
            phone: Some("+14155551234".into()),
            metadata: [("b".to_owned(), "2".to_owned())].into(),
            ..Default::default()
        };
        let patched = Patch::new(None, values).unwrap().apply(current);
        assert_eq!(patched.name.as_deref(), Some("Old"));
        assert_eq!(patched.phone.as_deref(), Some("+14155551234"));
        assert_eq!(patched.metadata.len(), 2);
    }

    #[test]
    fn bad_mask_paths_are_rejected() {
        let mask: Vec<String> = ["id", "create_time", "address.planet", "metadata."]
            .map(String::from)
            .into();
        match Patch::new(Some(&mask), CustomerFields::default()) {
            Err(Error::InvalidArgument { violations, .. }) => assert_eq!(violations.len(), 4),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn violations_are_capped_and_counted() {
        let mask: Vec<String> = (0..MAX_MASK_PATHS + 1).map(|i| format!("x{i}")).collect();
        match Patch::new(Some(&mask), CustomerFields::default()) {
            Err(Error::InvalidArgument { violations, .. }) => {
                assert_eq!(violations.len(), 1);
                assert_eq!(violations[0].field, "update_mask");
            }
            other => panic!("{other:?}"),
        }
        let mask: Vec<String> = (0..MAX_MASK_PATHS).map(|i| "y".repeat(1000 + i)).collect();
        match Patch::new(Some(&mask), CustomerFields::default()) {
            Err(Error::InvalidArgument {
                violations,
                omitted,
            }) => {
                assert_eq!(violations.len(), MAX_VIOLATIONS);
                assert_eq!(omitted, MAX_MASK_PATHS - MAX_VIOLATIONS);
                assert!(
                    violations
                        .iter()
                        .all(|v| v.description.chars().count() < 100)
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
