//! A listing's rows, read in place: each row's values are borrowed from
//! the buffer PostgreSQL's message arrived in and handed, as a
//! [`CustomerRef`], to whatever the listing builds (see
//! [`FromCustomerRef`]). The gRPC stream builds its encoded messages from
//! them, so a listed customer's text is copied once, into its message.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use diesel::{
    deserialize::{self, FromSql, QueryableByName},
    pg::{Pg, PgValue},
    row::{Field, NamedRow},
    sql_types::{BigInt, Timestamptz, Uuid as SqlUuid},
};
use serde::de::{Deserializer as _, MapAccess, Visitor};
use uuid::Uuid;

use crate::domain::{CustomerId, CustomerRef, FromCustomerRef, State};

/// `T`, built from one row of `customers` (any query returning its columns
/// by name).
pub struct Listed<T>(pub T);

/// The columns read, each with its position in `customers`: a row that has
/// the column there is read without a search by name.
const COLUMNS: [(usize, &str); 20] = [
    (1, "id"),
    (2, "external_id"),
    (3, "email"),
    (4, "name"),
    (5, "phone"),
    (6, "address_line1"),
    (7, "address_line2"),
    (8, "address_city"),
    (9, "address_state"),
    (10, "address_postal_code"),
    (11, "address_country"),
    (12, "timezone"),
    (13, "metadata"),
    (14, "state"),
    (15, "revision"),
    (16, "create_time"),
    (17, "update_time"),
    (18, "archive_time"),
    (19, "delete_time"),
    (21, "provider_ids"),
];

impl<T: FromCustomerRef> QueryableByName<Pg> for Listed<T> {
    fn build<'a>(row: &impl NamedRow<'a, Pg>) -> deserialize::Result<Self> {
        let field = |(at, name): (usize, &str)| {
            diesel::row::Row::get(row, at)
                .filter(|f| f.field_name() == Some(name))
                .or_else(|| diesel::row::Row::get(row, name))
                .ok_or_else(|| format!("column {name} is missing"))
        };
        let [
            id,
            external_id,
            email,
            name,
            phone,
            line1,
            line2,
            city,
            address_state,
            postal_code,
            country,
            timezone,
            metadata,
            state,
            revision,
            create_time,
            update_time,
            archive_time,
            delete_time,
            provider_ids,
        ] = COLUMNS.map(field);
        let (id, external_id, email, name, phone) = (id?, external_id?, email?, name?, phone?);
        let (line1, line2, city, address_state) = (line1?, line2?, city?, address_state?);
        let (postal_code, country, timezone, metadata) =
            (postal_code?, country?, timezone?, metadata?);
        let (state, revision, create_time, update_time) =
            (state?, revision?, create_time?, update_time?);
        let (archive_time, delete_time, provider_ids) =
            (archive_time?, delete_time?, provider_ids?);

        let state = text(state.value())?.unwrap_or_default();
        let customer = CustomerRef {
            id: CustomerId::from_uuid(<Uuid as FromSql<SqlUuid, Pg>>::from_sql(required(
                id.value(),
            )?)?),
            state: State::from_db(state).ok_or_else(|| format!("unknown state {state:?}"))?,
            external_id: text(external_id.value())?,
            email: text(email.value())?,
            name: text(name.value())?,
            phone: text(phone.value())?,
            address: [
                text(line1.value())?,
                text(line2.value())?,
                text(city.value())?,
                text(address_state.value())?,
                text(postal_code.value())?,
                text(country.value())?,
            ],
            timezone: text(timezone.value())?,
            metadata: string_map(required(metadata.value())?.as_bytes())?,
            provider_ids: string_map(required(provider_ids.value())?.as_bytes())?,
            revision: <i64 as FromSql<BigInt, Pg>>::from_sql(required(revision.value())?)?,
            create_time: time(required(create_time.value())?)?,
            update_time: time(required(update_time.value())?)?,
            archive_time: archive_time.value().map(time).transpose()?,
            delete_time: delete_time.value().map(time).transpose()?,
        };
        Ok(Listed(T::from_ref(customer)))
    }
}

fn required(value: Option<PgValue<'_>>) -> deserialize::Result<PgValue<'_>> {
    value.ok_or_else(|| "unexpected NULL".into())
}

/// A `text` value, borrowed (PostgreSQL's binary form of text is its
/// bytes).
fn text(value: Option<PgValue<'_>>) -> deserialize::Result<Option<&str>> {
    match value {
        None => Ok(None),
        Some(value) => Ok(Some(std::str::from_utf8(value.as_bytes())?)),
    }
}

fn time(value: PgValue<'_>) -> deserialize::Result<DateTime<Utc>> {
    <DateTime<Utc> as FromSql<Timestamptz, Pg>>::from_sql(value)
}

/// A `jsonb` object of strings, its entries ordered by key; a string with
/// no escapes in it is borrowed.
fn string_map(jsonb: &[u8]) -> deserialize::Result<Vec<(Cow<'_, str>, Cow<'_, str>)>> {
    // Binary jsonb is a version byte (1) and the JSON text.
    let Some((1, json)) = jsonb.split_first() else {
        return Err("unsupported jsonb encoding version".into());
    };
    let mut entries = serde_json::Deserializer::from_slice(json).deserialize_map(Entries)?;
    // jsonb orders keys by length first; the messages, as a `BTreeMap`.
    entries.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
    Ok(entries)
}

/// Reads a JSON object of strings into its entries.
struct Entries;

impl<'de> Visitor<'de> for Entries {
    type Value = Vec<(Cow<'de, str>, Cow<'de, str>)>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object of strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(4));
        while let Some((key, value)) = map.next_entry::<Text<'de>, Text<'de>>()? {
            entries.push((key.0, value.0));
        }
        Ok(entries)
    }
}

/// A JSON string, borrowed when it has no escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Str;
        impl<'de> Visitor<'de> for Str {
            type Value = Cow<'de, str>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(s))
            }

            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(s.to_owned()))
            }

            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(s))
            }
        }
        d.deserialize_str(Str).map(Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jsonb(json: &str) -> Vec<u8> {
        let mut bytes = vec![1];
        bytes.extend_from_slice(json.as_bytes());
        bytes
    }

    #[test]
    fn string_maps_are_read_in_key_order_and_borrowed_where_they_can_be() {
        let bytes = jsonb(r#"{"b": "2", "aa": "x\"y", "a\u00e9": "\u00e9"}"#);
        let entries = string_map(&bytes).unwrap();
        let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["aa", "aé", "b"]);
        assert_eq!(entries[0].1, "x\"y");
        assert!(
            matches!(entries[0].1, Cow::Owned(_)),
            "an escaped string is unescaped"
        );
        assert!(matches!(entries[2].0, Cow::Borrowed("b")));
        assert_eq!(entries[1].1, "é");
    }

    #[test]
    fn anything_but_an_object_of_strings_is_an_error() {
        for json in [r#"{"a": 1}"#, r#"["a"]"#, r#"{"a": null}"#, "{"] {
            let bytes = jsonb(json);
            assert!(string_map(&bytes).is_err(), "{json}");
        }
        assert!(string_map(b"\x02{}").is_err());
    }
}
