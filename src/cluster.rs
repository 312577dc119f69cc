//! A node of a Chitty-Chat cluster: several servers serve one room, and the room's
//! records go through one NATS JetStream stream, whose order is the one order
//! every node delivers.
//!
//! Each node proposes a [`Record`] for each request ([`NatsLog`]) and applies every
//! record of the stream, from the first, in the stream's order ([`Room::apply`]).
//! Applying the same records in the same order, every node makes the same events
//! with the same sequence numbers and agrees on who is present, without the nodes
//! talking to each other. The stream's first record is the genesis record, which
//! carries the cluster's epoch; a node's own log is in memory, rebuilt from the
//! stream when the node starts.

use crate::error::ChatError;
use crate::log::{Epoch, Log, LogError, MemoryStore, Retention};
use crate::room::{Incarnation, Propose, Record, Room, RoomConfig};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use futures::StreamExt;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// The stream a cluster shares when none is named.
pub const DEFAULT_STREAM: &str = "chittychat";

/// How long a node waits to reach NATS when it starts.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long JetStream de-duplicates a repeated record (its `Nats-Msg-Id`).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How often a node tells the others it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// How long a node may go unheard, while this node hears NATS, before this node
/// has the cluster announce that its participants left. With
/// [`HEARTBEAT_INTERVAL`] and the time a record takes, a dead node's participants
/// are announced as left within 15 s.
pub const NODE_SILENCE_LIMIT: Duration = Duration::from_secs(10);

/// How often the NATS client pings its server: two unanswered pings and it
/// counts the connection lost.
pub const NATS_PING_INTERVAL: Duration = Duration::from_secs(2);

/// The longest wait between two attempts to reach NATS again.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// How long a starting node keeps trying to write or read the stream's first
/// record: a stream just made on several NATS servers serves nothing until they
/// have elected its leader.
pub const GENESIS_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a starting node waits for a running node of its name to answer.
/// NATS says at once when nobody listens, so this is spent only on a node that
/// listens but is too stalled to answer; the name is then taken over.
pub const NAME_CLAIM_TIMEOUT: Duration = Duration::from_secs(1);

/// How a node joins its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The NATS servers to connect to (`nats://host:port`); any one will do.
    pub servers: Vec<String>,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// The JetStream stream that holds the cluster's log.
    pub stream: String,
    /// How many NATS servers keep a copy of the stream, when this node creates it.
    pub replicas: usize,
}

impl ClusterConfig {
    /// A node named `node` of the cluster on `servers`, with the default stream.
    pub fn new(servers: Vec<String>, node: impl Into<String>) -> Self {
        Self {
            servers,
            node: node.into(),
            stream: DEFAULT_STREAM.to_owned(),
            replicas: 1,
        }
    }

    /// The subject the stream's records are published on.
    pub fn subject(&self) -> String {
        format!("chittychat.{}.records", self.stream)
    }

    /// The subject the nodes' heartbeats go on (plain NATS, not stored).
    pub fn heartbeat_subject(&self) -> String {
        format!("chittychat.{}.alive", self.stream)
    }

    /// The subject on which a running node answers to its name, so that a second
    /// node started under the same name is refused (plain NATS, not stored).
    pub fn name_subject(&self) -> String {
        format!("chittychat.{}.node.{}", self.stream, self.node)
    }
}

