//! The gRPC face of the chat room: the tonic service, and [`run`], which serves it.
//!
//! This layer converts between the generated `pb` types and the domain, logs every
//! refused call, and answers a refusal with its status (the one mapping is in
//! `status`).
//! Accepted calls are logged by the room, one line per event.

use crate::cluster::{self, ClusterConfig, ClusterError};
use crate::connection::{
    self, Arrival, ConnectionHandle, ConnectionLimits, CrowdPriority, ParticipantFeed,
};
use crate::error::ChatError;
use crate::feed::Feed;
use crate::health;
use crate::log::{Epoch, Log, LogConfig, LogError, Recovered};
use crate::log_schema::{field, rpc};
use crate::pace::{JoinPace, JoinRate};
use crate::pb;
use crate::pb::encoded_server::chitty_chat_server::{ChittyChat, ChittyChatServer};
use crate::room::{JoinOptions, Resume, ResumePoint, Room, RoomConfig, SessionToken};
use crate::status;
use crate::transport::{
    DEFAULT_MAX_REQUEST_BYTES, HISTORY_METADATA, JOIN_SECRET_METADATA, JoinSecret, Keepalive,
    LOG_EPOCH_METADATA, MISSED_METADATA, RESUMED_METADATA, SESSION_TOKEN_METADATA,
    TLS_HANDSHAKE_TIMEOUT, TlsIdentity,
};
use crate::validate::name_for_display;
use crate::wire::{EncodedEvent, encode_event, pb_event};
use futures::future::Either;
use futures::{StreamExt, TryStreamExt};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::body::Body;
use tonic::codec::CompressionEncoding;
use tonic::codegen::http;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Identity, ServerTlsConfig};
use tonic::{Code, Request, Response, Status};
use tower::Service;
use tower::layer::layer_fn;

/// The default address the server listens on.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// How long a graceful shutdown waits for clients to hang up before it stops anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How many streams the server may reset on one connection for the peer's errors,
/// refused streams included, before it closes the connection with GOAWAY
/// (`ENHANCE_YOUR_CALM`). An honest client causes none; tonic's default, no limit,
/// would let a peer make the server reset streams forever.
pub const MAX_LOCAL_RESET_STREAMS: usize = 32;

/// How many streams the peer may open and reset before the server has looked at
/// them ("rapid reset", CVE-2023-44487) before the connection is closed; h2's own
/// default, set here so that it is a decision, not an accident.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

/// How much request data the server accepts per stream before the client must wait
/// for it to be read (the HTTP/2 receive window). Requests are at most
/// `--max-request-bytes` (4 KiB by default), so the protocol's own 64 KiB is ample;
/// hyper's 1 MiB would let each stream park a megabyte on the server.
pub const STREAM_RECEIVE_WINDOW: u32 = 64 * 1024;

/// The HTTP/2 receive window of a whole connection: a few streams' worth.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 4 * STREAM_RECEIVE_WINDOW;

/// The largest header block the server accepts on one request (hyper's default,
/// set here so that it is a decision): metadata is a join secret and a few names.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// How many of one PublishStream's requests the server works on at once: it reads
/// no more of the stream until the oldest is answered. A client that keeps this
/// many in flight hides a commit's wait; one that never reads its outcomes holds
/// this many, and then HTTP/2 flow control stops it.
pub const MAX_PUBLISHES_IN_FLIGHT: usize = 256;

/// The outcomes of a PublishStream, in the order of its requests.
pub type PublishOutcomes = Pin<Box<dyn Stream<Item = Result<pb::PublishOutcome, Status>> + Send>>;

