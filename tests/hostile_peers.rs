//! No peer can hurt the others: raw HTTP/2 peers that stop reading, open streams
//! and never finish them, open connections and never join, or open too many; each is
//! cut off or refused within a bound while honest participants carry on.

mod fixture;

use chittychat::connection::{
    CROWD_ACCEPTS, CUT_OFF_GRACE, ConnectionLimits, DEFAULT_CROWD_NICENESS,
    DEFAULT_MAX_STREAMS_PER_CONNECTION,
};
use chittychat::event::EventKind;
use chittychat::server::{MAX_LOCAL_RESET_STREAMS, ServerConfig};
use chittychat::transport::Keepalive;
use fixture::peer::{
    ENHANCE_YOUR_CALM, FramePeer, HUGE_WINDOW, RawPeer, proc_sockets_at, socket_open,
};
use fixture::{DEADLINE, ServerProcess, TestServer, await_notice, join, next_event, within};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::Code;

/// A room whose log keeps few events (so that a stalled reader is cut off after a
/// few hundred messages), whose newcomers see no history, and whose keepalive never
/// fires during a test, so that every connection the server closes is closed by the
/// limit under test.
fn config(history_limit: u64, connections: ConnectionLimits) -> ServerConfig {
    ServerConfig {
        keepalive: Keepalive {
            interval: Duration::from_secs(600),
            timeout: Duration::from_secs(600),
        },
        connections,
        ..fixture::unlimited_with_history_limit(history_limit)
    }
}

/// The tests' configuration, with connections closed after `join_timeout` without
/// a participant.
fn join_timeout_config(join_timeout: Duration) -> ServerConfig {
    config(
        1024,
        ConnectionLimits {
            join_timeout,
            ..ConnectionLimits::default()
        },
    )
}

