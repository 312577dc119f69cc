//! The chat room: who is present, the server's Lamport clock, and the broadcast of
//! every event into each participant's bounded queue.
//!
//! One mutex guards the participants, the sequence counter and the clock's
//! stamping, so that stamping an event, numbering it and queueing it for everyone
//! is one step: every participant sees the same events in the same order, and
//! Lamport times rise with sequence numbers. The lock is never held across an
//! `.await`; queueing is a non-blocking `try_send`. A participant whose queue is
//! full has fallen [`HubConfig::queue_depth`] events behind: it is disconnected
//! with [`ChatError::TooSlow`] and announced as having left, so a stalled reader
//! never delays the others nor grows the server's memory.

use crate::error::ChatError;
use crate::event::{Event, EventKind, joined_sentence, left_sentence};
use crate::lamport::{LamportClock, LamportTime};
use crate::validate::{validate_lamport, validate_message, validate_name};
use bytes::Bytes;
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

/// How many events may wait for one participant before it counts as too slow.
///
/// At about 100 bytes an event this bounds a stalled participant's queue near
/// 100 KiB; a reader that keeps up never has more than a handful queued.
pub const DEFAULT_QUEUE_DEPTH: u32 = 1024;

/// How many queued events a feed takes from its queue at once.
///
/// Taking them together costs one wake-up and one release of queue capacity per
/// batch instead of per event, and lets the stream hand tonic everything that is
/// ready in one poll, which tonic packs into one HTTP/2 frame. The batch is being
/// delivered, so it does not count against the queue bound, and it is small next to
/// it: a participant never holds more than `queue_depth + FEED_BATCH` events.
pub const FEED_BATCH: usize = 64;

/// How many participants may be present at once.
///
/// Each one costs at most a full queue ([`DEFAULT_QUEUE_DEPTH`] events, about
/// 100 KiB) and one HTTP/2 connection, so this caps a crowded server near 100 MiB.
pub const DEFAULT_MAX_PARTICIPANTS: u32 = 1000;

/// How many messages a second one participant may publish, sustained.
///
/// Far above what a person types, low enough that one script cannot flood everyone
/// else's queues: at this rate a participant needs a hundred seconds to fill a
/// stalled reader's queue on its own.
pub const DEFAULT_PUBLISH_RATE: u32 = 10;

/// How many messages one participant may publish at once after a quiet spell (the
/// token bucket's size), so pasting a few lines is never refused.
pub const DEFAULT_PUBLISH_BURST: u32 = 20;

/// How many random bytes a session token's secret has (128 bits).
const SECRET_BYTES: usize = 16;

/// Settings of the chat room.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The per-participant queue bound; at least 1.
    pub queue_depth: usize,
    /// How many participants may be present at once; at least 1.
    pub max_participants: usize,
    /// Each participant's publish rate limit; `None` for no limit.
    pub publish_rate: Option<PublishRate>,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            queue_depth: DEFAULT_QUEUE_DEPTH as usize,
            max_participants: DEFAULT_MAX_PARTICIPANTS as usize,
            publish_rate: Some(PublishRate::default()),
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

/// Why a participant left; logged with the leave notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveCause {
    /// It called Leave.
    Requested,
    /// Its feed was dropped: the client closed the stream, crashed or vanished.
    Disconnected,
    /// Its queue overflowed.
    TooSlow,
}

impl LeaveCause {
    fn as_str(self) -> &'static str {
        match self {
            LeaveCause::Requested => "Leave",
            LeaveCause::Disconnected => "disconnected",
            LeaveCause::TooSlow => "too_slow",
        }
    }
}

/// The server's stamp on an accepted request: the broadcast it became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The broadcast's Lamport time.
    pub lamport: LamportTime,
    /// The broadcast's sequence number.
    pub seq: u64,
}

/// A session token: the proof that a request comes from the participant who joined.
///
/// Its text is `<session id in hex>.<128-bit secret in hex>`. `Debug` hides it, so
/// it never reaches a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken(String);

