//! PublishStream: many publishes on one call. A real server on 127.0.0.1:0, driven
//! by the library's client and by raw gRPC calls.

mod fixture;

use chittychat::client::{PublishId, connect};
use chittychat::event::EventKind;
use chittychat::log::DEFAULT_HISTORY_LIMIT;
use chittychat::pb;
use chittychat::pb::chitty_chat_client::ChittyChatClient;
use chittychat::pb::publish_outcome::Outcome;
use chittychat::room::{PublishRate, RoomConfig};
use chittychat::server::ServerConfig;
use fixture::{DEADLINE, TestServer, join, next_event as next, raw_join, within};
use std::num::NonZeroU32;
use tonic::Code;

#[tokio::test]
async fn one_stream_s_messages_are_stamped_and_answered_in_the_order_sent() {
    const MESSAGES: usize = 600;
    let server =
        TestServer::start(fixture::unlimited_with_history_limit(DEFAULT_HISTORY_LIMIT)).await;
    let (alice, mut alice_events) = join(&server.url(), "alice").await;
    let (_bob, mut bob_events) = join(&server.url(), "bob").await;
    next(&mut alice_events).await; // bob's join notice
    let (mut publisher, mut outcomes) =
        within(DEADLINE, "alice.publish_stream", alice.publish_stream())
            .await
            .unwrap();
    // More than the server works on at once, all sent before any outcome is read.
    let sender = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..MESSAGES {
            ids.push(publisher.send(&format!("message {i}")).await.unwrap());
        }
        ids
    });
    let mut answered = Vec::new();
    while let Some((id, outcome)) = within(DEADLINE, "outcomes.next", outcomes.next())
        .await
        .unwrap()
    {
        answered.push((id, outcome.unwrap()));
    }
    let sent = sender.await.unwrap();
    assert_eq!(answered.len(), MESSAGES, "every request is answered once");
    let first_seq = answered[0].1.seq;
    for (i, ((id, published), sent_id)) in answered.iter().zip(&sent).enumerate() {
        assert_eq!(id, sent_id, "outcome {i} answers request {i}");
        assert_eq!(
            published.seq,
            first_seq + i as u64,
            "stamped in the order sent"
        );
        assert!(published.server_lamport > published.sent_lamport);
    }
    for events in [&mut alice_events, &mut bob_events] {
        for (i, (_, published)) in answered.iter().enumerate() {
            let received = next(events).await.event;
            assert_eq!(received.kind, EventKind::Chat);
            assert_eq!(received.text, format!("message {i}"));
            assert_eq!(
                (received.seq, received.lamport),
                (published.seq, published.server_lamport)
            );
        }
    }
    server.stop().await;
}

fn request(token: &str, text: &str, id: &str) -> pb::PublishRequest {
    pb::PublishRequest {
        session_token: token.to_owned(),
        text: text.as_bytes().to_vec(),
        lamport: 1,
        publish_id: id.to_owned(),
    }
}

