//! The rules for participant names and chat messages, shared by server and client.
//!
//! Pure functions over bytes: the server is the authority and applies them to
//! whatever arrives; the client applies the same functions before sending, so a
//! person learns of a bad message at once.

use crate::error::ChatError;
use crate::lamport::LamportTime;

/// The longest chat message, in characters (Unicode scalar values, not bytes).
pub const MAX_MESSAGE_CHARS: usize = 128;

/// The longest participant name, in characters (names are ASCII, so also bytes).
pub const MAX_NAME_CHARS: usize = 32;

/// The characters a name may hold besides ASCII letters and digits.
pub const NAME_PUNCTUATION: &[u8] = b"-_.";

/// How many characters of a refused name an error message repeats.
///
/// Enough to recognise the name, few enough that a hostile megabyte-long name
/// cannot swell the status message (an HTTP/2 header, which the peer would
/// reject as a protocol error instead of showing the reason) or a log line.
pub const MAX_ECHOED_NAME_CHARS: usize = 40;

/// How far ahead of the server's clock a request's Lamport time may be.
///
/// An honest client runs ahead of the server only by the few events it made since
/// it last heard from it, or, after the server restarted with a fresh clock, by the
/// old server's whole history; four billion covers both with room to spare. A
/// request further ahead is refused: accepted, a time near `u64::MAX` would
/// saturate the server's clock and stamp every later event with the same time,
/// while leaps of at most this size would take billions of requests to get there.
pub const MAX_LAMPORT_LEAD: LamportTime = 1 << 32;

/// The longest publish id a client may choose, in bytes.
pub const MAX_PUBLISH_ID_BYTES: usize = 64;

/// Checks a publish id: at most [`MAX_PUBLISH_ID_BYTES`] printable ASCII characters
/// (no spaces); empty means none.
pub fn validate_publish_id(id: &str) -> Result<&str, ChatError> {
    if id.len() > MAX_PUBLISH_ID_BYTES || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ChatError::InvalidPublishId {
            found: id.len(),
            max: MAX_PUBLISH_ID_BYTES,
        });
    }
    Ok(id)
}

/// Checks a request's Lamport time against the server's clock at `server_now`.
pub fn validate_lamport(request: LamportTime, server_now: LamportTime) -> Result<(), ChatError> {
    if request > server_now.saturating_add(MAX_LAMPORT_LEAD) {
        return Err(ChatError::LamportTooFarAhead {
            lamport: request,
            server: server_now,
            max_lead: MAX_LAMPORT_LEAD,
        });
    }
    Ok(())
}

/// Checks a chat message and returns it as text.
///
/// A valid message is UTF-8 of 1 to [`MAX_MESSAGE_CHARS`] characters with no
/// control characters (C0, DEL, C1; ANSI escape sequences start with one), so
/// nothing a participant sends can drive another participant's terminal.
pub fn validate_message(bytes: &[u8]) -> Result<&str, ChatError> {
    let text = std::str::from_utf8(bytes).map_err(|err| ChatError::MessageNotUtf8 {
        valid_up_to: err.valid_up_to(),
    })?;
    let chars = text.chars().count();
    // Only whitespace says nothing, so it is refused like an empty message.
    if text.chars().all(char::is_whitespace) {
        return Err(ChatError::MessageEmpty);
    }
    if chars > MAX_MESSAGE_CHARS {
        return Err(ChatError::MessageTooLong {
            chars,
            max: MAX_MESSAGE_CHARS,
        });
    }
    if let Some((position, control)) = text.chars().enumerate().find(|(_, c)| c.is_control()) {
        return Err(ChatError::MessageControlCharacter {
            position: position + 1,
            code_point: u32::from(control),
        });
    }
    Ok(text)
}

/// Checks a participant name and returns it as text.
///
/// A valid name is 1 to [`MAX_NAME_CHARS`] characters, each an ASCII letter, an
/// ASCII digit or one of [`NAME_PUNCTUATION`].
pub fn validate_name(bytes: &[u8]) -> Result<&str, ChatError> {
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || NAME_PUNCTUATION.contains(b);
    if bytes.is_empty() || bytes.len() > MAX_NAME_CHARS || !bytes.iter().all(allowed) {
        return Err(ChatError::InvalidName {
            name: name_for_display(bytes),
        });
    }
    // Every byte is ASCII, so this cannot fail.
    std::str::from_utf8(bytes).map_err(|_| ChatError::InvalidName {
        name: name_for_display(bytes),
    })
}

