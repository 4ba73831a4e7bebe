//! The customer service: a gRPC API over PostgreSQL that owns billing
//! customers. See README.md.

pub mod accept;
pub mod admin;
pub mod auth;
pub mod config;
pub mod console;
pub mod context;
pub mod domain;
pub mod embedded_pg;
pub mod error;
pub mod metrics;
pub mod pb;
pub mod server;
pub mod service;
pub mod storage;
pub mod telemetry;
pub mod wire;