/// Settings of the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Settings of the chat room.
    pub room: RoomConfig,
    /// Where the event log lives and what it keeps.
    pub log: LogConfig,
    /// HTTP/2 keepalive, which notices clients that vanished without hanging up.
    pub keepalive: Keepalive,
    /// The largest request, in bytes once encoded, the server decodes.
    pub max_request_bytes: usize,
    /// Serve TLS with this identity; plain HTTP/2 without one.
    pub tls: Option<TlsIdentity>,
    /// Refuse Join without this secret; anyone may join without one.
    pub join_secret: Option<JoinSecret>,
    /// The pace of joins, server-wide; `None` admits every join at once.
    pub join_rate: Option<JoinRate>,
    /// How many connections, for how long without a participant, and how long a
    /// socket may take nothing.
    pub connections: ConnectionLimits,
    /// Serve as one node of a cluster whose log is a NATS JetStream stream; `None`
    /// serves alone, over the log `log` describes.
    pub cluster: Option<ClusterConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            room: RoomConfig::default(),
            log: LogConfig::default(),
            keepalive: Keepalive::default(),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            tls: None,
            join_secret: None,
            join_rate: Some(JoinRate::default()),
            connections: ConnectionLimits::default(),
            cluster: None,
        }
    }
}

/// Why the server could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The event log cannot be opened or written.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Serving failed.
    #[error("cannot serve: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The node cannot join its cluster, or lost it for good.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The runtime for crowds of connections cannot be started (out of threads).
    #[error("cannot start the threads that serve crowds of connections: {0}")]
    CrowdRuntime(std::io::Error),
}

/// Serves Chitty-Chat on `listener` until `shutdown` completes.
///
/// It opens the event log `config.log` describes first, and stops with an error
/// when the log can no longer be written. With `config.cluster` it joins that
/// cluster instead (and keeps its copy of the cluster's log in memory).
///
/// Beside the chat service it serves the gRPC health service and server reflection
/// (see [`health`]). On shutdown health turns `NOT_SERVING` and every participant's
/// feed ends with `UNAVAILABLE` ("the Chitty-Chat server is shutting down"), so
/// clients exit with a clear message; the server then waits up to
/// [`SHUTDOWN_GRACE`] for connections to close.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    if let Some(cluster) = &config.cluster {
        let node = cluster::start(cluster, config.room.clone(), config.log.retention).await?;
        return run_node(listener, config, node, shutdown).await;
    }
    let (log, recovered) = Log::open(&config.log)?;
    run_with_log(listener, config, log, recovered, shutdown).await
}

/// Serves as [`run`] does, over a log the caller opened (so that a program can
/// refuse an unusable data directory before it takes its port).
/// `config.log` is not used.
pub async fn run_with_log(
    listener: TcpListener,
    config: ServerConfig,
    log: Arc<Log>,
    recovered: Recovered,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    tracing::info!(
        epoch = %log.epoch(),
        head = recovered.head,
        first_held = recovered.first_held,
        lamport = recovered.last_lamport,
        "event log open"
    );
    let room = Room::open(config.room.clone(), Arc::clone(&log), recovered);
    let fatal =
        async move {
            log.failed().await;
            ServerError::Log(log.failure().unwrap_or_else(|| {
                LogError::WriteFailed("the log stopped taking events".to_owned())
            }))
        };
    serve(listener, config, room, None, fatal, shutdown).await
}

/// Serves as [`run`] does, as a node of a cluster the caller joined
/// ([`cluster::start`]). `config.log` and `config.cluster` are not used.
pub async fn run_node(
    listener: TcpListener,
    config: ServerConfig,
    node: cluster::Node,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let room = Arc::clone(node.room());
    let reachable = node.reachable();
    let fatal = async move {
        let mut node = node;
        let log = Arc::clone(node.room().log());
        tokio::select! {
            err = node.failed() => ServerError::Cluster(err),
            () = log.failed() => ServerError::Log(log.failure().unwrap_or_else(|| {
                LogError::WriteFailed("the log stopped taking events".to_owned())
            })),
        }
    };
    serve(listener, config, room, Some(reachable), fatal, shutdown).await
}

