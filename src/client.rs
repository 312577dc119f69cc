//! The client library: connect, join, publish and leave, keeping the client's Lamport
//! clock and logging every call and every event it receives.
//!
//! The clock rules on this side: tick before every request (the request carries the
//! new time); merge the server's time from every reply and every event. Each event
//! is logged with the client's own Lamport time after the merge.

use crate::error::ChatError;
use crate::event::{Event, EventKind};
use crate::lamport::{LamportClock, LamportTime};
use crate::log_schema::{field, message, rpc};
use crate::pb;
use crate::pb::chitty_chat_client::ChittyChatClient;
use crate::transport::{
    HISTORY_METADATA, JOIN_SECRET_METADATA, JoinSecret, Keepalive, LOG_EPOCH_METADATA,
    MISSED_METADATA, RESUMED_METADATA, RETRY_AFTER_MS_METADATA, SESSION_TOKEN_METADATA,
    SHUTTING_DOWN_METADATA,
};
use crate::validate::{validate_message, validate_name};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

/// The default server URL.
pub const DEFAULT_SERVER_URL: &str = "http://127.0.0.1:50051";

/// How long connecting to the server may take before the client gives up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a Publish or Leave may take before the client gives up on it.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The input breaks a rule the server would enforce; nothing was sent.
    #[error("{0}")]
    Invalid(#[from] ChatError),
    /// The server URL cannot be used.
    #[error("invalid server URL \"{url}\": {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why it is unusable.
        reason: String,
    },
    /// The server could not be reached.
    #[error("cannot reach the Chitty-Chat server at {url}: {reason}")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// The innermost cause the transport reported ("Connection refused (os error 111)").
        reason: String,
    },
    /// The server refused or failed a call.
    #[error("{rpc} failed: {}", .status.message())]
    Rpc {
        /// The call.
        rpc: &'static str,
        /// The status the server (or the transport) returned.
        status: Status,
    },
    /// The server's answer broke the protocol.
    #[error("the server broke the protocol: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The gRPC code of a refused call, if this is one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }

    /// How long to wait before the server accepts the call, for a Publish refused by
    /// the rate limit.
    pub fn retry_after(&self) -> Option<Duration> {
        let ClientError::Rpc { status, .. } = self else {
            return None;
        };
        if status.code() != Code::ResourceExhausted {
            return None;
        }
        let ms = status.metadata().get(RETRY_AFTER_MS_METADATA)?;
        ms.to_str().ok()?.parse().ok().map(Duration::from_millis)
    }

    /// Whether the call (or the feed) failed because the server is shutting down.
    pub fn server_shut_down(&self) -> bool {
        matches!(self, ClientError::Rpc { status, .. }
            if status.code() == Code::Unavailable
                && status.metadata().get(SHUTTING_DOWN_METADATA).is_some())
    }

    /// Whether the call failed because the connection did (or the server shut down
    /// or cannot store events), rather than because the server refused it: a
    /// Publish that failed so may or may not have been accepted.
    pub fn connection_failed(&self) -> bool {
        match self {
            ClientError::Rpc { status, .. } => matches!(
                status.code(),
                Code::Unavailable
                    | Code::Unknown
                    | Code::Cancelled
                    | Code::Internal
                    | Code::DeadlineExceeded
            ),
            ClientError::Unreachable { .. } => true,
            _ => false,
        }
    }
}

/// How the client connects: keepalive, TLS and the address it connects from.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// HTTP/2 keepalive, which notices a server that went silent.
    pub keepalive: Keepalive,
    /// For `https://` URLs: the certificate authority (PEM) the server's certificate
    /// must chain to. Without one, the system's trusted roots are used.
    pub tls_ca: Option<Vec<u8>>,
    /// The local address to connect from; without one, the system chooses. A load
    /// generator spreads its connections over several (127.0.0.1, 127.0.0.2, ...)
    /// since one source address has only as many connections to a server as it has
    /// ephemeral ports.
    pub local_address: Option<std::net::IpAddr>,
}

/// Opens a channel to the server at `url` (`http://host:port`) with the default
/// [`ConnectOptions`].
pub async fn connect(url: &str) -> Result<Channel, ClientError> {
    connect_with(url, &ConnectOptions::default()).await
}

