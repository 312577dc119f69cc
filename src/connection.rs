//! Every accepted TCP connection as the server holds it: the listening socket, the
//! accept loop that caps them, and a per-connection handle that can close one at
//! once.
//!
//! No peer may hurt the others, so every resource a connection can hold is bounded
//! here or in the HTTP/2 settings `server::run` applies:
//!
//! - **How many.** [`accept`] admits at most [`ConnectionLimits::max_connections`]
//!   connections; one more is closed as soon as it is accepted, so a flood cannot use
//!   up the file descriptors honest clients need. Accept errors (out of descriptors,
//!   out of memory) make the loop back off instead of spinning, and both are logged
//!   once per episode, not once per connection.
//! - **For how long without a participant.** A connection that carries no
//!   participant's feed for [`ConnectionLimits::join_timeout`] (and its share of
//!   [`JOIN_TIMEOUT_SPREAD`]) is closed, as NATS closes a connection that has not
//!   authenticated in time. A Join in progress ([`ConnectionHandle::joining`])
//!   stops the clock: the peer has asked, and the server, busy with a crowd joining
//!   at once, is the one that is slow. So do bytes the peer sent that the server
//!   has not read yet when the deadline comes: the deadline is put off once, by
//!   the join timeout again.
//! - **How much it may leave unsent.** The socket's send buffer is fixed at
//!   [`SOCKET_SEND_BUFFER_BYTES`] (no autotuning up to megabytes), the socket refuses
//!   more once [`SOCKET_UNSENT_BYTES`] wait that the peer has not let through, and a
//!   participant's feed stops handing events to HTTP/2 while the socket takes no
//!   more bytes ([`ParticipantFeed`]), so the events wait in the room's bounded
//!   queue, where falling behind is noticed, instead of piling up in HTTP/2's send
//!   buffer or the kernel's. A connection is closed when, for
//!   [`ConnectionLimits::send_timeout`], its socket has taken no byte while there
//!   was something to send, or HTTP/2 has taken nothing more from a feed that had
//!   an event ready (the peer granted no flow-control window).
//! - **Whose CPU a crowd uses.** Connections accepted while more than
//!   [`CROWD_ACCEPTS`] arrive within [`CROWD_WINDOW`] (a flood, or everyone
//!   reconnecting at once) are handed to a second stream ([`accept_with_crowd`]),
//!   which the server serves on a runtime of its own whose threads run at a lower
//!   CPU priority: the crowd's handshakes, joins and first deliveries take the CPU
//!   that the connections already being served leave over, instead of queueing
//!   ahead of their messages.
//! - **After its participant is cut off.** When a feed ends with an error (the
//!   participant fell too far behind, say), the connection is closed: once the
//!   status has had [`CUT_OFF_GRACE`] to reach the client, or at once if the socket
//!   is full and it never could.
//!
//! Closing means closing the socket, not a graceful HTTP/2 GOAWAY that would queue
//! behind unread data: the I/O fails, hyper drops the connection, and the socket is
//! closed with `SO_LINGER` 0 (a reset), so the kernel frees its buffers at once.
//! [`ConnectionIo`] does this from inside its `poll_*` methods, woken by a timer or by
//! a [`ConnectionHandle`]; handlers find the handle among the request's extensions.

use futures::task::AtomicWaker;
use socket2::SockRef;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;
use tonic::transport::server::Connected;

/// How many connections the kernel may hold, their handshakes done, until the
/// server accepts them: the listen backlog of [`listen`]. Linux caps it at
/// `net.core.somaxconn` (4096 by default since Linux 5.4).
///
/// tokio's `TcpListener::bind` asks for 1,024. When more clients than that connect
/// at once (all of them reconnecting after a restart, say), the kernel drops the
/// SYNs that find the queue full, and each such client tries again a second or
/// more later: with 10,000 joining at once, some gave up after their 5 s connect
/// timeout. Go's listeners, NATS's among them, ask for `somaxconn` too.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Listens on `address` (`HOST:PORT`, the first of its addresses that can be
/// bound) with a backlog of [`LISTEN_BACKLOG`], and `SO_REUSEADDR` as the standard
/// library sets it, so a restarted server can bind its port at once.
///
/// The errors are those of binding: `AddrInUse`, `AddrNotAvailable`,
/// `PermissionDenied`, and `InvalidInput` for an address that does not parse.
pub async fn listen(address: &str) -> io::Result<TcpListener> {
    let mut last = None;
    for address in tokio::net::lookup_host(address).await? {
        match listen_on(address) {
            Ok(listener) => return Ok(listener),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolves to no address to listen on",
        )
    }))
}

