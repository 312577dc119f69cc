//! A participant's feed: a cursor into the log that yields every durable event from
//! its position on, in order, at the pace its reader takes them.
//!
//! A feed holds no copy of the events: it reads the log's newest events from memory
//! and older ones from the store, a batch at a time. So a reader that falls behind
//! costs its cursor, not a queue. It is cut off only when the log no longer holds
//! its position (retention trimmed it), and then it can resume.

use crate::error::ChatError;
use crate::log::{Durable, Entry, LogError, Read, STORE_READ_BATCH};
use crate::log_schema::LeaveCause;
use crate::room::Room;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tokio_stream::wrappers::WatchStream;

/// How many events a feed takes from memory at once.
///
/// Taking them together costs one look at the log per batch instead of per event,
/// and lets the stream hand tonic everything that is ready in one poll, which tonic
/// packs into one HTTP/2 frame.
pub const FEED_BATCH: usize = 64;

/// Where a session's feed ends, set once by the room: before the sequence number of
/// its leave notice, or where the server stopped, with the reason.
#[derive(Debug, Default)]
pub(crate) struct FeedEnd {
    end: OnceLock<(u64, Option<ChatError>)>,
    /// Told when the end is set, for whoever waits without reading the feed.
    ended: Notify,
}

impl FeedEnd {
    /// Ends the feed before event `seq`, with `reason` (none for a clean end).
    pub(crate) fn set(&self, seq: u64, reason: Option<ChatError>) {
        if self.end.set((seq, reason)).is_ok() {
            self.ended.notify_waiters();
        }
    }

    fn get(&self) -> Option<&(u64, Option<ChatError>)> {
        self.end.get()
    }

    /// Completes once the end is set with a reason: the participant was cut off
    /// (or the server is stopping). Never completes for a clean end.
    async fn cut_off(&self) {
        loop {
            let notified = self.ended.notified();
            tokio::pin!(notified);
            // Registered before looking, so a `set` in between is not missed.
            notified.as_mut().enable();
            match self.get() {
                Some((_, Some(_))) => return,
                Some((_, None)) => std::future::pending::<()>().await,
                None => notified.await,
            }
        }
    }
}

/// One event as a feed delivers it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event.
    pub entry: Arc<Entry>,
    /// Whether it is a past event replayed before the participant's join notice.
    pub history: bool,
}

/// One participant's feed of events, in log order.
///
/// It yields every event from its position on, then ends: cleanly after the
/// participant left, or with the error that ended it (cut off, shutting down).
/// Dropping a feed whose participant is still present counts as leaving.
pub struct Feed {
    room: Arc<Room>,
    session: u64,
    /// The sequence number of the next event to read from the log.
    cursor: u64,
    /// The sequence number of the next event to deliver (the cursor, less what is
    /// read and not yet delivered), shared with the room, which cuts off a feed
    /// whose position the log trimmed.
    position: Arc<AtomicU64>,
    /// Events numbered below this are history.
    history_before: u64,
    end: Arc<FeedEnd>,
    batch: VecDeque<Arc<Entry>>,
    /// Wakes the feed when more of the log is durable (or its session ended).
    wake: WatchStream<Durable>,
    /// A read from the store in progress, for a feed behind what memory holds.
    loading: Option<JoinHandle<Result<Vec<Arc<Entry>>, LogError>>>,
    finished: bool,
    /// Where the feed does what takes locks the rest of the server shares, when not
    /// on the thread that polls or drops it ([`Feed::lock_elsewhere`]).
    elsewhere: Option<Handle>,
    /// Whether the feed has told the room its participant left.
    left: bool,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("session", &self.session)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

impl Feed {
    /// Completes once this feed is cut off (or the server stops), whether or not
    /// anyone reads the feed: a participant whose connection is full is not read,
    /// and must still lose its connection at once.
    pub fn cut_off_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let end = Arc::clone(&self.end);
        async move { end.cut_off().await }
    }

    pub(crate) fn new(
        room: Arc<Room>,
        session: u64,
        position: Arc<AtomicU64>,
        history_before: u64,
        end: Arc<FeedEnd>,
    ) -> Self {
        let wake = WatchStream::from_changes(room.log().watch());
        Self {
            room,
            session,
            cursor: position.load(Ordering::Acquire),
            position,
            history_before,
            end,
            batch: VecDeque::new(),
            wake,
            loading: None,
            finished: false,
            elsewhere: None,
            left: false,
        }
    }

