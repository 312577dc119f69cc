//! How the client shows events to a person: one line each, control characters
//! escaped; at a prompt, with colour, the local time, and one's own messages set
//! apart.

use crate::event::{Event, EventKind};
use std::borrow::Cow;
use std::sync::Arc;
use time::{OffsetDateTime, UtcOffset};

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

/// Whether the person wants colour: `NO_COLOR` (<https://no-color.org>) unset or
/// empty. Only a terminal gets colour at all.
pub fn colour_wanted() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

/// How the interactive client dresses its lines.
#[derive(Debug, Clone, Default)]
pub struct Style {
    /// Whether to use colour (a terminal, and `NO_COLOR` unset).
    pub colour: bool,
    /// The participant's own name: its messages look different from others'.
    pub me: Option<Arc<str>>,
    /// The local time zone, to show the wall-clock time (HH:MM) of each event;
    /// `None` to show none.
    pub clock: Option<UtcOffset>,
}

impl Style {
    /// Plain lines, as piped output and scripts show them.
    pub const PLAIN: Style = Style {
        colour: false,
        me: None,
        clock: None,
    };

    /// The line a person sees for `event`, received just now, or replayed as
    /// history when `history` is set.
    pub fn line(&self, event: &Event, history: bool) -> String {
        let mut line = String::new();
        // A replayed event was not said now, and its wall-clock time is not known.
        if let Some(offset) = self.clock.filter(|_| !history) {
            let time = wall_clock(offset, false);
            line.push_str(&self.paint("2", &time));
            line.push(' ');
        }
        if history {
            line.push_str(&self.paint("2", "[history]"));
            line.push(' ');
        }
        let name = sanitize(&event.participant);
        let text = sanitize(&event.text);
        match event.kind {
            EventKind::Chat => {
                let mine = self.me.as_deref() == Some(&*event.participant);
                line.push_str(&self.paint("2", &format!("[Lamport {}]", event.lamport)));
                line.push(' ');
                match (mine, self.colour) {
                    (true, true) => line.push_str(&self.paint("1;32", &name)),
                    (true, false) => line.push_str(&format!("{name} (you)")),
                    (false, _) => line.push_str(&self.paint("1;36", &name)),
                }
                line.push_str(": ");
                line.push_str(&text);
            }
            EventKind::Joined | EventKind::Left => line.push_str(&self.paint("33", &text)),
        }
        line
    }

    /// `text` in the SGR colour `code` when colour is on.
    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

/// The local wall-clock time now: `HH:MM`, or `HH:MM:SS` with `seconds`.
pub fn wall_clock(offset: UtcOffset, seconds: bool) -> String {
    clock_at(OffsetDateTime::now_utc().to_offset(offset), seconds)
}

/// The local wall-clock time at `at` from now, as [`wall_clock`] writes it.
pub fn wall_clock_in(offset: UtcOffset, at: std::time::Duration) -> String {
    clock_at((OffsetDateTime::now_utc() + at).to_offset(offset), true)
}

fn clock_at(time: OffsetDateTime, seconds: bool) -> String {
    if seconds {
        format!(
            "{:02}:{:02}:{:02}",
            time.hour(),
            time.minute(),
            time.second()
        )
    } else {
        format!("{:02}:{:02}", time.hour(), time.minute())
    }
}

/// The line a person sees for `event`: `[Lamport 7] alice: hello` for a chat
/// message, the exact join or leave sentence for a notice.
pub fn event_line(event: &Event, colour: bool) -> String {
    Style {
        colour,
        ..Style::PLAIN
    }
    .line(event, false)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn at_a_prompt_own_messages_differ_and_history_is_marked() {
        let style = Style {
            me: Some(Arc::from("alice")),
            ..Style::PLAIN
        };
        let own = style.line(&event(EventKind::Chat, "alice", "hi"), false);
        let other = style.line(&event(EventKind::Chat, "bob", "hi"), false);
        assert_eq!(own, "[Lamport 7] alice (you): hi");
        assert_eq!(other, "[Lamport 7] bob: hi");
        assert_eq!(
            style.line(&event(EventKind::Chat, "bob", "hi"), true),
            "[history] [Lamport 7] bob: hi"
        );
        let coloured = Style {
            colour: true,
            ..style
        };
        assert_ne!(
            coloured.line(&event(EventKind::Chat, "alice", "hi"), false),
            coloured
                .line(&event(EventKind::Chat, "bob", "hi"), false)
                .replace("bob", "alice")
        );
    }

    #[test]
    fn the_wall_clock_is_hours_and_minutes() {
        let time = wall_clock(UtcOffset::UTC, false);
        assert_eq!(time.len(), 5, "{time}");
        assert_eq!(&time[2..3], ":");
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
