//! The chat room: who is present, their session tokens and rate limits, and the
//! server's Lamport clock. Every accepted request becomes one event appended to the
//! [`Log`]; feeds ([`Feed`]) read the log, each at its own position.
//!
//! One mutex guards the sessions, the names and the stamping, so that stamping an
//! event and appending it (which numbers it) is one step: Lamport times rise with
//! sequence numbers, and every reader of the log sees one order. The lock is never
//! held across an `.await`. A request is answered once its event is durable
//! ([`Log::durable`]), outside the lock.
//!
//! In a cluster the room is one node's view of a room shared by several: a request
//! becomes a [`Record`] proposed to the cluster's log, and events are made when the
//! records come back, in the log's one order, by [`Room::apply`] under the same lock.

use crate::error::ChatError;
use crate::event::{EventKind, PublishKey, Stamp, joined_sentence, left_sentence};
use crate::feed::{Feed, FeedEnd};
use crate::lamport::{LamportClock, LamportTime};
use crate::log::{Entry, Epoch, Log, LogError, Recovered};
use crate::log_schema::{BroadcastCause, LeaveCause, field, message, rpc};
use crate::validate::{validate_lamport, validate_message, validate_name, validate_publish_id};
use futures::future::BoxFuture;
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

mod record;

use record::leave_cause;
pub use record::{Incarnation, Owner, ProposalId, Propose, Record};

/// How many participants may be present at once.
///
/// Each one costs a session, a feed's cursor and one HTTP/2 connection; the feeds
/// share the log, so a participant who stops reading costs no more than one who
/// keeps up.
pub const DEFAULT_MAX_PARTICIPANTS: u32 = 1000;

/// How many messages a second one participant may publish, sustained.
///
/// Far above what a person types, low enough that one script cannot flood the log
/// and push everyone else's history out of it.
pub const DEFAULT_PUBLISH_RATE: u32 = 10;

/// How many messages one participant may publish at once after a quiet spell (the
/// token bucket's size), so pasting a few lines is never refused.
pub const DEFAULT_PUBLISH_BURST: u32 = 20;

/// How many past events a newcomer sees before its join notice when its Join does
/// not say: enough to pick up a conversation, few enough to read.
pub const DEFAULT_JOIN_HISTORY: u32 = 20;

/// The most past events a Join may ask for, and the most one History call returns:
/// part of the wire contract, so it lives in [`crate::transport`].
pub use crate::transport::MAX_HISTORY_PAGE;

/// How many random bytes a session token's secret has (128 bits).
const SECRET_BYTES: usize = 16;

/// Settings of the chat room.
#[derive(Debug, Clone)]
pub struct RoomConfig {
    /// How many participants may be present at once; at least 1.
    pub max_participants: usize,
    /// Each participant's publish rate limit; `None` for no limit.
    pub publish_rate: Option<PublishRate>,
    /// How many past events a newcomer gets when its Join does not say.
    pub join_history: u32,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            max_participants: DEFAULT_MAX_PARTICIPANTS as usize,
            publish_rate: Some(PublishRate::default()),
            join_history: DEFAULT_JOIN_HISTORY,
        }
    }
}

/// A per-participant publish rate limit: a token bucket that holds `burst` messages
/// and refills at `per_second` messages a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishRate {
    /// The sustained rate, in messages a second.
    pub per_second: NonZeroU32,
    /// The bucket's size: how many messages may go at once after a quiet spell.
    pub burst: NonZeroU32,
}

impl Default for PublishRate {
    fn default() -> Self {
        Self {
            per_second: NonZeroU32::new(DEFAULT_PUBLISH_RATE).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(DEFAULT_PUBLISH_BURST).unwrap_or(NonZeroU32::MIN),
        }
    }
}

impl PublishRate {
    fn limiter(self) -> DefaultDirectRateLimiter {
        RateLimiter::direct(Quota::per_second(self.per_second).allow_burst(self.burst))
    }

    /// Takes a token from `limiter`, or says when to retry.
    fn check(self, limiter: &DefaultDirectRateLimiter) -> Result<(), ChatError> {
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(limiter.clock().now());
            ChatError::RateLimited {
                per_second: self.per_second.get(),
                burst: self.burst.get(),
                retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            }
        })
    }
}

/// A session token: the proof that a request comes from the participant who joined.
///
/// Its text is `<session id in hex>.<128-bit secret in hex>`. `Debug` hides it, so
/// it never reaches a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

impl SessionToken {
    /// A token as a client presented it.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The token's text, to hand to the client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// Where a client's previous feed stopped: the log it read and the last event it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    /// The epoch of the log it read.
    pub epoch: Epoch,
    /// The sequence number of the last event it received.
    pub after_seq: u64,
}

/// What a Join asks for beyond its name and time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinOptions {
    /// How many past events to replay before the join notice; the room's default
    /// when `None`. Capped at [`MAX_HISTORY_PAGE`].
    pub history: Option<u32>,
    /// Continue a previous feed from where it stopped.
    pub resume: Option<ResumePoint>,
    /// The token of this participant's previous session: if that session is still
    /// present, it is ended and announced as left, and this Join takes its name.
    pub replaces: Option<SessionToken>,
}

/// How a Join's request to resume turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The Join did not ask to resume.
    NotAsked,
    /// Every event after the resume point is replayed: nothing was missed.
    Resumed,
    /// The log no longer holds the resume point: this many events are gone, and the
    /// feed replays recent history instead.
    Gap {
        /// How many events after the resume point the log no longer holds.
        missed: u64,
    },
    /// The resume point is from another log (wiped or replaced): what was missed is
    /// unknown, and the feed replays recent history instead.
    OtherLog,
}

/// What a successful Join hands back.
#[derive(Debug)]
pub struct Joined {
    /// The token Publish and Leave must present.
    pub token: SessionToken,
    /// The participant's feed: the replayed events (history, or what it missed), then
    /// its own join notice, then the live events.
    pub feed: Feed,
    /// The join notice's stamp.
    pub stamp: Stamp,
    /// The log's epoch, for a later resume.
    pub epoch: Epoch,
    /// How the request to resume turned out.
    pub resume: Resume,
    /// How many past events the feed replays as history before the join notice.
    pub history: u64,
}

/// The chat room. Share it through an `Arc`.
#[derive(Debug)]
pub struct Room {
    config: RoomConfig,
    clock: LamportClock,
    log: Arc<Log>,
    mode: Mode,
    /// This node's name in a cluster (empty when alone).
    node: Arc<str>,
    /// This run of the room, which owns the sessions it holds.
    incarnation: Incarnation,
    /// In a cluster: set while the node applies the records that were in the log
    /// when it started, whose events it does not log one by one.
    replaying: std::sync::atomic::AtomicBool,
    /// Set once, under the state's lock, by [`Room::shutdown`]: Join and Publish
    /// are refused from then on, and calls that wait on more than a feed end
    /// ([`Room::stopped`]).
    stopped: tokio::sync::watch::Sender<bool>,
    state: Mutex<State>,
}

/// Who decides what becomes an event.
#[derive(Debug)]
enum Mode {
    /// The room decides and appends each event itself, under its lock.
    Alone,
    /// The room proposes a [`Record`] to the cluster's log for each request; events
    /// are made when the records are applied ([`Room::apply`]), in the log's order,
    /// the same way on every node.
    Cluster(Arc<dyn Propose>),
}

#[derive(Debug, Default)]
struct State {
    next_session: u64,
    /// The sessions this room holds.
    sessions: HashMap<u64, Session>,
    /// Everyone present (in a cluster, on every node), by name folded to lower case:
    /// names are unique regardless of case, and each is shown as its participant
    /// chose it.
    names: HashMap<Box<str>, Member>,
    /// The stamps of the chat messages the log holds, by their participant and
    /// publish id. A B-tree, not a hash map: a hash map that grows, or fills with
    /// the marks of removed keys, moves every key at once, under the room's lock
    /// (5 ms at 57,000 ids, 10 ms at 100,000, while every request waits); a B-tree
    /// changes a node or two per insert and removal.
    published: BTreeMap<PublishKey, Stamp>,
    /// The same keys by sequence number, to forget those the log trimmed. A B-tree
    /// too, not a queue, which doubles by copying everything (1.5 ms at 65,536).
    published_order: BTreeMap<u64, PublishKey>,
    /// In a cluster: the number of this room's next proposal.
    next_proposal: ProposalId,
    /// In a cluster: the requests waiting for their record to be applied.
    pending: HashMap<ProposalId, Pending>,
    /// How many of `pending` are joins, which count against the room's size.
    joining: usize,
    /// In a cluster: set while the node cannot reach the cluster's log.
    cluster_down: bool,
}

/// A participant who is present, and who holds its session.
#[derive(Debug)]
struct Member {
    name: Arc<str>,
    owner: Owner,
    /// The SHA-256 of its session's secret: whoever holds the token may replace
    /// the session, on whichever node.
    proof: Proof,
}

/// The SHA-256 of a session's secret.
type Proof = [u8; 32];

/// The proof of `secret`.
fn proof_of(secret: &[u8; SECRET_BYTES]) -> Proof {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret);
    let mut proof = [0; 32];
    proof.copy_from_slice(digest.as_ref());
    proof
}

/// The session id in `token` and the proof of its secret, when the token is spelt
/// exactly as [`Room::join`] writes tokens.
fn proof_of_token(token: &SessionToken) -> Option<(u64, Proof)> {
    let (id, secret) = token_parts(&token.0)?;
    Some((id, proof_of(&secret)))
}

/// The session id and secret of `token`, in its one spelling: lower-case hex, no
/// sign, no leading zero, as [`Room::join`] wrote it, so that no second string
/// stands for the same session.
fn token_parts(token: &str) -> Option<(u64, [u8; SECRET_BYTES])> {
    let lower_hex = |text: &str| text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let (id_text, secret) = token.split_once('.')?;
    let id = u64::from_str_radix(id_text, 16).ok()?;
    if id_text != format!("{id:x}") || !lower_hex(secret) {
        return None;
    }
    let mut bytes = [0u8; SECRET_BYTES];
    hex::decode_to_slice(secret, &mut bytes).ok()?;
    Some((id, bytes))
}

#[derive(Debug)]
struct Session {
    name: Arc<str>,
    secret: [u8; SECRET_BYTES],
    end: Arc<FeedEnd>,
    /// The sequence number of the next event its feed delivers, kept by the feed.
    position: Arc<AtomicU64>,
    /// The publish rate limit's bucket; `None` when publishing is not limited.
    limiter: Option<DefaultDirectRateLimiter>,
    /// In a cluster: its leave is proposed, so it is not proposed again.
    leaving: bool,
}

/// What a Join brings that only the room holding the session keeps.
#[derive(Debug)]
struct NewSession {
    secret: [u8; SECRET_BYTES],
    end: Arc<FeedEnd>,
    position: Arc<AtomicU64>,
    /// How many past events to replay before the join notice.
    history: u64,
    resume: Option<ResumePoint>,
}