impl SessionToken {
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

/// What a successful Join hands back.
#[derive(Debug)]
pub struct Joined {
    /// The token Publish and Leave must present.
    pub token: SessionToken,
    /// The participant's feed; its first event is the participant's own join notice.
    pub feed: Feed,
    /// The join notice's stamp.
    pub stamp: Stamp,
}

/// The chat room. Share it through an `Arc`.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    clock: LamportClock,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    next_session: u64,
    sessions: HashMap<u64, Session>,
    names: HashMap<Arc<str>, u64>,
    shutting_down: bool,
    /// Participants found too slow or gone during a broadcast, to announce next.
    dropouts: Vec<(u64, LeaveCause)>,
}

#[derive(Debug)]
struct Session {
    name: Arc<str>,
    secret: [u8; SECRET_BYTES],
    queue: mpsc::Sender<Arc<Broadcast>>,
    closed: Arc<OnceLock<ChatError>>,
    /// The publish rate limit's bucket; `None` when publishing is not limited.
    limiter: Option<DefaultDirectRateLimiter>,
}

/// One event as queued for every recipient: the event, and its wire form, which
/// the first recipient's stream to need it makes and the others share.
///
/// The hub knows nothing of the wire; the gRPC layer fills the slot, outside the
/// hub's lock, once per broadcast rather than once per recipient.
#[derive(Debug)]
pub struct Broadcast {
    event: Event,
    wire: OnceLock<Bytes>,
}

impl Broadcast {
    fn new(event: Event) -> Self {
        Self {
            event,
            wire: OnceLock::new(),
        }
    }

    /// The event's wire form: made by `encode` on the first call, shared after.
    pub fn wire(&self, encode: impl FnOnce(&Event) -> Bytes) -> &Bytes {
        self.wire.get_or_init(|| encode(&self.event))
    }
}

impl Deref for Broadcast {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
    }
}

/// A broadcast made under the lock, logged after it is released.
struct Logged {
    event: Arc<Broadcast>,
    cause: &'static str,
    client_lamport: Option<LamportTime>,
    recipients: usize,
}

impl Hub {
    /// An empty chat room.
    pub fn new(mut config: HubConfig) -> Self {
        config.queue_depth = config.queue_depth.max(1);
        config.max_participants = config.max_participants.max(1);
        Self {
            config,
            clock: LamportClock::new(),
            state: Mutex::new(State::default()),
        }
    }

    /// The server's Lamport time of its latest event.
    pub fn lamport_now(&self) -> LamportTime {
        self.clock.now()
    }

    /// The names of the participants present, sorted.
    pub fn present(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().names.keys().map(|n| n.to_string()).collect();
        names.sort();
        names
    }

    /// The name of the participant holding `token`, if it is present; for logs.
    pub fn name_of(&self, token: &str) -> Option<Arc<str>> {
        let state = self.lock();
        let id = authenticate(&state, token).ok()?;
        Some(Arc::clone(&state.sessions[&id].name))
    }

