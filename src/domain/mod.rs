//! The customer resource and its rules: ids, the customer, validation,
//! update patches, list filters, and the typed commands that requests
//! become. Nothing here knows about gRPC or SQL.

mod commands;
mod customer;
mod events;
mod ids;
mod list;
mod patch;
mod validation;

pub use commands::{
    ChangeState, CreateCustomer, GetCustomer, ListCustomers, Lookup, Target, UpdateCustomer,
};
pub use customer::{
    Address, AddressPart, Customer, CustomerFields, CustomerRef, Etag, FromCustomerRef, State,
    ValidFields,
};
pub use events::{
    Event, EventFilter, EventType, NewEvent, ResumeToken, WatchEvents, WatchStart, changed_fields,
};
pub use ids::{AppId, CustomerId, EventId, KeyId};
pub use list::{ListFilter, Order};
pub use patch::{FieldPath, MAX_MASK_PATHS, Patch};
pub use validation::{
    FieldViolation, Invalid, MAX_DESCRIPTION_BYTES, MAX_FIELD_BYTES, MAX_VIOLATIONS, Violations,
    echo, parse_id, truncate,
};
pub use validation::{
    MAX_EMAIL_CHARS, MAX_EXTERNAL_ID_CHARS, MAX_METADATA_KEY_CHARS, MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_CHARS, MAX_PROVIDER_CHARS, MAX_PROVIDER_ID_CHARS, MAX_PROVIDERS,
    MAX_QUERY_CHARS, MAX_TEXT_CHARS,
};

#[cfg(test)]
mod tests;
