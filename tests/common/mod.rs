//! Helpers shared by the integration tests: a real server on 127.0.0.1:0 and
//! deadline-bounded waits.

#![allow(dead_code, unreachable_pub)]

use chittychat::client::{Events, Received, Session, connect};
use chittychat::server::{self, ServerConfig};
use std::future::Future;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A server running in this process for one test.
pub struct TestServer {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    /// Shuts the server down gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within(&mut self.task)
            .await
            .expect("server task panicked")
            .expect("server failed");
    }
}

/// Starts a server with `config` on a free port of 127.0.0.1.
pub async fn start_server(config: ServerConfig) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server::run(listener, config, async move {
        let _ = stopped.await;
    }));
    TestServer {
        url,
        stop: Some(stop),
        task,
    }
}

/// Awaits `future`, failing the test if it takes longer than [`DEADLINE`].
pub async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future)
        .await
        .expect("condition not met before the deadline")
}

/// Joins `name` on its own connection and consumes its own join notice.
pub async fn join(url: &str, name: &str) -> (Session, Events) {
    let channel = within(connect(url)).await.expect("connect");
    let (session, mut events) = within(Session::join(channel, name)).await.expect("join");
    let own = next(&mut events).await;
    assert_eq!(
        own.event.text,
        format!(
            "Participant {name} joined Chitty-Chat at Lamport time {}",
            own.event.lamport
        )
    );
    (session, events)
}

/// The next event on `events`, within the deadline.
pub async fn next(events: &mut Events) -> Received {
    within(events.next())
        .await
        .expect("feed failed")
        .expect("feed ended")
}
