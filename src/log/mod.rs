//! The event log: one ordered, numbered record of every accepted event (join, chat,
//! leave). It is the source of truth; feeds, history and resume are views of it.
//!
//! [`Log`] is what the room and the feeds use. It numbers each appended event (the
//! sequence numbers are gapless), keeps the newest events in memory, and hands them
//! to a writer thread that commits them to a [`Store`] in batches (group commit).
//! An event becomes *durable* when its batch is committed; the room answers a
//! request, and feeds deliver an event, only once it is durable. So what a client
//! was told or shown is in the store, whatever happens to the process afterwards.
//!
//! Two stores: [`MemoryStore`] (`--ephemeral`: nothing survives the process) and
//! [`DiskStore`] (redb, in a data directory). A broker-backed store (the cluster's
//! JetStream stream) fits the same trait: append returns once the events are held,
//! reads go by sequence number.

mod disk;
mod memory;

pub use disk::{DATABASE_FILE, DiskStore, OWNER_FILE};
pub use memory::MemoryStore;

pub use crate::error::LogError;
use crate::event::{Event, EventKind, PublishKey, Stamp};
use crate::lamport::LamportTime;
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::ops::Deref;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, oneshot, watch};

/// How many events the log keeps by default (`--history-limit`); older ones are
/// trimmed. At a few hundred bytes an event, about 30 MB on disk.
pub const DEFAULT_HISTORY_LIMIT: u64 = 100_000;

/// How many of the newest events the log keeps in memory for the feeds, so that a
/// reader that keeps up never touches the store. At about 400 bytes an event
/// (the event, its wire bytes and bookkeeping) this is about 1.6 MiB.
pub const CACHE_EVENTS: usize = 4096;

/// The most events one commit takes: a burst is written in several commits rather
/// than one huge one, so the first requests in it are answered sooner.
pub const MAX_COMMIT_BATCH: usize = 4096;

/// How many events a reader behind the in-memory cache reads from the store at once.
pub const STORE_READ_BATCH: usize = 512;

/// How often the writer trims by age when no events arrive.
const AGE_TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// How long a commit that answers a Join holds back waking everyone else's feed
/// (or until the next commit, if that comes first), so that the newcomer's
/// history and join notice go out first.
///
/// Woken together, the fan-out of the newcomer's join notice to everyone present
/// fills the runtime's queues with a task per feed, and each of the hand-offs
/// that take a Join's response and first events to its socket (the stream's
/// task, the connection's, the stream's again for send capacity, the
/// connection's to write) can wait behind some of them. With 1,000 present that
/// put the newcomer's history and join notice 2–5 ms late at the median and
/// 12–17 ms at p99; with the head start, about 1.2 ms and 3.4 ms. Everyone else
/// hears of a join at most this much later.
pub const NEWCOMER_HEAD_START: Duration = Duration::from_millis(2);

/// A commit that takes longer than this is logged as a warning. Every request
/// waits for its commit, so the whole room stood still meanwhile; on disk, what
/// holds a commit up that long is the disk (a cache flush behind other writes, a
/// virtual disk's host). Each commit's time is also the metric
/// `chittychat_log_commit_seconds`.
pub const SLOW_COMMIT: Duration = Duration::from_millis(200);

/// How long events are kept and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The most events kept; at least 1.
    pub max_events: u64,
    /// Events older than this are trimmed; `None` keeps them however old.
    pub max_age: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_events: DEFAULT_HISTORY_LIMIT,
            max_age: None,
        }
    }
}

/// Where the log lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// In memory only: nothing survives the process.
    Memory,
    /// In a redb database in this directory, created if missing.
    Disk(PathBuf),
}

/// A log's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Where the log lives.
    pub storage: Storage,
    /// What it keeps.
    pub retention: Retention,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            storage: Storage::Memory,
            retention: Retention::default(),
        }
    }
}

