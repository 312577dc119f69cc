//! The run in ShiViz's input format, with vector clocks computed from the messages,
//! so that ShiViz (<https://bestchai.bitbucket.io/shiviz/>) can show which events
//! are concurrent, something Lamport times alone cannot.
//!
//! The file is: the parser regular expression, an empty line (no delimiter between
//! executions), then one line per event, `host {"host": n, ...} event`, in an order
//! that respects happened-before. Each host's own entry starts at 1 and rises by one
//! per event.

use super::causality::{self, Message, VectorClock};
use super::parse::{EventId, Run};
use std::collections::HashMap;
use std::fmt::Write;

/// The regular expression each event line matches, in ShiViz's named-group syntax.
/// Host names hold no whitespace and clocks no `}`, so the groups cannot overreach.
pub const SHIVIZ_REGEX: &str = r"(?<host>\S+) (?<clock>\{[^}]*\}) (?<event>.*)";

/// A process's name as a ShiViz host: whitespace would end the host group early.
pub fn host_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect()
}

/// The ShiViz log of `run`.
pub fn shiviz(run: &Run, messages: &[Message], clocks: &HashMap<EventId, VectorClock>) -> String {
    let hosts: Vec<String> = run.processes.iter().map(|p| host_name(&p.label)).collect();
    let peers: HashMap<EventId, EventId> = messages.iter().map(|m| (m.to, m.from)).collect();
    let mut out = format!("{SHIVIZ_REGEX}\n\n");
    for id in causality::linear_order(run) {
        let event = run.event(id);
        let clock = &clocks[&id];
        let entries: Vec<String> = clock
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(p, n)| {
                // Names are JSON strings; serde_json escapes what needs it.
                let key = serde_json::to_string(&hosts[p]).unwrap_or_default();
                format!("{key}: {n}")
            })
            .collect();
        let from = peers
            .get(&id)
            .map(|from| {
                format!(
                    " <- {} at Lamport {}",
                    hosts[from.process],
                    run.event(*from).lamport
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{} {{{}}} Lamport {}: {}{from}",
            hosts[id.process],
            entries.join(", "),
            event.lamport,
            event.describe()
        );
    }
    out
}
