//! Several Chitty-Chat servers as one cluster, on a NATS JetStream stream: one
//! order on every node, names unique across nodes, and every participant of a node
//! that stops or is killed announced as left exactly once.
//!
//! Each test starts its own `nats-server -js` on a free loopback port.

mod fixture;

use chittychat::client::{Events, JoinOptions, Session, connect};
use chittychat::cluster::ClusterConfig;
use chittychat::event::EventKind;
use chittychat::server::ServerConfig;
use fixture::nats::NatsServer;
use fixture::{
    ClientProcess, DEADLINE, Relay, ServerProcess, TestServer, WithoutUserSettings, await_notice,
    join, next_event, sample, scrape, within,
};
use std::collections::BTreeMap;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A node of the cluster on `nats`, named `node`, without a publish rate limit,
/// once it serves (it has joined the cluster and applied the log).
async fn node(nats: &NatsServer, node: &str) -> TestServer {
    let server = TestServer::start(ServerConfig {
        cluster: Some(ClusterConfig::new(vec![nats.url()], node)),
        ..fixture::unlimited_with_history_limit(10_000)
    })
    .await;
    await_health(&server, ServingStatus::Serving).await;
    server
}

/// What a participant received: (sequence number, Lamport time, kind, participant,
/// text), by sequence number.
type Seen = BTreeMap<u64, (u64, EventKind, String, String)>;

/// Reads `events` until `done` holds for what was seen.
async fn read_until(events: &mut Events, seen: &mut Seen, done: impl Fn(&Seen) -> bool) {
    while !done(seen) {
        let received = next_event(events).await;
        let event = received.event;
        let previous = seen.insert(
            event.seq,
            (
                event.lamport,
                event.kind,
                event.participant.to_string(),
                event.text.to_string(),
            ),
        );
        assert!(previous.is_none(), "event {} delivered twice", event.seq);
    }
}

/// Joins `name` at `url` with `options` (a resume), checks that the feed resumed,
/// and returns the session, its feed, and the texts replayed up to and including
/// the participant's own join notice.
async fn rejoin(url: &str, name: &str, options: JoinOptions) -> (Session, Events, Vec<String>) {
    let channel = connect(url).await.unwrap();
    let (session, mut events) = within(
        DEADLINE,
        &format!("{name}'s rejoin"),
        Session::join_with(channel, name, options),
    )
    .await
    .unwrap();
    assert_eq!(session.joined().resumed, Some(true));
    let mut texts = Vec::new();
    loop {
        let received = next_event(&mut events).await;
        texts.push(received.event.text.to_string());
        if received.event.kind == EventKind::Joined && &*received.event.participant == name {
            return (session, events, texts);
        }
    }
}

/// Reads `events` until the feed fails; returns why.
async fn feed_error(events: &mut Events) -> chittychat::client::ClientError {
    within(DEADLINE, "the feed to end", async {
        loop {
            match events.next().await {
                Ok(Some(_)) => continue,
                Err(err) => return err,
                Ok(None) => panic!("the feed ended without saying why"),
            }
        }
    })
    .await
}

fn chats(seen: &Seen) -> usize {
    seen.values()
        .filter(|(_, kind, ..)| *kind == EventKind::Chat)
        .count()
}

