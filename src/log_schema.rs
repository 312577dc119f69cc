//! The schema of the structured log lines that tools read back: the field names, the
//! messages and the causes that the server and the client write, and that
//! `chittychat-trace` and the demo parse. (The event log is [`crate::log`].)
//!
//! Both sides name a field through these constants, so a rename is one edit here
//! and never a silent break between a writer and a reader. The recorded runs under
//! `tests/recorded_runs/` are logs in this schema; changing a value here breaks them.

use std::fmt;
use std::str::FromStr;

/// The names of the fields of a JSON log line.
pub mod field {
    /// What `tracing` calls the line's message (`"broadcast"`, `"sent"`, ...).
    pub const MESSAGE: &str = "message";
    /// Why the server broadcast an event: a [`super::BroadcastCause`].
    pub const CAUSE: &str = "cause";
    /// The event's kind: `chat`, `joined` or `left`.
    pub const KIND: &str = "kind";
    /// The participant an event is about.
    pub const PARTICIPANT: &str = "participant";
    /// A chat message, or a join or leave sentence.
    pub const TEXT: &str = "text";
    /// The logging process's own Lamport time, on every line.
    pub const LAMPORT: &str = "lamport";
    /// An event's sequence number.
    pub const SEQ: &str = "seq";
    /// The Lamport time of the client's request that a broadcast answers.
    pub const CLIENT_LAMPORT: &str = "client_lamport";
    /// The server's Lamport time of an event, as a client saw it.
    pub const SERVER_LAMPORT: &str = "server_lamport";
    /// How many participants were present when an event was broadcast.
    pub const RECIPIENTS: &str = "recipients";
    /// For a Join that resumed a feed, the server's resume point.
    pub const RESUMED_AFTER: &str = "resumed_after";
    /// For a Join that asks to resume, the client's resume point.
    pub const RESUME_AFTER: &str = "resume_after";
    /// The call a client made: one of [`super::rpc`].
    pub const RPC: &str = "rpc";
    /// The name a client joins as.
    pub const NAME: &str = "name";
    /// The id a client published a message under.
    pub const PUBLISH_ID: &str = "publish_id";
    /// Whether a received event was history, replayed before the join notice.
    pub const HISTORY: &str = "history";
    /// The address the server listens on.
    pub const ADDRESS: &str = "address";
    /// On a cluster node's `broadcast` line: the node that stamped the event.
    pub const NODE: &str = "node";
    /// On a cluster node's `broadcast` line for an event another node stamped: this
    /// node's Lamport time once it merged the event's (its receive from the log).
    pub const NODE_LAMPORT: &str = "node_lamport";
    /// How long something took, in milliseconds (a slow commit's line).
    pub const MILLIS: &str = "millis";
}

/// The messages of the lines the tools read.
pub mod message {
    /// The server appended an event: one line per event.
    pub const BROADCAST: &str = "broadcast";
    /// A client sent a request.
    pub const SENT: &str = "sent";
    /// A client got the reply to a request.
    pub const REPLY: &str = "reply";
    /// A client received an event on its feed.
    pub const RECEIVED: &str = "received";
    /// The server bound its port; the line names the address.
    pub const LISTENING: &str = "Chitty-Chat server listening";
    /// A cluster's node, when it has joined the cluster (with its `node` name).
    pub const JOINED_CLUSTER: &str = "joined the cluster";
    /// A commit of the event log took longer than [`crate::log::SLOW_COMMIT`]
    /// (with its `millis`); every request waited for it.
    pub const SLOW_COMMIT: &str = "slow commit of the event log";
}

/// The calls, as the `rpc` field and the `cause` of a broadcast name them.
pub mod rpc {
    /// `Join`.
    pub const JOIN: &str = "Join";
    /// `Publish`.
    pub const PUBLISH: &str = "Publish";
    /// `PublishStream`: many publishes on one call.
    pub const PUBLISH_STREAM: &str = "PublishStream";
    /// `Leave`.
    pub const LEAVE: &str = "Leave";
    /// `History`.
    pub const HISTORY: &str = "History";
    /// `Who`.
    pub const WHO: &str = "Who";
}