/// Why a node cannot join its cluster, or had to stop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// No NATS server could be reached.
    #[error("cannot reach NATS at {servers}: {reason}")]
    Connect {
        /// The servers tried.
        servers: String,
        /// Why.
        reason: String,
    },
    /// The stream cannot be made or read.
    #[error("cannot use the JetStream stream \"{stream}\": {reason}")]
    Stream {
        /// The stream's name.
        stream: String,
        /// Why.
        reason: String,
    },
    /// The stream no longer starts with its genesis record, so a node cannot
    /// rebuild the room from it.
    #[error(
        "the JetStream stream \"{stream}\" no longer holds its first record (it starts at \
         {first}); a node cannot rebuild the room from it"
    )]
    Trimmed {
        /// The stream's name.
        stream: String,
        /// The oldest record it holds.
        first: u64,
    },
    /// The stream's first record is not a Chitty-Chat genesis record.
    #[error("the JetStream stream \"{stream}\" is not a Chitty-Chat log: {reason}")]
    NotOurs {
        /// The stream's name.
        stream: String,
        /// What is wrong with its first record.
        reason: String,
    },
    /// A running node of the cluster already has this node's name. Started, this
    /// one would retire that node's participants as its own earlier run's.
    #[error(
        "another running node of this cluster is named \"{node}\" (run {run}); give this one \
         another --node, or stop that one first"
    )]
    NameTaken {
        /// The name.
        node: String,
        /// The running node's run (its incarnation).
        run: String,
    },
    /// The stream skipped records this node had not applied.
    #[error("the cluster's log skipped from record {expected} to {found}; this node stops")]
    Gap {
        /// The record the node expected next.
        expected: u64,
        /// The record that came.
        found: u64,
    },
    /// The node's own copy of the log failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// A running node: its room, the task applying the cluster's log to it, and the
/// task that watches NATS and the other nodes.
#[derive(Debug)]
pub struct Node {
    room: Arc<Room>,
    applier: JoinHandle<ClusterError>,
    watcher: Option<JoinHandle<()>>,
    reachable: watch::Receiver<bool>,
}

impl Node {
    /// The node's room.
    pub fn room(&self) -> &Arc<Room> {
        &self.room
    }

    /// Whether the node reaches NATS now; changes as it loses and regains it.
    pub fn reachable(&self) -> watch::Receiver<bool> {
        self.reachable.clone()
    }

