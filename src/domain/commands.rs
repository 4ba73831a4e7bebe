//! What each RPC asks for, parsed and validated: a command exists only if
//! its request was valid, so nothing after the parse step rejects a request
//! for its shape.

use super::{customer::ValidFields, ids::CustomerId, list::ListFilter, patch::Patch};

/// How a read finds a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// By our id: any state, tombstones included.
    Id(CustomerId),
    /// The active customer holding the caller's own id.
    ExternalId(String),
    /// The active customer holding a payment provider's id.
    ProviderId { provider: String, id: String },
}

/// Which customer a write acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Id(CustomerId),
    /// The active customer holding the caller's own id or, when none does,
    /// the most recently created archived customer that held it.
    ExternalId(String),
}

/// CreateCustomer.
#[derive(Debug, Clone)]
pub struct CreateCustomer {
    pub fields: ValidFields,
}

/// GetCustomer.
#[derive(Debug, Clone)]
pub struct GetCustomer {
    pub lookup: Lookup,
}

/// UpdateCustomer.
#[derive(Debug, Clone)]
pub struct UpdateCustomer {
    pub target: Target,
    pub etag: Option<String>,
    pub patch: Patch,
}

/// ListCustomers.
#[derive(Debug, Clone)]
pub struct ListCustomers {
    pub filter: ListFilter,
}

/// ArchiveCustomer and DeleteCustomer: a customer, and optionally the etag
/// it must still have.
#[derive(Debug, Clone)]
pub struct ChangeState {
    pub target: Target,
    pub etag: Option<String>,
}
