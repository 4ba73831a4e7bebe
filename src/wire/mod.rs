//! The gRPC side of the domain: requests parsed into commands, customers
//! converted both ways, and errors turned into statuses.

mod customer;
pub mod listing;
pub mod requests;
pub mod status;
