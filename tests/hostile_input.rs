//! Hostile input over the wire, against a real server on 127.0.0.1:0: property tests
//! that the server accepts exactly the names and messages the client-side validator
//! accepts, for arbitrary strings and arbitrary byte vectors, and checks that
//! oversized input is refused with a short, clear status.

mod fixture;

use chittychat::client::{ClientError, Session};
use chittychat::pb;
use chittychat::pb::chitty_chat_client::ChittyChatClient;
use chittychat::server::ServerConfig;
use chittychat::transport::SESSION_TOKEN_METADATA;
use chittychat::validate::{validate_message, validate_name};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::cell::Cell;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// How many cases each property runs: a round trip each, well under a second in all.
const CASES: u32 = 384;

/// How long one call may take before the test counts it as hung.
const CALL_DEADLINE: Duration = Duration::from_secs(10);

/// The fixture's server, with a runtime of its own to drive it and the test's calls:
/// proptest runs its cases synchronously.
struct TestServer {
    runtime: Runtime,
    channel: Channel,
    server: Option<fixture::TestServer>,
}

impl TestServer {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let (server, channel) = runtime.block_on(async {
            let server = fixture::TestServer::start(ServerConfig::default()).await;
            let channel = server.channel().await;
            (server, channel)
        });
        Self {
            runtime,
            channel,
            server: Some(server),
        }
    }

    /// Runs `future` to completion on the server's runtime, within [`CALL_DEADLINE`].
    fn block_on<T>(&self, future: impl Future<Output = T>) -> T {
        self.runtime
            .block_on(async { tokio::time::timeout(CALL_DEADLINE, future).await })
            .expect("a call to the test server hung")
    }

    fn grpc(&self) -> ChittyChatClient<Channel> {
        ChittyChatClient::new(self.channel.clone())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        if std::thread::panicking() {
            server.begin_stop();
        } else {
            // Stops within the fixture's deadline, cleanly, or fails the test.
            self.runtime.block_on(server.stop());
        }
    }
}

/// A participant that joined through the raw generated client, so that any bytes at
/// all can be sent; a task reads its feed so it never falls behind.
struct RawParticipant {
    token: String,
    reader: JoinHandle<()>,
}

impl Drop for RawParticipant {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn raw_join(
    grpc: &mut ChittyChatClient<Channel>,
    name: &[u8],
) -> Result<RawParticipant, Status> {
    let response = grpc
        .join(pb::JoinRequest {
            name: name.to_vec(),
            lamport: 1,
            ..Default::default()
        })
        .await?;
    let token = response
        .metadata()
        .get(SESSION_TOKEN_METADATA)
        .and_then(|value| value.to_str().ok())
        .expect("Join returned a session token")
        .to_owned();
    let mut feed = response.into_inner();
    let reader = tokio::spawn(async move { while let Ok(Some(_)) = feed.message().await {} });
    Ok(RawParticipant { token, reader })
}

async fn raw_publish(
    grpc: &mut ChittyChatClient<Channel>,
    token: &str,
    text: &[u8],
) -> Result<(), Status> {
    grpc.publish(pb::PublishRequest {
        session_token: token.to_owned(),
        text: text.to_vec(),
        lamport: 1,
        ..Default::default()
    })
    .await
    .map(drop)
}

async fn raw_leave(grpc: &mut ChittyChatClient<Channel>, token: &str) -> Result<(), Status> {
    grpc.leave(pb::LeaveRequest {
        session_token: token.to_owned(),
        lamport: 1,
    })
    .await
    .map(drop)
}

/// The one publisher of a property test. A server may limit how fast one
/// participant publishes; when it says so, the publisher leaves and a new one joins
/// under a fresh name, so the limit never masks the verdict on the text.
struct Publisher {
    generation: u32,
    raw: RawParticipant,
}

impl Publisher {
    async fn join(server: &TestServer, generation: u32) -> Self {
        let name = format!("publisher-{generation}");
        let raw = raw_join(&mut server.grpc(), name.as_bytes())
            .await
            .expect("the publisher joins");
        Self { generation, raw }
    }

