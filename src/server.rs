//! The gRPC face of the chat room: the tonic service, and [`run`], which serves it.
//!
//! This layer converts between the generated `pb` types and the domain, logs every
//! refused call, and maps [`ChatError`] to a status through its one `From` impl.
//! Accepted calls are logged by the hub, one line per broadcast.

use crate::error::ChatError;
use crate::event::{Event, EventKind};
use crate::hub::{Feed, Hub, HubConfig};
use crate::pb;
use crate::pb::chitty_chat_server::{ChittyChat, ChittyChatServer};
use crate::validate::name_for_display;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::metadata::MetadataValue;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// The response metadata key under which Join returns the session token.
pub const SESSION_TOKEN_METADATA: &str = "chittychat-session-token";

/// The default address the server listens on.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// How long a graceful shutdown waits for clients to hang up before it stops anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Settings of the server.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// Settings of the chat room.
    pub hub: HubConfig,
}

/// Serves Chitty-Chat on `listener` until `shutdown` completes.
///
/// On shutdown every participant's feed ends with `UNAVAILABLE` ("the Chitty-Chat
/// server is shutting down"), so clients exit with a clear message; the server then
/// waits up to [`SHUTDOWN_GRACE`] for connections to close.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let hub = Arc::new(Hub::new(config.hub));
    let service = ChatService {
        hub: Arc::clone(&hub),
    };
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let present = hub.shutdown();
        tracing::info!(present, "shutting down: told every participant");
        let _ = stopped_tx.send(());
    };
    let serve = tonic::transport::Server::builder()
        .add_service(ChittyChatServer::new(service))
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
}

impl ChatService {
    /// A service over `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
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
    type JoinStream = EventStream;

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        let request = request.into_inner();
        let joined = self
            .hub
            .join(&request.name, request.lamport)
            .inspect_err(|err| {
                self.refused("Join", Some(&name_for_display(&request.name)), err);
            })?;
        let mut response = Response::new(EventStream(joined.feed));
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

/// A participant's feed as the gRPC stream of `pb::Event`.
///
/// Every event already queued is ready in one poll, so tonic packs them into as few
/// HTTP/2 frames as it can.
#[derive(Debug)]
pub struct EventStream(Feed);

impl Stream for EventStream {
    type Item = Result<pb::Event, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|item| item.map(|result| result.map(|e| to_pb(&e)).map_err(Status::from)))
    }
}

fn to_pb(event: &Event) -> pb::Event {
    let kind = match event.kind {
        EventKind::Chat => pb::EventKind::Chat,
        EventKind::Joined => pb::EventKind::Joined,
        EventKind::Left => pb::EventKind::Left,
    };
    pb::Event {
        kind: kind.into(),
        participant: event.participant.to_string(),
        text: event.text.clone(),
        lamport: event.lamport,
        seq: event.seq,
    }
}