/// The identity of one log: a random id made with it. A client that knew another
/// epoch knows the log was wiped or replaced, so its sequence numbers mean nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(u128);

impl Epoch {
    /// A new random epoch.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The epoch's 16 bytes, as stored.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// The epoch stored as `bytes`.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(u128::from_be_bytes(bytes))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({self})")
    }
}

impl FromStr for Epoch {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(());
        }
        u128::from_str_radix(text, 16).map(Self).map_err(|_| ())
    }
}

/// One event of the log, shared by every reader: the event, the publish id it was
/// published under, when it was appended, and its wire form, which the first reader
/// to need it makes and the others share.
///
/// The log knows nothing of the wire; the gRPC layer fills the slot, once per event
/// rather than once per recipient.
#[derive(Debug)]
pub struct Entry {
    event: Event,
    publish_id: Option<Box<str>>,
    appended_ms: u64,
    wire: OnceLock<Bytes>,
}

impl Entry {
    /// An entry for `event`, appended at `appended_ms` (Unix time in milliseconds).
    pub fn new(event: Event, publish_id: Option<Box<str>>, appended_ms: u64) -> Self {
        Self {
            event,
            publish_id,
            appended_ms,
            wire: OnceLock::new(),
        }
    }

    /// The id the publisher gave this chat message, if any.
    pub fn publish_id(&self) -> Option<&str> {
        self.publish_id.as_deref()
    }

    /// When the entry was appended, in milliseconds since the Unix epoch.
    pub fn appended_ms(&self) -> u64 {
        self.appended_ms
    }

    /// The event's wire form: made by `encode` on the first call, shared after.
    pub fn wire(&self, encode: impl FnOnce(&Event) -> Bytes) -> &Bytes {
        self.wire.get_or_init(|| encode(&self.event))
    }
}

impl Deref for Entry {
    type Target = Event;

    fn deref(&self) -> &Event {
        &self.event
    }
}

/// What a store held when it was opened.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// The log's epoch.
    pub epoch: Epoch,
    /// The sequence number of the newest event; 0 for an empty log.
    pub head: u64,
    /// The oldest sequence number held; `head + 1` when nothing is held.
    pub first_held: u64,
    /// The largest Lamport time stored.
    pub last_lamport: LamportTime,
    /// Participants who joined and never left: present when the server stopped.
    pub present: Vec<Arc<str>>,
    /// The publish ids of the chat messages held, with their stamps, in sequence
    /// order.
    pub publish_ids: Vec<(PublishKey, Stamp)>,
    /// The newest events, oldest first, at most [`CACHE_EVENTS`].
    pub recent: Vec<Arc<Entry>>,
}

/// Where events are kept: the part of the log that may be on disk.
///
/// Appends come from one writer thread, in sequence order; reads may come from any
/// thread at the same time.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// What the store holds, read once when the log opens.
    fn recover(&self) -> Result<Recovered, LogError>;

    /// Stores `entries` (consecutive, right after the head) so that they survive a
    /// crash once this returns, then trims what `retention` no longer keeps.
    /// Returns the oldest sequence number held afterwards.
    fn append(&self, entries: &[Arc<Entry>], retention: &Retention) -> Result<u64, LogError>;

    /// Trims what `retention` no longer keeps without appending (events aged out).
    /// Returns the oldest sequence number held afterwards.
    fn trim(&self, retention: &Retention) -> Result<u64, LogError>;

    /// Up to `max` consecutive entries starting at `from`; fewer at the head, and
    /// none when `from` is no longer held.
    fn read(&self, from: u64, max: usize) -> Result<Vec<Arc<Entry>>, LogError>;
}

/// How far the log is durable, and whether it still works.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Durable {
    /// Every event up to this sequence number is stored.
    seq: u64,
    /// Set when a write failed: nothing after `seq` will ever be stored.
    failed: Option<LogError>,
}

