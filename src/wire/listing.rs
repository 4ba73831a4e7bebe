//! ListCustomers' messages, encoded straight from the rows they come from.
//!
//! A listing sends one message per customer, and building each as a typed
//! `pb::Customer` (a string allocated per field, a map per map, all freed
//! again once encoded) was most of the service's CPU per listed row. Here a
//! listed customer, borrowed from its row ([`CustomerRef`]), is written
//! into its encoded `ListCustomersResponse` at once: the same bytes prost
//! writes for the typed message (`encoded_as_prost_encodes` checks every
//! field), in one allocation.
//!
//! [`ListCustomersResponse`] stands in for the generated type (`build.rs`
//! maps the proto's message to it): it carries either that encoding (the
//! server's side) or the typed customer (a client's side, decoded as
//! usual).

use std::io::Write as _;

use bytes::{Buf, BufMut, Bytes};
use chrono::{DateTime, Utc};
use prost::{
    DecodeError, Message,
    encoding::{DecodeContext, WireType, encode_varint, encoded_len_varint},
};

use prost_types::Timestamp;

use super::customer::timestamp;
use crate::{
    domain::{CustomerRef, Etag, FromCustomerRef},
    pb,
};

/// `customers.v1.ListCustomersResponse`: one customer of a listing.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct ListCustomersResponse {
    /// The customer, as a client decodes it. `None` in a message the server
    /// built from its encoding.
    pub customer: Option<pb::Customer>,
    /// The whole message, encoded (the server's side); empty otherwise.
    encoded: Bytes,
}

impl ListCustomersResponse {
    /// The message of a customer.
    pub fn new(customer: pb::Customer) -> Self {
        Self {
            customer: Some(customer),
            encoded: Bytes::new(),
        }
    }
}

impl From<EncodedCustomer> for ListCustomersResponse {
    fn from(e: EncodedCustomer) -> Self {
        Self {
            customer: None,
            encoded: e.message,
        }
    }
}

impl Message for ListCustomersResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.encoded.is_empty() {
            buf.put_slice(&self.encoded);
        } else if let Some(customer) = &self.customer {
            prost::encoding::message::encode(1, customer, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => {
                let customer = self.customer.get_or_insert_with(Default::default);
                prost::encoding::message::merge(wire_type, customer, buf, ctx).map_err(|mut e| {
                    e.push("ListCustomersResponse", "customer");
                    e
                })
            }
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        if !self.encoded.is_empty() {
            self.encoded.len()
        } else {
            self.customer
                .as_ref()
                .map_or(0, |c| prost::encoding::message::encoded_len(1, c))
        }
    }

    fn clear(&mut self) {
        self.customer = None;
        self.encoded = Bytes::new();
    }
}

/// A listed customer: its `ListCustomersResponse`, encoded, and its place
/// in the listing.
pub struct EncodedCustomer {
    message: Bytes,
    position: (DateTime<Utc>, uuid::Uuid),
}

impl FromCustomerRef for EncodedCustomer {
    fn from_ref(c: CustomerRef<'_>) -> Self {
        let (mut id, mut etag) = ([0u8; TEXT_BYTES], [0u8; TEXT_BYTES]);
        let customer = CustomerBody {
            customer: &c,
            id: on_stack(c.id, &mut id),
            etag: on_stack(Etag(c.revision), &mut etag),
        };
        // `customer = 1`: its key, its length, the customer.
        let len = len(&customer);
        let mut message = Vec::with_capacity(1 + encoded_len_varint(len as u64) + len);
        key(&mut message, 1, WireType::LengthDelimited);
        message.varint(len as u64);
        customer.encode(&mut message);
        Self {
            message: message.into(),
            position: (c.create_time, c.id.uuid()),
        }
    }

    fn position(&self) -> (DateTime<Utc>, uuid::Uuid) {
        self.position
    }
}

/// Where an encoding goes: its length counted, or its bytes written.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
    fn varint(&mut self, value: u64);
}

/// Counts the bytes (for a message's length prefix).
struct Count(usize);

impl Sink for Count {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }

    fn varint(&mut self, value: u64) {
        self.0 += encoded_len_varint(value);
    }
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    fn varint(&mut self, value: u64) {
        encode_varint(value, self);
    }
}

/// A message's fields, in field order, as prost writes them: proto3 skips
/// a scalar that holds its default (an empty string, a zero), but not an
/// `optional` one that is set, nor a message field that is set.
trait Body {
    fn encode(&self, out: &mut impl Sink);
}

fn key(out: &mut impl Sink, tag: u32, wire_type: WireType) {
    out.varint(u64::from(tag << 3 | wire_type as u32));
}