fn listen_on(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How long a connection may carry no participant before it is closed.
///
/// A client joins right after it connects, so 10 s is ample even over a slow
/// network or a TLS handshake, while a peer that only opens connections holds each
/// for no longer than that. Like NATS's authorization timeout.
pub const DEFAULT_JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How much later than the join timeout a connection's own deadline may fall, as
/// a share of it: each connection draws its deadline at random between the join
/// timeout and a fifth more (10 to 12 s at the default).
///
/// Connections that came together and never joined would otherwise be closed in
/// the same millisecond, and reconnect together: in the siege, 2,000 closed at once
/// made honest messages wait up to 40 ms behind the closing. Spread over 2 s, they are
/// closed a few at a time. gRPC spreads its connections' maximum age the same way
/// (by up to 10% either side); this spread only adds, so the join timeout remains
/// the least time a connection is given.
pub const JOIN_TIMEOUT_SPREAD: f64 = 0.2;

/// How long a connection's socket may take no byte while the server has something
/// to send before the connection is closed.
///
/// A socket that takes nothing for 10 s has a peer that stopped reading (or a dead
/// network, which keepalive would notice within the same 20 s); NATS's
/// `write_deadline` defaults to the same. Its feed is paused meanwhile, so the wait
/// costs a full socket buffer and the room's queue, no more.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// How many HTTP/2 streams one connection may have open at once
/// (`SETTINGS_MAX_CONCURRENT_STREAMS`); a stream beyond it is refused.
///
/// A client needs its feed and a Publish or Leave in flight, plus a health check or
/// two; 8 leaves room for that and for a few participants sharing a connection, while
/// a peer that opens streams and never finishes them holds at most 8 (each a few KiB).
/// A load generator that keeps many calls in flight on one connection raises it
/// (`--max-streams`).
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 8;

/// How long a connection whose participant was cut off stays open so that the
/// status (`RESOURCE_EXHAUSTED`, "you fell … behind") can reach the client.
///
/// The status is a few dozen bytes behind whatever the client has not read yet; a
/// client that reads gets it within a round trip. When the socket is full it can
/// never arrive, and the connection is closed without waiting.
pub const CUT_OFF_GRACE: Duration = Duration::from_secs(1);

/// The socket send buffer of every accepted connection (`SO_SNDBUF`; Linux doubles
/// it for its bookkeeping).
///
/// Linux otherwise grows a busy socket's buffer up to `tcp_wmem`'s maximum, 4 MiB
/// by default, which a peer that stops reading then pins for as long as the
/// connection lives. 64 KiB (128 KiB as Linux counts it) carries more than a chat
/// produces in a round trip, at any realistic round-trip time.
pub const SOCKET_SEND_BUFFER_BYTES: usize = 64 * 1024;

/// How many bytes a connection's socket holds that the peer has not yet let
/// through before it refuses more (`TCP_NOTSENT_LOWAT`, on Linux).
///
/// The send buffer bounds the bytes in flight and those not sent yet together. A
/// peer that stops reading closes its window: nothing is in flight any more, and
/// without this limit the whole buffer fills with bytes it will never read, some
/// hundreds of events per stalled participant, each one a write the server made for
/// nobody while honest messages waited. With it the socket refuses more at 16 KiB,
/// the feed pauses ([`ParticipantFeed`]), and the events wait in the log, where
/// they cost nothing. Bytes in flight do not count, so a peer that reads is sent
/// as much as before.
pub const SOCKET_UNSENT_BYTES: u32 = 16 * 1024;

/// The socket receive buffer of every accepted connection (`SO_RCVBUF`). Requests
/// are at most a few KiB; the server need not accept megabytes it has not read.
pub const SOCKET_RECEIVE_BUFFER_BYTES: usize = 64 * 1024;

/// Descriptors kept free when `--max-connections` is derived from the process's
/// limit: the listener, the log file, the runtime's own (epoll, signal pipe) and a
/// margin, so that accepting one more connection than the cap (to close it) never
/// fails for want of a descriptor.
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// How many times per send timeout the feeds of a connection are checked for
/// having been left waiting by HTTP/2; a stalled feed is noticed between one and
/// two send timeouts after it stalled, at the cost of a few checks per connection
/// with a participant per send timeout.
const FEED_CHECKS_PER_SEND_TIMEOUT: u32 = 4;

/// The accept loop's first pause after an accept error (such as `EMFILE`).
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(10);

/// The accept loop's longest pause: a second keeps a server out of descriptors
/// responsive once some free up, at the cost of one failed `accept` a second.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How many connections may be accepted within [`CROWD_WINDOW`] before the next
/// ones count as a crowd ([`accept_with_crowd`]): 300 a second. Honest clients
/// connect a few at a time; a flood, or a whole room reconnecting after a
/// restart, comes by the hundred.
pub const CROWD_ACCEPTS: usize = 30;

/// The window in which [`CROWD_ACCEPTS`] connections make a crowd.
pub const CROWD_WINDOW: Duration = Duration::from_millis(100);

/// How much lower than the server's own the CPU priority (Unix niceness) of the
/// threads serving crowds is ([`accept_with_crowd`]), unless told otherwise
/// (`--crowd-priority`): at 10 lower, a thread gets about a tenth of the CPU a
/// thread at the server's own priority gets when both want it, and all of it when
/// nothing else does.
pub const DEFAULT_CROWD_NICENESS: u8 = 10;

/// The priority crowds are served at unless told otherwise: [`DEFAULT_CROWD_NICENESS`]
/// lower.
pub const DEFAULT_CROWD_PRIORITY: CrowdPriority = CrowdPriority::Lower(DEFAULT_CROWD_NICENESS);

/// The lowest a Unix niceness goes.
pub(crate) const LOWEST_NICENESS: u8 = 19;

/// How the threads that serve crowds ([`accept_with_crowd`]) run beside the
/// server's own. Written on the command line as the niceness to lower by, 0 to 19
/// (0 for [`Same`](CrowdPriority::Same)), or `idle`. Elsewhere than Linux, the
/// crowd's threads keep the server's priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrowdPriority {
    /// No threads of their own: crowds are served like every other connection.
    Same,
    /// Threads this much lower in CPU priority (Unix niceness, 1 to 19).
    Lower(u8),
    /// Threads under Linux's `SCHED_IDLE` policy: they run on the CPU nothing else
    /// on the machine wants, and a thread of the normal policy that wakes takes
    /// their CPU at once. Below any niceness: while anything else on the machine
    /// keeps its CPUs busy, a crowd's connections wait (seconds, where a niceness
    /// of 10 keeps them served), so it is for a machine that serves chat alone.
    Idle,
}

impl std::str::FromStr for CrowdPriority {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("idle") {
            return Ok(Self::Idle);
        }
        match text.parse::<u8>() {
            Ok(0) => Ok(Self::Same),
            Ok(niceness) if niceness <= LOWEST_NICENESS => Ok(Self::Lower(niceness)),
            _ => Err(format!(
                "\"{text}\" is not a crowd priority; give a niceness to lower by, \
                 0 to {LOWEST_NICENESS}, or idle"
            )),
        }
    }
}

impl fmt::Display for CrowdPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Same => f.write_str("0"),
            Self::Lower(niceness) => write!(f, "{niceness}"),
            Self::Idle => f.write_str("idle"),
        }
    }
}

/// What bounds the connections a server holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// How many connections may be open at once; `None` derives it from the
    /// descriptor limit when the server starts ([`default_max_connections`]).
    pub max_connections: Option<usize>,
    /// How long a connection may carry no participant, at least: each connection
    /// draws its own deadline up to [`JOIN_TIMEOUT_SPREAD`] later. Put off once, by
    /// as much again, when bytes the peer sent wait unread as it comes.
    pub join_timeout: Duration,
    /// How long a connection's socket may take no byte while there is something to
    /// send.
    pub send_timeout: Duration,
    /// How many HTTP/2 streams one connection may have open at once.
    pub max_streams: u32,
    /// How the threads serving crowds run: [`CrowdPriority::Same`] serves crowds
    /// like every other connection.
    pub crowd_priority: CrowdPriority,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: None,
            join_timeout: DEFAULT_JOIN_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            max_streams: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            crowd_priority: DEFAULT_CROWD_PRIORITY,
        }
    }
}

