//! Scripted participants: the demo conversation in `docker/conversation/` played by
//! three real `chittychat-client --script` processes against a real server, joining
//! in several orders (the rendezvous must not depend on it), and a broken script
//! refused before joining, and a scripted participant whose node is killed failing
//! over to another node of a cluster and playing on.

mod fixture;

use chittychat::client::{JoinOptions, Session, connect};
use chittychat::event::EventKind;
use chittychat::server::ServerConfig;
use chittychat::transport::JoinSecret;
use fixture::nats::NatsServer;
use fixture::{
    ClientProcess, DEADLINE, ServerProcess, TestServer, await_notice, join, next_event, within,
};
use std::path::{Path, PathBuf};

/// The lines of the conversation that bob and carol, who stay, both see.
const CONVERSATION: [&str; 8] = [
    "bob: Hello carol and dave, bob here",
    "carol: Hi bob, hi dave",
    "dave: Hi both, I can only stay a moment",
    "bob: Too bad, dave. What time is it in Lamport land?",
    "dave: Later than you think. Bye!",
    "Participant dave left Chitty-Chat at Lamport time",
    "bob: Bye dave. carol, it is just us now",
    "carol: Fine by me",
];

fn conversation(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docker/conversation")
        .join(format!("{name}.script"))
}

/// `name` playing `script` against `url`, as `chittychat-client --script` runs.
fn scripted(url: &str, name: &str, script: &Path) -> ClientProcess {
    let script = script.to_str().expect("a UTF-8 path");
    ClientProcess::start_plain(url, name, &["--script", script])
}

/// Waits until `participant` printed a line holding `needle`.
async fn sees(participant: &mut ClientProcess, needle: &str) {
    participant
        .stdout
        .find(needle, |l| l.contains(needle))
        .await;
}

/// Whether `participant` printed, so far, a line holding `needle`.
fn saw(participant: &mut ClientProcess, needle: &str) -> bool {
    participant
        .stdout
        .drain()
        .iter()
        .any(|l| l.contains(needle))
}

/// Plays the demo conversation with the participants joining one after another in
/// `order`, each started once the one before has seen its own join notice.
async fn play_in_order(order: [&'static str; 3]) {
    let server = TestServer::start(ServerConfig::default()).await;
    let url = server.url();

    let mut stayers = Vec::new();
    let mut leaver = None;
    for name in order {
        let mut participant = scripted(&url, name, &conversation(name));
        sees(
            &mut participant,
            &format!("Participant {name} joined Chitty-Chat"),
        )
        .await;
        if name == "dave" {
            leaver = Some(participant);
        } else {
            stayers.push((name, participant));
        }
    }
    let mut dave = leaver.expect("dave takes part");
    sees(&mut dave, "dave: Later than you think. Bye!").await;
    for line in &CONVERSATION[..5] {
        assert!(saw(&mut dave, line), "dave missed {line:?} ({order:?})");
    }
    assert_eq!(
        dave.exit_status().await.code(),
        Some(0),
        "dave leaves as scripted"
    );

    for (name, participant) in &mut stayers {
        sees(participant, CONVERSATION[7]).await;
        for line in CONVERSATION {
            assert!(
                saw(participant, line),
                "{name} did not see {line:?} ({order:?}):\n{:#?}",
                participant.stdout.seen
            );
        }
    }

    // bob and carol stay after the script; when the server stops they try to
    // rejoin, as the client does, and asked to leave meanwhile they cannot say
    // goodbye to it.
    server.stop().await;
    for (name, mut participant) in stayers {
        participant
            .stderr
            .find("the rejoin", |l| l.contains("reconnecting"))
            .await;
        participant.signal("TERM");
        assert_eq!(participant.exit_status().await.code(), Some(1), "{name}");
    }
}

#[tokio::test]
async fn the_conversation_holds_when_the_leaver_joins_first() {
    play_in_order(["dave", "carol", "bob"]).await;
}

#[tokio::test]
async fn the_conversation_holds_when_the_opener_joins_first() {
    play_in_order(["bob", "carol", "dave"]).await;
}

#[tokio::test]
async fn the_conversation_holds_when_the_last_speaker_joins_last() {
    play_in_order(["dave", "bob", "carol"]).await;
}

#[tokio::test]
async fn a_broken_script_is_refused_before_joining() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("broken.script");
    std::fs::write(&script, "say hi\nshout hi\n").expect("write script");
    // No server listens there: the script is checked before any connection.
    let (status, _, stderr) = scripted("http://127.0.0.1:9", "erin", &script)
        .finish()
        .await;
    assert_eq!(status.code(), Some(2), "{:#?}", stderr.seen);
    assert_eq!(stderr.seen.len(), 1, "{:#?}", stderr.seen);
    assert!(
        stderr.seen[0].contains("line 2: unknown step \"shout hi\""),
        "{:#?}",
        stderr.seen
    );
}

