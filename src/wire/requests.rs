//! The parse step of every RPC: each request becomes its typed command, or
//! one `INVALID_ARGUMENT` listing every field wrong with it. What depends on
//! the stored customer (its state, its etag, and the values of an update
//! merged into it) is decided later, by the domain rules the storage calls
//! under the row lock.

use std::collections::BTreeMap;

use crate::{
    domain::{
        ChangeState, CreateCustomer, CustomerFields, EventFilter, EventType, GetCustomer, Invalid,
        ListCustomers, ListFilter, Lookup, MAX_EXTERNAL_ID_CHARS, Order, Patch, ResumeToken,
        Target, UpdateCustomer, Violations, WatchEvents, WatchStart, echo, parse_id,
    },
    pb,
};

use super::customer::{from_timestamp, non_empty};

/// A caller's own id used as a key: not blank, bounded, printable.
fn check_external_id(v: &mut Violations, field: &str, external_id: &str) {
    if external_id.trim().is_empty() {
        v.add(field, "must not be blank");
    }
    v.max_chars(field, external_id, MAX_EXTERNAL_ID_CHARS);
    v.no_control(field, external_id);
}

/// The customer a write names: exactly one of its id and the caller's own
/// id.
fn target(v: &mut Violations, id_field: &str, id: &str, external_id: &str) -> Option<Target> {
    match (id.is_empty(), external_id.is_empty()) {
        (false, true) => parse_id(id_field, id)
            .map_err(|invalid| v.absorb(invalid))
            .ok()
            .map(Target::Id),
        (true, false) => {
            check_external_id(v, "external_id", external_id);
            Some(Target::ExternalId(external_id.to_owned()))
        }
        (true, true) => {
            v.add(id_field, "is required (or set external_id)");
            None
        }
        (false, false) => {
            v.add(
                "external_id",
                format!("set {id_field} or external_id, not both"),
            );
            None
        }
    }
}

/// An optional etag from a request.
fn etag(s: String) -> Option<String> {
    non_empty(s)
}

impl TryFrom<pb::CreateCustomerRequest> for CreateCustomer {
    type Error = Invalid;

    fn try_from(r: pb::CreateCustomerRequest) -> Result<Self, Invalid> {
        let pb::CreateCustomerRequest { customer } = r;
        let customer = customer.ok_or_else(|| Invalid::field("customer", "is required"))?;
        Ok(CreateCustomer {
            fields: CustomerFields::from(customer).validate("customer.")?,
        })
    }
}

impl TryFrom<pb::GetCustomerRequest> for GetCustomer {
    type Error = Invalid;

    fn try_from(r: pb::GetCustomerRequest) -> Result<Self, Invalid> {
        use pb::get_customer_request::Lookup as By;
        let pb::GetCustomerRequest { lookup } = r;
        let mut v = Violations::new("");
        let lookup = match lookup {
            Some(By::Id(id)) => parse_id("id", &id)
                .map_err(|invalid| v.absorb(invalid))
                .ok()
                .map(Lookup::Id),
            Some(By::ExternalId(id)) => {
                if id.is_empty() {
                    v.add("external_id", "is empty");
                } else {
                    check_external_id(&mut v, "external_id", &id);
                }
                Some(Lookup::ExternalId(id))
            }
            Some(By::ProviderId(pb::ProviderId { provider, id })) => {
                if provider.is_empty() {
                    v.add("provider_id.provider", "is required");
                }
                if id.is_empty() {
                    v.add("provider_id.id", "is required");
                }
                v.no_control("provider_id.provider", &provider);
                v.no_control("provider_id.id", &id);
                Some(Lookup::ProviderId { provider, id })
            }
            None => {
                v.add("lookup", "set one of id, external_id or provider_id");
                None
            }
        };
        match lookup {
            Some(lookup) => v.into_result(GetCustomer { lookup }),
            None => Err(v.into_invalid()),
        }
    }
}

impl TryFrom<pb::UpdateCustomerRequest> for UpdateCustomer {
    type Error = Invalid;

    fn try_from(r: pb::UpdateCustomerRequest) -> Result<Self, Invalid> {
        let pb::UpdateCustomerRequest {
            customer,
            update_mask,
            external_id,
        } = r;
        let customer = customer.ok_or_else(|| Invalid::field("customer", "is required"))?;
        let mut v = Violations::new("");
        let target = target(&mut v, "customer.id", &customer.id, &external_id);
        let etag = etag(customer.etag.clone());
        let mask = update_mask.map(|m| m.paths);
        let patch = match Patch::new(mask.as_deref(), customer.into()) {
            Ok(patch) if patch.is_empty() => {
                v.add(
                    "update_mask",
                    "names no field, and the customer sets none to write",
                );
                None
            }
            Ok(patch) => Some(patch),
            Err(invalid) => {
                v.absorb(invalid);
                None
            }
        };
        match (target, patch) {
            (Some(target), Some(patch)) => v.into_result(UpdateCustomer {
                target,
                etag,
                patch,
            }),
            _ => Err(v.into_invalid()),
        }
    }
}

impl TryFrom<pb::ListCustomersRequest> for ListCustomers {
    type Error = Invalid;