/// The connection cap derived from this process's descriptor limit (the soft one,
/// which the server binary first raises to the hard one), less
/// [`RESERVED_DESCRIPTORS`].
pub fn default_max_connections() -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    let free = soft.saturating_sub(RESERVED_DESCRIPTORS).max(1);
    usize::try_from(free).unwrap_or(usize::MAX)
}

/// Why the server closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its participant's feed ended with an error (too slow, say).
    CutOff,
    /// It carried no participant for the join timeout.
    JoinTimeout,
    /// Its socket took no byte for the send timeout.
    SendTimeout,
}

impl CloseReason {
    /// The reason as logged.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::CutOff => "cut_off",
            CloseReason::JoinTimeout => "join_timeout",
            CloseReason::SendTimeout => "send_timeout",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Serves `listener`'s connections, at most `limits.max_connections` at once, as
/// [`ConnectionIo`]s for tonic's `serve_with_incoming`.
///
/// The stream never fails and never ends: an accept error is logged (once per
/// episode) and retried after a pause that doubles up to a second, as mini-redis
/// does, since tonic would otherwise retry at once and spin on `EMFILE`.
pub fn accept(
    listener: TcpListener,
    limits: ConnectionLimits,
) -> impl Stream<Item = Result<ConnectionIo, Infallible>> + Send + 'static {
    Acceptor::new(listener, limits, None).into_stream()
}

/// Serves `listener`'s connections as [`accept`] does, in two streams: the
/// connections accepted while a crowd connects ([`CrowdDetector`]) come out of the
/// second, for the server to serve on a runtime whose threads run at
/// `limits.crowd_priority`. Both share one cap on connections. With
/// [`CrowdPriority::Same`] there is no second stream.
///
/// The second stream makes each connection's [`ConnectionIo`] when it is polled,
/// so that the socket and its timers belong to the runtime that polls it. It ends
/// when the first is dropped.
pub fn accept_with_crowd(
    listener: TcpListener,
    limits: ConnectionLimits,
) -> (
    impl Stream<Item = Result<ConnectionIo, Infallible>> + Send + 'static,
    Option<impl Stream<Item = Result<ConnectionIo, Infallible>> + Send + 'static>,
) {
    use tokio_stream::StreamExt;
    if limits.crowd_priority == CrowdPriority::Same {
        return (Acceptor::new(listener, limits, None).into_stream(), None);
    }
    let (handoff, handed) = tokio::sync::mpsc::unbounded_channel::<Handoff>();
    let crowd = Crowd {
        detector: CrowdDetector::default(),
        handoff,
        episode: None,
    };
    let calm = Acceptor::new(listener, limits, Some(crowd)).into_stream();
    let crowd = tokio_stream::wrappers::UnboundedReceiverStream::new(handed).filter_map(
        move |handoff: Handoff| match TcpStream::from_std(handoff.stream) {
            Ok(stream) => Some(Ok(ConnectionIo::new(
                stream,
                handoff.peer,
                handoff.id,
                limits,
                handoff.slot,
                Arrival::InACrowd,
            ))),
            Err(err) => {
                tracing::warn!(peer = %handoff.peer, error = %err, "cannot serve a connection of the crowd");
                None
            }
        },
    );
    (calm, Some(crowd))
}

/// Tells a crowd from connections that come a few at a time: a connection is part
/// of a crowd when more than [`CROWD_ACCEPTS`] were accepted within the
/// [`CROWD_WINDOW`] that ends with it.
#[derive(Debug, Default)]
pub struct CrowdDetector {
    /// When the connections of the last window were accepted, oldest first.
    recent: std::collections::VecDeque<Instant>,
}

impl CrowdDetector {
    /// Counts a connection accepted at `now` (which never goes back); true when it
    /// is part of a crowd.
    pub fn accepted(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|&at| now.duration_since(at) >= CROWD_WINDOW)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        // Bounded: the window holds one more than the limit at most.
        if self.recent.len() > CROWD_ACCEPTS + 1 {
            self.recent.pop_front();
        }
        self.recent.len() > CROWD_ACCEPTS
    }
}

/// The crowd's side of the accept loop.
struct Crowd {
    detector: CrowdDetector,
    /// Where the crowd's connections go.
    handoff: tokio::sync::mpsc::UnboundedSender<Handoff>,
    /// How many connections of the crowd now connecting were handed over.
    episode: Option<u64>,
}

/// How a connection came, and so which threads serve its I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Among a few: served on the server's own runtime.
    Alone,
    /// In a crowd ([`CrowdDetector`]): served on the crowd's runtime, whose threads
    /// may run at a lower priority (`limits.crowd_priority`). Work that takes a
    /// lock the rest of the server shares must not be done there: a thread that
    /// loses its CPU while holding one keeps everyone waiting for as long
    /// ([`crate::server`] moves the calls of such a connection to its own runtime).
    InACrowd,
}

/// A connection of the crowd on its way to the runtime that serves it: its socket
/// leaves the accept loop's runtime, to be registered with that one.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    id: u64,
    slot: OwnedSemaphorePermit,
}

/// The accept loop's state.
struct Acceptor {
    listener: TcpListener,
    /// One permit per connection that may be open; each connection holds one.
    slots: Arc<Semaphore>,
    max: usize,
    limits: ConnectionLimits,
    next_id: u64,
    /// Connections refused since the cap was last reached, while it still is.
    refused: Option<u64>,
    /// Accept errors in a row, and the pause before the next attempt.
    failed: Option<(u64, Duration)>,
    /// Where the connections of a crowd go, if they go elsewhere.
    crowd: Option<Crowd>,
}

impl Acceptor {
    fn new(listener: TcpListener, limits: ConnectionLimits, crowd: Option<Crowd>) -> Self {
        let max = limits
            .max_connections
            .unwrap_or_else(default_max_connections)
            .max(1);
        tracing::info!(
            max_connections = max,
            join_timeout_secs = limits.join_timeout.as_secs_f64(),
            send_timeout_secs = limits.send_timeout.as_secs_f64(),
            max_streams = limits.max_streams,
            crowd_priority = %limits.crowd_priority,
            "connection limits"
        );
        Self {
            listener,
            slots: Arc::new(Semaphore::new(max)),
            max,
            limits,
            next_id: 0,
            refused: None,
            failed: None,
            crowd,
        }
    }

