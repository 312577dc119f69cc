//! Fuzzes the chat message rule with arbitrary bytes: it never panics, it accepts a
//! message exactly when the message is UTF-8 of 1 to 128 characters, not all
//! whitespace, without a control character, and every refusal names a true reason
//! without echoing the input.

#![no_main]

use chittychat::display::sanitize;
use chittychat::error::ChatError;
use chittychat::validate::{MAX_MESSAGE_CHARS, validate_message};
use libfuzzer_sys::fuzz_target;
use std::borrow::Cow;
use tonic::Code;

fuzz_target!(|bytes: &[u8]| {
    match validate_message(bytes) {
        Ok(text) => {
            assert_eq!(text.as_bytes(), bytes, "the accepted text is the input");
            let chars = text.chars().count();
            assert!(
                (1..=MAX_MESSAGE_CHARS).contains(&chars),
                "{chars} characters"
            );
            assert!(!text.chars().any(char::is_control), "a control character");
            assert!(!text.chars().all(char::is_whitespace), "only whitespace");
            // An accepted message reaches the others' screens unchanged.
            assert!(matches!(sanitize(text), Cow::Borrowed(_)));
        }
        Err(err) => {
            let shown = err.to_string();
            assert!(!shown.chars().any(char::is_control), "{shown:?}");
            assert!(shown.len() < 200, "{shown:?}");
            assert!(!shown.ends_with('.'), "{shown:?}");
            assert_eq!(tonic::Status::from(err.clone()).code(), Code::InvalidArgument);
            match err {
                ChatError::MessageNotUtf8 { valid_up_to } => {
                    let utf8 = std::str::from_utf8(bytes).unwrap_err();
                    assert_eq!(utf8.valid_up_to(), valid_up_to);
                }
                ChatError::MessageEmpty => {
                    let text = std::str::from_utf8(bytes).unwrap();
                    assert!(text.chars().all(char::is_whitespace), "{text:?}");
                }
                ChatError::MessageTooLong { chars, max } => {
                    let text = std::str::from_utf8(bytes).unwrap();
                    assert_eq!(chars, text.chars().count());
                    assert_eq!(max, MAX_MESSAGE_CHARS);
                    assert!(chars > max);
                }
                ChatError::MessageControlCharacter {
                    position,
                    code_point,
                } => {
                    let text = std::str::from_utf8(bytes).unwrap();
                    assert!(text.chars().count() <= MAX_MESSAGE_CHARS);
                    let first = text.chars().position(char::is_control).unwrap();
                    assert_eq!(position, first + 1);
                    assert_eq!(Some(code_point), text.chars().nth(first).map(u32::from));
                }
                other => panic!("a message refused for a reason about something else: {other:?}"),
            }
        }
    }
});
