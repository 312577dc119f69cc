//! The errors of the chat domain: every refusal, with a message a person
//! understands, and why the event log cannot be used. They know nothing of gRPC;
//! `status` maps them to a status.

use crate::validate::{MAX_MESSAGE_CHARS, MAX_NAME_CHARS};
use std::path::PathBuf;

/// Everything the chat service can refuse, with a message a person understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// The message is not UTF-8.
    #[error("message is not valid UTF-8 (the first bad byte is byte {valid_up_to})")]
    MessageNotUtf8 {
        /// How many bytes from the start are valid UTF-8.
        valid_up_to: usize,
    },
    /// The message has no characters, or only whitespace.
    #[error(
        "message is empty or only whitespace; a message has 1 to {MAX_MESSAGE_CHARS} characters"
    )]
    MessageEmpty,
    /// The message has more characters than allowed.
    #[error("message is {chars} characters long; the limit is {max} characters")]
    MessageTooLong {
        /// How many characters the message has.
        chars: usize,
        /// The limit.
        max: usize,
    },
    /// The message holds a control character.
    #[error(
        "message contains the control character U+{code_point:04X} at character {position}; \
         control characters (escape sequences, newlines, tabs) are not allowed"
    )]
    MessageControlCharacter {
        /// The 1-based character position.
        position: usize,
        /// The offending code point.
        code_point: u32,
    },
    /// The request's Lamport time is implausibly far ahead of the server's clock.
    #[error(
        "Lamport time {lamport} is more than {max_lead} ahead of the server's clock \
         ({server}); a client's clock runs ahead only by the events it made itself"
    )]
    LamportTooFarAhead {
        /// The request's Lamport time.
        lamport: u64,
        /// The server's Lamport time when the request arrived.
        server: u64,
        /// The largest lead allowed.
        max_lead: u64,
    },
    /// The name breaks the naming rule.
    #[error(
        "invalid name \"{name}\": a name is 1 to {MAX_NAME_CHARS} characters, each an ASCII \
         letter, a digit, '-', '_' or '.'"
    )]
    InvalidName {
        /// The name as received, escaped for display.
        name: String,
    },
    /// A present participant already has the name.
    #[error(
        "the name \"{name}\" is taken by a participant who is present (names are unique \
         regardless of case); choose another"
    )]
    NameTaken {
        /// The name.
        name: String,
    },
    /// The session token is wrong, or its session has ended.
    #[error("unknown or expired session token; join again")]
    UnknownSession,
    /// The server is shutting down and takes no new work.
    #[error("the Chitty-Chat server is shutting down")]
    ShuttingDown,
    /// The participant fell so far behind that the log no longer holds its position.
    #[error(
        "disconnected: you fell behind the chat beyond what the server keeps (your next \
         event was {position}, the log now starts at {first_held}); join again to continue"
    )]
    TooSlow {
        /// The sequence number the participant's feed was at.
        position: u64,
        /// The oldest sequence number the log still holds.
        first_held: u64,
    },
    /// A newer session of the same participant took this one's place.
    #[error(
        "this session was replaced by a newer one of the same name (the participant joined \
         again, from this client or another)"
    )]
    Replaced,
    /// The server cannot store events, so it takes none.
    #[error("the Chitty-Chat server cannot store events: {0}")]
    LogUnavailable(LogError),
    /// This node of a cluster cannot reach the cluster's log, so it takes no
    /// request that would change the room.
    #[error("this Chitty-Chat node cannot reach its cluster: {0}; try another node")]
    ClusterUnavailable(String),
    /// The publish id breaks the rule for ids.
    #[error(
        "invalid publish id: an id is at most {max} ASCII letters, digits and punctuation, without spaces (found {found} bytes)"
    )]
    InvalidPublishId {
        /// The id's length in bytes.
        found: usize,
        /// The longest id.
        max: usize,
    },
    /// As many participants as the server admits are present.
    #[error(
        "server full: {max} participants are present, the most this server admits; try again later"
    )]
    ServerFull {
        /// The limit on participants present at once.
        max: usize,
    },
    /// The participant publishes faster than its rate limit allows.
    #[error(
        "slow down: you may publish {per_second} messages a second, in bursts of up to {burst}; \
         retry in {} s", format_retry(*.retry_after_ms)
    )]
    RateLimited {
        /// The sustained rate allowed, in messages a second.
        per_second: u32,
        /// How many messages may be published at once after a quiet spell.
        burst: u32,
        /// How long until the next message will be accepted, in milliseconds.
        retry_after_ms: u64,
    },
    /// More joins are waiting for their turn than the server admits within
    /// [`crate::pace::MAX_JOIN_WAIT`].
    #[error(
        "too many joins at once: the server admits {per_second} joins a second; \
         retry in {} s", format_retry(*.retry_after_ms)
    )]
    JoinsBusy {
        /// The sustained rate of joins the server admits, a second.
        per_second: u32,
        /// How long until a join would wait no longer than the server allows, in
        /// milliseconds.
        retry_after_ms: u64,
    },
    /// A request is larger than the server decodes.
    #[error("request too large: the server accepts requests of at most {max} bytes")]
    RequestTooLarge {
        /// The limit in bytes.
        max: usize,
    },
    /// The server needs a join secret and the request has none.
    #[error("this server needs a join secret; ask its operator for it")]
    JoinSecretMissing,
    /// The join secret is wrong.
    #[error("wrong join secret")]
    JoinSecretWrong,
}

/// A delay in milliseconds as seconds with one decimal, never "0.0" for a wait.
fn format_retry(ms: u64) -> String {
    let tenths = ms.div_ceil(100).max(1);
    format!("{}.{}", tenths / 10, tenths % 10)
}

/// Why the log cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The data directory or its database cannot be read or written.
    #[error("cannot use the data directory {path}: {reason}")]
    Unusable {
        /// The path concerned.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Another server holds the data directory.
    #[error(
        "the data directory {path} is in use by another chittychat-server{owner}; stop it or choose another data directory"
    )]
    Locked {
        /// The directory.
        path: PathBuf,
        /// Who holds it, as its owner file says (" (pid 12)"), or nothing.
        owner: String,
    },
    /// The stored data is damaged or of a format this server does not know.
    #[error(
        "the log in {path} is corrupt or of an unknown format: {reason}; move it away to start afresh"
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing to the store failed; the log takes no more events.
    #[error("the log cannot be written: {0}")]
    WriteFailed(String),
    /// Reading stored events failed.
    #[error("the log cannot be read: {0}")]
    ReadFailed(String),
    /// The log was closed while a request waited for it.
    #[error("the log was closed")]
    Closed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_refusal_says_when_to_retry_in_tenths_of_a_second() {
        let refusal = |retry_after_ms| {
            ChatError::RateLimited {
                per_second: 10,
                burst: 20,
                retry_after_ms,
            }
            .to_string()
        };
        assert_eq!(
            refusal(87),
            "slow down: you may publish 10 messages a second, in bursts of up to 20; retry in 0.1 s"
        );
        assert!(refusal(0).ends_with("retry in 0.1 s"));
        assert!(refusal(1450).ends_with("retry in 1.5 s"));
    }

    #[test]
    fn the_name_rule_states_the_limit() {
        let err = ChatError::InvalidName { name: "x".into() };
        assert_eq!(
            err.to_string(),
            "invalid name \"x\": a name is 1 to 32 characters, each an ASCII letter, a digit, \
             '-', '_' or '.'"
        );
    }
}
