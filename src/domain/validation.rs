//! Validation: every rule on what callers send, collecting every violation
//! rather than stopping at the first, and normalising what it accepts
//! (phone numbers to E.164, country codes to upper case, emails trimmed).

use std::{collections::BTreeMap, fmt, str::FromStr};

use super::{
    customer::{AddressPart, CustomerFields, ValidFields},
    ids::CustomerId,
};

/// A field that failed validation: its path in the request and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// A request that cannot be carried out as sent: the first
/// [`MAX_VIOLATIONS`] violations found, and how many more there were.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Invalid {
    pub violations: Vec<FieldViolation>,
    pub omitted: usize,
}

impl Invalid {
    /// A single invalid field.
    pub fn field(field: impl fmt::Display, description: impl Into<String>) -> Invalid {
        let mut v = Violations::new("");
        v.add(field, description);
        v.into_invalid()
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

/// A caller's value quoted in an error message, cut to a readable length.
pub fn echo(value: &str) -> String {
    format!("{:?}", truncate(value, 48))
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

    /// Adds the violations of another check, paths as they are.
    pub fn absorb(&mut self, invalid: Invalid) {
        for violation in invalid.violations {
            if self.list.len() >= MAX_VIOLATIONS {
                self.omitted += 1;
            } else {
                self.list.push(violation);
            }
        }
        self.omitted += invalid.omitted;
    }

    /// Everything added so far, as an error.
    pub fn into_invalid(self) -> Invalid {
        Invalid {
            violations: self.list,
            omitted: self.omitted,
        }
    }

    /// `Ok(value)` when nothing was added, else every violation.
    pub fn into_result<T>(self, value: T) -> Result<T, Invalid> {
        if self.list.is_empty() {
            Ok(value)
        } else {
            Err(self.into_invalid())
        }
    }

    pub(crate) fn max_chars(&mut self, field: &str, value: &str, max: usize) {
        let n = value.chars().count();
        if n > max {
            self.add(field, format!("must be at most {max} characters (got {n})"));
        }
    }

    pub(crate) fn no_control(&mut self, field: &str, value: &str) {
        if value.chars().any(char::is_control) {
            self.add(field, "must not contain control characters");
        }
    }

    /// Free text (metadata values) may hold any character but NUL, which
    /// PostgreSQL's text cannot store.
    pub(crate) fn no_nul(&mut self, field: &str, value: &str) {
        if value.contains('\0') {
            self.add(field, "must not contain NUL (U+0000)");
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

impl CustomerFields {
    /// Normalises and validates every field. Violations are reported with
    /// paths under `prefix` (e.g. `customer.`).
    pub fn validate(mut self, prefix: &str) -> Result<ValidFields, Invalid> {
        let mut v = Violations::new(prefix);
        // Every field, named: a new one does not compile until it has rules.
        let CustomerFields {
            external_id,
            email,
            name,
            phone,
            address,
            timezone,
            metadata,
            provider_ids,
        } = &mut self;

        if let Some(external_id) = external_id {
            if external_id.trim().is_empty() {
                v.add("external_id", "must not be blank");
            }
            v.max_chars("external_id", external_id, MAX_EXTERNAL_ID_CHARS);
            v.no_control("external_id", external_id);
        }

        *email = email.trim().to_owned();
        if let Err(why) = check_email(email) {
            v.add("email", why);
        }

        if let Some(name) = name {
            v.max_chars("name", name, MAX_TEXT_CHARS);
            v.no_control("name", name);
        }

        for part in AddressPart::ALL {
            if let Some(value) = address.part(part) {
                let field = format!("address.{}", part.name());
                v.max_chars(&field, value, MAX_TEXT_CHARS);
                v.no_control(&field, value);
            }
        }
        let mut country_ok = true;
        if let Some(country) = &mut address.country {
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

        if let Some(number) = phone {
            let region = address.country.as_deref().filter(|_| country_ok);
            match normalize_phone(number, region) {
                Ok(e164) => *number = e164,
                Err(why) => v.add("phone", why),
            }
        }

        if let Some(tz) = timezone
            && tz.parse::<chrono_tz::Tz>().is_err()
        {
            v.add(
                "timezone",
                "must be an IANA time zone, e.g. \"Europe/Paris\"",
            );
        }

        check_metadata(&mut v, "metadata", metadata);
        check_provider_ids(&mut v, provider_ids);

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
        v.no_nul(&path, value);
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

/// Parses a customer id from a request field, as a violation if malformed.
pub fn parse_id(field: &str, value: &str) -> Result<CustomerId, Invalid> {
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