    /// Completes when the node can no longer follow the cluster's log, with why.
    pub async fn failed(&mut self) -> ClusterError {
        match (&mut self.applier).await {
            Ok(err) => err,
            Err(err) => ClusterError::Stream {
                stream: String::new(),
                reason: format!("the task applying the log stopped: {err}"),
            },
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.applier.abort();
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
    }
}

/// Joins the cluster `config` names: connects to NATS, opens (or makes) the
/// stream, applies every record it holds, has the participants of this node's
/// earlier runs announced as left, and returns the node, ready to serve.
pub async fn start(
    config: &ClusterConfig,
    room: RoomConfig,
    retention: Retention,
) -> Result<Node, ClusterError> {
    let servers = config.servers.join(",");
    let connect_error = |reason: String| ClusterError::Connect {
        servers: servers.clone(),
        reason,
    };
    let addresses = config
        .servers
        .iter()
        .map(|server| {
            server
                .parse::<async_nats::ServerAddr>()
                .map_err(|err| connect_error(format!("\"{server}\" is not a NATS address: {err}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (reachable_tx, reachable) = watch::channel(true);
    let client = async_nats::ConnectOptions::new()
        .name(format!("chittychat-server {}", config.node))
        .connection_timeout(CONNECT_TIMEOUT)
        .ping_interval(NATS_PING_INTERVAL)
        .reconnect_delay_callback(|attempts| {
            let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
            (Duration::from_millis(100) * attempts).min(MAX_RECONNECT_DELAY)
        })
        .event_callback(move |event| {
            let reachable = reachable_tx.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        reachable.send_replace(true);
                    }
                    async_nats::Event::Disconnected => {
                        reachable.send_replace(false);
                    }
                    _ => {}
                }
            }
        })
        .connect(addresses)
        .await
        .map_err(|err| connect_error(err.to_string()))?;
    let jetstream = jetstream::new(client.clone());
    let stream_error = |reason: String| ClusterError::Stream {
        stream: config.stream.clone(),
        reason,
    };
    let subject = config.subject();
    let config_of_stream = stream::Config {
        name: config.stream.clone(),
        subjects: vec![subject.clone()],
        storage: stream::StorageType::File,
        num_replicas: config.replicas.max(1),
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    };
    // Nodes starting together may race to make the stream: a second look finds
    // the one another node made.
    let mut attempts = 0;
    let mut stream = loop {
        match jetstream
            .get_or_create_stream(config_of_stream.clone())
            .await
        {
            Ok(stream) => break stream,
            Err(err) if attempts < 3 => {
                attempts += 1;
                tracing::debug!(error = %err, "making the stream; looking again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(stream_error(err.to_string())),
        }
    };
    let epoch = genesis(&jetstream, &mut stream, config).await?;
    let caught_up_to = stream
        .info()
        .await
        .map_err(|err| stream_error(err.to_string()))?
        .state
        .last_sequence;
    let (log, _) = Log::with_store(Arc::new(MemoryStore::with_epoch(epoch)), retention)?;
    let propose = Arc::new(NatsLog::start(jetstream, subject));
    let room = Room::open_in_cluster(room, log, propose, &config.node);
    let (caught_up, applied) = oneshot::channel();
    let applier = tokio::spawn(apply_records(
        stream,
        config.stream.clone(),
        Arc::clone(&room),
        (caught_up_to, caught_up),
        reachable.clone(),
    ));
    room.set_replaying(true);
    let mut node = Node {
        room,
        applier,
        watcher: None,
        reachable: reachable.clone(),
    };
    tokio::select! {
        _ = applied => {}
        err = node.failed() => return Err(err),
    }
    node.room.set_replaying(false);
    // Asked only now, just before this node would retire its name's earlier runs
    // and start answering to the name itself: two nodes started under one name
    // within this moment are not told apart.
    claim_name(&client, config).await?;
    let name_requests = client
        .subscribe(config.name_subject())
        .await
        .map_err(|err| connect_error(format!("cannot answer to its name: {err}")))?;
    let retired = node
        .room
        .retire_earlier_runs()
        .await
        .map_err(|err| stream_error(err.to_string()))?;
    node.watcher = Some(tokio::spawn(watch_cluster(
        client,
        config.heartbeat_subject(),
        name_requests,
        Arc::clone(&node.room),
        reachable,
    )));
    tracing::info!(
        { crate::log_schema::field::NODE } = %config.node,
        incarnation = %node.room.incarnation(),
        stream = %config.stream,
        %epoch,
        applied = caught_up_to,
        earlier_runs_retired = retired,
        "{}",
        crate::log_schema::message::JOINED_CLUSTER
    );
    Ok(node)
}

/// Fails if a running node answers to `config`'s node name. Nobody listening
/// (NATS says so at once) or nobody answering in [`NAME_CLAIM_TIMEOUT`] leaves
/// the name free: a node that crashed, or hangs, does not keep its name from
/// the node restarted in its place.
async fn claim_name(
    client: &async_nats::Client,
    config: &ClusterConfig,
) -> Result<(), ClusterError> {
    use async_nats::RequestErrorKind;
    let request = client.request(config.name_subject(), Default::default());
    match tokio::time::timeout(NAME_CLAIM_TIMEOUT, request).await {
        Ok(Ok(reply)) => Err(ClusterError::NameTaken {
            node: config.node.clone(),
            run: String::from_utf8_lossy(&reply.payload).into_owned(),
        }),
        Ok(Err(err)) if err.kind() == RequestErrorKind::NoResponders => Ok(()),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "cannot ask whether a running node has this name; taking it");
            Ok(())
        }
        Err(_) => {
            tracing::warn!(
                "a node named so listens but does not answer; taking its name (it retires)"
            );
            Ok(())
        }
    }
}

/// The cluster's epoch: read from the stream's genesis record, which the first
/// node to find the stream empty writes (only one can: it is written on the
/// condition that the stream is empty).
async fn genesis(
    jetstream: &jetstream::Context,
    stream: &mut stream::Stream,
    config: &ClusterConfig,
) -> Result<Epoch, ClusterError> {
    let record = Record::Genesis {
        epoch: Epoch::random().to_string(),
    };
    let stream_error = |reason: String| ClusterError::Stream {
        stream: config.stream.clone(),
        reason,
    };
    // A stream just made on several NATS servers takes a moment to elect its
    // leader, and until then refuses writes and reads alike: try again, for a while.
    let deadline = Instant::now() + GENESIS_TIMEOUT;
    let first = loop {
        let first_only = PublishMessage::build()
            .payload(record.to_bytes().into())
            .expected_last_sequence(0);
        // Refused when the stream already holds records: another node wrote it first.
        if let Ok(ack) = jetstream.send_publish(config.subject(), first_only).await {
            let _ = ack.await;
        }
        let err = match stream.get_raw_message(1).await {
            Ok(first) => break first,
            Err(err) => err,
        };
        tracing::debug!(error = %err, "reading the genesis record");
        match stream.info().await {
            // It holds records, but no longer the first: trimmed.
            Ok(info) if info.state.first_sequence > 1 => {
                return Err(ClusterError::Trimmed {
                    stream: config.stream.clone(),
                    first: info.state.first_sequence,
                });
            }
            _ if Instant::now() >= deadline => {
                return Err(stream_error(format!(
                    "cannot read or write its first record within {} s: {err}",
                    GENESIS_TIMEOUT.as_secs()
                )));
            }
            _ => tokio::time::sleep(REREAD_DELAY).await,
        }
    };
    let not_ours = |reason: String| ClusterError::NotOurs {
        stream: config.stream.clone(),
        reason,
    };
    match Record::from_bytes(&first.payload).map_err(not_ours)? {
        Record::Genesis { epoch } => epoch
            .parse()
            .map_err(|_| not_ours(format!("its epoch \"{epoch}\" is not 32 hex digits"))),
        other => Err(not_ours(format!(
            "its first record is not a genesis record but {other:?}"
        ))),
    }
}

/// How long the applier waits before it reads the stream anew after an error.
pub const REREAD_DELAY: Duration = Duration::from_millis(250);

/// How long the applier waits for the next record before it asks the stream
/// whether there is one. An ordered consumer placed on a NATS server that died can
/// fall silent without an error while the stream goes on on its other servers
/// (seen in the container test: a node stopped applying for good); a stream that
/// holds the record the applier waits for means it reads anew. It is also how
/// long the applier waits for NATS to make it a new consumer before it asks again.
pub const APPLY_STALL_CHECK: Duration = Duration::from_secs(3);

/// Applies the stream's records to `room`, from the one after the genesis record
/// on, in order, for as long as the node runs; says when it has applied up to
/// `caught_up.0`. Returns why it stopped.
///
/// It reads through an ordered consumer, and makes a new one, from the next
/// record it needs, whenever reading fails or the node reaches NATS again (a
/// restarted NATS server has forgotten the old one), or falls silent while the
/// stream holds more ([`APPLY_STALL_CHECK`]). Any record other than the next one
/// stops the node: the stream skipped what it no longer holds.
async fn apply_records(
    stream: stream::Stream,
    name: String,
    room: Arc<Room>,
    caught_up: (u64, oneshot::Sender<()>),
    mut reachable: watch::Receiver<bool>,
) -> ClusterError {
    let (target, caught_up) = caught_up;
    let mut caught_up = Some(caught_up);
    let mut next = 2;
    if target < next
        && let Some(tell) = caught_up.take()
    {
        let _ = tell.send(());
    }
    loop {
        let reading = async {
            let consumer = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: next,
                    },
                    ..Default::default()
                })
                .await
                .map_err(|err| err.to_string())?;
            consumer.messages().await.map_err(|err| err.to_string())
        };
        // Asking for a consumer while the NATS cluster elects the stream's leader
        // can go unanswered for as long as the client's request timeout (10 s),
        // and this node's own requests wait for their records meanwhile: ask
        // again sooner.
        let reading = tokio::time::timeout(APPLY_STALL_CHECK, reading)
            .await
            .unwrap_or_else(|_| Err("no consumer within the stall check".to_owned()));
        let mut messages = match reading {
            Ok(messages) => messages,
            Err(err) => {
                tracing::warn!(error = %err, stream = %name, "cannot read the cluster's log; retrying");
                tokio::time::sleep(REREAD_DELAY).await;
                continue;
            }
        };
        reachable.borrow_and_update();
        loop {
            let message = tokio::select! {
                message = tokio::time::timeout(APPLY_STALL_CHECK, messages.next()) => {
                    let Ok(message) = message else {
                        match stream.get_info().await {
                            Ok(info) if info.state.last_sequence >= next => {
                                tracing::warn!(next, last = info.state.last_sequence,
                                    "the cluster's log goes on without this node's reader; reading anew");
                                break;
                            }
                            Ok(_) => {}
                            Err(err) => tracing::debug!(error = %err, "asking how far the cluster's log goes"),
                        }
                        continue;
                    };
                    message
                }
                changed = reachable.changed() => {
                    if changed.is_err() {
                        return ClusterError::Stream {
                            stream: name,
                            reason: "the connection to NATS is closed".to_owned(),
                        };
                    }
                    if *reachable.borrow_and_update() {
                        // NATS is back: read from a consumer it knows.
                        break;
                    }
                    continue;
                }
            };
            let message = match message {
                Some(Ok(message)) => message,
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "reading the cluster's log; reading anew");
                    tokio::time::sleep(REREAD_DELAY).await;
                    break;
                }
                None => break,
            };
            let seq = match message.info() {
                Ok(info) => info.stream_sequence,
                Err(err) => {
                    tracing::warn!(error = %err, "a record without its place in the log; reading anew");
                    break;
                }
            };
            if seq != next {
                return ClusterError::Gap {
                    expected: next,
                    found: seq,
                };
            }
            match Record::from_bytes(&message.payload) {
                Ok(record) => room.apply(record),
                // Every node skips it alike, so they still agree.
                Err(err) => {
                    tracing::warn!(seq, error = %err, "skipped a record that is not Chitty-Chat's")
                }
            }
            next += 1;
            if seq >= target
                && let Some(tell) = caught_up.take()
            {
                let _ = tell.send(());
            }
        }
    }
}

