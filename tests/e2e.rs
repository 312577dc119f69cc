//! End-to-end: the real `chittychat-server` and `chittychat-client` binaries, each
//! its own process, clients driven through piped stdin as a person's script would
//! drive them, their stdout asserted.

mod fixture;

use fixture::{ClientProcess, ServerProcess};

/// Starts the real server on a free port, its log in a temporary data directory
/// (durable, as users run it); the directory lives as long as the test holds it.
async fn start_server() -> (ServerProcess, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    (ServerProcess::start(&["--data-dir", dir]).await, data)
}

/// Waits until `client` printed the chat message `text` from `sender`; returns the
/// message's Lamport time.
async fn sees_chat(client: &mut ClientProcess, sender: &str, text: &str) -> u64 {
    let suffix = format!("] {sender}: {text}");
    let line = client
        .stdout
        .find(&suffix, |l| {
            l.starts_with("[Lamport ") && l.ends_with(&suffix)
        })
        .await;
    line["[Lamport ".len()..line.len() - suffix.len()]
        .parse()
        .unwrap()
}

/// Waits until `client` printed a join (or leave) notice for `name`; returns its
/// Lamport time.
async fn sees_notice(client: &mut ClientProcess, name: &str, verb: &str) -> u64 {
    let prefix = format!("Participant {name} {verb} Chitty-Chat at Lamport time ");
    let line = client
        .stdout
        .find(&prefix, |l| l.starts_with(&prefix))
        .await;
    line[prefix.len()..].parse().unwrap()
}

/// How many lines `client` printed so far that start with `prefix`.
fn count(client: &mut ClientProcess, prefix: &str) -> usize {
    client
        .stdout
        .drain()
        .iter()
        .filter(|l| l.starts_with(prefix))
        .count()
}

#[tokio::test]
async fn three_clients_chat_one_joins_late_and_everyone_leaves_differently() {
    let (mut server, _data) = start_server().await;
    let url = server.url();

    // Three participants join one after another; everyone, the newcomer included,
    // sees each join notice, with the same Lamport time.
    let mut alice = ClientProcess::start_plain(&url, "alice", &[]);
    sees_notice(&mut alice, "alice", "joined").await;
    let mut bob = ClientProcess::start_plain(&url, "bob", &[]);
    let bob_joined = sees_notice(&mut bob, "bob", "joined").await;
    assert_eq!(sees_notice(&mut alice, "bob", "joined").await, bob_joined);
    let mut carol = ClientProcess::start_plain(&url, "carol", &[]);
    let carol_joined = sees_notice(&mut carol, "carol", "joined").await;
    for p in [&mut alice, &mut bob] {
        assert_eq!(sees_notice(p, "carol", "joined").await, carol_joined);
    }

    // Each publishes; everyone sees every message with the same Lamport time.
    alice.say("hello from alice");
    bob.say("bonjour, ça va? 😀");
    carol.say(&"c".repeat(128));
    for (sender, text) in [
        ("alice", "hello from alice".to_owned()),
        ("bob", "bonjour, ça va? 😀".to_owned()),
        ("carol", "c".repeat(128)),
    ] {
        let mut times = Vec::new();
        for p in [&mut alice, &mut bob, &mut carol] {
            times.push(sees_chat(p, sender, &text).await);
        }
        assert!(
            times.windows(2).all(|w| w[0] == w[1]),
            "{sender}: {times:?}"
        );
    }

    // A bad message is refused on the client with a clear error; the client goes on.
    bob.say(&"x".repeat(129));
    bob.stderr
        .find("the length error", |l| {
            l.contains("chittychat-client: error: message is 129 characters long; the limit is 128")
        })
        .await;
    bob.say_bytes(b"caf\xe9 in Latin-1");
    bob.stderr
        .find("the UTF-8 error", |l| {
            l.contains("chittychat-client: error: message is not valid UTF-8")
        })
        .await;
    // A line far longer than any message is refused without being kept whole.
    bob.say(&"z".repeat(1 << 20));
    bob.stderr
        .find("the overlong-line error", |l| {
            l == "chittychat-client: error: message is 1048577 bytes long, more than 128 characters can be (not sent)"
        })
        .await;
    bob.say("still here");
    for p in [&mut alice, &mut bob, &mut carol] {
        sees_chat(p, "bob", "still here").await;
    }

    // A fourth joins late: it sees what was said before as history, marked so,
    // then its own join notice.
    let mut dave = ClientProcess::start_plain(&url, "dave", &[]);
    let dave_joined = sees_notice(&mut dave, "dave", "joined").await;
    for p in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(sees_notice(p, "dave", "joined").await, dave_joined);
    }
    dave.say("late but here");
    for p in [&mut alice, &mut bob, &mut carol, &mut dave] {
        sees_chat(p, "dave", "late but here").await;
    }
    let lines = dave.stdout.drain();
    let earlier: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("hello from alice"))
        .collect();
    assert!(!earlier.is_empty(), "{lines:#?}");
    assert!(
        earlier.iter().all(|l| l.starts_with("[history] ")),
        "{lines:#?}"
    );
    let own_join = lines
        .iter()
        .position(|l| l.starts_with("Participant dave joined"))
        .unwrap();
    let last_history = lines
        .iter()
        .rposition(|l| l.starts_with("[history] "))
        .unwrap();
    assert!(last_history < own_join, "{lines:#?}");

    // The same name cannot join twice: one clear line, exit status 4.
    let mut twin = ClientProcess::start_plain(&url, "alice", &[]);
    assert_eq!(twin.exit_status().await.code(), Some(4));
    let taken = twin
        .stderr
        .find("the name-taken error", |l| {
            l.starts_with("chittychat-client: error:") && l.contains("\"alice\" is taken")
        })
        .await;
    assert!(
        include_str!("../README.md").contains(&taken),
        "README should quote the error as the client prints it: {taken}"
    );
    // Names are unique regardless of case.
    let mut twin = ClientProcess::start_plain(&url, "ALICE", &[]);
    assert_eq!(twin.exit_status().await.code(), Some(4));
    twin.stderr
        .find("the name-taken error", |l| {
            l.contains("\"ALICE\" is taken") && l.contains("regardless of case")
        })
        .await;

    // bob leaves by closing its input (EOF); three of his lines were refused, so
    // his exit status says that not every line was sent.
    let (status, _, said) = bob.finish().await;
    assert_eq!(status.code(), Some(5));
    // A piped client's stderr holds what a script must see, not the INFO log.
    assert!(
        said.seen
            .iter()
            .all(|line| line.starts_with("chittychat-client: ")),
        "{:#?}",
        said.seen
    );
    let bob_left = sees_notice(&mut alice, "bob", "left").await;
    for p in [&mut carol, &mut dave] {
        assert_eq!(sees_notice(p, "bob", "left").await, bob_left);
    }

    // carol is killed outright; the server sees her stream end.
    carol.signal("KILL");
    let carol_left = sees_notice(&mut alice, "carol", "left").await;
    assert_eq!(sees_notice(&mut dave, "carol", "left").await, carol_left);

    // alice types /quit.
    alice.say("/quit");
    assert_eq!(alice.exit_status().await.code(), Some(0));
    sees_notice(&mut dave, "alice", "left").await;
    alice.stdout.read_to_end().await;
    assert_eq!(
        count(&mut alice, "Participant alice left"),
        0,
        "the leaver is not sent its own leave notice"
    );

    // dave presses Ctrl-C.
    dave.signal("INT");
    assert_eq!(dave.exit_status().await.code(), Some(0));
    dave.stdout.read_to_end().await;

    // Every leave was announced exactly once, after everything before it.
    for (who, p) in [("alice", &mut alice), ("dave", &mut dave)] {
        for name in ["bob", "carol"] {
            let prefix = format!("Participant {name} left");
            assert_eq!(
                count(p, &prefix),
                1,
                "{who} saw {name} leave more than once"
            );
        }
    }
    assert!(bob_left < carol_left);

    // The server shuts down gracefully on SIGTERM.
    server.signal("TERM");
    assert_eq!(server.exit_status().await.code(), Some(0));
}