#[tokio::test]
async fn three_nodes_deliver_every_event_in_one_order_to_everyone() {
    let nats = NatsServer::start().await;
    let nodes = [
        node(&nats, "n1").await,
        node(&nats, "n2").await,
        node(&nats, "n3").await,
    ];
    let mut participants = Vec::new();
    for (i, server) in nodes.iter().enumerate() {
        participants.push(join(&server.url(), &format!("p{i}")).await);
    }
    // Everyone has seen those after them join before anyone publishes.
    for (i, (_, events)) in participants.iter_mut().enumerate() {
        for later in i + 1..nodes.len() {
            let _ = await_notice(events, EventKind::Joined, &format!("p{later}"), DEADLINE).await;
        }
    }
    const EACH: usize = 20;
    let publishing = participants
        .iter()
        .enumerate()
        .map(|(i, (session, _))| async move {
            for n in 0..EACH {
                session.publish(&format!("p{i} says {n}")).await.unwrap();
            }
        });
    within(
        DEADLINE,
        "every publish",
        futures::future::join_all(publishing),
    )
    .await;
    let mut views = Vec::new();
    for (_, events) in &mut participants {
        let mut seen = Seen::new();
        read_until(events, &mut seen, |seen| chats(seen) == EACH * nodes.len()).await;
        views.push(seen);
    }
    // The same events, with the same numbers and times, everywhere; numbers gapless.
    for view in &views[1..] {
        assert_eq!(view, &views[0]);
    }
    let numbers: Vec<u64> = views[0].keys().copied().collect();
    let first = numbers[0];
    assert_eq!(
        numbers,
        (first..first + numbers.len() as u64).collect::<Vec<_>>()
    );
    // Each node stamped its own participant's messages in the order they were sent.
    for i in 0..nodes.len() {
        let own: Vec<(u64, &str)> = views[0]
            .values()
            .filter(|(_, _, who, _)| *who == format!("p{i}"))
            .filter(|(_, kind, ..)| *kind == EventKind::Chat)
            .map(|(lamport, _, _, text)| (*lamport, text.as_str()))
            .collect();
        let texts: Vec<String> = (0..EACH).map(|n| format!("p{i} says {n}")).collect();
        assert_eq!(
            own.iter()
                .map(|(_, text)| text.to_string())
                .collect::<Vec<_>>(),
            texts
        );
        assert!(own.windows(2).all(|pair| pair[0].0 < pair[1].0), "{own:?}");
    }
    for server in nodes {
        server.stop().await;
    }
}

