//! End-to-end tests: the service on a real socket over a real PostgreSQL,
//! called with the generated tonic client.

#[path = "../common/mod.rs"]
mod common;

mod abuse;
mod bad_input;
mod console;
mod create;
mod events;
mod faults;
mod get;
mod lifecycle;
mod list;
mod masks;
mod operability;
mod operations;
mod plans;
mod production;
mod resources;
mod round_trips;
mod shutdown;
mod tenancy;
mod traces;
mod update;