    /// The connections this loop accepts that it does not hand to the crowd's
    /// runtime, for tonic's `serve_with_incoming`.
    fn into_stream(self) -> impl Stream<Item = Result<ConnectionIo, Infallible>> + Send + 'static {
        futures::stream::unfold(self, |mut acceptor| async move {
            let io = acceptor.next().await;
            Some((Ok(io), acceptor))
        })
    }

    /// Hands `stream` to the crowd's runtime when it is part of a crowd; gives it
    /// back otherwise (or when it cannot be handed over).
    fn hand_to_crowd(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        id: u64,
        slot: OwnedSemaphorePermit,
    ) -> Option<(TcpStream, OwnedSemaphorePermit)> {
        let Some(crowd) = &mut self.crowd else {
            return Some((stream, slot));
        };
        if !crowd.detector.accepted(Instant::now()) {
            if let Some(connections) = crowd.episode.take() {
                tracing::info!(connections, "the crowd has connected");
            }
            return Some((stream, slot));
        }
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                tracing::debug!(%peer, error = %err, "cannot hand a connection to the crowd's runtime");
                return None;
            }
        };
        let handoff = Handoff {
            stream,
            peer,
            id,
            slot,
        };
        if crowd.handoff.send(handoff).is_err() {
            // The crowd's runtime has stopped: the server is stopping.
            return None;
        }
        let handed = crowd.episode.get_or_insert_with(|| {
            tracing::info!(
                accepts = CROWD_ACCEPTS,
                window_ms = CROWD_WINDOW.as_millis() as u64,
                "a crowd is connecting; serving it at a lower CPU priority"
            );
            0
        });
        *handed += 1;
        None
    }

    async fn next(&mut self) -> ConnectionIo {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) if is_this_connections_fault(&err) => continue,
                Err(err) => {
                    let (count, pause) = self.failed.get_or_insert((0, ACCEPT_BACKOFF_FIRST));
                    *count += 1;
                    if *count == 1 {
                        tracing::warn!(error = %err, "cannot accept connections; backing off");
                    }
                    let wait = *pause;
                    *pause = (*pause * 2).min(ACCEPT_BACKOFF_MAX);
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            if let Some((failures, _)) = self.failed.take() {
                tracing::info!(failures, "accepting connections again");
            }
            let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
                self.refuse(&stream);
                continue;
            };
            if let Some(refused) = self.refused.take() {
                tracing::info!(
                    refused,
                    max_connections = self.max,
                    "below the connection limit again"
                );
            }
            self.next_id += 1;
            let Some((stream, slot)) = self.hand_to_crowd(stream, peer, self.next_id, slot) else {
                continue;
            };
            return ConnectionIo::new(
                stream,
                peer,
                self.next_id,
                self.limits,
                slot,
                Arrival::Alone,
            );
        }
    }

    /// Closes a connection over the cap at once, with a reset so that nothing of it
    /// lingers in the kernel.
    fn refuse(&mut self, stream: &TcpStream) {
        let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
        let refused = self.refused.get_or_insert(0);
        *refused += 1;
        if *refused == 1 {
            tracing::warn!(
                max_connections = self.max,
                "connection limit reached; closing new connections until some close"
            );
        }
    }
}

/// Whether an accept error concerns only the connection being accepted (it was
/// reset before we took it), so the next accept can go ahead at once.
fn is_this_connections_fault(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// Applies the per-socket settings; a failure costs only the setting.
fn configure(stream: &TcpStream) {
    let socket = SockRef::from(stream);
    let results = [
        ("TCP_NODELAY", stream.set_nodelay(true)),
        (
            "SO_SNDBUF",
            socket.set_send_buffer_size(SOCKET_SEND_BUFFER_BYTES),
        ),
        (
            "SO_RCVBUF",
            socket.set_recv_buffer_size(SOCKET_RECEIVE_BUFFER_BYTES),
        ),
        #[cfg(any(target_os = "linux", target_os = "android"))]
        (
            "TCP_NOTSENT_LOWAT",
            socket.set_tcp_notsent_lowat(SOCKET_UNSENT_BYTES),
        ),
    ];
    for (option, result) in results {
        if let Err(err) = result {
            tracing::debug!(option, error = %err, "cannot set a socket option");
        }
    }
}

/// What a connection's I/O and its handles share.
struct Shared {
    id: u64,
    arrival: Arrival,
    peer: SocketAddr,
    limits: ConnectionLimits,
    /// This connection's join timeout: the limit's, and its share of
    /// [`JOIN_TIMEOUT_SPREAD`].
    join_timeout: Duration,
    /// Whether the socket refused the last write (its send buffer is full); read by
    /// every feed poll, so kept outside the mutex.
    write_blocked: AtomicBool,
    /// The task driving the connection, woken when a handle changes what it must do.
    driver: AtomicWaker,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Set once, when the connection is to close; it closes at the next I/O call.
    closed: Option<CloseReason>,
    /// Feeds alive on this connection.
    participants: usize,
    /// Joins in progress on this connection ([`Joining`]).
    joining: usize,
    /// When the last participant left, or the connection was accepted (or, once,
    /// when the join timeout was put off for bytes the server had not read).
    idle_since: Instant,
    /// Whether the join timeout has been put off for unread bytes: it is, once.
    join_put_off: bool,
    /// Since when the socket has taken no byte while there was one to send.
    blocked_since: Option<Instant>,
    /// When a participant of this connection was cut off.
    cut_off_at: Option<Instant>,
    /// Feeds waiting for the socket to take bytes again.
    paused: Vec<Waker>,
    /// The feeds alive on this connection, as last checked.
    feeds: Vec<Watched>,
    /// When the feeds are checked next.
    next_feed_check: Instant,
}

/// What a [`ParticipantFeed`] tells its connection about its progress, without a
/// lock: it is updated on every poll.
#[derive(Debug, Default)]
struct FeedProbe {
    /// How often HTTP/2 has polled the feed. Written only by the feed's own polls
    /// (a plain store of its count), read by the connection's checks.
    polls: AtomicU64,
    /// Whether HTTP/2 owes the feed a poll: its last poll handed over an event, or
    /// the feed has woken it since (an event is waiting). HTTP/2 polls as soon as
    /// it has room to send; none coming means the peer grants no window.
    owed: AtomicBool,
}

/// The waker a [`ParticipantFeed`] gives its inner feed: it notes that a poll is
/// owed, then wakes HTTP/2's task.
struct ProbeWaker {
    probe: Arc<FeedProbe>,
    task: Waker,
}

impl Wake for ProbeWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.probe.owed.store(true, Ordering::Relaxed);
        self.task.wake_by_ref();
    }
}