/// A request waiting for its record to be applied.
#[derive(Debug)]
struct Pending {
    reply: oneshot::Sender<Result<Outcome, ChatError>>,
    join: Option<NewSession>,
}

/// What became of an applied record, for the request that proposed it.
#[derive(Debug)]
enum Outcome {
    /// The join notice, where the feed starts, and how the resume turned out.
    Joined(Arc<Entry>, u64, Resume),
    /// The event made.
    Stamped(Stamp),
    /// A repeated publish id: the original's stamp.
    Repeated(Stamp),
}

/// What a request came to under the lock: decided there (alone, or a repeated
/// publish id), or a record to propose to the cluster's log, whose outcome comes
/// back when it is applied.
enum Decided {
    Now(Outcome),
    Proposed(Proposed),
}

/// A publish checked (and, on a single server, stamped) by
/// [`Room::begin_publish`], waiting for [`Room::finish_publish`].
pub struct PendingPublish {
    decided: Decided,
    name: Arc<str>,
}

impl fmt::Debug for PendingPublish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingPublish")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A record on its way to the cluster's log, and where its outcome arrives.
struct Proposed {
    /// Completes once the cluster's log has stored the record.
    stored: BoxFuture<'static, Result<(), ChatError>>,
    proposal: ProposalId,
    reply: oneshot::Receiver<Result<Outcome, ChatError>>,
}

impl Decided {
    /// Proposes `record` now. Called under the room's lock, in the step that
    /// stamped the record, so that this node's records reach the cluster's log in
    /// the order of their Lamport times.
    fn proposed(
        propose: &Arc<dyn Propose>,
        record: Record,
        proposal: ProposalId,
        reply: oneshot::Receiver<Result<Outcome, ChatError>>,
    ) -> Self {
        Decided::Proposed(Proposed {
            stored: propose.propose(record),
            proposal,
            reply,
        })
    }
}

/// How long a request waits for its record to come back from the cluster's log
/// once the log has stored it.
pub const CLUSTER_APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// In a cluster, how many events back publish ids are remembered. A fixed count,
/// not the local retention: every node must decide a repeat the same way.
pub const CLUSTER_PUBLISH_ID_WINDOW: u64 = 100_000;

/// An event appended under the lock, logged after it is released.
struct Logged {
    entry: Arc<Entry>,
    cause: BroadcastCause,
    client_lamport: Option<LamportTime>,
    recipients: usize,
    /// For a Join that resumed a feed: the resume point's sequence number.
    resumed_after: Option<u64>,
    /// In a cluster: the node that stamped the event.
    stamped_by: Option<Arc<str>>,
    /// In a cluster, for an event another node stamped: this node's time once it
    /// merged the event's.
    node_lamport: Option<LamportTime>,
}

impl Room {
    /// The room over `log`, continuing from what the log held when it was opened:
    /// the clock goes on from the largest stored Lamport time, the publish ids are
    /// remembered, and everyone who was present when the server stopped is announced
    /// as having left.
    pub fn open(config: RoomConfig, log: Arc<Log>, recovered: Recovered) -> Arc<Self> {
        // Each B-tree is built whole from sorted pairs (the log gives the ids in
        // sequence order; the keys are sorted once): a million ids in a tenth of a
        // second, a third of the time a million inserts take.
        let state = State {
            published_order: recovered
                .publish_ids
                .iter()
                .map(|&(key, stamp)| (stamp.seq, key))
                .collect(),
            published: recovered.publish_ids.into_iter().collect(),
            ..State::default()
        };
        let room = Self::new(
            config,
            log,
            Mode::Alone,
            Arc::from(""),
            recovered.last_lamport,
            state,
        );
        let mut logged = Vec::new();
        for name in recovered.present {
            let lamport = room.clock.tick();
            let text = left_sentence(&name, lamport);
            let entry = room.log.append(EventKind::Left, name, text, lamport, None);
            logged.push(Logged {
                entry,
                cause: LeaveCause::ServerRestart.into(),
                client_lamport: None,
                recipients: 0,
                resumed_after: None,
                stamped_by: None,
                node_lamport: None,
            });
        }
        log_events(&logged);
        room
    }

    /// A room that is one node, `node`, of a cluster: it hands each request to the
    /// cluster's log through `propose`, and makes events only as the records come
    /// back ([`Room::apply`]). `log` starts empty and the cluster's records are
    /// applied from the first on, so every node numbers the events alike.
    pub fn open_in_cluster(
        config: RoomConfig,
        log: Arc<Log>,
        propose: Arc<dyn Propose>,
        node: &str,
    ) -> Arc<Self> {
        Self::new(
            config,
            log,
            Mode::Cluster(propose),
            Arc::from(node),
            0,
            State::default(),
        )
    }

    fn new(
        mut config: RoomConfig,
        log: Arc<Log>,
        mode: Mode,
        node: Arc<str>,
        lamport: LamportTime,
        state: State,
    ) -> Arc<Self> {
        config.max_participants = config.max_participants.max(1);
        Arc::new(Self {
            config,
            clock: LamportClock::starting_at(lamport),
            log,
            mode,
            node,
            incarnation: Incarnation::random(),
            replaying: std::sync::atomic::AtomicBool::new(false),
            stopped: tokio::sync::watch::Sender::new(false),
            state: Mutex::new(state),
        })
    }

    /// The log the room appends to.
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// In a cluster: whether the records applied now are those the log held when
    /// the node started (their events are not logged one by one: a node joining
    /// a long-lived cluster would write the whole conversation to its log).
    pub fn set_replaying(&self, replaying: bool) {
        self.replaying.store(replaying, Ordering::Release);
    }

    /// This run of the room: in a cluster, the owner of the sessions it holds.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    /// The server's Lamport time of its latest event.
    pub fn lamport_now(&self) -> LamportTime {
        self.clock.now()
    }

    /// The names of the participants present, as they chose them, sorted
    /// regardless of case. In a cluster, those present on every node.
    pub fn present(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .lock()
            .names
            .values()
            .map(|member| member.name.to_string())
            .collect();
        names.sort_by_cached_key(|name| name.to_ascii_lowercase());
        names
    }

    /// Who is present, for the participant holding `token`.
    pub fn who(&self, token: &str) -> Result<Vec<String>, ChatError> {
        authenticate(&self.lock(), token)?;
        Ok(self.present())
    }

    /// The name of the participant holding `token`, if it is present; for logs.
    pub fn name_of(&self, token: &str) -> Option<Arc<str>> {
        let state = self.lock();
        let id = authenticate(&state, token).ok()?;
        Some(Arc::clone(&state.sessions[&id].name))
    }

    /// Joins `name` (raw bytes from the wire) whose request was sent at
    /// `client_lamport`, and opens its feed at the position `options` ask for.
    ///
    /// The feed's position is set in the same step that appends the join notice, so
    /// the newcomer's feed holds every event from its position on, its own join
    /// notice included. Answer the Join only once [`Room::durable`] says the join
    /// notice is stored.
    pub async fn join(
        self: &Arc<Self>,
        name: &[u8],
        client_lamport: LamportTime,
        options: JoinOptions,
    ) -> Result<Joined, ChatError> {
        let name: Arc<str> = Arc::from(validate_name(name)?);
        validate_lamport(client_lamport, self.clock.now())?;
        let history = u64::from(
            options
                .history
                .unwrap_or(self.config.join_history)
                .min(MAX_HISTORY_PAGE),
        );
        let new = NewSession {
            secret: rand::random(),
            end: Arc::new(FeedEnd::default()),
            position: Arc::new(AtomicU64::new(0)),
            history,
            resume: options.resume,
        };
        let (secret, end, position) = (new.secret, Arc::clone(&new.end), Arc::clone(&new.position));
        let mut logged = Vec::new();
        let (id, proposed) = {
            let mut state = self.lock();
            if self.is_stopped() {
                return Err(ChatError::ShuttingDown);
            }
            self.check_log()?;
            check_cluster(&state)?;
            let key = name_key(&name);
            // A name present is taken, unless this Join holds its session's token.
            let replaces = match state.names.get(&key) {
                None => None,
                Some(member) => match options.replaces.as_ref().and_then(proof_of_token) {
                    Some((session, proof))
                        if proof == member.proof && session == member.owner.session =>
                    {
                        Some(proof)
                    }
                    _ => {
                        return Err(ChatError::NameTaken {
                            name: name.to_string(),
                        });
                    }
                },
            };
            // A session of this room that this Join replaces frees its place.
            let freed = replaces.is_some()
                && state
                    .names
                    .get(&key)
                    .is_some_and(|member| member.owner.incarnation == self.incarnation);
            if (state.sessions.len() + state.joining).saturating_sub(usize::from(freed))
                >= self.config.max_participants
            {
                return Err(ChatError::ServerFull {
                    max: self.config.max_participants,
                });
            }
            state.next_session += 1;
            let id = state.next_session;
            // The replaced session's leave notice comes first, one tick before.
            let mut lamport = self.clock.observe(client_lamport);
            if replaces.is_some() {
                lamport = self.clock.tick();
            }
            let owner = self.owner(id);
            let proof = proof_of(&new.secret);
            match &self.mode {
                Mode::Alone => {
                    if replaces.is_some() {
                        self.replace(&mut state, &key, lamport - 1, &mut logged);
                    }
                    let outcome = self.admit(
                        &mut state,
                        (key, name, owner, proof),
                        lamport,
                        client_lamport,
                        Some(new),
                        &mut logged,
                    );
                    (id, Decided::Now(outcome))
                }
                Mode::Cluster(propose) => {
                    let (proposal, reply) = expect(&mut state, Some(new));
                    let record = Record::Join {
                        owner,
                        name: name.to_string(),
                        lamport,
                        client_lamport,
                        proposal,
                        proof: hex::encode(proof),
                        replaces: replaces.map(hex::encode),
                    };
                    (id, Decided::proposed(propose, record, proposal, reply))
                }
            }
        };
        log_events(&logged);
        let outcome = self.settle(proposed).await?;
        let Outcome::Joined(entry, cursor, resume) = outcome else {
            return Err(cluster_confused());
        };
        // Replayed events before the join notice are history unless they are what a
        // resuming client missed.
        let history_before = match resume {
            Resume::Resumed => 0,
            _ => entry.seq,
        };
        Ok(Joined {
            token: SessionToken(format!("{id:x}.{}", hex::encode(secret))),
            feed: Feed::new(Arc::clone(self), id, position, history_before, end),
            stamp: entry.stamp(),
            epoch: self.log.epoch(),
            resume,
            history: if history_before == 0 {
                0
            } else {
                entry.seq - cursor
            },
        })
    }

    /// Publishes `text` (raw bytes from the wire) for the holder of `token`, whose
    /// request was sent at `client_lamport`, under `publish_id` (empty for none).
    ///
    /// A repeated publish id is answered with the stamp of the message first
    /// published under it, and nothing is appended. A refused request changes
    /// nothing. Returns once the event is durable.
    pub async fn publish(
        &self,
        token: &str,
        text: &[u8],
        client_lamport: LamportTime,
        publish_id: &str,
    ) -> Result<Stamp, ChatError> {
        let pending = self.begin_publish(token, text, client_lamport, publish_id)?;
        self.finish_publish(pending).await
    }