/// A name as received, made safe to show in an error or a log line: invalid UTF-8
/// replaced, control characters escaped, and cut after [`MAX_ECHOED_NAME_CHARS`]
/// characters (marked with "…").
pub fn name_for_display(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut chars = text.chars();
    let mut shown: String = chars
        .by_ref()
        .take(MAX_ECHOED_NAME_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if chars.next().is_some() {
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        let ok = |s: String| (s.into_bytes(), true);
        let bad = |s: String| (s.into_bytes(), false);
        let cases: Vec<(Vec<u8>, bool)> = vec![
            bad(String::new()),
            ok("a".into()),
            ok("hello, world".into()),
            ok("a".repeat(128)),
            bad("a".repeat(129)),
            // Multi-byte characters count once each.
            ok("é".repeat(128)),
            bad("é".repeat(129)),
            ok("😀".repeat(128)),
            bad("😀".repeat(129)),
            ok("日本語のメッセージ".into()),
            // 128 characters but 512 bytes.
            ok("𝄞".repeat(128)),
            // Invalid UTF-8: a lone continuation byte, a truncated sequence, an overlong form.
            (vec![0x80], false),
            (vec![b'h', b'i', 0xE2, 0x82], false),
            (vec![0xC0, 0xAF], false),
            // Control characters: ANSI escape, newline, tab, NUL, DEL, a C1 control.
            bad("\u{1b}[31mred".into()),
            bad("line\nbreak".into()),
            bad("tab\there".into()),
            bad("nul\0".into()),
            bad("del\u{7f}".into()),
            bad("c1\u{9b}31m".into()),
            ok("spaces   are fine".into()),
        ];
        for (bytes, valid) in cases {
            assert_eq!(
                validate_message(&bytes).is_ok(),
                valid,
                "{:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn message_errors_name_the_limit_and_the_count() {
        let err = validate_message("a".repeat(129).as_bytes()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("129"), "{text}");
        assert!(text.contains("128"), "{text}");

        let err = validate_message(&[b'o', b'k', 0xFF]).unwrap_err();
        assert!(err.to_string().contains("not valid UTF-8"), "{err}");
        assert!(err.to_string().contains("byte 2"), "{err}");

        let err = validate_message(b"x\x1b[2J").unwrap_err();
        assert!(err.to_string().contains("U+001B"), "{err}");
        assert!(err.to_string().contains("character 2"), "{err}");
    }

    #[test]
    fn whitespace_only_is_empty_but_spaces_inside_a_message_are_kept() {
        for blank in ["", " ", "   ", "\u{a0}\u{3000}"] {
            assert_eq!(
                validate_message(blank.as_bytes()),
                Err(ChatError::MessageEmpty),
                "{blank:?}"
            );
        }
        assert_eq!(validate_message(b"  hi  "), Ok("  hi  "));
    }

    #[test]
    fn names() {
        let cases: &[(&[u8], bool)] = &[
            (b"", false),
            (b"a", true),
            (b"alice", true),
            (b"Bob-2_the.third", true),
            (b"...", true),
            (&[b'x'; 32], true),
            (&[b'x'; 33], false),
            (b"with space", false),
            (b"semi;colon", false),
            (b"slash/", false),
            (b"esc\x1b", false),
            ("åse".as_bytes(), false),
            (&[0xFF, 0xFE], false),
        ];
        for (bytes, valid) in cases {
            assert_eq!(
                validate_name(bytes).is_ok(),
                *valid,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn name_error_says_what_is_allowed_and_escapes_the_input() {
        let err = validate_name(b"bad\x1bname").unwrap_err().to_string();
        assert!(err.contains("1 to 32"), "{err}");
        assert!(err.contains("ASCII letter"), "{err}");
        assert!(
            !err.contains('\x1b'),
            "the raw escape must not be echoed: {err}"
        );
    }

    #[test]
    fn lamport_times_may_lead_the_server_by_a_bounded_amount() {
        assert_eq!(validate_lamport(0, 0), Ok(()));
        assert_eq!(validate_lamport(MAX_LAMPORT_LEAD, 0), Ok(()));
        assert_eq!(validate_lamport(5 + MAX_LAMPORT_LEAD, 5), Ok(()));
        assert_eq!(validate_lamport(u64::MAX, u64::MAX - 1), Ok(()));
        // Behind the server is always fine: the server's clock takes the maximum.
        assert_eq!(validate_lamport(3, 1_000), Ok(()));
        let err = validate_lamport(u64::MAX, 7).unwrap_err();
        assert_eq!(
            err,
            ChatError::LamportTooFarAhead {
                lamport: u64::MAX,
                server: 7,
                max_lead: MAX_LAMPORT_LEAD
            }
        );
        let text = err.to_string();
        assert!(
            text.contains(&u64::MAX.to_string()) && text.contains("4294967296"),
            "{text}"
        );
    }

    #[test]
    fn a_huge_name_is_echoed_only_in_part() {
        let err = validate_name(&[b' '; 1 << 20]).unwrap_err().to_string();
        assert!(err.len() < 200, "{} bytes: {err}", err.len());
        assert!(err.contains(&format!("{}…", " ".repeat(MAX_ECHOED_NAME_CHARS))));
        // Every character escaped at its longest still stays small.
        let err = validate_name("\u{10ffff}".repeat(1000).as_bytes()).unwrap_err();
        assert!(err.to_string().len() < 600, "{err}");
        assert_eq!(name_for_display(b"ok\x1b"), "ok\\u{1b}");
    }
}
