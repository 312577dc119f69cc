//! Dependencies point one way: the client library never reaches the server's
//! modules, nor the server the client's, however indirectly. Both may use what they
//! share (the clock, validation, the domain error, the wire contract). The check
//! reads `crate::` paths in `src/`, so it fails as soon as a cycle comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The server's modules.
const SERVER: &[&str] = &[
    "server",
    "cluster",
    "room",
    "feed",
    "pace",
    "log",
    "connection",
    "health",
    "status",
    "wire",
];

/// The client's modules.
const CLIENT: &[&str] = &["client", "health_probe", "client_app", "display", "script"];

/// Each top-level module of the library, with the modules its code names through
/// `crate::` (comments left out: a doc link is no dependency).
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut pending = vec![src.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(&src).unwrap();
            let top = relative.components().next().unwrap().as_os_str();
            let top = Path::new(top)
                .file_stem()
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            if top == "bin" || top == "lib" {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") {
                continue;
            }
            let code = std::fs::read_to_string(&path).unwrap();
            let uses = graph.entry(top.clone()).or_default();
            for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                for (at, _) in line.match_indices("crate::") {
                    let rest = &line[at + "crate::".len()..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != top {
                        uses.insert(name);
                    }
                }
            }
        }
    }
    graph
}

/// Every module `from` reaches, directly or not.
fn reach(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut pending = vec![from.to_owned()];
    while let Some(module) = pending.pop() {
        for next in graph.get(&module).into_iter().flatten() {
            if seen.insert(next.clone()) {
                pending.push(next.clone());
            }
        }
    }
    seen
}

#[test]
fn the_client_and_the_server_never_reach_each_other() {
    let graph = module_graph();
    for module in SERVER.iter().chain(CLIENT) {
        assert!(graph.contains_key(*module), "no module {module} in src/");
    }
    let mut wrong = Vec::new();
    for (from, forbidden) in [(CLIENT, SERVER), (SERVER, CLIENT)] {
        for module in from {
            for reached in reach(&graph, module) {
                if forbidden.contains(&reached.as_str()) {
                    wrong.push(format!("{module} reaches {reached}"));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies that point the wrong way: {wrong:#?}"
    );
}
