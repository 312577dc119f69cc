//! The checker and the exporters on the recorded logs under `tests/recorded_runs/`: good runs
//! pass, each deliberately broken run is caught with a precise explanation, and
//! every export is well-formed; plus the `chittychat-trace` binary's exit codes.

mod export_checks;

use chittychat::event::EventKind;
use chittychat::trace::causality::{self, MessageKind, happened_before};
use chittychat::trace::check::{self, Rule};
use chittychat::trace::parse::{Action, Run, parse_process};
use chittychat::trace::{mermaid, shiviz, svg, timeline};
use export_checks::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/recorded_runs")
        .join(name)
}

fn read_run(name: &str) -> Run {
    Run::read(&[fixture(name)]).expect("the fixture reads")
}

#[test]
fn good_runs_pass() {
    for name in ["good", "demo", "rejoin", "reconnect", "cluster"] {
        let report = check::check(&read_run(name));
        assert!(report.ok(), "{name}: {report}");
        assert!(report.messages > 0);
    }
}

#[test]
fn the_reports_run_passes() {
    // The report shows this run's check; it must hold for the current checker.
    let run = Run::read(&[Path::new(env!("CARGO_MANIFEST_DIR")).join("report/run")]).unwrap();
    let report = check::check(&run);
    assert!(report.ok(), "{report}");
}

#[test]
fn each_broken_run_is_caught_and_explained() {
    // (fixture, the rule it breaks, words the explanation must contain)
    let cases: [(&str, Rule, &[&str]); 11] = [
        (
            "broken-clock-condition",
            Rule::ClockCondition,
            &[
                "server.log:3",
                "alice.log:4",
                "at Lamport time 5",
                "received it at 5",
            ],
        ),
        (
            "broken-missed-broadcast",
            Rule::Delivery,
            &[
                "bob never received #5",
                "server.log:6",
                "joined at #3, left at #6",
            ],
        ),
        (
            "broken-duplicate-delivery",
            Rule::Delivery,
            &["alice received #3 twice", "alice.log:6", "alice.log:7"],
        ),
        (
            "broken-out-of-order",
            Rule::Delivery,
            &["bob received #4", "after #5", "same for everyone"],
        ),
        (
            "broken-double-leave",
            Rule::JoinLeave,
            &["alice left at #7", "already left at #5"],
        ),
        (
            "broken-backwards",
            Rule::ProcessOrder,
            &[
                "alice's Lamport time does not rise on its feed",
                "Lamport 6",
                "Lamport 2",
            ],
        ),
        (
            "broken-unmatched-receive",
            Rule::UnmatchedReceive,
            &["bob.log:8", "no broadcast #7"],
        ),
        (
            "broken-duplicate-seq",
            Rule::ProcessOrder,
            &["two broadcasts #2", "server.log:3", "server.log:4"],
        ),
        (
            "broken-reconnect-gap",
            Rule::Delivery,
            &["bob never received #7", "joined at #5, left at #8"],
        ),
        (
            "broken-cluster-merge",
            Rule::ClockCondition,
            &[
                "node1 sent at Lamport time 4",
                "node2 received it at 4",
                "applied #2 from node1",
            ],
        ),
        (
            "broken-vanished-gap",
            Rule::Delivery,
            &["rupert never received #5", "left at #12"],
        ),
    ];
    for (name, rule, words) in cases {
        let report = check::check(&read_run(name));
        assert!(!report.ok(), "{name} passed");
        let found = report
            .violations
            .iter()
            .find(|v| v.rule == rule)
            .unwrap_or_else(|| panic!("{name}: no {} violation in\n{report}", rule.as_str()));
        for word in words {
            assert!(
                found.message.contains(word),
                "{name}: {:?} lacks {word:?}",
                found.message
            );
        }
    }
}

#[test]
fn a_vanished_participant_may_lose_only_the_tail() {
    // rupert was killed: drop the last broadcast it logged, which was in flight.
    let dir = fixture("demo");
    let mut processes = Vec::new();
    for name in ["server", "alice", "peggy", "rupert", "heidi"] {
        let path = dir.join(format!("{name}.log"));
        let mut text = read(&path);
        if name == "rupert" {
            let lines: Vec<&str> = text.lines().collect();
            let last = lines
                .iter()
                .rposition(|l| l.contains("\"received\""))
                .unwrap();
            text = text
                .lines()
                .enumerate()
                .filter(|(i, _)| *i != last)
                .map(|(_, l)| format!("{l}\n"))
                .collect();
        }
        processes.push(parse_process(&path, &text).unwrap().unwrap());
    }
    let report = check::check(&Run::new(processes));
    assert!(report.ok(), "{report}");
}