/// Opens a channel to the server at `url`: `http://host:port`, or `https://host:port`
/// for a server that serves TLS.
pub async fn connect_with(url: &str, options: &ConnectOptions) -> Result<Channel, ClientError> {
    let invalid = |reason: String| ClientError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|err| invalid(root_cause(&err)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(options.keepalive.interval)
        .keep_alive_timeout(options.keepalive.timeout)
        .keep_alive_while_idle(true)
        .local_address(options.local_address);
    match endpoint.uri().scheme_str() {
        Some("https") => {
            let tls = match &options.tls_ca {
                Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                None => ClientTlsConfig::new().with_native_roots(),
            };
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|err| invalid(root_cause(&err)))?;
        }
        Some("http") if options.tls_ca.is_some() => {
            return Err(invalid(
                "a TLS certificate authority was given, so use an https:// URL".to_owned(),
            ));
        }
        Some("http") => {}
        _ => return Err(invalid("use an http:// or https:// URL".to_owned())),
    }
    endpoint.connect().await.map_err(|err| {
        tracing::debug!(url, error = ?err, "cannot connect");
        ClientError::Unreachable {
            url: url.to_owned(),
            reason: root_cause(&err),
        }
    })
}

/// Connects to the server at `url` as [`connect_with`] does and joins as `name` as
/// [`Session::join_with`] does: the one way the programs connect and join, so each
/// reaches a server that serves TLS or requires a join secret.
pub async fn join(
    url: &str,
    name: &str,
    connect: &ConnectOptions,
    options: JoinOptions,
) -> Result<(Session, Events), ClientError> {
    let channel = connect_with(url, connect).await?;
    Session::join_with(channel, name, options).await
}

/// A joined participant: publishes and leaves on behalf of one name.
///
/// `Debug` leaves out the session token.
#[derive(Clone)]
pub struct Session {
    grpc: ChittyChatClient<Channel>,
    clock: Arc<LamportClock>,
    name: String,
    token: String,
    joined: JoinInfo,
    /// The sequence number of the last event the feed received; 0 before any.
    last_seen: Arc<AtomicU64>,
}

/// Where a feed stopped: the log's epoch and the last event received. Join with it
/// to get every event after it exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    /// The log's epoch, as the server named it.
    pub epoch: String,
    /// The sequence number of the last event received.
    pub after_seq: u64,
}

/// What the server said about a Join beyond the token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinInfo {
    /// The log's epoch.
    pub epoch: String,
    /// `Some(true)` when the feed resumed exactly where it stopped, `Some(false)`
    /// when it could not (see `missed`), `None` when no resume was asked.
    pub resumed: Option<bool>,
    /// How many events were missed for good, when a resume could not be had and the
    /// count is known.
    pub missed: Option<u64>,
    /// How many past events the feed replays as history before the join notice.
    pub history: u64,
}

/// An id for one message, kept across retries so the server publishes it once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishId(String);

impl PublishId {
    /// A new random id (128 bits, in hex).
    pub fn random() -> Self {
        Self(hex::encode(rand::random::<[u8; 16]>()))
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the client knows of one accepted Publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The client's Lamport time when it sent the request.
    pub sent_lamport: LamportTime,
    /// The broadcast's sequence number.
    pub seq: u64,
    /// The server's Lamport time of the broadcast.
    pub server_lamport: LamportTime,
    /// The client's Lamport time of receiving the reply, after the merge.
    pub reply_lamport: LamportTime,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("name", &self.name)
            .field("clock", &self.clock)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// How to join, beyond the name.
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    /// The server's join secret, if it needs one.
    pub join_secret: Option<JoinSecret>,
    /// Keep this clock (after a reconnect, so local time never runs backwards); a new
    /// one without it.
    pub clock: Option<Arc<LamportClock>>,
    /// How many past events to see before the join notice; the server's default
    /// when `None`.
    pub history: Option<u32>,
    /// Resume a previous feed from where it stopped.
    pub resume: Option<ResumePoint>,
    /// When rejoining: the previous session, which the new one replaces if the
    /// server still counts it present, so that the name is free at once.
    pub replaces: Option<PreviousSession>,
}

/// A session this client had, to be replaced by the next Join of the same name.
/// `Debug` leaves out its token.
#[derive(Clone, PartialEq, Eq)]
pub struct PreviousSession(String);

impl fmt::Debug for PreviousSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PreviousSession(<redacted>)")
    }
}

/// One event as the client received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The event as the server broadcast it.
    pub event: Event,
    /// The client's Lamport time of receiving it, after merging the event's time.
    pub local_lamport: LamportTime,
    /// Whether it is a past event replayed before the join notice.
    pub history: bool,
}