    /// Joins `name` (raw bytes from the wire) whose request was sent at `client_lamport`.
    ///
    /// The new participant's queue is registered before the join notice is broadcast,
    /// so the newcomer receives its own notice first.
    pub fn join(
        self: &Arc<Self>,
        name: &[u8],
        client_lamport: LamportTime,
    ) -> Result<Joined, ChatError> {
        let name: Arc<str> = Arc::from(validate_name(name)?);
        validate_lamport(client_lamport, self.clock.now())?;
        let secret: [u8; SECRET_BYTES] = rand::random();
        let (queue, rx) = mpsc::channel(self.config.queue_depth);
        let closed = Arc::new(OnceLock::new());
        let mut logged = Vec::new();
        let (id, stamp) = {
            let mut state = self.lock();
            if state.shutting_down {
                return Err(ChatError::ShuttingDown);
            }
            if state.names.contains_key(&name) {
                return Err(ChatError::NameTaken {
                    name: name.to_string(),
                });
            }
            if state.sessions.len() >= self.config.max_participants {
                return Err(ChatError::ServerFull {
                    max: self.config.max_participants,
                });
            }
            state.next_session += 1;
            let id = state.next_session;
            state.names.insert(Arc::clone(&name), id);
            state.sessions.insert(
                id,
                Session {
                    name: Arc::clone(&name),
                    secret,
                    queue,
                    closed: Arc::clone(&closed),
                    limiter: self.config.publish_rate.map(PublishRate::limiter),
                },
            );
            let lamport = self.clock.observe(client_lamport);
            let text = joined_sentence(&name, lamport);
            let event = self.broadcast(&mut state, EventKind::Joined, name, text, lamport);
            logged.push(Logged::new(event, "Join", Some(client_lamport), &state));
            let stamp = self.settle(&mut state, &mut logged);
            (id, stamp)
        };
        log_broadcasts(&logged);
        Ok(Joined {
            token: SessionToken(format!("{id:x}.{}", to_hex(&secret))),
            feed: Feed {
                rx,
                batch: Vec::new(),
                closed,
                hub: Arc::clone(self),
                session: id,
                finished: false,
            },
            stamp,
        })
    }

    /// Publishes `text` (raw bytes from the wire) for the holder of `token`, whose
    /// request was sent at `client_lamport`. A refused request changes nothing.
    pub fn publish(
        &self,
        token: &str,
        text: &[u8],
        client_lamport: LamportTime,
    ) -> Result<Stamp, ChatError> {
        let text = validate_message(text)?.to_owned();
        validate_lamport(client_lamport, self.clock.now())?;
        let mut logged = Vec::new();
        let stamp = {
            let mut state = self.lock();
            let id = authenticate(&state, token)?;
            let session = &state.sessions[&id];
            if let (Some(rate), Some(limiter)) = (self.config.publish_rate, &session.limiter) {
                rate.check(limiter)?;
            }
            let name = Arc::clone(&session.name);
            let lamport = self.clock.observe(client_lamport);
            let event = self.broadcast(&mut state, EventKind::Chat, name, text, lamport);
            logged.push(Logged::new(event, "Publish", Some(client_lamport), &state));
            self.settle(&mut state, &mut logged)
        };
        log_broadcasts(&logged);
        Ok(stamp)
    }

    /// Removes the holder of `token`, whose request was sent at `client_lamport`, and
    /// tells the others. The leaver's feed delivers what was queued before, then ends.
    pub fn leave(&self, token: &str, client_lamport: LamportTime) -> Result<Stamp, ChatError> {
        validate_lamport(client_lamport, self.clock.now())?;
        let mut logged = Vec::new();
        let stamp = {
            let mut state = self.lock();
            let id = authenticate(&state, token)?;
            let lamport = self.clock.observe(client_lamport);
            let event = self.remove_and_announce(&mut state, id, lamport);
            if let Some(event) = event {
                logged.push(Logged::new(
                    event,
                    LeaveCause::Requested.as_str(),
                    Some(client_lamport),
                    &state,
                ));
            }
            self.settle(&mut state, &mut logged)
        };
        log_broadcasts(&logged);
        Ok(stamp)
    }

    /// Stops the room: every feed ends with [`ChatError::ShuttingDown`] after what was
    /// queued, and Join is refused from now on. Returns how many were present.
    pub fn shutdown(&self) -> usize {
        let mut state = self.lock();
        state.shutting_down = true;
        let present = state.sessions.len();
        for (_, session) in state.sessions.drain() {
            let _ = session.closed.set(ChatError::ShuttingDown);
        }
        state.names.clear();
        present
    }

