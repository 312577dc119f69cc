//! Logical time made visible: reads the JSON logs of a run, checks them for the
//! clock condition and sound delivery, and draws them.
//!
//! - [`parse`]: log lines into processes and events.
//! - [`causality`]: sends paired with receives; process order, vector clocks,
//!   concurrency.
//! - [`check`]: the rules a run must satisfy, and precise explanations of violations.
//! - [`timeline`]: every event in (Lamport time, process) order, as text.
//! - [`svg`]: the space-time diagram.
//! - [`mermaid`]: the same run as a Mermaid sequence diagram.
//! - [`shiviz`]: the run with vector clocks, for ShiViz.

pub mod causality;
pub mod check;
pub mod mermaid;
pub mod parse;
pub mod shiviz;
pub mod svg;
pub mod timeline;

use std::path::{Path, PathBuf};

/// The names of the files [`write_diagrams`] writes into a run's folder.
pub const DIAGRAM_FILES: [&str; 4] = ["diagram.svg", "diagram.mmd", "run.shiviz", "timeline.txt"];

/// Writes the SVG and Mermaid diagrams, the ShiViz log and the timeline of `run`
/// into `dir`, and returns their paths.
pub fn write_diagrams(run: &parse::Run, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let messages = causality::messages(run);
    let clocks = causality::vector_clocks(run, &messages);
    let contents = [
        svg::svg(run, &messages),
        mermaid::mermaid(run, &messages),
        shiviz::shiviz(run, &messages, &clocks),
        timeline::timeline(run, Some(&clocks)),
    ];
    let mut written = Vec::new();
    for (name, content) in DIAGRAM_FILES.iter().zip(contents) {
        let path = dir.join(name);
        std::fs::write(&path, content)?;
        written.push(path);
    }
    Ok(written)
}

/// `text` with every character that `entities` names replaced by its entity: the
/// one escaping of the exporters, each with the table of the format it writes.
fn escape(text: &str, entities: &[(char, &str)]) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match entities.iter().find(|(special, _)| *special == c) {
            Some((_, entity)) => out.push_str(entity),
            None => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escape_replaces_only_what_the_table_names() {
        let table = [('<', "&lt;"), ('#', "#35;")];
        assert_eq!(escape("a<b> #1 é", &table), "a&lt;b> #35;1 é");
        assert_eq!(escape("", &table), "");
    }
}