/// The participant's feed of events from the server.
#[derive(Debug)]
pub struct Events {
    stream: tonic::Streaming<pb::Event>,
    clock: Arc<LamportClock>,
    last_seen: Arc<AtomicU64>,
}

impl Session {
    /// Joins the chat as `name` over `channel`. Returns the session and its feed,
    /// whose first event is this participant's own join notice.
    pub async fn join(channel: Channel, name: &str) -> Result<(Session, Events), ClientError> {
        Self::join_with(channel, name, JoinOptions::default()).await
    }

    /// Joins as [`Session::join`] does, with a join secret or an existing clock.
    pub async fn join_with(
        channel: Channel,
        name: &str,
        options: JoinOptions,
    ) -> Result<(Session, Events), ClientError> {
        validate_name(name.as_bytes())?;
        let clock = options.clock.unwrap_or_default();
        let mut grpc = ChittyChatClient::new(channel);
        let lamport = clock.tick();
        let resume_after = options.resume.as_ref().map(|point| point.after_seq);
        tracing::info!(
            { field::RPC } = rpc::JOIN,
            { field::NAME } = name,
            { field::LAMPORT } = lamport,
            { field::RESUME_AFTER } = resume_after,
            "{}",
            message::SENT
        );
        let mut request = Request::new(pb::JoinRequest {
            name: name.as_bytes().to_vec(),
            lamport,
            history: options.history,
            resume: options.resume.as_ref().map(|point| pb::ResumePoint {
                epoch: point.epoch.clone(),
                after_seq: point.after_seq,
            }),
            replaces_session: options
                .replaces
                .as_ref()
                .map(|previous| previous.0.clone())
                .unwrap_or_default(),
        });
        if let Some(secret) = &options.join_secret {
            // JoinSecret holds printable ASCII only, always a valid metadata value.
            let value = AsciiMetadataValue::try_from(secret.expose()).map_err(|_| {
                ClientError::Protocol("the join secret cannot be sent as metadata".into())
            })?;
            request.metadata_mut().insert(JOIN_SECRET_METADATA, value);
        }
        let response = grpc
            .join(request)
            .await
            .map_err(|status| ClientError::Rpc {
                rpc: rpc::JOIN,
                status,
            })?;
        let metadata = response.metadata();
        let text = |key: &str| metadata.get(key).and_then(|value| value.to_str().ok());
        let token = text(SESSION_TOKEN_METADATA)
            .ok_or_else(|| ClientError::Protocol("Join returned no session token".into()))?
            .to_owned();
        let joined = JoinInfo {
            // A server from before the log names no epoch: nothing to resume then.
            epoch: text(LOG_EPOCH_METADATA).unwrap_or_default().to_owned(),
            resumed: text(RESUMED_METADATA).map(|resumed| resumed == "true"),
            missed: text(MISSED_METADATA).and_then(|missed| missed.parse().ok()),
            history: text(HISTORY_METADATA)
                .and_then(|history| history.parse().ok())
                .unwrap_or(0),
        };
        // A resumed feed continues from the resume point; any other starts afresh.
        let last_seen = Arc::new(AtomicU64::new(match (&options.resume, joined.resumed) {
            (Some(point), Some(true)) => point.after_seq,
            _ => 0,
        }));
        let events = Events {
            stream: response.into_inner(),
            clock: Arc::clone(&clock),
            last_seen: Arc::clone(&last_seen),
        };
        let session = Session {
            grpc,
            clock,
            name: name.to_owned(),
            token,
            joined,
            last_seen,
        };
        Ok((session, events))
    }

    /// This participant's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client's Lamport clock.
    pub fn clock(&self) -> &Arc<LamportClock> {
        &self.clock
    }

    /// What the server said about this Join.
    pub fn joined(&self) -> &JoinInfo {
        &self.joined
    }

    /// This session, for the next Join of the same name to replace (after the
    /// connection is lost, the server may still count it present for a while).
    pub fn previous(&self) -> PreviousSession {
        PreviousSession(self.token.clone())
    }

    /// Where this session's feed stands, to resume it after the connection is lost;
    /// `None` when the server names no epoch or nothing was received yet.
    pub fn resume_point(&self) -> Option<ResumePoint> {
        let after_seq = self.last_seen.load(Ordering::Acquire);
        (after_seq > 0 && !self.joined.epoch.is_empty()).then(|| ResumePoint {
            epoch: self.joined.epoch.clone(),
            after_seq,
        })
    }