#[tokio::test]
async fn a_scripted_participant_joins_a_server_that_needs_a_secret() {
    let server = TestServer::start(ServerConfig {
        join_secret: Some(JoinSecret::new("open sesame").expect("a valid secret")),
        ..ServerConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "open sesame\n").expect("write the secret");
    let script = dir.path().join("short.script");
    std::fs::write(&script, "say hello from a script\nleave\n").expect("write script");
    let (script, secret) = (script.to_str().unwrap(), secret.to_str().unwrap());
    let erin = ClientProcess::start_plain(
        &server.url(),
        "erin",
        &["--script", script, "--join-secret-file", secret],
    );
    let (status, stdout, stderr) = erin.finish().await;
    assert_eq!(status.code(), Some(0), "{:#?}", stderr.seen);
    assert!(
        stdout
            .seen
            .iter()
            .any(|l| l.contains("erin: hello from a script")),
        "{:#?}",
        stdout.seen
    );
    server.stop().await;
}

/// Reads `events` until `from` says `text`.
async fn await_chat(events: &mut chittychat::client::Events, from: &str, text: &str) {
    within(DEADLINE, &format!("{from} to say \"{text}\""), async {
        loop {
            let event = next_event(events).await.event;
            if event.kind == EventKind::Chat && &*event.participant == from && event.text == text {
                return;
            }
        }
    })
    .await;
}

/// erin's part in the failover test: she opens on the node that is killed, plays
/// on from the other, and must not take bob's replaced session for his leave.
const FAILOVER_SCRIPT: &str = "\
meet bob
say before the kill
await chat bob after the kill
say after the move
await left bob
say you left, bob
";

#[tokio::test]
async fn a_scripted_participant_whose_node_is_killed_fails_over_and_plays_on() {
    let nats = NatsServer::start().await;
    let nats_url = nats.url();
    let doomed = ServerProcess::start(&["--nats", nats_url.as_str(), "--node", "doomed"]).await;
    let survivor = ServerProcess::start(&["--nats", nats_url.as_str(), "--node", "survivor"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("erin.script");
    std::fs::write(&script, FAILOVER_SCRIPT).expect("write script");
    let servers = format!("{},{}", doomed.url(), survivor.url());
    let mut erin = scripted(&servers, "erin", &script);
    sees(&mut erin, "Participant erin joined").await;

    // carol watches from the survivor; bob joins after erin, so she meets him.
    let (_carol, mut carol_events) = join(&survivor.url(), "carol").await;
    let (bob, mut bob_events) = join(&survivor.url(), "bob").await;
    await_chat(&mut bob_events, "erin", "before the kill").await;

    doomed.kill().await;
    bob.publish("after the kill").await.expect("bob publishes");
    let left = await_notice(&mut bob_events, EventKind::Left, "erin", DEADLINE).await;
    let back = await_notice(&mut bob_events, EventKind::Joined, "erin", DEADLINE).await;
    assert_eq!(
        back.event.seq,
        left.event.seq + 1,
        "a replacement, not a leave"
    );
    await_chat(&mut bob_events, "erin", "after the move").await;
    erin.stderr
        .find("erin's rejoin", |l| {
            l.contains(&format!("reconnected to {}", survivor.url()))
        })
        .await;

    // bob's session is replaced, as his client does when it fails over: erin sees
    // "bob left" and at once "bob joined", which is not the leave she awaits.
    let channel = within(DEADLINE, "connect", connect(&survivor.url()))
        .await
        .expect("connect");
    let options = JoinOptions {
        resume: bob.resume_point(),
        replaces: Some(bob.previous()),
        clock: Some(std::sync::Arc::clone(bob.clock())),
        ..JoinOptions::default()
    };
    let (bob, _bob_events) = within(
        DEADLINE,
        "bob's replacing join",
        Session::join_with(channel, "bob", options),
    )
    .await
    .expect("bob's session is replaced");
    bob.publish("still here")
        .await
        .expect("bob publishes again");
    // Had erin taken the replaced session's leave for bob's, she would have said
    // goodbye before she showed this line.
    sees(&mut erin, "bob: still here").await;
    bob.leave().await.expect("bob leaves");

    let mut order = Vec::new();
    within(DEADLINE, "erin's goodbye", async {
        loop {
            let event = next_event(&mut carol_events).await.event;
            let done = event.kind == EventKind::Chat
                && &*event.participant == "erin"
                && event.text == "you left, bob";
            order.push((
                event.seq,
                event.kind,
                event.participant.to_string(),
                event.text,
            ));
            if done {
                return;
            }
        }
    })
    .await;
    let bob_left = order
        .iter()
        .rposition(|(_, kind, who, _)| *kind == EventKind::Left && who == "bob")
        .expect("carol saw bob leave");
    let rejoined = order
        .iter()
        .rposition(|(_, kind, who, _)| *kind == EventKind::Joined && who == "bob")
        .expect("carol saw bob's session replaced");
    assert!(rejoined < bob_left, "{order:#?}");
    assert!(
        order.windows(2).all(|pair| pair[1].0 == pair[0].0 + 1),
        "carol's feed has a gap: {order:#?}"
    );

    erin.signal("TERM");
    let (status, stdout, stderr) = erin.finish().await;
    assert_eq!(status.code(), Some(0), "{:#?}", stderr.seen);
    // The resumed feed carried on where the old one stopped: every event once.
    for line in [
        "bob: after the kill",
        "erin: before the kill",
        "erin: after the move",
    ] {
        let times = stdout.seen.iter().filter(|l| l.ends_with(line)).count();
        assert_eq!(
            times, 1,
            "\"{line}\" shown {times} times: {:#?}",
            stdout.seen
        );
    }
    drop(survivor);
}