/// A `string` field, skipped when empty.
fn string(out: &mut impl Sink, tag: u32, s: &str) {
    if !s.is_empty() {
        set_string(out, tag, s);
    }
}

/// A string field that is written even when empty (`optional`).
fn set_string(out: &mut impl Sink, tag: u32, s: &str) {
    key(out, tag, WireType::LengthDelimited);
    out.varint(s.len() as u64);
    out.put(s.as_bytes());
}

/// An integer field (`int64`, `int32`, an enum), skipped when zero.
fn integer(out: &mut impl Sink, tag: u32, value: i64) {
    if value != 0 {
        key(out, tag, WireType::Varint);
        out.varint(value as u64);
    }
}

/// The length of a message's body.
fn len(body: &impl Body) -> usize {
    let mut count = Count(0);
    body.encode(&mut count);
    count.0
}

/// A message field (set: written even when its body is empty).
fn field(out: &mut impl Sink, tag: u32, body: &impl Body) {
    key(out, tag, WireType::LengthDelimited);
    out.varint(len(body) as u64);
    body.encode(out);
}

/// Room for a short text formatted on the stack: an id (`cus_` and 26
/// characters), an etag.
const TEXT_BYTES: usize = 64;

/// `value`'s text, formatted into `buf`.
fn on_stack(value: impl std::fmt::Display, buf: &mut [u8; TEXT_BYTES]) -> &str {
    let mut rest = &mut buf[..];
    // The buffer holds any id or etag; were it short, the text would be
    // cut, and `encoded_as_prost_encodes` fails.
    let _ = write!(rest, "{value}");
    let written = TEXT_BYTES - rest.len();
    std::str::from_utf8(&buf[..written]).unwrap_or_default()
}

struct CustomerBody<'c, 'a> {
    customer: &'c CustomerRef<'a>,
    /// Its id's text and its etag, formatted once.
    id: &'c str,
    etag: &'c str,
}

impl Body for CustomerBody<'_, '_> {
    fn encode(&self, out: &mut impl Sink) {
        // Every field, named: a new one does not compile until it is
        // encoded.
        let CustomerRef {
            id: _,
            state,
            external_id,
            email,
            name,
            phone,
            address,
            timezone,
            metadata,
            provider_ids,
            revision: _,
            create_time,
            update_time,
            archive_time,
            delete_time,
        } = self.customer;
        set_string(out, 1, self.id);
        if let Some(external_id) = external_id {
            set_string(out, 2, external_id);
        }
        string(out, 3, email.unwrap_or_default());
        string(out, 4, name.unwrap_or_default());
        string(out, 5, phone.unwrap_or_default());
        if address.iter().any(Option::is_some) {
            field(out, 6, &AddressBody(address));
        }
        string(out, 7, timezone.unwrap_or_default());
        for (k, v) in metadata {
            field(out, 8, &Entry(k, v));
        }
        for (k, v) in provider_ids {
            field(out, 9, &Entry(k, v));
        }
        integer(out, 10, pb::customer::State::from(*state) as i64);
        field(out, 11, &TimestampBody(*create_time));
        field(out, 12, &TimestampBody(*update_time));
        if let Some(t) = archive_time {
            field(out, 13, &TimestampBody(*t));
        }
        if let Some(t) = delete_time {
            field(out, 14, &TimestampBody(*t));
        }
        string(out, 15, self.etag);
    }
}

struct AddressBody<'c, 'a>(&'c [Option<&'a str>; 6]);

impl Body for AddressBody<'_, '_> {
    fn encode(&self, out: &mut impl Sink) {
        // line1 = 1 … country = 6, in `CustomerRef::address`'s order.
        for (tag, part) in (1..).zip(self.0) {
            string(out, tag, part.unwrap_or_default());
        }
    }
}

/// A map entry: key = 1, value = 2.
struct Entry<'c, K, V>(&'c K, &'c V);

impl<K: AsRef<str>, V: AsRef<str>> Body for Entry<'_, K, V> {
    fn encode(&self, out: &mut impl Sink) {
        string(out, 1, self.0.as_ref());
        string(out, 2, self.1.as_ref());
    }
}

/// `google.protobuf.Timestamp`: seconds = 1, nanos = 2.
struct TimestampBody(DateTime<Utc>);

