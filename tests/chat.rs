//! Integration tests: a real server on 127.0.0.1:0, driven over the network by the
//! library's client and by raw gRPC calls.

mod fixture;

use chittychat::client::{ClientError, Received, connect};
use chittychat::event::EventKind;
use chittychat::log::DEFAULT_HISTORY_LIMIT;
use chittychat::pb;
use chittychat::pb::chitty_chat_client::ChittyChatClient;
use chittychat::server::ServerConfig;
use fixture::{DEADLINE, TestServer, join, next_event as next, raw_join, within};
use std::collections::{HashMap, HashSet};
use tonic::Code;

/// A server whose publishers may go as fast as they like (tests/limits.rs covers the
/// rate limit) and whose newcomers see no history (tests/log.rs covers that).
fn config(history_limit: u64) -> ServerConfig {
    fixture::unlimited_with_history_limit(history_limit)
}

fn unlimited() -> ServerConfig {
    config(DEFAULT_HISTORY_LIMIT)
}

#[tokio::test]
async fn join_publish_leave() {
    let server = TestServer::start(ServerConfig::default()).await;
    let (alice, mut alice_events) = join(&server.url(), "alice").await;
    let (bob, mut bob_events) = join(&server.url(), "bob").await;
    let bob_joined = next(&mut alice_events).await.event;
    assert_eq!(bob_joined.kind, EventKind::Joined);
    assert_eq!(&*bob_joined.participant, "bob");

    let published = within(DEADLINE, "alice.publish", alice.publish("hello, bob"))
        .await
        .unwrap();
    for events in [&mut alice_events, &mut bob_events] {
        let received = next(events).await;
        assert_eq!(received.event.kind, EventKind::Chat);
        assert_eq!(&*received.event.participant, "alice");
        assert_eq!(received.event.text, "hello, bob");
        assert_eq!(received.event.seq, published.seq);
        assert_eq!(received.event.lamport, published.server_lamport);
    }

    within(DEADLINE, "alice.leave", alice.leave())
        .await
        .unwrap();
    let left = next(&mut bob_events).await.event;
    assert_eq!(left.kind, EventKind::Left);
    assert_eq!(
        left.text,
        format!(
            "Participant alice left Chitty-Chat at Lamport time {}",
            left.lamport
        )
    );
    // The leaver's feed ends cleanly, without its own leave notice.
    assert!(
        within(DEADLINE, "alice_events.next", alice_events.next())
            .await
            .unwrap()
            .is_none()
    );
    within(DEADLINE, "bob.leave", bob.leave()).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn the_newcomer_gets_its_own_join_notice_with_the_servers_time() {
    let server = TestServer::start(ServerConfig::default()).await;
    let channel = connect(&server.url()).await.unwrap();
    let (session, mut events) = chittychat::client::Session::join(channel, "carol")
        .await
        .unwrap();
    let first = next(&mut events).await;
    assert_eq!(first.event.seq, 1);
    assert_eq!(
        first.event.text,
        "Participant carol joined Chitty-Chat at Lamport time 2"
    );
    // The client sent Join at time 1; the server merged it (max(0, 1) + 1 = 2); the
    // client merged the event (max(1, 2) + 1 = 3).
    assert_eq!(first.local_lamport, 3);
    assert_eq!(session.clock().now(), 3);
    server.stop().await;
}

#[tokio::test]
async fn a_dropped_feed_is_announced_as_a_leave_once() {
    let server = TestServer::start(ServerConfig::default()).await;
    let (alice, alice_events) = join(&server.url(), "alice").await;
    let (_bob, mut bob_events) = join(&server.url(), "bob").await;
    // alice's process vanishes: its stream and connection go away without Leave.
    drop(alice_events);
    let left = next(&mut bob_events).await.event;
    assert_eq!((left.kind, &*left.participant), (EventKind::Left, "alice"));
    // A Leave arriving afterwards changes nothing and announces nothing more.
    let err = within(DEADLINE, "alice.leave", alice.leave())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated));
    drop(alice);
    let (carol, _carol_events) = join(&server.url(), "carol").await;
    let next_event = next(&mut bob_events).await.event;
    assert_eq!(
        (next_event.kind, &*next_event.participant),
        (EventKind::Joined, "carol")
    );
    assert_eq!(next_event.seq, left.seq + 1);
    drop(carol);
    server.stop().await;
}

