//! The run as a space-time diagram in SVG: one vertical line per process, Lamport
//! time growing downward, each event a dot labelled with its Lamport time, and an
//! arrow for every message, from its send down to its receive.
//!
//! An event's height is its Lamport time, so every arrow points down (the clock
//! condition, drawn), and no two labels of one process share a row (a process
//! never repeats a time). The server's broadcasts carry only their sequence number
//! and time left of its line; a key under the drawing gives each one's full text,
//! wrapped rather than cut. Each client's labels sit right of its own line, on a
//! white ground that keeps them legible where other processes' arrows cross.

use super::causality::{Message, MessageKind};
use super::escape;
use super::parse::{Action, Role, Run, shorten};
use crate::event::EventKind;
use std::fmt::Write;

/// Pixels per unit of Lamport time: room for the fans of broadcasts that follow
/// one another closely to stay apart.
const ROW: f64 = 22.0;
/// Pixels between two process lines.
const LANE_GAP: f64 = 130.0;
/// The least room left of the server's line, for its sequence numbers and times.
const MIN_MARGIN: f64 = 70.0;
/// Room right of the last process line, for its labels.
const RIGHT_MARGIN: f64 = 90.0;
/// The labels' font size in pixels: large enough to read when the drawing is
/// scaled to an A4 page.
const FONT: f64 = 11.0;
/// A generous width of one character at the labels' 11 px (DejaVu Sans averages
/// less), so that the room reserved for a label is never too small.
const CHAR_WIDTH: f64 = 6.8;
/// From a row's middle down to its text's baseline.
const BASELINE: f64 = 4.0;
/// The legend's width, which the drawing never gets narrower than.
const LEGEND_WIDTH: f64 = 620.0;
/// Where the first Lamport row is.
const TOP: f64 = 70.0;
/// The height of one line of the key.
const KEY_LINE: f64 = 14.0;
/// The gap between the key's two columns.
const KEY_GAP: f64 = 20.0;
/// The radius of an event's dot.
const DOT: f64 = 3.5;
/// An arrowhead's length and half its width.
const HEAD_LENGTH: f64 = 7.0;
const HEAD_HALF_WIDTH: f64 = 2.8;
/// The colours of requests, broadcasts and replies, arrows and dots alike.
const REQUEST: &str = "#1f5fa8";
const BROADCAST: &str = "#8a8a8a";
const REPLY: &str = "#2e8b3a";

/// The SVG document for `run`.
pub fn svg(run: &Run, messages: &[Message]) -> String {
    let layout = Layout::new(run);
    let key = key_entries(run, &layout);
    let key_height = key_height(&key);
    let legend = layout.bottom + 22.0;
    let height = legend + 20.0 + key_height;

    let mut out = String::new();
    let width = layout.width;
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="DejaVu Sans, Verdana, sans-serif" font-size="{FONT}">"#
    );
    out.push_str("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    let _ = writeln!(
        out,
        r#"<text x="10" y="18" font-size="14" font-weight="bold">Chitty-Chat run: Lamport time grows downward</text>"#
    );
    draw_lanes(&mut out, run, &layout);
    draw_arrows(&mut out, run, messages, &layout);
    draw_events(&mut out, run, &layout);
    draw_legend(&mut out, legend);
    draw_key(&mut out, &key, legend + 30.0);
    out.push_str("</svg>\n");
    out
}

/// Where things go: the process lines' positions and the drawing's extent.
struct Layout {
    /// The server's line (the first process's).
    first_lane: f64,
    /// The whole drawing's width.
    width: f64,
    /// Just below the latest event.
    bottom: f64,
}

