//! The one error type of the chat domain, and its one mapping to a gRPC status.

use tonic::{Code, Status};

/// Everything the chat service can refuse, with a message a person understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// The message is not UTF-8.
    #[error("message is not valid UTF-8 (the first bad byte is byte {valid_up_to})")]
    MessageNotUtf8 {
        /// How many bytes from the start are valid UTF-8.
        valid_up_to: usize,
    },
    /// The message has no characters.
    #[error("message is empty; a message has 1 to 128 characters")]
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
        "invalid name \"{name}\": a name is 1 to 32 characters, each an ASCII letter, \
         a digit, '-', '_' or '.'"
    )]
    InvalidName {
        /// The name as received, escaped for display.
        name: String,
    },
    /// A present participant already has the name.
    #[error("the name \"{name}\" is taken by a participant who is present; choose another")]
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
    /// The participant fell too far behind the broadcast and was disconnected.
    #[error(
        "disconnected: you fell {queued} events behind the chat (the limit is {queued}); \
         join again to continue"
    )]
    TooSlow {
        /// The per-participant queue bound that was exceeded.
        queued: usize,
    },
}

impl ChatError {
    /// The gRPC status code for this error.
    pub fn code(&self) -> Code {
        match self {
            ChatError::MessageNotUtf8 { .. }
            | ChatError::MessageEmpty
            | ChatError::MessageTooLong { .. }
            | ChatError::MessageControlCharacter { .. }
            | ChatError::InvalidName { .. }
            | ChatError::LamportTooFarAhead { .. } => Code::InvalidArgument,
            ChatError::NameTaken { .. } => Code::AlreadyExists,
            ChatError::UnknownSession => Code::Unauthenticated,
            ChatError::ShuttingDown => Code::Unavailable,
            ChatError::TooSlow { .. } => Code::ResourceExhausted,
        }
    }
}

/// The one place a domain error becomes a gRPC status.
impl From<ChatError> for Status {
    fn from(err: ChatError) -> Self {
        Status::new(err.code(), err.to_string())
    }
}