    /// Does what takes locks the rest of the server shares (announcing that its
    /// participant left, reading from the store) as tasks on `runtime`, not on
    /// the thread that polls or drops the feed: for a feed served on a crowd's
    /// threads of lower priority, where a thread that loses its CPU while holding
    /// the room's lock keeps every request waiting ([`crate::connection::Arrival`]).
    pub fn lock_elsewhere(&mut self, runtime: Handle) {
        self.elsewhere = Some(runtime);
    }

    /// Removes the participant, if still present, and announces its leave for
    /// `cause`; once: a feed cut off, then dropped, left for the first cause.
    fn leave(&mut self, cause: LeaveCause) {
        if std::mem::replace(&mut self.left, true) {
            return;
        }
        match &self.elsewhere {
            Some(runtime) => {
                let (room, session) = (Arc::clone(&self.room), self.session);
                // Never run if that runtime has stopped: then the server is stopping.
                drop(runtime.spawn(async move { room.disconnect(session, cause) }));
            }
            None => self.room.disconnect(self.session, cause),
        }
    }

    /// The sequence number of the next event this feed delivers.
    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// Takes `entries` (consecutive, from the cursor on) for delivery, up to the
    /// feed's end.
    ///
    /// The end is looked at again after the read: the room sets it before it
    /// appends the leave notice, so a read that found the notice durable finds the
    /// end set too, and the notice is never delivered to its own participant.
    fn take(&mut self, entries: Vec<Arc<Entry>>) {
        self.cursor += entries.len() as u64;
        let end = self.end.get().map_or(u64::MAX, |(seq, _)| *seq);
        let before = self.batch.len();
        self.batch
            .extend(entries.into_iter().take_while(|entry| entry.seq < end));
        crate::metrics::delivered().increment((self.batch.len() - before) as u64);
    }

    /// Ends the feed with `err`, after announcing the participant's leave for `cause`.
    fn cut_off(
        &mut self,
        cause: LeaveCause,
        err: ChatError,
    ) -> Poll<Option<Result<Delivery, ChatError>>> {
        self.finished = true;
        self.leave(cause);
        Poll::Ready(Some(Err(err)))
    }
}

impl Stream for Feed {
    type Item = Result<Delivery, ChatError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(entry) = this.batch.pop_front() {
                this.position.store(entry.seq + 1, Ordering::Release);
                let history = entry.seq < this.history_before;
                return Poll::Ready(Some(Ok(Delivery { entry, history })));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            if let Some(loading) = &mut this.loading {
                let loaded = std::task::ready!(Pin::new(loading).poll(cx));
                this.loading = None;
                match loaded {
                    Ok(Ok(entries)) if entries.first().is_some_and(|e| e.seq == this.cursor) => {
                        this.take(entries);
                        continue;
                    }
                    // The position was trimmed while we read: look again.
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => {
                        return this
                            .cut_off(LeaveCause::Disconnected, ChatError::LogUnavailable(err));
                    }
                    Err(join_error) => {
                        return this.cut_off(
                            LeaveCause::Disconnected,
                            ChatError::LogUnavailable(LogError::ReadFailed(join_error.to_string())),
                        );
                    }
                }
            }
            let end = this.end.get();
            if let Some((end_seq, reason)) = end
                && this.cursor >= *end_seq
            {
                this.finished = true;
                return Poll::Ready(reason.clone().map(Err));
            }
            let until = end.map(|(seq, _)| *seq);
            match this.room.log().read(this.cursor, FEED_BATCH, until) {
                Read::Ready(entries) => this.take(entries),
                Read::Wait => match Pin::new(&mut this.wake).poll_next(cx) {
                    Poll::Ready(Some(_)) => {}
                    Poll::Ready(None) => {
                        this.finished = true;
                        return Poll::Ready(Some(Err(ChatError::ShuttingDown)));
                    }
                    Poll::Pending => return Poll::Pending,
                },
                Read::Stored => {
                    let log = Arc::clone(this.room.log());
                    let from = this.cursor;
                    let read = move || log.read_stored(from, STORE_READ_BATCH);
                    this.loading = Some(match &this.elsewhere {
                        Some(runtime) => runtime.spawn_blocking(read),
                        None => tokio::task::spawn_blocking(read),
                    });
                }
                Read::Trimmed { first_held } => {
                    return this.cut_off(
                        LeaveCause::TooSlow,
                        ChatError::TooSlow {
                            position: this.cursor,
                            first_held,
                        },
                    );
                }
                Read::Failed(err) => {
                    return this.cut_off(LeaveCause::Disconnected, ChatError::LogUnavailable(err));
                }
            }
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.leave(LeaveCause::Disconnected);
    }
}
