//! End-to-end: the real `chittychat-server` and `chittychat-client` binaries, each
//! its own process, clients driven through piped stdin, their stdout asserted.

use chittychat::log_schema;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);

/// Lines a process printed, shared with the thread that reads them.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    added: Condvar,
}

impl Lines {
    fn follow(stream: impl std::io::Read + Send + 'static) -> Arc<Lines> {
        let lines = Arc::new(Lines::default());
        let shared = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                shared.lines.lock().unwrap().push(line);
                shared.added.notify_all();
            }
        });
        lines
    }

    /// Waits until a line satisfies `matches`; returns it.
    fn wait_for(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().find(|l| matches(l)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no line {what} within {DEADLINE:?}; got {lines:#?}"
            );
            lines = self.added.wait_timeout(lines, left).unwrap().0;
        }
    }

    fn all(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// A running binary with its stdout and stderr followed.
struct Process {
    name: String,
    pid: Pid,
    stdin: Option<ChildStdin>,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
    exited: mpsc::Receiver<ExitStatus>,
}

impl Process {
    fn spawn(name: &str, mut command: Command) -> Process {
        let mut child: Child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name}: {err}"));
        let stdout = Lines::follow(child.stdout.take().unwrap());
        let stderr = Lines::follow(child.stderr.take().unwrap());
        let stdin = child.stdin.take();
        let pid = Pid::from_raw(child.id() as i32);
        let (tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = tx.send(status);
            }
        });
        Process {
            name: name.to_owned(),
            pid,
            stdin,
            stdout,
            stderr,
            exited,
        }
    }

    fn client(name: &str, url: &str) -> Process {
        Process::client_with(name, url, &[])
    }

    fn client_with(name: &str, url: &str, extra: &[&str]) -> Process {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chittychat-client"));
        command
            .args(["--name", name, "--server", url])
            .args(extra)
            .env_remove("RUST_LOG");
        Process::spawn(name, command)
    }

    fn say(&mut self, line: &str) {
        self.say_bytes(line.as_bytes());
    }

    fn say_bytes(&mut self, line: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin.write_all(line).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    fn close_stdin(&mut self) {
        self.stdin.take();
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid, signal).unwrap();
    }

    fn wait_exit(&self) -> ExitStatus {
        self.exited
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("{} did not exit within {DEADLINE:?}", self.name))
    }

    /// Waits until this client printed the chat message `text` from `sender`; returns
    /// the message's Lamport time.
    fn sees_chat(&self, sender: &str, text: &str) -> u64 {
        let suffix = format!("] {sender}: {text}");
        let line = self.stdout.wait_for(&suffix, |l| {
            l.starts_with("[Lamport ") && l.ends_with(&suffix)
        });
        line["[Lamport ".len()..line.len() - suffix.len()]
            .parse()
            .unwrap()
    }

    /// Waits until this client printed a join (or leave) notice for `name`; returns
    /// its Lamport time.
    fn sees_notice(&self, name: &str, verb: &str) -> u64 {
        let prefix = format!("Participant {name} {verb} Chitty-Chat at Lamport time ");
        let line = self.stdout.wait_for(&prefix, |l| l.starts_with(&prefix));
        line[prefix.len()..].parse().unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Never leave a process behind, whatever the test did.
        let _ = kill(self.pid, Signal::SIGKILL);
    }
}

/// Starts the real server on a free port, its log in a temporary data directory
/// (durable, as users run it); returns it, its URL and the directory, which lives
/// as long as the test holds it.
fn start_server() -> (Process, String, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_chittychat-server"));
    command
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path());
    let server = Process::spawn("server", command);
    let line = server
        .stderr
        .wait_for("listening", |l| log_schema::listening_address(l).is_some());
    let address = log_schema::listening_address(&line).unwrap();
    (server, format!("http://{address}"), data)
}