    /// Publishes `text` and returns the server's verdict.
    async fn publish(&mut self, server: &TestServer, text: &[u8]) -> Result<(), Status> {
        for _ in 0..3 {
            match raw_publish(&mut server.grpc(), &self.raw.token, text).await {
                Err(status) if status.code() == Code::ResourceExhausted => {
                    let _ = raw_leave(&mut server.grpc(), &self.raw.token).await;
                    *self = Self::join(server, self.generation + 1).await;
                }
                verdict => return verdict,
            }
        }
        panic!("three publishers in a row were rate limited on their first message")
    }
}

/// Arbitrary strings, weighted towards the interesting ones: around the length
/// limit, with multi-byte characters, and with the occasional control character.
fn texts() -> impl Strategy<Value = String> {
    let mostly_printable = prop_oneof![
        9 => "[ -~éß日本😀𝄞]",
        1 => any::<char>().prop_map(String::from),
    ];
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9 .,!?éß日本😀𝄞]{120,136}",
        prop::collection::vec(mostly_printable, 0..140).prop_map(|parts| parts.concat()),
    ]
}

/// Arbitrary byte vectors: raw noise, valid UTF-8 with one byte changed, and valid
/// UTF-8 as is.
fn byte_vectors() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        (texts(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(text, at, byte)| {
            let mut bytes = text.into_bytes();
            if !bytes.is_empty() {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            bytes
        }),
        texts().prop_map(String::into_bytes),
    ]
}

/// Arbitrary names: any string, near misses of the naming rule, and valid names.
fn names() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<String>(),
        1 => "[ -~]{0,34}",
        2 => "[A-Za-z0-9._-]{0,34}",
        1 => "[A-Za-z0-9._é -]{1,33}",
    ]
}

fn name_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..40),
        3 => names().prop_map(String::into_bytes),
    ]
}