#[tokio::test]
async fn a_server_shutdown_ends_clients_with_a_clear_message() {
    let (mut server, _data) = start_server().await;
    // Without reconnecting (tests/reconnect.rs covers that), the client ends.
    let mut erin = ClientProcess::start_plain(&server.url(), "erin", &["--no-reconnect"]);
    sees_notice(&mut erin, "erin", "joined").await;
    server.signal("INT");
    assert_eq!(server.exit_status().await.code(), Some(0));
    assert_eq!(erin.exit_status().await.code(), Some(1));
    erin.stderr
        .find("the shutdown message", |l| {
            l == "chittychat-client: error: the Chitty-Chat server shut down"
        })
        .await;
}

#[tokio::test]
async fn an_unreachable_server_is_one_line_and_exit_status_3() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = ClientProcess::start_plain(&format!("http://127.0.0.1:{port}"), "frank", &[]);
    let (status, _, stderr) = client.finish().await;
    assert_eq!(status.code(), Some(3));
    let errors: Vec<&String> = stderr
        .seen
        .iter()
        .filter(|l| !l.contains(" INFO "))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with(&format!(
            "chittychat-client: error: cannot reach the Chitty-Chat server at http://127.0.0.1:{port}: Connection refused"
        )),
        "{errors:?}"
    );
    assert!(!errors[0].contains("panicked"));
}

#[tokio::test]
async fn a_bad_name_is_refused_before_joining() {
    let (server, _data) = start_server().await;
    let mut client = ClientProcess::start_plain(&server.url(), "no spaces allowed", &[]);
    assert_eq!(client.exit_status().await.code(), Some(4));
    client
        .stderr
        .find("the name rule", |l| {
            l.starts_with("chittychat-client: error: invalid name")
                && l.contains("1 to 32 characters")
        })
        .await;
}
