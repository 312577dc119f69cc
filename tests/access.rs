//! Access and privacy: TLS end to end with a certificate made here, the join
//! secret, and session tokens that never reach a log.

mod fixture;

use chittychat::client::{ConnectOptions, JoinOptions, Session, connect, connect_with};
use chittychat::event::EventKind;
use chittychat::pb;
use chittychat::pb::chitty_chat_client::ChittyChatClient;
use chittychat::server::ServerConfig;
use chittychat::transport::JoinSecret;
use fixture::pki::Pki;
use fixture::{ClientProcess, DEADLINE, ServerProcess, TestServer, await_notice, raw_join, within};
use tonic::Code;

fn tls_to(ca_pem: &str) -> ConnectOptions {
    ConnectOptions {
        tls_ca: Some(ca_pem.as_bytes().to_vec()),
        ..ConnectOptions::default()
    }
}

#[tokio::test]
async fn tls_end_to_end_and_only_with_the_right_authority() {
    let pki = Pki::new();
    let server = TestServer::start(ServerConfig {
        tls: Some(pki.identity()),
        ..ServerConfig::default()
    })
    .await;
    let url = format!("https://{}", server.addr);

    let channel = connect_with(&url, &tls_to(&pki.ca_pem)).await.unwrap();
    let (alice, mut events) = Session::join(channel, "alice").await.unwrap();
    await_notice(&mut events, EventKind::Joined, "alice", DEADLINE).await;
    alice.publish("over TLS").await.unwrap();
    let received = await_notice(&mut events, EventKind::Chat, "alice", DEADLINE).await;
    assert_eq!(received.event.text, "over TLS");

    // Another authority's certificate is not trusted.
    let stranger = Pki::new();
    let refused = within(DEADLINE, "the handshake to fail", async {
        match connect_with(&url, &tls_to(&stranger.ca_pem)).await {
            Err(err) => err.to_string(),
            Ok(channel) => Session::join(channel, "mallory")
                .await
                .unwrap_err()
                .to_string(),
        }
    })
    .await;
    assert!(refused.contains("certificate"), "{refused}");

    // Plain HTTP/2 to a TLS server gets nowhere.
    let plain = within(DEADLINE, "plain text to fail", async {
        match connect(&format!("http://{}", server.addr)).await {
            Err(_) => true,
            Ok(channel) => Session::join(channel, "plain").await.is_err(),
        }
    })
    .await;
    assert!(plain);
    server.stop().await;
}

#[tokio::test]
async fn over_tls_a_connection_with_a_participant_outlives_the_join_timeout() {
    const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);
    let pki = Pki::new();
    let server = TestServer::start(ServerConfig {
        tls: Some(pki.identity()),
        connections: chittychat::connection::ConnectionLimits {
            join_timeout: JOIN_TIMEOUT,
            ..Default::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let url = format!("https://{}", server.addr);
    let channel = connect_with(&url, &tls_to(&pki.ca_pem)).await.unwrap();
    let (alice, mut events) = Session::join(channel, "alice").await.unwrap();
    await_notice(&mut events, EventKind::Joined, "alice", DEADLINE).await;

    // A connection that never even starts TLS is closed after the join timeout;
    // alice's, older, has passed its own by then, and carries her feed.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = within(DEADLINE, "the silent connection to close", async {
        tokio::io::AsyncReadExt::read(&mut silent, &mut byte).await
    })
    .await;
    assert!(!matches!(read, Ok(1)), "{read:?}");
    alice.publish("still over TLS").await.unwrap();
    let received = await_notice(&mut events, EventKind::Chat, "alice", DEADLINE).await;
    assert_eq!(received.event.text, "still over TLS");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_end_to_end_with_the_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let [ca, cert, key] = Pki::new().write(dir.path());
    let server = ServerProcess::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    let url = format!("https://{}", server.addr);
    let mut alice = ClientProcess::start(
        &url,
        "alice",
        &["--tls-ca", ca.to_str().unwrap()],
        &[],
        dir.path(),
    );
    alice.await_joined("alice").await;
    alice.say("hello over TLS");
    alice
        .stdout
        .await_line("alice's message", |l| {
            l.ends_with("] alice: hello over TLS")
        })
        .await;
    let (status, _, _) = alice.finish().await;
    assert!(status.success(), "{status}");

    // Without the authority the server's certificate is not trusted: unreachable.
    let mut bob = ClientProcess::start(&url, "bob", &[], &[], dir.path());
    let status = bob.exit_status().await;
    assert_eq!(status.code(), Some(3));
    let said = bob.stderr.read_to_end().await;
    assert_eq!(said.len(), 1, "{said:#?}");
    assert!(
        said[0].starts_with("chittychat-client: error: "),
        "{said:#?}"
    );
}