#[tokio::test]
async fn a_name_asked_on_two_nodes_at_once_is_given_once() {
    let nats = NatsServer::start().await;
    let (one, two) = (node(&nats, "one").await, node(&nats, "two").await);
    for round in 0..10 {
        let name = format!("same{round}");
        let ask = |url: String| {
            let name = name.clone();
            async move {
                let channel = connect(&url).await.unwrap();
                Session::join_with(channel, &name, JoinOptions::default()).await
            }
        };
        let (a, b) = within(DEADLINE, "two joins", async {
            tokio::join!(ask(one.url()), ask(two.url()))
        })
        .await;
        match (&a, &b) {
            (Ok(_), Err(err)) | (Err(err), Ok(_)) => {
                assert_eq!(err.code(), Some(Code::AlreadyExists), "{err}");
                assert!(err.to_string().contains("is taken"), "{err}");
            }
            _ => panic!(
                "round {round}: one join must win and one be refused: {:?} / {:?}",
                a.as_ref().map(|_| "joined").map_err(ToString::to_string),
                b.as_ref().map(|_| "joined").map_err(ToString::to_string),
            ),
        }
        // Both nodes agree on who is present.
        let (session, _) = a.or(b).unwrap();
        let mut who = session.who().await.unwrap();
        who.sort();
        assert!(who.contains(&name), "{who:?}");
    }
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn a_node_that_stops_has_its_participants_announced_as_left_once() {
    let nats = NatsServer::start().await;
    let (mut leaving, staying) = (node(&nats, "leaving").await, node(&nats, "staying").await);
    let (_carol, _carol_events) = join(&leaving.url(), "carol").await;
    let (_dave, _dave_events) = join(&leaving.url(), "dave").await;
    let (bob, mut bob_events) = join(&staying.url(), "bob").await;
    leaving.begin_stop();
    let left = [
        await_notice(&mut bob_events, EventKind::Left, "carol", DEADLINE).await,
        await_notice(&mut bob_events, EventKind::Left, "dave", DEADLINE).await,
    ];
    assert_eq!(left[1].event.seq, left[0].event.seq + 1);
    leaving.stop().await;
    // Nothing more about them: bob's next event is his own message.
    bob.publish("still here").await.unwrap();
    let next = next_event(&mut bob_events).await;
    assert_eq!(&*next.event.text, "still here");
    assert_eq!(next.event.seq, left[1].event.seq + 1);
    assert_eq!(bob.who().await.unwrap(), ["bob"]);
    staying.stop().await;
}

#[tokio::test]
async fn a_killed_node_that_comes_back_retires_its_participants_once_and_resumes_them() {
    let nats = NatsServer::start().await;
    let url = nats.url();
    let args = ["--nats", url.as_str(), "--node", "phoenix"];
    let phoenix = ServerProcess::start(&args).await;
    let other = ServerProcess::start(&["--nats", url.as_str(), "--node", "other"]).await;
    let (carol, mut carol_events) = join(&phoenix.url(), "carol").await;
    let (bob, mut bob_events) = join(&other.url(), "bob").await;
    let _ = await_notice(&mut carol_events, EventKind::Joined, "bob", DEADLINE).await;
    let resume = carol.resume_point().expect("carol saw events");
    let port = phoenix.addr.port();
    phoenix.kill().await;
    bob.publish("while phoenix is down").await.unwrap();
    // Back under its name, on its old port: its earlier run's participants leave.
    let phoenix = ServerProcess::start_on(&format!("127.0.0.1:{port}"), &args).await;
    let left = await_notice(&mut bob_events, EventKind::Left, "carol", DEADLINE).await;
    // Carol comes back to the same node and misses nothing.
    let options = JoinOptions {
        resume: Some(resume),
        ..JoinOptions::default()
    };
    let (again, _again_events, missed) = rejoin(&phoenix.url(), "carol", options).await;
    assert_eq!(
        missed,
        [
            "while phoenix is down".to_owned(),
            left.event.text.to_string(),
            missed.last().cloned().unwrap(),
        ]
    );
    // One leave for her first session, however many nodes saw the old run go.
    let rejoined = await_notice(&mut bob_events, EventKind::Joined, "carol", DEADLINE).await;
    assert_eq!(rejoined.event.seq, left.event.seq + 1);
    drop(carol_events);
    drop(again);
}

#[tokio::test]
async fn a_killed_node_that_stays_down_has_its_participants_announced_as_left_once() {
    let nats = NatsServer::start().await;
    let url = nats.url();
    let doomed = ServerProcess::start(&["--nats", url.as_str(), "--node", "doomed"]).await;
    let (one, two) = (node(&nats, "one").await, node(&nats, "two").await);
    let (_erin, _erin_events) = join(&doomed.url(), "erin").await;
    let (bob, mut bob_events) = join(&one.url(), "bob").await;
    let (carol, mut carol_events) = join(&two.url(), "carol").await;
    let _ = await_notice(&mut bob_events, EventKind::Joined, "carol", DEADLINE).await;
    doomed.kill().await;
    // Both survivors notice; the cluster announces her leave once, within the
    // stated bound.
    let bound = cluster_bound();
    let left = await_notice(&mut bob_events, EventKind::Left, "erin", bound).await;
    let seen_by_carol = await_notice(&mut carol_events, EventKind::Left, "erin", bound).await;
    assert_eq!(left.event, seen_by_carol.event);
    // Past the time a second survivor's announcement would take: nothing more.
    bob.publish("marker").await.unwrap();
    for events in [&mut bob_events, &mut carol_events] {
        let next = next_event(events).await;
        assert_eq!(&*next.event.text, "marker", "{next:?}");
    }
    assert_eq!(carol.who().await.unwrap(), ["bob", "carol"]);
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn a_node_refuses_while_nats_is_gone_and_serves_again_losing_nothing() {
    let mut nats = NatsServer::start().await;
    let server = node(&nats, "steady").await;
    let (alice, mut alice_events) = join(&server.url(), "alice").await;
    for n in 0..5 {
        alice.publish(&format!("answered {n}")).await.unwrap();
    }
    nats.kill();
    // Her feed ends, saying why, so that her client goes to another node.
    let ended = feed_error(&mut alice_events).await;
    assert_eq!(ended.code(), Some(Code::Unavailable), "{ended}");
    assert!(ended.to_string().contains("NATS"), "{ended}");
    // Meanwhile the node refuses newcomers, saying why, and reports NOT_SERVING.
    let channel = connect(&server.url()).await.unwrap();
    let refused = Session::join_with(channel, "early", JoinOptions::default())
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(refused.code(), Some(Code::Unavailable), "{refused}");
    assert!(
        refused.to_string().contains("cannot reach its cluster"),
        "{refused}"
    );
    await_health(&server, ServingStatus::NotServing).await;
    nats.start_again().await;
    // The node takes newcomers again once NATS is back, and they see every
    // message that was answered, and alice's leave, once.
    let (_, mut newcomer) = within(DEADLINE, "a join once NATS is back", async {
        loop {
            let channel = connect(&server.url()).await.unwrap();
            let options = JoinOptions {
                history: Some(20),
                ..JoinOptions::default()
            };
            match Session::join_with(channel, "newcomer", options).await {
                Ok(joined) => return joined,
                Err(err) => {
                    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    })
    .await;
    let mut texts = Vec::new();
    loop {
        let received = next_event(&mut newcomer).await;
        if received.event.participant.as_ref() == "newcomer" {
            break;
        }
        texts.push(received.event.text.to_string());
    }
    let answered: Vec<String> = (0..5).map(|n| format!("answered {n}")).collect();
    assert_eq!(
        texts
            .iter()
            .filter(|text| text.starts_with("answered"))
            .cloned()
            .collect::<Vec<_>>(),
        answered
    );
    let leaves = texts
        .iter()
        .filter(|text| text.starts_with("Participant alice left"))
        .count();
    assert!(leaves <= 1, "{texts:?}");
    if leaves == 0 {
        let _ = await_notice(&mut newcomer, EventKind::Left, "alice", DEADLINE).await;
    }
    await_health(&server, ServingStatus::Serving).await;
    server.stop().await;
}

/// Waits until the server's health service says `wanted` of the whole server
/// (the health service follows the node's connection to NATS as it changes).
async fn await_health(server: &TestServer, wanted: ServingStatus) {
    let mut health = HealthClient::new(server.channel().await);
    within(DEADLINE, &format!("health {wanted:?}"), async {
        loop {
            let response = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap();
            if response.into_inner().status == wanted as i32 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// How long the cluster may take to announce that a dead node's participants left,
/// at the defaults (README: "within 15 s").
fn cluster_bound() -> std::time::Duration {
    std::time::Duration::from_secs(15)
}

#[tokio::test]
async fn a_client_whose_node_is_killed_moves_to_another_and_misses_nothing() {
    let nats = NatsServer::start().await;
    let url = nats.url();
    let doomed = ServerProcess::start(&["--nats", url.as_str(), "--node", "doomed"]).await;
    let survivor = node(&nats, "survivor").await;
    let servers = format!("{},{}", doomed.url(), survivor.url());
    let mut carol = ClientProcess::start_plain(&servers, "carol", &[]);
    carol.await_joined("carol").await;
    let (bob, mut bob_events) = join(&survivor.url(), "bob").await;
    carol
        .stdout
        .await_line("bob's join notice", |line| {
            line.starts_with("Participant bob joined")
        })
        .await;
    doomed.kill().await;
    bob.publish("while carol moves").await.unwrap();
    // Her client goes to the surviving node and takes her name back at once (not
    // when the cluster finds her node dead), resuming where her feed stopped.
    carol
        .stderr
        .await_line("carol's client to move", |line| {
            line.contains(&format!("reconnected to {}", survivor.url()))
        })
        .await;
    let left = await_notice(&mut bob_events, EventKind::Left, "carol", DEADLINE).await;
    let back = await_notice(&mut bob_events, EventKind::Joined, "carol", DEADLINE).await;
    assert_eq!(back.event.seq, left.event.seq + 1);
    bob.publish("welcome back").await.unwrap();
    carol
        .stdout
        .await_line("bob's welcome", |line| line.ends_with("bob: welcome back"))
        .await;
    carol.say("thanks");
    let _ = await_notice(&mut bob_events, EventKind::Chat, "carol", DEADLINE).await;
    let (status, stdout, _) = carol.finish().await;
    assert!(status.success(), "{status:?}");
    let moved: Vec<&String> = stdout
        .seen
        .iter()
        .filter(|line| line.ends_with("bob: while carol moves"))
        .collect();
    assert_eq!(moved.len(), 1, "{:#?}", stdout.seen);
    survivor.stop().await;
}

#[tokio::test]
async fn a_node_cut_off_from_nats_by_a_stalled_network_refuses_then_recovers() {
    let nats = NatsServer::start().await;
    let relay = Relay::start(format!("127.0.0.1:{}", nats.port).parse().unwrap()).await;
    let cut_off = TestServer::start(ServerConfig {
        cluster: Some(ClusterConfig::new(
            vec![relay.url().replace("http://", "nats://")],
            "behind-relay",
        )),
        ..fixture::unlimited_with_history_limit(10_000)
    })
    .await;
    let steady = node(&nats, "steady").await;
    let (alice, mut alice_events) = join(&cut_off.url(), "alice").await;
    alice.publish("before the stall").await.unwrap();
    let (bob, mut bob_events) = join(&steady.url(), "bob").await;
    // The network between the node and NATS stops carrying anything; nothing
    // closes. The node notices by its pings, ends alice's feed and refuses.
    relay.stall();
    let ended = feed_error(&mut alice_events).await;
    assert_eq!(ended.code(), Some(Code::Unavailable), "{ended}");
    let channel = connect(&cut_off.url()).await.unwrap();
    let refused = Session::join_with(channel, "early", JoinOptions::default())
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(refused.code(), Some(Code::Unavailable), "{refused}");
    await_health(&cut_off, ServingStatus::NotServing).await;
    // The rest of the cluster carries on meanwhile.
    bob.publish("during the stall").await.unwrap();
    relay.resume();
    await_health(&cut_off, ServingStatus::Serving).await;
    // Alice comes back to the same node, takes her name back and misses nothing.
    let options = JoinOptions {
        resume: alice.resume_point(),
        replaces: Some(alice.previous()),
        ..JoinOptions::default()
    };
    let (_again, _again_events, texts) = rejoin(&cut_off.url(), "alice", options).await;
    assert!(texts.contains(&"during the stall".to_owned()), "{texts:?}");
    let leaves = texts
        .iter()
        .filter(|t| t.starts_with("Participant alice left"))
        .count();
    assert_eq!(leaves, 1, "{texts:?}");
    let _ = await_notice(&mut bob_events, EventKind::Joined, "alice", DEADLINE).await;
    cut_off.stop().await;
    steady.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_drives_a_cluster_spread_over_its_nodes_losing_nothing() {
    let nats = NatsServer::start().await;
    let nodes = [
        node(&nats, "b1").await,
        node(&nats, "b2").await,
        node(&nats, "b3").await,
    ];
    let servers = nodes
        .iter()
        .map(TestServer::url)
        .collect::<Vec<_>>()
        .join(",");
    // Over calls, and over PublishStreams, which keep each publisher's order.
    for over in ["unary", "stream"] {
        let servers = servers.clone();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_chittychat-bench"))
                .args(["saturate", "--server", &servers, "--json"])
                .args(["--participants", "9", "--publishers", "3"])
                .args(["--warmup", "0.2", "--duration", "1", "--publish-over", over])
                .without_user_settings()
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|err| {
            panic!(
                "no report ({err}): {stdout} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        assert!(output.status.success(), "{report}");
        assert_eq!(report["lost"], 0, "{report}");
        assert_eq!(report["duplicated"], 0, "{report}");
        assert_eq!(report["reordered"], 0, "{report}");
        assert!(report["deliveries"].as_u64().unwrap() > 0, "{report}");
    }
    for server in nodes {
        server.stop().await;
    }
}

#[tokio::test]
async fn a_node_serves_prometheus_metrics_an_operator_can_scrape() {
    let mut nats = NatsServer::start().await;
    let url = nats.url();
    let mut server = ServerProcess::start(&[
        "--nats",
        url.as_str(),
        "--node",
        "watched",
        "--metrics",
        "127.0.0.1:0",
    ])
    .await;
    let address = server.metrics_address().await;
    let (alice, _alice_events) = join(&server.url(), "alice").await;
    let (_bob, _bob_events) = join(&server.url(), "bob").await;
    for n in 0..3 {
        alice.publish(&format!("counted {n}")).await.unwrap();
    }
    let metrics = scrape(&address).await;
    assert_eq!(
        sample(&metrics, "chittychat_participants_present"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "chittychat_sessions"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "chittychat_events_appended_total"),
        Some(5.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "chittychat_events_delivered_total").unwrap() >= 5.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "chittychat_publish_seconds_count"),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "chittychat_nats_connected"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metrics.contains("# HELP chittychat_participants_present"),
        "{metrics}"
    );
    // The operator sees the node lose NATS.
    nats.kill();
    within(DEADLINE, "the NATS gauge to drop", async {
        while sample(&scrape(&address).await, "chittychat_nats_connected") != Some(0.0) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    server.signal("TERM");
    let _ = server.exit_status().await;
}

/// A participant of the cluster chaos test: its session, and its feed kept open
/// (dropping it would be a departure of its own).
struct Member {
    name: String,
    node: usize,
    session: Session,
    _events: Events,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_chaos_nodes_and_participants_killed_at_random_under_load() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::{BTreeMap, BTreeSet};
    let seed = fixture::chaos_seed("cluster chaos");
    let mut rng = StdRng::seed_from_u64(seed);
    let nats = NatsServer::start().await;
    let nats_url = nats.url();
    // Node 0 is never killed: the observer is there from the first event to the
    // last. Nodes 1 and 2 are killed (SIGKILL) and started again at random.
    let witness = node(&nats, "witness").await;
    let node_args = |n: usize| {
        vec![
            "--nats".to_owned(),
            nats_url.clone(),
            "--node".to_owned(),
            format!("n{n}"),
            "--publish-rate".to_owned(),
            "0".to_owned(),
        ]
    };
    let start = |n: usize, listen: Option<String>| {
        let args = node_args(n);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            match listen {
                Some(listen) => ServerProcess::start_on(&listen, &args).await,
                None => ServerProcess::start(&args).await,
            }
        }
    };
    let mut nodes: Vec<Option<ServerProcess>> =
        vec![None, Some(start(1, None).await), Some(start(2, None).await)];
    let ports: Vec<u16> = nodes
        .iter()
        .map(|n| n.as_ref().map_or(witness.addr.port(), |n| n.addr.port()))
        .collect();
    let url_of = |n: usize| format!("http://127.0.0.1:{}", ports[n]);
    let (observer, mut observer_events) = join(&witness.url(), "observer").await;
    let mut members: Vec<Member> = Vec::new();
    let mut answered: BTreeMap<u64, String> = BTreeMap::new();
    let mut next_name = 0;
    for _ in 0..120 {
        match rng.random_range(0..100) {
            // Someone joins, on any node that is up.
            0..30 => {
                let n = rng.random_range(0..3);
                if n > 0 && nodes[n].is_none() {
                    continue;
                }
                next_name += 1;
                let name = format!("p{next_name}");
                let channel = connect(&url_of(n)).await.unwrap();
                let options = JoinOptions {
                    history: Some(0),
                    ..JoinOptions::default()
                };
                if let Ok((session, events)) = Session::join_with(channel, &name, options).await {
                    members.push(Member {
                        name,
                        node: n,
                        session,
                        _events: events,
                    });
                }
            }
            // Someone publishes; what is answered must reach the observer once.
            30..70 if !members.is_empty() => {
                let who = rng.random_range(0..members.len());
                let text = format!("{} says {}", members[who].name, rng.random::<u32>());
                if let Ok(published) = members[who].session.publish(&text).await {
                    answered.insert(published.seq, text);
                }
            }
            // Someone leaves, or vanishes.
            70..85 if !members.is_empty() => {
                let who = members.swap_remove(rng.random_range(0..members.len()));
                if rng.random_bool(0.5) {
                    let _ = who.session.leave().await;
                }
            }
            // A node is killed, or comes back on its port.
            85..100 => {
                let n = rng.random_range(1..3);
                match nodes[n].take() {
                    Some(node) => {
                        node.kill().await;
                        members.retain(|member| member.node != n);
                    }
                    None => {
                        nodes[n] = Some(start(n, Some(format!("127.0.0.1:{}", ports[n]))).await);
                    }
                }
            }
            _ => {}
        }
    }
    // Everyone goes, however: the rest leave, vanish, or lose their node for good.
    for member in members.drain(..) {
        if member.node == 0 {
            let _ = member.session.leave().await;
        }
    }
    for node in nodes.iter_mut() {
        if let Some(node) = node.take() {
            node.kill().await;
        }
    }
    // Within the bound for a dead node, the observer is alone again.
    within(
        cluster_bound() + DEADLINE,
        "everyone else to be announced as left",
        async {
            while observer.who().await.unwrap() != ["observer"] {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        },
    )
    .await;
    // What the observer saw: every event once, in order, no gap; every answered
    // publish; each participant joined and left alternately, and left in the end.
    observer.publish("the end").await.unwrap();
    let mut seen = Seen::new();
    read_until(&mut observer_events, &mut seen, |seen| {
        seen.values().any(|(_, _, _, text)| text == "the end")
    })
    .await;
    let numbers: Vec<u64> = seen.keys().copied().collect();
    let first = numbers[0];
    assert_eq!(
        numbers,
        (first..first + numbers.len() as u64).collect::<Vec<_>>(),
        "a gap"
    );
    for (seq, text) in &answered {
        assert_eq!(
            seen.get(seq).map(|(_, _, _, t)| t),
            Some(text),
            "answered #{seq} lost"
        );
    }
    let mut present = BTreeSet::new();
    for (seq, (_, kind, who, _)) in &seen {
        match kind {
            EventKind::Joined => assert!(present.insert(who.clone()), "#{seq}: {who} joined twice"),
            EventKind::Left => assert!(present.remove(who), "#{seq}: {who} left twice"),
            EventKind::Chat => assert!(
                present.contains(who) || who == "observer",
                "#{seq}: {who} absent"
            ),
        }
    }
    assert!(present.is_empty(), "never left: {present:?} (seed {seed})");
    println!(
        "cluster chaos: {} events, {} answered publishes, {} participants",
        seen.len(),
        answered.len(),
        next_name
    );
    witness.stop().await;
}

#[tokio::test]
async fn each_node_logs_who_stamped_an_event_and_when_it_merged_another_nodes() {
    let nats = NatsServer::start().await;
    let url = nats.url();
    let one = ServerProcess::start(&["--nats", url.as_str(), "--node", "one"]).await;
    let two = ServerProcess::start(&["--nats", url.as_str(), "--node", "two"]).await;
    let (alice, mut alice_events) = join(&one.url(), "alice").await;
    let (bob, _bob_events) = join(&two.url(), "bob").await;
    alice.publish("from one").await.unwrap();
    bob.publish("from two").await.unwrap();
    let _ = await_notice(&mut alice_events, EventKind::Chat, "bob", DEADLINE).await;
    // Both nodes have applied all four events once alice has bob's message; their
    // logs end when they stop.
    let mut broadcasts: BTreeMap<u64, Vec<(String, serde_json::Value)>> = BTreeMap::new();
    for (name, server) in [("one", one), ("two", two)] {
        let (status, log) = server.terminate_with_log().await;
        assert!(status.success(), "{status:?}");
        for line in &log.seen {
            let line: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("node {name} wrote {line:?}: {err}"));
            if line["message"] == "broadcast" {
                let seq = line["seq"].as_u64().unwrap();
                broadcasts
                    .entry(seq)
                    .or_default()
                    .push((name.to_owned(), line));
            }
        }
    }
    for seq in 1..=4 {
        let lines = &broadcasts[&seq];
        assert_eq!(lines.len(), 2, "#{seq} on both nodes: {lines:?}");
        let (first, second) = (&lines[0].1, &lines[1].1);
        // One event: the same stamp and text on both nodes, stamped by one of them.
        for field in ["lamport", "text", "node"] {
            assert_eq!(first[field], second[field], "#{seq} {field}");
        }
        for (node, line) in lines {
            let lamport = line["lamport"].as_u64().unwrap();
            if line["node"] == node.as_str() {
                assert!(line.get("node_lamport").is_none(), "{line}");
            } else {
                // The node that merged another's event did so after its stamp.
                assert!(line["node_lamport"].as_u64().unwrap() > lamport, "{line}");
            }
        }
    }
    assert_eq!(broadcasts[&3][0].1["node"], "one");
    assert_eq!(broadcasts[&4][0].1["node"], "two");
}

/// Starts a node named `name` on `nats` that must refuse to start; returns the
/// line its stderr ends with, which says why ("chittychat-server: error: ...").
async fn refused_node(nats: &NatsServer, name: &str) -> String {
    let mut node = tokio::process::Command::new(env!("CARGO_BIN_EXE_chittychat-server"));
    node.args(["--listen", "127.0.0.1:0", "--nats", &nats.url()])
        .args(["--node", name])
        .without_user_settings()
        .kill_on_drop(true);
    let out = within(DEADLINE, &format!("node {name} to give up"), node.output())
        .await
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    // The server logs to stderr; its last line says why it stopped.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(last.starts_with("chittychat-server: error: "), "{stderr}");
    last.to_owned()
}

#[tokio::test]
async fn a_second_node_under_a_running_nodes_name_is_refused_and_takes_nobody() {
    let nats = NatsServer::start().await;
    let first = node(&nats, "twin").await;
    let (_carol, mut carol_events) = join(&first.url(), "carol").await;
    let why = refused_node(&nats, "twin").await;
    assert!(
        why.contains(r#"another running node of this cluster is named "twin""#),
        "{why}"
    );
    // The first node's participant is still present and hears what follows.
    let (bob, _bob_events) = join(&first.url(), "bob").await;
    let joined = next_event(&mut carol_events).await;
    assert_eq!(joined.event.kind, EventKind::Joined, "{joined:?}");
    assert_eq!(bob.who().await.unwrap(), ["bob", "carol"]);
    first.stop().await;
}

#[tokio::test]
async fn a_node_refuses_a_stream_that_no_longer_holds_its_first_record() {
    let nats = NatsServer::start().await;
    let first = node(&nats, "first").await;
    let (_carol, _carol_events) = join(&first.url(), "carol").await;
    // An operator trims the stream: the genesis record goes.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let stream = async_nats::jetstream::new(client)
        .get_stream(chittychat::cluster::DEFAULT_STREAM)
        .await
        .unwrap();
    assert!(stream.delete_message(1).await.unwrap());
    let why = refused_node(&nats, "second").await;
    assert!(
        why.contains("no longer holds its first record (it starts at 2)"),
        "{why}"
    );
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_s_records_reach_the_stream_in_the_order_it_stamped_them() {
    // Many requests at once on one node, unary calls (each its own task on the
    // server) and one PublishStream: the stream must store them as the node stamped them, so
    // that the node's Lamport times rise with sequence numbers and one stream's
    // messages keep the order they were sent in.
    const CALLERS: usize = 6;
    const EACH: usize = 60;
    const STREAMED: usize = 400;
    let nats = NatsServer::start().await;
    let n1 = node(&nats, "n1").await;
    let n2 = node(&nats, "n2").await;
    let (_reader, mut reader_events) = join(&n2.url(), "reader").await;
    // Their feeds are kept open: a dropped feed leaves the room.
    let mut callers = Vec::new();
    for i in 0..CALLERS {
        callers.push(join(&n1.url(), &format!("c{i}")).await);
    }
    let (streamer, _streamer_events) = join(&n1.url(), "streamer").await;
    let (mut publisher, mut outcomes) = within(
        DEADLINE,
        "streamer.publish_stream",
        streamer.publish_stream(),
    )
    .await
    .unwrap();
    let streaming = tokio::spawn(async move {
        for n in 0..STREAMED {
            publisher.send(&format!("streamed {n}")).await.unwrap();
        }
    });
    let calling = callers
        .iter()
        .enumerate()
        .map(|(i, (session, _))| async move {
            for n in 0..EACH {
                session.publish(&format!("c{i} says {n}")).await.unwrap();
            }
        });
    within(DEADLINE, "every publish", async {
        futures::future::join_all(calling).await;
        streaming.await.unwrap();
        while let Some((_, outcome)) = outcomes.next().await.unwrap() {
            outcome.unwrap();
        }
    })
    .await;
    let mut seen = Seen::new();
    read_until(&mut reader_events, &mut seen, |seen| {
        chats(seen) == CALLERS * EACH + STREAMED
    })
    .await;
    // Everything after the reader's join was stamped by n1.
    let stamped: Vec<(u64, u64)> = seen
        .iter()
        .map(|(seq, (lamport, ..))| (*seq, *lamport))
        .collect();
    let out_of_order: Vec<_> = stamped
        .windows(2)
        .filter(|pair| pair[0].1 >= pair[1].1)
        .collect();
    assert!(
        out_of_order.is_empty(),
        "n1's Lamport times fall along the log at (seq, lamport) {out_of_order:?}"
    );
    let streamed: Vec<String> = seen
        .values()
        .filter(|(_, kind, who, _)| *kind == EventKind::Chat && who == "streamer")
        .map(|(_, _, _, text)| text.clone())
        .collect();
    let sent: Vec<String> = (0..STREAMED).map(|n| format!("streamed {n}")).collect();
    assert_eq!(streamed, sent, "one stream's messages in the order sent");
    n1.stop().await;
    n2.stop().await;
}
