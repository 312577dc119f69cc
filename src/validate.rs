//! The rules for participant names and chat messages, shared by server and client.
//!
//! Pure functions over bytes: the server is the authority and applies them to
//! whatever arrives; the client applies the same functions before sending, so a
//! person learns of a bad message at once.

use crate::error::ChatError;

/// The longest chat message, in characters (Unicode scalar values, not bytes).
pub const MAX_MESSAGE_CHARS: usize = 128;

/// The longest participant name, in characters (names are ASCII, so also bytes).
pub const MAX_NAME_CHARS: usize = 32;

/// The characters a name may hold besides ASCII letters and digits.
pub const NAME_PUNCTUATION: &[u8] = b"-_.";

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
    if chars == 0 {
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
            name: String::from_utf8_lossy(bytes).escape_debug().to_string(),
        });
    }
    // Every byte is ASCII, so this cannot fail.
    std::str::from_utf8(bytes).map_err(|_| ChatError::InvalidName {
        name: String::from_utf8_lossy(bytes).escape_debug().to_string(),
    })
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
}
