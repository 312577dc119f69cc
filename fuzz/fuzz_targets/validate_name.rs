//! Fuzzes the participant name rule with arbitrary bytes: it never panics, it accepts
//! exactly 1 to 32 ASCII letters, digits, '-', '_' and '.', and a refusal shows the
//! name escaped and cut short, so no input can reach a terminal or swell a status.

#![no_main]

use chittychat::error::ChatError;
use chittychat::validate::{MAX_NAME_CHARS, NAME_PUNCTUATION, validate_name};
use libfuzzer_sys::fuzz_target;
use tonic::Code;

fuzz_target!(|bytes: &[u8]| {
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || NAME_PUNCTUATION.contains(b);
    let valid = (1..=MAX_NAME_CHARS).contains(&bytes.len()) && bytes.iter().all(allowed);
    match validate_name(bytes) {
        Ok(name) => {
            assert!(valid, "accepted {bytes:?}");
            assert_eq!(name.as_bytes(), bytes);
        }
        Err(err) => {
            assert!(!valid, "refused {bytes:?}");
            assert!(matches!(err, ChatError::InvalidName { .. }), "{err:?}");
            assert_eq!(tonic::Status::from(err.clone()).code(), Code::InvalidArgument);
            let shown = err.to_string();
            assert!(!shown.chars().any(char::is_control), "{shown:?}");
            // 40 characters at most, each escaped to at most 10 ("\u{10ffff}").
            assert!(shown.len() < 600, "{} bytes", shown.len());
            assert!(!shown.ends_with('.'), "{shown:?}");
        }
    }
});
