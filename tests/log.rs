//! The event log from the outside: history on join, gapless resume across a cut
//! connection and across restarts (clean and `kill -9`), exactly-once publishing
//! across lost replies, back-pressure on piped input, restarts that keep numbering
//! and time, and data directories that are refused clearly.

mod fixture;

use chittychat::client::{Events, JoinOptions, PublishId, Session, connect};
use chittychat::event::EventKind;
use chittychat::log::{DiskStore, Store};
use chittychat::trace::check::{self, Rule};
use chittychat::trace::parse::Run;
use fixture::{
    ClientProcess, DEADLINE, Relay, ServerProcess, WithoutUserSettings, next_event, sample, scrape,
    within,
};
use std::collections::HashMap;
use std::time::Duration;

/// The chat lines (`[Lamport …] name: text`) among `lines`, as (name, text).
fn chats(lines: &[String]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter(|line| line.starts_with("[Lamport "))
        .filter_map(|line| {
            let (_, rest) = line.split_once("] ")?;
            let (name, text) = rest.split_once(": ")?;
            Some((name.to_owned(), text.to_owned()))
        })
        .collect()
}

/// Joins `url` as `name` with the library client and no history.
async fn join_quietly(url: &str, name: &str) -> (Session, Events) {
    let channel = within(DEADLINE, "connect", connect(url)).await.unwrap();
    let options = JoinOptions {
        history: Some(0),
        ..JoinOptions::default()
    };
    within(DEADLINE, "join", Session::join_with(channel, name, options))
        .await
        .unwrap()
}

