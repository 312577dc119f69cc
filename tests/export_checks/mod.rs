//! Checks on the exporters' output shared by the trace and demo tests: each output
//! must be well-formed for the tool that reads it.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::path::Path;

/// The SVG parses as XML; every arrow points down (from the earlier Lamport time
/// to the later); no two labels on one row overlap, and every label lies inside
/// the drawing, uncut. Returns the arrow count by class.
pub fn assert_svg_well_formed(svg: &str) -> HashMap<String, usize> {
    let doc = roxmltree::Document::parse(svg).expect("the SVG parses as XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let svg_width: f64 = doc
        .root_element()
        .attribute("width")
        .expect("a width")
        .parse()
        .expect("a number");
    let mut arrows: HashMap<String, usize> = HashMap::new();
    let number = |node: roxmltree::Node<'_, '_>, name: &str| -> f64 {
        node.attribute(name)
            .unwrap_or_else(|| panic!("attribute {name}"))
            .parse()
            .expect("a number")
    };
    // Labels as (y, left, right), with widths estimated at 6.8 px per character
    // of the 11 px font (an over-estimate for DejaVu Sans).
    let mut labels: Vec<(f64, f64, f64, String)> = Vec::new();
    for node in doc.descendants() {
        match node.tag_name().name() {
            "line" => {
                if let Some(class) = node.attribute("class") {
                    assert!(
                        number(node, "y2") > number(node, "y1"),
                        "a {class} arrow points up: {node:?}"
                    );
                    *arrows.entry(class.to_owned()).or_default() += 1;
                }
            }
            "text" => {
                let text: String = node.text().unwrap_or_default().to_owned();
                let (x, y) = (number(node, "x"), number(node, "y"));
                let width = 6.8 * text.chars().count() as f64;
                let (left, right) = match node.attribute("text-anchor") {
                    Some("end") => (x - width, x),
                    Some("middle") => (x - width / 2.0, x + width / 2.0),
                    _ => (x, x + width),
                };
                assert!(
                    left >= 0.0 && right <= svg_width,
                    "a label runs off the drawing ({left:.0} to {right:.0} of {svg_width:.0}): {text:?}"
                );
                labels.push((y, left, right, text));
            }
            _ => {}
        }
    }
    for (i, a) in labels.iter().enumerate() {
        for b in &labels[i + 1..] {
            let same_row = (a.0 - b.0).abs() < 10.0;
            let apart = a.2 <= b.1 || b.2 <= a.1;
            assert!(
                !same_row || apart,
                "labels overlap: {:?} and {:?}",
                a.3,
                b.3
            );
        }
    }
    arrows
}

/// Every line after the header is a participant, a note, or an arrow between
/// declared participants. Returns the number of arrows.
pub fn assert_mermaid_well_formed(mermaid: &str) -> usize {
    let arrow = regex::Regex::new(r"^    (P\d+)(->>|-->>|-\))(P\d+): [^\n]+$").unwrap();
    let participant = regex::Regex::new(r"^    participant (P\d+) as \S+$").unwrap();
    let note = regex::Regex::new(r"^    Note over P\d+: .+$").unwrap();
    let entity = regex::Regex::new(r"#\d+;").unwrap();
    let mut lines = mermaid.lines();
    assert_eq!(lines.next(), Some("sequenceDiagram"));
    let mut declared = Vec::new();
    let mut arrows = 0;
    for line in lines {
        if let Some(c) = participant.captures(line) {
            declared.push(c[1].to_owned());
        } else if let Some(c) = arrow.captures(line) {
            assert!(declared.contains(&c[1].to_owned()) && declared.contains(&c[3].to_owned()));
            let bare = entity.replace_all(line, "");
            assert!(
                !bare.contains(';'),
                "a raw ';' ends a Mermaid statement: {line}"
            );
            arrows += 1;
        } else {
            assert!(note.is_match(line), "not Mermaid: {line:?}");
        }
    }
    arrows
}

/// The regex line, an empty line, then events that each match the regex, with a
/// JSON vector clock holding the host, whose own entry counts its events from 1.
/// Returns each event's host and clock.
pub fn assert_shiviz_well_formed(shiviz: &str) -> Vec<(String, HashMap<String, u64>)> {
    let mut lines = shiviz.lines();
    let declared = lines.next().expect("a regex line");
    assert_eq!(
        lines.next(),
        Some(""),
        "the second line is the (empty) delimiter"
    );
    let regex = regex::Regex::new(&format!("^{declared}$")).expect("the declared regex compiles");
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut events = Vec::new();
    for line in lines {
        let c = regex
            .captures(line)
            .unwrap_or_else(|| panic!("line does not match {declared}: {line}"));
        let host = c["host"].to_owned();
        let clock: HashMap<String, u64> =
            serde_json::from_str(&c["clock"]).expect("the clock is a JSON object of counts");
        let count = counts.entry(host.clone()).or_default();
        *count += 1;
        assert_eq!(
            clock.get(&host),
            Some(&*count),
            "{host}'s own entry in {line}"
        );
        assert!(!c["event"].is_empty());
        events.push((host, clock));
    }
    assert!(!events.is_empty());
    events
}

/// Reads a file to a string, naming it on failure.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
