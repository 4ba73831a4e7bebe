//! Compiles `proto/` with protox (pure Rust: no system `protoc` needed) and
//! writes the encoded descriptor set that server reflection serves.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &["proto/customers/v1/customers.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // `embed_migrations!` reads this directory at compile time.
    println!("cargo:rerun-if-changed=migrations");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("customers_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // Maps as `BTreeMap`: the domain keeps metadata and provider ids
        // ordered, so a message takes them as they are, with no hashing per
        // key (and its maps encode in a stable order).
        .btree_map(".")
        // A listing's messages are encoded from the rows themselves (see
        // `wire::listing`).
        .extern_path(
            ".customers.v1.ListCustomersResponse",
            "crate::wire::listing::ListCustomersResponse",
        )
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