#[tokio::test]
async fn join_needs_the_secret_when_the_server_has_one() {
    let server = TestServer::start(ServerConfig {
        join_secret: JoinSecret::new("open sesame").ok(),
        ..ServerConfig::default()
    })
    .await;
    let channel = connect(&server.url()).await.unwrap();
    let with = |secret: &str| JoinOptions {
        join_secret: Some(JoinSecret::new(secret).unwrap()),
        ..JoinOptions::default()
    };

    let err = Session::join(channel.clone(), "alice").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated));
    assert!(err.to_string().contains("needs a join secret"), "{err}");
    let err = Session::join_with(channel.clone(), "alice", with("open barley"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated));
    assert!(err.to_string().contains("wrong join secret"), "{err}");
    Session::join_with(channel, "alice", with("open sesame"))
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binaries_take_the_secret_from_a_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "open sesame\n").unwrap();
    let secret_file = secret_file.to_str().unwrap();
    let mut server = ServerProcess::start(&["--join-secret-file", secret_file]).await;
    let url = server.url();

    let mut from_env = ClientProcess::start(
        &url,
        "alice",
        &[],
        &[("CHITTYCHAT_JOIN_SECRET", "open sesame")],
        dir.path(),
    );
    from_env.await_joined("alice").await;
    let mut from_file = ClientProcess::start(
        &url,
        "bob",
        &["--join-secret-file", secret_file],
        &[],
        dir.path(),
    );
    from_file.await_joined("bob").await;

    let mut without = ClientProcess::start(&url, "mallory", &[], &[], dir.path());
    assert_eq!(without.exit_status().await.code(), Some(4));
    let said = without.stderr.read_to_end().await.join("\n");
    assert!(said.contains("needs a join secret"), "{said}");
    // The client, which knows its own flags, says how to give the secret.
    assert!(said.contains("--join-secret-file"), "{said}");
    let refused = server.await_log("refused").await;
    assert_eq!(refused["participant"], "mallory", "{refused}");
    assert_eq!(refused["level"], "WARN", "{refused}");

    for client in [from_env, from_file] {
        assert!(client.finish().await.0.success());
    }
    let log = server.log.drain().join("\n");
    assert!(!log.contains("sesame"), "the join secret reached the log");

    // The server also takes the secret from its environment.
    let server = ServerProcess::start_with_env(
        &["--listen", "127.0.0.1:0"],
        &[],
        &[("CHITTYCHAT_JOIN_SECRET", "open barley")],
    )
    .await;
    let mut wrong = ClientProcess::start(
        &server.url(),
        "carol",
        &["--join-secret-file", secret_file],
        &[],
        dir.path(),
    );
    assert_eq!(wrong.exit_status().await.code(), Some(4));
    let said = wrong.stderr.read_to_end().await.join("\n");
    assert!(said.contains("wrong join secret"), "{said}");
    let mut right = ClientProcess::start(
        &server.url(),
        "carol",
        &[],
        &[("CHITTYCHAT_JOIN_SECRET", "open barley")],
        dir.path(),
    );
    right.await_joined("carol").await;
    assert!(right.finish().await.0.success());
}

/// Whether `text` holds something shaped like a session token: hex, a dot, then
/// 32 hex digits.
fn holds_a_token(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        b == b'.'
            && i > 0
            && bytes[i - 1].is_ascii_hexdigit()
            && bytes.len() >= i + 33
            && bytes[i + 1..i + 33].iter().all(u8::is_ascii_hexdigit)
            && bytes.get(i + 33).is_none_or(|c| !c.is_ascii_hexdigit())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_tokens_never_reach_a_log_even_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let trace = [("RUST_LOG", "trace")];
    let mut server = ServerProcess::start_with_env(&["--listen", "127.0.0.1:0"], &[], &trace).await;

    // A raw client sees its token, to look for it in the server's log.
    let mut raw = ChittyChatClient::new(connect(&server.url()).await.unwrap());
    let (token, _feed) = raw_join(&mut raw, "raw").await;
    assert!(holds_a_token(&token), "{token}");
    raw.publish(pb::PublishRequest {
        session_token: token.clone(),
        text: b"hi".to_vec(),
        lamport: 2,
        ..Default::default()
    })
    .await
    .unwrap();

    // A client process publishes and leaves with its own token, logging at trace.
    let mut alice = ClientProcess::start(&server.url(), "alice", &[], &trace, dir.path());
    alice.await_joined("alice").await;
    alice.say("hello");
    alice
        .stdout
        .await_line("alice's message", |l| l.ends_with("] alice: hello"))
        .await;
    assert!(alice.finish().await.0.success());
    raw.leave(pb::LeaveRequest {
        session_token: token.clone(),
        lamport: 3,
    })
    .await
    .unwrap();
    server
        .log
        .await_line("raw's leave", |l| l.contains("Participant raw left"))
        .await;

    let server_log = server.log.drain().join("\n");
    assert!(server_log.len() > 1000, "trace logging is on");
    assert!(!server_log.contains(&token), "the server logged a token");
    assert!(!holds_a_token(&server_log), "the server logged a token");
    let client_log = std::fs::read_to_string(dir.path().join("alice.log")).unwrap();
    assert!(client_log.contains("\"sent\""), "{client_log}");
    assert!(!holds_a_token(&client_log), "the client logged its token");
}
