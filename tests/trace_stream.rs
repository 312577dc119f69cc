//! A participant that publishes over a PublishStream leaves logs that
//! `chittychat-trace check` pairs like any other: each streamed message's `sent`
//! line with its broadcast, each broadcast with its receives, each outcome with its
//! reply. A real server process; the client library in this test process, logging
//! JSON to a file as `chittychat-client --log-file` does.

mod fixture;

use chittychat::logging::{self, LogFormat};
use chittychat::trace::check;
use chittychat::trace::parse::Run;
use fixture::{DEADLINE, ServerProcess, join, next_event as next, within};

#[tokio::test]
async fn a_stream_publisher_s_run_checks_clean() {
    const MESSAGES: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    // The only subscriber of this test binary: the library's own lines, as JSON.
    let guard = logging::init(
        LogFormat::Json,
        Some(&dir.path().join("alice.log")),
        "chittychat=info",
    )
    .unwrap();
    let server = ServerProcess::start(&["--publish-rate", "0"]).await;
    let (alice, mut events) = join(&server.url(), "alice").await;
    let (mut publisher, mut outcomes) = alice.publish_stream().await.unwrap();
    for i in 0..MESSAGES {
        publisher.send(&format!("streamed {i}")).await.unwrap();
    }
    drop(publisher);
    let mut answered = 0;
    while let Some((_, outcome)) = within(DEADLINE, "outcomes.next", outcomes.next())
        .await
        .unwrap()
    {
        outcome.unwrap();
        answered += 1;
    }
    assert_eq!(answered, MESSAGES);
    for i in 0..MESSAGES {
        assert_eq!(next(&mut events).await.event.text, format!("streamed {i}"));
    }
    within(DEADLINE, "alice.leave", alice.leave())
        .await
        .unwrap();
    while within(DEADLINE, "events.next", events.next())
        .await
        .unwrap()
        .is_some()
    {}
    let (_, mut log) = server.terminate_with_log().await;
    let server_log = log.read_to_end().await.join("\n");
    std::fs::write(dir.path().join("server.log"), server_log + "\n").unwrap();
    drop(guard); // flushes alice.log

    let run = Run::read(&[dir.path().to_owned()]).expect("the logs parse");
    let report = check::check(&run);
    assert!(report.ok(), "{report}");
    // The join, the streamed messages (request, broadcast, receive, reply) and the
    // leave: every one paired.
    assert!(report.messages >= 3 * MESSAGES, "{report}");
}