/// Follows the node's connection to NATS and the other nodes' heartbeats, for as
/// long as the node runs. Says this node is alive every [`HEARTBEAT_INTERVAL`];
/// tells the room when NATS is lost and back; and has the cluster announce the
/// participants of a node unheard for [`NODE_SILENCE_LIMIT`] as left. Silence is
/// counted only while this node hears NATS, from the moment it last reached it,
/// so a node cut off itself accuses nobody.
async fn watch_cluster(
    client: async_nats::Client,
    subject: String,
    mut name_requests: async_nats::Subscriber,
    room: Arc<Room>,
    mut reachable: watch::Receiver<bool>,
) {
    let me = room.incarnation();
    // Reaching NATS at the start is no news.
    reachable.borrow_and_update();
    let mut subscription = match client.subscribe(subject.clone()).await {
        Ok(subscription) => Some(subscription),
        Err(err) => {
            tracing::error!(error = %err, "cannot hear the other nodes; no node will be found dead");
            None
        }
    };
    crate::metrics::nats_connected(true);
    let mut heard: HashMap<Incarnation, Instant> = HashMap::new();
    let mut accused: HashMap<Incarnation, Instant> = HashMap::new();
    let mut reachable_since = Some(Instant::now());
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = reachable.changed() => {
                if changed.is_err() {
                    return;
                }
                if *reachable.borrow_and_update() {
                    crate::metrics::nats_connected(true);
                    reachable_since = Some(Instant::now());
                    room.cluster_back();
                    tracing::info!("NATS is back: taking requests again");
                } else {
                    crate::metrics::nats_connected(false);
                    reachable_since = None;
                    let ended = room.cluster_lost("it lost its connection to NATS");
                    tracing::warn!(feeds_ended = ended, "lost NATS: refusing requests until it is back");
                }
            }
            Some(message) = async {
                match &mut subscription {
                    Some(subscription) => subscription.next().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(incarnation) = std::str::from_utf8(&message.payload)
                    .ok()
                    .and_then(|text| u64::from_str_radix(text, 16).ok())
                {
                    heard.insert(Incarnation(incarnation), Instant::now());
                }
            }
            Some(request) = name_requests.next() => {
                // A node starting under this node's name: tell it this one runs.
                if let Some(reply) = request.reply {
                    let _ = client.publish(reply, me.to_string().into()).await;
                }
            }
            _ = tick.tick() => {
                let _ = client.publish(subject.clone(), me.to_string().into()).await;
                let forgotten = room.forget_abandoned();
                if forgotten > 0 {
                    tracing::debug!(forgotten, "forgot requests nobody waits for");
                }
                // Runs long gone are forgotten.
                heard.retain(|_, at| at.elapsed() < 10 * NODE_SILENCE_LIMIT);
                accused.retain(|_, at| at.elapsed() < 10 * NODE_SILENCE_LIMIT);
                let Some(since) = reachable_since else {
                    continue;
                };
                for (incarnation, node) in room.other_runs() {
                    let last = heard.get(&incarnation).map_or(since, |at| (*at).max(since));
                    let silent = last.elapsed() >= NODE_SILENCE_LIMIT;
                    let accused_lately = accused
                        .get(&incarnation)
                        .is_some_and(|at| at.elapsed() < NODE_SILENCE_LIMIT);
                    if silent && !accused_lately {
                        accused.insert(incarnation, Instant::now());
                        tracing::warn!(
                            %node,
                            %incarnation,
                            silent_secs = last.elapsed().as_secs(),
                            "a node went silent: announcing its participants as left"
                        );
                        room.retire(incarnation, &node);
                    }
                }
            }
        }
    }
}