impl Layout {
    fn new(run: &Run) -> Self {
        let max_time = run
            .processes
            .iter()
            .flat_map(|p| p.events.iter().map(|e| e.lamport))
            .max()
            .unwrap_or(0);
        let lanes = run.processes.len().max(1);
        // Room left of the server's line for the longest sequence number, a gap,
        // and the time.
        let first_lane = run
            .processes
            .iter()
            .flat_map(|p| &p.events)
            .filter_map(|e| match e.action {
                Action::Broadcast { seq, .. } => Some(seq),
                _ => None,
            })
            .map(|seq| CHAR_WIDTH * (format!("#{seq}").len() as f64) + 50.0)
            .fold(MIN_MARGIN, f64::max);
        let width = (first_lane + LANE_GAP * (lanes as f64 - 1.0) + RIGHT_MARGIN).max(LEGEND_WIDTH);
        Layout {
            first_lane,
            width,
            bottom: y(max_time) + 20.0,
        }
    }

    /// The horizontal position of process `p`'s line.
    fn x(&self, p: usize) -> f64 {
        self.first_lane + LANE_GAP * p as f64
    }
}

/// Each process's name and its line, from its first event to its last.
fn draw_lanes(out: &mut String, run: &Run, layout: &Layout) {
    for (p, process) in run.processes.iter().enumerate() {
        let last = process.events.iter().map(|e| e.lamport).max().unwrap_or(0);
        let first = process.events.iter().map(|e| e.lamport).min().unwrap_or(0);
        let colour = if process.role == Role::Server {
            "#333"
        } else {
            "#666"
        };
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="13" font-weight="bold">{}</text>"#,
            layout.x(p),
            TOP - 28.0,
            escape(&shorten(&process.label, 20), &XML_ENTITIES)
        );
        let _ = writeln!(
            out,
            r#"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="{colour}" stroke-width="1.5"/>"#,
            layout.x(p),
            y(first) - 10.0,
            y(last) + 10.0
        );
    }
}