    fn try_from(r: pb::ListCustomersRequest) -> Result<Self, Invalid> {
        let pb::ListCustomersRequest {
            email,
            query,
            created_after,
            created_before,
            metadata,
            include_archived,
            order,
            limit,
            resume_after,
        } = r;
        let mut v = Violations::new("");
        let order = match pb::list_customers_request::Order::try_from(order) {
            Ok(pb::list_customers_request::Order::CreateTimeDesc) => Order::Descending,
            Ok(_) => Order::Ascending,
            Err(_) => {
                v.add("order", "unknown order");
                Order::Ascending
            }
        };
        let resume_after = non_empty(resume_after).and_then(|id| {
            parse_id("resume_after", &id)
                .map_err(|invalid| v.absorb(invalid))
                .ok()
        });
        let mut time = |field: &str, t: Option<prost_types::Timestamp>| {
            t.and_then(|t| {
                from_timestamp(field, t)
                    .map_err(|invalid| v.absorb(invalid))
                    .ok()
            })
        };
        let created_after = time("created_after", created_after);
        let created_before = time("created_before", created_before);
        let filter = ListFilter {
            email: non_empty(email.trim().to_owned()),
            query: non_empty(query),
            created_after,
            created_before,
            metadata: metadata.into_iter().collect::<BTreeMap<_, _>>(),
            include_archived,
            order,
            limit: (limit > 0).then_some(u64::from(limit)),
            resume_after,
        };
        match filter.validate() {
            Ok(filter) => v.into_result(ListCustomers { filter }),
            Err(invalid) => {
                v.absorb(invalid);
                Err(v.into_invalid())
            }
        }
    }
}

impl TryFrom<pb::ArchiveCustomerRequest> for ChangeState {
    type Error = Invalid;

    fn try_from(r: pb::ArchiveCustomerRequest) -> Result<Self, Invalid> {
        let pb::ArchiveCustomerRequest {
            id,
            etag: tag,
            external_id,
        } = r;
        change_state(&id, &external_id, tag)
    }
}

impl TryFrom<pb::DeleteCustomerRequest> for ChangeState {
    type Error = Invalid;

    fn try_from(r: pb::DeleteCustomerRequest) -> Result<Self, Invalid> {
        let pb::DeleteCustomerRequest {
            id,
            etag: tag,
            external_id,
        } = r;
        change_state(&id, &external_id, tag)
    }
}

fn change_state(id: &str, external_id: &str, tag: String) -> Result<ChangeState, Invalid> {
    let mut v = Violations::new("");
    match target(&mut v, "id", id, external_id) {
        Some(target) => v.into_result(ChangeState {
            target,
            etag: etag(tag),
        }),
        None => Err(v.into_invalid()),
    }
}

/// Most types a watch may name (there are four; repeats are allowed).
const MAX_WATCH_TYPES: usize = 16;

impl TryFrom<pb::WatchCustomerEventsRequest> for WatchEvents {
    type Error = Invalid;

    /// Which app a token belongs to is checked against the caller's later,
    /// by the service, which knows the caller.
    fn try_from(r: pb::WatchCustomerEventsRequest) -> Result<Self, Invalid> {
        let pb::WatchCustomerEventsRequest {
            resume_token,
            start_time,
            customer_id,
            types,
        } = r;
        let mut v = Violations::new("");
        let token = non_empty(resume_token).and_then(|token| {
            let parsed = ResumeToken::parse(&token);
            if parsed.is_none() {
                v.add(
                    "resume_token",
                    format!("{} is not a resume token of this service", echo(&token)),
                );
            }
            parsed
        });
        let time = start_time.and_then(|t| {
            from_timestamp("start_time", t)
                .map_err(|invalid| v.absorb(invalid))
                .ok()
        });
        let start = match (token, time) {
            (Some(_), Some(_)) => {
                v.add("start_time", "set resume_token or start_time, not both");
                WatchStart::Now
            }
            (Some(token), None) => WatchStart::After(token),
            (None, Some(time)) => WatchStart::At(time),
            (None, None) => WatchStart::Now,
        };
        let customer = non_empty(customer_id).and_then(|id| {
            parse_id("customer_id", &id)
                .map_err(|invalid| v.absorb(invalid))
                .ok()
        });
        if types.len() > MAX_WATCH_TYPES {
            v.add("types", format!("at most {MAX_WATCH_TYPES} types"));
        }
        let mut kinds = Vec::new();
        for (i, t) in types.iter().take(MAX_WATCH_TYPES).enumerate() {
            use pb::customer_event::Type;
            let kind = match Type::try_from(*t) {
                Ok(Type::Created) => EventType::Created,
                Ok(Type::Updated) => EventType::Updated,
                Ok(Type::Archived) => EventType::Archived,
                Ok(Type::Deleted) => EventType::Deleted,
                Ok(Type::Unspecified) | Err(_) => {
                    v.add(format!("types[{i}]"), "unknown event type");
                    continue;
                }
            };
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        v.into_result(WatchEvents {
            start,
            filter: EventFilter {
                customer,
                types: kinds,
            },
        })
    }
}
