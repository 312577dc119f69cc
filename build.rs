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
    // The server the binary runs: the same service, but its Join stream carries
    // events encoded once per broadcast (`crate::wire::EncodedEvent`) rather than a
    // `pb::Event` encoded again for every recipient. Every other type is the one
    // generated above, so nothing but the stream's item differs.
    let encoded = out.join("encoded_server");
    std::fs::create_dir_all(&encoded)?;
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&encoded)
        .extern_path(".chittychat.v1", "crate::pb")
        .extern_path(".chittychat.v1.Event", "crate::wire::EncodedEvent")
        .codec_path("crate::wire::ServerCodec")
        .compile_protos(&["proto/chittychat/v1/chittychat.proto"], &["proto"])?;
    Ok(())
}