#[test]
fn three_clients_chat_one_joins_late_and_everyone_leaves_differently() {
    let (server, url, _data) = start_server();

    // Three participants join one after another; everyone, the newcomer included,
    // sees each join notice, with the same Lamport time.
    let mut alice = Process::client("alice", &url);
    alice.sees_notice("alice", "joined");
    let mut bob = Process::client("bob", &url);
    let bob_joined = bob.sees_notice("bob", "joined");
    assert_eq!(alice.sees_notice("bob", "joined"), bob_joined);
    let carol = Process::client("carol", &url);
    let carol_joined = carol.sees_notice("carol", "joined");
    for p in [&alice, &bob] {
        assert_eq!(p.sees_notice("carol", "joined"), carol_joined);
    }

    // Each publishes; everyone sees every message with the same Lamport time.
    alice.say("hello from alice");
    bob.say("bonjour, ça va? 😀");
    let mut carol = carol;
    carol.say(&"c".repeat(128));
    for (sender, text) in [
        ("alice", "hello from alice".to_owned()),
        ("bob", "bonjour, ça va? 😀".to_owned()),
        ("carol", "c".repeat(128)),
    ] {
        let times: Vec<u64> = [&alice, &bob, &carol]
            .iter()
            .map(|p| p.sees_chat(sender, &text))
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] == w[1]),
            "{sender}: {times:?}"
        );
    }

    // A bad message is refused on the client with a clear error; the client goes on.
    bob.say(&"x".repeat(129));
    bob.stderr.wait_for("the length error", |l| {
        l.contains("chittychat-client: error: message is 129 characters long; the limit is 128")
    });
    bob.say_bytes(b"caf\xe9 in Latin-1");
    bob.stderr.wait_for("the UTF-8 error", |l| {
        l.contains("chittychat-client: error: message is not valid UTF-8")
    });
    // A line far longer than any message is refused without being kept whole.
    bob.say(&"z".repeat(1 << 20));
    bob.stderr.wait_for("the overlong-line error", |l| {
        l == "chittychat-client: error: message is 1048577 bytes long, more than 128 characters can be (not sent)"
    });
    bob.say("still here");
    for p in [&alice, &bob, &carol] {
        p.sees_chat("bob", "still here");
    }

    // A fourth joins late: it sees what was said before as history, marked so,
    // then its own join notice.
    let mut dave = Process::client("dave", &url);
    let dave_joined = dave.sees_notice("dave", "joined");
    for p in [&alice, &bob, &carol] {
        assert_eq!(p.sees_notice("dave", "joined"), dave_joined);
    }
    dave.say("late but here");
    for p in [&alice, &bob, &carol, &dave] {
        p.sees_chat("dave", "late but here");
    }
    let lines = dave.stdout.all();
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
    let twin = Process::client("alice", &url);
    assert_eq!(twin.wait_exit().code(), Some(4));
    let taken = twin.stderr.wait_for("the name-taken error", |l| {
        l.starts_with("chittychat-client: error:") && l.contains("\"alice\" is taken")
    });
    assert!(
        include_str!("../README.md").contains(&taken),
        "README should quote the error as the client prints it: {taken}"
    );
    // Names are unique regardless of case.
    let twin = Process::client("ALICE", &url);
    assert_eq!(twin.wait_exit().code(), Some(4));
    twin.stderr.wait_for("the name-taken error", |l| {
        l.contains("\"ALICE\" is taken") && l.contains("regardless of case")
    });

    // bob leaves by closing its input (EOF); three of his lines were refused, so
    // his exit status says that not every line was sent.
    bob.close_stdin();
    assert_eq!(bob.wait_exit().code(), Some(5));
    // A piped client's stderr holds what a script must see, not the INFO log.
    let said = bob.stderr.lines.lock().unwrap().clone();
    assert!(
        said.iter()
            .all(|line| line.starts_with("chittychat-client: ")),
        "{said:#?}"
    );
    let bob_left = alice.sees_notice("bob", "left");
    for p in [&carol, &dave] {
        assert_eq!(p.sees_notice("bob", "left"), bob_left);
    }

    // carol is killed outright; the server sees her stream end.
    carol.signal(Signal::SIGKILL);
    let carol_left = alice.sees_notice("carol", "left");
    assert_eq!(dave.sees_notice("carol", "left"), carol_left);

    // alice types /quit.
    alice.say("/quit");
    assert_eq!(alice.wait_exit().code(), Some(0));
    dave.sees_notice("alice", "left");
    assert!(
        !alice
            .stdout
            .all()
            .iter()
            .any(|l| l.starts_with("Participant alice left")),
        "the leaver is not sent its own leave notice"
    );

    // dave presses Ctrl-C.
    dave.signal(Signal::SIGINT);
    assert_eq!(dave.wait_exit().code(), Some(0));

    // Every leave was announced exactly once, after everything before it.
    for p in [&alice, &dave] {
        for name in ["bob", "carol"] {
            let prefix = format!("Participant {name} left");
            assert_eq!(
                p.stdout
                    .all()
                    .iter()
                    .filter(|l| l.starts_with(&prefix))
                    .count(),
                1,
                "{} saw {name} leave more than once",
                p.name
            );
        }
    }
    assert!(bob_left < carol_left);

    // The server shuts down gracefully on SIGTERM.
    server.signal(Signal::SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn a_server_shutdown_ends_clients_with_a_clear_message() {
    let (server, url, _data) = start_server();
    // Without reconnecting (tests/reconnect.rs covers that), the client ends.
    let erin = Process::client_with("erin", &url, &["--no-reconnect"]);
    erin.sees_notice("erin", "joined");
    server.signal(Signal::SIGINT);
    assert_eq!(server.wait_exit().code(), Some(0));
    assert_eq!(erin.wait_exit().code(), Some(1));
    erin.stderr.wait_for("the shutdown message", |l| {
        l == "chittychat-client: error: the Chitty-Chat server shut down"
    });
}

#[test]
fn an_unreachable_server_is_one_line_and_exit_status_3() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = Process::client("frank", &format!("http://127.0.0.1:{port}"));
    assert_eq!(client.wait_exit().code(), Some(3));
    client
        .stderr
        .wait_for("the error", |l| l.contains("error:"));
    let errors: Vec<String> = client
        .stderr
        .all()
        .into_iter()
        .filter(|l| !l.contains(" INFO "))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("chittychat-client: error: cannot reach the Chitty-Chat server"),
        "{errors:?}"
    );
    assert!(!errors[0].contains("panicked"));
}

#[test]
fn a_bad_name_is_refused_before_joining() {
    let (_server, url, _data) = start_server();
    let client = Process::client("no spaces allowed", &url);
    assert_eq!(client.wait_exit().code(), Some(4));
    client.stderr.wait_for("the name rule", |l| {
        l.starts_with("chittychat-client: error: invalid name") && l.contains("1 to 32 characters")
    });
}