#[tokio::test]
async fn a_refusal_answers_its_one_request_and_the_stream_goes_on() {
    let server = TestServer::start(ServerConfig::default()).await;
    let (_alice, mut events) = join(&server.url(), "alice").await;
    let mut grpc = ChittyChatClient::new(connect(&server.url()).await.unwrap());
    let (token, _feed) = raw_join(&mut grpc, "mallory").await;
    let mallory_joined = next(&mut events).await.event;
    let requests = vec![
        request(&token, "first", "id-1"),
        request(&token, "", "id-2"),
        request("garbage", "spoofed", "id-3"),
        request(&token, "first, again", "id-1"),
        request(&token, "second", "id-4"),
    ];
    let mut outcomes = within(
        DEADLINE,
        "a raw PublishStream",
        grpc.publish_stream(tokio_stream::iter(requests)),
    )
    .await
    .unwrap()
    .into_inner();
    let mut answered = Vec::new();
    while let Some(outcome) = within(DEADLINE, "outcomes.message", outcomes.message())
        .await
        .unwrap()
    {
        answered.push(outcome);
    }
    let ids: Vec<&str> = answered.iter().map(|o| o.publish_id.as_str()).collect();
    assert_eq!(ids, ["id-1", "id-2", "id-3", "id-1", "id-4"]);
    let published = |i: usize| match &answered[i].outcome {
        Some(Outcome::Published(reply)) => *reply,
        other => panic!("outcome {i} is {other:?}"),
    };
    let refused = |i: usize| match &answered[i].outcome {
        Some(Outcome::Refused(refusal)) => refusal.clone(),
        other => panic!("outcome {i} is {other:?}"),
    };
    let first = published(0);
    assert_eq!(first.seq, mallory_joined.seq + 1);
    let empty = refused(1);
    assert_eq!(Code::from(empty.code), Code::InvalidArgument);
    assert!(empty.message.contains("empty"), "{empty:?}");
    let spoofed = refused(2);
    assert_eq!(Code::from(spoofed.code), Code::Unauthenticated);
    assert!(spoofed.message.contains("session token"), "{spoofed:?}");
    assert_eq!(
        published(3),
        first,
        "a repeated id gets the original's stamp"
    );
    assert_eq!(
        published(4).seq,
        first.seq + 1,
        "nothing else was broadcast"
    );
    for (text, seq) in [("first", first.seq), ("second", first.seq + 1)] {
        let received = next(&mut events).await.event;
        assert_eq!((received.text.as_str(), received.seq), (text, seq));
    }
    server.stop().await;
}

#[tokio::test]
async fn a_rate_limited_request_on_a_stream_says_when_to_retry() {
    let server = TestServer::start(ServerConfig {
        room: RoomConfig {
            publish_rate: Some(PublishRate {
                per_second: NonZeroU32::new(1).unwrap(),
                burst: NonZeroU32::new(2).unwrap(),
            }),
            ..RoomConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let (alice, _events) = join(&server.url(), "alice").await;
    let (mut publisher, mut outcomes) = alice.publish_stream().await.unwrap();
    let ids = [
        PublishId::random(),
        PublishId::random(),
        PublishId::random(),
    ];
    for (i, id) in ids.iter().enumerate() {
        publisher
            .send_with_id(&format!("burst {i}"), id)
            .await
            .unwrap();
    }
    drop(publisher);
    let mut results = Vec::new();
    while let Some((id, result)) = within(DEADLINE, "outcomes.next", outcomes.next())
        .await
        .unwrap()
    {
        results.push((id, result));
    }
    assert_eq!(results.len(), 3);
    assert!(results[0].1.is_ok() && results[1].1.is_ok(), "{results:?}");
    let (id, limited) = &results[2];
    assert_eq!(id, &ids[2]);
    let err = limited.as_ref().unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    let wait = err.retry_after().expect("a rate limit says when to retry");
    assert!(wait.as_millis() > 0 && wait.as_secs() <= 1, "{wait:?}");
    assert!(err.to_string().contains("slow down"), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn a_shutdown_ends_an_open_stream_with_unavailable() {
    let mut server = TestServer::start(ServerConfig::default()).await;
    let (alice, _events) = join(&server.url(), "alice").await;
    let (mut publisher, mut outcomes) = alice.publish_stream().await.unwrap();
    publisher.send("before").await.unwrap();
    let (_, before) = within(DEADLINE, "outcomes.next", outcomes.next())
        .await
        .unwrap()
        .expect("an outcome");
    before.unwrap();
    // The stream is open and idle, the publisher still held, when the server stops.
    server.begin_stop();
    let err = within(DEADLINE, "outcomes.next", outcomes.next())
        .await
        .expect_err("the stream ends with an error");
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    assert!(err.server_shut_down(), "{err}");
    drop(publisher);
    server.stop().await;
}