/// The log as the room and the feeds use it.
#[derive(Debug)]
pub struct Log {
    store: Arc<dyn Store>,
    epoch: Epoch,
    /// The newest events (durable or not yet), oldest first, and the next number.
    tail: RwLock<Tail>,
    /// What the writer thread has stored, shared with it.
    progress: Arc<Progress>,
    /// Events on their way to the writer thread, in sequence order.
    writer: Mutex<Option<std::sync::mpsc::Sender<Arc<Entry>>>>,
    /// The writer thread, joined when the log is dropped so that the store is
    /// closed (and its lock released) when the log is gone.
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What the writer thread has stored: the one part of the log it shares, so that
/// the log's last owner (never the writer) joins the writer when it drops the log.
#[derive(Debug)]
struct Progress {
    /// The oldest sequence number the store holds.
    first_held: AtomicU64,
    /// Wakes the feeds, which must all look when the log moves on.
    durable: watch::Sender<Durable>,
    /// The requests waiting for their event to be durable, by its sequence number:
    /// each commit wakes only those it answers, not every request in flight.
    /// Changed together with `durable`'s sequence number, under this lock.
    waiters: Mutex<BTreeMap<u64, Vec<Waiter>>>,
    /// Told once, when the log fails: what waits only for that ([`Log::failed`])
    /// waits here, not on `durable`, which changes at every commit.
    failed: Notify,
}

/// A request waiting for its event to be durable: told `Ok`, or why it never will be.
#[derive(Debug)]
struct Waiter {
    answer: oneshot::Sender<Result<(), LogError>>,
    /// A Join, whose feed goes ahead of everyone else's ([`NEWCOMER_HEAD_START`]).
    newcomer: bool,
}

impl Progress {
    /// Records that every event up to `seq` is durable (or, with `failed`, that
    /// none after it will be), answers the requests that waited for it and wakes
    /// the feeds, unless one of the requests was a Join: then this returns true,
    /// and the writer wakes them ([`Progress::wake_feeds`]) when the newcomer's
    /// head start ends.
    fn advance(&self, seq: Option<u64>, failed: Option<LogError>) -> bool {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        // Readers see the new mark at once, but are woken only after the requests
        // below: a Join or Publish answered first is scheduled ahead of the fan-out
        // to every feed, so a newcomer's history and a publisher's reply do not
        // wait behind a thousand deliveries.
        self.durable.send_if_modified(|durable| {
            if let Some(seq) = seq {
                durable.seq = seq;
            }
            if failed.is_some() {
                durable.failed.clone_from(&failed);
            }
            false
        });
        if failed.is_some() {
            // Before the answers, so that a request told of the failure finds
            // `Log::failed` told too.
            self.failed.notify_waiters();
        }
        let answered = match (&failed, seq) {
            (Some(_), _) => std::mem::take(&mut *waiters),
            (None, Some(seq)) => {
                let later = waiters.split_off(&(seq + 1));
                std::mem::replace(&mut *waiters, later)
            }
            (None, None) => BTreeMap::new(),
        };
        drop(waiters);
        let mut newcomer = false;
        for (waited, senders) in answered {
            for sender in senders {
                newcomer |= sender.newcomer;
                let answer = match (&failed, seq) {
                    (_, Some(seq)) if waited <= seq => Ok(()),
                    (Some(failure), _) => Err(failure.clone()),
                    (None, _) => Ok(()),
                };
                let _ = sender.answer.send(answer);
            }
        }
        let hold = newcomer && failed.is_none();
        if !hold {
            // Now the feeds: the mark moved (or the log failed), so each must look.
            self.wake_feeds();
        }
        hold
    }

