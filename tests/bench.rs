//! `chittychat-bench` end to end: the real binary against a server it spawns and
//! against one it is pointed at (over TLS, with a join secret too), checking that
//! every event arrived exactly once.

mod fixture;

use chittychat::room::RoomConfig;
use chittychat::server::ServerConfig;
use chittychat::transport::JoinSecret;
use fixture::pki::Pki;
use fixture::{Relay, TestServer, WithoutUserSettings, within};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const BENCH: &str = env!("CARGO_BIN_EXE_chittychat-bench");
const SERVER: &str = env!("CARGO_BIN_EXE_chittychat-server");

/// The bench with `args`, with no settings (a join secret, say) from the
/// environment it runs in.
fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BENCH);
    command.without_user_settings().args(args);
    command
}

/// Runs the bench with `args` and `--json`; returns its exit status and report.
fn bench(args: &[&str]) -> (std::process::ExitStatus, Value) {
    let output = command(args)
        .arg("--json")
        .output()
        .expect("chittychat-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(stdout.trim()).unwrap_or_else(|err| {
        panic!(
            "no JSON report ({err}); stdout: {stdout}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status, report)
}

#[test]
fn saturating_a_spawned_server_loses_and_duplicates_nothing() {
    let (status, report) = bench(&[
        "saturate",
        "--server-bin",
        SERVER,
        "--participants",
        "8",
        "--publishers",
        "2",
        "--warmup",
        "0.2",
        "--duration",
        "1",
    ]);
    assert!(status.success(), "{report}");
    assert_eq!(report["lost"], 0);
    assert_eq!(report["duplicated"], 0);
    assert!(report["deliveries"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["latency"]["samples"].as_u64().unwrap() > 0,
        "{report}"
    );
    let server = &report["server"];
    assert!(
        server["cpu_ns_per_delivery"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(server["peak_rss_kib"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn a_log_file_named_in_the_environment_does_not_hide_the_spawned_servers_address() {
    // The bench reads the address from the server's standard error; a log file
    // the user's environment names (here one that cannot even be created) must not
    // take the server's log away from it.
    let output = command(&[
        "saturate",
        "--server-bin",
        SERVER,
        "--participants",
        "2",
        "--publishers",
        "1",
        "--warmup",
        "0",
        "--duration",
        "0.3",
        "--json",
    ])
    .env("CHITTYCHAT_LOG_FILE", "/nonexistent/chittychat/server.log")
    .output()
    .expect("chittychat-bench runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn saturating_over_publish_streams_loses_duplicates_and_reorders_nothing() {
    let (status, report) = bench(&[
        "saturate",
        "--server-bin",
        SERVER,
        "--participants",
        "8",
        "--publishers",
        "2",
        "--publish-over",
        "stream",
        "--warmup",
        "0.2",
        "--duration",
        "1",
    ]);
    assert!(status.success(), "{report}");
    assert_eq!(report["publish_over"], "stream");
    assert_eq!(report["lost"], 0);
    assert_eq!(report["duplicated"], 0);
    assert_eq!(report["reordered"], 0);
    assert_eq!(report["failures"], 0, "{report}");
    assert!(report["publishes"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["publish_latency"]["samples"].as_u64().unwrap() > 0,
        "{report}"
    );
}

#[test]
fn idle_and_join_storm_report_memory_and_join_times() {
    // Connecting from three loopback addresses, as a bench of more participants
    // than one address has ports does.
    let (status, report) = bench(&[
        "idle",
        "--server-bin",
        SERVER,
        "--participants",
        "20",
        "--source-addresses",
        "3",
    ]);
    assert!(status.success(), "{report}");
    assert!(report["server"]["kib_per_participant"].as_f64().unwrap() > 0.0);
    let (status, report) = bench(&["join-storm", "--server-bin", SERVER, "--participants", "30"]);
    assert!(status.success(), "{report}");
    // Participant k sees its own notice and every later one: 30 + 29 + ... + 1.
    assert_eq!(report["joins"]["deliveries"], 30 * 31 / 2);
    assert!(report["joins"]["all_notices_seen_s"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_whose_connection_fails_before_the_answer_are_tried_again_and_counted() {
    let server = TestServer::start(ServerConfig::default()).await;
    // The relay holds every byte of the first three connections, then closes them:
    // no Join reaches the server, and each participant's first attempt fails.
    let relay = Relay::start(server.addr).await;
    relay.stall();
    let url = relay.url();
    let run = tokio::task::spawn_blocking(move || {
        bench(&["join-storm", "--server", &url, "--participants", "3"])
    });
    within(
        Duration::from_secs(10),
        "the three participants to connect",
        async {
            while relay.accepted() < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        },
    )
    .await;
    relay.cut();
    let (status, report) = run.await.unwrap();
    assert!(status.success(), "{report}");
    assert_eq!(report["joins"]["retried"], 3);
    assert_eq!(report["failures"], 0);
    // Participant k sees its own notice and every later one: 3 + 2 + 1.
    assert_eq!(report["joins"]["deliveries"], 6);
    assert_eq!(relay.accepted(), 6);
    server.stop().await;
}

#[test]
fn newcomers_that_ask_for_history_get_all_of_it_and_are_timed() {
    let (status, report) = bench(&[
        "history-join",
        "--server-bin",
        SERVER,
        "--participants",
        "10",
        "--history",
        "40",
        "--joins",
        "5",
    ]);
    assert!(status.success(), "{report}");
    let joined = &report["history_join"];
    assert_eq!(joined["history"], 40, "{report}");
    assert_eq!(joined["latency"]["samples"], 5, "{report}");
    assert!(
        joined["latency"]["p50_us"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    // The ten present heard each newcomer join and leave.
    assert!(
        report["deliveries"].as_u64().unwrap() >= 10 * 5 * 2,
        "{report}"
    );
    assert_eq!(report["lost"], 0);
    assert_eq!(report["duplicated"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drives_a_server_given_by_url_at_a_fixed_rate() {
    // 200 messages a second would trip the default per-participant publish limit.
    let server = TestServer::start(ServerConfig {
        room: RoomConfig {
            publish_rate: None,
            ..RoomConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let url = server.url();
    let (status, report) = tokio::task::spawn_blocking(move || {
        bench(&[
            "rate",
            "--server",
            &url,
            "--participants",
            "5",
            "--rate",
            "200",
            "--warmup",
            "0.2",
            "--duration",
            "1",
        ])
    })
    .await
    .unwrap();
    assert!(status.success(), "{report}");
    assert_eq!(report["lost"], 0);
    assert_eq!(report["duplicated"], 0);
    // Pointed at a server, the bench cannot see its process.
    assert!(report["server"].is_null());
    assert!(report["publishes"].as_u64().unwrap() > 0);
    server.stop().await;
}

/// Runs the bench with `args`, which must fail with status 1 and one line on
/// stderr; returns that line.
fn refused(args: &[&str]) -> String {
    let output = command(args).output().expect("chittychat-bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drives_a_server_that_serves_tls_and_requires_a_join_secret() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let [ca, _, _] = pki.write(dir.path());
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "open sesame\n").unwrap();
    let server = TestServer::start(ServerConfig {
        tls: Some(pki.identity()),
        join_secret: JoinSecret::new("open sesame").ok(),
        room: RoomConfig {
            publish_rate: None,
            ..RoomConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let url = format!("https://{}", server.addr);
    let (ca, secret) = (ca.to_str().unwrap(), secret.to_str().unwrap());
    let (with_both, without_secret) = tokio::task::spawn_blocking({
        let (url, ca, secret) = (url.clone(), ca.to_owned(), secret.to_owned());
        move || {
            let tiny = ["--participants", "3", "--rate", "20", "--warmup", "0.1"];
            let args = ["rate", "--server", &url, "--tls-ca", &ca];
            let mut with_both = args.to_vec();
            with_both.extend(["--join-secret-file", &secret, "--duration", "0.5"]);
            with_both.extend(tiny);
            let mut without_secret = args.to_vec();
            without_secret.extend(tiny);
            (bench(&with_both), refused(&without_secret))
        }
    })
    .await
    .unwrap();
    let (status, report) = with_both;
    assert!(status.success(), "{report}");
    assert_eq!(report["lost"], 0);
    assert_eq!(report["duplicated"], 0);
    assert!(report["publishes"].as_u64().unwrap() > 0, "{report}");
    assert!(
        without_secret.contains("needs a join secret"),
        "{without_secret}"
    );
    server.stop().await;
}

#[tokio::test]
async fn participants_connect_from_the_source_addresses_in_turn() {
    // A listener that only accepts, to see where each connection comes from.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut bench = command(&[
        "idle",
        "--server",
        &url,
        "--participants",
        "6",
        "--source-addresses",
        "3",
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let mut sources = std::collections::BTreeMap::new();
    let mut held = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while held.len() < 6 {
            let (socket, peer) = listener.accept().await.unwrap();
            *sources.entry(peer.ip().to_string()).or_insert(0) += 1;
            held.push(socket);
        }
    })
    .await
    .expect("six connections within 30 s");
    bench.kill().unwrap();
    bench.wait().unwrap();
    let expected: std::collections::BTreeMap<String, i32> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        .into_iter()
        .map(|ip| (ip.to_owned(), 2))
        .collect();
    assert_eq!(sources, expected);
}

#[test]
fn bad_settings_are_refused_with_one_line() {
    let said = refused(&["saturate", "--participants", "2", "--publishers", "3"]);
    assert!(
        said.contains("--publishers 3 exceeds --participants 2"),
        "{said}"
    );
    // The server the bench starts needs neither TLS nor a join secret.
    let said = refused(&["idle", "--tls-ca", "ca.pem"]);
    assert!(said.contains("only with --server"), "{said}");
    // A file that cannot be read is named, before anything connects.
    let missing = "/nonexistent/chittychat-bench-secret";
    let said = refused(&[
        "idle",
        "--server",
        "http://127.0.0.1:9",
        "--join-secret-file",
        missing,
    ]);
    assert!(said.contains(missing), "{said}");
    // Only a server on loopback can be reached from 127.0.0.x.
    let said = refused(&[
        "idle",
        "--server",
        "http://192.0.2.1:9",
        "--source-addresses",
        "2",
    ]);
    assert!(said.contains("127.0.0.0/8"), "{said}");
}
