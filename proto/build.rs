//! Compiles the .proto contracts with the vendored protoc, so a fresh machine needs no install.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/supervisor.proto",
    "proto/daemon.proto",
    "proto/proxy.proto",
    "proto/dns.proto",
    "proto/queue.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("securely_descriptor.bin"))
        .compile_with_config(config, PROTOS, &["proto"])?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
