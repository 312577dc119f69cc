//! Generates the gRPC code from `proto/` with a vendored `protoc`, so a machine with
//! nothing but Rust builds the project.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: a build script is single-threaded; nothing else reads the environment here.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("chittychat_descriptor.bin"))
        .compile_protos(&["proto/chittychat/v1/chittychat.proto"], &["proto"])?;
    Ok(())
}