/// How long a stopping node waits for the cluster to take the news that its
/// participants left.
pub const CLUSTER_LEAVE_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves `room` until `shutdown` completes or `fatal` says why it cannot go on.
/// Health follows `reachable`, when there is one: a node that cannot reach its
/// cluster is `NOT_SERVING` until it can again.
async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    room: Arc<Room>,
    reachable: Option<tokio::sync::watch::Receiver<bool>>,
    fatal: impl Future<Output = ServerError> + Send,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let sweeper = tokio::spawn(cut_off_trimmed(Arc::clone(&room)));
    let service = ChatService::new(Arc::clone(&room))
        .with_join_secret(config.join_secret)
        .with_join_rate(config.join_rate);
    let max_request_bytes = config.max_request_bytes;
    let (health_reporter, health_service) = health::serving().await;
    let (reflection_v1, reflection_v1alpha) = health::reflection()
        .inspect_err(|err| tracing::error!(error = %err, "server reflection is off"))
        .ok()
        .unzip();
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(config.keepalive.interval))
        .http2_keepalive_timeout(Some(config.keepalive.timeout))
        .max_concurrent_streams(config.connections.max_streams)
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_RESET_STREAMS))
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        .initial_stream_window_size(STREAM_RECEIVE_WINDOW)
        .initial_connection_window_size(CONNECTION_RECEIVE_WINDOW)
        .http2_adaptive_window(Some(false))
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES);
    if let Some(tls) = &config.tls {
        let identity = Identity::from_pem(&tls.cert_pem, &tls.key_pem);
        let tls = ServerTlsConfig::new()
            .identity(identity)
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        builder = builder.tls_config(tls)?;
    }
    let health_follower =
        reachable.map(|reachable| tokio::spawn(health::follow(health_reporter.clone(), reachable)));
    let (incoming, crowd_incoming) = connection::accept_with_crowd(listener, config.connections);
    // The crowd's server stops when this one begins to (or is dropped).
    let (crowd_stop, crowd_stopping) = tokio::sync::oneshot::channel::<()>();
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let (fatal_tx, mut fatal_rx) = tokio::sync::oneshot::channel::<ServerError>();
    let signal = async move {
        tokio::select! {
            () = shutdown => {}
            err = fatal => {
                tracing::error!(error = %err, "stopping");
                let _ = fatal_tx.send(err);
            }
        }
        if let Some(follower) = health_follower {
            follower.abort();
        }
        health::shutting_down(&health_reporter).await;
        let present = room.shutdown();
        tracing::info!(present, "shutting down: told every participant");
        drop(crowd_stop);
        match tokio::time::timeout(CLUSTER_LEAVE_TIMEOUT, room.leave_cluster()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "could not tell the cluster"),
            Err(_) => tracing::warn!("the cluster did not take the news in time"),
        }
        let _ = stopped_tx.send(());
    };
    let own_runtime = tokio::runtime::Handle::current();
    let router = builder
        .layer(layer_fn(move |inner| OwnRuntime {
            inner,
            runtime: own_runtime.clone(),
        }))
        .layer(layer_fn(move |inner| OversizeExplained {
            inner,
            max: max_request_bytes,
        }))
        .add_service(
            ChittyChatServer::new(service)
                .max_decoding_message_size(max_request_bytes)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip),
        )
        .add_service(health_service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha);
    let crowd_done = match crowd_incoming {
        Some(crowd_incoming) => {
            let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
            let crowd_serve =
                router
                    .clone()
                    .serve_with_incoming_shutdown(crowd_incoming, async move {
                        let _ = crowd_stopping.await;
                        let _ = stopping_tx.send(());
                    });
            Some(serve_crowd(
                crowd_serve,
                stopping,
                config.connections.crowd_priority,
            )?)
        }
        None => None,
    };
    let serve = router.serve_with_incoming_shutdown(incoming, signal);
    tokio::pin!(serve);
    tokio::select! {
        result = &mut serve => return Ok(result?),
        Ok(()) = stopped_rx => {}
    }
    // Shutdown has begun; give the connections a bounded time to drain.
    match tokio::time::timeout(SHUTDOWN_GRACE, serve).await {
        Ok(result) => result?,
        Err(_) => {
            tracing::warn!(
                grace_secs = SHUTDOWN_GRACE.as_secs(),
                "clients did not hang up in time; stopping anyway"
            );
        }
    }
    // The crowd's server was told to stop with this one, and takes as long at most.
    if let Some(crowd_done) = crowd_done {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, crowd_done).await;
    }
    sweeper.abort();
    match fatal_rx.try_recv() {
        Ok(err) => Err(err),
        Err(_) => Ok(()),
    }
}

