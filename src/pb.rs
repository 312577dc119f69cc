//! The code generated from `proto/chittychat/v1/chittychat.proto`: only the gRPC
//! layer ([`crate::server`], [`crate::client`]) touches these types.

#![allow(missing_docs, unreachable_pub)]

tonic::include_proto!("chittychat.v1");

/// The encoded descriptors of the proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("chittychat_descriptor");

/// The server generated with `Event` mapped to [`crate::wire::EncodedEvent`], which the
/// binary runs; see `build.rs`. Every other type is the one above.
pub mod encoded_server {
    include!(concat!(env!("OUT_DIR"), "/encoded_server/chittychat.v1.rs"));
}
