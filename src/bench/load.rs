//! The load side: participants that join over their own connections and tally what
//! they receive, and publishers that send through the same client library.

use super::{BenchError, PublishOver};
use crate::client::{
    self, ClientError, ConnectOptions, Events, JoinOptions, PublishOutcomes, ResumePoint, Session,
};
use crate::event::{Event, EventKind};
use crate::transport::JoinSecret;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The first character of every message the bench publishes; the next 16 are the
/// send time in hex nanoseconds, the rest is padding.
const MARK: char = 'b';

/// The shortest message that holds the mark and the send time.
pub const MIN_MESSAGE_CHARS: usize = 17;

/// How many times a participant tries to join when its connection fails before the
/// Join is answered.
const JOIN_ATTEMPTS: u32 = 3;

/// The pause before a participant joins again, times the attempts so far.
const JOIN_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How the bench reaches the server: its URL (or the URLs of a cluster's nodes),
/// and TLS and the join secret for one that needs them.
#[derive(Debug)]
pub(super) struct Access {
    /// The first server; the one the single-session modes use.
    pub(super) url: String,
    /// Every server, the first included: participants are spread over them in turn.
    pub(super) urls: Vec<String>,
    /// Which server the next participant joins.
    next: std::sync::atomic::AtomicUsize,
    pub(super) connect: ConnectOptions,
    pub(super) join_secret: Option<JoinSecret>,
    /// The local addresses participants connect from, in turn; none: the system
    /// chooses.
    sources: Vec<IpAddr>,
}

impl Access {
    /// A server at `url` that needs neither TLS nor a join secret: the bench's own.
    pub(super) fn plain(url: String) -> Self {
        Self::new(vec![url], ConnectOptions::default(), None)
    }

    /// The servers `urls` (at least one), reached with `connect` and `join_secret`.
    pub(super) fn new(
        urls: Vec<String>,
        connect: ConnectOptions,
        join_secret: Option<JoinSecret>,
    ) -> Self {
        Self {
            url: urls.first().cloned().unwrap_or_default(),
            urls,
            next: Default::default(),
            connect,
            join_secret,
            sources: Vec::new(),
        }
    }

    /// Spreads the participants' connections over `sources`, in turn.
    pub(super) fn with_sources(mut self, sources: Vec<IpAddr>) -> Self {
        self.sources = sources;
        self
    }

    /// How everyone in the bench joins: with the join secret, and without history,
    /// since live deliveries are what the bench counts; resuming from `resume`.
    pub(super) fn join_options(&self, resume: Option<ResumePoint>) -> JoinOptions {
        JoinOptions {
            join_secret: self.join_secret.clone(),
            history: Some(0),
            resume,
            clock: None,
            replaces: None,
        }
    }

    /// Connects over a new HTTP/2 connection and joins as `name`: at the next
    /// server in turn, so that participants spread evenly over a cluster's nodes,
    /// and from the next source address, if there are several.
    pub(super) async fn join(&self, name: &str) -> Result<(Session, Events), ClientError> {
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = &self.urls[turn % self.urls.len().max(1)];
        if self.sources.is_empty() {
            return client::join(url, name, &self.connect, self.join_options(None)).await;
        }
        let connect = ConnectOptions {
            local_address: Some(self.sources[turn % self.sources.len()]),
            ..self.connect.clone()
        };
        client::join(url, name, &connect, self.join_options(None)).await
    }
}

/// What one participant has received. Each is written by its participant's task
/// only and read by the measuring task.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(super) struct Tally {
    /// Every event received.
    pub(super) events: AtomicU64,
    /// The bench's own chat messages received.
    pub(super) chats: AtomicU64,
    /// The sequence number of the participant's own join notice.
    pub(super) first_seq: AtomicU64,
    /// The sequence number of the last event received.
    pub(super) last_seq: AtomicU64,
    /// Sequence numbers skipped.
    pub(super) lost: AtomicU64,
    /// Events received again or out of order.
    pub(super) duplicated: AtomicU64,
    /// Publish-to-delivery latencies in ns of messages sent in the measured window.
    latencies: Mutex<Vec<u32>>,
}