    /// The part of [`Room::publish`] that needs no waiting: checks the request and,
    /// on a single server, stamps and appends its message, so that requests begun
    /// one after another are stamped in that order (in a cluster, it prepares the
    /// record to propose). [`Room::finish_publish`] waits for the outcome.
    pub fn begin_publish(
        &self,
        token: &str,
        text: &[u8],
        client_lamport: LamportTime,
        publish_id: &str,
    ) -> Result<PendingPublish, ChatError> {
        let text = validate_message(text)?.to_owned();
        validate_lamport(client_lamport, self.clock.now())?;
        let publish_id = match validate_publish_id(publish_id)? {
            "" => None,
            id => Some(id),
        };
        let mut logged = Vec::new();
        // Either the stamp of the message first published under this id, or of the
        // one appended now, or the record to propose.
        let (decided, name) = {
            let mut state = self.lock();
            if self.is_stopped() {
                return Err(ChatError::ShuttingDown);
            }
            let id = authenticate(&state, token)?;
            let session = &state.sessions[&id];
            let name = Arc::clone(&session.name);
            let keyed = publish_id.map(|id| (id, PublishKey::new(&name, id)));
            if let Some(stamp) = keyed.and_then(|(_, key)| state.published.get(&key)) {
                (Decided::Now(Outcome::Repeated(*stamp)), name)
            } else {
                check_cluster(&state)?;
                if let (Some(rate), Some(limiter)) = (self.config.publish_rate, &session.limiter) {
                    rate.check(limiter)?;
                }
                self.check_log()?;
                let lamport = self.clock.observe(client_lamport);
                match &self.mode {
                    Mode::Alone => {
                        let stamp = self.append_chat(
                            &mut state,
                            Arc::clone(&name),
                            text,
                            lamport,
                            client_lamport,
                            keyed,
                            &mut logged,
                        );
                        (Decided::Now(Outcome::Stamped(stamp)), name)
                    }
                    Mode::Cluster(propose) => {
                        let (proposal, reply) = expect(&mut state, None);
                        let record = Record::Chat {
                            owner: self.owner(id),
                            name: name.to_string(),
                            text,
                            lamport,
                            client_lamport,
                            publish_id: publish_id.map(str::to_owned),
                            proposal,
                        };
                        (Decided::proposed(propose, record, proposal, reply), name)
                    }
                }
            }
        };
        log_events(&logged);
        Ok(PendingPublish { decided, name })
    }

    /// Waits for a publish begun by [`Room::begin_publish`]: its stamp once its
    /// event is durable (or the original's, for a repeated id).
    pub async fn finish_publish(&self, pending: PendingPublish) -> Result<Stamp, ChatError> {
        let PendingPublish { decided, name } = pending;
        let outcome = self.settle(decided).await?;
        let stamp = match outcome {
            Outcome::Stamped(stamp) => stamp,
            Outcome::Repeated(stamp) => {
                tracing::info!(
                    { field::RPC } = rpc::PUBLISH,
                    participant = %name,
                    seq = stamp.seq,
                    "repeated publish id: answered with the original"
                );
                stamp
            }
            Outcome::Joined(..) => return Err(cluster_confused()),
        };
        self.durable(stamp.seq).await?;
        Ok(stamp)
    }

    /// Removes the holder of `token`, whose request was sent at `client_lamport`, and
    /// tells the others. The leaver's feed delivers the events before its leave
    /// notice, then ends. Returns once the leave notice is durable.
    pub async fn leave(
        &self,
        token: &str,
        client_lamport: LamportTime,
    ) -> Result<Stamp, ChatError> {
        validate_lamport(client_lamport, self.clock.now())?;
        let mut logged = Vec::new();
        let decided = {
            let mut state = self.lock();
            let id = authenticate(&state, token)?;
            check_cluster(&state)?;
            let lamport = self.clock.observe(client_lamport);
            match &self.mode {
                Mode::Alone => {
                    let Some(entry) = self.remove_and_announce(&mut state, id, lamport) else {
                        return Err(ChatError::UnknownSession);
                    };
                    let stamp = entry.stamp();
                    logged.push(Logged::new(
                        entry,
                        LeaveCause::Requested.into(),
                        Some(client_lamport),
                        &state,
                    ));
                    Decided::Now(Outcome::Stamped(stamp))
                }
                Mode::Cluster(propose) => {
                    let (proposal, reply) = expect(&mut state, None);
                    let session = state
                        .sessions
                        .get_mut(&id)
                        .ok_or(ChatError::UnknownSession)?;
                    session.leaving = true;
                    let record = Record::Leave {
                        owner: self.owner(id),
                        name: session.name.to_string(),
                        lamport,
                        client_lamport: Some(client_lamport),
                        cause: LeaveCause::Requested.as_str().to_owned(),
                        proposal: Some(proposal),
                    };
                    Decided::proposed(propose, record, proposal, reply)
                }
            }
        };
        log_events(&logged);
        let outcome = self.settle(decided).await?;
        let Outcome::Stamped(stamp) = outcome else {
            return Err(cluster_confused());
        };
        self.durable(stamp.seq).await?;
        Ok(stamp)
    }

    /// At most `limit` durable events before sequence number `before` (the newest when
    /// 0), oldest first, for the holder of `token`; and the oldest sequence number
    /// the log holds.
    pub async fn history(
        &self,
        token: &str,
        before: u64,
        limit: u32,
    ) -> Result<(Vec<Arc<Entry>>, u64), ChatError> {
        authenticate(&self.lock(), token)?;
        let limit = limit.min(MAX_HISTORY_PAGE) as usize;
        let log = Arc::clone(&self.log);
        let page = tokio::task::spawn_blocking(move || log.page_before(before, limit))
            .await
            .map_err(|err| ChatError::LogUnavailable(LogError::ReadFailed(err.to_string())))?
            .map_err(ChatError::LogUnavailable)?;
        Ok((page, self.log.first_held()))
    }

    /// Waits until the event numbered `seq` is durable.
    pub async fn durable(&self, seq: u64) -> Result<(), ChatError> {
        self.log
            .durable(seq)
            .await
            .map_err(ChatError::LogUnavailable)
    }

    /// As [`Room::durable`], for a Join's notice: the newcomer's feed reads ahead of
    /// everyone else's (see [`crate::log::NEWCOMER_HEAD_START`]).
    pub async fn newcomer_durable(&self, seq: u64) -> Result<(), ChatError> {
        self.log
            .durable_for_newcomer(seq)
            .await
            .map_err(ChatError::LogUnavailable)
    }

    /// Stops the room: every feed delivers what was appended, then ends with
    /// [`ChatError::ShuttingDown`], and Join is refused from now on. Those present
    /// stay present in the log; the next server announces that they left (in a
    /// cluster, [`Room::leave_cluster`] has the others announce it now). Returns
    /// how many were present.
    pub fn shutdown(&self) -> usize {
        let mut state = self.lock();
        // Set under the lock, so that no Join or Publish that checks it under the
        // lock can slip in after the sessions are drained.
        self.stopped.send_replace(true);
        let present = state.sessions.len();
        let end = self.log.head() + 1;
        for (_, session) in state.sessions.drain() {
            session.end.set(end, Some(ChatError::ShuttingDown));
        }
        if matches!(self.mode, Mode::Alone) {
            state.names.clear();
        }
        crate::metrics::presence(state.names.len(), 0);
        drop(state);
        self.log.wake_readers();
        present
    }

    /// Completes once [`Room::shutdown`] has been called.
    pub async fn stopped(&self) {
        // The sender lives as long as the room, so the wait ends only when set.
        let _ = self.stopped.subscribe().wait_for(|stopped| *stopped).await;
    }

