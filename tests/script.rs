//! Scripted participants: the demo conversation in `docker/conversation/` played by
//! three real `chittychat-client --script` processes against a real server, and a
//! broken script refused before joining.

use chittychat::server::{self, ServerConfig};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// How long the whole conversation may take.
const DEADLINE: Duration = Duration::from_secs(30);

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

#[tokio::test]
async fn the_demo_conversation_reaches_everyone_in_any_join_order() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run(listener, ServerConfig::default(), async {
        let _ = stopped.await;
    }));

    // Started leaver first and opener last; they join in whatever order they get to.
    let dave = scripted(&url, "dave", &conversation("dave"));
    let carol = scripted(&url, "carol", &conversation("carol"));
    let bob = scripted(&url, "bob", &conversation("bob"));

    let dave = tokio::time::timeout(DEADLINE, dave.wait_with_output())
        .await
        .expect("dave leaves in time")
        .expect("dave's output");
    assert_eq!(dave.status.code(), Some(0), "{dave:?}");

    // bob and carol stay after the script; stopping the server ends their sessions.
    let mut outputs = Vec::new();
    for (name, mut child) in [("bob", bob), ("carol", carol)] {
        let stdout = child.stdout.take().expect("stdout");
        outputs.push((name, child, stdout));
    }
    let last_line = "carol: Fine by me";
    for (name, _, stdout) in &mut outputs {
        let seen = read_until(stdout, last_line).await;
        for line in [
            "bob: Hello carol and dave, bob here",
            "carol: Hi bob, hi dave",
            "dave: Hi both, I can only stay a moment",
            "bob: Too bad, dave. What time is it in Lamport land?",
            "dave: Later than you think. Bye!",
            "Participant dave left Chitty-Chat at Lamport time",
            "bob: Bye dave. carol, it is just us now",
        ] {
            assert!(seen.contains(line), "{name} did not see {line:?}:\n{seen}");
        }
        assert!(
            seen.contains(&format!("Participant {name} joined Chitty-Chat")),
            "{name} did not see its own join:\n{seen}"
        );
    }
    let dave_out = String::from_utf8_lossy(&dave.stdout);
    assert!(
        dave_out.contains("dave: Later than you think. Bye!"),
        "{dave_out}"
    );

    let _ = stop.send(());
    for (name, child, _) in outputs {
        let ended = tokio::time::timeout(DEADLINE, child.wait_with_output())
            .await
            .expect("the session ends with the server")
            .expect("output");
        assert_eq!(ended.status.code(), Some(1), "{name}: {ended:?}");
    }
    let _ = tokio::time::timeout(DEADLINE, server).await;
}

/// Reads stdout until a line containing `needle` arrives; everything read so far.
async fn read_until(stdout: &mut tokio::process::ChildStdout, needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let reading = async {
        let mut buffer = [0u8; 4096];
        loop {
            let n = stdout.read(&mut buffer).await.expect("read stdout");
            seen.extend_from_slice(&buffer[..n]);
            if n == 0 || String::from_utf8_lossy(&seen).contains(needle) {
                break;
            }
        }
    };
    let finished = tokio::time::timeout(DEADLINE, reading).await;
    let seen = String::from_utf8_lossy(&seen).into_owned();
    assert!(finished.is_ok(), "no {needle:?} in time:\n{seen}");
    seen
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