    /// Publishes `text` after checking it by the server's rules, under a new id.
    /// Returns the sequence number and server Lamport time of the event it became.
    pub async fn publish(&self, text: &str) -> Result<Published, ClientError> {
        self.publish_with_id(text, &PublishId::random()).await
    }

    /// Publishes `text` under `id`. Calling it again with the same id, after a lost
    /// reply, on this session or a later one of the same name, publishes the message
    /// once: a repeat gets the original's stamp.
    pub async fn publish_with_id(
        &self,
        text: &str,
        id: &PublishId,
    ) -> Result<Published, ClientError> {
        validate_message(text.as_bytes())?;
        let lamport = self.clock.tick();
        tracing::info!(
            { field::RPC } = rpc::PUBLISH,
            { field::NAME } = %self.name,
            { field::TEXT } = text,
            { field::PUBLISH_ID } = id.as_str(),
            { field::LAMPORT } = lamport,
            "{}",
            message::SENT
        );
        let mut request = tonic::Request::new(pb::PublishRequest {
            session_token: self.token.clone(),
            text: text.as_bytes().to_vec(),
            lamport,
            publish_id: id.0.clone(),
        });
        request.set_timeout(RPC_TIMEOUT);
        let reply = self
            .grpc
            .clone()
            .publish(request)
            .await
            .map_err(|status| ClientError::Rpc {
                rpc: rpc::PUBLISH,
                status,
            })?
            .into_inner();
        let local = self.replied(rpc::PUBLISH, reply.seq, reply.lamport);
        Ok(Published {
            sent_lamport: lamport,
            seq: reply.seq,
            server_lamport: reply.lamport,
            reply_lamport: local,
        })
    }

    /// Opens a PublishStream: many publishes on one call, for a client that sends
    /// faster than it wants to wait for each reply. Send with the [`Publisher`];
    /// read each request's outcome, in order, from the [`PublishOutcomes`]. Dropping
    /// the `Publisher` ends the stream once the server has answered what was sent.
    pub async fn publish_stream(&self) -> Result<(Publisher, PublishOutcomes), ClientError> {
        let (requests, queued) = tokio::sync::mpsc::channel(PUBLISH_STREAM_QUEUE);
        let (sent, in_flight) = tokio::sync::mpsc::unbounded_channel();
        let failed = |status| ClientError::Rpc {
            rpc: rpc::PUBLISH_STREAM,
            status,
        };
        let outcomes = self
            .grpc
            .clone()
            .publish_stream(tokio_stream::wrappers::ReceiverStream::new(queued))
            .await
            .map_err(failed)?
            .into_inner();
        Ok((
            Publisher {
                session: self.clone(),
                requests,
                sent,
            },
            PublishOutcomes {
                session: self.clone(),
                outcomes,
                in_flight,
            },
        ))
    }

    /// Merges the Lamport time of a reply to `rpc` (its event's `seq` and the
    /// server's `lamport`) into the clock and logs the reply; the new local time.
    fn replied(&self, rpc: &'static str, seq: u64, lamport: LamportTime) -> LamportTime {
        let local = self.clock.observe(lamport);
        tracing::info!(
            { field::RPC } = rpc,
            { field::SEQ } = seq,
            { field::SERVER_LAMPORT } = lamport,
            { field::LAMPORT } = local,
            "{}",
            message::REPLY
        );
        local
    }

    /// Leaves the chat, and returns the Lamport time of the leave notice the others
    /// see. The feed delivers what the server queued before, then ends.
    pub async fn leave(&self) -> Result<LamportTime, ClientError> {
        let lamport = self.clock.tick();
        tracing::info!(
            { field::RPC } = rpc::LEAVE,
            { field::NAME } = %self.name,
            { field::LAMPORT } = lamport,
            "{}",
            message::SENT
        );
        let mut request = tonic::Request::new(pb::LeaveRequest {
            session_token: self.token.clone(),
            lamport,
        });
        request.set_timeout(RPC_TIMEOUT);
        let reply = self
            .grpc
            .clone()
            .leave(request)
            .await
            .map_err(|status| ClientError::Rpc {
                rpc: rpc::LEAVE,
                status,
            })?
            .into_inner();
        self.replied(rpc::LEAVE, reply.seq, reply.lamport);
        Ok(reply.lamport)
    }