/// A feed as its connection checks it.
#[derive(Debug)]
struct Watched {
    probe: Arc<FeedProbe>,
    /// Its polls at the last check.
    polls: u64,
    /// Since when HTTP/2 has owed it a poll, as far as the checks saw.
    owed_since: Option<Instant>,
}

/// What comes due at a connection's next deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Close(CloseReason),
    CheckFeeds,
}

impl Shared {
    fn new(
        id: u64,
        arrival: Arrival,
        peer: SocketAddr,
        limits: ConnectionLimits,
        now: Instant,
    ) -> Self {
        let join_timeout = limits.join_timeout
            + limits
                .join_timeout
                .mul_f64(JOIN_TIMEOUT_SPREAD * rand::random::<f64>());
        Shared {
            id,
            arrival,
            peer,
            limits,
            join_timeout,
            write_blocked: AtomicBool::new(false),
            driver: AtomicWaker::new(),
            state: Mutex::new(State {
                closed: None,
                participants: 0,
                joining: 0,
                idle_since: now,
                join_put_off: false,
                blocked_since: None,
                cut_off_at: None,
                paused: Vec::new(),
                feeds: Vec::new(),
                next_feed_check: now,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding the lock.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection's earliest deadline, and what comes due then.
    fn deadline(&self, state: &State) -> Option<(Instant, Due)> {
        let join = (state.participants == 0 && state.joining == 0).then(|| {
            (
                state.idle_since + self.join_timeout,
                Due::Close(CloseReason::JoinTimeout),
            )
        });
        let send = state.blocked_since.map(|since| {
            (
                since + self.limits.send_timeout,
                Due::Close(CloseReason::SendTimeout),
            )
        });
        let cut_off = state
            .cut_off_at
            .map(|at| (at + CUT_OFF_GRACE, Due::Close(CloseReason::CutOff)));
        let feeds = (!state.feeds.is_empty()).then_some((state.next_feed_check, Due::CheckFeeds));
        [join, send, cut_off, feeds]
            .into_iter()
            .flatten()
            .min_by_key(|(at, _)| *at)
    }

    /// Whether a feed has waited for HTTP/2 to take its next event for the send
    /// timeout; schedules the next check.
    fn feed_stalled(&self, state: &mut State, now: Instant) -> bool {
        let mut stalled = false;
        for feed in &mut state.feeds {
            let polls = feed.probe.polls.load(Ordering::Relaxed);
            if polls == feed.polls && feed.probe.owed.load(Ordering::Relaxed) {
                let since = *feed.owed_since.get_or_insert(now);
                stalled |= now.duration_since(since) >= self.limits.send_timeout;
            } else {
                feed.owed_since = None;
            }
            feed.polls = polls;
        }
        state.next_feed_check = now + self.limits.send_timeout / FEED_CHECKS_PER_SEND_TIMEOUT;
        stalled
    }

    /// Marks the connection for closing (the first reason counts) and wakes the task
    /// that drives it, and any paused feed.
    fn close(&self, state: &mut State, reason: CloseReason) {
        if state.closed.is_some() {
            return;
        }
        state.closed = Some(reason);
        let participants = state.participants;
        if reason == CloseReason::JoinTimeout {
            tracing::debug!(connection = self.id, peer = %self.peer, reason = %reason, "closing the connection");
        } else {
            tracing::info!(connection = self.id, peer = %self.peer, reason = %reason, participants, "closing the connection");
        }
        for waker in state.paused.drain(..) {
            waker.wake();
        }
        self.driver.wake();
    }
}

/// A handle on one connection, found in the extensions of every request it carries.
#[derive(Clone)]
pub struct ConnectionHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("id", &self.shared.id)
            .field("peer", &self.shared.peer)
            .finish()
    }
}

impl ConnectionHandle {
    /// The handle of the connection that carried `extensions`' request, when it came
    /// through [`accept`]. Under TLS too: tonic puts the inner connection's info
    /// beside its `TlsConnectInfo`.
    pub fn of(extensions: &tonic::Extensions) -> Option<Self> {
        extensions.get::<ConnectionHandle>().cloned()
    }

    /// A handle on a connection with no socket, which came as `arrival` says.
    #[cfg(test)]
    pub(crate) fn detached(arrival: Arrival) -> Self {
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let limits = ConnectionLimits::default();
        Self {
            shared: Arc::new(Shared::new(0, arrival, peer, limits, Instant::now())),
        }
    }

    /// The connection's number, in order of acceptance; for logs.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Whether the connection came alone or in a crowd, whose threads run at a
    /// lower priority ([`accept_with_crowd`]).
    pub fn arrival(&self) -> Arrival {
        self.shared.arrival
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.shared.peer
    }

    /// Notes a Join in progress on this connection until the [`Joining`] returned is
    /// dropped: meanwhile the connection is not closed for the join timeout.
    ///
    /// For a Join the server has taken up (its secret checked): it may wait for its
    /// turn, then for its join notice to be stored, and when thousands join at once
    /// that can take longer than the join timeout.
    pub fn joining(&self) -> Joining {
        self.shared.lock().joining += 1;
        Joining {
            connection: self.clone(),
        }
    }

    /// Closes the connection at once.
    pub fn close(&self, reason: CloseReason) {
        let mut state = self.shared.lock();
        self.shared.close(&mut state, reason);
    }

    /// A participant's feed on this connection ended with an error: close the
    /// connection once the status has had [`CUT_OFF_GRACE`] to leave, or at once if
    /// the socket is full.
    fn cut_off(&self) {
        if self.shared.write_blocked.load(Ordering::Acquire) {
            let mut state = self.shared.lock();
            self.shared.close(&mut state, CloseReason::CutOff);
            return;
        }
        self.close_after_grace();
    }

    /// A participant on this connection was cut off: close the connection once
    /// [`CUT_OFF_GRACE`] has passed, time for a peer that reads again to get the
    /// status.
    fn close_after_grace(&self) {
        let mut state = self.shared.lock();
        state.cut_off_at.get_or_insert_with(Instant::now);
        // The driver re-arms its timer for the grace period.
        self.shared.driver.wake();
    }
}

/// A Join in progress on a connection ([`ConnectionHandle::joining`]).
///
/// Dropped with no participant on the connection (the Join was refused or failed),
/// it leaves the join timeout's deadline where it was, so that refused Joins do
/// not keep a connection open, but at least [`CUT_OFF_GRACE`] away, time for the
/// refusal to reach the client.
#[derive(Debug)]
pub struct Joining {
    connection: ConnectionHandle,
}

impl Drop for Joining {
    fn drop(&mut self) {
        let shared = &self.connection.shared;
        let mut state = shared.lock();
        state.joining -= 1;
        if state.joining == 0 && state.participants == 0 {
            let now = Instant::now();
            let floor = (now + CUT_OFF_GRACE)
                .checked_sub(shared.join_timeout)
                .unwrap_or(now);
            state.idle_since = state.idle_since.max(floor);
            // The driver re-arms its timer for the join timeout.
            shared.driver.wake();
        }
    }
}

/// A participant's feed on a connection: the stream a Join returns, wrapped.
///
/// While it lives the connection counts as carrying a participant (it is not closed
/// for the join timeout). It hands nothing to HTTP/2 while the connection's socket
/// is full, so a stalled reader's events wait in the room's bounded queue rather
/// than in HTTP/2's send buffer. When the feed ends with an error, the participant
/// was cut off: the error is passed on (so the status can still reach the client)
/// and the connection is closed ([`CUT_OFF_GRACE`]).
pub struct ParticipantFeed<S> {
    inner: S,
    connection: Option<ConnectionHandle>,
    /// The task that closes the connection when the feed is cut off, even if the
    /// feed is never polled again (its connection is full); stopped on drop.
    watcher: Option<tokio::task::AbortHandle>,
    probe: Arc<FeedProbe>,
    /// Its polls so far, published to `probe.polls`.
    polls: u64,
    /// The last task to poll, and the [`ProbeWaker`] made for it (made again only
    /// when another task polls).
    waker: Option<(Waker, Waker)>,
}

impl<S> fmt::Debug for ParticipantFeed<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParticipantFeed")
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

impl<S> ParticipantFeed<S> {
    /// Wraps `inner`, a feed on `connection` (none when the server was not started
    /// through [`accept`]: then the feed passes through unchanged).
    pub fn new(inner: S, connection: Option<ConnectionHandle>) -> Self {
        let probe = Arc::new(FeedProbe::default());
        if let Some(connection) = &connection {
            let shared = &connection.shared;
            let mut state = shared.lock();
            state.participants += 1;
            if state.feeds.is_empty() {
                state.next_feed_check =
                    Instant::now() + shared.limits.send_timeout / FEED_CHECKS_PER_SEND_TIMEOUT;
            }
            state.feeds.push(Watched {
                probe: Arc::clone(&probe),
                polls: 0,
                owed_since: None,
            });
            // The driver arms its timer for the first check.
            shared.driver.wake();
        }
        Self {
            inner,
            connection,
            watcher: None,
            probe,
            polls: 0,
            waker: None,
        }
    }

    /// Closes the connection as soon as `cut_off` completes (the feed was cut off),
    /// without waiting for HTTP/2 to poll the feed: a peer that stopped reading
    /// fills its socket, and then nothing polls it until the send timeout.
    pub fn close_when(
        mut self,
        cut_off: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Self {
        if let Some(connection) = self.connection.clone() {
            let watcher = tokio::spawn(async move {
                cut_off.await;
                connection.close_after_grace();
            });
            self.watcher = Some(watcher.abort_handle());
        }
        self
    }

    /// The waker for the inner feed: the task's, noting that a poll is owed. Lent,
    /// not cloned, so a poll touches no reference count.
    fn probe_waker<'w>(
        probe: &Arc<FeedProbe>,
        known: &'w mut Option<(Waker, Waker)>,
        task: &Waker,
    ) -> &'w Waker {
        if !known
            .as_ref()
            .is_some_and(|(known, _)| known.will_wake(task))
        {
            *known = None;
        }
        let (_, waker) = known.get_or_insert_with(|| {
            let waker = Waker::from(Arc::new(ProbeWaker {
                probe: Arc::clone(probe),
                task: task.clone(),
            }));
            (task.clone(), waker)
        });
        waker
    }
}

impl<S, T> Stream for ParticipantFeed<S>
where
    S: Stream<Item = Result<T, tonic::Status>> + Unpin,
{
    type Item = Result<T, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        this.polls += 1;
        this.probe.polls.store(this.polls, Ordering::Relaxed);
        this.probe.owed.store(false, Ordering::Relaxed);
        if let Some(connection) = &this.connection {
            let shared = &connection.shared;
            if shared.write_blocked.load(Ordering::Acquire) {
                let mut state = shared.lock();
                // Checked again under the lock, which the writer takes to unblock.
                if shared.write_blocked.load(Ordering::Acquire) && state.closed.is_none() {
                    if !state.paused.iter().any(|w| w.will_wake(cx.waker())) {
                        state.paused.push(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
            }
        }
        let waker = Self::probe_waker(&this.probe, &mut this.waker, cx.waker());
        let item = Pin::new(&mut this.inner).poll_next(&mut Context::from_waker(waker));
        match (&item, &this.connection) {
            (Poll::Ready(Some(Err(_))), Some(connection)) => connection.cut_off(),
            (Poll::Ready(Some(Ok(_))), _) => this.probe.owed.store(true, Ordering::Relaxed),
            _ => {}
        }
        item
    }
}

impl<S> Drop for ParticipantFeed<S> {
    fn drop(&mut self) {
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
        if let Some(connection) = &self.connection {
            let shared = &connection.shared;
            let mut state = shared.lock();
            state.participants -= 1;
            state
                .feeds
                .retain(|feed| !Arc::ptr_eq(&feed.probe, &self.probe));
            if state.participants == 0 {
                state.idle_since = Instant::now();
                // The driver re-arms its timer for the join timeout.
                shared.driver.wake();
            }
        }
    }
}

/// One accepted connection's socket, as hyper reads and writes it.
///
/// Every `poll_*` call first checks whether the connection must close (a handle
/// said so, or a deadline passed) and, if so, fails; hyper then drops the
/// connection. Each call also registers the calling task and arms one timer for the
/// earliest deadline, so a deadline or a handle wakes the task, which then calls in
/// again.
pub struct ConnectionIo {
    stream: TcpStream,
    shared: Arc<Shared>,
    timer: Pin<Box<Sleep>>,
    /// The connection's place under the cap, given back when it closes.
    _slot: OwnedSemaphorePermit,
}

impl fmt::Debug for ConnectionIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionIo")
            .field("id", &self.shared.id)
            .field("peer", &self.shared.peer)
            .finish_non_exhaustive()
    }
}

impl ConnectionIo {
    fn new(
        stream: TcpStream,
        peer: SocketAddr,
        id: u64,
        limits: ConnectionLimits,
        slot: OwnedSemaphorePermit,
        arrival: Arrival,
    ) -> Self {
        configure(&stream);
        let now = Instant::now();
        let shared = Arc::new(Shared::new(id, arrival, peer, limits, now));
        let timer = Box::pin(tokio::time::sleep_until(now + shared.join_timeout));
        Self {
            stream,
            shared,
            timer,
            _slot: slot,
        }
    }

