//! The one place a domain refusal ([`ChatError`]) becomes a gRPC status: its code,
//! its message, and the retry hint of a rate limit.

use crate::error::ChatError;
use crate::transport::RETRY_AFTER_MS_METADATA;
use tonic::{Code, Status};

/// The gRPC status code for `err`.
pub fn code(err: &ChatError) -> Code {
    match err {
        ChatError::MessageNotUtf8 { .. }
        | ChatError::MessageEmpty
        | ChatError::MessageTooLong { .. }
        | ChatError::MessageControlCharacter { .. }
        | ChatError::InvalidName { .. }
        | ChatError::LamportTooFarAhead { .. }
        | ChatError::InvalidPublishId { .. } => Code::InvalidArgument,
        ChatError::NameTaken { .. } => Code::AlreadyExists,
        ChatError::UnknownSession | ChatError::JoinSecretMissing | ChatError::JoinSecretWrong => {
            Code::Unauthenticated
        }
        ChatError::ShuttingDown | ChatError::LogUnavailable { .. } => Code::Unavailable,
        ChatError::TooSlow { .. }
        | ChatError::ServerFull { .. }
        | ChatError::RateLimited { .. }
        | ChatError::RequestTooLarge { .. } => Code::ResourceExhausted,
    }
}

/// The status of a refusal: [`code`], the error's message, and for a rate limit
/// `chittychat-retry-after-ms`.
impl From<ChatError> for Status {
    fn from(err: ChatError) -> Self {
        let mut status = Status::new(code(&err), err.to_string());
        if let ChatError::RateLimited { retry_after_ms, .. } = err {
            status
                .metadata_mut()
                .insert(RETRY_AFTER_MS_METADATA, retry_after_ms.into());
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_is_resource_exhausted_and_the_secret_unauthenticated() {
        for err in [
            ChatError::ServerFull { max: 1 },
            ChatError::RequestTooLarge { found: 9, max: 1 },
            ChatError::TooSlow {
                position: 1,
                first_held: 2,
            },
        ] {
            assert_eq!(Status::from(err).code(), Code::ResourceExhausted);
        }
        for err in [ChatError::JoinSecretMissing, ChatError::JoinSecretWrong] {
            let status = Status::from(err);
            assert_eq!(status.code(), Code::Unauthenticated);
            assert!(!status.message().ends_with('.'));
        }
    }

    #[test]
    fn a_rate_limit_carries_its_retry_hint() {
        let status = Status::from(ChatError::RateLimited {
            per_second: 1,
            burst: 1,
            retry_after_ms: 250,
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.metadata().get(RETRY_AFTER_MS_METADATA).unwrap(),
            "250"
        );
    }
}