/// Runs `test` on [`CASES`] values of `strategy`. Each case returns whether the
/// input was accepted; both verdicts must come up often, or the strategy has
/// drifted away from the boundary it is meant to probe.
fn run<S: Strategy>(strategy: S, test: impl Fn(S::Value) -> Result<bool, TestCaseError>) {
    let config = Config {
        cases: CASES,
        // Shrunk failures are printed; the runner needs no file to replay them.
        failure_persistence: None,
        ..Config::default()
    };
    let accepted = Cell::new(0u32);
    let refused = Cell::new(0u32);
    let mut runner = TestRunner::new(config);
    let result = runner.run(&strategy, |value| {
        let counter = if test(value)? { &accepted } else { &refused };
        counter.set(counter.get() + 1);
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let (accepted, refused) = (accepted.get(), refused.get());
    assert!(
        accepted >= CASES / 16 && refused >= CASES / 16,
        "{accepted} inputs accepted and {refused} refused: the strategy misses the boundary"
    );
}

/// A refused text must be refused by the server for the same reason the client gives.
fn same_refusal(client: &str, server: &Status) -> Result<(), TestCaseError> {
    prop_assert_eq!(server.code(), Code::InvalidArgument);
    prop_assert_eq!(server.message(), client);
    Ok(())
}

#[test]
fn the_server_accepts_exactly_the_strings_the_client_accepts() {
    let server = TestServer::start();
    let (session, reader) = server.block_on(async {
        let (session, mut events) = Session::join(server.channel.clone(), "strings")
            .await
            .expect("join");
        let reader = tokio::spawn(async move { while let Ok(Some(_)) = events.next().await {} });
        (session, reader)
    });
    let publisher = Mutex::new(server.block_on(Publisher::join(&server, 0)));
    run(texts(), |text| {
        server.block_on(async {
            let server_verdict = publisher
                .lock()
                .await
                .publish(&server, text.as_bytes())
                .await;
            match (session.publish(&text).await, server_verdict) {
                (Ok(_), Ok(())) => Ok(true),
                (Err(ClientError::Invalid(reason)), Err(status)) => {
                    same_refusal(&reason.to_string(), &status)?;
                    Ok(false)
                }
                // The client's own call reached a rate limit: its verdict was "send".
                (Err(ClientError::Rpc { status, .. }), Ok(()))
                    if status.code() == Code::ResourceExhausted =>
                {
                    Ok(true)
                }
                (client, server) => Err(TestCaseError::fail(format!(
                    "client {client:?}, server {server:?} for {text:?}"
                ))),
            }
        })
    });
    reader.abort();
}

#[test]
fn the_server_accepts_exactly_the_byte_vectors_the_client_accepts() {
    let server = TestServer::start();
    let publisher = Mutex::new(server.block_on(Publisher::join(&server, 0)));
    run(byte_vectors(), |bytes| {
        let server_verdict =
            server.block_on(async { publisher.lock().await.publish(&server, &bytes).await });
        match (validate_message(&bytes), server_verdict) {
            (Ok(_), Ok(())) => Ok(true),
            (Err(reason), Err(status)) => {
                same_refusal(&reason.to_string(), &status)?;
                Ok(false)
            }
            (client, server) => Err(TestCaseError::fail(format!(
                "client {client:?}, server {server:?} for {bytes:?}"
            ))),
        }
    });
}

#[test]
fn the_server_accepts_exactly_the_names_the_client_accepts() {
    let server = TestServer::start();
    run(names(), |name| {
        server.block_on(async {
            let client_verdict = Session::join(server.channel.clone(), &name).await;
            let client_accepted = match client_verdict {
                Ok((session, _events)) => {
                    session.leave().await.expect("leave");
                    true
                }
                Err(ClientError::Invalid(_)) => false,
                Err(other) => {
                    return Err(TestCaseError::fail(format!(
                        "the client sent {name:?} and the server refused it: {other}"
                    )));
                }
            };
            let mut grpc = server.grpc();
            let server_accepted = match raw_join(&mut grpc, name.as_bytes()).await {
                Ok(raw) => {
                    raw_leave(&mut grpc, &raw.token).await.expect("leave");
                    true
                }
                Err(status) => {
                    prop_assert_eq!(status.code(), Code::InvalidArgument);
                    false
                }
            };
            prop_assert_eq!(client_accepted, server_accepted, "{:?}", name);
            Ok(client_accepted)
        })
    });
}

#[test]
fn the_server_accepts_exactly_the_name_bytes_the_client_accepts() {
    let server = TestServer::start();
    run(name_bytes(), |name| {
        server.block_on(async {
            let mut grpc = server.grpc();
            match (validate_name(&name), raw_join(&mut grpc, &name).await) {
                (Ok(_), Ok(raw)) => {
                    raw_leave(&mut grpc, &raw.token).await.expect("leave");
                    Ok(true)
                }
                (Err(reason), Err(status)) => {
                    prop_assert_eq!(status.code(), Code::InvalidArgument);
                    prop_assert_eq!(status.message(), reason.to_string());
                    Ok(false)
                }
                (client, server) => Err(TestCaseError::fail(format!(
                    "client {:?}, server {:?} for {name:?}",
                    client,
                    server.map(|raw| raw.token.len())
                ))),
            }
        })
    });
}

/// Oversized input gets a short status that says what is wrong: never a transport
/// error, never the input echoed back in full.
#[test]
fn oversized_input_is_refused_with_a_short_clear_status() {
    let server = TestServer::start();
    server.block_on(async {
        let mut grpc = server.grpc();
        let publisher = raw_join(&mut grpc, b"publisher").await.expect("join");
        for size in [1_000, 10_000, 100_000, 1_000_000] {
            let status = raw_join(&mut grpc, &vec![b'x'; size])
                .await
                .err()
                .expect("an oversized name is refused");
            assert_clear_refusal(&status, size, "name");
            let status = raw_publish(&mut grpc, &publisher.token, &vec![b'x'; size])
                .await
                .expect_err("an oversized message is refused");
            assert_clear_refusal(&status, size, "message");
        }
    });
}

fn assert_clear_refusal(status: &Status, size: usize, what: &str) {
    let allowed = [
        Code::InvalidArgument,
        Code::ResourceExhausted,
        Code::OutOfRange,
    ];
    assert!(
        allowed.contains(&status.code()),
        "a {size}-byte {what}: {status:?}"
    );
    assert!(
        !status.message().contains("h2 protocol error") && status.message().len() < 300,
        "a {size}-byte {what}: {} bytes of status message: {:.200}",
        status.message().len(),
        status.message()
    );
    assert!(
        status.message().contains(what) || status.message().contains("too large"),
        "a {size}-byte {what}: {}",
        status.message()
    );
}