/// State shared by the measuring task, the participants and the publishers.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) tallies: Vec<Tally>,
    epoch: Instant,
    /// Messages sent in `[window_start, window_end)` (ns since `epoch`) count
    /// for latency.
    window_start: AtomicU64,
    window_end: AtomicU64,
    /// Publishes handed to the client library.
    pub(super) issued: AtomicU64,
    /// Publishes the server accepted.
    pub(super) accepted: AtomicU64,
    /// The highest sequence number a publish reply carried.
    pub(super) max_seq: AtomicU64,
    /// Set once the bench is done and feeds may end.
    pub(super) stopping: AtomicBool,
    /// Publish-to-reply latencies in ns of publishes sent in the measured window:
    /// the time a publisher waits for its message to be durable.
    publish_latencies: Mutex<Vec<u32>>,
    /// The first failure of a participant or a publish.
    failure: Mutex<Option<String>>,
    pub(super) failures: AtomicU64,
    /// Joins tried again because their connection failed before they were answered.
    pub(super) joins_retried: AtomicU64,
    /// When publishes go over a PublishStream, which keeps one publisher's
    /// messages in the order sent: the send time of the latest message from each
    /// publisher that the first participant received. One participant's view is
    /// enough, since every participant receives the same events in one order.
    sent_by: Option<Mutex<HashMap<Box<str>, u64>>>,
    /// Messages the first participant received before one their publisher sent
    /// earlier (checked only over PublishStreams).
    pub(super) reordered: AtomicU64,
}

