//! Dead peers: HTTP/2 keepalive notices a client or a server that went silent
//! without closing its connection, here simulated by a relay that stops forwarding.

mod fixture;

use chittychat::client::{ConnectOptions, Session, connect, connect_with};
use chittychat::event::EventKind;
use chittychat::server::ServerConfig;
use chittychat::transport::Keepalive;
use fixture::{ClientProcess, DEADLINE, Relay, ServerProcess, TestServer, await_notice, within};
use std::time::{Duration, Instant};

/// A keepalive short enough for a test: a dead peer is noticed within 1.5 s, while
/// a live one on a loaded machine still has a second to answer.
const SHORT: Keepalive = Keepalive {
    interval: Duration::from_millis(500),
    timeout: Duration::from_millis(1000),
};

/// A keepalive that never fires during a test.
const LONG: Keepalive = Keepalive {
    interval: Duration::from_secs(300),
    timeout: Duration::from_secs(300),
};

/// Slack on top of the keepalive bound, for a loaded machine.
const SLACK: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_client_that_vanishes_is_announced_as_left_in_time() {
    let server = TestServer::start(ServerConfig {
        keepalive: SHORT,
        ..ServerConfig::default()
    })
    .await;
    let relay = Relay::start(server.addr).await;

    let (_bob, mut bob_events) = Session::join(connect(&server.url()).await.unwrap(), "bob")
        .await
        .unwrap();
    await_notice(&mut bob_events, EventKind::Joined, "bob", DEADLINE).await;
    // alice's own keepalive must not give her away: only the server's may notice.
    let alice_channel = connect_with(
        &relay.url(),
        &ConnectOptions {
            keepalive: LONG,
            ..ConnectOptions::default()
        },
    )
    .await
    .unwrap();
    let (_alice, _alice_events) = Session::join(alice_channel, "alice").await.unwrap();
    await_notice(&mut bob_events, EventKind::Joined, "alice", DEADLINE).await;

    // alice's host vanishes: her connection stays open but nothing gets through.
    relay.stall();
    let stalled_at = Instant::now();
    let bound = SHORT.detection_bound() + SLACK;
    let left = await_notice(&mut bob_events, EventKind::Left, "alice", bound).await;
    let took = stalled_at.elapsed();
    assert!(
        took >= SHORT.timeout,
        "noticed before a ping could time out: {took:?}"
    );
    assert_eq!(
        left.event.text,
        format!(
            "Participant alice left Chitty-Chat at Lamport time {}",
            left.event.lamport
        )
    );
    println!("the server noticed the vanished client after {took:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_client_notices_a_server_that_went_silent() {
    let server = TestServer::start(ServerConfig {
        keepalive: LONG,
        ..ServerConfig::default()
    })
    .await;
    let relay = Relay::start(server.addr).await;
    let channel = connect_with(
        &relay.url(),
        &ConnectOptions {
            keepalive: SHORT,
            ..ConnectOptions::default()
        },
    )
    .await
    .unwrap();
    let (_alice, mut events) = Session::join(channel, "alice").await.unwrap();
    await_notice(&mut events, EventKind::Joined, "alice", DEADLINE).await;

    relay.stall();
    let stalled_at = Instant::now();
    let ended = within(SHORT.detection_bound() + SLACK, "the feed to fail", async {
        loop {
            match events.next().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    let took = stalled_at.elapsed();
    let err = ended.expect_err("the feed of a silent server must fail, not end cleanly");
    println!("the client noticed the silent server after {took:?}: {err}");
    drop(relay);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_binary_takes_its_keepalive_from_the_command_line() {
    let logs = tempfile::tempdir().unwrap();
    let server =
        ServerProcess::start(&["--keepalive-interval", "0.5", "--keepalive-timeout", "1"]).await;
    let relay = Relay::start(server.addr).await;
    let mut bob = ClientProcess::start(&server.url(), "bob", &[], &[], logs.path());
    bob.await_joined("bob").await;
    let mut alice = ClientProcess::start(
        &relay.url(),
        "alice",
        &["--keepalive-interval", "300", "--no-reconnect"],
        &[],
        logs.path(),
    );
    alice.await_joined("alice").await;
    bob.stdout
        .await_line("alice's join", |l| {
            l.starts_with("Participant alice joined ")
        })
        .await;

    relay.stall();
    let stalled_at = Instant::now();
    bob.stdout
        .await_line("alice's leave", |l| {
            l.starts_with("Participant alice left ")
        })
        .await;
    let took = stalled_at.elapsed();
    assert!(took < SHORT.detection_bound() + SLACK, "took {took:?}");
    drop(alice);
    assert!(bob.finish().await.0.success());
}
