//! The one place a domain refusal ([`ChatError`]) becomes a gRPC status: its code,
//! its message, and the retry hint of a rate limit.

use crate::error::ChatError;
use crate::transport::{RETRY_AFTER_MS_METADATA, SHUTTING_DOWN_METADATA};
use tonic::{Code, Status};

/// The gRPC status code for `err`.
pub(crate) fn code(err: &ChatError) -> Code {
    match err {
        ChatError::MessageNotUtf8 { .. }
        | ChatError::MessageEmpty
        | ChatError::MessageTooLong { .. }
        | ChatError::MessageControlCharacter { .. }
        | ChatError::InvalidName { .. }
        | ChatError::LamportTooFarAhead { .. }
        | ChatError::InvalidPublishId { .. } => Code::InvalidArgument,
        ChatError::NameTaken { .. } => Code::AlreadyExists,
        ChatError::Replaced => Code::Aborted,
        ChatError::UnknownSession | ChatError::JoinSecretMissing | ChatError::JoinSecretWrong => {
            Code::Unauthenticated
        }
        ChatError::ShuttingDown
        | ChatError::LogUnavailable(_)
        | ChatError::ClusterUnavailable(_) => Code::Unavailable,
        ChatError::TooSlow { .. }
        | ChatError::ServerFull { .. }
        | ChatError::RateLimited { .. }
        | ChatError::JoinsBusy { .. }
        | ChatError::RequestTooLarge { .. } => Code::ResourceExhausted,
    }
}

/// The status of a refusal: `code`, the error's message, for a rate limit or a
/// join that came at a busy moment `chittychat-retry-after-ms`, and for a shutdown `chittychat-shutting-down`.
impl From<ChatError> for Status {
    fn from(err: ChatError) -> Self {
        let mut status = Status::new(code(&err), err.to_string());
        if let Some(ms) = retry_after_ms(&err) {
            status
                .metadata_mut()
                .insert(RETRY_AFTER_MS_METADATA, ms.into());
        }
        if matches!(err, ChatError::ShuttingDown) {
            status
                .metadata_mut()
                .insert(SHUTTING_DOWN_METADATA, "true".parse().expect("ASCII"));
        }
        status
    }
}

/// How long to wait before asking again, for a refusal that says.
fn retry_after_ms(err: &ChatError) -> Option<u64> {
    match err {
        ChatError::RateLimited { retry_after_ms, .. }
        | ChatError::JoinsBusy { retry_after_ms, .. } => Some(*retry_after_ms),
        _ => None,
    }
}

/// A refusal of one request on a PublishStream: what [`Status::from`] says of it,
/// with the retry hint as a field instead of metadata.
pub(crate) fn refusal(err: ChatError) -> crate::pb::PublishRefusal {
    crate::pb::PublishRefusal {
        code: code(&err) as i32,
        message: err.to_string(),
        retry_after_ms: retry_after_ms(&err).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogError;

    #[test]
    fn a_shutdown_is_marked_so_that_clients_need_not_read_the_message() {
        let status = Status::from(ChatError::ShuttingDown);
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.metadata().get(SHUTTING_DOWN_METADATA).is_some());
        let other = Status::from(ChatError::LogUnavailable(LogError::WriteFailed(
            "disk full".into(),
        )));
        assert!(other.metadata().get(SHUTTING_DOWN_METADATA).is_none());
    }

    #[test]
    fn every_limit_is_resource_exhausted_and_the_secret_unauthenticated() {
        for err in [
            ChatError::ServerFull { max: 1 },
            ChatError::RequestTooLarge { max: 1 },
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