impl Shared {
    /// Tallies for `participants`; checks each publisher's order when `over` keeps it.
    pub(super) fn new(participants: usize, over: PublishOver) -> Self {
        Self {
            tallies: (0..participants).map(|_| Tally::default()).collect(),
            epoch: Instant::now(),
            window_start: AtomicU64::new(u64::MAX),
            window_end: AtomicU64::new(u64::MAX),
            issued: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            max_seq: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            publish_latencies: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            failures: AtomicU64::new(0),
            joins_retried: AtomicU64::new(0),
            sent_by: matches!(over, PublishOver::Stream).then(|| Mutex::new(HashMap::new())),
            reordered: AtomicU64::new(0),
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Starts counting latencies of messages sent from now on.
    pub(super) fn open_window(&self) {
        self.window_start.store(self.now_ns(), Relaxed);
    }

    /// Stops counting latencies of messages sent from now on.
    pub(super) fn close_window(&self) {
        self.window_end.store(self.now_ns(), Relaxed);
    }

    /// Counts a publish sent at `sent_ns` and accepted now as broadcast `seq`, and
    /// records its latency if it was sent in the measured window.
    fn record_publish(&self, sent_ns: u64, seq: u64) {
        self.accepted.fetch_add(1, Relaxed);
        self.max_seq.fetch_max(seq, Relaxed);
        let in_window =
            sent_ns >= self.window_start.load(Relaxed) && sent_ns < self.window_end.load(Relaxed);
        if in_window {
            let took = self.now_ns().saturating_sub(sent_ns);
            self.publish_latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(u32::try_from(took).unwrap_or(u32::MAX));
        }
    }

    /// Takes the publish-to-reply latencies recorded so far.
    pub(super) fn take_publish_latencies(&self) -> Vec<u32> {
        std::mem::take(
            &mut self
                .publish_latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    fn fail(&self, what: String) {
        self.failures.fetch_add(1, Relaxed);
        let mut first = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(what);
    }

    /// The first failure, if any.
    pub(super) fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Events received by all participants.
    pub(super) fn deliveries(&self) -> u64 {
        self.tallies.iter().map(|t| t.events.load(Relaxed)).sum()
    }

    /// The fewest bench messages any participant has received.
    pub(super) fn min_chats(&self) -> u64 {
        self.tallies
            .iter()
            .map(|t| t.chats.load(Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// The lowest sequence number every participant has reached.
    pub(super) fn min_last_seq(&self) -> u64 {
        self.tallies
            .iter()
            .map(|t| t.last_seq.load(Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// How many participants have received their own join notice.
    pub(super) fn joined(&self) -> usize {
        self.tallies
            .iter()
            .filter(|t| t.first_seq.load(Relaxed) != 0)
            .count()
    }

    /// The sequence number of the latest join notice.
    pub(super) fn max_first_seq(&self) -> u64 {
        self.tallies
            .iter()
            .map(|t| t.first_seq.load(Relaxed))
            .max()
            .unwrap_or(0)
    }

    /// Every latency recorded, emptying the tallies.
    pub(super) fn take_latencies(&self) -> Vec<u32> {
        let mut all = Vec::new();
        for tally in &self.tallies {
            let mut mine = tally.latencies.lock().unwrap_or_else(|p| p.into_inner());
            all.append(&mut mine);
        }
        all
    }

    /// A bench message sent now, `chars` characters long.
    pub(super) fn message(&self, chars: usize) -> String {
        let mut text = format!("{MARK}{:016x}", self.now_ns());
        text.extend(std::iter::repeat_n('x', chars.saturating_sub(text.len())));
        text
    }

    fn record(&self, who: usize, event: &Event) {
        let tally = &self.tallies[who];
        // Single writer: plain load and store.
        tally.events.store(tally.events.load(Relaxed) + 1, Relaxed);
        let last = tally.last_seq.load(Relaxed);
        if last == 0 {
            tally.first_seq.store(event.seq, Relaxed);
        } else if event.seq <= last {
            tally.duplicated.fetch_add(1, Relaxed);
            return;
        } else if event.seq > last + 1 {
            tally.lost.fetch_add(event.seq - last - 1, Relaxed);
        }
        tally.last_seq.store(event.seq, Relaxed);
        if event.kind != EventKind::Chat {
            return;
        }
        let Some(sent) = event
            .text
            .strip_prefix(MARK)
            .and_then(|rest| rest.get(..16))
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        else {
            return;
        };
        tally.chats.store(tally.chats.load(Relaxed) + 1, Relaxed);
        if let (0, Some(sent_by)) = (who, &self.sent_by) {
            let mut sent_by = sent_by.lock().unwrap_or_else(|p| p.into_inner());
            match sent_by.get_mut(&*event.participant) {
                Some(latest) if sent < *latest => {
                    self.reordered.fetch_add(1, Relaxed);
                }
                Some(latest) => *latest = sent,
                None => {
                    sent_by.insert(Box::from(&*event.participant), sent);
                }
            }
        }
        if sent >= self.window_start.load(Relaxed) && sent < self.window_end.load(Relaxed) {
            let latency = self.now_ns().saturating_sub(sent);
            let latency = u32::try_from(latency).unwrap_or(u32::MAX);
            tally
                .latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(latency);
        }
    }
}

/// Connects participant `who` over its own HTTP/2 connection, joins it as
/// `bench-<who>` and starts tallying its feed. Returns its session.
///
/// A Join whose connection fails before it is answered is tried again (as the
/// chat client rejoins), up to [`JOIN_ATTEMPTS`] times, and counted in
/// `shared.joins_retried`: with thousands joining at once on the server's own cores,
/// the bench itself can be too slow to send a Join within the server's join timeout,
/// and the server then closes the connection, as it closes any that does not join.
pub(super) async fn join(
    access: Arc<Access>,
    who: usize,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
) -> Result<Session, BenchError> {
    let name = format!("bench-{who}");
    let mut attempts = 1;
    let (session, events) = loop {
        let joined = {
            let _permit = gate.acquire().await;
            access.join(&name).await
        };
        match joined {
            Ok(joined) => break joined,
            Err(err) if attempts < JOIN_ATTEMPTS && worth_joining_again(&err, attempts) => {
                shared.joins_retried.fetch_add(1, Relaxed);
                tokio::time::sleep(JOIN_RETRY_PAUSE * attempts).await;
                attempts += 1;
            }
            Err(source) => {
                return Err(BenchError::Client {
                    what: format!("participant {name}"),
                    source,
                });
            }
        }
    };
    tokio::spawn(receive(events, who, shared));
    Ok(session)
}

/// Whether a Join that failed after `attempts` tries may succeed if tried again: its
/// connection failed; or, after a failed connection, the server still holds the
/// name, since the Join reached it before the connection broke and the server has
/// not yet announced that participant as left.
fn worth_joining_again(err: &ClientError, attempts: u32) -> bool {
    err.connection_failed() || (attempts > 1 && err.code() == Some(tonic::Code::AlreadyExists))
}

async fn receive(mut events: Events, who: usize, shared: Arc<Shared>) {
    loop {
        match events.next().await {
            Ok(Some(received)) => shared.record(who, &received.event),
            Ok(None) => break,
            Err(err) => {
                if !shared.stopping.load(Relaxed) {
                    shared.fail(format!("participant bench-{who} lost its feed: {err}"));
                }
                break;
            }
        }
    }
}

/// How a publisher paces itself.
#[derive(Debug, Clone, Copy)]
pub(super) enum Pace {
    /// As fast as the server accepts, but no participant may fall more than this
    /// many bench messages behind what was published.
    Saturate { window: u64 },
    /// This many messages a second.
    Rate(f64),
}

/// Publishes `chars`-character messages as `session` until `shared.stopping`, with
/// at most `inflight` messages awaiting their outcome, over `over`. Returns once all
/// have been answered.
pub(super) async fn publish(
    session: Session,
    pace: Pace,
    chars: usize,
    inflight: usize,
    over: PublishOver,
    shared: Arc<Shared>,
) {
    let slots = Arc::new(Semaphore::new(inflight));
    let mut stream = match over {
        PublishOver::Unary => None,
        PublishOver::Stream => match session.publish_stream().await {
            Ok((publisher, outcomes)) => {
                let (sent, in_flight) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(read_outcomes(
                    session.name().to_owned(),
                    outcomes,
                    in_flight,
                    Arc::clone(&shared),
                ));
                Some((publisher, sent))
            }
            Err(err) => {
                shared.fail(format!("{} could not publish: {err}", session.name()));
                return;
            }
        },
    };
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0u64;
    let mut floor = 0u64;
    while !shared.stopping.load(Relaxed) {
        match pace {
            Pace::Saturate { window } => {
                // Recount the slowest participant only when the cached floor says
                // the window may be full: counting is O(participants).
                while shared.issued.load(Relaxed) >= floor + window {
                    floor = shared.min_chats();
                    if shared.issued.load(Relaxed) < floor + window || shared.stopping.load(Relaxed)
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            Pace::Rate(rate) => {
                if sent >= (started.elapsed().as_secs_f64() * rate) as u64 {
                    tick.tick().await;
                    continue;
                }
            }
        }
        if shared.stopping.load(Relaxed) {
            break;
        }
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        shared.issued.fetch_add(1, Relaxed);
        sent += 1;
        let text = shared.message(chars);
        if let Some((publisher, in_flight)) = &mut stream {
            // The outcome's reader frees the slot; outcomes come in send order.
            if in_flight.send((shared.now_ns(), slot)).is_err() {
                break;
            }
            if let Err(err) = publisher.send(&text).await {
                shared.fail(format!("{} could not publish: {err}", session.name()));
                break;
            }
            continue;
        }
        let (session, shared) = (session.clone(), Arc::clone(&shared));
        tokio::spawn(async move {
            let sent = shared.now_ns();
            match session.publish(&text).await {
                Ok(published) => shared.record_publish(sent, published.seq),
                Err(err) => shared.fail(format!("{} could not publish: {err}", session.name())),
            }
            drop(slot);
        });
    }
    // Ends the stream, if any: the server answers what was sent, then closes it.
    drop(stream);
    // Every outstanding publish has replied once all slots are free again.
    let _ = slots.acquire_many(inflight as u32).await;
}

/// Reads a PublishStream's outcomes, each matched to its send time and slot (sent
/// in the same order), until the stream ends; frees every slot, answered or not.
async fn read_outcomes(
    name: String,
    mut outcomes: PublishOutcomes,
    mut in_flight: UnboundedReceiver<(u64, OwnedSemaphorePermit)>,
    shared: Arc<Shared>,
) {
    loop {
        match outcomes.next().await {
            Ok(Some((_, outcome))) => {
                let Some((sent, _slot)) = in_flight.recv().await else {
                    return;
                };
                match outcome {
                    Ok(published) => shared.record_publish(sent, published.seq),
                    Err(err) => shared.fail(format!("{name} could not publish: {err}")),
                }
            }
            Ok(None) => break,
            Err(err) => {
                shared.fail(format!("{name}'s publish stream failed: {err}"));
                break;
            }
        }
    }
    // Frees the slots of what was never answered, until the publisher stops.
    while in_flight.recv().await.is_some() {}
}
