//! The run as a Mermaid `sequenceDiagram`, which GitHub renders in Markdown: every
//! request, broadcast and reply as an arrow labelled with the Lamport times of its
//! send and its receive.

use super::causality::{Message, MessageKind};
use super::escape;
use super::parse::{Action, Run, shorten};
use crate::event::EventKind;
use std::fmt::Write;

/// How many characters of a chat message an arrow shows.
const TEXT_CHARS: usize = 24;

/// The Mermaid source for `run`.
pub fn mermaid(run: &Run, messages: &[Message]) -> String {
    let mut out = String::from("sequenceDiagram\n");
    for (p, process) in run.processes.iter().enumerate() {
        let _ = writeln!(
            out,
            "    participant P{p} as {}",
            escape(&process.label, &MERMAID_ENTITIES)
        );
    }
    // Broadcasts nobody asked for (a participant vanished) get a note, so the leave
    // notices that follow have a visible cause.
    let mut noted = std::collections::HashSet::new();
    for message in messages {
        let (from, to) = (run.event(message.from), run.event(message.to));
        let times = format!("L {} → {}", from.lamport, to.lamport);
        let (arrow, label) = match (&message.kind, &from.action, &to.action) {
            (MessageKind::Request, Action::Sent { rpc, text }, _) => (
                "->>",
                match text {
                    Some(text) => format!("{rpc} \"{}\" ({times})", shorten(text, TEXT_CHARS)),
                    None => format!("{rpc} ({times})"),
                },
            ),
            (MessageKind::Reply, _, Action::Reply { rpc, seq, .. }) => {
                ("-->>", format!("{rpc} reply #{seq} ({times})"))
            }
            (
                MessageKind::Broadcast,
                Action::Broadcast {
                    kind,
                    participant,
                    text,
                    seq,
                    cause,
                    ..
                },
                _,
            ) => {
                if cause.is_dropout() && noted.insert(*seq) {
                    let _ = writeln!(
                        out,
                        "    Note over P{}: {} {cause}: leave at L {}",
                        message.from.process,
                        escape(participant, &MERMAID_ENTITIES),
                        from.lamport
                    );
                }
                let what = match kind {
                    EventKind::Chat => format!("{participant}: \"{}\"", shorten(text, TEXT_CHARS)),
                    _ => format!("{participant} {kind}"),
                };
                ("-)", format!("#{seq} {what} ({times})"))
            }
            _ => continue,
        };
        let _ = writeln!(
            out,
            "    P{}{arrow}P{}: {}",
            message.from.process,
            message.to.process,
            escape(&label, &MERMAID_ENTITIES)
        );
    }
    out
}

/// What Mermaid would read as syntax, and its entity codes.
const MERMAID_ENTITIES: [(char, &str); 4] =
    [('#', "#35;"), (';', "#59;"), ('<', "#60;"), ('>', "#62;")];