/// Runs `serve`, the server of the crowds' connections
/// ([`connection::accept_with_crowd`]), on a runtime of its own, whose threads
/// (`chittychat-crowd`) run at `priority`. Once
/// `stopping` is told (or dropped: `serve`'s shutdown signal has begun), it gives
/// `serve` at most [`SHUTDOWN_GRACE`] more while its connections close. The
/// receiver it returns is dropped when it has stopped.
///
/// The runtime lives on a thread of its own because a runtime may not be dropped
/// from inside another one.
fn serve_crowd(
    serve: impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
    stopping: tokio::sync::oneshot::Receiver<()>,
    priority: CrowdPriority,
) -> Result<tokio::sync::oneshot::Receiver<()>, ServerError> {
    let (done, done_rx) = tokio::sync::oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("chittychat-crowd")
        .on_thread_start(move || lower_priority(priority))
        .enable_all()
        .build()
        .map_err(ServerError::CrowdRuntime)?;
    std::thread::Builder::new()
        .name("chittychat-crowd".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::pin!(serve);
                let served = tokio::select! {
                    served = &mut serve => served,
                    _ = stopping => match tokio::time::timeout(SHUTDOWN_GRACE, serve).await {
                        Ok(served) => served,
                        Err(_) => Ok(()),
                    },
                };
                if let Err(err) = served {
                    tracing::warn!(error = %err, "serving the crowd's connections failed");
                }
            });
            // The runtime drops here, outside any other: its connections close.
            drop(runtime);
            drop(done);
        })
        .map_err(ServerError::CrowdRuntime)?;
    Ok(done_rx)
}

/// Lowers the calling thread's CPU priority to `priority`. Lowering one's own
/// priority needs no privilege (and cannot be undone without it); if it fails, the
/// thread keeps the server's priority and the crowd's connections still have their
/// own queues.
#[cfg(target_os = "linux")]
fn lower_priority(priority: CrowdPriority) {
    let failed = match priority {
        CrowdPriority::Same => false,
        // SAFETY: getpriority and setpriority take integers and touch no memory;
        // on Linux, PRIO_PROCESS with `who` 0 means the calling thread.
        // getpriority's -1 may be an error, which only makes the niceness asked
        // for lower.
        CrowdPriority::Lower(niceness) => unsafe {
            let current = libc::getpriority(libc::PRIO_PROCESS, 0);
            libc::setpriority(
                libc::PRIO_PROCESS,
                0,
                (current + i32::from(niceness)).min(i32::from(connection::LOWEST_NICENESS)),
            ) != 0
        },
        CrowdPriority::Idle => {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: `param` outlives the call, which only reads it; pid 0 means
            // the calling thread.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 }
        }
    };
    if failed {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            %priority,
            "cannot lower the CPU priority of a crowd's thread"
        );
    }
}

/// Elsewhere the threads keep the server's priority: there `setpriority` would
/// apply to the whole process.
#[cfg(not(target_os = "linux"))]
fn lower_priority(_priority: CrowdPriority) {}

/// How often the server looks for participants whose position the log trimmed.
/// A reader that stopped reading is not polled by its stream, so it must be found.
pub const CUT_OFF_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// Cuts off participants whose position was trimmed, whenever the oldest event the
/// log holds moves, at most once per [`CUT_OFF_CHECK_INTERVAL`].
async fn cut_off_trimmed(room: Arc<Room>) {
    let mut checked = room.log().first_held();
    let mut interval = tokio::time::interval(CUT_OFF_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let first_held = room.log().first_held();
        if first_held != checked {
            checked = first_held;
            room.cut_off_trimmed();
        }
    }
}

/// The tonic service over one [`Room`].
#[derive(Debug, Clone)]
pub struct ChatService {
    room: Arc<Room>,
    join_secret: Option<Arc<JoinSecret>>,
    join_pace: Option<Arc<JoinPace>>,
}

impl ChatService {
    /// A service over `room` that anyone may join, as many at once as come.
    pub fn new(room: Arc<Room>) -> Self {
        Self {
            room,
            join_secret: None,
            join_pace: None,
        }
    }

