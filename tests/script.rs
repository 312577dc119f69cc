//! Scripted participants: the demo conversation in `docker/conversation/` played by
//! three real `chittychat-client --script` processes against a real server, joining
//! in several orders (the rendezvous must not depend on it), and a broken script
//! refused before joining.

use chittychat::server::{self, ServerConfig};
use chittychat::transport::JoinSecret;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStdout, Command};

/// How long the whole conversation, or any one wait, may take.
const DEADLINE: Duration = Duration::from_secs(30);

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
fn scripted(url: &str, name: &str, script: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_chittychat-client"))
        .args(["--name", name, "--server", url, "--script"])
        .arg(script)
        .env_remove("CHITTYCHAT_LOG_FILE")
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn chittychat-client")
}

fn conversation(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docker/conversation")
        .join(format!("{name}.script"))
}

/// A scripted participant and everything it has printed so far.
struct Participant {
    name: &'static str,
    child: Child,
    stdout: ChildStdout,
    seen: String,
}

impl Participant {
    fn start(url: &str, name: &'static str) -> Participant {
        let mut child = scripted(url, name, &conversation(name));
        let stdout = child.stdout.take().expect("stdout");
        Participant {
            name,
            child,
            stdout,
            seen: String::new(),
        }
    }

    /// Reads stdout until it holds `needle`, failing the test after [`DEADLINE`].
    async fn wait_for(&mut self, needle: &str) {
        let reading = async {
            let mut buffer = [0u8; 4096];
            while !self.seen.contains(needle) {
                let n = self.stdout.read(&mut buffer).await.expect("read stdout");
                if n == 0 {
                    break;
                }
                self.seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        };
        let finished = tokio::time::timeout(DEADLINE, reading).await;
        assert!(
            finished.is_ok() && self.seen.contains(needle),
            "{} printed no {needle:?} in time:\n{}",
            self.name,
            self.seen
        );
    }

    /// Waits for the process to exit; its status code.
    async fn exit_code(mut self) -> Option<i32> {
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("the participant exits in time")
            .expect("wait for the participant")
            .code()
    }
}

/// Plays the demo conversation with the participants joining one after another in
/// `order`, each started once the one before has seen its own join notice.
async fn play_in_order(order: [&'static str; 3]) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run(listener, ServerConfig::default(), async {
        let _ = stopped.await;
    }));

    let mut stayers = Vec::new();
    let mut leaver = None;
    for name in order {
        let mut participant = Participant::start(&url, name);
        participant
            .wait_for(&format!("Participant {name} joined Chitty-Chat"))
            .await;
        if name == "dave" {
            leaver = Some(participant);
        } else {
            stayers.push(participant);
        }
    }
    let mut dave = leaver.expect("dave takes part");
    dave.wait_for("dave: Later than you think. Bye!").await;
    for line in &CONVERSATION[..5] {
        assert!(dave.seen.contains(line), "dave missed {line:?} ({order:?})");
    }
    assert_eq!(dave.exit_code().await, Some(0), "dave leaves as scripted");

    for participant in &mut stayers {
        participant.wait_for(CONVERSATION[7]).await;
        for line in CONVERSATION {
            assert!(
                participant.seen.contains(line),
                "{} did not see {line:?} ({order:?}):\n{}",
                participant.name,
                participant.seen
            );
        }
    }

    // bob and carol stay after the script; stopping the server ends their sessions.
    let _ = stop.send(());
    for participant in stayers {
        let name = participant.name;
        assert_eq!(participant.exit_code().await, Some(1), "{name}");
    }
    let _ = tokio::time::timeout(DEADLINE, server).await;
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
    let dir = std::env::temp_dir().join(format!("chittychat-script-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let script = dir.join("broken.script");
    std::fs::write(&script, "say hi\nshout hi\n").expect("write script");
    // No server listens there: the script is checked before any connection.
    let output = scripted("http://127.0.0.1:9", "erin", &script)
        .wait_with_output()
        .await
        .expect("output");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("line 2: unknown step \"shout hi\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_scripted_participant_joins_a_server_that_needs_a_secret() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let config = ServerConfig {
        join_secret: Some(JoinSecret::new("open sesame").expect("a valid secret")),
        ..ServerConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run(listener, config, async {
        let _ = stopped.await;
    }));
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("short.script");
    std::fs::write(&script, "say hello from a script\nleave\n").expect("write script");
    let output = Command::new(env!("CARGO_BIN_EXE_chittychat-client"))
        .args(["--name", "erin", "--server", &url, "--script"])
        .arg(&script)
        .env("CHITTYCHAT_JOIN_SECRET", "open sesame")
        .env_remove("CHITTYCHAT_LOG_FILE")
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DEADLINE, output)
        .await
        .expect("the script ends")
        .expect("output");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let seen = String::from_utf8_lossy(&output.stdout);
    assert!(seen.contains("erin: hello from a script"), "{seen}");
    let _ = stop.send(());
    let _ = server.await;
}
