//! The run as a space-time diagram in SVG: one vertical line per process, Lamport
//! time growing downward, each event a dot labelled with its Lamport time, and an
//! arrow for every message, from its send down to its receive.
//!
//! An event's height is its Lamport time, so every arrow points down (the clock
//! condition, drawn), and no two labels of one process share a row (a process
//! never repeats a time). The server's times and broadcast texts sit left of its
//! line, one per row; each client's labels sit right of its own line, short of the
//! next one.

use super::causality::{Message, MessageKind};
use super::parse::{Action, Role, Run, shorten};
use std::fmt::Write;

/// Pixels per unit of Lamport time.
const ROW: f64 = 17.0;
/// Pixels between two process lines.
const LANE_GAP: f64 = 150.0;
/// The least room left of the server's line, for its times and broadcast texts.
const MIN_MARGIN: f64 = 120.0;
/// A generous width of one character at the labels' 10 px (DejaVu Sans averages
/// less), so that the room reserved for a label is never too small.
const CHAR_WIDTH: f64 = 6.2;
/// The legend's width, which the drawing never gets narrower than.
const LEGEND_WIDTH: f64 = 620.0;
/// How many characters of a broadcast text are shown.
const BROADCAST_CHARS: usize = 34;
/// Where the first Lamport row is.
const TOP: f64 = 70.0;
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
    let max_time = run
        .processes
        .iter()
        .flat_map(|p| p.events.iter().map(|e| e.lamport))
        .max()
        .unwrap_or(0);
    let lanes = run.processes.len().max(1);
    // Room left of the server's line for the longest broadcast text and the time.
    let first_lane = run
        .processes
        .iter()
        .flat_map(|p| &p.events)
        .filter_map(|e| broadcast_label(&e.action))
        .map(|label| CHAR_WIDTH * label.chars().count() as f64 + 50.0)
        .fold(MIN_MARGIN, f64::max);
    let width = (first_lane + LANE_GAP * (lanes as f64 - 1.0) + 130.0).max(LEGEND_WIDTH);
    let bottom = y(max_time) + 20.0;
    let height = bottom + 50.0;
    let x = |p: usize| first_lane + LANE_GAP * p as f64;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="DejaVu Sans, Verdana, sans-serif" font-size="10">"#
    );
    out.push_str("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    let _ = writeln!(
        out,
        r#"<text x="10" y="18" font-size="13" font-weight="bold">Chitty-Chat run: Lamport time grows downward</text>"#
    );

    // Process lines and their names.
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
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="12" font-weight="bold">{}</text>"#,
            x(p),
            TOP - 28.0,
            escape(&shorten(&process.label, 20))
        );
        let _ = writeln!(
            out,
            r#"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="{colour}" stroke-width="1.5"/>"#,
            x(p),
            y(first) - 10.0,
            y(last) + 10.0
        );
    }

    // Arrows under the dots.
    for message in messages {
        let (x1, y1) = (x(message.from.process), y(run.event(message.from).lamport));
        let (x2, y2) = (x(message.to.process), y(run.event(message.to).lamport));
        let (dx, dy) = (x2 - x1, y2 - y1);
        let length = (dx * dx + dy * dy).sqrt().max(1.0);
        // Stop at the dot's rim, so the head is seen.
        let (x2, y2) = (x2 - dx / length * DOT, y2 - dy / length * DOT);
        let (class, colour, style) = match message.kind {
            MessageKind::Request => ("request", REQUEST, r#"stroke-width="1.4""#),
            MessageKind::Broadcast => ("broadcast", BROADCAST, r#"stroke-width="0.8""#),
            MessageKind::Reply => ("reply", REPLY, r#"stroke-width="1" stroke-dasharray="4 3""#),
        };
        let _ = writeln!(
            out,
            r#"<line class="{class}" x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{colour}" {style}/>{}"#,
            head(x1, y1, x2, y2, colour)
        );
    }

    // Dots and labels.
    for (p, process) in run.processes.iter().enumerate() {
        for event in &process.events {
            let (cx, cy) = (x(p), y(event.lamport));
            let fill = match event.action {
                Action::Broadcast { .. } => "#333",
                Action::Sent { .. } => REQUEST,
                Action::Reply { .. } => REPLY,
                Action::Received { .. } => BROADCAST,
            };
            let _ = writeln!(
                out,
                r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="{DOT}" fill="{fill}"><title>{}</title></circle>"#,
                escape(&format!(
                    "{} at Lamport {}: {}",
                    process.label,
                    event.lamport,
                    event.describe()
                ))
            );
            // Left of the server's line, where no arrow ends: requests arrive from
            // the right.
            if let Some(label) = broadcast_label(&event.action) {
                let _ = writeln!(
                    out,
                    r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#333">{}</text><text x="{:.1}" y="{:.1}" text-anchor="end" font-weight="bold">{}</text>"##,
                    cx - 30.0,
                    cy + 3.5,
                    escape(&label),
                    cx - 7.0,
                    cy + 3.5,
                    event.lamport
                );
                continue;
            }
            // Right of a client's line: its time, and the call for a request. The
            // text is shown once, at the server's broadcast.
            let label = match &event.action {
                Action::Sent { rpc, .. } => format!("{} {rpc}", event.lamport),
                _ => event.lamport.to_string(),
            };
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
                cx + 6.0,
                cy + 3.5,
                escape(&label)
            );
        }
    }

    // Legend.
    let legend = bottom + 22.0;
    let items = [
        (REQUEST, "", "request (Join, Publish, Leave)"),
        (BROADCAST, "", "broadcast event on a feed"),
        (REPLY, r#" stroke-dasharray="4 3""#, "reply"),
    ];
    let mut lx = 10.0;
    for (colour, dash, text) in items {
        let _ = writeln!(
            out,
            r#"<line x1="{lx:.1}" y1="{legend:.1}" x2="{:.1}" y2="{legend:.1}" stroke="{colour}" stroke-width="1.4"{dash}/>{}<text x="{:.1}" y="{:.1}">{text}</text>"#,
            lx + 30.0,
            head(lx, legend, lx + 30.0, legend, colour),
            lx + 36.0,
            legend + 3.5
        );
        lx += 50.0 + 6.0 * text.len() as f64;
    }
    out.push_str("</svg>\n");
    out
}

/// The text beside a broadcast: `#4 alice: hello`, `#7 bob left (disconnected)`.
fn broadcast_label(action: &Action) -> Option<String> {
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
    let what = match (kind.as_str(), cause.as_str()) {
        ("chat", _) => format!("{participant}: {text}"),
        (_, "disconnected" | "too_slow") => format!("{participant} {kind} ({cause})"),
        _ => format!("{participant} {kind}"),
    };
    Some(format!("#{seq} {}", shorten(&what, BROADCAST_CHARS)))
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

/// Escapes text for XML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}