    /// Admits joins at `rate` (when there is one), each in its turn.
    pub fn with_join_rate(mut self, rate: Option<JoinRate>) -> Self {
        self.join_pace = rate.map(|rate| Arc::new(JoinPace::new(rate)));
        self
    }

    /// Waits for this Join's turn, or refuses it when the wait would be too long.
    async fn join_turn(&self) -> Result<(), ChatError> {
        let Some(pace) = &self.join_pace else {
            return Ok(());
        };
        let wait = pace.reserve(Instant::now())?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// Requires `secret` (when there is one) of everyone who joins.
    pub fn with_join_secret(mut self, secret: Option<JoinSecret>) -> Self {
        self.join_secret = secret.map(Arc::new);
        self
    }

    /// Checks the join secret a Join request presents, if the server needs one.
    fn check_join_secret(&self, metadata: &MetadataMap) -> Result<(), ChatError> {
        let Some(secret) = &self.join_secret else {
            return Ok(());
        };
        match metadata.get(JOIN_SECRET_METADATA) {
            None => Err(ChatError::JoinSecretMissing),
            Some(presented) if secret.matches(presented.as_bytes()) => Ok(()),
            Some(_) => Err(ChatError::JoinSecretWrong),
        }
    }
}

#[tonic::async_trait]
impl ChittyChat for ChatService {
    type JoinStream = ParticipantFeed<EventStream>;

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        let secret_checked = self.check_join_secret(request.metadata());
        let connection = ConnectionHandle::of(request.extensions());
        let request = request.into_inner();
        let refused = |err: &ChatError| {
            log_refused(rpc::JOIN, Some(&name_for_display(&request.name)), err);
        };
        // An epoch that does not parse is not this log's: resume says so.
        let resume = request.resume.as_ref().map(|point| ResumePoint {
            epoch: point.epoch.parse().unwrap_or(Epoch::from_bytes([0; 16])),
            after_seq: point.after_seq,
        });
        let options = JoinOptions {
            history: request.history,
            resume,
            replaces: (!request.replaces_session.is_empty())
                .then(|| SessionToken::new(request.replaces_session)),
        };
        secret_checked.inspect_err(refused)?;
        // From here the server is the slow one, however long the join takes: the
        // connection is not closed for want of a participant meanwhile.
        let _joining = connection.as_ref().map(ConnectionHandle::joining);
        // The turn comes before anything the join costs (and so does the secret: a
        // peer without it takes no one's turn).
        self.join_turn().await.inspect_err(refused)?;
        let joined = self
            .room
            .join(&request.name, request.lamport, options)
            .await
            .inspect_err(refused)?;
        // Answered once the join notice is stored; dropping the feed on failure
        // announces the leave.
        self.room
            .newcomer_durable(joined.stamp.seq)
            .await
            .inspect_err(refused)?;
        let mut feed = joined.feed;
        if connection.as_ref().map(ConnectionHandle::arrival) == Some(Arrival::InACrowd) {
            // This call runs on the server's own runtime ([`OwnRuntime`]); the feed
            // is polled on the crowd's.
            feed.lock_elsewhere(tokio::runtime::Handle::current());
        }
        let cut_off = feed.cut_off_signal();
        let feed = ParticipantFeed::new(EventStream(feed), connection).close_when(cut_off);
        let mut response = Response::new(feed);
        let metadata = response.metadata_mut();
        // The token is hex and a dot, always a valid metadata value.
        let token = MetadataValue::try_from(joined.token.expose())
            .map_err(|_| Status::internal("could not encode the session token"))?;
        metadata.insert(SESSION_TOKEN_METADATA, token);
        let epoch = MetadataValue::try_from(joined.epoch.to_string())
            .map_err(|_| Status::internal("could not encode the log's epoch"))?;
        metadata.insert(LOG_EPOCH_METADATA, epoch);
        metadata.insert(HISTORY_METADATA, joined.history.into());
        match joined.resume {
            Resume::NotAsked => {}
            Resume::Resumed => {
                metadata.insert(RESUMED_METADATA, MetadataValue::from_static("true"));
                crate::metrics::resumed("resumed");
            }
            Resume::Gap { missed } => {
                metadata.insert(RESUMED_METADATA, MetadataValue::from_static("false"));
                metadata.insert(MISSED_METADATA, missed.into());
                crate::metrics::resumed("gap");
            }
            Resume::OtherLog => {
                metadata.insert(RESUMED_METADATA, MetadataValue::from_static("false"));
                crate::metrics::resumed("other_log");
            }
        }
        if joined.resume != Resume::NotAsked {
            tracing::info!(
                { field::RPC } = rpc::JOIN,
                participant = %name_for_display(&request.name),
                resume = ?joined.resume,
                replayed_as_history = joined.history,
                "resumed feed"
            );
        }
        Ok(response)
    }

    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishReply>, Status> {
        let request = request.into_inner();
        let started = Instant::now();
        let stamp = self
            .room
            .publish(
                &request.session_token,
                &request.text,
                request.lamport,
                &request.publish_id,
            )
            .await
            .inspect_err(|err| {
                let name = self.room.name_of(&request.session_token);
                log_refused(rpc::PUBLISH, name.as_deref(), err);
            })?;
        crate::metrics::publish_seconds().record(started.elapsed().as_secs_f64());
        Ok(Response::new(pb::PublishReply {
            lamport: stamp.lamport,
            seq: stamp.seq,
        }))
    }