    /// Who is present now, as the server sees it: names as each participant chose
    /// them, sorted regardless of case.
    pub async fn who(&self) -> Result<Vec<String>, ClientError> {
        let mut request = tonic::Request::new(pb::WhoRequest {
            session_token: self.token.clone(),
        });
        request.set_timeout(RPC_TIMEOUT);
        let reply = self
            .grpc
            .clone()
            .who(request)
            .await
            .map_err(|status| ClientError::Rpc {
                rpc: rpc::WHO,
                status,
            })?
            .into_inner();
        // Not a "reply" line: Who carries no Lamport time, so the trace tools, which
        // pair every reply with the event it stamped, must not read it as one.
        tracing::info!(
            { field::RPC } = rpc::WHO,
            present = reply.names.len(),
            "who"
        );
        Ok(reply.names)
    }

    /// At most `limit` past events before sequence number `before` (the newest when
    /// 0), oldest first, and the oldest sequence number the log holds. The reply is
    /// one receive: the client's clock merges the newest event's time.
    pub async fn history(&self, before: u64, limit: u32) -> Result<(Vec<Event>, u64), ClientError> {
        let mut request = tonic::Request::new(pb::HistoryRequest {
            session_token: self.token.clone(),
            before,
            limit,
        });
        request.set_timeout(RPC_TIMEOUT);
        let reply = self
            .grpc
            .clone()
            .history(request)
            .await
            .map_err(|status| ClientError::Rpc {
                rpc: rpc::HISTORY,
                status,
            })?
            .into_inner();
        let newest = reply
            .events
            .iter()
            .map(|event| event.lamport)
            .max()
            .unwrap_or(0);
        let local = self.clock.observe(newest);
        tracing::info!(
            { field::RPC } = rpc::HISTORY,
            before,
            returned = reply.events.len(),
            first_held = reply.first_held,
            { field::LAMPORT } = local,
            "history"
        );
        let events = reply.events.into_iter().filter_map(domain_event).collect();
        Ok((events, reply.first_held))
    }
}

/// The domain event of a `pb::Event`; `None` for a kind this client does not know.
fn domain_event(message: pb::Event) -> Option<Event> {
    let kind = match pb::EventKind::try_from(message.kind) {
        Ok(pb::EventKind::Chat) => EventKind::Chat,
        Ok(pb::EventKind::Joined) => EventKind::Joined,
        Ok(pb::EventKind::Left) => EventKind::Left,
        Ok(pb::EventKind::Unspecified) | Err(_) => return None,
    };
    Some(Event {
        kind,
        participant: Arc::from(message.participant),
        text: message.text,
        lamport: message.lamport,
        seq: message.seq,
    })
}

/// How many requests a [`Publisher`] queues before `send` waits for the stream.
pub const PUBLISH_STREAM_QUEUE: usize = 64;

/// The sending half of a PublishStream (see [`Session::publish_stream`]).
pub struct Publisher {
    session: Session,
    requests: tokio::sync::mpsc::Sender<pb::PublishRequest>,
    /// Each request's id and Lamport time, in the order sent, for its outcome.
    sent: tokio::sync::mpsc::UnboundedSender<(PublishId, LamportTime)>,
}

/// The receiving half of a PublishStream: one outcome per request, in order.
pub struct PublishOutcomes {
    session: Session,
    outcomes: tonic::Streaming<pb::PublishOutcome>,
    in_flight: tokio::sync::mpsc::UnboundedReceiver<(PublishId, LamportTime)>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for PublishOutcomes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishOutcomes")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Sends `text` under a new id, after checking it by the server's rules; waits
    /// only while the stream's queue is full. Returns the id its outcome will carry.
    pub async fn send(&mut self, text: &str) -> Result<PublishId, ClientError> {
        let id = PublishId::random();
        self.send_with_id(text, &id).await?;
        Ok(id)
    }