    /// Fails if the connection must close; otherwise registers the task and arms the
    /// timer for the next deadline.
    fn watch(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.shared.driver.register(cx.waker());
        let mut state = self.shared.lock();
        let now = Instant::now();
        while state.closed.is_none() {
            let Some((at, due)) = self.shared.deadline(&state) else {
                break;
            };
            if at > now {
                if self.timer.deadline() != at {
                    self.timer.as_mut().reset(at);
                }
                // Registers the task with the timer, which has not fired yet.
                let _ = self.timer.as_mut().poll(cx);
                break;
            }
            match due {
                // The peer sent something the server has not read yet: the server,
                // not the peer, is late. Read it before judging the connection idle.
                Due::Close(CloseReason::JoinTimeout)
                    if !state.join_put_off && self.has_unread_bytes() =>
                {
                    state.join_put_off = true;
                    state.idle_since = now;
                    tracing::debug!(connection = self.shared.id, peer = %self.shared.peer, "join timeout put off: bytes wait unread");
                }
                Due::Close(reason) => self.shared.close(&mut state, reason),
                Due::CheckFeeds => {
                    if self.shared.feed_stalled(&mut state, now) {
                        self.shared.close(&mut state, CloseReason::SendTimeout);
                    }
                }
            }
        }
        match state.closed {
            None => Ok(()),
            Some(reason) => {
                drop(state);
                Err(self.abort(reason))
            }
        }
    }