    type PublishStreamStream = PublishOutcomes;

    async fn publish_stream(
        &self,
        request: Request<tonic::Streaming<pb::PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        tracing::info!(
            { field::RPC } = rpc::PUBLISH_STREAM,
            peer = ?request.remote_addr(),
            "opened"
        );
        let room = Arc::clone(&self.room);
        let (stopping, stopped) = (Arc::clone(&self.room), Arc::clone(&self.room));
        let outcomes = request
            .into_inner()
            .map(move |request| {
                // Begun here, as each request is read, so that one stream's messages
                // are stamped in the order they came; only the wait is concurrent.
                let request = request?;
                let started = Instant::now();
                let begun = room.begin_publish(
                    &request.session_token,
                    &request.text,
                    request.lamport,
                    &request.publish_id,
                );
                let room = Arc::clone(&room);
                Ok(async move {
                    let outcome = match begun {
                        Ok(pending) => room.finish_publish(pending).await,
                        Err(err) => Err(err),
                    };
                    let outcome = match outcome {
                        Ok(stamp) => {
                            crate::metrics::publish_seconds()
                                .record(started.elapsed().as_secs_f64());
                            pb::publish_outcome::Outcome::Published(pb::PublishReply {
                                lamport: stamp.lamport,
                                seq: stamp.seq,
                            })
                        }
                        Err(err) => {
                            let name = room.name_of(&request.session_token);
                            log_refused(rpc::PUBLISH_STREAM, name.as_deref(), &err);
                            pb::publish_outcome::Outcome::Refused(status::refusal(err))
                        }
                    };
                    Ok(pb::PublishOutcome {
                        publish_id: request.publish_id,
                        outcome: Some(outcome),
                    })
                })
            })
            .try_buffered(MAX_PUBLISHES_IN_FLIGHT)
            // A shutdown ends the stream at once, with the status that says so; the
            // requests still in flight are left to the client to send again.
            .take_until(async move { stopping.stopped().await })
            .chain(
                futures::stream::once(async move {
                    stopped
                        .is_stopped()
                        .then(|| Err(Status::from(ChatError::ShuttingDown)))
                })
                .filter_map(std::future::ready),
            );
        Ok(Response::new(Box::pin(outcomes)))
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveReply>, Status> {
        let request = request.into_inner();
        let stamp = self
            .room
            .leave(&request.session_token, request.lamport)
            .await
            .inspect_err(|err| log_refused(rpc::LEAVE, None, err))?;
        Ok(Response::new(pb::LeaveReply {
            lamport: stamp.lamport,
            seq: stamp.seq,
        }))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryReply>, Status> {
        let request = request.into_inner();
        let name = self.room.name_of(&request.session_token);
        let (entries, first_held) = self
            .room
            .history(&request.session_token, request.before, request.limit)
            .await
            .inspect_err(|err| log_refused(rpc::HISTORY, name.as_deref(), err))?;
        tracing::info!(
            { field::RPC } = rpc::HISTORY,
            participant = name.as_deref().unwrap_or("<unknown>"),
            before = request.before,
            limit = request.limit,
            returned = entries.len(),
            first_held,
            "answered"
        );
        let events = entries.iter().map(|entry| pb_event(entry, true)).collect();
        Ok(Response::new(pb::HistoryReply { events, first_held }))
    }

    async fn who(
        &self,
        request: Request<pb::WhoRequest>,
    ) -> Result<Response<pb::WhoReply>, Status> {
        let request = request.into_inner();
        let name = self.room.name_of(&request.session_token);
        let names = self
            .room
            .who(&request.session_token)
            .inspect_err(|err| log_refused(rpc::WHO, name.as_deref(), err))?;
        tracing::info!(
            { field::RPC } = rpc::WHO,
            participant = name.as_deref().unwrap_or("<unknown>"),
            present = names.len(),
            "answered"
        );
        Ok(Response::new(pb::WhoReply { names }))
    }
}

/// A participant's feed as the gRPC stream of `Event` messages.
///
/// Every event already queued is ready in one poll, so tonic packs them into as few
/// HTTP/2 frames as it can. Each event is encoded once, by the first stream that
/// sends it; the others send the same bytes.
#[derive(Debug)]
pub struct EventStream(Feed);

impl Stream for EventStream {
    type Item = Result<EncodedEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0).poll_next(cx).map(|item| {
            item.map(|result| {
                result
                    .map(|delivery| {
                        // The first recipient to get here encodes; the rest share it.
                        delivery.entry.wire(encode_event);
                        EncodedEvent::from(delivery)
                    })
                    .map_err(Status::from)
            })
        })
    }
}

