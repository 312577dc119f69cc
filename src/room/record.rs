//! What a node of a cluster proposes to the shared log: one [`Record`] per request
//! that would change the room, and how a room hands it to the log ([`Propose`]).
//!
//! A record is a proposal, not yet an event. Every node reads the same records in
//! the same order and applies each to its room ([`super::Room::apply`]); applying
//! decides, the same way on every node, whether it becomes an event (a second Join
//! for a name already present, a Publish or Leave of a participant who has left, a
//! repeated publish id, all come to nothing). So the nodes agree on who is present
//! and on every event's sequence number without talking to each other.

use crate::error::ChatError;
use crate::lamport::LamportTime;
use crate::log_schema::LeaveCause;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// One run of one node: a random id made when the node starts, so that a node
/// restarted under the same name is told apart from the run before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Incarnation(pub u64);

impl Incarnation {
    /// A new random incarnation.
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Who holds a participant's session: a node's run and the session's number there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// The node's name (`--node`).
    pub node: Arc<str>,
    /// The node's run.
    pub incarnation: Incarnation,
    /// The session's number on that run.
    pub session: u64,
}

/// A proposal's number among those of its node's run, to hand its outcome back to
/// the request that made it.
pub type ProposalId = u64;

/// One entry of a cluster's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// The first record of a cluster's log: its epoch, which every node serves.
    Genesis {
        /// The epoch, as 32 hex digits.
        epoch: String,
    },
    /// A participant asks to join.
    Join {
        /// Who would hold its session.
        owner: Owner,
        /// The name, already validated by the node.
        name: String,
        /// The node's Lamport time for the join notice.
        lamport: LamportTime,
        /// The time on the Join request.
        client_lamport: LamportTime,
        /// Its proposal.
        proposal: ProposalId,
        /// The SHA-256 of the new session's secret, in hex: whoever holds the
        /// session's token may replace it later, on any node.
        proof: String,
        /// The proof of the session this Join replaces, if the name is present
        /// under it: that session leaves (one Lamport tick before the join).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaces: Option<String>,
    },
    /// A participant publishes a message.
    Chat {
        /// Its session.
        owner: Owner,
        /// Its name.
        name: String,
        /// The message, already validated by the node.
        text: String,
        /// The node's Lamport time for the message.
        lamport: LamportTime,
        /// The time on the Publish request.
        client_lamport: LamportTime,
        /// The id the client chose, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        publish_id: Option<String>,
        /// Its proposal.
        proposal: ProposalId,
    },
    /// A participant leaves, or its node saw it go.
    Leave {
        /// Its session.
        owner: Owner,
        /// Its name.
        name: String,
        /// The node's Lamport time for the leave notice.
        lamport: LamportTime,
        /// The time on the Leave request, when there was one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_lamport: Option<LamportTime>,
        /// Why it left, as the log names it.
        cause: String,
        /// Its proposal, when a request waits for it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proposal: Option<ProposalId>,
    },
    /// Every participant held by one run of a node leaves: the node stopped, or
    /// came back as a new run, or stopped being heard.
    NodeDown {
        /// The node's name.
        node: String,
        /// The run whose participants leave.
        incarnation: Incarnation,
        /// The Lamport time of the first leave notice; each next one is one later.
        lamport: LamportTime,
        /// How many leave notices the proposer moved its clock past: at most this
        /// many participants leave by this record (the first by name), and the
        /// proposer sends another record for any left over. None in records of
        /// builds before it was added: then all of them leave.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        leaves: Option<u64>,
        /// Why they left, as the log names it.
        cause: String,
        /// The run that proposes it.
        proposer: Incarnation,
        /// The name of the node that proposes it (it stamps the leave notices).
        #[serde(default)]
        by: String,
    },
}

impl Record {
    /// The run that made the record (none for the genesis record).
    pub fn proposer(&self) -> Option<Incarnation> {
        match self {
            Record::Genesis { .. } => None,
            Record::Join { owner, .. }
            | Record::Chat { owner, .. }
            | Record::Leave { owner, .. } => Some(owner.incarnation),
            Record::NodeDown { proposer, .. } => Some(*proposer),
        }
    }

    /// The name of the node that stamped the record (empty for the genesis record).
    pub fn stamped_by(&self) -> &str {
        match self {
            Record::Genesis { .. } => "",
            Record::Join { owner, .. }
            | Record::Chat { owner, .. }
            | Record::Leave { owner, .. } => &owner.node,
            Record::NodeDown { by, .. } => by,
        }
    }

    /// The Lamport time the record was stamped with (none for the genesis record).
    pub fn lamport(&self) -> Option<LamportTime> {
        match self {
            Record::Genesis { .. } => None,
            Record::Join { lamport, .. }
            | Record::Chat { lamport, .. }
            | Record::Leave { lamport, .. }
            | Record::NodeDown { lamport, .. } => Some(*lamport),
        }
    }

    /// The record as stored in the log.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A record is plain data: encoding it cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The record stored as `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|err| err.to_string())
    }
}

/// Why a leave in a record happened, read back; an unknown cause counts as a
/// dropped connection.
pub(crate) fn leave_cause(text: &str) -> LeaveCause {
    text.parse().unwrap_or(LeaveCause::Disconnected)
}

/// How a room in a cluster hands a record to the shared log.
pub trait Propose: Send + Sync + fmt::Debug + 'static {
    /// Hands `record` to the shared log at once, not when the future is first
    /// polled: records proposed one after another reach the log in that order. The
    /// room proposes under its lock, as it stamps, so that a node's records are
    /// stored in the order of their Lamport times. The future completes once the
    /// log has stored the record; its outcome comes later, when the room applies it.
    fn propose(&self, record: Record) -> BoxFuture<'static, Result<(), ChatError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_written() {
        let owner = Owner {
            node: Arc::from("n1"),
            incarnation: Incarnation(u64::MAX),
            session: 7,
        };
        let records = [
            Record::Genesis {
                epoch: "00".repeat(16),
            },
            Record::Join {
                owner: owner.clone(),
                name: "alice".into(),
                lamport: 3,
                client_lamport: 2,
                proposal: 1,
                proof: "ab".repeat(32),
                replaces: Some("cd".repeat(32)),
            },
            Record::Chat {
                owner: owner.clone(),
                name: "alice".into(),
                text: "hi \"there\" ✓".into(),
                lamport: 4,
                client_lamport: 3,
                publish_id: Some("id-1".into()),
                proposal: 2,
            },
            Record::Leave {
                owner,
                name: "alice".into(),
                lamport: 5,
                client_lamport: None,
                cause: "disconnected".into(),
                proposal: None,
            },
            Record::NodeDown {
                node: "n1".into(),
                incarnation: Incarnation(1),
                lamport: 9,
                leaves: Some(3),
                cause: "node_down".into(),
                proposer: Incarnation(2),
                by: "n2".into(),
            },
        ];
        for record in records {
            assert_eq!(Record::from_bytes(&record.to_bytes()), Ok(record));
        }
        assert!(Record::from_bytes(b"{\"type\":\"nonsense\"}").is_err());
    }
}