    /// Whether the peer has sent bytes the server has not read yet (a peek, which
    /// takes nothing from the socket).
    fn has_unread_bytes(&self) -> bool {
        let mut byte = [std::mem::MaybeUninit::uninit()];
        matches!(SockRef::from(&self.stream).peek(&mut byte), Ok(n) if n > 0)
    }

    /// Makes the socket close with a reset, discarding whatever is unsent, and
    /// returns the error that makes hyper drop the connection.
    fn abort(&self, reason: CloseReason) -> io::Error {
        let _ = SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("the server closed the connection: {reason}"),
        )
    }

    /// Records a write the socket refused: the send timeout starts, feeds pause, and
    /// a connection whose participant was cut off closes now.
    fn write_refused(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        {
            let mut state = self.shared.lock();
            state.blocked_since.get_or_insert_with(Instant::now);
            self.shared.write_blocked.store(true, Ordering::Release);
            if state.cut_off_at.is_some() {
                self.shared.close(&mut state, CloseReason::CutOff);
            }
        }
        self.watch(cx)
    }

    /// Records a write the socket took: feeds that paused go on.
    fn write_taken(&mut self) {
        if !self.shared.write_blocked.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.shared.lock();
        self.shared.write_blocked.store(false, Ordering::Release);
        state.blocked_since = None;
        for waker in state.paused.drain(..) {
            waker.wake();
        }
    }

    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Pending => match self.write_refused(cx) {
                Ok(()) => Poll::Pending,
                Err(err) => Poll::Ready(Err(err)),
            },
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.write_taken();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
        }
    }
}

impl Connected for ConnectionIo {
    type ConnectInfo = ConnectionHandle;