/// Wraps the services so that a request over the size limit is answered with a
/// clear `RESOURCE_EXHAUSTED` ([`ChatError::RequestTooLarge`]) and logged as
/// refused, rather than with tonic's own `OUT_OF_RANGE`.
///
/// Decoding a request over `max_decoding_message_size` is the only way a call to
/// the chat service ends in `OUT_OF_RANGE` (none of its refusals has that code), so
/// the code alone says it; tonic's message is not read.
#[derive(Debug, Clone)]
struct OversizeExplained<S> {
    inner: S,
    /// The chat service's request size limit.
    max: usize,
}

impl<S, B> Service<http::Request<B>> for OversizeExplained<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let uri = request.uri().clone();
        let max = self.max;
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let out_of_range = response
                .extensions()
                .get::<Status>()
                .is_some_and(|status| status.code() == Code::OutOfRange);
            if !out_of_range {
                return Ok(response);
            }
            let Some(rpc) = chat_rpc(uri.path()) else {
                return Ok(response);
            };
            let err = ChatError::RequestTooLarge { max };
            log_refused(rpc, None, &err);
            Ok(Status::from(err).into_http())
        })
    }
}

/// Runs the calls of a crowd's connections on the server's own runtime.
///
/// A crowd's connections are served on threads of lower priority
/// ([`connection::accept_with_crowd`]), but their calls take the room's lock, which
/// every Publish takes too. A crowd's thread that lost its CPU while holding it
/// kept everyone waiting until it ran again (honest requests waited up to 19 ms for
/// the lock while 1,000 participants of a crowd joined; the holders had used 15–50
/// µs of CPU in 1–5 ms). So each such call runs as a task on `runtime`, at the
/// server's priority, and only the connection's I/O stays on the crowd's threads.
/// Dropping the call (its connection went) aborts the task.
#[derive(Clone)]
struct OwnRuntime<S> {
    inner: S,
    runtime: tokio::runtime::Handle,
}

