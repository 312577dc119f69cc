//! How the client shows events to a person: one line each, control characters
//! escaped, colour only on a terminal.

use crate::event::{Event, EventKind};
use std::borrow::Cow;

/// Escapes every control character (`\u{1b}` instead of a raw ESC), so nothing a
/// server or another participant sends can drive this terminal.
pub fn sanitize(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// The line a person sees for `event`: `[Lamport 7] alice: hello` for a chat
/// message, the exact join or leave sentence for a notice.
pub fn event_line(event: &Event, colour: bool) -> String {
    let name = sanitize(&event.participant);
    let text = sanitize(&event.text);
    match (event.kind, colour) {
        (EventKind::Chat, false) => format!("[Lamport {}] {name}: {text}", event.lamport),
        (EventKind::Chat, true) => format!(
            "\x1b[2m[Lamport {}]\x1b[0m \x1b[1;36m{name}\x1b[0m: {text}",
            event.lamport
        ),
        (EventKind::Joined | EventKind::Left, false) => text.into_owned(),
        (EventKind::Joined | EventKind::Left, true) => format!("\x1b[33m{text}\x1b[0m"),
    }
}

/// The line for a past event replayed as history: marked, so that it is not taken
/// for something said just now.
pub fn history_line(event: &Event, colour: bool) -> String {
    let line = event_line(event, false);
    if colour {
        format!("\x1b[2m[history] {line}\x1b[0m")
    } else {
        format!("[history] {line}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn event(kind: EventKind, participant: &str, text: &str) -> Event {
        Event {
            kind,
            participant: Arc::from(participant),
            text: text.into(),
            lamport: 7,
            seq: 3,
        }
    }

    #[test]
    fn plain_lines() {
        assert_eq!(
            event_line(&event(EventKind::Chat, "alice", "hi there"), false),
            "[Lamport 7] alice: hi there"
        );
        let sentence = "Participant bob joined Chitty-Chat at Lamport time 7";
        assert_eq!(
            event_line(&event(EventKind::Joined, "bob", sentence), false),
            sentence
        );
    }

    #[test]
    fn control_characters_never_reach_the_terminal_raw() {
        let line = event_line(
            &event(EventKind::Chat, "m\x1bllory", "\x1b[2J\x07boom"),
            false,
        );
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.contains("\\u{1b}[2J"), "{line}");
        assert_eq!(sanitize("plain"), Cow::Borrowed("plain"));
    }
}
