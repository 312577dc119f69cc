//! The interactive client as a person meets it: the real binary in a
//! pseudo-terminal, its screen read through a terminal emulator.
//!
//! Covers the prompt through an outage (the notice at once, typing kept, lines sent
//! once after the rejoin, Ctrl-C leaving at once), the chat commands, one's own
//! messages set apart, the redraw of a wrapped line, and Ctrl-D on a typed line.

mod fixture;

use chittychat::client::Session;
use chittychat::event::EventKind;
use fixture::terminal::Terminal;
use fixture::{DEADLINE, ServerProcess, next_event, within};
use std::time::Duration;

/// How soon the client must show that the server went away, and leave on Ctrl-C.
const AT_ONCE: Duration = Duration::from_secs(1);

/// Starts `chittychat-client` as `name` in a terminal `cols` wide, logging into a
/// temporary state directory.
fn client(server: &ServerProcess, name: &str, cols: u16, state: &tempfile::TempDir) -> Terminal {
    client_with_env(server, name, cols, state, &[])
}

/// As [`client`], with the extra environment `envs`.
fn client_with_env(
    server: &ServerProcess,
    name: &str,
    cols: u16,
    state: &tempfile::TempDir,
    envs: &[(&str, &str)],
) -> Terminal {
    let state = state.path().to_str().unwrap();
    let mut all = vec![("XDG_STATE_HOME", state), ("HOME", state)];
    all.extend_from_slice(envs);
    Terminal::spawn(
        env!("CARGO_BIN_EXE_chittychat-client").as_ref(),
        &["--server", &server.url(), "--name", name],
        &all,
        cols,
    )
}

/// How many chat messages saying `text` the server's log holds, asked through
/// `observer`'s History.
async fn times_said(observer: &Session, text: &str) -> usize {
    let (events, _) = within(DEADLINE, "History", observer.history(0, 1000))
        .await
        .expect("History");
    events
        .iter()
        .filter(|event| event.kind == EventKind::Chat && event.text == text)
        .count()
}

#[tokio::test]
async fn commands_the_screen_and_leaving() {
    let server = ServerProcess::start(&[]).await;
    let state = tempfile::tempdir().unwrap();
    let mut alice = client(&server, "alice", 60, &state);
    alice.wait_for_text("Present (1): alice", DEADLINE).await;
    let (bob, mut bob_feed) = fixture::join(&server.url(), "bob").await;

    // /who asks the server; /help lists the commands; neither is broadcast.
    alice.type_keys("/who\r");
    alice
        .wait_for_text("Present (2): alice, bob", DEADLINE)
        .await;
    alice.type_keys("/help\r");
    alice.wait_for_text("show who is present", DEADLINE).await;
    alice.type_keys("/nick carol\r");
    alice
        .wait_for_text("/nick is not a command", DEADLINE)
        .await;
    // Blank lines are not messages; //text sends /text.
    alice.type_keys("   \r");
    alice.type_keys("//slash\r");
    let first = next_event(&mut bob_feed).await;
    assert_eq!(
        (first.event.kind, &*first.event.text),
        (EventKind::Chat, "/slash"),
        "/who, /help, /nick and a blank line must not be broadcast"
    );

    // Ctrl-D on a typed line neither leaves nor loses the text.
    alice.type_keys("keep me");
    alice.type_keys("\x04");
    alice.type_keys("\r");
    let kept = next_event(&mut bob_feed).await;
    assert_eq!(&*kept.event.text, "keep me");

    // One's own messages look different from others'.
    bob.publish("hi from bob").await.expect("bob publishes");
    assert_eq!(&*next_event(&mut bob_feed).await.event.text, "hi from bob");
    alice.wait_for_text("bob: hi from bob", DEADLINE).await;
    alice.wait_for_text("alice: keep me", DEADLINE).await;
    let (own, other) = alice.look(|screen| {
        let colour_of = |text: &str| {
            let (row, col) = screen
                .rows(0, screen.size().1.get())
                .enumerate()
                .find_map(|(row, line)| line.find(text).map(|col| (row, col)))
                .unwrap();
            screen
                .cell(row as u16, col as u16)
                .map(|cell| cell.fgcolor())
                .unwrap()
        };
        (colour_of("alice: keep me"), colour_of("bob: hi from bob"))
    });
    assert_ne!(own, other, "own and others' names are drawn alike");
    // Each message shows the local time.
    let shows_time = alice.look(|screen| {
        screen.contents().lines().any(|line| {
            line.contains("bob: hi from bob")
                && line.as_bytes().get(2) == Some(&b':')
                && line[..5].chars().filter(char::is_ascii_digit).count() == 4
        })
    });
    assert!(shows_time, "no HH:MM:\n{}", alice.contents());

    // A line wider than the terminal, erased with Ctrl-U, leaves no stale row.
    let wide = "w".repeat(100);
    alice.type_keys(&wide);
    alice
        .wait_for("the wrapped line", DEADLINE, |screen| {
            screen.contents().contains(&"w".repeat(55))
        })
        .await;
    alice.type_keys("\x15");
    alice
        .wait_for("the wrapped line to be erased", DEADLINE, |screen| {
            !screen.contents().contains("www")
        })
        .await;

    // Sent with Enter, it is published whole, and the prompt below is empty again.
    alice.type_keys(&format!("{wide}\r"));
    let sent = next_event(&mut bob_feed).await;
    assert_eq!(*sent.event.text, wide);
    alice
        .wait_for("an empty prompt below the message", DEADLINE, |screen| {
            let (row, _) = screen.cursor_position();
            let rows: Vec<String> = screen.rows(0, screen.size().1.get()).collect();
            rows[usize::from(row)].trim_end() == ">"
                && rows[usize::from(row) + 1..].iter().all(String::is_empty)
                && rows[..usize::from(row)]
                    .iter()
                    .any(|line| line.contains("alice: www"))
        })
        .await;

    alice.type_keys("/quit\r");
    alice
        .wait_for_text("You left Chitty-Chat at Lamport time", DEADLINE)
        .await;
    assert_eq!(alice.exit_code(DEADLINE).await, 0);
    let left = fixture::await_notice(&mut bob_feed, EventKind::Left, "alice", DEADLINE).await;
    assert!(
        alice
            .contents()
            .contains(&format!("at Lamport time {}.", left.event.lamport)),
        "the client names the leave's Lamport time:\n{}",
        alice.contents()
    );
    // The log went to one place, one file per name.
    assert!(state.path().join("chittychat/client-alice.log").exists());
}