/// Proposes records by publishing them to the stream, in the order they are
/// proposed: [`NatsLog::propose`] queues a record at once, and one task
/// (`send_proposals`) hands the queued records to the NATS client one after
/// another, so the stream stores them in that order. Only the stored
/// acknowledgements are awaited concurrently, each by its proposer.
///
/// The queue is not bounded by itself: each record in it is a request the room
/// admitted (or a leave it noticed) while NATS was reachable, and the room admits
/// none while it is not; the NATS client waits when `max_ack_inflight` records are
/// unacknowledged, which holds the rest here.
#[derive(Debug)]
pub struct NatsLog {
    queue: mpsc::UnboundedSender<Proposal>,
}

/// A record queued for the stream, and where the proposer waits for it to be sent.
struct Proposal {
    record: Record,
    /// By when it must have been handed to the NATS client.
    deadline: tokio::time::Instant,
    sent: oneshot::Sender<Result<PublishAckFuture, ChatError>>,
}

/// How long a proposed record may wait to be handed to the NATS client (the
/// client's own default for one publish).
pub const PROPOSE_SEND_TIMEOUT: Duration = Duration::from_secs(5);

impl NatsLog {
    /// Proposes to `subject` through `jetstream`; starts the task that sends.
    pub fn start(jetstream: jetstream::Context, subject: String) -> Self {
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(send_proposals(jetstream, subject, queued));
        Self { queue }
    }
}