/// Waits until the server no longer holds its socket to `peer`.
async fn await_socket_closed(server: SocketAddr, peer: SocketAddr, limit: Duration) -> Duration {
    let started = Instant::now();
    within(limit, "the server to close the connection", async {
        while socket_open(server, peer) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    started.elapsed()
}

/// `alice` publishes 128-character messages, reading each back, until the others'
/// leave notice for `who` arrives; returns how many she sent.
async fn publish_until_left(
    alice: &chittychat::client::Session,
    events: &mut chittychat::client::Events,
    who: &str,
) -> usize {
    const MAX_MESSAGES: usize = 20_000;
    for i in 0..MAX_MESSAGES {
        let text = format!("{i:06} {}", "x".repeat(121));
        let published = within(DEADLINE, "a publish", alice.publish(&text))
            .await
            .unwrap();
        loop {
            let event = next_event(events).await.event;
            if event.kind == EventKind::Left && &*event.participant == who {
                return i + 1;
            }
            if event.seq == published.seq {
                break;
            }
        }
    }
    panic!("{who} was not cut off after {MAX_MESSAGES} messages");
}

#[tokio::test]
async fn a_participant_that_stops_reading_is_cut_off_and_its_connection_closed() {
    const SEND_TIMEOUT: Duration = Duration::from_secs(1);
    // Closed within the send timeout of the socket filling up, with slack for the
    // feed check and a slow machine.
    stalled_reader_is_closed(SEND_TIMEOUT, SEND_TIMEOUT * 3).await;
}

#[tokio::test]
async fn a_cut_off_participant_loses_its_connection_at_once_not_at_the_send_timeout() {
    // The send timeout is far away: the connection must close because the room
    // cut the participant off, within the grace its status gets.
    stalled_reader_is_closed(Duration::from_secs(600), CUT_OFF_GRACE * 3).await;
}

/// A participant that stops reading is cut off as too slow, and its connection is
/// closed within `limit` of the others seeing it leave.
async fn stalled_reader_is_closed(send_timeout: Duration, limit: Duration) {
    let server = TestServer::start(config(
        16,
        ConnectionLimits {
            send_timeout,
            ..ConnectionLimits::default()
        },
    ))
    .await;
    let (alice, mut alice_events) = join(&server.url(), "alice").await;

    // The attacker offers the largest window there is, then stops reading its
    // socket (whose receive buffer is small, so that the server's fills soon).
    let mut attacker = RawPeer::connect(server.addr, HUGE_WINDOW, Some(4096))
        .await
        .unwrap();
    let (_token, _feed) = within(DEADLINE, "the attacker's Join", attacker.join("stalled"))
        .await
        .unwrap();
    await_notice(&mut alice_events, EventKind::Joined, "stalled", DEADLINE).await;
    attacker.gate.stop_reading();
    assert!(socket_open(server.addr, attacker.local));

    let sent = publish_until_left(&alice, &mut alice_events, "stalled").await;
    let took = await_socket_closed(server.addr, attacker.local, limit).await;
    println!("cut off after {sent} messages; connection closed {took:?} later");

    // The rest are unharmed: alice goes on, and a newcomer joins.
    alice.publish("still here").await.unwrap();
    let (_bob, _bob_events) = join(&server.url(), "bob").await;
    // The attacker, reading at last, finds its connection reset.
    attacker.gate.resume_reading();
    let ended = within(
        DEADLINE,
        "the attacker's connection to end",
        &mut attacker.driver,
    )
    .await
    .unwrap();
    assert!(ended.is_err(), "{ended:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_participant_that_grants_no_window_is_cut_off_and_its_connection_closed() {
    const SEND_TIMEOUT: Duration = Duration::from_secs(1);
    let server = TestServer::start(config(
        16,
        ConnectionLimits {
            send_timeout: SEND_TIMEOUT,
            ..ConnectionLimits::default()
        },
    ))
    .await;
    let (alice, mut alice_events) = join(&server.url(), "alice").await;

    // This peer reads its socket and answers pings, but offers a 1 KiB window and
    // never gives it back: HTTP/2 can send it nothing more, its socket never fills.
    let mut miser = RawPeer::connect(server.addr, 1024, None).await.unwrap();
    let (_token, _feed) = within(DEADLINE, "the miser's Join", miser.join("miser"))
        .await
        .unwrap();
    await_notice(&mut alice_events, EventKind::Joined, "miser", DEADLINE).await;

    let sent = publish_until_left(&alice, &mut alice_events, "miser").await;
    let took = await_socket_closed(server.addr, miser.local, SEND_TIMEOUT * 3).await;
    println!("cut off after {sent} messages; connection closed {took:?} later");
    let ended = within(DEADLINE, "the miser's connection to end", &mut miser.driver)
        .await
        .unwrap();
    assert!(ended.is_err(), "{ended:?}");
    alice.publish("still here").await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_cut_off_participant_that_reads_again_gets_the_reason_then_loses_its_connection() {
    // (A participant whose socket is full when it is cut off loses its connection at
    // once: a_cut_off_participant_loses_its_connection_at_once_not_at_the_send_timeout.)
    let server = TestServer::start(config(
        16,
        ConnectionLimits {
            // Longer than the test: the connection must close because its
            // participant was cut off, not because it stalled.
            send_timeout: Duration::from_secs(600),
            ..ConnectionLimits::default()
        },
    ))
    .await;
    let (alice, mut alice_events) = join(&server.url(), "alice").await;
    // slow reads its socket but offers a 1 KiB window and gives nothing back until
    // it reads again: HTTP/2 flow control holds the server back, its socket never
    // fills, so the status can still reach slow.
    let mut slow = RawPeer::connect(server.addr, 1024, None).await.unwrap();
    let (_token, mut feed) = within(DEADLINE, "slow's Join", slow.join("slow"))
        .await
        .unwrap();
    await_notice(&mut alice_events, EventKind::Joined, "slow", DEADLINE).await;
    assert_eq!(
        proc_sockets_at(server.addr),
        2,
        "alice's connection and slow's"
    );

    publish_until_left(&alice, &mut alice_events, "slow").await;
    // slow reads again, within the grace its status gets: the events it was owed,
    // then the reason.
    let trailers = within(DEADLINE, "the slow feed to end", async {
        while let Some(chunk) = feed.data().await {
            let chunk = chunk.expect("the feed's data");
            let _ = feed.flow_control().release_capacity(chunk.len());
        }
        feed.trailers().await.expect("the feed's trailers")
    })
    .await
    .expect("the feed ends with a status");
    let status = tonic::Status::from_header_map(&trailers).expect("a gRPC status");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("fell behind the chat"),
        "{status:?}"
    );

    // Then the server closes the connection, once the status has had its grace.
    within(
        CUT_OFF_GRACE + DEADLINE / 4,
        "the connection to close",
        async {
            while proc_sockets_at(server.addr) != 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
    )
    .await;
    alice.publish("still here").await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn streams_past_the_limit_are_refused_and_a_peer_that_insists_is_closed() {
    let server = TestServer::start(config(1024, ConnectionLimits::default())).await;
    let (alice, mut alice_events) = join(&server.url(), "alice").await;

    // A peer that ignores the server's SETTINGS_MAX_CONCURRENT_STREAMS: it opens
    // Publish streams, sends their headers and never finishes them.
    let mut peer = FramePeer::connect(server.addr).await.unwrap();
    let allowed = DEFAULT_MAX_STREAMS_PER_CONNECTION as usize;
    let mut ids = Vec::new();
    for _ in 0..allowed + MAX_LOCAL_RESET_STREAMS + 8 {
        ids.push(
            peer.open_unfinished_stream("/chittychat.v1.ChittyChat/Publish")
                .await
                .unwrap(),
        );
    }
    let heard = within(DEADLINE, "the server's answer", peer.listen(|h| h.closed)).await;
    println!("{heard:?}");
    // The first streams, up to the limit, are served (they wait for their body);
    // every later one is refused, until the server has had enough.
    assert!(
        heard.refused.iter().all(|id| !ids[..allowed].contains(id)),
        "{heard:?}"
    );
    assert!(heard.refused.len() >= MAX_LOCAL_RESET_STREAMS, "{heard:?}");
    assert_eq!(heard.goaway, Some(ENHANCE_YOUR_CALM), "{heard:?}");

    alice.publish("unharmed").await.unwrap();
    await_notice(&mut alice_events, EventKind::Chat, "alice", DEADLINE).await;
    server.stop().await;
}

#[tokio::test]
async fn a_join_that_waits_longer_than_the_join_timeout_keeps_its_connection() {
    use chittychat::pace::JoinRate;
    use std::num::NonZeroU32;
    const JOIN_TIMEOUT: Duration = Duration::from_millis(800);
    // One join a second: the second waits a second for its turn and the third two,
    // both longer than a connection may go without a participant.
    let server = TestServer::start(ServerConfig {
        join_rate: Some(JoinRate {
            per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(1).unwrap(),
        }),
        ..join_timeout_config(JOIN_TIMEOUT)
    })
    .await;
    let started = Instant::now();
    let joins: Vec<_> = ["first", "second", "third"]
        .into_iter()
        .map(|name| {
            let url = server.url();
            tokio::spawn(async move { join(&url, name).await })
        })
        .collect();
    let mut joined = Vec::new();
    for join in joins {
        joined.push(within(DEADLINE, "a paced join", join).await.unwrap());
    }
    assert!(
        started.elapsed() >= 2 * JOIN_TIMEOUT,
        "the joins did not wait: {:?}",
        started.elapsed()
    );
    // Each kept its connection, and its participant is heard by the others.
    let [(first, first_events), (_second, _), (third, _)] = &mut joined[..] else {
        unreachable!()
    };
    third.publish("still here").await.unwrap();
    await_notice(first_events, EventKind::Chat, "third", DEADLINE).await;
    first.publish("me too").await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn connections_without_a_participant_are_closed_after_the_join_timeout() {
    const JOIN_TIMEOUT: Duration = Duration::from_millis(800);
    let server = TestServer::start(join_timeout_config(JOIN_TIMEOUT)).await;
    let started = Instant::now();
    let (alice, mut alice_events) = join(&server.url(), "alice").await;

    // Silent peers: they complete the HTTP/2 handshake and answer pings, and never
    // join. One more joins and then drops its feed: it has no participant from then.
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(RawPeer::connect(server.addr, 65_535, None).await.unwrap());
    }
    let mut brief = RawPeer::connect(server.addr, 65_535, None).await.unwrap();
    let (_token, feed) = within(DEADLINE, "brief's Join", brief.join("brief"))
        .await
        .unwrap();
    drop(feed);
    await_notice(&mut alice_events, EventKind::Left, "brief", DEADLINE).await;
    let brief_left = Instant::now();
    // One asks to join under a name in use: refused, it has no participant either,
    // and asking did not buy it more time.
    let mut refused = RawPeer::connect(server.addr, 65_535, None).await.unwrap();
    let answer = within(DEADLINE, "refused's Join", refused.join("alice")).await;
    assert!(answer.is_err(), "a second alice was let in");

    for peer in silent.iter_mut().chain([&mut brief, &mut refused]) {
        let ended = within(
            JOIN_TIMEOUT + DEADLINE / 4,
            "a silent connection to close",
            &mut peer.driver,
        )
        .await
        .unwrap();
        assert!(ended.is_err(), "{ended:?}");
        assert!(!socket_open(server.addr, peer.local));
    }
    let closed_after = started.elapsed();
    assert!(closed_after >= JOIN_TIMEOUT, "{closed_after:?}");
    assert!(brief_left.elapsed() >= JOIN_TIMEOUT * 9 / 10);

    // alice's connection, accepted before the others and so past its join timeout
    // too, carries her feed: it is open and her session still valid.
    alice.publish("still here").await.unwrap();
    await_notice(&mut alice_events, EventKind::Chat, "alice", DEADLINE).await;
    server.stop().await;
}

#[tokio::test]
async fn connections_past_the_limit_are_refused_and_the_honest_are_served() {
    const MAX_CONNECTIONS: usize = 3;
    const EXTRA: usize = 5;
    let mut server = ServerProcess::start(&[
        "--max-connections",
        &MAX_CONNECTIONS.to_string(),
        "--publish-rate",
        "0",
    ])
    .await;
    let (alice, mut alice_events) = join(&server.url(), "alice").await;
    let mut holders = Vec::new();
    for _ in 1..MAX_CONNECTIONS {
        holders.push(RawPeer::connect(server.addr, 65_535, None).await.unwrap());
    }
    // Every connection past the cap is closed at once: reset before or just after
    // the HTTP/2 handshake.
    for _ in 0..EXTRA {
        if let Ok(mut extra) = RawPeer::connect(server.addr, 65_535, None).await {
            let ended = within(DEADLINE, "the extra connection to close", &mut extra.driver)
                .await
                .unwrap();
            assert!(ended.is_err(), "{ended:?}");
        }
    }
    let line = server
        .await_log("connection limit reached; closing new connections until some close")
        .await;
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["max_connections"], MAX_CONNECTIONS, "{line}");

    // alice, already connected, is served as before.
    alice.publish("served").await.unwrap();
    await_notice(&mut alice_events, EventKind::Chat, "alice", DEADLINE).await;

    // Once a connection closes, a newcomer gets its place.
    let closing = holders.pop().unwrap();
    closing.driver.abort();
    drop(closing);
    let (_bob, _bob_events) =
        join_once_let_in(&server.url(), "bob", "bob to find a free place").await;
    // One warning for the whole episode, however many were refused.
    let line = server.await_log("below the connection limit again").await;
    assert!(line["refused"].as_u64().unwrap() >= EXTRA as u64, "{line}");
    let warnings = server.logged("connection limit reached");
    assert_eq!(
        warnings, 1,
        "the limit was logged more than once per episode"
    );
}

#[tokio::test]
async fn out_of_descriptors_the_accept_loop_backs_off_and_logs_once() {
    const DESCRIPTORS: u32 = 64;
    let mut server = ServerProcess::start(&["--max-connections", "10000"]).await;
    // Lower the running server's descriptor limit (the program raised it at start).
    let limited = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", server.pid()))
        .arg(format!("--nofile={DESCRIPTORS}:{DESCRIPTORS}"))
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(limited.success());

    // More connections than descriptors: the kernel queues the rest, and accept
    // fails with EMFILE until some close.
    let mut held = Vec::new();
    for _ in 0..DESCRIPTORS + 16 {
        held.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let line = server
        .await_log("cannot accept connections; backing off")
        .await;
    assert_eq!(line["level"], "WARN", "{line}");
    // Backing off, the server idles instead of spinning on accept.
    let cpu = |pid| chittychat::bench::cpu_ns(pid).unwrap();
    let (before, started) = (cpu(server.pid()), Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = (cpu(server.pid()) - before) as f64 / started.elapsed().as_nanos() as f64;
    assert!(busy < 0.3, "the server used {:.0}% of a core", busy * 100.0);

    drop(held);
    let line = server.await_log("accepting connections again").await;
    assert!(line["failures"].as_u64().unwrap() >= 1, "{line}");
    let warnings = server.logged("cannot accept connections");
    assert_eq!(warnings, 1, "the episode was logged more than once");
    // And it serves again.
    let (alice, _events) = join(&server.url(), "alice").await;
    alice.publish("back").await.unwrap();
}

/// Connects and joins as `name`, again every 20 ms until the server lets it in,
/// within the deadline (`what` says what is awaited).
async fn join_once_let_in(
    url: &str,
    name: &str,
    what: &str,
) -> (chittychat::client::Session, chittychat::client::Events) {
    within(DEADLINE, what, async {
        loop {
            let attempt = async {
                let channel = chittychat::client::connect(url).await.ok()?;
                chittychat::client::Session::join(channel, name).await.ok()
            };
            if let Some(joined) = attempt.await {
                return joined;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// The nice value of each of process `pid`'s threads named `name` (Linux's
/// `/proc/PID/task/*/stat`, the 19th field).
#[cfg(target_os = "linux")]
fn thread_nice(pid: u32, name: &str) -> Vec<i64> {
    let mut nice = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else {
            continue;
        };
        if comm.trim_end() != name {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(task.join("stat")) else {
            continue;
        };
        // After the name in parentheses: state is field 3, nice field 19.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        nice.push(fields[16].parse().unwrap());
    }
    nice
}

#[tokio::test]
async fn a_crowd_connecting_at_once_is_served_on_threads_of_lower_priority() {
    const CROWD: usize = CROWD_ACCEPTS + 20;
    let mut server = ServerProcess::start(&["--publish-rate", "0"]).await;
    let (alice, mut alice_events) = join(&server.url(), "alice").await;

    // Connections come all at once: past the first CROWD_ACCEPTS, they are a crowd.
    let url = server.url();
    let channels = within(
        DEADLINE,
        "the crowd to connect",
        futures::future::join_all((0..CROWD).map(|_| chittychat::client::connect(&url))),
    )
    .await;
    let line = server
        .await_log("a crowd is connecting; serving it at a lower CPU priority")
        .await;
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["accepts"], CROWD_ACCEPTS, "{line}");

    // Every one of them is served: each joins, and they and alice hear each other.
    let mut crowd = Vec::new();
    for (n, channel) in channels.into_iter().enumerate() {
        let name = format!("crowd{n}");
        let joined = within(
            DEADLINE,
            "a Join from the crowd",
            chittychat::client::Session::join(channel.unwrap(), &name),
        )
        .await
        .unwrap();
        await_notice(&mut alice_events, EventKind::Joined, &name, DEADLINE).await;
        crowd.push(joined);
    }
    let (last, last_events) = crowd.last_mut().unwrap();
    last.publish("from the crowd").await.unwrap();
    let last_name = format!("crowd{}", CROWD - 1);
    await_notice(&mut alice_events, EventKind::Chat, &last_name, DEADLINE).await;
    alice.publish("to the crowd").await.unwrap();
    await_notice(last_events, EventKind::Chat, "alice", DEADLINE).await;
    // One of the crowd goes without a word: its leave is announced, though the
    // server's own threads, not the crowd's, take the room's lock for it.
    let (gone, _) = crowd.pop().unwrap();
    drop(gone);
    await_notice(&mut alice_events, EventKind::Left, &last_name, DEADLINE).await;

    // The crowd's threads run at a lower priority than the server's own.
    #[cfg(target_os = "linux")]
    {
        let own = thread_nice(server.pid(), "tokio-rt-worker");
        // Linux keeps 15 bytes of a thread's name: `chittychat-crowd` is this.
        let crowds = thread_nice(server.pid(), "chittychat-crow");
        assert!(!own.is_empty() && !crowds.is_empty(), "{own:?} {crowds:?}");
        let lowered = (own[0] + i64::from(DEFAULT_CROWD_NICENESS)).min(19);
        // The thread that drives the crowd's runtime keeps its priority; its
        // workers, which run the connections, have the lower one.
        assert!(crowds.contains(&lowered), "{own:?} {crowds:?}");
        assert!(own.iter().all(|&nice| nice == own[0]), "{own:?}");
    }

    // Once the crowd is in, the next connection is calm again, and the episode is
    // logged once, with how many connections it handed over.
    let calm = join_once_let_in(&url, "bob", "a calm connection").await;
    let line = server.await_log("the crowd has connected").await;
    assert!(
        line["connections"].as_u64().unwrap() >= (CROWD - CROWD_ACCEPTS) as u64,
        "{line}"
    );
    drop(calm);
    let episodes = server.logged("a crowd is connecting");
    assert_eq!(episodes, 1, "the crowd was logged more than once");

    // The server stops cleanly with the crowd still connected.
    drop(alice);
    let status = within(DEADLINE, "the server to stop", server.terminate()).await;
    assert!(status.success(), "{status:?}");
    drop(crowd);
}