#[test]
fn a_name_that_leaves_and_joins_again_is_two_processes() {
    let run = read_run("rejoin");
    let report = check::check(&run);
    assert!(report.ok(), "{report}");
    let labels: Vec<&str> = run.processes.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(labels, ["server", "bob", "alice", "alice#2"]);
    // Each is its own ShiViz host, counting its own events from 1.
    let messages = causality::messages(&run);
    let clocks = causality::vector_clocks(&run, &messages);
    let events = assert_shiviz_well_formed(&shiviz::shiviz(&run, &messages, &clocks));
    assert!(events.iter().any(|(host, _)| host == "alice#2"));
    assert_svg_well_formed(&svg::svg(&run, &messages));
}

#[test]
fn a_cluster_run_has_a_process_per_node_and_each_node_applies_the_others_events() {
    let run = read_run("cluster");
    let labels: Vec<&str> = run.processes.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(labels, ["node1", "node2", "bob", "alice"]);
    // Every event is broadcast by the node that stamped it, once, and applied by
    // the other: a message from node to node, later than the stamp.
    let messages = causality::messages(&run);
    let between_nodes: Vec<_> = messages
        .iter()
        .filter(|m| m.from.process < 2 && m.to.process < 2)
        .collect();
    let broadcasts = run
        .event_ids()
        .filter(|&id| matches!(run.event(id).action, Action::Broadcast { .. }))
        .count();
    assert_eq!(broadcasts, 12);
    assert_eq!(between_nodes.len(), broadcasts);
    for m in &between_nodes {
        assert_ne!(m.from.process, m.to.process);
        assert!(matches!(run.event(m.to).action, Action::Applied { .. }));
        assert!(run.event(m.from).lamport < run.event(m.to).lamport);
    }
    // The two nodes stamped #3 and #4 at the same Lamport time: concurrent events,
    // and so are the Publish requests behind them.
    let clocks = causality::vector_clocks(&run, &messages);
    assert!(!causality::concurrent_requests(&run, &clocks).is_empty());
    assert_svg_well_formed(&svg::svg(&run, &messages));
    assert_shiviz_well_formed(&shiviz::shiviz(&run, &messages, &clocks));
    assert_mermaid_well_formed(&mermaid::mermaid(&run, &messages));
}

#[test]
fn processes_are_named_and_ordered_by_joining() {
    let run = read_run("demo");
    let names: Vec<&str> = run.processes.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["server", "alice", "peggy", "rupert", "heidi"]);
}

#[test]
fn messages_pair_every_receive_with_its_send() {
    let run = read_run("good");
    let messages = causality::messages(&run);
    let count = |kind| messages.iter().filter(|m| m.kind == kind).count();
    // 2 joins + 2 publishes + 2 leaves; 1+1+2+2+1+0 receipts; 2 publish + 2 leave replies.
    assert_eq!(count(MessageKind::Request), 6);
    assert_eq!(count(MessageKind::Broadcast), 7);
    assert_eq!(count(MessageKind::Reply), 4);
    for m in &messages {
        assert!(run.event(m.from).lamport < run.event(m.to).lamport);
    }
}

#[test]
fn vector_clocks_follow_the_messages_and_find_concurrency() {
    let run = read_run("good");
    let messages = causality::messages(&run);
    let clocks = causality::vector_clocks(&run, &messages);
    for m in &messages {
        assert!(happened_before(&clocks[&m.from], &clocks[&m.to]));
    }
    // bob's Join (Lamport 1) and alice's Publish (Lamport 4) are concurrent: bob
    // knew nothing of alice yet, nor she of him.
    let pairs = causality::concurrent_requests(&run, &clocks);
    let described: Vec<(String, String)> = pairs
        .iter()
        .map(|&(a, b)| (run.event(a).describe(), run.event(b).describe()))
        .collect();
    assert!(
        described.contains(&("sent Join".into(), "sent Publish \"hi\"".into())),
        "{described:?}"
    );
}

#[test]
fn the_svg_is_well_formed_with_an_arrow_per_message() {
    let run = read_run("demo");
    let messages = causality::messages(&run);
    let arrows = assert_svg_well_formed(&svg::svg(&run, &messages));
    let count = |kind| messages.iter().filter(|m| m.kind == kind).count();
    assert_eq!(arrows["request"], count(MessageKind::Request));
    assert_eq!(arrows["broadcast"], count(MessageKind::Broadcast));
    assert_eq!(arrows["reply"], count(MessageKind::Reply));
}