#[tokio::test]
async fn a_taken_name_is_refused_with_already_exists() {
    let server = TestServer::start(ServerConfig::default()).await;
    let (_alice, _events) = join(&server.url(), "alice").await;
    let channel = connect(&server.url()).await.unwrap();
    let err = chittychat::client::Session::join(channel, "alice")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::AlreadyExists));
    assert!(err.to_string().contains("\"alice\" is taken"), "{err}");
    server.stop().await;
}

/// Raw calls, as a misbehaving or hand-written client would make them.
async fn raw(url: &str) -> ChittyChatClient<tonic::transport::Channel> {
    ChittyChatClient::new(connect(url).await.unwrap())
}

async fn raw_publish(url: &str, token: &str, text: &[u8]) -> tonic::Status {
    raw(url)
        .await
        .publish(pb::PublishRequest {
            session_token: token.to_owned(),
            text: text.to_vec(),
            lamport: 1,
            ..Default::default()
        })
        .await
        .expect_err("the server accepted a request it must refuse")
}

/// Publishes a marker from `session` and asserts it is the very next event `events`
/// sees, numbered right after `last_seq`: nothing was broadcast in between.
async fn assert_nothing_broadcast_since(
    session: &chittychat::client::Session,
    events: &mut chittychat::client::Events,
    last_seq: u64,
) {
    let marker = within(DEADLINE, "session.publish", session.publish("marker"))
        .await
        .unwrap();
    let received = next(events).await.event;
    assert_eq!(received.text, "marker");
    assert_eq!(received.seq, last_seq + 1);
    assert_eq!(marker.seq, last_seq + 1);
}

