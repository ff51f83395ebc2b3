//! Generates the Rust code and the reflection descriptor set from `waybill/v1/*.proto`.
//!
//! A vendored `protoc` (protoc-bin-vendored) is used so that a fresh machine builds without a
//! system protobuf compiler; `PROTOC` in the environment still wins for people who want theirs.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "waybill/v1/common.proto",
    "waybill/v1/orders.proto",
    "waybill/v1/catalog.proto",
    "waybill/v1/status_ingest.proto",
    "waybill/v1/dispatch_admin.proto",
    "waybill/v1/kafka.proto",
    "waybill/v1/partner_adapter.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = match env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("waybill_descriptor.bin"))
        .compile_with_config(config, PROTOS, &["."])?;
    println!("cargo:rerun-if-changed=waybill");
    println!("cargo:rerun-if-env-changed=PROTOC");
    Ok(())
}