    /// Whether [`Room::shutdown`] has been called.
    pub fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }

    /// In a cluster, after [`Room::shutdown`]: has the cluster announce that this
    /// room's participants left. Does nothing when the room is alone.
    pub async fn leave_cluster(&self) -> Result<(), ChatError> {
        let Mode::Cluster(propose) = &self.mode else {
            return Ok(());
        };
        let stored = {
            let state = self.lock();
            propose.propose(self.node_down(&state, self.incarnation, &self.node))
        };
        stored.await
    }

    /// In a cluster, once the log is applied up to where it stood when the room
    /// opened: has the cluster announce that the participants of this node's
    /// earlier runs left (it was killed, or stopped while cut off). Returns how many
    /// earlier runs held participants.
    pub async fn retire_earlier_runs(&self) -> Result<usize, ChatError> {
        let Mode::Cluster(propose) = &self.mode else {
            return Ok(0);
        };
        let earlier: HashSet<Incarnation> = self
            .lock()
            .names
            .values()
            .filter(|member| {
                member.owner.node == self.node && member.owner.incarnation != self.incarnation
            })
            .map(|member| member.owner.incarnation)
            .collect();
        for &incarnation in &earlier {
            let stored = {
                let state = self.lock();
                propose.propose(self.node_down(&state, incarnation, &self.node))
            };
            stored.await?;
        }
        Ok(earlier.len())
    }

    /// In a cluster: forgets the requests waiting for their record that nobody
    /// waits for any more, and returns how many. A request dropped while it waits
    /// is forgotten at once (`Waiting`), but a publish begun on a PublishStream
    /// ([`Room::begin_publish`]) and dropped with the stream before
    /// [`Room::finish_publish`] ran never got that far: when its record then did
    /// not reach the cluster's log, nothing would ever come back to take it.
    /// Forgetting one is what `Waiting` does: a record that comes back later is
    /// applied for nobody.
    pub fn forget_abandoned(&self) -> usize {
        let mut state = self.lock();
        let abandoned: Vec<ProposalId> = state
            .pending
            .iter()
            .filter(|(_, pending)| pending.reply.is_closed())
            .map(|(proposal, _)| *proposal)
            .collect();
        for proposal in &abandoned {
            take_pending(&mut state, *proposal);
        }
        abandoned.len()
    }

    /// In a cluster: the other nodes' runs that hold participants, with their
    /// nodes' names.
    pub fn other_runs(&self) -> Vec<(Incarnation, Arc<str>)> {
        let state = self.lock();
        let mut runs: HashMap<Incarnation, Arc<str>> = HashMap::new();
        for member in state.names.values() {
            if member.owner.incarnation != self.incarnation {
                runs.entry(member.owner.incarnation)
                    .or_insert_with(|| Arc::clone(&member.owner.node));
            }
        }
        runs.into_iter().collect()
    }

    /// In a cluster: has the cluster announce that the participants of run
    /// `incarnation` of node `node` left (it was not heard from for too long).
    /// Proposed without waiting; repeated, it comes to nothing.
    pub fn retire(&self, incarnation: Incarnation, node: &str) {
        let state = self.lock();
        let record = self.node_down(&state, incarnation, node);
        self.propose_in_background(&state, vec![record]);
    }

    /// In a cluster: the node lost the cluster's log. Requests that would change
    /// the room are refused until it is back, and every feed of this node ends
    /// with [`ChatError::ClusterUnavailable`], so that clients go to another node.
    /// Returns how many feeds were ended.
    pub fn cluster_lost(&self, why: &str) -> usize {
        let mut state = self.lock();
        state.cluster_down = true;
        let end = self.log.head() + 1;
        let mut ended = 0;
        for session in state.sessions.values_mut() {
            session
                .end
                .set(end, Some(ChatError::ClusterUnavailable(why.to_owned())));
            if !session.leaving {
                session.leaving = true;
                ended += 1;
            }
        }
        drop(state);
        self.log.wake_readers();
        ended
    }

    /// In a cluster: the node reaches the cluster's log again. Takes requests
    /// again, and proposes the leave of every participant this node holds in the
    /// cluster's eyes but no longer serves (its feed ended meanwhile).
    pub fn cluster_back(&self) {
        let mut state = self.lock();
        state.cluster_down = false;
        let gone: Vec<(Arc<str>, Owner)> = state
            .names
            .values()
            .filter(|member| member.owner.incarnation == self.incarnation)
            .filter(|member| {
                state
                    .sessions
                    .get(&member.owner.session)
                    .is_none_or(|session| session.leaving)
            })
            .map(|member| (Arc::clone(&member.name), member.owner.clone()))
            .collect();
        let records = gone
            .into_iter()
            .map(|(name, owner)| Record::Leave {
                owner,
                name: name.to_string(),
                lamport: self.clock.tick(),
                client_lamport: None,
                cause: LeaveCause::Disconnected.as_str().to_owned(),
                proposal: None,
            })
            .collect();
        self.propose_in_background(&state, records);
    }

    /// A record saying that the participants of run `incarnation` of `node` left,
    /// stamped under the lock (`state`). Its leave notices take one Lamport time
    /// each from the record's on, so the clock moves past all of them now: what
    /// this node stamps before the record is applied comes after them in the log
    /// and must be later. They are counted as this node knows them: for its own
    /// run, its joins still on their way count too; another run's joins that this
    /// node has not applied yet do not.
    fn node_down(&self, state: &State, incarnation: Incarnation, node: &str) -> Record {
        let lamport = self.clock.tick();
        let joining = if incarnation == self.incarnation {
            state.joining
        } else {
            0
        };
        let leaving = joining
            + state
                .names
                .values()
                .filter(|member| member.owner.incarnation == incarnation)
                .count();
        // The record's own time is one of them, even when nobody is left to go.
        let leaves = leaving.max(1);
        for _ in 1..leaves {
            self.clock.tick();
        }
        Record::NodeDown {
            node: node.to_owned(),
            incarnation,
            lamport,
            leaves: Some(leaves as u64),
            cause: LeaveCause::NodeDown.as_str().to_owned(),
            proposer: self.incarnation,
            by: self.node.to_string(),
        }
    }

    /// Cuts off every participant whose feed stands before the oldest event the log
    /// holds: it fell so far behind that retention trimmed its position. Each is
    /// announced as having left, and its feed ends with [`ChatError::TooSlow`] when
    /// next read, so a reader that stopped reading altogether is cut off too.
    /// Returns how many were cut off.
    pub fn cut_off_trimmed(&self) -> usize {
        let first_held = self.log.first_held();
        let mut logged = Vec::new();
        let mut records = Vec::new();
        let proposed = {
            let mut state = self.lock();
            let behind: Vec<(u64, u64)> = state
                .sessions
                .iter()
                .filter(|(_, session)| !session.leaving)
                .map(|(id, session)| (*id, session.position.load(Ordering::Acquire)))
                .filter(|(_, position)| *position < first_held)
                .collect();
            for (id, position) in behind {
                if let Some(session) = state.sessions.get(&id) {
                    let err = ChatError::TooSlow {
                        position,
                        first_held,
                    };
                    session.end.set(position, Some(err));
                }
                self.depart(
                    &mut state,
                    id,
                    LeaveCause::TooSlow,
                    &mut logged,
                    &mut records,
                );
            }
            let proposed = records.len();
            self.propose_in_background(&state, records);
            proposed
        };
        if !logged.is_empty() {
            self.log.wake_readers();
        }
        log_events(&logged);
        let cut = logged.len() + proposed;
        if cut > 0 {
            crate::metrics::cut_off(cut);
        }
        cut
    }

    /// Removes `session`, if it is still present, and announces that it left for
    /// `cause`: its feed was dropped, or fell behind what the log holds.
    pub(crate) fn disconnect(&self, session: u64, cause: LeaveCause) {
        let mut logged = Vec::new();
        {
            let mut state = self.lock();
            if state.sessions.get(&session).is_none_or(|s| s.leaving) {
                return;
            }
            let mut records = Vec::new();
            self.depart(&mut state, session, cause, &mut logged, &mut records);
            self.propose_in_background(&state, records);
        }
        log_events(&logged);
    }

    /// A session leaves without a request: alone, it is removed and announced at
    /// once; in a cluster, its leave is added to `records`, for the caller to
    /// propose before it lets go of the lock.
    fn depart(
        &self,
        state: &mut State,
        id: u64,
        cause: LeaveCause,
        logged: &mut Vec<Logged>,
        records: &mut Vec<Record>,
    ) {
        let lamport = self.clock.tick();
        match &self.mode {
            Mode::Alone => {
                if let Some(entry) = self.remove_and_announce(state, id, lamport) {
                    logged.push(Logged::new(entry, cause.into(), None, state));
                }
            }
            Mode::Cluster(_) => {
                let owner = self.owner(id);
                if let Some(session) = state.sessions.get_mut(&id) {
                    session.leaving = true;
                    records.push(Record::Leave {
                        owner,
                        name: session.name.to_string(),
                        lamport,
                        client_lamport: None,
                        cause: cause.as_str().to_owned(),
                        proposal: None,
                    });
                }
            }
        }
    }

    /// Proposes `records` without waiting for them (a leave noticed where nobody
    /// waits for an answer). The caller holds the lock (`_stamping`) under which
    /// it stamped them, so that they reach the cluster's log in the order of their
    /// Lamport times. Needs a Tokio runtime to report a failure; without one (a
    /// room dropped outside it) the node's departure covers them.
    fn propose_in_background(&self, _stamping: &State, records: Vec<Record>) {
        let Mode::Cluster(propose) = &self.mode else {
            return;
        };
        if records.is_empty() {
            return;
        }
        let stored: Vec<_> = records
            .into_iter()
            .map(|record| propose.propose(record))
            .collect();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Queued in order already: only the acknowledgements are awaited, all at
        // once, so that none holds its place among NATS's unacknowledged publishes
        // while the ones before it time out.
        runtime.spawn(async move {
            for result in futures::future::join_all(stored).await {
                if let Err(err) = result {
                    tracing::warn!(error = %err, "could not propose a leave to the cluster");
                }
            }
        });
    }

    /// Applies one record of the cluster's log, in the log's order: the same
    /// records applied in the same order make the same events on every node.
    /// Answers the request that proposed it, when it is this room's.
    pub fn apply(&self, record: Record) {
        let ours = record.proposer() == Some(self.incarnation);
        let stamped_by: Arc<str> = Arc::from(record.stamped_by());
        let stamp = record.lamport();
        let mut logged = Vec::new();
        let mut orphans = Vec::new();
        {
            let mut state = self.lock();
            match record {
                Record::Genesis { .. } => {}
                Record::Join {
                    owner,
                    name,
                    lamport,
                    client_lamport,
                    proposal,
                    proof,
                    replaces,
                } => {
                    let pending = ours.then(|| take_pending(&mut state, proposal)).flatten();
                    let key = name_key(&name);
                    let (reply, new) = match pending {
                        Some(Pending { reply, join }) => (Some(reply), join),
                        None => (None, None),
                    };
                    let mut proof_bytes = [0u8; 32];
                    let proof_ok = hex::decode_to_slice(&proof, &mut proof_bytes).is_ok();
                    let taken = state
                        .names
                        .get(&key)
                        .map(|member| hex::encode(member.proof));
                    let admitted = match (&taken, &replaces) {
                        (None, _) => true,
                        (Some(held), Some(replaces)) if held == replaces => {
                            self.replace(&mut state, &key, lamport.saturating_sub(1), &mut logged);
                            true
                        }
                        (Some(_), _) => false,
                    };
                    if !admitted || !proof_ok {
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(ChatError::NameTaken { name }));
                        }
                    } else {
                        if ours && new.is_none() {
                            // Its request gave up waiting: nobody holds the session.
                            orphans.push(Record::Leave {
                                owner: owner.clone(),
                                name: name.clone(),
                                lamport: self.clock.tick(),
                                client_lamport: None,
                                cause: LeaveCause::Disconnected.as_str().to_owned(),
                                proposal: None,
                            });
                        }
                        let outcome = self.admit(
                            &mut state,
                            (key, Arc::from(name), owner, proof_bytes),
                            lamport,
                            client_lamport,
                            new,
                            &mut logged,
                        );
                        if let Some(reply) = reply {
                            let _ = reply.send(Ok(outcome));
                        }
                    }
                }
                Record::Chat {
                    owner,
                    name,
                    text,
                    lamport,
                    client_lamport,
                    publish_id,
                    proposal,
                } => {
                    let outcome = match present_as(&state, &name, &owner) {
                        None => Err(ChatError::UnknownSession),
                        Some(name) => {
                            let keyed = publish_id
                                .as_deref()
                                .map(|id| (id, PublishKey::new(&name, id)));
                            let original = keyed.and_then(|(_, key)| state.published.get(&key));
                            match original {
                                Some(stamp) => Ok(Outcome::Repeated(*stamp)),
                                None => Ok(Outcome::Stamped(self.append_chat(
                                    &mut state,
                                    name,
                                    text,
                                    lamport,
                                    client_lamport,
                                    keyed,
                                    &mut logged,
                                ))),
                            }
                        }
                    };
                    if ours {
                        answer(&mut state, proposal, outcome);
                    }
                }
                Record::Leave {
                    owner,
                    name,
                    lamport,
                    client_lamport,
                    cause,
                    proposal,
                } => {
                    let outcome = match present_as(&state, &name, &owner) {
                        None => Err(ChatError::UnknownSession),
                        Some(name) => {
                            let entry =
                                self.announce_leave(&mut state, name, &owner, lamport, None);
                            let stamp = entry.stamp();
                            logged.push(Logged::new(
                                entry,
                                leave_cause(&cause).into(),
                                client_lamport,
                                &state,
                            ));
                            Ok(Outcome::Stamped(stamp))
                        }
                    };
                    if let (true, Some(proposal)) = (ours, proposal) {
                        answer(&mut state, proposal, outcome);
                    }
                }
                Record::NodeDown {
                    node,
                    incarnation,
                    lamport,
                    leaves,
                    cause,
                    ..
                } => {
                    let mut leaving: Vec<(Box<str>, Arc<str>, Owner)> = state
                        .names
                        .iter()
                        .filter(|(_, member)| member.owner.incarnation == incarnation)
                        .map(|(key, member)| {
                            (key.clone(), Arc::clone(&member.name), member.owner.clone())
                        })
                        .collect();
                    leaving.sort_by(|a, b| a.0.cmp(&b.0));
                    // Joins of that run applied since the proposer counted them have
                    // no time reserved: the proposer stamped later events with those
                    // times, which must stay later than every leave notice before
                    // them in the log. They leave by the next record, which the
                    // proposer stamps now. Every node takes the same ones: the first
                    // by name, of the same participants.
                    let reserved =
                        leaves.map_or(leaving.len(), |n| usize::try_from(n).unwrap_or(usize::MAX));
                    let left_over = leaving.len().saturating_sub(reserved);
                    leaving.truncate(reserved);
                    let cause = leave_cause(&cause);
                    // This node's own run declared gone while it still serves (it was
                    // cut off too long): its participants must join again.
                    let reason = (incarnation == self.incarnation).then(|| {
                        ChatError::ClusterUnavailable(
                            "the cluster stopped hearing from this node and announced its \
                             participants as left"
                                .to_owned(),
                        )
                    });
                    for (lamport, (_, name, owner)) in (lamport..).zip(leaving) {
                        if ours {
                            self.clock.observe(lamport);
                        }
                        let entry =
                            self.announce_leave(&mut state, name, &owner, lamport, reason.clone());
                        logged.push(Logged::new(entry, cause.into(), None, &state));
                    }
                    if ours && left_over > 0 {
                        tracing::info!(
                            %node,
                            %incarnation,
                            left_over,
                            "more of the run's participants than counted: announcing the rest"
                        );
                        let record = self.node_down(&state, incarnation, &node);
                        self.propose_in_background(&state, vec![record]);
                    }
                }
            }
            // Another node's record is a receive: this node merges the time of each
            // event it makes (of the record itself when it makes none).
            for line in &mut logged {
                line.stamped_by = Some(Arc::clone(&stamped_by));
                if !ours {
                    line.node_lamport = Some(self.clock.observe(line.entry.lamport));
                }
            }
            if let (false, true, Some(stamp)) = (ours, logged.is_empty(), stamp) {
                self.clock.observe(stamp);
            }
            self.propose_in_background(&state, orphans);
        }
        if !self.replaying.load(Ordering::Acquire) {
            log_events(&logged);
        }
    }

    /// The outcome of a request: decided already, or once the record it proposed
    /// has been stored by the cluster's log and applied.
    async fn settle(&self, decided: Decided) -> Result<Outcome, ChatError> {
        let Proposed {
            stored,
            proposal,
            reply,
        } = match decided {
            Decided::Now(outcome) => return Ok(outcome),
            Decided::Proposed(proposed) => proposed,
        };
        let _waiting = Waiting {
            room: self,
            proposal,
        };
        if let Err(err) = stored.await {
            take_pending(&mut self.lock(), proposal);
            return Err(err);
        }
        match tokio::time::timeout(CLUSTER_APPLY_TIMEOUT, reply).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(cluster_confused()),
            Err(_) => {
                take_pending(&mut self.lock(), proposal);
                Err(ChatError::ClusterUnavailable(format!(
                    "the cluster's log stored the request but did not come back with it within {} s",
                    CLUSTER_APPLY_TIMEOUT.as_secs()
                )))
            }
        }
    }

    /// Makes `name` present, held by `owner`, and appends its join notice at
    /// `lamport`. `new` is the session when this room holds it: its feed starts
    /// where its history or resume says.
    fn admit(
        &self,
        state: &mut State,
        (key, name, owner, proof): (Box<str>, Arc<str>, Owner, Proof),
        lamport: LamportTime,
        client_lamport: LamportTime,
        new: Option<NewSession>,
        logged: &mut Vec<Logged>,
    ) -> Outcome {
        let id = owner.session;
        state.names.insert(
            key,
            Member {
                name: Arc::clone(&name),
                owner,
                proof,
            },
        );
        if let Some(new) = &new {
            state.sessions.insert(
                id,
                Session {
                    name: Arc::clone(&name),
                    secret: new.secret,
                    end: Arc::clone(&new.end),
                    position: Arc::clone(&new.position),
                    limiter: self.config.publish_rate.map(PublishRate::limiter),
                    leaving: false,
                },
            );
        }
        // What the log holds as this request finds it: the writer may trim more
        // as soon as the join notice is appended, and a feed that finds its
        // position trimmed is cut off and can resume again.
        let first_held = self.log.first_held();
        let text = joined_sentence(&name, lamport);
        let entry = self
            .log
            .append(EventKind::Joined, name, text, lamport, None);
        let mut line = Logged::new(
            Arc::clone(&entry),
            BroadcastCause::Join,
            Some(client_lamport),
            state,
        );
        crate::metrics::presence(state.names.len(), state.sessions.len());
        let (cursor, resume) = match new {
            Some(new) => {
                let (cursor, resume) = start_position(
                    new.resume,
                    self.log.epoch(),
                    entry.seq,
                    first_held,
                    new.history,
                );
                if resume == Resume::Resumed {
                    line.resumed_after = Some(cursor - 1);
                }
                new.position.store(cursor, Ordering::Release);
                (cursor, resume)
            }
            None => (entry.seq, Resume::NotAsked),
        };
        logged.push(line);
        Outcome::Joined(entry, cursor, resume)
    }

    /// Ends the session present under `key`, which a newer one of the same
    /// participant replaces, and appends its leave notice at `lamport`.
    fn replace(
        &self,
        state: &mut State,
        key: &str,
        lamport: LamportTime,
        logged: &mut Vec<Logged>,
    ) {
        let Some(member) = state.names.get(key) else {
            return;
        };
        let (name, owner) = (Arc::clone(&member.name), member.owner.clone());
        let entry = self.announce_leave(state, name, &owner, lamport, Some(ChatError::Replaced));
        logged.push(Logged::new(entry, LeaveCause::Replaced.into(), None, state));
    }

    /// Appends a chat message of `name` and remembers its publish id, given with
    /// its key.
    #[allow(clippy::too_many_arguments)]
    fn append_chat(
        &self,
        state: &mut State,
        name: Arc<str>,
        text: String,
        lamport: LamportTime,
        client_lamport: LamportTime,
        publish_id: Option<(&str, PublishKey)>,
        logged: &mut Vec<Logged>,
    ) -> Stamp {
        let entry = self.log.append(
            EventKind::Chat,
            Arc::clone(&name),
            text,
            lamport,
            publish_id.map(|(id, _)| Box::from(id)),
        );
        let stamp = entry.stamp();
        if let Some((_, key)) = publish_id {
            // Alone, the ids of the events the log holds; in a cluster, a window
            // every node keeps alike.
            let keep_from = match self.mode {
                Mode::Alone => self.log.first_held(),
                Mode::Cluster(_) => stamp.seq.saturating_sub(CLUSTER_PUBLISH_ID_WINDOW),
            };
            remember_publish_id(state, key, stamp, keep_from);
        }
        logged.push(Logged::new(
            entry,
            BroadcastCause::Publish,
            Some(client_lamport),
            state,
        ));
        stamp
    }

    /// The owner of this room's session `id`.
    fn owner(&self, session: u64) -> Owner {
        Owner {
            node: Arc::clone(&self.node),
            incarnation: self.incarnation,
            session,
        }
    }

    fn check_log(&self) -> Result<(), ChatError> {
        match self.log.failure() {
            Some(err) => Err(ChatError::LogUnavailable(err)),
            None => Ok(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-changed in a
        // way that matters more than losing the whole room, so carry on.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Removes a session of this room and appends its leave notice at `lamport`;
    /// its feed ends before the notice.
    fn remove_and_announce(
        &self,
        state: &mut State,
        id: u64,
        lamport: LamportTime,
    ) -> Option<Arc<Entry>> {
        let name = Arc::clone(&state.sessions.get(&id)?.name);
        Some(self.announce_leave(state, name, &self.owner(id), lamport, None))
    }

    /// Makes `name`, held by `owner`, absent and appends its leave notice at
    /// `lamport`. When this room holds the session, the session goes too, and its
    /// feed ends before the notice.
    fn announce_leave(
        &self,
        state: &mut State,
        name: Arc<str>,
        owner: &Owner,
        lamport: LamportTime,
        reason: Option<ChatError>,
    ) -> Arc<Entry> {
        state.names.remove(&name_key(&name));
        // The feed's end is set before the notice is appended: the writer may make
        // the notice durable at once, and the feed must never deliver it.
        let seq = self.log.head() + 1;
        if owner.incarnation == self.incarnation
            && let Some(session) = state.sessions.remove(&owner.session)
        {
            session.end.set(seq, reason);
        }
        crate::metrics::presence(state.names.len(), state.sessions.len());
        let text = left_sentence(&name, lamport);
        let entry = self.log.append(EventKind::Left, name, text, lamport, None);
        debug_assert_eq!(entry.seq, seq, "appends are serialised by the room's lock");
        entry
    }
}

/// Refuses a request that would change the room while the node cannot reach the
/// cluster's log.
fn check_cluster(state: &State) -> Result<(), ChatError> {
    if state.cluster_down {
        Err(ChatError::ClusterUnavailable(
            "it lost its connection to NATS".to_owned(),
        ))
    } else {
        Ok(())
    }
}

/// Registers a request waiting for its record; returns the proposal's number and
/// where its outcome arrives.
fn expect(
    state: &mut State,
    join: Option<NewSession>,
) -> (ProposalId, oneshot::Receiver<Result<Outcome, ChatError>>) {
    state.next_proposal += 1;
    let proposal = state.next_proposal;
    let (reply, outcome) = oneshot::channel();
    if join.is_some() {
        state.joining += 1;
    }
    state.pending.insert(proposal, Pending { reply, join });
    (proposal, outcome)
}

/// A request waiting for its record to come back from the cluster's log. When the
/// wait is dropped (the client gave up and its RPC was cancelled), the request
/// stops waiting: a Join applied later finds nobody to hold its session and has it
/// announced as left. Found by the cluster's container test: a rejoin cut short
/// while its node could not read the log left a session nobody held, and the name
/// stayed taken for good.
struct Waiting<'a> {
    room: &'a Room,
    proposal: ProposalId,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // Settled already (answered, or timed out) when it is no longer pending.
        take_pending(&mut self.room.lock(), self.proposal);
    }
}