impl Body for TimestampBody {
    fn encode(&self, out: &mut impl Sink) {
        let Timestamp { seconds, nanos } = timestamp(self.0);
        integer(out, 1, seconds);
        integer(out, 2, i64::from(nanos));
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use proptest::{collection::btree_map, option, prelude::*};

    use super::*;
    use crate::domain::{Address, Customer, CustomerFields, CustomerId, State};

    /// `c`, borrowed as a listing reads it from its row.
    fn entries(
        map: &std::collections::BTreeMap<String, String>,
    ) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
        map.iter()
            .map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str())))
            .collect()
    }

    fn borrowed(c: &Customer) -> CustomerRef<'_> {
        let f = &c.fields;
        let a = &f.address;
        CustomerRef {
            id: c.id,
            state: c.state,
            external_id: f.external_id.as_deref(),
            email: (!f.email.is_empty()).then_some(f.email.as_str()),
            name: f.name.as_deref(),
            phone: f.phone.as_deref(),
            address: [
                &a.line1,
                &a.line2,
                &a.city,
                &a.state,
                &a.postal_code,
                &a.country,
            ]
            .map(|part| part.as_deref()),
            timezone: f.timezone.as_deref(),
            metadata: entries(&f.metadata),
            provider_ids: entries(&f.provider_ids),
            revision: c.revision,
            create_time: c.create_time,
            update_time: c.update_time,
            archive_time: c.archive_time,
            delete_time: c.delete_time,
        }
    }

    fn text() -> impl Strategy<Value = Option<String>> {
        // Empty strings too: proto3 leaves them out, `optional` does not.
        option::of("\\PC{0,8}")
    }

    fn time() -> impl Strategy<Value = DateTime<Utc>> {
        // The whole range of `google.protobuf.Timestamp`, before 1970 too.
        (-62_135_596_800i64..=253_402_300_799, 0u32..1_000_000_000)
            .prop_map(|(s, n)| DateTime::from_timestamp(s, n).expect("in range"))
    }

    fn map() -> impl Strategy<Value = std::collections::BTreeMap<String, String>> {
        btree_map("\\PC{0,6}", "\\PC{0,6}", 0..4)
    }

    prop_compose! {
        fn address()(parts in proptest::array::uniform6(text())) -> Address {
            let [line1, line2, city, state, postal_code, country] = parts;
            Address { line1, line2, city, state, postal_code, country }
        }
    }

    prop_compose! {
        fn customer()(
            id in any::<u128>(),
            state in prop_oneof![
                Just(State::Active), Just(State::Archived), Just(State::Deleted)
            ],
            (external_id, email, name, phone, timezone) in
                (text(), text(), text(), text(), text()),
            address in address(),
            (metadata, provider_ids) in (map(), map()),
            revision in any::<i64>(),
            (create_time, update_time) in (time(), time()),
            (archive_time, delete_time) in (option::of(time()), option::of(time())),
        ) -> Customer {
            Customer {
                id: CustomerId::from_uuid(uuid::Uuid::from_u128(id)),
                state,
                fields: CustomerFields {
                    external_id,
                    email: email.unwrap_or_default(),
                    name,
                    phone,
                    address,
                    timezone,
                    metadata,
                    provider_ids,
                },
                revision,
                create_time,
                update_time,
                archive_time,
                delete_time,
            }
        }
    }

    proptest! {
        /// The bytes written from the borrowed row are the bytes prost
        /// writes for the typed message, and decode to it.
        #[test]
        fn encoded_as_prost_encodes(c in customer()) {
            let typed = pb::Customer::from(c.clone());
            let expected = ListCustomersResponse::new(typed.clone()).encode_to_vec();
            let encoded = ListCustomersResponse::from(EncodedCustomer::from_ref(borrowed(&c)));
            prop_assert_eq!(encoded.encoded_len(), expected.len());
            prop_assert_eq!(&encoded.encode_to_vec(), &expected);
            let decoded = ListCustomersResponse::decode(expected.as_slice()).unwrap();
            prop_assert_eq!(decoded.customer, Some(typed));
        }
    }

    #[test]
    fn the_typed_customer_is_built_from_the_same_borrowed_row() {
        let c = Customer {
            id: CustomerId::from_uuid(uuid::Uuid::from_u128(7)),
            state: State::Archived,
            fields: CustomerFields {
                external_id: Some(String::new()),
                email: "a@example.com".into(),
                name: Some("A".into()),
                address: Address {
                    city: Some("Paris".into()),
                    ..Address::default()
                },
                metadata: [("k".into(), "v".into())].into(),
                ..CustomerFields::default()
            },
            revision: 3,
            create_time: DateTime::from_timestamp(1, 2).unwrap(),
            update_time: DateTime::from_timestamp(3, 4).unwrap(),
            archive_time: DateTime::from_timestamp(5, 6),
            delete_time: None,
        };
        assert_eq!(Customer::from_ref(borrowed(&c)), c);
        assert_eq!(
            EncodedCustomer::from_ref(borrowed(&c)).position(),
            (c.create_time, c.id.uuid())
        );
    }
}
