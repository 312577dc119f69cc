//! The events the server broadcasts: chat messages, join notices and leave notices.

use crate::lamport::LamportTime;
use siphasher::sip128::{Hasher128, SipHasher13};
use std::fmt;
use std::hash::Hash;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

/// What an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A chat message.
    Chat,
    /// A participant joined.
    Joined,
    /// A participant left.
    Left,
}

impl EventKind {
    /// A short lower-case name, used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Chat => "chat",
            EventKind::Joined => "joined",
            EventKind::Left => "left",
        }
    }
}

/// A `kind` that is none of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event kind \"{0}\"")]
pub struct UnknownKind(pub String);

impl FromStr for EventKind {
    type Err = UnknownKind;

    /// The kind [`EventKind::as_str`] names.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [EventKind::Chat, EventKind::Joined, EventKind::Left]
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| UnknownKind(text.to_owned()))
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One broadcast, stamped once by the server and delivered unchanged to everyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What the event is.
    pub kind: EventKind,
    /// The participant it is about: the sender, the joiner or the leaver.
    pub participant: Arc<str>,
    /// The chat message, or the join or leave sentence.
    pub text: String,
    /// The server's Lamport time of the broadcast.
    pub lamport: LamportTime,
    /// The server's sequence number of the broadcast: 1, 2, 3, ... without gaps.
    pub seq: u64,
}

/// The server's stamp on an accepted request: the event it became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The event's Lamport time.
    pub lamport: LamportTime,
    /// The event's sequence number.
    pub seq: u64,
}

/// A chat message's publish id with its participant, as the server remembers it to
/// answer a repeat: a 128-bit keyed digest of the two (SipHash-1-3), not the strings.
///
/// A digest takes 16 bytes whatever the id's length, and no allocation to make or to
/// look up, so a restart takes in a million stored ids in a fraction of a second.
/// The key is drawn at random by each server process and never leaves it, so no
/// client can choose ids whose digests collide; two different ids share one with a
/// probability of about 2^-128. (The nodes of a cluster each draw their own key;
/// they decide a repeat alike unless that happens.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublishKey(u64, u64);

impl PublishKey {
    /// The key of `id` published by `participant` (spelled as it joined).
    pub fn new(participant: &str, id: &str) -> Self {
        static KEY: OnceLock<(u64, u64)> = OnceLock::new();
        let (k0, k1) = *KEY.get_or_init(|| (rand::random(), rand::random()));
        let mut hasher = SipHasher13::new_with_keys(k0, k1);
        // `str`'s `Hash` ends each string with 0xff, a byte UTF-8 never holds: no two
        // pairs of strings feed the hasher the same bytes.
        participant.hash(&mut hasher);
        id.hash(&mut hasher);
        let digest = hasher.finish128();
        PublishKey(digest.h1, digest.h2)
    }
}

impl Event {
    /// The event's stamp.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            lamport: self.lamport,
            seq: self.seq,
        }
    }
}

/// "Participant X joined Chitty-Chat at Lamport time L", the notice every participant gets.
pub fn joined_sentence(name: &str, lamport: LamportTime) -> String {
    format!("Participant {name} joined Chitty-Chat at Lamport time {lamport}")
}

/// "Participant X left Chitty-Chat at Lamport time L", the notice the others get.
pub fn left_sentence(name: &str, lamport: LamportTime) -> String {
    format!("Participant {name} left Chitty-Chat at Lamport time {lamport}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_are_exactly_the_assignments() {
        assert_eq!(
            joined_sentence("alice", 3),
            "Participant alice joined Chitty-Chat at Lamport time 3"
        );
        assert_eq!(
            left_sentence("bob", 12),
            "Participant bob left Chitty-Chat at Lamport time 12"
        );
    }

    #[test]
    fn a_publish_key_tells_participants_and_ids_apart() {
        assert_eq!(PublishKey::new("alice", "1"), PublishKey::new("alice", "1"));
        assert_ne!(PublishKey::new("alice", "1"), PublishKey::new("alice", "2"));
        assert_ne!(PublishKey::new("alice", "1"), PublishKey::new("bob", "1"));
        // The same bytes split differently between name and id.
        assert_ne!(PublishKey::new("ab", "c"), PublishKey::new("a", "bc"));
    }
}
