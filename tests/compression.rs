//! gzip: the server accepts compressed requests and compresses its answers for a
//! client that asks, and only for it.

mod fixture;

use chittychat::client::connect;
use chittychat::pb;
use chittychat::pb::chitty_chat_client::ChittyChatClient;
use chittychat::server::ServerConfig;
use chittychat::transport::SESSION_TOKEN_METADATA;
use fixture::{DEADLINE, TestServer, within};
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataMap;

fn encoding(metadata: &MetadataMap) -> Option<&str> {
    metadata.get("grpc-encoding").map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn a_client_that_compresses_is_understood_and_answered_compressed() {
    let server = TestServer::start(ServerConfig::default()).await;
    let channel = connect(&server.url()).await.unwrap();
    let mut gzip = ChittyChatClient::new(channel.clone())
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);

    let joined = within(
        DEADLINE,
        "a compressed Join",
        gzip.join(pb::JoinRequest {
            name: b"zipper".to_vec(),
            lamport: 1,
            history: Some(0),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    assert_eq!(encoding(joined.metadata()), Some("gzip"));
    let token = joined
        .metadata()
        .get(SESSION_TOKEN_METADATA)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let mut feed = joined.into_inner();
    let own = within(DEADLINE, "the join notice", feed.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(own.participant, "zipper");

    // A long, repetitive message: what compression is for.
    let text = "la ".repeat(40);
    let reply = within(
        DEADLINE,
        "a compressed Publish",
        gzip.publish(pb::PublishRequest {
            session_token: token.clone(),
            text: text.clone().into_bytes(),
            lamport: own.lamport,
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    assert_eq!(encoding(reply.metadata()), Some("gzip"));
    let event = within(DEADLINE, "the message back", feed.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (event.text.as_str(), event.seq),
        (text.as_str(), reply.get_ref().seq)
    );

    // A client that does not ask gets plain answers.
    let mut plain = ChittyChatClient::new(channel);
    let status = plain
        .publish(pb::PublishRequest {
            session_token: token,
            text: b"plain".to_vec(),
            lamport: event.lamport,
            ..Default::default()
        })
        .await
        .map(|reply| encoding(reply.metadata()).map(str::to_owned));
    assert_eq!(status.unwrap(), None);
    server.stop().await;
}

#[tokio::test]
async fn a_compressed_request_is_held_to_the_size_limit_once_decompressed() {
    let server = TestServer::start(ServerConfig::default()).await;
    let channel = connect(&server.url()).await.unwrap();
    let mut gzip = ChittyChatClient::new(channel).send_compressed(CompressionEncoding::Gzip);
    // A megabyte of one letter compresses to about a kilobyte: under the limit on
    // the wire, far over it once inflated.
    let status = gzip
        .join(pb::JoinRequest {
            name: vec![b'a'; 1 << 20],
            lamport: 1,
            history: Some(0),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    server.stop().await;
}