/// Why a participant left; logged with the leave notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaveCause {
    /// It called Leave.
    Requested,
    /// Its feed was dropped: the client closed the stream, crashed or vanished.
    Disconnected,
    /// It fell so far behind that the log no longer held its position.
    TooSlow,
    /// It was present when the server stopped; announced when the server came back.
    ServerRestart,
    /// Its node in a cluster stopped, was restarted, or was no longer heard from;
    /// announced by the cluster.
    NodeDown,
    /// It joined again (after a lost connection, or on another node) while this
    /// session was still present, and the new session took its place.
    Replaced,
}

impl LeaveCause {
    /// Its name in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveCause::Requested => rpc::LEAVE,
            LeaveCause::Disconnected => "disconnected",
            LeaveCause::TooSlow => "too_slow",
            LeaveCause::ServerRestart => "server_restart",
            LeaveCause::NodeDown => "node_down",
            LeaveCause::Replaced => "replaced",
        }
    }

    /// Whether the participant went without saying so: its feed was dropped or cut
    /// off, rather than it calling Leave or the server restarting.
    pub fn is_dropout(self) -> bool {
        matches!(
            self,
            LeaveCause::Disconnected
                | LeaveCause::TooSlow
                | LeaveCause::NodeDown
                | LeaveCause::Replaced
        )
    }
}

/// Why the server broadcast an event: the request it answers, or why a participant
/// left without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BroadcastCause {
    /// A Join request: the join notice.
    Join,
    /// A Publish request: the chat message.
    Publish,
    /// A leave notice, for this cause (a Leave request is [`LeaveCause::Requested`]).
    Leave(LeaveCause),
}

impl BroadcastCause {
    /// Its name in the log: the call's name for a request, else the leave cause's.
    pub fn as_str(self) -> &'static str {
        match self {
            BroadcastCause::Join => rpc::JOIN,
            BroadcastCause::Publish => rpc::PUBLISH,
            BroadcastCause::Leave(cause) => cause.as_str(),
        }
    }

    /// Whether a client's request caused the event (Join, Publish or Leave), so a
    /// client's `sent` line pairs with it.
    pub fn is_request(self) -> bool {
        matches!(
            self,
            BroadcastCause::Join
                | BroadcastCause::Publish
                | BroadcastCause::Leave(LeaveCause::Requested)
        )
    }

    /// Whether the event is the leave notice of a participant that vanished.
    pub fn is_dropout(self) -> bool {
        matches!(self, BroadcastCause::Leave(cause) if cause.is_dropout())
    }
}

impl From<LeaveCause> for BroadcastCause {
    fn from(cause: LeaveCause) -> Self {
        BroadcastCause::Leave(cause)
    }
}

/// A `cause` value that is none of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cause \"{0}\"")]
pub struct UnknownCause(pub String);

impl FromStr for LeaveCause {
    type Err = UnknownCause;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            LeaveCause::Requested,
            LeaveCause::Disconnected,
            LeaveCause::TooSlow,
            LeaveCause::ServerRestart,
            LeaveCause::NodeDown,
            LeaveCause::Replaced,
        ]
        .into_iter()
        .find(|cause| cause.as_str() == text)
        .ok_or_else(|| UnknownCause(text.to_owned()))
    }
}

impl FromStr for BroadcastCause {
    type Err = UnknownCause;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            rpc::JOIN => Ok(BroadcastCause::Join),
            rpc::PUBLISH => Ok(BroadcastCause::Publish),
            _ => text.parse().map(BroadcastCause::Leave),
        }
    }
}