impl<S, B> Service<http::Request<B>> for OwnRuntime<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    /// The inner call's own future where it came on a connection of its own (every
    /// honest call, which so is not boxed again), a task's where it came in a crowd.
    type Future = Either<
        S::Future,
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let arrival = request
            .extensions()
            .get::<ConnectionHandle>()
            .map(ConnectionHandle::arrival);
        let response = self.inner.call(request);
        if arrival != Some(Arrival::InACrowd) {
            return Either::Left(response);
        }
        let task = AbortOnDrop(self.runtime.spawn(response));
        Either::Right(Box::pin(async move {
            let mut task = task;
            match (&mut task.0).await {
                Ok(answered) => answered,
                Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                // The server's runtime is going away: so is the server.
                Err(_) => Ok(Status::from(ChatError::ShuttingDown).into_http()),
            }
        }))
    }
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Logs a refused call at warn level with whatever is known of the caller: the one
/// "refused" line, whether the room or the transport refused.
fn log_refused(rpc: &str, participant: Option<&str>, err: &ChatError) {
    tracing::warn!(
        rpc,
        participant = participant.unwrap_or("<unknown>"),
        code = ?status::code(err),
        error = %err,
        "refused"
    );
}

/// The method a request path names, when it is a call to the chat service
/// (`/chittychat.v1.ChittyChat/Publish` gives `Publish`).
fn chat_rpc(path: &str) -> Option<&str> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (service == crate::health::CHAT_SERVICE).then_some(method)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_chat_service_s_calls_are_named() {
        let publish = format!("/{}/Publish", crate::health::CHAT_SERVICE);
        assert_eq!(chat_rpc(&publish), Some("Publish"));
        assert_eq!(chat_rpc("/grpc.health.v1.Health/Check"), None);
        assert_eq!(chat_rpc("/"), None);
    }

    /// Answers with the name of the thread that ran its future (where a tonic
    /// service does its work), in the response's extensions.
    struct ThreadName;

    impl Service<http::Request<()>> for ThreadName {
        type Response = http::Response<Body>;
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            Box::pin(async {
                let mut response = http::Response::new(Body::empty());
                let name = std::thread::current().name().map(str::to_owned);
                response.extensions_mut().insert(name);
                Ok(response)
            })
        }
    }

    #[test]
    fn a_crowd_s_calls_run_on_the_server_s_own_runtime_and_others_where_they_came() {
        let own = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("own-runtime")
            .build()
            .unwrap();
        // Stands in for the crowd's runtime, and for the server's own when a call
        // came on a connection of its own.
        let here = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let this_thread = std::thread::current().name().map(str::to_owned);
        let mut service = OwnRuntime {
            inner: ThreadName,
            runtime: own.handle().clone(),
        };
        for (arrival, ran_on) in [
            (Some(Arrival::InACrowd), Some("own-runtime".to_owned())),
            (Some(Arrival::Alone), this_thread.clone()),
            (None, this_thread),
        ] {
            let mut request = http::Request::new(());
            if let Some(arrival) = arrival {
                let connection = ConnectionHandle::detached(arrival);
                request.extensions_mut().insert(connection);
            }
            let response = here.block_on(service.call(request)).unwrap();
            let name = response.extensions().get::<Option<String>>().cloned();
            assert_eq!(name, Some(ran_on), "{arrival:?}");
        }
    }

    /// The calling thread's scheduling policy and niceness.
    #[cfg(target_os = "linux")]
    fn own_priority() -> (i32, i32) {
        // SAFETY: both take integers and touch no memory; 0 means the calling
        // thread.
        unsafe {
            (
                libc::sched_getscheduler(0),
                libc::getpriority(libc::PRIO_PROCESS, 0),
            )
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_crowd_s_thread_lowers_its_own_priority_and_no_other() {
        let on_a_thread = |priority| {
            std::thread::spawn(move || {
                let before = own_priority();
                lower_priority(priority);
                (before, own_priority())
            })
            .join()
            .unwrap()
        };
        let ((policy, nice), after) = on_a_thread(CrowdPriority::Lower(3));
        assert_eq!(after, (policy, (nice + 3).min(19)));
        let ((_, nice), after) = on_a_thread(CrowdPriority::Idle);
        assert_eq!(after, (libc::SCHED_IDLE, nice));
        let (before, after) = on_a_thread(CrowdPriority::Same);
        assert_eq!(after, before);
        // This thread, like the server's own, kept its priority.
        assert_eq!(own_priority(), before);
    }
}
