//! Rows as diesel reads and writes them, and their conversion to the domain.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::{
    deserialize::{self, FromSql, FromSqlRow},
    pg::{Pg, PgValue},
    prelude::*,
    sql_types::Jsonb,
};
use uuid::Uuid;

use super::schema::{customer_provider_ids, customers};
use crate::{
    domain::{Address, AppId, Customer, CustomerFields, CustomerId, State, ValidFields},
    error::Error,
};

/// A `jsonb` object of strings (a customer's metadata), read straight from
/// PostgreSQL's binary form into the map, with no `serde_json::Value` in
/// between: a listing reads one per row. As JSON (an event's customer), the
/// plain object.
#[derive(Debug, Clone, Default, PartialEq, FromSqlRow, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct StringMap(pub BTreeMap<String, String>);

impl FromSql<Jsonb, Pg> for StringMap {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        // Binary jsonb is a version byte (1) and the JSON text.
        match value.as_bytes().split_first() {
            Some((1, json)) => Ok(Self(serde_json::from_slice(json)?)),
            _ => Err("unsupported jsonb encoding version".into()),
        }
    }
}

/// A customer's row, provider ids included (their copy in the row). Also
/// the stored form of an event's customer (as JSON, with its provider ids
/// beside it, as events have always stored them).
#[derive(
    Debug, Clone, Queryable, QueryableByName, Selectable, serde::Serialize, serde::Deserialize,
)]
#[diesel(table_name = customers, check_for_backend(diesel::pg::Pg))]
pub struct CustomerRow {
    pub id: Uuid,
    pub external_id: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub phone: Option<String>,
    pub address_line1: Option<String>,
    pub address_line2: Option<String>,
    pub address_city: Option<String>,
    pub address_state: Option<String>,
    pub address_postal_code: Option<String>,
    pub address_country: Option<String>,
    pub timezone: Option<String>,
    pub metadata: StringMap,
    pub state: String,
    pub revision: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub archive_time: Option<DateTime<Utc>>,
    pub delete_time: Option<DateTime<Utc>>,
    /// Left out of an event's JSON, which keeps them beside the row.
    #[serde(skip)]
    pub provider_ids: StringMap,
}

impl CustomerRow {
    /// The row of a customer.
    pub fn of(customer: &Customer) -> CustomerRow {
        // Every field, named: a new one does not compile until it is kept.
        let Customer {
            id,
            state,
            fields,
            revision,
            create_time,
            update_time,
            archive_time,
            delete_time,
        } = customer;
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
        CustomerRow {
            id: id.uuid(),
            external_id: external_id.clone(),
            // A deleted customer has no email.
            email: (!email.is_empty()).then(|| email.clone()),
            name: name.clone(),
            phone: phone.clone(),
            address_line1: address.line1.clone(),
            address_line2: address.line2.clone(),
            address_city: address.city.clone(),
            address_state: address.state.clone(),
            address_postal_code: address.postal_code.clone(),
            address_country: address.country.clone(),
            timezone: timezone.clone(),
            metadata: StringMap(metadata.clone()),
            state: state.as_str().to_owned(),
            revision: *revision,
            create_time: *create_time,
            update_time: *update_time,
            archive_time: *archive_time,
            delete_time: *delete_time,
            provider_ids: StringMap(provider_ids.clone()),
        }
    }

    /// The domain customer.
    pub fn into_customer(self) -> Result<Customer, Error> {
        // Every column, named: a new one does not compile until it is read.
        let CustomerRow {
            id,
            external_id,
            email,
            name,
            phone,
            address_line1,
            address_line2,
            address_city,
            address_state,
            address_postal_code,
            address_country,
            timezone,
            metadata,
            state,
            revision,
            create_time,
            update_time,
            archive_time,
            delete_time,
            provider_ids,
        } = self;
        let state = State::from_db(&state)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("unknown state {state:?}")))?;
        Ok(Customer {
            id: CustomerId::from_uuid(id),
            state,
            fields: CustomerFields {
                external_id,
                email: email.unwrap_or_default(),
                name,
                phone,
                address: Address {
                    line1: address_line1,
                    line2: address_line2,
                    city: address_city,
                    state: address_state,
                    postal_code: address_postal_code,
                    country: address_country,
                },
                timezone,
                metadata: metadata.0,
                provider_ids: provider_ids.0,
            },
            revision,
            create_time,
            update_time,
            archive_time,
            delete_time,
        })
    }
}