#[test]
fn the_svg_keys_every_broadcast_by_number_with_its_whole_text() {
    let run = read_run("demo");
    let messages = causality::messages(&run);
    let svg = svg::svg(&run, &messages);
    assert_svg_well_formed(&svg);
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let texts: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .collect();
    // Nothing is shortened, and a long message is wrapped, not cut: its words
    // follow one another over the key's lines.
    assert!(!texts.iter().any(|t| t.contains('…')), "{texts:?}");
    let key = texts.join(" ");
    for event in run.processes.iter().flat_map(|p| &p.events) {
        if let Action::Broadcast { kind, text, .. } = &event.action
            && *kind == EventKind::Chat
        {
            assert!(
                key.contains(text.as_str()),
                "{text:?} is not whole in {key:?}"
            );
        }
    }
}

#[test]
fn the_svg_escapes_text() {
    let dir = fixture("good");
    let mut processes = Vec::new();
    for name in ["server", "alice", "bob"] {
        let path = dir.join(format!("{name}.log"));
        let text = read(&path).replace("\"hi\"", "\"<b>&amp; 'q' \\\"x\\\"\"");
        processes.push(parse_process(&path, &text).unwrap().unwrap());
    }
    let run = Run::new(processes);
    let messages = causality::messages(&run);
    let svg = svg::svg(&run, &messages);
    assert_svg_well_formed(&svg);
    assert!(svg.contains("&lt;b&gt;&amp;amp;"), "{svg}");
    let mermaid = mermaid::mermaid(&run, &messages);
    assert!(mermaid.contains("#60;b#62;&amp#59;"), "{mermaid}");
}

#[test]
fn a_focused_run_keeps_one_participants_story() {
    let run = causality::focus(&read_run("demo"), &["alice".to_owned()]);
    let labels: Vec<&str> = run.processes.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(labels, ["server", "alice"]);
    // alice was present from broadcast #1 to #11: each reached her or came from her.
    assert_eq!(run.processes[0].events.len(), 11);
    let messages = causality::messages(&run);
    assert!(messages.iter().all(|m| m.from.process + m.to.process == 1));
    assert_svg_well_formed(&svg::svg(&run, &messages));
    assert_mermaid_well_formed(&mermaid::mermaid(&run, &messages));
}

#[test]
fn the_mermaid_diagram_is_well_formed_with_an_arrow_per_message() {
    let run = read_run("demo");
    let messages = causality::messages(&run);
    let text = mermaid::mermaid(&run, &messages);
    assert_eq!(assert_mermaid_well_formed(&text), messages.len());
    assert!(text.contains("Note over P0: rupert disconnected"), "{text}");
    assert!(
        text.contains("P1->>P0: Publish \"happened-before is a pa…\" (L 6 → 7)"),
        "{text}"
    );
}

#[test]
fn the_shiviz_log_is_well_formed_and_causal() {
    let run = read_run("demo");
    let messages = causality::messages(&run);
    let clocks = causality::vector_clocks(&run, &messages);
    let events = assert_shiviz_well_formed(&shiviz::shiviz(&run, &messages, &clocks));
    assert_eq!(events.len(), run.event_ids().count());
    assert!(shiviz::shiviz(&run, &messages, &clocks).starts_with(shiviz::SHIVIZ_REGEX));
}

#[test]
fn the_timeline_is_in_lamport_order() {
    let run = read_run("good");
    let text = timeline::timeline(&run, None);
    let times: Vec<u64> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(times.len(), 23);
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    assert!(
        text.contains("      4  alice    sent Publish \"hi\"  (alice.log:3)"),
        "{text}"
    );
}

fn trace(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_chittychat-trace"))
        .args(args)
        .output()
        .expect("chittychat-trace runs")
}

#[test]
fn the_binary_exits_by_the_verdict() {
    let good = trace(&["check", fixture("good").to_str().unwrap()]);
    assert_eq!(good.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&good.stdout).contains("all rules hold"));

    let broken = trace(&["check", fixture("broken-clock-condition").to_str().unwrap()]);
    assert_eq!(broken.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&broken.stdout);
    assert!(stdout.starts_with("clock condition: "), "{stdout}");
    assert!(stdout.contains("1 violation"), "{stdout}");

    let missing = trace(&["check", "/nonexistent/run"]);
    assert_eq!(missing.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.starts_with("chittychat-trace: error: cannot read /nonexistent/run"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1);
}

#[test]
fn the_binary_writes_diagrams_where_asked() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let svg_path = dir.join("run.svg");
    let out = trace(&[
        "diagram",
        fixture("good").to_str().unwrap(),
        "--svg",
        svg_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_svg_well_formed(&read(&svg_path));
    assert_mermaid_well_formed(&read(&dir.join("run.mmd")));
    let shiviz = trace(&["shiviz", fixture("good").to_str().unwrap()]);
    assert_shiviz_well_formed(&String::from_utf8_lossy(&shiviz.stdout));
    let concurrent = trace(&["concurrent", fixture("good").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&concurrent.stdout).contains("concurrent"));
}
