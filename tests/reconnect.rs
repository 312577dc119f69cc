//! Reconnect: real client processes survive a server restart and a network blip,
//! rejoin under the same name, and nobody sees a message twice.

mod fixture;

use fixture::{ClientProcess, Relay, ServerProcess};
use std::collections::HashMap;

/// How many times each line appears among `lines`.
fn counts(lines: &[String]) -> HashMap<&str, usize> {
    let mut counts = HashMap::new();
    for line in lines {
        *counts.entry(line.as_str()).or_default() += 1;
    }
    counts
}

/// Whether `line` is `name`'s chat message `text`.
fn is_chat(line: &str, name: &str, text: &str) -> bool {
    line.starts_with("[Lamport ") && line.ends_with(&format!("] {name}: {text}"))
}

/// Asserts no chat message appears twice on a client's screen.
fn assert_no_duplicates(who: &str, lines: &[String]) {
    for (line, n) in counts(lines) {
        if line.starts_with("[Lamport ") {
            assert_eq!(n, 1, "{who} saw \"{line}\" {n} times: {lines:#?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_rejoin_after_the_server_restarts() {
    let logs = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&[]).await;
    let addr = server.addr.to_string();
    let url = server.url();
    let mut alice = ClientProcess::start(&url, "alice", &[], &[], logs.path());
    let mut bob = ClientProcess::start(&url, "bob", &[], &[], logs.path());
    alice.await_joined("alice").await;
    bob.await_joined("bob").await;
    alice.say("before the restart");
    bob.stdout
        .await_line("alice's first message", |l| {
            is_chat(l, "alice", "before the restart")
        })
        .await;

    // A graceful restart (SIGTERM), then a crash (SIGKILL), on the same port.
    let mut server = Some(server);
    for (round, graceful) in [(1, true), (2, false)] {
        let old = server.take().unwrap();
        if graceful {
            assert!(old.terminate().await.success());
        } else {
            old.kill().await;
        }
        for client in [&mut alice, &mut bob] {
            client
                .stderr
                .await_line("the client to say it reconnects", |l| {
                    l.contains("reconnecting")
                })
                .await;
        }
        server = Some(ServerProcess::start_on(&addr, &[]).await);
        for (client, name) in [(&mut alice, "alice"), (&mut bob, "bob")] {
            let said = client
                .stderr
                .await_line("the client to say it rejoined", |l| l.contains("rejoined"))
                .await;
            assert!(said.contains(&format!("as {name}")), "{said}");
            client.await_joined(name).await;
        }
        // Both are back: each sees the other's message, once.
        let text = format!("after restart {round}");
        alice.say(&text);
        bob.stdout
            .await_line("alice's message after the restart", |l| {
                is_chat(l, "alice", &text)
            })
            .await;
        bob.say(&format!("bob {text}"));
        alice
            .stdout
            .await_line("bob's message after the restart", |l| {
                is_chat(l, "bob", &format!("bob {text}"))
            })
            .await;
    }

    let (alice_status, alice_out, _) = alice.finish().await;
    let (bob_status, bob_out, _) = bob.finish().await;
    assert!(alice_status.success(), "{alice_status}");
    assert!(bob_status.success(), "{bob_status}");
    assert_no_duplicates("alice", &alice_out.seen);
    assert_no_duplicates("bob", &bob_out.seen);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_blip_the_others_see_a_leave_then_a_join_and_no_duplicates() {
    let logs = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&[]).await;
    let relay = Relay::start(server.addr).await;
    let mut bob = ClientProcess::start(&server.url(), "bob", &[], &[], logs.path());
    bob.await_joined("bob").await;
    let mut alice = ClientProcess::start(&relay.url(), "alice", &[], &[], logs.path());
    alice.await_joined("alice").await;
    alice.say("before the blip");
    bob.stdout
        .await_line("alice's first message", |l| {
            is_chat(l, "alice", "before the blip")
        })
        .await;

    relay.cut();
    alice
        .stderr
        .await_line("alice to say she reconnects", |l| {
            l.contains("reconnecting")
        })
        .await;
    bob.stdout
        .await_line("alice's leave", |l| {
            l.starts_with("Participant alice left Chitty-Chat at Lamport time ")
        })
        .await;
    bob.stdout
        .await_line("alice's new join", |l| {
            l.starts_with("Participant alice joined Chitty-Chat at Lamport time ")
        })
        .await;
    alice
        .stderr
        .await_line("alice to say she rejoined", |l| l.contains("rejoined"))
        .await;
    alice.say("after the blip");
    bob.stdout
        .await_line("alice's message after the blip", |l| {
            is_chat(l, "alice", "after the blip")
        })
        .await;

    let (alice_status, alice_out, _) = alice.finish().await;
    let (bob_status, bob_out, _) = bob.finish().await;
    assert!(alice_status.success() && bob_status.success());
    assert_no_duplicates("alice", &alice_out.seen);
    assert_no_duplicates("bob", &bob_out.seen);
    // bob saw, in this order: the message, the leave, the join, the next message.
    let expected: [&dyn Fn(&str) -> bool; 4] = [
        &|l| is_chat(l, "alice", "before the blip"),
        &|l| l.starts_with("Participant alice left "),
        &|l| l.starts_with("Participant alice joined "),
        &|l| is_chat(l, "alice", "after the blip"),
    ];
    let mut lines = bob_out.seen.iter();
    for wanted in expected {
        assert!(
            lines.any(|l| wanted(l)),
            "out of order: {:#?}",
            bob_out.seen
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_reconnect_a_lost_server_ends_the_client_with_status_1() {
    let logs = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&[]).await;
    let mut alice = ClientProcess::start(
        &server.url(),
        "alice",
        &["--no-reconnect"],
        &[],
        logs.path(),
    );
    alice.await_joined("alice").await;
    assert!(server.terminate().await.success());
    let status = alice.exit_status().await;
    assert_eq!(status.code(), Some(1));
    let said = alice.stderr.read_to_end().await.join("\n");
    assert!(
        said.contains("chittychat-client: error: the Chitty-Chat server shut down"),
        "{said}"
    );
}

/// A Join that reached the server but whose reply was lost made a participant
/// that holds the name. The client, failing over to the next server, must not take
/// its own unanswered Join for somebody else: it asks again until the server
/// announces the first participant as left, then joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_whose_reply_was_lost_does_not_keep_its_own_name_from_the_client() {
    let logs = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&[]).await;
    let relay = Relay::start(server.addr).await;
    // The Join reaches the server through the relay; nothing comes back.
    relay.stall_replies();
    let servers = format!("{},{}", relay.url(), server.url());
    let mut alice = ClientProcess::start(
        &servers,
        "alice",
        &["--keepalive-interval", "1", "--keepalive-timeout", "1"],
        &[],
        logs.path(),
    );
    await_broadcast_of(&mut server, "alice", "joined").await;
    // Nor does the client's giving up reach the server: to it, the first
    // participant is still there, as to a cluster whose node took the Join and
    // then fell silent.
    relay.stall();
    // Given up on the relay, the client asks the server directly and finds the
    // name taken: by its own first Join.
    loop {
        let line = server.await_log("refused").await;
        if line["participant"] == "alice" && line["code"] == "AlreadyExists" {
            break;
        }
    }
    // The first connection goes; the server announces its participant as left.
    relay.cut();
    alice.await_joined("alice").await;
    alice.say("here at last");
    alice
        .stdout
        .await_line("alice's own line", |l| is_chat(l, "alice", "here at last"))
        .await;
    let (status, _, _) = alice.finish().await;
    assert!(status.success(), "{status}");
}

/// A first Join that reached the server but whose answer was lost to a broken
/// connection is tried again: the server was there a moment ago. The participant
/// the lost Join made is announced as left, and the client joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_join_whose_connection_broke_before_the_answer_is_tried_again() {
    let logs = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&[]).await;
    let relay = Relay::start(server.addr).await;
    // The Join reaches the server through the relay; nothing comes back.
    relay.stall_replies();
    let mut alice = ClientProcess::start(&relay.url(), "alice", &[], &[], logs.path());
    await_broadcast_of(&mut server, "alice", "joined").await;
    // The connection breaks before the answer.
    relay.cut();
    alice
        .stderr
        .await_line("alice to say she joins again", |l| {
            l.contains("lost the connection to the server while joining; joining again in")
        })
        .await;
    alice.await_joined("alice").await;
    alice.say("here after all");
    alice
        .stdout
        .await_line("alice's own line", |l| {
            is_chat(l, "alice", "here after all")
        })
        .await;
    let (status, out, _) = alice.finish().await;
    assert!(status.success(), "{status}");
    assert_no_duplicates("alice", &out.seen);
}

/// Waits until the server's log says it broadcast `participant`'s `kind` notice.
async fn await_broadcast_of(server: &mut ServerProcess, participant: &str, kind: &str) {
    loop {
        let line = server.await_log("broadcast").await;
        if line["participant"] == participant && line["kind"] == kind {
            return;
        }
    }
}