#[tokio::test]
async fn an_outage_is_shown_at_once_and_typing_goes_on() {
    let server = ServerProcess::start(&[]).await;
    let addr = server.addr.to_string();
    let state = tempfile::tempdir().unwrap();
    let mut alice = client(&server, "alice", 100, &state);
    alice.wait_for_text("Present (1): alice", DEADLINE).await;

    server.kill().await;
    alice.wait_for_text("next attempt at", AT_ONCE).await;
    alice.type_keys("said while away\r");
    alice
        .wait_for_text("pending: \"said while away\"", DEADLINE)
        .await;
    alice.type_keys("and once more\r");
    alice
        .wait_for_text("pending: \"and once more\"", DEADLINE)
        .await;

    let server = ServerProcess::start_on(&addr, &[]).await;
    alice.wait_for_text("reconnected", DEADLINE).await;
    alice.wait_for_text("alice: and once more", DEADLINE).await;
    let (observer, _feed) = fixture::join(&server.url(), "observer").await;
    assert_eq!(times_said(&observer, "said while away").await, 1);
    assert_eq!(times_said(&observer, "and once more").await, 1);

    alice.type_keys("/quit\r");
    assert_eq!(alice.exit_code(DEADLINE).await, 0);
}

#[tokio::test]
async fn ctrl_c_during_an_outage_leaves_at_once() {
    let server = ServerProcess::start(&[]).await;
    let state = tempfile::tempdir().unwrap();
    let mut alice = client(&server, "alice", 100, &state);
    alice.wait_for_text("Present (1): alice", DEADLINE).await;

    server.terminate().await;
    alice.wait_for_text("reconnecting", AT_ONCE).await;
    // The notice is the one README quotes, but for the time of the next attempt.
    let notice = alice
        .contents()
        .lines()
        .find(|line| line.contains("reconnecting"))
        .unwrap()
        .to_owned();
    let at = notice.find(" at ").expect("the notice names a time") + 4;
    let quoted = format!("{}10:07:31{}", &notice[..at], &notice[at + 8..]);
    assert!(
        include_str!("../README.md").contains(&quoted),
        "README should quote: {quoted}"
    );
    alice.type_keys("\x03");
    assert_eq!(alice.exit_code(AT_ONCE).await, 0);
    alice
        .wait_for_text("You left Chitty-Chat while disconnected", DEADLINE)
        .await;
}

#[tokio::test]
async fn no_color_means_no_colour_anywhere() {
    let server = ServerProcess::start(&[]).await;
    let state = tempfile::tempdir().unwrap();
    let mut alice = client_with_env(&server, "alice", 80, &state, &[("NO_COLOR", "1")]);
    alice.wait_for_text("Present (1): alice", DEADLINE).await;
    // An error, a notice-like hint and one's own message, marked in words instead.
    alice.type_keys("/nick carol\r");
    alice
        .wait_for_text("/nick is not a command", DEADLINE)
        .await;
    alice.type_keys("plain words\r");
    alice
        .wait_for_text("alice (you): plain words", DEADLINE)
        .await;
    // The rows with any cell in colour, dim or bold.
    let coloured: Vec<String> = alice.look(|screen| {
        let (rows, cols) = (screen.size().0.get(), screen.size().1.get());
        let plain = |cell: &vt100::Cell| {
            cell.fgcolor() == vt100::Color::Default
                && cell.bgcolor() == vt100::Color::Default
                && !cell.dim()
                && !cell.bold()
        };
        screen
            .rows(0, cols)
            .enumerate()
            .filter(|&(row, _)| {
                (0..cols).any(|col| {
                    screen
                        .cell(row as u16, col)
                        .is_some_and(|cell| !plain(cell))
                })
            })
            .map(|(_, text)| text)
            .take(usize::from(rows))
            .collect()
    });
    assert!(
        coloured.is_empty(),
        "{coloured:?} with NO_COLOR:\n{}",
        alice.contents()
    );
    alice.type_keys("/quit\r");
    alice.wait_for_text("left Chitty-Chat", DEADLINE).await;
}
