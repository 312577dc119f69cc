//! The binaries' command lines: `--version`, a `--help` that explains every flag
//! and names its `CHITTYCHAT_…` environment variable, and settings taken from the
//! environment.

mod fixture;

use chittychat::client::{Session, connect};
use fixture::{ServerProcess, WithoutUserSettings};
use std::process::Command;

const SERVER: &str = env!("CARGO_BIN_EXE_chittychat-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_chittychat-client");

/// `binary`, to be started without the settings of the environment the tests run in.
fn command(binary: &str) -> Command {
    let mut command = Command::new(binary);
    command.without_user_settings();
    command
}

fn output_of(binary: &str, args: &[&str]) -> String {
    let output = command(binary).args(args).output().unwrap();
    assert!(output.status.success(), "{binary} {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

const TRACE: &str = env!("CARGO_BIN_EXE_chittychat-trace");
const DEMO: &str = env!("CARGO_BIN_EXE_chittychat-demo");

#[test]
fn every_binary_names_itself_and_its_version() {
    for binary in [SERVER, CLIENT, TRACE, DEMO] {
        let name = std::path::Path::new(binary).file_name().unwrap();
        let shown = output_of(binary, &["--version"]);
        assert_eq!(
            shown.trim_end(),
            format!("{} {}", name.to_str().unwrap(), env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn every_help_starts_with_what_that_program_does() {
    let starts = [
        (SERVER, "Run a Chitty-Chat server"),
        (CLIENT, "Chat in Chitty-Chat"),
        (TRACE, "Checks and draws the logs of a Chitty-Chat run"),
        (DEMO, "Starts a Chitty-Chat server and client processes"),
    ];
    for (binary, start) in starts {
        let help = output_of(binary, &["--help"]);
        assert!(help.starts_with(start), "{binary}: {help}");
    }
}

#[test]
fn a_port_in_use_is_one_line_with_a_hint_even_with_backtraces_on() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = command(SERVER)
        .args(["--ephemeral", "--listen", &addr])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let said = String::from_utf8(output.stderr).unwrap();
    let errors: Vec<&str> = said.lines().filter(|l| !l.contains(" INFO ")).collect();
    let expected = format!(
        "chittychat-server: error: {addr} is already in use: is another chittychat-server running? choose another with --listen"
    );
    assert_eq!(errors, [expected.as_str()], "{said}");
    // README quotes it for the default address.
    let readme = include_str!("../README.md");
    let quoted = expected.replace(&addr, "127.0.0.1:50051");
    assert!(readme.contains(&quoted), "README should quote: {quoted}");

    let output = command(SERVER)
        .args(["--ephemeral", "--listen", "nonsense"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let said = String::from_utf8(output.stderr).unwrap();
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(said.contains("--listen takes HOST:PORT"), "{said}");
}

#[test]
fn a_log_file_that_cannot_be_opened_is_one_line_naming_it() {
    let output = command(SERVER)
        .args(["--ephemeral", "--listen", "127.0.0.1:0"])
        .args(["--log-file", "/nonexistent/chittychat/server.log"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let said = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        said.lines().collect::<Vec<_>>(),
        [
            "chittychat-server: error: cannot open the log file /nonexistent/chittychat/server.log: No such file or directory (os error 2)"
        ],
        "{said}"
    );
}

/// Each option of a `--help` text, with the block of text that explains it.
fn options(help: &str) -> Vec<(String, String)> {
    let mut options: Vec<(String, String)> = Vec::new();
    let section = help
        .split_once("\nOptions:\n")
        .expect("a section of options")
        .1;
    for line in section.lines() {
        if !line.is_empty() && !line.starts_with(' ') {
            break; // The closing words after the options.
        }
        let trimmed = line.trim_start();
        // "--flag <VALUE>" or "-h, --help"; not "- text: …", a listed value.
        let flag = trimmed
            .split([' ', ','])
            .take(3)
            .find(|word| word.starts_with("--"));
        if let Some(flag) = flag.filter(|_| trimmed.starts_with('-') && !trimmed.starts_with("- "))
        {
            options.push((flag.to_owned(), String::new()));
        } else if let Some((_, text)) = options.last_mut() {
            text.push_str(trimmed);
            text.push('\n');
        }
    }
    options
}

#[test]
fn help_explains_every_flag_and_its_environment_variable() {
    for (binary, expected) in [
        (
            SERVER,
            &[
                "--listen",
                "--data-dir",
                "--ephemeral",
                "--history-limit",
                "--history-max-age",
                "--join-history",
                "--max-participants",
                "--publish-rate",
                "--publish-burst",
                "--max-request-bytes",
                "--keepalive-interval",
                "--keepalive-timeout",
                "--tls-cert",
                "--tls-key",
                "--join-secret",
                "--join-secret-file",
                "--log-format",
                "--log-file",
            ][..],
        ),
        (
            CLIENT,
            &[
                "--name",
                "--server",
                "--tls-ca",
                "--join-secret-file",
                "--no-reconnect",
                "--reconnect-timeout",
                "--keepalive-interval",
                "--keepalive-timeout",
                "--log-format",
                "--log-file",
            ][..],
        ),
    ] {
        let help = output_of(binary, &["--help"]);
        let options = options(&help);
        for flag in expected {
            assert!(
                options.iter().any(|(f, _)| f == flag),
                "{binary} --help lacks {flag}:\n{help}"
            );
        }
        for (flag, text) in &options {
            if flag == "--help" || flag == "--version" {
                continue;
            }
            let words = text.lines().next().unwrap_or_default();
            assert!(
                words.len() > 20,
                "{binary} {flag} is not explained:\n{help}"
            );
            // --health-check turns the server into its own probe; an environment
            // variable set for a container would stop that container's server from
            // ever serving, so it is a flag only.
            if flag == "--health-check" {
                continue;
            }
            let variable = format!(
                "[env: CHITTYCHAT_{}",
                flag.trim_start_matches("--")
                    .replace('-', "_")
                    .to_uppercase()
            );
            assert!(
                text.contains(&variable),
                "{binary} {flag} names no {variable}]:\n{help}"
            );
        }
    }
    // The client's secret comes from the environment or a file, never the command line.
    let client_help = output_of(CLIENT, &["--help"]);
    assert!(
        client_help.contains("CHITTYCHAT_JOIN_SECRET "),
        "{client_help}"
    );
    assert!(
        !options(&client_help)
            .iter()
            .any(|(f, _)| f == "--join-secret")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_takes_its_settings_from_the_environment() {
    let server = ServerProcess::start_with_env(
        &[],
        &[],
        &[
            ("CHITTYCHAT_MAX_PARTICIPANTS", "1"),
            ("CHITTYCHAT_LISTEN", "127.0.0.1:0"),
        ],
    )
    .await;
    let channel = connect(&server.url()).await.unwrap();
    let _alice = Session::join(channel.clone(), "alice").await.unwrap();
    let err = Session::join(channel, "bob").await.unwrap_err();
    assert!(err.to_string().contains("server full"), "{err}");
}

#[test]
fn a_bad_setting_is_one_clear_line_and_status_2() {
    let output = command(SERVER)
        .args(["--keepalive-interval", "soon"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let said = String::from_utf8(output.stderr).unwrap();
    assert!(said.contains("is not a number of seconds"), "{said}");

    let output = command(CLIENT)
        .args(["--name", "alice", "--tls-ca", "/nonexistent/ca.pem"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let said = String::from_utf8(output.stderr).unwrap();
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(
        said.starts_with(
            "chittychat-client: error: cannot use the TLS certificate authority file /nonexistent/ca.pem"
        ),
        "{said}"
    );
}
