//! What a typed line asks for: a message to send, or one of the chat commands.
//!
//! A line starting with `/` is a command; `//text` sends `/text`. An unknown command
//! is never sent: the user gets a hint instead.

use crate::transport::MAX_HISTORY_PAGE;

/// How many older messages `/history` shows when no number is given.
pub const DEFAULT_HISTORY_COMMAND_COUNT: u32 = 20;

/// The commands, with what each does, as `/help` lists them.
pub const COMMANDS: &[(&str, &str)] = &[
    ("/help", "list these commands"),
    ("/who", "show who is present"),
    ("/history [N]", "show N older messages (default 20)"),
    (
        "/quit",
        "leave Chitty-Chat (or Ctrl-D on an empty line, or Ctrl-C)",
    ),
    ("//text", "send a message that starts with '/'"),
];

/// One typed line, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Command {
    /// A message to publish, as typed (possibly not valid: the validator decides).
    Say(Vec<u8>),
    /// `/help`.
    Help,
    /// `/who`.
    Who,
    /// `/history [N]`.
    History(u32),
    /// `/quit`.
    Quit,
    /// A command used the wrong way, with what to say about it.
    Misused(String),
    /// A `/word` that is no command.
    Unknown(String),
}

/// Understands one line (without its line ending).
pub(super) fn parse(line: Vec<u8>) -> Command {
    if line.starts_with(b"//") {
        return Command::Say(line[1..].to_vec());
    }
    if !line.starts_with(b"/") {
        return Command::Say(line);
    }
    let text = String::from_utf8_lossy(&line);
    let mut words = text.split_whitespace();
    let word = words.next().unwrap_or("/");
    let rest: Vec<&str> = words.collect();
    match (word, rest.as_slice()) {
        ("/quit", []) => Command::Quit,
        ("/help", []) => Command::Help,
        ("/who", []) => Command::Who,
        ("/history", []) => Command::History(DEFAULT_HISTORY_COMMAND_COUNT),
        ("/history", [count]) => match count.parse::<u32>() {
            Ok(count) if count > 0 => Command::History(count.min(MAX_HISTORY_PAGE)),
            _ => Command::Misused(format!(
                "/history takes a number of messages from 1 to {MAX_HISTORY_PAGE}, not \"{count}\""
            )),
        },
        ("/quit" | "/help" | "/who" | "/history", _) => Command::Misused(format!(
            "{word} takes no such arguments; /help lists the commands"
        )),
        _ => Command::Unknown(word.to_owned()),
    }
}

/// The hint for an unknown command.
pub(super) fn unknown_hint(word: &str) -> String {
    format!(
        "{word} is not a command, so it was not sent; /help lists the commands, and //{} sends it as a message",
        word.trim_start_matches('/')
    )
}

/// The lines `/help` shows.
pub(super) fn help_lines() -> impl Iterator<Item = String> {
    std::iter::once("Type a message and press Enter to send it. Commands:".to_owned()).chain(
        COMMANDS
            .iter()
            .map(|(command, what)| format!("  {command:<14} {what}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Command {
        parse(line.as_bytes().to_vec())
    }

    #[test]
    fn messages_and_commands() {
        assert_eq!(parse_str("hello"), Command::Say(b"hello".to_vec()));
        assert_eq!(parse_str("//nick bob"), Command::Say(b"/nick bob".to_vec()));
        assert_eq!(parse_str("/quit"), Command::Quit);
        assert_eq!(parse_str("/help"), Command::Help);
        assert_eq!(parse_str("/who"), Command::Who);
        assert_eq!(parse_str("/nick bob"), Command::Unknown("/nick".into()));
        assert_eq!(parse_str("/"), Command::Unknown("/".into()));
        assert!(matches!(parse_str("/who is there"), Command::Misused(_)));
    }

    #[test]
    fn history_takes_an_optional_count() {
        assert_eq!(
            parse_str("/history"),
            Command::History(DEFAULT_HISTORY_COMMAND_COUNT)
        );
        assert_eq!(parse_str("/history 5"), Command::History(5));
        assert_eq!(
            parse_str("/history 99999"),
            Command::History(MAX_HISTORY_PAGE)
        );
        assert!(matches!(parse_str("/history 0"), Command::Misused(_)));
        assert!(matches!(parse_str("/history five"), Command::Misused(_)));
        assert_eq!(parse_str("/historyx"), Command::Unknown("/historyx".into()));
    }

    #[test]
    fn the_hint_says_how_to_send_the_text_anyway() {
        let hint = unknown_hint("/nick");
        assert!(hint.contains("/help"), "{hint}");
        assert!(hint.contains("//nick"), "{hint}");
    }
}