/// The writable columns of a customer. `None` is NULL both in an update (so
/// that it clears what the fields clear) and in an insert (never `DEFAULT`,
/// which would make the statement's text vary and defeat diesel's statement
/// cache; these columns' default is NULL anyway).
#[derive(Debug, Insertable, AsChangeset)]
#[diesel(
    table_name = customers,
    treat_none_as_null = true,
    treat_none_as_default_value = false
)]
pub struct CustomerColumns<'a> {
    pub external_id: Option<&'a str>,
    pub email: Option<&'a str>,
    pub name: Option<&'a str>,
    pub phone: Option<&'a str>,
    pub address_line1: Option<&'a str>,
    pub address_line2: Option<&'a str>,
    pub address_city: Option<&'a str>,
    pub address_state: Option<&'a str>,
    pub address_postal_code: Option<&'a str>,
    pub address_country: Option<&'a str>,
    pub timezone: Option<&'a str>,
    pub metadata: serde_json::Value,
    /// The row's copy; `customer_provider_ids` holds the keys.
    pub provider_ids: serde_json::Value,
}

impl<'a> CustomerColumns<'a> {
    pub fn new(fields: &'a ValidFields) -> Self {
        // Every field, named: a new one does not compile until it is stored.
        let CustomerFields {
            external_id,
            email,
            name,
            phone,
            address,
            timezone,
            metadata,
            provider_ids,
        } = &**fields;
        let Address {
            line1,
            line2,
            city,
            state,
            postal_code,
            country,
        } = address;
        Self {
            external_id: external_id.as_deref(),
            email: Some(email),
            name: name.as_deref(),
            phone: phone.as_deref(),
            address_line1: line1.as_deref(),
            address_line2: line2.as_deref(),
            address_city: city.as_deref(),
            address_state: state.as_deref(),
            address_postal_code: postal_code.as_deref(),
            address_country: country.as_deref(),
            timezone: timezone.as_deref(),
            metadata: serde_json::to_value(metadata).unwrap_or_default(),
            provider_ids: serde_json::to_value(provider_ids).unwrap_or_default(),
        }
    }

    /// Every writable column emptied: what DeleteCustomer leaves. A new
    /// column does not compile until it is erased here too.
    pub fn erased() -> Self {
        Self {
            external_id: None,
            email: None,
            name: None,
            phone: None,
            address_line1: None,
            address_line2: None,
            address_city: None,
            address_state: None,
            address_postal_code: None,
            address_country: None,
            timezone: None,
            metadata: serde_json::json!({}),
            provider_ids: serde_json::json!({}),
        }
    }
}

/// A new customer's row. Every field is a value, never `DEFAULT`, so that
/// diesel keeps the insert prepared (see `super::cached`).
#[derive(Debug, Insertable)]
#[diesel(table_name = customers, treat_none_as_default_value = false)]
pub struct NewCustomer<'a> {
    pub app_id: Uuid,
    pub id: Uuid,
    #[diesel(embed)]
    pub columns: CustomerColumns<'a>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = customer_provider_ids)]
pub struct NewProviderId<'a> {
    pub app_id: Uuid,
    pub customer_id: Uuid,
    pub provider: &'a str,
    pub provider_customer_id: &'a str,
}

impl<'a> NewProviderId<'a> {
    pub fn all(app: AppId, customer: CustomerId, pairs: &'a BTreeMap<String, String>) -> Vec<Self> {
        pairs
            .iter()
            .map(|(provider, id)| NewProviderId {
                app_id: app.0,
                customer_id: customer.uuid(),
                provider,
                provider_customer_id: id,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use diesel::{deserialize::FromSql, pg::PgValue, sql_types::Jsonb};

    use super::StringMap;

    fn read(bytes: &[u8]) -> diesel::deserialize::Result<StringMap> {
        let jsonb = || NonZeroU32::new(3802).expect("jsonb's oid");
        <StringMap as FromSql<Jsonb, diesel::pg::Pg>>::from_sql(PgValue::new(bytes, &jsonb))
    }

    #[test]
    fn metadata_is_read_from_binary_jsonb() {
        let map = read(b"\x01{\"plan\": \"pro\", \"a\": \"\\u00e9\"}").expect("a string map");
        let pairs: Vec<_> = map
            .0
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(pairs, [("a", "é"), ("plan", "pro")]);
        // Another version of the binary form, or a value that is not a map
        // of strings, is an error rather than an empty map.
        assert!(read(b"\x02{}").is_err());
        assert!(read(b"").is_err());
        assert!(read(b"\x01{\"seats\": 3}").is_err());
        // As JSON (an event's customer), the plain object.
        assert_eq!(
            serde_json::to_string(&map).unwrap(),
            r#"{"a":"é","plan":"pro"}"#
        );
    }
}
