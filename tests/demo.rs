//! `chittychat-demo` end to end: the real demo starts the real server and client
//! binaries, and its run must pass the checker and yield well-formed diagrams.

#[path = "fixture/environment.rs"]
mod environment;
mod export_checks;

use environment::WithoutUserSettings;
use export_checks::*;
use std::path::Path;
use std::process::{Command, Output};

fn demo(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chittychat-demo"))
        .args(args)
        .current_dir(cwd)
        .without_user_settings()
        .output()
        .expect("chittychat-demo runs")
}

/// The script's steps as printed: "  1. alice joins", ...
fn steps(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| {
            l.trim_start()
                .split_once(". ")
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_demo_plays_every_requirement_and_its_run_checks_out() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path();
    let run = root.join("run");
    let out = demo(
        &[
            "--out",
            run.to_str().unwrap(),
            "--seed",
            "3",
            "--clients",
            "4",
        ],
        root,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "joins late",
        "publish at the same moment",
        "leaves with /quit",
        "is killed (SIGKILL)",
        "leaves (end of input)",
        "The conversation as each participant saw it:",
        "all rules hold",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in\n{stdout}");
    }
    assert_eq!(
        steps(&stdout)
            .iter()
            .filter(|s| s.ends_with(" joins"))
            .count(),
        4
    );

    // One log per process: a server and five clients (four, then one late).
    let logs = std::fs::read_dir(&run)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count();
    assert_eq!(logs, 6);
    assert_svg_well_formed(&read(&run.join("diagram.svg")));
    assert!(assert_mermaid_well_formed(&read(&run.join("diagram.mmd"))) > 20);
    let events = assert_shiviz_well_formed(&read(&run.join("run.shiviz")));
    assert_eq!(
        events.iter().filter(|(host, _)| host == "server").count(),
        2 * 5 + 6 + 1
    );
    assert!(read(&run.join("timeline.txt")).starts_with("Lamport"));

    // The standalone checker agrees.
    let check = Command::new(env!("CARGO_BIN_EXE_chittychat-trace"))
        .arg("check")
        .arg(&run)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    // The two lines typed at the same moment are concurrent: Lamport times order
    // them, vector clocks do not.
    let concurrent = Command::new(env!("CARGO_BIN_EXE_chittychat-trace"))
        .args(["concurrent", "--limit", "1"])
        .arg(&run)
        .output()
        .unwrap();
    let pair = String::from_utf8_lossy(&concurrent.stdout);
    let lines: Vec<&str> = pair.lines().collect();
    assert_eq!(lines.len(), 3, "{pair}");
    assert!(
        lines[0].contains(": sent Publish") && lines[1].contains(": sent Publish"),
        "{pair}"
    );
    assert!(lines[2].ends_with("concurrent"), "{pair}");

    // A second run into the same folder is refused, leaving the first intact.
    let before = read(&run.join("server.log"));
    let again = demo(&["--out", run.to_str().unwrap()], root);
    assert_eq!(again.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("is not empty"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(read(&run.join("server.log")), before);
}

#[test]
fn two_runs_get_two_folders_and_the_seed_fixes_the_script() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path();
    let first = demo(&["--seed", "11"], root);
    let second = demo(&["--seed", "11"], root);
    for out in [&first, &second] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let folders: Vec<_> = std::fs::read_dir(root.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(folders.len(), 2, "{folders:?}");
    let (a, b) = (
        String::from_utf8_lossy(&first.stdout),
        String::from_utf8_lossy(&second.stdout),
    );
    assert!(!steps(&a).is_empty());
    assert_eq!(steps(&a), steps(&b));
}

#[test]
fn too_few_clients_is_a_usage_error() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path();
    let out = demo(&["--clients", "2", "--out", "x"], root);
    assert_eq!(out.status.code(), Some(2));
    assert!(!root.join("x").exists());
}

/// The sequence numbers of the events a participant's log says it received.
fn received_seqs(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "received")
        .filter_map(|l| l["seq"].as_u64())
        .collect()
}

#[test]
fn the_cluster_demo_moves_a_dead_nodes_participants_and_its_run_checks_out() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path();
    let run = root.join("run");
    let out = demo(
        &["--cluster", "--out", run.to_str().unwrap(), "--seed", "3"],
        root,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "over 3 nodes and a NATS server",
        "every node paused until both have sent",
        "from its new node",
        "all rules hold",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in\n{stdout}");
    }
    // Participants spread over the nodes in turn.
    let joins: Vec<String> = steps(&stdout)
        .into_iter()
        .filter(|s| s.contains(" joins"))
        .collect();
    for (i, step) in joins.iter().enumerate() {
        assert!(step.ends_with(&format!(" on node-{}", i % 3 + 1)), "{step}");
    }
    // "node-K is killed (SIGKILL); a and b move to other nodes and resume there"
    let kill = steps(&stdout)
        .into_iter()
        .find(|s| s.contains("is killed (SIGKILL);"))
        .unwrap_or_else(|| panic!("no node killed in\n{stdout}"));
    let movers = kill
        .split_once("; ")
        .and_then(|(_, rest)| rest.split_once(" move to"))
        .map(|(names, _)| names.split(" and ").map(str::to_owned).collect::<Vec<_>>())
        .unwrap();
    assert!(!movers.is_empty(), "{kill}");

    // Each mover joined twice (once on each node), and resumed without a gap or
    // a repeat: the sequence numbers it received run on one by one.
    for mover in &movers {
        let log = read(&run.join(format!("{mover}.log")));
        let seqs = received_seqs(&log);
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "{mover} received {seqs:?}"
        );
        let joins = log
            .lines()
            .filter(|l| l.contains(r#""message":"sent""#) && l.contains(r#""rpc":"Join""#))
            .count();
        assert_eq!(joins, 2, "{mover} did not join twice:\n{log}");
    }

    // One log per node and per participant, and none from NATS among them.
    let mut logs: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".log"))
        .collect();
    logs.sort();
    assert_eq!(logs.len(), 3 + 4, "{logs:?}");
    for node in ["node-1.log", "node-2.log", "node-3.log"] {
        assert!(logs.iter().any(|l| l == node), "{logs:?}");
    }
    assert!(run.join("nats").join("nats-server.log").is_file());
    // The diagram has a column per node.
    let svg = read(&run.join("diagram.svg"));
    assert_svg_well_formed(&svg);
    for node in ["node-1", "node-2", "node-3"] {
        assert!(svg.contains(&format!(">{node}</text>")), "no column {node}");
    }
    let check = Command::new(env!("CARGO_BIN_EXE_chittychat-trace"))
        .arg("check")
        .arg(&run)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
}

#[test]
fn the_cluster_demo_without_nats_server_says_what_it_needs() {
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path();
    let out = Command::new(env!("CARGO_BIN_EXE_chittychat-demo"))
        .args(["--cluster", "--out", "run"])
        .current_dir(root)
        .without_user_settings()
        .env("PATH", root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--cluster needs nats-server") && stderr.contains("apt-get install"),
        "{stderr}"
    );
    assert!(
        !root.join("run").exists(),
        "a folder was made for a run that could not start"
    );
}