/// Takes the request waiting for `proposal`, if it still waits.
fn take_pending(state: &mut State, proposal: ProposalId) -> Option<Pending> {
    let pending = state.pending.remove(&proposal)?;
    if pending.join.is_some() {
        state.joining -= 1;
    }
    Some(pending)
}

/// Answers the request waiting for `proposal`, if it still waits.
fn answer(state: &mut State, proposal: ProposalId, outcome: Result<Outcome, ChatError>) {
    if let Some(pending) = take_pending(state, proposal) {
        let _ = pending.reply.send(outcome);
    }
}

/// The name as present, when `name` is present and held by `owner`.
fn present_as(state: &State, name: &str, owner: &Owner) -> Option<Arc<str>> {
    state
        .names
        .get(&name_key(name))
        .filter(|member| member.owner == *owner)
        .map(|member| Arc::clone(&member.name))
}

/// A record came back with an outcome of the wrong kind: never, short of a bug.
fn cluster_confused() -> ChatError {
    ChatError::ClusterUnavailable("the request's outcome was lost".to_owned())
}

/// Where a newcomer's feed starts, and what became of the resume it asked for: its
/// join notice is `joined` and the log holds from `first_held` on. Without a resume
/// (or with one the log cannot honour) the feed starts `history` events before the
/// join notice; a resume from this log starts right after the event it names,
/// unless the log no longer holds what came next, and then it says how much is gone.
fn start_position(
    resume: Option<ResumePoint>,
    epoch: Epoch,
    joined: u64,
    first_held: u64,
    history: u64,
) -> (u64, Resume) {
    let recent = joined.saturating_sub(history).max(first_held);
    match resume {
        None => (recent, Resume::NotAsked),
        Some(point) if point.epoch != epoch || point.after_seq >= joined => {
            (recent, Resume::OtherLog)
        }
        Some(point) if point.after_seq + 1 >= first_held => (point.after_seq + 1, Resume::Resumed),
        Some(point) => {
            let missed = first_held - (point.after_seq + 1);
            (recent, Resume::Gap { missed })
        }
    }
}