/// An arrow per message, drawn under the dots and labels.
fn draw_arrows(out: &mut String, run: &Run, messages: &[Message], layout: &Layout) {
    for message in messages {
        let (x1, y1) = (
            layout.x(message.from.process),
            y(run.event(message.from).lamport),
        );
        let (x2, y2) = (
            layout.x(message.to.process),
            y(run.event(message.to).lamport),
        );
        let (dx, dy) = (x2 - x1, y2 - y1);
        let length = (dx * dx + dy * dy).sqrt().max(1.0);
        // Stop at the dot's rim, so the head is seen.
        let (x2, y2) = (x2 - dx / length * DOT, y2 - dy / length * DOT);
        let (class, colour, style) = match message.kind {
            MessageKind::Request => ("request", REQUEST, r#"stroke-width="1.4""#),
            MessageKind::Broadcast => ("broadcast", BROADCAST, r#"stroke-width="0.7""#),
            MessageKind::Reply => ("reply", REPLY, r#"stroke-width="1" stroke-dasharray="4 3""#),
        };
        let _ = writeln!(
            out,
            r#"<line class="{class}" x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{colour}" {style}/>{}"#,
            head(x1, y1, x2, y2, colour)
        );
    }
}

/// Each event's dot (with its description as a tooltip) and label.
fn draw_events(out: &mut String, run: &Run, layout: &Layout) {
    for (p, process) in run.processes.iter().enumerate() {
        for event in &process.events {
            let (cx, cy) = (layout.x(p), y(event.lamport));
            let fill = match event.action {
                Action::Broadcast { .. } => "#333",
                Action::Sent { .. } => REQUEST,
                Action::Reply { .. } => REPLY,
                Action::Received { .. } | Action::Applied { .. } => BROADCAST,
            };
            let _ = writeln!(
                out,
                r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="{DOT}" fill="{fill}"><title>{}</title></circle>"#,
                escape(
                    &format!(
                        "{} at Lamport {}: {}",
                        process.label,
                        event.lamport,
                        event.describe()
                    ),
                    &XML_ENTITIES
                )
            );
            // Left of the server's line, where no arrow ends: requests arrive from
            // the right. The text is in the key.
            if let Action::Broadcast { seq, .. } = event.action {
                let _ = writeln!(
                    out,
                    r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#333">#{seq}</text><text x="{:.1}" y="{:.1}" text-anchor="end" font-weight="bold">{}</text>"##,
                    cx - 30.0,
                    cy + BASELINE,
                    cx - 7.0,
                    cy + BASELINE,
                    event.lamport
                );
                continue;
            }
            // Right of a client's line: its time, and the call for a request, on
            // white so that arrows passing by do not strike it through.
            let label = match &event.action {
                Action::Sent { rpc, .. } => format!("{} {rpc}", event.lamport),
                _ => event.lamport.to_string(),
            };
            let _ = writeln!(
                out,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{FONT}" fill="white"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                cx + 5.0,
                cy - FONT / 2.0,
                CHAR_WIDTH * label.chars().count() as f64 + 2.0,
                cx + 6.0,
                cy + BASELINE,
                escape(&label, &XML_ENTITIES)
            );
        }
    }
}

/// The three kinds of arrow, in a row at `top`.
fn draw_legend(out: &mut String, top: f64) {
    let items = [
        (REQUEST, "", "request (Join, Publish, Leave)"),
        (BROADCAST, "", "broadcast event on a feed"),
        (REPLY, r#" stroke-dasharray="4 3""#, "reply"),
    ];
    let mut lx = 10.0;
    for (colour, dash, text) in items {
        let _ = writeln!(
            out,
            r#"<line x1="{lx:.1}" y1="{top:.1}" x2="{:.1}" y2="{top:.1}" stroke="{colour}" stroke-width="1.4"{dash}/>{}<text x="{:.1}" y="{:.1}">{text}</text>"#,
            lx + 30.0,
            head(lx, top, lx + 30.0, top, colour),
            lx + 36.0,
            top + BASELINE
        );
        lx += 50.0 + CHAR_WIDTH * text.len() as f64;
    }
}

/// One broadcast in the key: its sequence number, and its text in lines that fit
/// a column, placed in a column at a line.
struct KeyEntry {
    seq: String,
    lines: Vec<String>,
    column: usize,
    line: usize,
    /// The left edge of the entry's column.
    left: f64,
    /// Where the entry's text starts, after the widest sequence number.
    indent: f64,
}

/// The server's broadcasts in order, wrapped and laid out in two columns of
/// about equal length (filled down, then across). A cluster's broadcasts are
/// spread over its nodes' logs: the sequence number puts them in order.
fn key_entries(run: &Run, layout: &Layout) -> Vec<KeyEntry> {
    let mut broadcasts: Vec<(u64, String)> = run
        .processes
        .iter()
        .flat_map(|p| &p.events)
        .filter_map(|e| broadcast_text(&e.action))
        .collect();
    broadcasts.sort_by_key(|(seq, _)| *seq);
    let broadcasts: Vec<(String, String)> = broadcasts
        .into_iter()
        .map(|(seq, text)| (format!("#{seq}"), text))
        .collect();
    let seq_chars = broadcasts
        .iter()
        .map(|(seq, _)| seq.chars().count())
        .max()
        .unwrap_or(0);
    let indent = CHAR_WIDTH * (seq_chars as f64 + 1.0);
    let column_width = (layout.width - 20.0 - KEY_GAP) / 2.0;
    let chars = (((column_width - indent) / CHAR_WIDTH).floor() as usize).max(10);
    let mut entries: Vec<KeyEntry> = broadcasts
        .into_iter()
        .map(|(seq, text)| KeyEntry {
            seq,
            lines: wrap(&text, chars),
            column: 0,
            line: 0,
            left: 10.0,
            indent,
        })
        .collect();
    let total: usize = entries.iter().map(|e| e.lines.len()).sum();
    let mut line = 0;
    let mut column = 0;
    for entry in &mut entries {
        if column == 0 && line > 0 && 2 * line >= total {
            column = 1;
            line = 0;
        }
        entry.column = column;
        entry.line = line;
        entry.left = 10.0 + column as f64 * (column_width + KEY_GAP);
        line += entry.lines.len();
    }
    entries
}

/// The key's height, with its heading: nothing without broadcasts.
fn key_height(entries: &[KeyEntry]) -> f64 {
    let lines = entries
        .iter()
        .map(|e| e.line + e.lines.len())
        .max()
        .unwrap_or(0);
    if lines == 0 {
        0.0
    } else {
        18.0 + KEY_LINE * lines as f64 + 8.0
    }
}

/// The key under the legend, from `top`: each broadcast's sequence number and text.
fn draw_key(out: &mut String, entries: &[KeyEntry], top: f64) {
    if entries.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        r#"<text x="10" y="{:.1}" font-weight="bold">The server's broadcasts, by sequence number</text>"#,
        top + BASELINE
    );
    for entry in entries {
        let first = top + 18.0 + KEY_LINE * entry.line as f64;
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" fill="#333">{}</text>"##,
            entry.left,
            first + BASELINE,
            escape(&entry.seq, &XML_ENTITIES)
        );
        for (i, text) in entry.lines.iter().enumerate() {
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                entry.left + entry.indent,
                first + KEY_LINE * i as f64 + BASELINE,
                escape(text, &XML_ENTITIES)
            );
        }
    }
}

/// A broadcast's number and text: `#4`, `alice: hello`; `#7`, `bob left
/// (disconnected)`.
fn broadcast_text(action: &Action) -> Option<(u64, String)> {
    let Action::Broadcast {
        kind,
        participant,
        text,
        seq,
        cause,
        ..
    } = action
    else {
        return None;
    };
    let what = match kind {
        EventKind::Chat => format!("{participant}: {text}"),
        _ if cause.is_dropout() => format!("{participant} {kind} ({cause})"),
        _ => format!("{participant} {kind}"),
    };
    Some((*seq, what))
}

/// `text` in lines of at most `width` characters, broken between words where it
/// can be and inside a word only when the word alone is longer than a line.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        let used = line.chars().count();
        if used > 0 && used + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        while word.len() > width {
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            lines.push(word.drain(..width).collect());
        }
        if !word.is_empty() {
            if !line.is_empty() {
                line.push(' ');
            }
            line.extend(word);
        }
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// An arrowhead at `(x2, y2)` for a line from `(x1, y1)`: a filled triangle
/// rather than an SVG marker, which not every renderer draws (weasyprint does not).
fn head(x1: f64, y1: f64, x2: f64, y2: f64, colour: &str) -> String {
    let (dx, dy) = (x2 - x1, y2 - y1);
    let length = (dx * dx + dy * dy).sqrt().max(1.0);
    let (ux, uy) = (dx / length, dy / length);
    let (bx, by) = (x2 - ux * HEAD_LENGTH, y2 - uy * HEAD_LENGTH);
    let (px, py) = (-uy * HEAD_HALF_WIDTH, ux * HEAD_HALF_WIDTH);
    format!(
        r#"<polygon points="{x2:.1},{y2:.1} {:.1},{:.1} {:.1},{:.1}" fill="{colour}"/>"#,
        bx + px,
        by + py,
        bx - px,
        by - py
    )
}

/// The height of Lamport time `t`.
fn y(t: u64) -> f64 {
    TOP + ROW * t as f64
}

/// What XML would read as markup, and its entities.
const XML_ENTITIES: [(char, &str); 5] = [
    ('&', "&amp;"),
    ('<', "&lt;"),
    ('>', "&gt;"),
    ('"', "&quot;"),
    ('\'', "&apos;"),
];

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn wrap_breaks_between_words_and_splits_only_overlong_ones() {
        assert_eq!(
            wrap("happened-before is a partial order", 16),
            ["happened-before", "is a partial", "order"]
        );
        assert_eq!(wrap("abcdefghij xy", 4), ["abcd", "efgh", "ij", "xy"]);
        assert_eq!(wrap("", 8), [""]);
    }
}