fn unavailable(why: String) -> ChatError {
    ChatError::ClusterUnavailable(why)
}

impl Propose for NatsLog {
    fn propose(&self, record: Record) -> BoxFuture<'static, Result<(), ChatError>> {
        let (sent, sending) = oneshot::channel();
        let queued = self.queue.send(Proposal {
            record,
            deadline: tokio::time::Instant::now() + PROPOSE_SEND_TIMEOUT,
            sent,
        });
        Box::pin(async move {
            let stopped =
                || unavailable("cannot send to NATS: the node's sender has stopped".to_owned());
            queued.map_err(|_| stopped())?;
            let ack = sending.await.map_err(|_| stopped())??;
            ack.await
                .map_err(|err| unavailable(format!("NATS did not store the request: {err}")))?;
            Ok(())
        })
    }
}

/// Hands each queued record to the NATS client, in the order queued, and gives
/// its proposer the acknowledgement to wait for. Ends when the [`NatsLog`] is
/// dropped.
async fn send_proposals(
    jetstream: jetstream::Context,
    subject: String,
    mut queued: mpsc::UnboundedReceiver<Proposal>,
) {
    while let Some(Proposal {
        record,
        deadline,
        sent,
    }) = queued.recv().await
    {
        let message = PublishMessage::build().payload(record.to_bytes().into());
        let sending = jetstream.send_publish(subject.clone(), message);
        let outcome = match tokio::time::timeout_at(deadline, sending).await {
            Ok(Ok(ack)) => Ok(ack),
            Ok(Err(err)) => Err(unavailable(format!("cannot send to NATS: {err}"))),
            Err(_) => Err(unavailable(format!(
                "cannot send to NATS: not sent within {} s",
                PROPOSE_SEND_TIMEOUT.as_secs()
            ))),
        };
        // A proposer that gave up drops the acknowledgement with the receiver.
        let _ = sent.send(outcome);
    }
}