/// Remembers the stamp of a message published under `id`, and forgets the ids whose
/// messages the log no longer holds.
fn remember_publish_id(state: &mut State, key: PublishKey, stamp: Stamp, first_held: u64) {
    while let Some(oldest) = state.published_order.first_entry() {
        if *oldest.key() >= first_held {
            break;
        }
        state.published.remove(&oldest.remove());
    }
    state.published_order.insert(stamp.seq, key);
    state.published.insert(key, stamp);
}

impl Logged {
    fn new(
        entry: Arc<Entry>,
        cause: BroadcastCause,
        client_lamport: Option<LamportTime>,
        state: &State,
    ) -> Self {
        Self {
            entry,
            cause,
            client_lamport,
            recipients: state.sessions.len(),
            resumed_after: None,
            stamped_by: None,
            node_lamport: None,
        }
    }
}

/// One log line per event, written after the lock is released.
fn log_events(logged: &[Logged]) {
    for Logged {
        entry,
        cause,
        client_lamport,
        recipients,
        resumed_after,
        stamped_by,
        node_lamport,
    } in logged
    {
        let level_is_warn = *cause == BroadcastCause::Leave(LeaveCause::TooSlow);
        macro_rules! line {
            ($level:ident) => {
                // `event!`, since `info!` with a `target:` takes no constant field names.
                tracing::event!(
                    target: "chittychat::broadcast",
                    tracing::Level::$level,
                    { field::CAUSE } = cause.as_str(),
                    { field::KIND } = %entry.kind,
                    { field::PARTICIPANT } = %entry.participant,
                    { field::TEXT } = %entry.text,
                    { field::LAMPORT } = entry.lamport,
                    { field::SEQ } = entry.seq,
                    { field::CLIENT_LAMPORT } = *client_lamport,
                    { field::RECIPIENTS } = *recipients,
                    { field::RESUMED_AFTER } = *resumed_after,
                    { field::NODE } = stamped_by.as_deref(),
                    { field::NODE_LAMPORT } = *node_lamport,
                    "{}",
                    message::BROADCAST
                )
            };
        }
        if level_is_warn {
            line!(WARN);
        } else {
            line!(INFO);
        }
    }
}

/// The key under which a name is unique: names differ by more than case.
fn name_key(name: &str) -> Box<str> {
    name.to_ascii_lowercase().into_boxed_str()
}

