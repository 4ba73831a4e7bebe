//! Code generated from `proto/` by `build.rs`.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("customers.v1");

/// Written by hand: a listing encodes its messages from the rows.
pub use crate::wire::listing::ListCustomersResponse;

/// The encoded descriptors of `customers.v1`, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("customers_descriptor");
