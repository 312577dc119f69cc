//! The run as text: every event of every process in (Lamport time, process) order.

use super::causality::{self, VectorClock, format_clock};
use super::parse::{EventId, Run};
use std::collections::HashMap;
use std::fmt::Write;

/// One line per event: Lamport time, process, what happened, and the log line; with
/// `clocks`, each event's vector clock as well.
pub fn timeline(run: &Run, clocks: Option<&HashMap<EventId, VectorClock>>) -> String {
    let width = run
        .processes
        .iter()
        .map(|p| p.label.chars().count())
        .max()
        .unwrap_or(0)
        .max("process".len());
    let mut out = String::new();
    let _ = write!(out, "{:>7}  {:<width$}  event", "Lamport", "process");
    if clocks.is_some() {
        out.push_str("  [vector clock]");
    }
    out.push('\n');
    for id in causality::linear_order(run) {
        let event = run.event(id);
        let name = &run.processes[id.process].label;
        let _ = write!(
            out,
            "{:>7}  {name:<width$}  {}  ({})",
            event.lamport,
            event.describe(),
            run.location(id)
        );
        if let Some(clock) = clocks.and_then(|c| c.get(&id)) {
            let _ = write!(out, "  {}", format_clock(run, clock));
        }
        out.push('\n');
    }
    out
}
