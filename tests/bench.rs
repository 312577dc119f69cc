//! `chittychat-bench` end to end: the real binary against a server it spawns and
//! against one it is pointed at, checking that every event arrived exactly once.

mod fixture;

use chittychat::room::RoomConfig;
use chittychat::server::ServerConfig;
use fixture::TestServer;
use serde_json::Value;
use std::process::Command;

const BENCH: &str = env!("CARGO_BIN_EXE_chittychat-bench");
const SERVER: &str = env!("CARGO_BIN_EXE_chittychat-server");

/// Runs the bench with `args` and `--json`; returns its exit status and report.
fn bench(args: &[&str]) -> (std::process::ExitStatus, Value) {
    let output = Command::new(BENCH)
        .args(args)
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
fn idle_and_join_storm_report_memory_and_join_times() {
    let (status, report) = bench(&["idle", "--server-bin", SERVER, "--participants", "20"]);
    assert!(status.success(), "{report}");
    assert!(report["server"]["kib_per_participant"].as_f64().unwrap() > 0.0);
    let (status, report) = bench(&["join-storm", "--server-bin", SERVER, "--participants", "30"]);
    assert!(status.success(), "{report}");
    // Participant k sees its own notice and every later one: 30 + 29 + ... + 1.
    assert_eq!(report["joins"]["deliveries"], 30 * 31 / 2);
    assert!(report["joins"]["all_notices_seen_s"].as_f64().unwrap() > 0.0);
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

#[test]
fn bad_settings_are_refused_with_one_line() {
    let output = Command::new(BENCH)
        .args(["saturate", "--participants", "2", "--publishers", "3"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--publishers 3 exceeds --participants 2"),
        "{stderr}"
    );
}
