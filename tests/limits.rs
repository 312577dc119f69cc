//! Limits: each is answered with a clear status, and the server's log shows every
//! refusal at warn level with the participant's name.

mod fixture;

use chittychat::client::{Session, connect};
use chittychat::pb;
use chittychat::pb::chitty_chat_client::ChittyChatClient;
use chittychat::room::{PublishRate, RoomConfig};
use chittychat::server::ServerConfig;
use chittychat::transport::DEFAULT_MAX_REQUEST_BYTES;
use fixture::{DEADLINE, ServerProcess, TestServer, within};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};
use tonic::Code;

fn rate(per_second: u32, burst: u32) -> Option<PublishRate> {
    Some(PublishRate {
        per_second: NonZeroU32::new(per_second).unwrap(),
        burst: NonZeroU32::new(burst).unwrap(),
    })
}

#[tokio::test]
async fn an_oversize_request_gets_resource_exhausted_with_a_message() {
    let server = TestServer::start(ServerConfig::default()).await;
    let channel = connect(&server.url()).await.unwrap();
    let (alice, _events) = Session::join(channel.clone(), "alice").await.unwrap();
    let mut raw = ChittyChatClient::new(channel);

    let huge = vec![b'x'; 64 * 1024];
    let status = raw
        .publish(pb::PublishRequest {
            session_token: "1.00".into(),
            text: huge.clone(),
            lamport: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().starts_with("request too large: ")
            && status
                .message()
                .contains(&format!("at most {DEFAULT_MAX_REQUEST_BYTES} bytes")),
        "{}",
        status.message()
    );
    let status = raw
        .join(pb::JoinRequest {
            name: huge,
            lamport: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // The connection and the session survive a refused request.
    alice.publish("still here").await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_full_server_says_so() {
    let server = TestServer::start(ServerConfig {
        room: RoomConfig {
            max_participants: 2,
            ..RoomConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let channel = connect(&server.url()).await.unwrap();
    let _alice = Session::join(channel.clone(), "alice").await.unwrap();
    let _bob = Session::join(channel.clone(), "bob").await.unwrap();
    let err = Session::join(channel, "carol").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted));
    assert!(err.to_string().contains("server full"), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn a_flooder_is_slowed_and_the_others_are_not() {
    const PER_SECOND: u32 = 20;
    const BURST: u32 = 10;
    let server = TestServer::start(ServerConfig {
        room: RoomConfig {
            publish_rate: rate(PER_SECOND, BURST),
            ..RoomConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let channel = connect(&server.url()).await.unwrap();
    let (flooder, _flooder_events) = Session::join(channel.clone(), "flooder").await.unwrap();
    let (calm, _calm_events) = Session::join(channel, "calm").await.unwrap();

    // The flooder publishes as fast as it can for a second; the calm participant
    // publishes now and then meanwhile, within its own rate.
    let flood = async {
        let started = Instant::now();
        let (mut accepted, mut refused) = (0u32, 0u32);
        let mut retry_hint = None;
        while started.elapsed() < Duration::from_secs(1) {
            match flooder.publish("spam").await {
                Ok(_) => accepted += 1,
                Err(err) => {
                    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
                    retry_hint.get_or_insert(err.to_string());
                    refused += 1;
                }
            }
        }
        (accepted, refused, retry_hint)
    };
    let calm_talk = async {
        for i in 0..5 {
            calm.publish(&format!("calm {i}")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    };
    let ((accepted, refused, hint), ()) = within(DEADLINE, "the flood", async {
        tokio::join!(flood, calm_talk)
    })
    .await;
    println!("flooder: {accepted} accepted, {refused} refused in one second");
    // A second at 20/s after a burst of 10: about 30, with slack for timing.
    assert!(
        accepted <= BURST + PER_SECOND + 5,
        "the flooder got {accepted} messages through"
    );
    assert!(refused > 0, "the flooder was never refused");
    let hint = hint.unwrap();
    assert!(
        hint.contains("slow down") && hint.contains("retry in"),
        "the refusal says when to retry: {hint}"
    );

    // Once refused, the flooder is accepted again after the time it is told.
    let mut refusal = None;
    for _ in 0..=BURST {
        if let Err(err) = flooder.publish("spam").await {
            refusal = Some(err);
            break;
        }
    }
    let err = refusal.expect("a refusal once the bucket is empty");
    let seconds: f64 = err
        .to_string()
        .rsplit_once("retry in ")
        .and_then(|(_, rest)| rest.strip_suffix(" s"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no retry time in: {err}"));
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    flooder.publish("patient").await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn every_refusal_is_logged_at_warn_with_the_participants_name() {
    let mut server = ServerProcess::start(&[
        "--publish-rate",
        "1",
        "--publish-burst",
        "1",
        "--max-participants",
        "1",
    ])
    .await;
    let channel = connect(&server.url()).await.unwrap();
    let (flooder, _events) = Session::join(channel.clone(), "flooder").await.unwrap();
    flooder.publish("one").await.unwrap();
    flooder.publish("two").await.unwrap_err();
    let line = server.await_log("refused").await;
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["participant"], "flooder", "{line}");
    assert_eq!(line["rpc"], "Publish", "{line}");
    assert!(
        line["error"].as_str().unwrap().contains("slow down"),
        "{line}"
    );

    Session::join(channel.clone(), "latecomer")
        .await
        .unwrap_err();
    let line = server.await_log("refused").await;
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["participant"], "latecomer", "{line}");
    assert!(
        line["error"].as_str().unwrap().contains("server full"),
        "{line}"
    );

    ChittyChatClient::new(channel)
        .publish(pb::PublishRequest {
            session_token: String::new(),
            text: vec![b'x'; 8192],
            lamport: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    let line = server.await_log("refused").await;
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["rpc"], "Publish", "{line}");
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("request too large"),
        "{line}"
    );
}

#[tokio::test]
async fn joins_beyond_the_pace_wait_their_turn_and_one_that_would_wait_too_long_is_refused() {
    use chittychat::pace::{JoinRate, MAX_JOIN_WAIT};
    // Two joins a second, one at once: the first goes at once, the n-th waits
    // (n - 1) / 2 s, so eleven fit within the longest wait (5 s) and the twelfth
    // does not.
    let server = TestServer::start(ServerConfig {
        join_rate: Some(JoinRate {
            per_second: NonZeroU32::new(2).unwrap(),
            burst: NonZeroU32::new(1).unwrap(),
        }),
        ..ServerConfig::default()
    })
    .await;
    let admitted = (MAX_JOIN_WAIT.as_secs() * 2 + 1) as usize;
    let mut channels = Vec::new();
    for _ in 0..=admitted {
        channels.push(connect(&server.url()).await.unwrap());
    }
    let started = Instant::now();
    let joins: Vec<_> = channels
        .into_iter()
        .enumerate()
        .map(|(i, channel)| {
            tokio::spawn(async move { Session::join(channel, &format!("p{i}")).await })
        })
        .collect();
    let mut joined = Vec::new();
    let mut refused = Vec::new();
    for join in joins {
        match within(DEADLINE, "a paced join", join).await.unwrap() {
            Ok(session) => joined.push(session),
            Err(err) => refused.push(err),
        }
    }
    assert_eq!(joined.len(), admitted, "refused: {refused:?}");
    let [err] = refused.as_slice() else {
        panic!("expected one refusal, got {refused:?}");
    };
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    assert!(
        err.to_string()
            .contains("too many joins at once: the server admits 2 joins a second; retry in "),
        "{err}"
    );
    let retry = err.retry_after().expect("a retry time");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_millis(500),
        "{retry:?}"
    );
    // The last one admitted waited its turn: five seconds after the first.
    assert!(
        started.elapsed() >= MAX_JOIN_WAIT,
        "{:?}",
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn the_client_waits_and_joins_again_when_joins_are_busy() {
    // One join a second: six joins take every turn of the next five seconds, and a
    // seventh is refused, so the queue is full when the client comes.
    let mut server = ServerProcess::start(&["--join-rate", "1", "--join-burst", "1"]).await;
    let url = server.url();
    let mut waiting = Vec::new();
    for i in 0..7 {
        let channel = connect(&url).await.unwrap();
        waiting.push(tokio::spawn(async move {
            Session::join(channel, &format!("early{i}")).await
        }));
    }
    let line = server.await_log("refused").await;
    assert_eq!(line["rpc"], "Join", "{line}");
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("too many joins at once"),
        "{line}"
    );

    let mut client = fixture::ClientProcess::start_plain(&url, "patient", &[]);
    let line = server.await_log("refused").await;
    assert_eq!(line["participant"], "patient", "{line}");
    // Refused once, the client says so, waits as told and joins.
    client
        .stderr
        .await_line("the client's notice", |line| {
            line.starts_with("chittychat-client: the server is busy admitting joins; joining in ")
        })
        .await;
    within(
        DEADLINE,
        "the client's join",
        client.await_joined("patient"),
    )
    .await;
    let (status, _stdout, mut stderr) = client.finish().await;
    assert!(status.success(), "{:?}", stderr.drain());
    for join in waiting {
        let _ = join.await;
    }
}