    fn connect_info(&self) -> ConnectionHandle {
        ConnectionHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl AsyncRead for ConnectionIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.watch(cx)?;
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnectionIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.watch(cx)?;
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.after_write(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.watch(cx)?;
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.watch(cx)?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;

    #[test]
    fn more_than_the_crowd_accepts_within_the_window_are_a_crowd_and_the_window_moves_on() {
        let mut crowd = CrowdDetector::default();
        let start = Instant::now();
        let step = CROWD_WINDOW / 100;
        let mut at = start;
        for n in 1..=CROWD_ACCEPTS {
            assert!(!crowd.accepted(at), "connection {n} is not a crowd yet");
            at += step;
        }
        // Within the window of the first: one more is a crowd, and so are the next.
        assert!(crowd.accepted(at));
        assert!(crowd.accepted(at + step));
        // Connections a window apart are never a crowd, however many.
        let mut calm = CrowdDetector::default();
        for n in 0..(3 * CROWD_ACCEPTS as u32) {
            assert!(!calm.accepted(start + CROWD_WINDOW * n));
        }
        // A window after the crowd, the next connection is calm again.
        assert!(!crowd.accepted(at + step + CROWD_WINDOW));
        // What it remembers stays bounded, whatever the crowd.
        for n in 0..10_000 {
            crowd.accepted(at + CROWD_WINDOW * 2 + step * n);
        }
        assert!(crowd.recent.len() <= CROWD_ACCEPTS + 1);
    }

    #[test]
    fn a_crowd_priority_is_a_niceness_or_idle_and_reads_back_as_written() {
        for (text, priority) in [
            ("0", CrowdPriority::Same),
            ("1", CrowdPriority::Lower(1)),
            ("10", CrowdPriority::Lower(10)),
            ("19", CrowdPriority::Lower(19)),
            ("idle", CrowdPriority::Idle),
        ] {
            assert_eq!(text.parse::<CrowdPriority>(), Ok(priority));
            assert_eq!(priority.to_string(), text);
        }
        assert_eq!(" IDLE ".parse::<CrowdPriority>(), Ok(CrowdPriority::Idle));
        for bad in ["20", "-1", "", "low", "1.5"] {
            let err = bad.parse::<CrowdPriority>().unwrap_err();
            assert!(err.contains("0 to 19, or idle"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_derived_cap_leaves_descriptors_free() {
        let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        let max = default_max_connections() as u64;
        assert!(max >= 1);
        assert!(max + RESERVED_DESCRIPTORS <= soft.max(RESERVED_DESCRIPTORS + 1));
    }

    /// More clients than tokio's default backlog of 1,024 connect while the server
    /// accepts none: each completes its handshake at once, none waits to send its
    /// SYN again.
    #[tokio::test]
    async fn the_listener_queues_more_connections_than_tokio_s_default() {
        const CLIENTS: usize = 1500;
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(4096);
        // The kernel caps any backlog at somaxconn: where that is lower, test what
        // it allows.
        let clients = CLIENTS.min(somaxconn.saturating_sub(1));
        rlimit::increase_nofile_limit(clients as u64 + 256).unwrap();
        let listener = listen("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connects = (0..clients).map(|_| TcpStream::connect(address));
        // A SYN the kernel drops is sent again 1 s later, then 2 s after that, and
        // so on: past the deadline only if the queue is too short for it.
        let connected =
            tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(connects))
                .await
                .expect("every connection completes its handshake while none is accepted");
        let failed = connected.iter().filter(|c| c.is_err()).count();
        assert_eq!(failed, 0, "{failed} of {clients} connections failed");
        drop(listener);
    }

    #[tokio::test]
    async fn listening_on_a_port_in_use_or_a_bad_address_says_which() {
        let first = listen("127.0.0.1:0").await.unwrap();
        let taken = first.local_addr().unwrap().to_string();
        let err = listen(&taken).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let err = listen("127.0.0.1:notaport").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    /// A listener on 127.0.0.1:0 and its accepted connections, closed after
    /// `join_timeout` (and its spread) without a participant.
    async fn accepting(
        join_timeout: Duration,
    ) -> (
        SocketAddr,
        Pin<Box<impl Stream<Item = Result<ConnectionIo, Infallible>>>>,
    ) {
        let listener = listen("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let limits = ConnectionLimits {
            join_timeout,
            ..ConnectionLimits::default()
        };
        (address, Box::pin(accept(listener, limits)))
    }

    /// A connection whose peer's bytes wait unread when the join timeout comes (the
    /// server was too busy to read them) is not closed then: it is read first, and
    /// the deadline put off once.
    #[tokio::test]
    async fn the_join_timeout_is_put_off_once_for_bytes_the_server_has_not_read() {
        let join_timeout = Duration::from_millis(300);
        let (address, mut accepted) = accepting(join_timeout).await;
        let mut client = TcpStream::connect(address).await.unwrap();
        let Some(Ok(mut io)) = accepted.next().await else {
            panic!("a connection")
        };
        let mut buf = [0u8; 16];

        // Sent at once, read only after the deadline has passed.
        client.write_all(b"join").await.unwrap();
        let latest = join_timeout.mul_f64(1.0 + JOIN_TIMEOUT_SPREAD);
        tokio::time::sleep(latest + Duration::from_millis(100)).await;
        let read = io.read(&mut buf).await.expect("put off, not closed");
        assert_eq!(&buf[..read], b"join");

        // Put off by the join timeout again, once: the next time, bytes waiting
        // unread do not save it.
        client.write_all(b"more").await.unwrap();
        tokio::time::sleep(latest + Duration::from_millis(100)).await;
        let err = io.read(&mut buf).await.expect_err("closed the second time");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    }

    /// Connections accepted together get deadlines spread between the join timeout
    /// and a fifth more, so that they are not all closed at once.
    #[tokio::test]
    async fn join_deadlines_are_spread_over_a_fifth_of_the_join_timeout() {
        let join_timeout = Duration::from_secs(10);
        let (address, mut accepted) = accepting(join_timeout).await;
        let mut clients = Vec::new();
        let mut deadlines = Vec::new();
        for _ in 0..50 {
            clients.push(TcpStream::connect(address).await.unwrap());
            let Some(Ok(io)) = accepted.next().await else {
                panic!("a connection")
            };
            deadlines.push(io.shared.join_timeout);
        }
        let latest = join_timeout.mul_f64(1.0 + JOIN_TIMEOUT_SPREAD);
        assert!(
            deadlines
                .iter()
                .all(|d| (join_timeout..=latest).contains(d)),
            "{deadlines:?}"
        );
        let earliest = deadlines.iter().min().unwrap();
        let last = deadlines.iter().max().unwrap();
        // 50 draws from 2 s all within a tenth of it: about one chance in 10^48.
        assert!(*last - *earliest > join_timeout / 50, "{deadlines:?}");
    }

    /// A peer that stops reading leaves at most about `SOCKET_UNSENT_BYTES` waiting
    /// in the server's socket, beyond what its own receive buffer took: the socket
    /// refuses more long before its send buffer is full.
    #[tokio::test]
    async fn a_peer_that_reads_nothing_leaves_little_unsent_in_the_socket() {
        use futures::FutureExt;
        let (address, mut accepted) = accepting(DEFAULT_JOIN_TIMEOUT).await;
        // A small receive buffer, set before connecting so that the window it
        // advertises is small from the start.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let client = socket.connect(address).await.unwrap();
        let Some(Ok(mut io)) = accepted.next().await else {
            panic!("a connection")
        };
        assert_eq!(
            SockRef::from(&io.stream).tcp_notsent_lowat().unwrap(),
            SOCKET_UNSENT_BYTES
        );
        let taken_by_peer = SockRef::from(&client).recv_buffer_size().unwrap();

        // Written until the socket refuses more; on loopback a write reaches the
        // peer's receive buffer before it returns.
        let chunk = [0u8; 1024];
        let mut written = 0;
        while let Some(result) = io.write(&chunk).now_or_never() {
            written += result.expect("the socket takes bytes or would block");
            assert!(written < 4 * 1024 * 1024, "the socket never refused more");
        }
        // The kernel checks the limit as it fills each segment, so a write may go a
        // little over it: twice the limit is room enough. Without the limit the
        // socket took 96 KiB here, all but the peer's few KiB unsent.
        let unsent = written.saturating_sub(taken_by_peer);
        assert!(
            unsent <= 2 * SOCKET_UNSENT_BYTES as usize,
            "{unsent} bytes wait unsent ({written} written, the peer's buffer {taken_by_peer})"
        );
        drop(client);
    }

    #[test]
    fn every_default_deadline_is_at_most_the_keepalive_bound() {
        let keepalive = crate::transport::Keepalive::default().detection_bound();
        assert!(DEFAULT_JOIN_TIMEOUT <= keepalive);
        assert!(DEFAULT_SEND_TIMEOUT <= keepalive);
        assert!(CUT_OFF_GRACE < DEFAULT_SEND_TIMEOUT);
    }
}