    /// Wakes every feed to look at the log again.
    fn wake_feeds(&self) {
        self.durable.send_modify(|_| {});
    }
}

#[derive(Debug)]
struct Tail {
    cache: VecDeque<Arc<Entry>>,
    next_seq: u64,
}

/// What a reader gets when it asks the log for events from a position.
#[derive(Debug)]
pub enum Read {
    /// Durable events from the position on, from memory.
    Ready(Vec<Arc<Entry>>),
    /// Nothing durable at the position yet: wait for the log to move on.
    Wait,
    /// The position is behind memory: read it from the store ([`Log::read_stored`]).
    Stored,
    /// The log no longer holds the position: it was trimmed.
    Trimmed {
        /// The oldest sequence number held.
        first_held: u64,
    },
    /// The log failed; it delivers nothing more.
    Failed(LogError),
}

/// Unix time in milliseconds, for retention by age.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

impl Log {
    /// Opens the log `config` describes, recovering what its store holds, and starts
    /// its writer thread.
    pub fn open(config: &LogConfig) -> Result<(Arc<Log>, Recovered), LogError> {
        let store: Arc<dyn Store> = match &config.storage {
            Storage::Memory => Arc::new(MemoryStore::new()),
            Storage::Disk(dir) => Arc::new(DiskStore::open(dir)?),
        };
        Self::with_store(store, config.retention)
    }

    /// Opens a log over `store`.
    pub fn with_store(
        store: Arc<dyn Store>,
        mut retention: Retention,
    ) -> Result<(Arc<Log>, Recovered), LogError> {
        retention.max_events = retention.max_events.max(1);
        let recovered = store.recover()?;
        let (durable, _) = watch::channel(Durable {
            seq: recovered.head,
            failed: None,
        });
        let progress = Arc::new(Progress {
            first_held: AtomicU64::new(recovered.first_held),
            durable,
            waiters: Mutex::new(BTreeMap::new()),
            failed: Notify::new(),
        });
        let (to_writer, from_log) = std::sync::mpsc::channel();
        let log = Arc::new(Log {
            store: Arc::clone(&store),
            epoch: recovered.epoch,
            tail: RwLock::new(Tail {
                cache: recovered.recent.iter().cloned().collect(),
                next_seq: recovered.head + 1,
            }),
            progress: Arc::clone(&progress),
            writer: Mutex::new(Some(to_writer)),
            writer_thread: Mutex::new(None),
        });
        let thread = std::thread::Builder::new()
            .name("chittychat-log-writer".into())
            .spawn(move || write_batches(&progress, &*store, retention, from_log))
            .map_err(|err| LogError::WriteFailed(format!("cannot start the writer: {err}")))?;
        *log.writer_thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
        Ok((log, recovered))
    }

    /// The log's epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The sequence number of the newest event appended (durable or not); 0 when empty.
    pub fn head(&self) -> u64 {
        self.read_tail().next_seq - 1
    }

    /// Every event up to this sequence number is durable.
    pub fn durable_seq(&self) -> u64 {
        self.progress.durable.borrow().seq
    }

    /// The oldest sequence number the log holds.
    pub fn first_held(&self) -> u64 {
        self.progress.first_held.load(Ordering::Acquire)
    }

    /// Why the log stopped taking events, if it did.
    pub fn failure(&self) -> Option<LogError> {
        self.progress.durable.borrow().failed.clone()
    }