/// Finds the session a token names, comparing its secret in constant time.
///
/// Only the token's one spelling is accepted: lower-case hex, no sign, no leading
/// zero, as [`Room::join`] wrote it, so that no second string opens the session.
fn authenticate(state: &State, token: &str) -> Result<u64, ChatError> {
    let (id, bytes) = token_parts(token).ok_or(ChatError::UnknownSession)?;
    let session = state.sessions.get(&id).ok_or(ChatError::UnknownSession)?;
    if bool::from(session.secret.ct_eq(&bytes)) {
        Ok(id)
    } else {
        Err(ChatError::UnknownSession)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::Delivery;
    use crate::log::{LogConfig, Retention, Storage};
    use crate::validate::MAX_LAMPORT_LEAD;
    use tokio_stream::StreamExt;

    fn room_with(config: RoomConfig, max_events: u64) -> Arc<Room> {
        let (log, recovered) = Log::open(&LogConfig {
            storage: Storage::Memory,
            retention: Retention {
                max_events,
                max_age: None,
            },
        })
        .unwrap();
        Room::open(config, log, recovered)
    }

    fn room() -> Arc<Room> {
        room_with(
            RoomConfig {
                publish_rate: None,
                join_history: 0,
                ..RoomConfig::default()
            },
            1000,
        )
    }

    /// A cluster's log that only keeps what it is given.
    #[derive(Debug, Default)]
    struct Kept(Mutex<Vec<Record>>);

    impl Propose for Kept {
        fn propose(&self, record: Record) -> BoxFuture<'static, Result<(), ChatError>> {
            self.0.lock().unwrap().push(record);
            Box::pin(std::future::ready(Ok(())))
        }
    }

    /// A node "here" of a cluster whose log is `Kept`, with its events in memory.
    fn cluster_room() -> (Arc<Room>, Arc<Kept>) {
        let kept = Arc::new(Kept::default());
        let (log, _) = Log::open(&LogConfig {
            storage: Storage::Memory,
            retention: Retention {
                max_events: 1000,
                max_age: None,
            },
        })
        .unwrap();
        let room = Room::open_in_cluster(RoomConfig::default(), log, kept.clone(), "here");
        (room, kept)
    }

    /// The run of node "there" that the tests find gone.
    const GONE: Incarnation = Incarnation(7);

    /// A join held by [`GONE`], as the cluster's log would carry it.
    fn gone_join(session: u64, name: &str) -> Record {
        Record::Join {
            owner: Owner {
                node: Arc::from("there"),
                incarnation: GONE,
                session,
            },
            name: name.to_owned(),
            lamport: 1 + session,
            client_lamport: 0,
            proposal: session,
            proof: "00".repeat(32),
            replaces: None,
        }
    }

    #[tokio::test]
    async fn a_node_down_record_moves_the_clock_past_every_leave_it_will_make() {
        let (room, kept) = cluster_room();
        for (session, name) in (0..).zip(["ann", "bea", "cid"]) {
            room.apply(gone_join(session, name));
        }
        room.retire(GONE, "there");
        let record = kept.0.lock().unwrap().pop().expect("a record proposed");
        // What the node stamps before its record comes back is later than the
        // record's leave notices, which it precedes in the log.
        let stamped_meanwhile = room.clock.tick();
        room.apply(record);
        room.durable(room.log().head()).await.unwrap();
        let leaves: Vec<LamportTime> = room
            .log()
            .read_stored(1, 100)
            .unwrap()
            .iter()
            .filter(|entry| entry.kind == EventKind::Left)
            .map(|entry| entry.lamport)
            .collect();
        assert_eq!(leaves.len(), 3, "{leaves:?}");
        assert!(
            leaves.iter().all(|&leave| leave < stamped_meanwhile),
            "leaves at {leaves:?}, stamped meanwhile at {stamped_meanwhile}"
        );
    }

    #[tokio::test]
    async fn a_run_s_joins_applied_after_its_node_down_was_stamped_leave_by_a_record_of_their_own()
    {
        let (room, kept) = cluster_room();
        for (session, name) in (0..).zip(["ann", "bea", "cid"]) {
            room.apply(gone_join(session, name));
        }
        // Three counted; a fourth join of the gone run was in the cluster's log
        // before the record, but this node had not applied it when it stamped it.
        room.retire(GONE, "there");
        let node_down = kept.0.lock().unwrap().pop().expect("a record proposed");
        room.apply(gone_join(3, "abe"));
        let stamped_meanwhile = room.clock.tick();
        room.apply(node_down);
        room.durable(room.log().head()).await.unwrap();
        let leaves = |room: &Room| -> Vec<(String, LamportTime)> {
            room.log()
                .read_stored(1, 100)
                .unwrap()
                .iter()
                .filter(|entry| entry.kind == EventKind::Left)
                .map(|entry| (entry.participant.to_string(), entry.lamport))
                .collect()
        };
        let first = leaves(&room);
        assert_eq!(
            first
                .iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>(),
            ["abe", "ann", "bea"],
            "as many as counted leave, the first by name"
        );
        assert!(
            first.iter().all(|&(_, leave)| leave < stamped_meanwhile),
            "leaves {first:?}, stamped meanwhile at {stamped_meanwhile}"
        );

        // The proposer sent another record for the one left over, later than
        // everything it stamped meanwhile.
        let again = kept.0.lock().unwrap().pop().expect("a record for the rest");
        room.apply(again);
        room.durable(room.log().head()).await.unwrap();
        let all = leaves(&room);
        assert_eq!(all.len(), 4, "{all:?}");
        assert_eq!(all[3].0, "cid");
        assert!(all[3].1 > stamped_meanwhile, "{all:?}");
        assert!(
            room.other_runs().is_empty(),
            "nobody of the gone run is left"
        );
    }

    #[tokio::test]
    async fn a_publish_dropped_before_it_waited_is_forgotten_when_its_record_never_comes_back() {
        let (room, kept) = cluster_room();
        // Join: the record is proposed, and applied as the cluster's log would.
        let joining = tokio::spawn({
            let room = Arc::clone(&room);
            async move { room.join(b"ann", 0, JoinOptions::default()).await }
        });
        let record = loop {
            if let Some(record) = kept.0.lock().unwrap().pop() {
                break record;
            }
            tokio::task::yield_now().await;
        };
        room.apply(record);
        let joined = joining.await.unwrap().unwrap();
        let token = joined.token.expose().to_owned();

        // One publish is begun and dropped, as with its PublishStream, before it
        // waited; its record never comes back. Another is begun and kept.
        drop(room.begin_publish(&token, b"lost", 0, "").unwrap());
        let kept_publish = room.begin_publish(&token, b"kept", 0, "").unwrap();
        assert_eq!(room.lock().pending.len(), 2);
        assert_eq!(room.forget_abandoned(), 1);
        assert_eq!(
            room.lock().pending.len(),
            1,
            "the one still waited for stays"
        );

        // The kept one is answered as ever when its record comes back.
        let record = kept
            .0
            .lock()
            .unwrap()
            .pop()
            .expect("the kept publish's record");
        let finishing = tokio::spawn({
            let room = Arc::clone(&room);
            async move { room.finish_publish(kept_publish).await }
        });
        room.apply(record);
        let stamp = finishing.await.unwrap().unwrap();
        assert!(stamp.seq > joined.stamp.seq);
        assert!(room.lock().pending.is_empty());
    }

    async fn join(room: &Arc<Room>, name: &str) -> Joined {
        room.join(name.as_bytes(), 0, JoinOptions::default())
            .await
            .unwrap()
    }

    async fn next(feed: &mut Feed) -> Delivery {
        feed.next().await.expect("feed ended").expect("feed failed")
    }

    #[tokio::test]
    async fn newcomer_gets_its_own_join_notice_first() {
        let room = room();
        let mut alice = join(&room, "alice").await;
        let event = next(&mut alice.feed).await;
        assert_eq!(event.entry.kind, EventKind::Joined);
        assert_eq!(event.entry.seq, 1);
        assert!(!event.history);
        assert_eq!(
            event.entry.text,
            "Participant alice joined Chitty-Chat at Lamport time 1"
        );
    }

    #[tokio::test]
    async fn stamps_merge_the_client_clock_and_rise_with_seq() {
        let room = room();
        let alice = room
            .join(b"alice", 10, JoinOptions::default())
            .await
            .unwrap();
        assert_eq!(
            alice.stamp,
            Stamp {
                lamport: 11,
                seq: 1
            }
        );
        let token = alice.token.expose().to_owned();
        // A request from behind the server's clock still advances it.
        assert_eq!(
            room.publish(&token, b"hi", 2, "").await.unwrap(),
            Stamp {
                lamport: 12,
                seq: 2
            }
        );
        assert_eq!(
            room.publish(&token, b"hi", 50, "").await.unwrap(),
            Stamp {
                lamport: 51,
                seq: 3
            }
        );
    }

    #[tokio::test]
    async fn a_newcomer_sees_recent_history_marked_as_such_before_its_join() {
        let room = room();
        let alice = join(&room, "alice").await;
        let token = alice.token.expose().to_owned();
        for i in 0..5 {
            room.publish(&token, format!("m{i}").as_bytes(), 0, "")
                .await
                .unwrap();
        }
        let options = JoinOptions {
            history: Some(3),
            replaces: None,
            resume: None,
        };
        let mut bob = room.join(b"bob", 0, options).await.unwrap();
        assert_eq!(bob.history, 3);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let delivery = next(&mut bob.feed).await;
            seen.push((delivery.entry.seq, delivery.history));
        }
        assert_eq!(seen, [(4, true), (5, true), (6, true), (7, false)]);
    }

    #[tokio::test]
    async fn a_resumed_feed_replays_exactly_what_was_missed() {
        let room = room();
        let alice = join(&room, "alice").await;
        let mut bob = join(&room, "bob").await;
        let token = alice.token.expose().to_owned();
        let seen = next(&mut bob.feed).await.entry.seq;
        drop(bob.feed);
        room.publish(&token, b"while away", 0, "").await.unwrap();
        let resume = ResumePoint {
            epoch: bob.epoch,
            after_seq: seen,
        };
        let mut again = room
            .join(
                b"bob",
                0,
                JoinOptions {
                    history: None,
                    replaces: None,
                    resume: Some(resume),
                },
            )
            .await
            .unwrap();
        assert_eq!(again.resume, Resume::Resumed);
        let mut texts = Vec::new();
        loop {
            let delivery = next(&mut again.feed).await;
            assert!(!delivery.history);
            texts.push((delivery.entry.seq, delivery.entry.kind));
            if delivery.entry.kind == EventKind::Joined && &*delivery.entry.participant == "bob" {
                break;
            }
        }
        assert_eq!(
            texts,
            [
                (3, EventKind::Left),
                (4, EventKind::Chat),
                (5, EventKind::Joined)
            ]
        );
    }

    #[tokio::test]
    async fn a_resume_beyond_retention_or_from_another_log_says_so() {
        let room = room_with(
            RoomConfig {
                publish_rate: None,
                join_history: 2,
                ..RoomConfig::default()
            },
            4,
        );
        let alice = join(&room, "alice").await;
        let token = alice.token.expose().to_owned();
        for i in 0..6 {
            room.publish(&token, format!("m{i}").as_bytes(), 0, "")
                .await
                .unwrap();
        }
        // Events 1..=7 appended, the log holds 4..=7; after seq 1, 2 and 3 are gone.
        let gap = room
            .join(
                b"bob",
                0,
                JoinOptions {
                    history: None,
                    replaces: None,
                    resume: Some(ResumePoint {
                        epoch: alice.epoch,
                        after_seq: 1,
                    }),
                },
            )
            .await
            .unwrap();
        room.durable(gap.stamp.seq).await.unwrap();
        assert_eq!(gap.resume, Resume::Gap { missed: 2 });
        assert_eq!(gap.history, 2);
        let other = room
            .join(
                b"carol",
                0,
                JoinOptions {
                    history: None,
                    replaces: None,
                    resume: Some(ResumePoint {
                        epoch: Epoch::random(),
                        after_seq: 3,
                    }),
                },
            )
            .await
            .unwrap();
        assert_eq!(other.resume, Resume::OtherLog);
    }

    #[tokio::test]
    async fn a_reader_whose_position_was_trimmed_is_cut_off_and_announced() {
        let room = room_with(
            RoomConfig {
                publish_rate: None,
                join_history: 0,
                ..RoomConfig::default()
            },
            4,
        );
        let mut slow = join(&room, "slow").await;
        let mut fast = join(&room, "fast").await;
        let token = fast.token.expose().to_owned();
        next(&mut fast.feed).await;
        // fast keeps up; slow reads nothing while the log moves past its position.
        for i in 0..6 {
            let stamp = room
                .publish(&token, format!("m{i}").as_bytes(), 0, "")
                .await
                .unwrap();
            assert_eq!(next(&mut fast.feed).await.entry.seq, stamp.seq);
        }
        let err = match slow.feed.next().await {
            Some(Err(err)) => err,
            other => panic!("the slow reader's position is gone, yet: {other:?}"),
        };
        assert!(
            matches!(err, ChatError::TooSlow { position: 1, .. }),
            "{err:?}"
        );
        assert_eq!(room.present(), ["fast"]);
        let mut last = next(&mut fast.feed).await;
        while last.entry.kind != EventKind::Left {
            last = next(&mut fast.feed).await;
        }
        assert_eq!(&*last.entry.participant, "slow");
    }

    #[tokio::test]
    async fn a_repeated_publish_id_is_answered_with_the_original() {
        let room = room();
        let alice = join(&room, "alice").await;
        let token = alice.token.expose().to_owned();
        let first = room.publish(&token, b"once", 0, "id-1").await.unwrap();
        let again = room.publish(&token, b"once", 0, "id-1").await.unwrap();
        assert_eq!(first, again);
        let other = room.publish(&token, b"twice", 0, "id-2").await.unwrap();
        assert_eq!(other.seq, first.seq + 1);
        assert!(matches!(
            room.publish(&token, b"x", 0, "has space").await,
            Err(ChatError::InvalidPublishId { .. })
        ));
    }

    #[tokio::test]
    async fn a_publish_id_is_remembered_across_a_restart_for_its_participant_only() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let (log, recovered) = Log::open(&LogConfig {
                storage: Storage::Disk(dir.path().to_owned()),
                retention: Retention {
                    max_events: 1000,
                    max_age: None,
                },
            })
            .unwrap();
            Room::open(RoomConfig::default(), log, recovered)
        };
        let first = {
            let room = open();
            let alice = join(&room, "alice").await;
            let token = alice.token.expose().to_owned();
            room.publish(&token, b"once", 0, "id-1").await.unwrap()
        };
        // Everything above is dropped: the log's writer stopped and closed the file.
        let room = open();
        let alice = join(&room, "alice").await;
        let bob = join(&room, "bob").await;
        let again = room
            .publish(alice.token.expose(), b"once", 0, "id-1")
            .await
            .unwrap();
        assert_eq!(again, first);
        let bobs = room
            .publish(bob.token.expose(), b"mine", 0, "id-1")
            .await
            .unwrap();
        assert!(bobs.seq > first.seq, "{bobs:?} after {first:?}");
        let bobs_again = room
            .publish(bob.token.expose(), b"mine", 0, "id-1")
            .await
            .unwrap();
        assert_eq!(bobs_again, bobs);
    }

    #[tokio::test]
    async fn a_time_far_ahead_is_refused_so_the_clock_keeps_rising() {
        let room = room();
        let alice = join(&room, "alice").await;
        let token = alice.token.expose().to_owned();
        let before = room.lamport_now();
        assert!(matches!(
            room.publish(&token, b"x", u64::MAX, "").await,
            Err(ChatError::LamportTooFarAhead { .. })
        ));
        assert!(matches!(
            room.join(b"bob", u64::MAX, JoinOptions::default()).await,
            Err(ChatError::LamportTooFarAhead { .. })
        ));
        assert!(matches!(
            room.leave(&token, before + MAX_LAMPORT_LEAD + 1).await,
            Err(ChatError::LamportTooFarAhead { .. })
        ));
        assert_eq!(room.lamport_now(), before);
        assert_eq!(room.present(), ["alice"]);
        let far = room
            .publish(&token, b"far", before + MAX_LAMPORT_LEAD, "")
            .await
            .unwrap();
        let later = room.publish(&token, b"later", 0, "").await.unwrap();
        assert_eq!(far.lamport, before + MAX_LAMPORT_LEAD + 1);
        assert!(later.lamport > far.lamport);
    }

    #[tokio::test]
    async fn a_wrong_token_is_refused_and_changes_nothing() {
        let room = room();
        let alice = join(&room, "alice").await;
        let real = alice.token.expose().to_owned();
        let (id, secret) = real.split_once('.').unwrap();
        let mut flipped = secret.to_owned();
        flipped.replace_range(0..1, if secret.starts_with('0') { "1" } else { "0" });
        let before = room.lamport_now();
        for bad in [
            String::new(),
            "nonsense".into(),
            format!("{id}.{flipped}"),
            format!("ff.{secret}"),
            format!("{id}.{}", &secret[..30]),
            format!("{id}.é{}", &secret[2..]),
            // Other spellings of the same numbers.
            format!("0{id}.{secret}"),
            format!("+{id}.{secret}"),
            format!("{id}.{}", secret.to_uppercase()),
            format!("{id}.+{}", &secret[1..]),
        ] {
            assert_eq!(
                room.publish(&bad, b"x", 0, "").await,
                Err(ChatError::UnknownSession)
            );
            assert_eq!(room.leave(&bad, 0).await, Err(ChatError::UnknownSession));
            assert!(room.history(&bad, 0, 10).await.is_err());
        }
        assert_eq!(room.lamport_now(), before);
        assert_eq!(room.present(), ["alice"]);
    }

    #[tokio::test]
    async fn dropping_a_feed_announces_a_leave_exactly_once() {
        let room = room();
        let alice = join(&room, "alice").await;
        let mut bob = join(&room, "bob").await;
        drop(alice.feed);
        // A late Leave with the old token is refused; the leave was already announced.
        assert_eq!(
            room.leave(alice.token.expose(), 0).await,
            Err(ChatError::UnknownSession)
        );
        let kinds: Vec<_> = [next(&mut bob.feed).await, next(&mut bob.feed).await]
            .iter()
            .map(|d| (d.entry.kind, d.entry.participant.to_string()))
            .collect();
        assert_eq!(
            kinds,
            [
                (EventKind::Joined, "bob".to_string()),
                (EventKind::Left, "alice".to_string())
            ]
        );
        assert_eq!(room.present(), ["bob"]);
        // The name is free again.
        join(&room, "alice").await;
    }

    #[tokio::test]
    async fn a_feed_told_to_lock_elsewhere_announces_its_leave_there() {
        let room = room();
        let mut alice = join(&room, "alice").await;
        let mut bob = join(&room, "bob").await;
        // A runtime that runs its tasks only while this test drives it.
        let elsewhere = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        bob.feed.lock_elsewhere(elsewhere.handle().clone());
        drop(bob.feed);
        // Dropped here, but left there: not yet.
        assert_eq!(room.present(), ["alice", "bob"]);
        let watched = Arc::clone(&room);
        let left = std::thread::spawn(move || {
            elsewhere.block_on(async {
                let bob_gone = async {
                    while watched.present().len() > 1 {
                        tokio::task::yield_now().await;
                    }
                };
                tokio::time::timeout(Duration::from_secs(10), bob_gone).await
            })
        });
        assert!(left.join().unwrap().is_ok(), "bob never left");
        assert_eq!(room.present(), ["alice"]);
        let mut heard = Vec::new();
        for _ in 0..3 {
            let delivery = next(&mut alice.feed).await;
            heard.push((delivery.entry.kind, delivery.entry.participant.to_string()));
        }
        assert_eq!(
            heard,
            [
                (EventKind::Joined, "alice".to_string()),
                (EventKind::Joined, "bob".to_string()),
                (EventKind::Left, "bob".to_string())
            ]
        );
    }

    #[tokio::test]
    async fn leave_ends_the_leavers_feed_without_its_own_notice() {
        let room = room();
        let mut alice = join(&room, "alice").await;
        room.leave(alice.token.expose(), 0).await.unwrap();
        assert_eq!(next(&mut alice.feed).await.entry.kind, EventKind::Joined);
        assert!(alice.feed.next().await.is_none());
    }

    #[tokio::test]
    async fn shutdown_ends_every_feed_with_a_reason_and_refuses_joins() {
        let room = room();
        let mut alice = join(&room, "alice").await;
        assert_eq!(room.shutdown(), 1);
        assert_eq!(next(&mut alice.feed).await.entry.kind, EventKind::Joined);
        assert_eq!(
            alice.feed.next().await.unwrap().unwrap_err(),
            ChatError::ShuttingDown
        );
        assert_eq!(
            room.join(b"bob", 0, JoinOptions::default())
                .await
                .unwrap_err(),
            ChatError::ShuttingDown
        );
    }

    #[tokio::test]
    async fn a_rejoin_with_the_previous_token_replaces_the_session_at_once() {
        let room = room();
        let mut alice = join(&room, "alice").await;
        let mut bob = join(&room, "bob").await;
        let _ = next(&mut alice.feed).await;
        let _ = next(&mut bob.feed).await;
        // Without the token, with another's, or with hers spelt another way (another
        // session id, upper-case hex), the name is taken.
        let (id, secret) = alice.token.expose().split_once('.').unwrap();
        let respelt = [
            SessionToken::new(format!("ff{id}.{secret}")),
            SessionToken::new(format!("{id}.{}", secret.to_uppercase())),
        ];
        for replaces in [
            None,
            Some(bob.token.clone()),
            Some(SessionToken::new("1.zz")),
        ]
        .into_iter()
        .chain(respelt.map(Some))
        {
            let options = JoinOptions {
                replaces,
                ..JoinOptions::default()
            };
            assert!(matches!(
                room.join(b"alice", 0, options).await,
                Err(ChatError::NameTaken { .. })
            ));
        }
        let options = JoinOptions {
            replaces: Some(alice.token.clone()),
            ..JoinOptions::default()
        };
        let again = room.join(b"ALICE", 0, options).await.unwrap();
        // The old session is gone, told why; the others see it leave, then come back.
        let bob_joined = next(&mut alice.feed).await;
        assert_eq!(&*bob_joined.entry.participant, "bob");
        let ended = alice.feed.next().await.expect("a last word");
        assert_eq!(ended.unwrap_err(), ChatError::Replaced);
        let left = next(&mut bob.feed).await;
        let back = next(&mut bob.feed).await;
        assert_eq!(left.entry.kind, EventKind::Left);
        assert_eq!(&*left.entry.participant, "alice");
        assert_eq!(back.entry.kind, EventKind::Joined);
        assert_eq!(&*back.entry.participant, "ALICE");
        assert_eq!(back.entry.lamport, left.entry.lamport + 1);
        assert!(
            room.publish(alice.token.expose(), b"old", 0, "")
                .await
                .is_err()
        );
        room.publish(again.token.expose(), b"new", 0, "")
            .await
            .unwrap();
        assert_eq!(room.present(), ["ALICE", "bob"]);
    }

    #[tokio::test]
    async fn a_full_room_still_lets_a_participant_replace_its_own_session() {
        let room = room_with(
            RoomConfig {
                max_participants: 1,
                publish_rate: None,
                join_history: 0,
            },
            1000,
        );
        let alice = join(&room, "alice").await;
        let options = JoinOptions {
            replaces: Some(alice.token.clone()),
            ..JoinOptions::default()
        };
        let _again = room.join(b"alice", 0, options).await.unwrap();
        assert!(matches!(
            room.join(b"bob", 0, JoinOptions::default()).await,
            Err(ChatError::ServerFull { max: 1 })
        ));
    }

    #[tokio::test]
    async fn duplicate_names_and_bad_input_are_refused() {
        let room = room();
        let _alice = join(&room, "alice").await;
        assert_eq!(
            room.join(b"alice", 0, JoinOptions::default())
                .await
                .unwrap_err(),
            ChatError::NameTaken {
                name: "alice".into()
            }
        );
        assert!(matches!(
            room.join(b"no spaces", 0, JoinOptions::default())
                .await
                .unwrap_err(),
            ChatError::InvalidName { .. }
        ));
    }

    #[tokio::test]
    async fn names_are_unique_regardless_of_case_and_shown_as_chosen() {
        let room = room();
        let alice = join(&room, "Alice").await;
        assert_eq!(
            room.join(b"aLICE", 0, JoinOptions::default())
                .await
                .unwrap_err(),
            ChatError::NameTaken {
                name: "aLICE".into()
            }
        );
        let _bob = join(&room, "bob").await;
        assert_eq!(room.who(alice.token.expose()).unwrap(), ["Alice", "bob"]);
        assert_eq!(room.who("nobody").unwrap_err(), ChatError::UnknownSession);
        room.leave(alice.token.expose(), 0).await.unwrap();
        join(&room, "alice").await;
    }

    #[tokio::test]
    async fn a_full_server_refuses_joins_until_someone_leaves() {
        let room = room_with(
            RoomConfig {
                max_participants: 2,
                ..RoomConfig::default()
            },
            100,
        );
        let alice = join(&room, "alice").await;
        let _bob = join(&room, "bob").await;
        assert_eq!(
            room.join(b"carol", 0, JoinOptions::default())
                .await
                .unwrap_err(),
            ChatError::ServerFull { max: 2 }
        );
        room.leave(alice.token.expose(), 0).await.unwrap();
        join(&room, "carol").await;
    }

    #[tokio::test]
    async fn publishing_beyond_the_burst_is_refused_with_a_retry_time() {
        let rate = PublishRate {
            per_second: NonZeroU32::new(2).unwrap(),
            burst: NonZeroU32::new(3).unwrap(),
        };
        let room = room_with(
            RoomConfig {
                publish_rate: Some(rate),
                ..RoomConfig::default()
            },
            100,
        );
        let flooder = join(&room, "flooder").await;
        let other = join(&room, "other").await;
        let flooder = flooder.token.expose();
        for i in 0..3 {
            room.publish(flooder, b"spam", 0, &format!("s{i}"))
                .await
                .unwrap();
        }
        // A repeat of an accepted id is answered without spending the bucket.
        room.publish(flooder, b"spam", 0, "s0").await.unwrap();
        let before = room.lamport_now();
        match room.publish(flooder, b"spam", 0, "s3").await.unwrap_err() {
            ChatError::RateLimited {
                per_second: 2,
                burst: 3,
                retry_after_ms,
            } => assert!((1..=500).contains(&retry_after_ms), "{retry_after_ms}"),
            other => panic!("expected RateLimited, got {other:?}"),
        }
        // A refused publish appends nothing, and the others keep their own bucket.
        assert_eq!(room.lamport_now(), before);
        room.publish(other.token.expose(), b"hello", 0, "")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn history_pages_back_through_the_log() {
        let room = room();
        let alice = join(&room, "alice").await;
        let token = alice.token.expose().to_owned();
        for i in 0..10 {
            room.publish(&token, format!("m{i}").as_bytes(), 0, "")
                .await
                .unwrap();
        }
        let (page, first_held) = room.history(&token, 0, 3).await.unwrap();
        let seqs: Vec<u64> = page.iter().map(|e| e.seq).collect();
        assert_eq!((seqs, first_held), (vec![9, 10, 11], 1));
        let (page, _) = room.history(&token, 9, 100).await.unwrap();
        assert_eq!(page.len(), 8);
        assert_eq!(page[0].seq, 1);
    }

    #[tokio::test]
    async fn token_debug_is_redacted() {
        let room = room();
        let alice = join(&room, "alice").await;
        let shown = format!("{:?}", alice.token);
        assert!(!shown.contains(alice.token.expose()));
    }

    #[test]
    fn a_feed_starts_at_history_or_where_the_resume_left_off_never_beyond_the_log() {
        let (epoch, other) = (Epoch::random(), Epoch::random());
        let at = |after_seq| Some(ResumePoint { epoch, after_seq });
        // Joined as #100, the log holding #40 on, with 10 events of history.
        let start = |resume| start_position(resume, epoch, 100, 40, 10);
        assert_eq!(start(None), (90, Resume::NotAsked));
        assert_eq!(start(at(70)), (71, Resume::Resumed));
        assert_eq!(start(at(39)), (40, Resume::Resumed));
        assert_eq!(start(at(20)), (90, Resume::Gap { missed: 19 }));
        assert_eq!(start(at(100)), (90, Resume::OtherLog));
        let elsewhere = Some(ResumePoint {
            epoch: other,
            after_seq: 70,
        });
        assert_eq!(start(elsewhere), (90, Resume::OtherLog));
        // History never reaches behind what the log holds.
        assert_eq!(
            start_position(None, epoch, 45, 40, 10),
            (40, Resume::NotAsked)
        );
    }
}