impl fmt::Display for LeaveCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for BroadcastCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The address in the server's "listening" log line, in either log format (JSON, or
/// text: `... Chitty-Chat server listening address=127.0.0.1:50051`); `None` for any
/// other line. Whoever starts a server on port 0 learns its port from this.
pub fn listening_address(line: &str) -> Option<std::net::SocketAddr> {
    if !line.contains(message::LISTENING) {
        return None;
    }
    let address = match serde_json::from_str::<serde_json::Value>(line) {
        Ok(value) => value.get(field::ADDRESS)?.as_str()?.to_owned(),
        Err(_) => {
            let prefix = format!("{}=", field::ADDRESS);
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(prefix.as_str()))?
                .to_owned()
        }
    };
    address.parse().ok()
}

/// Why a started server never said where it listens.
#[derive(Debug, thiserror::Error)]
pub enum NotListening {
    /// The server exited first.
    #[error("chittychat-server exited ({status}) before listening: {last_line}")]
    Exited {
        /// How it exited.
        status: std::process::ExitStatus,
        /// The last line of its log, or a note that there was none.
        last_line: String,
    },
    /// It did not log its address in time.
    #[error("chittychat-server did not log its address within {} s (log: {})", .waited.as_secs(), .log.display())]
    TimedOut {
        /// How long it was given.
        waited: std::time::Duration,
        /// The log file read.
        log: std::path::PathBuf,
    },
}

/// How often [`await_listening`] looks at the log file again.
const LISTENING_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Waits until the server writing its log to the file `log` says where it listens,
/// for those that start a server on port 0 with its log in a file (the demo, the
/// bench). `exited` says whether the server has exited, so that a server that
/// failed at start is reported at once rather than after `timeout`.
pub async fn await_listening(
    log: &std::path::Path,
    mut exited: impl FnMut() -> Option<std::process::ExitStatus>,
    timeout: std::time::Duration,
) -> Result<std::net::SocketAddr, NotListening> {
    let started = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(address) = text.lines().find_map(listening_address) {
            return Ok(address);
        }
        if let Some(status) = exited() {
            return Err(NotListening::Exited {
                status,
                last_line: text.lines().last().unwrap_or("no log output").to_owned(),
            });
        }
        if started.elapsed() > timeout {
            return Err(NotListening::TimedOut {
                waited: timeout,
                log: log.to_owned(),
            });
        }
        tokio::time::sleep(LISTENING_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_address_is_read_from_either_log_format() {
        let json = r#"{"level":"INFO","message":"Chitty-Chat server listening","address":"127.0.0.1:4242"}"#;
        let text = "2026-12-02T02:05:31Z  INFO Chitty-Chat server listening address=[::1]:7";
        assert_eq!(
            listening_address(json),
            Some("127.0.0.1:4242".parse().unwrap())
        );
        assert_eq!(listening_address(text), Some("[::1]:7".parse().unwrap()));
        assert_eq!(listening_address("INFO event log open epoch=1"), None);
    }

    #[test]
    fn every_cause_reads_back_as_itself() {
        for cause in [
            BroadcastCause::Join,
            BroadcastCause::Publish,
            BroadcastCause::Leave(LeaveCause::Requested),
            BroadcastCause::Leave(LeaveCause::Disconnected),
            BroadcastCause::Leave(LeaveCause::TooSlow),
            BroadcastCause::Leave(LeaveCause::ServerRestart),
            BroadcastCause::Leave(LeaveCause::NodeDown),
            BroadcastCause::Leave(LeaveCause::Replaced),
        ] {
            assert_eq!(cause.as_str().parse(), Ok(cause));
        }
        assert_eq!(
            "History".parse::<BroadcastCause>(),
            Err(UnknownCause("History".into()))
        );
    }

    #[test]
    fn the_causes_have_the_names_the_recorded_runs_use() {
        let names: Vec<&str> = [
            LeaveCause::Requested,
            LeaveCause::Disconnected,
            LeaveCause::TooSlow,
            LeaveCause::ServerRestart,
        ]
        .map(LeaveCause::as_str)
        .to_vec();
        assert_eq!(
            names,
            ["Leave", "disconnected", "too_slow", "server_restart"]
        );
    }
}