    /// Called when a feed is dropped: if its participant is still present, it left
    /// without saying so, and the others are told.
    fn disconnect(&self, session: u64) {
        let mut logged = Vec::new();
        {
            let mut state = self.lock();
            if !state.sessions.contains_key(&session) {
                return;
            }
            state.dropouts.push((session, LeaveCause::Disconnected));
            self.settle(&mut state, &mut logged);
        }
        log_broadcasts(&logged);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-changed in a
        // way that matters more than losing the whole room, so carry on.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stamps the next sequence number and queues the event for everyone present.
    /// Participants whose queue is full or gone are recorded as dropouts.
    fn broadcast(
        &self,
        state: &mut State,
        kind: EventKind,
        participant: Arc<str>,
        text: String,
        lamport: LamportTime,
    ) -> Arc<Broadcast> {
        state.next_seq += 1;
        let event = Arc::new(Broadcast::new(Event {
            kind,
            participant,
            text,
            lamport,
            seq: state.next_seq,
        }));
        let State {
            sessions, dropouts, ..
        } = state;
        for (id, session) in sessions.iter() {
            match session.queue.try_send(Arc::clone(&event)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    dropouts.push((*id, LeaveCause::TooSlow));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    dropouts.push((*id, LeaveCause::Disconnected));
                }
            }
        }
        event
    }

    /// Removes a session and broadcasts its leave notice at `lamport`.
    fn remove_and_announce(
        &self,
        state: &mut State,
        id: u64,
        lamport: LamportTime,
    ) -> Option<Arc<Broadcast>> {
        let session = state.sessions.remove(&id)?;
        state.names.remove(&session.name);
        let text = left_sentence(&session.name, lamport);
        Some(self.broadcast(state, EventKind::Left, session.name, text, lamport))
    }

    /// Announces every dropout (which may find more) and returns the stamp of the
    /// first broadcast in `logged`, the one the caller asked for.
    fn settle(&self, state: &mut State, logged: &mut Vec<Logged>) -> Stamp {
        while let Some((id, cause)) = state.dropouts.pop() {
            if let Some(session) = state.sessions.get(&id) {
                if cause == LeaveCause::TooSlow {
                    let _ = session.closed.set(ChatError::TooSlow {
                        queued: self.config.queue_depth,
                    });
                }
                let lamport = self.clock.tick();
                if let Some(event) = self.remove_and_announce(state, id, lamport) {
                    logged.push(Logged::new(event, cause.as_str(), None, state));
                }
            }
        }
        logged.first().map_or(
            Stamp {
                lamport: self.clock.now(),
                seq: state.next_seq,
            },
            |first| Stamp {
                lamport: first.event.lamport,
                seq: first.event.seq,
            },
        )
    }
}

impl Logged {
    fn new(
        event: Arc<Broadcast>,
        cause: &'static str,
        client_lamport: Option<LamportTime>,
        state: &State,
    ) -> Self {
        Self {
            event,
            cause,
            client_lamport,
            recipients: state.sessions.len(),
        }
    }
}

/// One log line per broadcast, written after the lock is released.
fn log_broadcasts(logged: &[Logged]) {
    for Logged {
        event,
        cause,
        client_lamport,
        recipients,
    } in logged
    {
        let level_is_warn = *cause == LeaveCause::TooSlow.as_str();
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: "chittychat::broadcast",
                    cause = *cause,
                    kind = %event.kind,
                    participant = %event.participant,
                    text = %event.text,
                    lamport = event.lamport,
                    seq = event.seq,
                    client_lamport = *client_lamport,
                    recipients = *recipients,
                    "broadcast"
                )
            };
        }
        if level_is_warn {
            line!(warn);
        } else {
            line!(info);
        }
    }
}