/// alice, a real client behind a relay (with `alice_args`), and bob, this test's
/// library client, both joined to `server`; then the network between alice and the
/// server goes away, and alice has noticed. Returns the relay, alice, and bob with
/// his feed (which must be kept: dropping it is leaving).
async fn alice_cut_off_while_bob_stays(
    server: &ServerProcess,
    alice_args: &[&str],
    logs: &std::path::Path,
) -> (Relay, ClientProcess, Session, Events) {
    let relay = Relay::start(server.addr).await;
    let mut alice = ClientProcess::start(&relay.url(), "alice", alice_args, &[], logs);
    alice.await_joined("alice").await;
    let (bob, mut bob_events) = join_quietly(&server.url(), "bob").await;
    next_event(&mut bob_events).await;
    relay.cut_and_stall();
    alice
        .stderr
        .await_line("alice to notice", |l| l.contains("reconnecting"))
        .await;
    (relay, alice, bob, bob_events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_sees_recent_history_marked_before_its_own_join() {
    let logs = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&["--join-history", "3"]).await;
    let (alice, mut events) = join_quietly(&server.url(), "alice").await;
    next_event(&mut events).await;
    for text in ["one", "two", "three", "four"] {
        alice.publish(text).await.unwrap();
    }
    let mut bob = ClientProcess::start(&server.url(), "bob", &[], &[], logs.path());
    bob.await_joined("bob").await;
    let lines = bob.stdout.drain().to_vec();
    let before_join: Vec<&String> = lines
        .iter()
        .take_while(|line| !line.starts_with("Participant bob joined"))
        .collect();
    assert_eq!(before_join.len(), 3, "{lines:#?}");
    for (line, text) in before_join.iter().zip(["two", "three", "four"]) {
        assert!(line.starts_with("[history] [Lamport "), "{line}");
        assert!(line.ends_with(&format!("alice: {text}")), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_is_resumed_without_gap_or_duplicate() {
    let logs = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&[]).await;
    // The network goes away: alice cannot reconnect while bob talks.
    let (relay, mut alice, bob, _bob_events) =
        alice_cut_off_while_bob_stays(&server, &["--history", "0"], logs.path()).await;
    for i in 0..5 {
        bob.publish(&format!("while away {i}")).await.unwrap();
    }
    relay.resume();
    alice
        .stderr
        .await_line("alice to rejoin", |l| l.contains("rejoined"))
        .await;
    bob.publish("after").await.unwrap();
    alice
        .stdout
        .await_line("bob's last message", |l| l.ends_with("bob: after"))
        .await;
    let seen: Vec<String> = chats(alice.stdout.drain())
        .into_iter()
        .filter(|(name, _)| name == "bob")
        .map(|(_, text)| text)
        .collect();
    let expected: Vec<String> = (0..5)
        .map(|i| format!("while away {i}"))
        .chain(["after".to_owned()])
        .collect();
    assert_eq!(seen, expected);
    let notices = alice.stderr.drain().join("\n");
    assert!(!notices.contains("missed"), "{notices}");

    // The trace checker takes the resumed run as it is: the events broadcast while
    // alice was away are receives of her resumed session, and there is no gap.
    // (bob is this test's own library client and keeps no log: his requests are
    // the only receives without a send.)
    let (status, _, _) = alice.finish().await;
    assert!(status.success());
    let mut server = server;
    let server_log = server.log.drain().join("\n");
    std::fs::write(logs.path().join("server.log"), &server_log).unwrap();
    let run = Run::read(&[logs.path().to_owned()]).unwrap();
    let report = check::check(&run);
    let only_bob_unlogged = |report: &check::Report| {
        report
            .violations
            .iter()
            .filter(|v| !(v.rule == Rule::UnmatchedReceive && v.message.contains("no log of bob")))
            .count()
    };
    assert_eq!(only_bob_unlogged(&report), 0, "{report}");
    // And it notices a gap: the same run with one replayed receive taken out.
    let alice_log = std::fs::read_to_string(logs.path().join("alice.log")).unwrap();
    let gapped: Vec<&str> = alice_log
        .lines()
        .filter(|line| !(line.contains("\"received\"") && line.contains("while away 2")))
        .collect();
    assert_eq!(gapped.len() + 1, alice_log.lines().count());
    std::fs::write(logs.path().join("alice.log"), gapped.join("\n")).unwrap();
    let report = check::check(&Run::read(&[logs.path().to_owned()]).unwrap());
    assert_eq!(only_bob_unlogged(&report), 1, "{report}");
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.rule == Rule::Delivery && v.message.contains("alice never received")),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_beyond_what_the_log_keeps_says_how_much_is_gone() {
    let logs = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&["--history-limit", "5", "--join-history", "2"]).await;
    let (relay, mut alice, bob, _bob_events) =
        alice_cut_off_while_bob_stays(&server, &[], logs.path()).await;
    // alice's leave, then twelve messages: the log keeps only the last five events.
    for i in 0..12 {
        bob.publish(&format!("m{i}")).await.unwrap();
    }
    relay.resume();
    let said = alice
        .stderr
        .await_line("the loss to be reported", |l| l.contains("missed"))
        .await;
    assert!(
        said.contains("missed ")
            && said.contains("events while away")
            && said.contains("showing the latest 2"),
        "{said}"
    );
    alice.await_joined("alice").await;
    // What is shown is marked as history, and ends with the latest messages.
    let lines = alice.stdout.drain().to_vec();
    let history: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("[history]"))
        .collect();
    assert_eq!(history.len(), 2, "{lines:#?}");
    assert!(history[1].ends_with("bob: m11"), "{lines:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_reply_was_lost_is_retried_and_published_once() {
    let logs = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(&[]).await;
    let relay = Relay::start(server.addr).await;
    let mut alice =
        ClientProcess::start(&relay.url(), "alice", &["--history", "0"], &[], logs.path());
    alice.await_joined("alice").await;
    let (_bob, mut bob_events) = join_quietly(&server.url(), "bob").await;
    next_event(&mut bob_events).await;

    // The request reaches the server; its reply never reaches alice.
    relay.stall_replies();
    alice.say("exactly once");
    loop {
        let line = server.await_log("broadcast").await;
        if line["text"] == "exactly once" {
            break;
        }
    }
    relay.cut();
    let retried = server
        .await_log("repeated publish id: answered with the original")
        .await;
    assert_eq!(retried["participant"], "alice");
    alice.say("next");
    let mut texts = Vec::new();
    loop {
        let event = next_event(&mut bob_events).await.event;
        if event.kind == EventKind::Chat {
            texts.push(event.text.clone());
            if event.text == "next" {
                break;
            }
        }
    }
    assert_eq!(texts, ["exactly once", "next"]);
    let (status, stdout, _) = alice.finish().await;
    assert!(status.success());
    let mine: Vec<(String, String)> = chats(&stdout.seen)
        .into_iter()
        .filter(|(name, _)| name == "alice")
        .collect();
    assert_eq!(
        mine,
        [
            ("alice".to_owned(), "exactly once".to_owned()),
            ("alice".to_owned(), "next".to_owned())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_piped_lines_arrive_once_in_order_at_the_default_rate() {
    const LINES: usize = 1000;
    let logs = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&[]).await;
    let (_watcher, mut events) = join_quietly(&server.url(), "watcher").await;
    next_event(&mut events).await;
    let mut piped = ClientProcess::start(&server.url(), "p", &["--history", "0"], &[], logs.path());
    for i in 1..=LINES {
        piped.say(&i.to_string());
    }
    // At 10 a second after a burst of 20: about 100 s.
    let limit = Duration::from_secs(300);
    let mut seen = Vec::with_capacity(LINES);
    while seen.len() < LINES {
        let received = within(limit, "the piped lines", events.next())
            .await
            .unwrap();
        let event = received.expect("the feed is open").event;
        if event.kind == EventKind::Chat {
            seen.push(event.text.parse::<usize>().unwrap());
        }
    }
    assert_eq!(seen, (1..=LINES).collect::<Vec<_>>());
    let (status, _, stderr) = piped.finish().await;
    assert!(status.success(), "{status:?}: {:#?}", stderr.seen);
    assert!(
        !stderr.seen.iter().any(|l| l.contains("error")),
        "{:#?}",
        stderr.seen
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_piped_line_is_reported_and_the_exit_status_says_so() {
    let logs = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&[]).await;
    let mut piped = ClientProcess::start(&server.url(), "p", &[], &[], logs.path());
    piped.say("fine");
    piped.say(&"x".repeat(129));
    piped.say("also fine");
    let (status, stdout, stderr) = piped.finish().await;
    assert_eq!(status.code(), Some(5), "{:#?}", stderr.seen);
    let sent: Vec<String> = chats(&stdout.seen).into_iter().map(|(_, t)| t).collect();
    assert_eq!(sent, ["fine", "also fine"]);
    assert!(
        stderr
            .seen
            .iter()
            .any(|l| l.contains("1 lines were not sent")),
        "{:#?}",
        stderr.seen
    );
}

/// Starts a durable server on `data`, on `listen`.
async fn durable(listen: &str, data: &std::path::Path) -> ServerProcess {
    let dir = data.to_str().unwrap();
    ServerProcess::start_on(listen, &["--data-dir", dir]).await
}

#[tokio::test]
async fn an_operator_sees_how_long_the_logs_commits_take() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let mut server = ServerProcess::start(&["--data-dir", dir, "--metrics", "127.0.0.1:0"]).await;
    let address = server.metrics_address().await;
    let (alice, _events) = join_quietly(&server.url(), "alice").await;
    // Each Publish is answered once its commit is done, so three in a row are
    // three commits at least, after the join's.
    for n in 0..3 {
        alice.publish(&format!("timed {n}")).await.unwrap();
    }
    let metrics = scrape(&address).await;
    let commits = sample(&metrics, "chittychat_log_commit_seconds_count").unwrap();
    assert!(commits >= 4.0, "{metrics}");
    let seconds = sample(&metrics, "chittychat_log_commit_seconds_sum").unwrap();
    // On disk a commit is an fdatasync: it takes time, and not minutes.
    assert!(seconds > 0.0 && seconds < commits * 60.0, "{metrics}");
    assert!(
        metrics.contains("# HELP chittychat_log_commit_seconds"),
        "{metrics}"
    );
    assert!(
        metrics.contains("chittychat_log_commit_seconds{quantile=\"0.99\"}"),
        "{metrics}"
    );
    assert!(server.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_keep_numbering_and_time_and_announce_who_was_present_once() {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let server = durable("127.0.0.1:0", data.path()).await;
    let addr = server.addr.to_string();
    let url = server.url();
    // alice (a real client) resumes across restarts; bob and carol are present at
    // the crash and never come back.
    let mut alice = ClientProcess::start(&url, "alice", &["--history", "0"], &[], logs.path());
    alice.await_joined("alice").await;
    let (bob, mut bob_events) = join_quietly(&url, "bob").await;
    let (_carol, _carol_events) = join_quietly(&url, "carol").await;
    next_event(&mut bob_events).await;
    let before = bob.publish("before the crash").await.unwrap();

    let mut server = Some(server);
    let mut last = before;
    for (round, graceful) in [(1, true), (2, false)] {
        let old = server.take().unwrap();
        if graceful {
            assert!(old.terminate().await.success());
        } else {
            old.kill().await;
        }
        alice
            .stderr
            .await_line("alice to notice", |l| l.contains("reconnecting"))
            .await;
        let mut restarted = durable(&addr, data.path()).await;
        // Someone talks before alice is back: she must get it by resuming.
        let (dave, mut dave_events) = join_quietly(&url, &format!("dave{round}")).await;
        let joined = next_event(&mut dave_events).await.event;
        assert!(
            joined.seq > last.seq,
            "numbering went back: {joined:?} after {last:?}"
        );
        assert!(
            joined.lamport > last.server_lamport,
            "time went back: {joined:?}"
        );
        let said = dave
            .publish(&format!("during round {round}"))
            .await
            .unwrap();
        if round == 1 {
            // alice, bob and carol were present at the first stop: announced once,
            // now, before anyone can join again.
            let mut left = Vec::new();
            for _ in 0..3 {
                let line = restarted.await_log("broadcast").await;
                assert_eq!(line["cause"], "server_restart", "{line}");
                left.push(line["participant"].as_str().unwrap().to_owned());
            }
            left.sort();
            assert_eq!(left, ["alice", "bob", "carol"]);
        }
        alice
            .stdout
            .await_line("dave's message", |l| {
                l.ends_with(&format!("during round {round}"))
            })
            .await;
        last = said;
        server = Some(restarted);
    }
    let (status, stdout, _) = alice.finish().await;
    assert!(status.success());
    let texts: Vec<String> = chats(&stdout.seen).into_iter().map(|(_, t)| t).collect();
    assert_eq!(
        texts,
        ["before the crash", "during round 1", "during round 2"]
    );
    // Each leave is in the log once.
    let server = server.take().unwrap();
    assert!(server.terminate().await.success());
    let store = DiskStore::open(data.path()).unwrap();
    let events = store.read(1, 10_000).unwrap();
    let mut leaves: HashMap<String, usize> = HashMap::new();
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.seq, i as u64 + 1, "a gap in the log");
        if event.kind == EventKind::Left {
            *leaves.entry(event.participant.to_string()).or_default() += 1;
        }
    }
    assert_eq!(leaves.get("bob"), Some(&1), "{leaves:?}");
    assert_eq!(leaves.get("carol"), Some(&1), "{leaves:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_publish_survives_kill_9_at_random_moments() {
    const ROUNDS: usize = 20;
    const PUBLISHERS: usize = 4;
    let data = tempfile::tempdir().unwrap();
    let mut answered: Vec<(u64, String)> = Vec::new();
    for round in 0..ROUNDS {
        let server = durable("127.0.0.1:0", data.path()).await;
        let url = server.url();
        let mut tasks = Vec::new();
        for p in 0..PUBLISHERS {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let name = format!("p{p}");
                let mut acked = Vec::new();
                let Ok(channel) = connect(&url).await else {
                    return acked;
                };
                let options = JoinOptions {
                    history: Some(0),
                    ..JoinOptions::default()
                };
                let Ok((session, _events)) = Session::join_with(channel, &name, options).await
                else {
                    return acked;
                };
                for i in 0.. {
                    let text = format!("r{round} {name} {i}");
                    match session.publish_with_id(&text, &PublishId::random()).await {
                        Ok(published) => acked.push((published.seq, text)),
                        Err(_) => break,
                    }
                }
                acked
            }));
        }
        // A random moment: somewhere in the first half second of load.
        let wait = Duration::from_millis(20 + rand::random::<u64>() % 480);
        tokio::time::sleep(wait).await;
        server.kill().await;
        for task in tasks {
            answered.extend(within(DEADLINE, "the publishers", task).await.unwrap());
        }
    }
    assert!(
        answered.len() > ROUNDS,
        "too little load: {}",
        answered.len()
    );
    let store = DiskStore::open(data.path()).unwrap();
    let events = store.read(1, 1_000_000).unwrap();
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.seq, i as u64 + 1, "a gap in the log at {i}");
    }
    let stored: HashMap<u64, &str> = events.iter().map(|e| (e.seq, e.text.as_str())).collect();
    for (seq, text) in &answered {
        assert_eq!(
            stored.get(seq),
            Some(&text.as_str()),
            "answered #{seq} is lost"
        );
    }
    // Lamport times rise with sequence numbers across every restart.
    for pair in events.windows(2) {
        assert!(
            pair[1].lamport > pair[0].lamport,
            "{:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
}

#[tokio::test]
async fn a_damaged_data_directory_or_a_second_server_is_refused_clearly() {
    let data = tempfile::tempdir().unwrap();
    let db = data.path().join(chittychat::log::DATABASE_FILE);
    std::fs::write(&db, b"this is not a database, and it must stay as it is").unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_chittychat-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .without_user_settings()
        .env("RUST_BACKTRACE", "1")
        .output();
    let output = within(DEADLINE, "the server to refuse", output)
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let said = String::from_utf8_lossy(&output.stderr);
    let last = said.lines().last().unwrap_or_default();
    assert!(last.starts_with("chittychat-server: error: "), "{said}");
    assert!(
        last.contains("corrupt") && last.contains(&db.display().to_string()),
        "{said}"
    );
    assert!(
        !said.contains("backtrace") && !said.contains("panicked"),
        "{said}"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        b"this is not a database, and it must stay as it is"
    );

    let data = tempfile::tempdir().unwrap();
    let first = durable("127.0.0.1:0", data.path()).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_chittychat-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .without_user_settings()
        .output();
    let output = within(DEADLINE, "the second server to refuse", output)
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("in use by another chittychat-server"),
        "{said}"
    );
    assert!(said.contains(&format!("pid {}", first.pid())), "{said}");
}