    /// Completes when the log fails (a write to the store failed); never otherwise.
    pub async fn failed(&self) {
        loop {
            let notified = self.progress.failed.notified();
            tokio::pin!(notified);
            // Registered before looking, so a failure in between is not missed.
            notified.as_mut().enable();
            if self.failure().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Appends an event stamped `lamport` as the next sequence number and hands it to
    /// the writer. The caller serialises appends (the room's lock) so that numbering
    /// and the order of everything that follows from it agree.
    pub fn append(
        &self,
        kind: EventKind,
        participant: Arc<str>,
        text: String,
        lamport: LamportTime,
        publish_id: Option<Box<str>>,
    ) -> Arc<Entry> {
        let mut tail = self.tail.write().unwrap_or_else(|p| p.into_inner());
        let event = Event {
            kind,
            participant,
            text,
            lamport,
            seq: tail.next_seq,
        };
        tail.next_seq += 1;
        crate::metrics::appended().increment(1);
        let entry = Arc::new(Entry::new(event, publish_id, now_ms()));
        tail.cache.push_back(Arc::clone(&entry));
        // Readers only take durable events, and whatever is durable is in the store,
        // so any entry may leave memory, written or not.
        while tail.cache.len() > CACHE_EVENTS {
            tail.cache.pop_front();
        }
        drop(tail);
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(writer) = writer.as_ref() {
            // A closed channel means the writer failed; `failure` says so.
            let _ = writer.send(Arc::clone(&entry));
        }
        entry
    }

    /// Waits until the event numbered `seq` is durable; an error when the log failed
    /// before it was.
    pub async fn durable(&self, seq: u64) -> Result<(), LogError> {
        self.wait_durable(seq, false).await
    }

    /// As [`Log::durable`], for a Join, whose newcomer's feed goes ahead of everyone
    /// else's: the commit that answers it wakes the other feeds
    /// [`NEWCOMER_HEAD_START`] later, or at the next commit if that comes first.
    pub async fn durable_for_newcomer(&self, seq: u64) -> Result<(), LogError> {
        self.wait_durable(seq, true).await
    }

    async fn wait_durable(&self, seq: u64, newcomer: bool) -> Result<(), LogError> {
        let answer = {
            // Looked at and registered under the waiters' lock, which the writer
            // holds while it moves the sequence number on: no wake-up is lost.
            let mut waiters = self
                .progress
                .waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let durable = self.progress.durable.borrow();
            if durable.seq >= seq {
                return Ok(());
            }
            if let Some(failure) = &durable.failed {
                return Err(failure.clone());
            }
            drop(durable);
            let (sender, answer) = oneshot::channel();
            waiters.entry(seq).or_default().push(Waiter {
                answer: sender,
                newcomer,
            });
            answer
        };
        answer.await.unwrap_or(Err(LogError::Closed))
    }

    /// A receiver that changes whenever more events become durable, the log fails, or
    /// [`Log::wake_readers`] is called.
    pub(crate) fn watch(&self) -> watch::Receiver<Durable> {
        self.progress.durable.subscribe()
    }

    /// Wakes every reader waiting for the log to move on, to look at its session again.
    pub fn wake_readers(&self) {
        self.progress.wake_feeds();
    }

    /// Durable events from `from` up to `max` of them (and before `until`, when
    /// given), or what the reader must do instead.
    pub fn read(&self, from: u64, max: usize, until: Option<u64>) -> Read {
        let durable = self.progress.durable.borrow().clone();
        let last = match until {
            Some(until) => durable.seq.min(until.saturating_sub(1)),
            None => durable.seq,
        };
        if from > last {
            return match durable.failed {
                Some(failure) => Read::Failed(failure),
                None => Read::Wait,
            };
        }
        let first_held = self.first_held();
        if from < first_held {
            return Read::Trimmed { first_held };
        }
        let tail = self.read_tail();
        let Some(cached_from) = tail.cache.front().map(|entry| entry.seq) else {
            return Read::Stored;
        };
        if from < cached_from {
            return Read::Stored;
        }
        let count = usize::try_from(last - from + 1)
            .unwrap_or(usize::MAX)
            .min(max);
        let start = usize::try_from(from - cached_from).unwrap_or(usize::MAX);
        Read::Ready(tail.cache.range(start..).take(count).cloned().collect())
    }

    /// Up to `max` durable events from `from`, read from the store: for a reader
    /// behind memory. Blocking I/O: call it off the async threads. An empty result
    /// when `from` is no longer held.
    pub fn read_stored(&self, from: u64, max: usize) -> Result<Vec<Arc<Entry>>, LogError> {
        let durable = self.durable_seq();
        if from > durable {
            return Ok(Vec::new());
        }
        let max = max.min(usize::try_from(durable - from + 1).unwrap_or(usize::MAX));
        self.store.read(from, max)
    }

    /// At most `limit` durable events before `before` (the newest when `before` is 0),
    /// oldest first. Blocking I/O when they are not in memory.
    pub fn page_before(&self, before: u64, limit: usize) -> Result<Vec<Arc<Entry>>, LogError> {
        loop {
            let end = match before {
                0 => self.durable_seq(),
                before => self.durable_seq().min(before - 1),
            };
            let first_held = self.first_held();
            let start = (end + 1).saturating_sub(limit as u64).max(first_held);
            if limit == 0 || end < start {
                return Ok(Vec::new());
            }
            let count = usize::try_from(end - start + 1).unwrap_or(usize::MAX);
            let mut out = Vec::with_capacity(count);
            while out.len() < count {
                let from = start + out.len() as u64;
                let batch = match self.read(from, count - out.len(), Some(end + 1)) {
                    Read::Ready(batch) => batch,
                    Read::Stored => self.store.read(from, count - out.len())?,
                    Read::Wait | Read::Trimmed { .. } | Read::Failed(_) => Vec::new(),
                };
                if batch.is_empty() {
                    break;
                }
                out.extend(batch);
            }
            // A short page means the oldest events were trimmed while we read: read
            // again from what is held now, unless nothing changed.
            if out.len() == count || self.first_held() == first_held {
                return Ok(out);
            }
        }
    }

    fn read_tail(&self) -> std::sync::RwLockReadGuard<'_, Tail> {
        self.tail.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // Closing the channel ends the writer thread once it has written the rest.
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        let thread = self
            .writer_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// The writer thread: commits whatever has arrived since the last commit as one
/// batch (group commit), then tells the readers and the waiting requests.
fn write_batches(
    progress: &Progress,
    store: &dyn Store,
    retention: Retention,
    events: std::sync::mpsc::Receiver<Arc<Entry>>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    // Whether the last commit held back waking the feeds for a newcomer: they are
    // woken once, when its head start ends.
    let mut holding = false;
    loop {
        let wait = if holding {
            NEWCOMER_HEAD_START
        } else {
            AGE_TRIM_INTERVAL
        };
        let received = events.recv_timeout(wait);
        if std::mem::take(&mut holding) {
            // The newcomer's head start ends here: it ran out, or more events came.
            progress.wake_feeds();
            if matches!(received, Err(RecvTimeoutError::Timeout)) {
                continue;
            }
        }
        let first = match received {
            Ok(entry) => Some(entry),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let started = std::time::Instant::now();
        let result = match first {
            Some(first) => {
                let mut batch = vec![first];
                while batch.len() < MAX_COMMIT_BATCH {
                    match events.try_recv() {
                        Ok(entry) => batch.push(entry),
                        Err(_) => break,
                    }
                }
                store
                    .append(&batch, &retention)
                    .map(|first_held| (first_held, batch.last().map(|entry| entry.seq)))
            }
            None if retention.max_age.is_some() => {
                store.trim(&retention).map(|first_held| (first_held, None))
            }
            None => continue,
        };
        timed(started.elapsed(), &result);
        match result {
            Ok((first_held, written)) => {
                progress.first_held.fetch_max(first_held, Ordering::AcqRel);
                if written.is_some() {
                    holding = progress.advance(written, None);
                }
            }
            Err(err) => {
                // Returning drops the channel's receiver: later appends go nowhere,
                // and `failure` says why.
                tracing::error!(error = %err, "the log cannot be written; refusing new events");
                progress.advance(None, Some(err));
                return;
            }
        }
    }
}

/// Counts a commit's time, and warns of one that held the room up.
fn timed(took: Duration, result: &Result<(u64, Option<u64>), LogError>) {
    crate::metrics::commit_seconds().record(took.as_secs_f64());
    if took > SLOW_COMMIT && result.is_ok() {
        use crate::log_schema::{field, message};
        tracing::warn!(
            { field::MILLIS } = took.as_millis() as u64,
            "{}",
            message::SLOW_COMMIT
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn open(max_events: u64) -> Arc<Log> {
        let retention = Retention {
            max_events,
            max_age: None,
        };
        Log::with_store(Arc::new(MemoryStore::new()), retention)
            .unwrap()
            .0
    }

    fn append(log: &Log, text: &str) -> Arc<Entry> {
        log.append(EventKind::Chat, Arc::from("a"), text.into(), 1, None)
    }

    /// A memory store whose appends fail once told to, as a full disk's would.
    #[derive(Debug, Default)]
    struct FailingStore {
        inner: MemoryStore,
        fail: AtomicBool,
    }

    impl Store for FailingStore {
        fn recover(&self) -> Result<Recovered, LogError> {
            self.inner.recover()
        }

        fn append(&self, entries: &[Arc<Entry>], retention: &Retention) -> Result<u64, LogError> {
            if self.fail.load(Ordering::Acquire) {
                return Err(LogError::WriteFailed("no space left on device".into()));
            }
            self.inner.append(entries, retention)
        }

        fn trim(&self, retention: &Retention) -> Result<u64, LogError> {
            self.inner.trim(retention)
        }

        fn read(&self, from: u64, max: usize) -> Result<Vec<Arc<Entry>>, LogError> {
            self.inner.read(from, max)
        }
    }

    /// What `timed` logs for a commit that took `took`.
    #[cfg(feature = "programs")]
    fn logged_for(took: Duration, result: Result<(u64, Option<u64>), LogError>) -> String {
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || timed(took, &result));
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[cfg(feature = "programs")]
    #[test]
    fn a_slow_commit_is_logged_with_how_long_it_took() {
        use crate::log_schema::message::SLOW_COMMIT as SLOW;
        let slow = logged_for(SLOW_COMMIT + Duration::from_millis(128), Ok((1, Some(7))));
        assert!(slow.contains("WARN"), "{slow}");
        assert!(slow.contains(SLOW), "{slow}");
        assert!(slow.contains("millis=328"), "{slow}");
        assert_eq!(logged_for(SLOW_COMMIT, Ok((1, Some(7)))), "");
        assert_eq!(logged_for(Duration::from_millis(3), Ok((1, Some(7)))), "");
        // A failed commit has its own error line; it is not called slow.
        let failed = Err(LogError::WriteFailed("no space left on device".into()));
        assert_eq!(logged_for(SLOW_COMMIT * 2, failed), "");
    }

    /// A waker that counts how often it is woken.
    #[derive(Debug, Default)]
    struct CountingWaker(AtomicU64);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn failed_is_woken_by_a_failure_and_not_by_commits() {
        let store = Arc::new(FailingStore::default());
        let retention = Retention {
            max_events: 100,
            max_age: None,
        };
        let log = Log::with_store(Arc::clone(&store) as Arc<dyn Store>, retention)
            .unwrap()
            .0;
        let wakes = Arc::new(CountingWaker::default());
        let waker = std::task::Waker::from(Arc::clone(&wakes));
        let mut cx = std::task::Context::from_waker(&waker);
        let mut failed = std::pin::pin!(log.failed());
        assert!(failed.as_mut().poll(&mut cx).is_pending());

        // Commits wake the feeds, not what waits only for a failure (the server's
        // main task, which would otherwise be woken a thousand times a second).
        for text in ["one", "two", "three"] {
            let entry = append(&log, text);
            log.durable(entry.seq).await.unwrap();
        }
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "woken by a commit");
        assert!(failed.as_mut().poll(&mut cx).is_pending());
        assert_eq!(log.failure(), None);

        store.fail.store(true, Ordering::Release);
        let refused = append(&log, "refused");
        let err = log.durable(refused.seq).await.unwrap_err();
        assert!(matches!(err, LogError::WriteFailed(_)), "{err:?}");
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "woken once by the failure"
        );
        assert!(failed.as_mut().poll(&mut cx).is_ready());
        assert_eq!(log.failure(), Some(err));
        // Whoever asks later finds it failed at once.
        let mut later = std::pin::pin!(log.failed());
        assert!(later.as_mut().poll(&mut cx).is_ready());
    }

    #[tokio::test]
    async fn appends_are_numbered_without_gaps_and_read_back_once_durable() {
        let log = open(100);
        let seqs: Vec<u64> = (0..5).map(|i| append(&log, &format!("m{i}")).seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        log.durable(5).await.unwrap();
        match log.read(2, 10, None) {
            Read::Ready(entries) => {
                let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
                assert_eq!(seqs, [2, 3, 4, 5]);
            }
            other => panic!("expected events, got {other:?}"),
        }
        assert!(matches!(log.read(6, 10, None), Read::Wait));
        assert!(matches!(log.read(2, 10, Some(2)), Read::Wait));
    }

    #[tokio::test]
    async fn retention_trims_and_says_so() {
        let log = open(3);
        for i in 0..10 {
            append(&log, &format!("m{i}"));
        }
        log.durable(10).await.unwrap();
        assert_eq!(log.first_held(), 8);
        assert!(matches!(
            log.read(5, 10, None),
            Read::Trimmed { first_held: 8 }
        ));
        let page: Vec<u64> = log
            .page_before(0, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(page, [8, 9, 10]);
        let page: Vec<u64> = log
            .page_before(10, 1)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(page, [9]);
    }

    #[tokio::test]
    async fn a_commit_that_answers_a_join_wakes_the_feeds_after_the_newcomer() {
        let (durable, _) = watch::channel(Durable {
            seq: 0,
            failed: None,
        });
        let progress = Progress {
            first_held: AtomicU64::new(1),
            durable,
            waiters: Mutex::new(BTreeMap::new()),
            failed: Notify::new(),
        };
        let mut feed = progress.durable.subscribe();
        let wait = |seq, newcomer| {
            let (answer, answered) = oneshot::channel();
            progress
                .waiters
                .lock()
                .unwrap()
                .entry(seq)
                .or_default()
                .push(Waiter { answer, newcomer });
            answered
        };
        // A Publish answered: the feeds are woken with it.
        let publish = wait(1, false);
        assert!(!progress.advance(Some(1), None));
        assert_eq!(publish.await.unwrap(), Ok(()));
        assert!(feed.has_changed().unwrap());
        feed.borrow_and_update();
        // A Join answered: the newcomer is, the feeds are not yet.
        let (join, publish) = (wait(2, true), wait(3, false));
        assert!(progress.advance(Some(3), None));
        assert_eq!(join.await.unwrap(), Ok(()));
        assert_eq!(publish.await.unwrap(), Ok(()));
        assert!(!feed.has_changed().unwrap());
        // The new mark is there for any reader that looks.
        assert_eq!(feed.borrow().seq, 3);
        // The writer wakes them when the head start ends.
        progress.wake_feeds();
        assert!(feed.has_changed().unwrap());
    }

    #[tokio::test]
    async fn the_feeds_held_for_a_newcomer_are_woken_with_no_later_commit() {
        let log = open(100);
        let mut feed = log.watch();
        let seq = append(&log, "joined").seq;
        log.durable_for_newcomer(seq).await.unwrap();
        // Nothing else is appended: the writer wakes the feeds when the head start
        // runs out.
        tokio::time::timeout(Duration::from_secs(10), feed.changed())
            .await
            .expect("the feeds are woken")
            .unwrap();
        assert_eq!(feed.borrow().seq, seq);
    }

    #[test]
    fn epochs_print_and_parse_as_32_hex_digits() {
        let epoch = Epoch::random();
        let text = epoch.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<Epoch>(), Ok(epoch));
        assert!("xyz".parse::<Epoch>().is_err());
        assert!(format!("{text}0").parse::<Epoch>().is_err());
    }
}