/// Finds the session a token names, comparing its secret in constant time.
///
/// Only the token's one spelling is accepted: lower-case hex, no sign, no leading
/// zero, as [`Hub::join`] wrote it, so that no second string opens the session.
fn authenticate(state: &State, token: &str) -> Result<u64, ChatError> {
    let lower_hex = |text: &str| text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let (id_text, secret) = token.split_once('.').ok_or(ChatError::UnknownSession)?;
    let id = u64::from_str_radix(id_text, 16).map_err(|_| ChatError::UnknownSession)?;
    if id_text != format!("{id:x}") || !lower_hex(secret) {
        return Err(ChatError::UnknownSession);
    }
    let secret = from_hex(secret).ok_or(ChatError::UnknownSession)?;
    let session = state.sessions.get(&id).ok_or(ChatError::UnknownSession)?;
    if bool::from(session.secret.ct_eq(&secret)) {
        Ok(id)
    } else {
        Err(ChatError::UnknownSession)
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<[u8; SECRET_BYTES]> {
    if text.len() != SECRET_BYTES * 2 {
        return None;
    }
    let mut out = [0u8; SECRET_BYTES];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// One participant's feed of events, in broadcast order.
///
/// It yields every event queued for the participant, then ends: cleanly after the
/// participant left, or with the error that closed it (too slow, shutting down).
/// Dropping a feed whose participant is still present counts as leaving.
#[derive(Debug)]
pub struct Feed {
    rx: mpsc::Receiver<Arc<Broadcast>>,
    /// Events taken from `rx` and not yet yielded, last first.
    batch: Vec<Arc<Broadcast>>,
    closed: Arc<OnceLock<ChatError>>,
    hub: Arc<Hub>,
    session: u64,
    finished: bool,
}

impl tokio_stream::Stream for Feed {
    type Item = Result<Arc<Broadcast>, ChatError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(event) = this.batch.pop() {
            return Poll::Ready(Some(Ok(event)));
        }
        if this.finished {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv_many(cx, &mut this.batch, FEED_BATCH) {
            Poll::Ready(0) => {
                this.finished = true;
                Poll::Ready(this.closed.get().cloned().map(Err))
            }
            Poll::Ready(_) => {
                this.batch.reverse();
                let event = this.batch.pop().expect("poll_recv_many reported events");
                Poll::Ready(Some(Ok(event)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.hub.disconnect(self.session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::MAX_LAMPORT_LEAD;
    use tokio_stream::StreamExt;

    fn hub(queue_depth: usize) -> Arc<Hub> {
        Arc::new(Hub::new(HubConfig {
            queue_depth,
            publish_rate: None,
            ..HubConfig::default()
        }))
    }

    async fn next(feed: &mut Feed) -> Arc<Broadcast> {
        feed.next().await.expect("feed ended").expect("feed failed")
    }

    #[tokio::test]
    async fn newcomer_gets_its_own_join_notice_first() {
        let hub = hub(8);
        let mut alice = hub.join(b"alice", 0).unwrap();
        let event = next(&mut alice.feed).await;
        assert_eq!(event.kind, EventKind::Joined);
        assert_eq!(event.seq, 1);
        assert_eq!(
            event.text,
            "Participant alice joined Chitty-Chat at Lamport time 1"
        );
    }

    #[tokio::test]
    async fn stamps_merge_the_client_clock_and_rise_with_seq() {
        let hub = hub(8);
        let alice = hub.join(b"alice", 10).unwrap();
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
            hub.publish(&token, b"hi", 2).unwrap(),
            Stamp {
                lamport: 12,
                seq: 2
            }
        );
        assert_eq!(
            hub.publish(&token, b"hi", 50).unwrap(),
            Stamp {
                lamport: 51,
                seq: 3
            }
        );
    }

    #[tokio::test]
    async fn a_time_far_ahead_is_refused_so_the_clock_keeps_rising() {
        let hub = hub(8);
        let mut alice = hub.join(b"alice", 0).unwrap();
        let token = alice.token.expose().to_owned();
        let before = hub.lamport_now();
        assert!(matches!(
            hub.publish(&token, b"x", u64::MAX),
            Err(ChatError::LamportTooFarAhead { .. })
        ));
        assert!(matches!(
            hub.join(b"bob", u64::MAX),
            Err(ChatError::LamportTooFarAhead { .. })
        ));
        assert!(matches!(
            hub.leave(&token, before + MAX_LAMPORT_LEAD + 1),
            Err(ChatError::LamportTooFarAhead { .. })
        ));
        assert_eq!(hub.lamport_now(), before);
        assert_eq!(hub.present(), ["alice"]);
        // The largest lead is accepted, and later events are still stamped later.
        let far = hub
            .publish(&token, b"far", before + MAX_LAMPORT_LEAD)
            .unwrap();
        let later = hub.publish(&token, b"later", 0).unwrap();
        assert_eq!(far.lamport, before + MAX_LAMPORT_LEAD + 1);
        assert!(later.lamport > far.lamport);
        let seqs: Vec<u64> = [
            next(&mut alice.feed).await,
            next(&mut alice.feed).await,
            next(&mut alice.feed).await,
        ]
        .iter()
        .map(|e| e.seq)
        .collect();
        assert_eq!(seqs, [1, 2, 3]);
    }

    #[tokio::test]
    async fn a_wrong_token_is_refused_and_changes_nothing() {
        let hub = hub(8);
        let alice = hub.join(b"alice", 0).unwrap();
        let real = alice.token.expose().to_owned();
        let (id, secret) = real.split_once('.').unwrap();
        let mut flipped = secret.to_owned();
        flipped.replace_range(0..1, if secret.starts_with('0') { "1" } else { "0" });
        let before = hub.lamport_now();
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
            assert_eq!(hub.publish(&bad, b"x", 0), Err(ChatError::UnknownSession));
            assert_eq!(hub.leave(&bad, 0), Err(ChatError::UnknownSession));
        }
        assert_eq!(hub.lamport_now(), before);
        assert_eq!(hub.present(), ["alice"]);
    }

    #[tokio::test]
    async fn a_full_queue_disconnects_only_the_slow_participant() {
        let hub = hub(4);
        let slow = hub.join(b"slow", 0).unwrap();
        let mut fast = hub.join(b"fast", 0).unwrap();
        let token = fast.token.expose().to_owned();
        // slow's queue holds its join and fast's join; two more messages fill it, the
        // third overflows it.
        let mut seen = vec![next(&mut fast.feed).await.seq];
        for i in 0..3 {
            hub.publish(&token, format!("m{i}").as_bytes(), 0).unwrap();
            seen.push(next(&mut fast.feed).await.seq);
        }
        let leave = next(&mut fast.feed).await;
        assert_eq!(leave.kind, EventKind::Left);
        assert_eq!(&*leave.participant, "slow");
        assert_eq!(seen, [2, 3, 4, 5]);
        assert_eq!(hub.present(), ["fast"]);

        // The slow feed yields what fit in its queue, then the reason.
        let mut slow_feed = slow.feed;
        let mut delivered = Vec::new();
        let reason = loop {
            match slow_feed.next().await {
                Some(Ok(event)) => delivered.push(event.seq),
                Some(Err(err)) => break err,
                None => panic!("the slow feed ended without a reason"),
            }
        };
        assert_eq!(delivered, [1, 2, 3, 4]);
        assert_eq!(reason, ChatError::TooSlow { queued: 4 });
    }

    #[tokio::test]
    async fn dropping_a_feed_announces_a_leave_exactly_once() {
        let hub = hub(8);
        let alice = hub.join(b"alice", 0).unwrap();
        let mut bob = hub.join(b"bob", 0).unwrap();
        drop(alice.feed);
        // A late Leave with the old token is refused; the leave was already announced.
        assert_eq!(
            hub.leave(alice.token.expose(), 0),
            Err(ChatError::UnknownSession)
        );
        let kinds: Vec<_> = [next(&mut bob.feed).await, next(&mut bob.feed).await]
            .iter()
            .map(|e| (e.kind, e.participant.to_string()))
            .collect();
        assert_eq!(
            kinds,
            [
                (EventKind::Joined, "bob".to_string()),
                (EventKind::Left, "alice".to_string())
            ]
        );
        assert_eq!(hub.present(), ["bob"]);
        // The name is free again.
        hub.join(b"alice", 0).unwrap();
    }

    #[tokio::test]
    async fn leave_ends_the_leavers_feed_without_its_own_notice() {
        let hub = hub(8);
        let mut alice = hub.join(b"alice", 0).unwrap();
        hub.leave(alice.token.expose(), 0).unwrap();
        assert_eq!(next(&mut alice.feed).await.kind, EventKind::Joined);
        assert!(alice.feed.next().await.is_none());
    }

    #[tokio::test]
    async fn shutdown_ends_every_feed_with_a_reason_and_refuses_joins() {
        let hub = hub(8);
        let mut alice = hub.join(b"alice", 0).unwrap();
        assert_eq!(hub.shutdown(), 1);
        assert_eq!(next(&mut alice.feed).await.kind, EventKind::Joined);
        assert_eq!(
            alice.feed.next().await.unwrap().unwrap_err(),
            ChatError::ShuttingDown
        );
        assert_eq!(hub.join(b"bob", 0).unwrap_err(), ChatError::ShuttingDown);
    }

    #[test]
    fn duplicate_names_and_bad_input_are_refused() {
        let hub = hub(8);
        let _alice = hub.join(b"alice", 0).unwrap();
        assert_eq!(
            hub.join(b"alice", 0).unwrap_err(),
            ChatError::NameTaken {
                name: "alice".into()
            }
        );
        assert!(matches!(
            hub.join(b"no spaces", 0).unwrap_err(),
            ChatError::InvalidName { .. }
        ));
    }

    #[test]
    fn a_full_server_refuses_joins_until_someone_leaves() {
        let hub = Arc::new(Hub::new(HubConfig {
            max_participants: 2,
            ..HubConfig::default()
        }));
        let alice = hub.join(b"alice", 0).unwrap();
        let _bob = hub.join(b"bob", 0).unwrap();
        assert_eq!(
            hub.join(b"carol", 0).unwrap_err(),
            ChatError::ServerFull { max: 2 }
        );
        hub.leave(alice.token.expose(), 0).unwrap();
        hub.join(b"carol", 0).unwrap();
    }

    #[test]
    fn publishing_beyond_the_burst_is_refused_with_a_retry_time() {
        let rate = PublishRate {
            per_second: NonZeroU32::new(2).unwrap(),
            burst: NonZeroU32::new(3).unwrap(),
        };
        let hub = Arc::new(Hub::new(HubConfig {
            publish_rate: Some(rate),
            ..HubConfig::default()
        }));
        let flooder = hub.join(b"flooder", 0).unwrap();
        let other = hub.join(b"other", 0).unwrap();
        let flooder = flooder.token.expose();
        for _ in 0..3 {
            hub.publish(flooder, b"spam", 0).unwrap();
        }
        let before = hub.lamport_now();
        match hub.publish(flooder, b"spam", 0).unwrap_err() {
            ChatError::RateLimited {
                per_second: 2,
                burst: 3,
                retry_after_ms,
            } => assert!((1..=500).contains(&retry_after_ms), "{retry_after_ms}"),
            other => panic!("expected RateLimited, got {other:?}"),
        }
        // A refused publish broadcasts nothing, and the others keep their own bucket.
        assert_eq!(hub.lamport_now(), before);
        hub.publish(other.token.expose(), b"hello", 0).unwrap();
    }

    #[test]
    fn token_debug_is_redacted() {
        let hub = hub(8);
        let alice = hub.join(b"alice", 0).unwrap();
        let shown = format!("{:?}", alice.token);
        assert!(!shown.contains(alice.token.expose()));
    }
}
