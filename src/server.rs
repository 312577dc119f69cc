//! The gRPC face of the chat room: the tonic service, and [`run`], which serves it.
//!
//! This layer converts between the generated `pb` types and the domain, logs every
//! refused call, and maps [`ChatError`] to a status through its one `From` impl.
//! Accepted calls are logged by the hub, one line per broadcast.

use crate::connection::{self, ConnectionHandle, ConnectionLimits, ParticipantFeed};
use crate::error::ChatError;
use crate::health;
use crate::hub::{Feed, Hub, HubConfig};
use crate::pb;
use crate::pb::encoded_server::chitty_chat_server::{ChittyChat, ChittyChatServer};
use crate::transport::{
    DEFAULT_MAX_REQUEST_BYTES, JOIN_SECRET_METADATA, JoinSecret, Keepalive, TLS_HANDSHAKE_TIMEOUT,
    TlsIdentity,
};
use crate::validate::name_for_display;
use crate::wire::{EncodedEvent, encode_event};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
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

/// The response metadata key under which Join returns the session token.
pub const SESSION_TOKEN_METADATA: &str = "chittychat-session-token";

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

/// Settings of the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Settings of the chat room.
    pub hub: HubConfig,
    /// HTTP/2 keepalive, which notices clients that vanished without hanging up.
    pub keepalive: Keepalive,
    /// The largest request, in bytes once encoded, the server decodes.
    pub max_request_bytes: usize,
    /// Serve TLS with this identity; plain HTTP/2 without one.
    pub tls: Option<TlsIdentity>,
    /// Refuse Join without this secret; anyone may join without one.
    pub join_secret: Option<JoinSecret>,
    /// How many connections, for how long without a participant, and how long a
    /// socket may take nothing.
    pub connections: ConnectionLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            hub: HubConfig::default(),
            keepalive: Keepalive::default(),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            tls: None,
            join_secret: None,
            connections: ConnectionLimits::default(),
        }
    }
}

/// Serves Chitty-Chat on `listener` until `shutdown` completes.
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
) -> Result<(), tonic::transport::Error> {
    let hub = Arc::new(Hub::new(config.hub));
    let service = ChatService::new(Arc::clone(&hub)).with_join_secret(config.join_secret);
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
    let incoming = connection::accept(listener, config.connections);
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        health::shutting_down(&health_reporter).await;
        let present = hub.shutdown();
        tracing::info!(present, "shutting down: told every participant");
        let _ = stopped_tx.send(());
    };
    let serve = builder
        .layer(layer_fn(|inner| OversizeExplained { inner }))
        .add_service(
            ChittyChatServer::new(service)
                .max_decoding_message_size(max_request_bytes)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip),
        )
        .add_service(health_service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, signal);
    tokio::pin!(serve);
    tokio::select! {
        result = &mut serve => return result,
        Ok(()) = stopped_rx => {}
    }
    // Shutdown has begun; give the connections a bounded time to drain.
    match tokio::time::timeout(SHUTDOWN_GRACE, serve).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(
                grace_secs = SHUTDOWN_GRACE.as_secs(),
                "clients did not hang up in time; stopping anyway"
            );
            Ok(())
        }
    }
}

/// The tonic service over one [`Hub`].
#[derive(Debug, Clone)]
pub struct ChatService {
    hub: Arc<Hub>,
    join_secret: Option<Arc<JoinSecret>>,
}

impl ChatService {
    /// A service over `hub` that anyone may join.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self {
            hub,
            join_secret: None,
        }
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

    /// Logs a refused call at warn level with whatever is known of the caller.
    fn refused(&self, rpc: &'static str, participant: Option<&str>, err: &ChatError) {
        tracing::warn!(
            rpc,
            participant = participant.unwrap_or("<unknown>"),
            code = ?err.code(),
            error = %err,
            "refused"
        );
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
        let joined = secret_checked
            .and_then(|()| self.hub.join(&request.name, request.lamport))
            .inspect_err(|err| {
                self.refused("Join", Some(&name_for_display(&request.name)), err);
            })?;
        let feed = ParticipantFeed::new(EventStream(joined.feed), connection);
        let mut response = Response::new(feed);
        // The token is hex and a dot, always a valid metadata value.
        let token = MetadataValue::try_from(joined.token.expose())
            .map_err(|_| Status::internal("could not encode the session token"))?;
        response
            .metadata_mut()
            .insert(SESSION_TOKEN_METADATA, token);
        Ok(response)
    }

    async fn publish(
        &self,
        request: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishReply>, Status> {
        let request = request.into_inner();
        let stamp = self
            .hub
            .publish(&request.session_token, &request.text, request.lamport)
            .inspect_err(|err| {
                let name = self.hub.name_of(&request.session_token);
                self.refused("Publish", name.as_deref(), err);
            })?;
        Ok(Response::new(pb::PublishReply {
            lamport: stamp.lamport,
            seq: stamp.seq,
        }))
    }

    async fn leave(
        &self,
        request: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveReply>, Status> {
        let request = request.into_inner();
        let stamp = self
            .hub
            .leave(&request.session_token, request.lamport)
            .inspect_err(|err| self.refused("Leave", None, err))?;
        Ok(Response::new(pb::LeaveReply {
            lamport: stamp.lamport,
            seq: stamp.seq,
        }))
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
                    .map(|broadcast| {
                        // The first recipient to get here encodes; the rest share it.
                        broadcast.wire(encode_event);
                        EncodedEvent::from(broadcast)
                    })
                    .map_err(Status::from)
            })
        })
    }
}

/// Wraps the services so that a request over the size limit is answered with a
/// clear `RESOURCE_EXHAUSTED` ([`ChatError::RequestTooLarge`]) and logged as
/// refused, rather than with tonic's own `OUT_OF_RANGE`.
#[derive(Debug, Clone)]
struct OversizeExplained<S> {
    inner: S,
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
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let oversize = response.extensions().get::<Status>().and_then(oversize);
            let Some((found, max)) = oversize else {
                return Ok(response);
            };
            let err = ChatError::RequestTooLarge { found, max };
            let rpc = uri.path().rsplit('/').next().unwrap_or_default();
            tracing::warn!(
                rpc,
                participant = "<unknown>",
                code = ?err.code(),
                error = %err,
                "refused"
            );
            Ok(Status::from(err).into_http())
        })
    }
}

/// The size tonic found and its limit, when `status` is tonic's refusal of a
/// request over the limit (each service has its own; ours is `max_request_bytes`).
fn oversize(status: &Status) -> Option<(usize, usize)> {
    if status.code() != Code::OutOfRange {
        return None;
    }
    let rest = status
        .message()
        .strip_prefix("Error, decoded message length too large: found ")?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let max = rest.strip_suffix(" bytes")?;
    Some((found.parse().ok()?, max.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonics_oversize_refusal_is_recognised_and_nothing_else() {
        let tonic = Status::out_of_range(
            "Error, decoded message length too large: found 70000 bytes, the limit is: 4096 bytes",
        );
        assert_eq!(oversize(&tonic), Some((70000, 4096)));
        assert_eq!(oversize(&Status::out_of_range("something else")), None);
        let other_code = Status::internal(tonic.message());
        assert_eq!(oversize(&other_code), None);
    }
}
