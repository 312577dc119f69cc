//! Scripted participants: the demo conversation in `docker/conversation/` played by
//! three real `chittychat-client --script` processes against a real server, joining
//! in several orders (the rendezvous must not depend on it), and a broken script
//! refused before joining.

mod fixture;

use chittychat::server::ServerConfig;
use chittychat::transport::JoinSecret;
use fixture::{ClientProcess, TestServer};
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

    // bob and carol stay after the script; stopping the server ends their sessions.
    server.stop().await;
    for (name, mut participant) in stayers {
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