#[tokio::test]
async fn wrong_or_stale_tokens_are_unauthenticated_and_change_nothing() {
    let server = TestServer::start(ServerConfig::default()).await;
    let (alice, mut events) = join(&server.url(), "alice").await;
    let last_seq = 1;
    for token in ["", "garbage", "1.00000000000000000000000000000000", "1.zz"] {
        let status = raw_publish(&server.url(), token, b"spoofed").await;
        assert_eq!(status.code(), Code::Unauthenticated, "{token:?}");
        assert!(status.message().contains("session token"), "{status:?}");
        let status = raw(&server.url())
            .await
            .leave(pb::LeaveRequest {
                session_token: token.to_owned(),
                lamport: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    assert_nothing_broadcast_since(&alice, &mut events, last_seq).await;
    server.stop().await;
}

#[tokio::test]
async fn invalid_input_gets_invalid_argument_and_nothing_is_broadcast() {
    let server = TestServer::start(ServerConfig::default()).await;
    let (alice, mut events) = join(&server.url(), "alice").await;
    // A raw client, mallory, joins to get a real token: the library's client refuses
    // bad input before sending it, so raw requests must carry it.
    let mut grpc = raw(&server.url()).await;
    let (token, mut mallory_feed) = raw_join(&mut grpc, "mallory").await;
    let joined = within(DEADLINE, "mallory_feed.message", mallory_feed.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next(&mut events).await.event.seq, joined.seq);

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "empty"),
        (
            "a".repeat(129).into_bytes(),
            "129 characters long; the limit is 128",
        ),
        (
            "é".repeat(129).into_bytes(),
            "129 characters long; the limit is 128",
        ),
        (vec![b'h', b'i', 0xC3], "not valid UTF-8"),
        (vec![0xFF; 4], "not valid UTF-8"),
        (b"\x1b[31mred".to_vec(), "U+001B"),
        (b"two\nlines".to_vec(), "U+000A"),
    ];
    for (text, expected) in cases {
        let status = raw_publish(&server.url(), &token, &text).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{text:?}");
        assert!(
            status.message().contains(expected),
            "{text:?}: {}",
            status.message()
        );
    }
    for name in [
        &b""[..],
        b"has space",
        &[b'x'; 33],
        b"\xff",
        "ünï".as_bytes(),
    ] {
        let status = grpc
            .join(pb::JoinRequest {
                name: name.to_vec(),
                lamport: 1,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name:?}");
        assert!(
            status.message().contains("1 to 32 characters"),
            "{status:?}"
        );
    }
    // 128 characters of any width are fine.
    let ok = within(DEADLINE, "alice.publish", alice.publish(&"😀".repeat(128)))
        .await
        .unwrap();
    assert_eq!(ok.seq, joined.seq + 1);
    assert_eq!(next(&mut events).await.event.seq, ok.seq);
    assert_nothing_broadcast_since(&alice, &mut events, ok.seq).await;
    server.stop().await;
}

#[tokio::test]
async fn the_library_client_refuses_bad_input_before_sending() {
    let server = TestServer::start(ServerConfig::default()).await;
    let (alice, mut events) = join(&server.url(), "alice").await;
    let before = alice.clock().now();
    for text in ["", "\x07bell", &"x".repeat(129)] {
        let err = alice.publish(text).await.unwrap_err();
        assert!(matches!(err, ClientError::Invalid(_)), "{err:?}");
    }
    // Nothing was sent, so the clock did not move.
    assert_eq!(alice.clock().now(), before);
    assert_nothing_broadcast_since(&alice, &mut events, 1).await;
    server.stop().await;
}

#[tokio::test]
async fn a_stalled_participant_does_not_delay_the_others_and_is_dropped() {
    const HISTORY_LIMIT: u64 = 16;
    // More than enough 128-character messages to fill the stalled participant's
    // HTTP/2 window and the server's send buffer for it, and then its queue.
    const MAX_MESSAGES: usize = 5000;
    let server = TestServer::start(config(HISTORY_LIMIT)).await;
    // hyper's client accepts 2 MiB per stream before it stops reading; a small window
    // makes the stalled reader's buffers fill within a few hundred messages.
    let small_window = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .initial_stream_window_size(Some(16 * 1024))
        .initial_connection_window_size(Some(16 * 1024))
        .connect()
        .await
        .unwrap();
    let (_stalled, mut stalled_events) = fixture::within(
        DEADLINE,
        "the call",
        chittychat::client::Session::join(small_window, "stalled"),
    )
    .await
    .unwrap();
    let (alice, mut alice_events) = join(&server.url(), "alice").await;
    let (_bob, mut bob_events) = join(&server.url(), "bob").await;
    next(&mut alice_events).await;

    // The stalled participant never reads again. alice publishes and both alice and
    // bob receive each message before the next one is sent, until the server drops
    // the stalled participant (and ten messages more).
    let mut stalled_left = None;
    let mut after_drop = 0;
    for i in 0..MAX_MESSAGES {
        if stalled_left.is_some() {
            after_drop += 1;
            if after_drop > 10 {
                break;
            }
        }
        let text = format!("{i:06} {}", "x".repeat(121));
        let published = within(DEADLINE, "alice.publish", alice.publish(&text))
            .await
            .unwrap();
        for events in [&mut alice_events, &mut bob_events] {
            loop {
                let event = next(events).await.event;
                if event.kind == EventKind::Left {
                    assert_eq!(&*event.participant, "stalled");
                    stalled_left = Some(event.seq);
                    continue;
                }
                assert_eq!(
                    (event.seq, event.text.as_str()),
                    (published.seq, text.as_str())
                );
                break;
            }
        }
    }
    let left_seq = stalled_left.expect("the stalled participant was never dropped");

    // When it reads again it gets what fit in its buffers, in order, then the reason.
    let mut last_seq = 0;
    let err = loop {
        match within(DEADLINE, "stalled_events.next", stalled_events.next()).await {
            Ok(Some(Received { event, .. })) => {
                assert!(event.seq > last_seq);
                last_seq = event.seq;
            }
            Ok(None) => panic!("the stalled feed ended without a reason"),
            Err(err) => break err,
        }
    };
    assert!(last_seq < left_seq);
    assert_eq!(err.code(), Some(Code::ResourceExhausted));
    assert!(err.to_string().contains("fell behind the chat"), "{err}");
    server.stop().await;
}

/// What one participant saw in the concurrency test.
struct Seen {
    name: String,
    /// Every event after the last join: (seq, sender, text, server time, own time).
    events: Vec<(u64, String, String, u64, u64)>,
    /// Every publish: (send time, seq, server time, reply time).
    published: Vec<chittychat::client::Published>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_participants_publishing_at_once_see_one_order_and_causal_timestamps() {
    const PARTICIPANTS: usize = 20;
    const MESSAGES: usize = 50;
    const TOTAL: usize = PARTICIPANTS * MESSAGES;
    let server = TestServer::start(unlimited()).await;

    let mut joined = Vec::new();
    for p in 0..PARTICIPANTS {
        joined.push(join(&server.url(), &format!("p{p}")).await);
    }
    // Everyone has seen every join before anyone publishes.
    for (p, (_, events)) in joined.iter_mut().enumerate() {
        for _ in p + 1..PARTICIPANTS {
            assert_eq!(next(events).await.event.kind, EventKind::Joined);
        }
    }

    let start = tokio::sync::Barrier::new(PARTICIPANTS);
    let start = std::sync::Arc::new(start);
    let tasks: Vec<_> = joined
        .into_iter()
        .enumerate()
        .map(|(p, (session, mut events))| {
            let start = std::sync::Arc::clone(&start);
            tokio::spawn(async move {
                let receiver = tokio::spawn(async move {
                    let mut seen = Vec::with_capacity(TOTAL);
                    while seen.len() < TOTAL {
                        let received = next(&mut events).await;
                        let e = received.event;
                        seen.push((
                            e.seq,
                            e.participant.to_string(),
                            e.text,
                            e.lamport,
                            received.local_lamport,
                        ));
                    }
                    (seen, events)
                });
                start.wait().await;
                let mut published = Vec::with_capacity(MESSAGES);
                for m in 0..MESSAGES {
                    published.push(session.publish(&format!("p{p} m{m}")).await.unwrap());
                }
                let (events, _feed) = fixture::within(DEADLINE, "the call", receiver)
                    .await
                    .unwrap();
                Seen {
                    name: session.name().to_owned(),
                    events,
                    published,
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.push(fixture::within(DEADLINE, "the call", task).await.unwrap());
    }

    // One order for everyone: the server's sequence order, without gaps.
    let reference: Vec<u64> = all[0].events.iter().map(|e| e.0).collect();
    let first = reference[0];
    assert_eq!(
        reference,
        (first..first + TOTAL as u64).collect::<Vec<_>>(),
        "gaps or reordering"
    );
    for seen in &all {
        let order: Vec<(u64, &str, &str, u64)> = seen
            .events
            .iter()
            .map(|e| (e.0, e.1.as_str(), e.2.as_str(), e.3))
            .collect();
        let reference: Vec<(u64, &str, &str, u64)> = all[0]
            .events
            .iter()
            .map(|e| (e.0, e.1.as_str(), e.2.as_str(), e.3))
            .collect();
        assert_eq!(order, reference, "{} saw another order", seen.name);
        // Exactly once: every message, no duplicates.
        let texts: HashSet<&str> = seen.events.iter().map(|e| e.2.as_str()).collect();
        assert_eq!(
            texts.len(),
            TOTAL,
            "{} missed or duplicated messages",
            seen.name
        );
    }

    // The server's timestamps rise with its sequence numbers.
    let server_times: Vec<u64> = all[0].events.iter().map(|e| e.3).collect();
    assert!(server_times.windows(2).all(|w| w[0] < w[1]));

    // Each sender's messages arrive in the order it sent them.
    let mut per_sender: HashMap<&str, Vec<usize>> = HashMap::new();
    for (_, sender, text, _, _) in &all[0].events {
        let m: usize = text.rsplit_once(" m").unwrap().1.parse().unwrap();
        per_sender.entry(sender.as_str()).or_default().push(m);
    }
    for (sender, ms) in per_sender {
        assert_eq!(ms, (0..MESSAGES).collect::<Vec<_>>(), "{sender}");
    }

    // Causality at every hop, and strictly rising times in every process.
    let server_time_of: HashMap<u64, u64> = all[0].events.iter().map(|e| (e.0, e.3)).collect();
    for seen in &all {
        let mut own_times = HashSet::new();
        for published in &seen.published {
            // client send < server broadcast < client's receipt of the reply
            assert!(published.sent_lamport < published.server_lamport);
            assert!(published.server_lamport < published.reply_lamport);
            assert_eq!(server_time_of[&published.seq], published.server_lamport);
            assert!(own_times.insert(published.sent_lamport));
            assert!(own_times.insert(published.reply_lamport));
        }
        for pair in seen.published.windows(2) {
            assert!(pair[0].reply_lamport < pair[1].sent_lamport);
        }
        for (seq, _, _, server_time, own_time) in &seen.events {
            // server broadcast < client receipt
            assert!(server_time < own_time, "{} seq {seq}", seen.name);
            assert!(
                own_times.insert(*own_time),
                "{} reused time {own_time}",
                seen.name
            );
        }
        for pair in seen.events.windows(2) {
            assert!(pair[0].4 < pair[1].4, "{} receive times fell", seen.name);
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_tells_every_participant() {
    let server = TestServer::start(ServerConfig::default()).await;
    let (_alice, mut events) = join(&server.url(), "alice").await;
    let stopping = tokio::spawn(server.stop());
    let err = within(DEADLINE, "events.next", events.next())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable));
    assert!(err.to_string().contains("shutting down"), "{err}");
    fixture::within(DEADLINE, "the call", stopping)
        .await
        .unwrap();
}