    /// Sends `text` under `id` (see [`Session::publish_with_id`]).
    pub async fn send_with_id(&mut self, text: &str, id: &PublishId) -> Result<(), ClientError> {
        validate_message(text.as_bytes())?;
        let lamport = self.session.clock.tick();
        // Logged as a Publish, which it is, so that `chittychat-trace` pairs it with
        // its broadcast (whose cause is Publish) as it does a unary one.
        tracing::info!(
            { field::RPC } = rpc::PUBLISH,
            { field::NAME } = %self.session.name,
            { field::TEXT } = text,
            { field::PUBLISH_ID } = id.as_str(),
            { field::LAMPORT } = lamport,
            "{}",
            message::SENT
        );
        let request = pb::PublishRequest {
            session_token: self.session.token.clone(),
            text: text.as_bytes().to_vec(),
            lamport,
            publish_id: id.0.clone(),
        };
        // Noted before it is sent, so that its outcome always finds it.
        let noted = self.sent.send((id.clone(), lamport));
        if noted.is_err() || self.requests.send(request).await.is_err() {
            return Err(ClientError::Rpc {
                rpc: rpc::PUBLISH_STREAM,
                status: Status::unavailable("the publish stream has ended"),
            });
        }
        Ok(())
    }
}

impl PublishOutcomes {
    /// The outcome of the oldest request not yet answered, with its id: its stamp
    /// (merged into the clock and logged, as a Publish reply is), or the server's
    /// refusal of that one request. `Ok(None)` once the [`Publisher`] is dropped
    /// and every request has been answered; `Err` when the stream itself failed,
    /// after which the requests not yet answered may or may not have been
    /// published (send them again under their ids to find out).
    pub async fn next(
        &mut self,
    ) -> Result<Option<(PublishId, Result<Published, ClientError>)>, ClientError> {
        let failed = |status| ClientError::Rpc {
            rpc: rpc::PUBLISH_STREAM,
            status,
        };
        let Some(outcome) = self.outcomes.message().await.map_err(failed)? else {
            return Ok(None);
        };
        let Some((id, sent_lamport)) = self.in_flight.recv().await else {
            return Err(ClientError::Protocol(
                "an outcome for a request that was never sent".into(),
            ));
        };
        if outcome.publish_id != id.0 {
            return Err(ClientError::Protocol(format!(
                "the outcome of publish id {} came where {} was due",
                outcome.publish_id, id.0
            )));
        }
        let result = match outcome.outcome {
            Some(pb::publish_outcome::Outcome::Published(reply)) => {
                let local = self.session.replied(rpc::PUBLISH, reply.seq, reply.lamport);
                Ok(Published {
                    sent_lamport,
                    seq: reply.seq,
                    server_lamport: reply.lamport,
                    reply_lamport: local,
                })
            }
            Some(pb::publish_outcome::Outcome::Refused(refusal)) => {
                let mut status = Status::new(Code::from(refusal.code), refusal.message);
                if refusal.retry_after_ms > 0 {
                    status
                        .metadata_mut()
                        .insert(RETRY_AFTER_MS_METADATA, refusal.retry_after_ms.into());
                }
                Err(failed(status))
            }
            None => {
                return Err(ClientError::Protocol(format!(
                    "the outcome of publish id {} says neither published nor refused",
                    id.0
                )));
            }
        };
        Ok(Some((id, result)))
    }
}

impl Events {
    /// The next event, merged into the client's clock and logged; `Ok(None)` once the
    /// server ended the feed cleanly (after this participant left).
    pub async fn next(&mut self) -> Result<Option<Received>, ClientError> {
        loop {
            let Some(message) = self
                .stream
                .message()
                .await
                .map_err(|status| ClientError::Rpc {
                    rpc: rpc::JOIN,
                    status,
                })?
            else {
                return Ok(None);
            };
            let local_lamport = self.clock.observe(message.lamport);
            self.last_seen.fetch_max(message.seq, Ordering::AcqRel);
            let (kind, seq, history) = (message.kind, message.seq, message.history);
            let Some(event) = domain_event(message) else {
                // A newer server may know kinds this client does not; the time
                // still counts, the event is skipped.
                tracing::warn!(
                    kind,
                    seq,
                    lamport = local_lamport,
                    "skipped an event of unknown kind"
                );
                continue;
            };
            tracing::info!(
                { field::KIND } = %event.kind,
                { field::PARTICIPANT } = %event.participant,
                { field::TEXT } = %event.text,
                { field::SEQ } = event.seq,
                { field::SERVER_LAMPORT } = event.lamport,
                { field::HISTORY } = history,
                { field::LAMPORT } = local_lamport,
                "{}",
                message::RECEIVED
            );
            return Ok(Some(Received {
                event,
                local_lamport,
                history,
            }));
        }
    }
}

/// The innermost cause of `err`: what a person needs to know ("Connection refused
/// (os error 111)"), without the layers the transport wraps around it.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(err), |err| err.source())
        .last()
        .map_or_else(String::new, ToString::to_string)
}
