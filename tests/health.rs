//! The gRPC health service and server reflection, driven with the clients of the
//! `tonic-health` and `tonic-reflection` crates against a real server, and the
//! `chittychat-server --health-check` probe run as a real binary.

mod fixture;

use chittychat::client::Session;
use chittychat::health::CHAT_SERVICE;
use chittychat::health_probe::{self, Probed};
use chittychat::server::ServerConfig;
use fixture::{TestServer, WithoutUserSettings};
use std::process::Command;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

/// How long any awaited condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

async fn start_server() -> TestServer {
    TestServer::start(ServerConfig::default()).await
}

async fn check(channel: Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?
        .into_inner();
    Ok(ServingStatus::try_from(answer.status).expect("a known status"))
}

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_chat_service() {
    let server = start_server().await;
    for service in ["", CHAT_SERVICE] {
        let status = check(server.channel().await, service).await.expect("check");
        assert_eq!(status, ServingStatus::Serving, "service {service:?}");
    }
    let unknown = check(server.channel().await, "no.such.Service")
        .await
        .expect_err("an unknown service is not found");
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn health_turns_not_serving_when_shutdown_begins() {
    let mut server = start_server().await;
    // A present participant keeps the server in its grace period for a while.
    let (_session, _events) = Session::join(server.channel().await, "stayer")
        .await
        .expect("join");
    let mut health = HealthClient::new(server.channel().await);
    let mut watches = Vec::new();
    for service in ["", CHAT_SERVICE] {
        let mut watch = health
            .watch(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .expect("watch")
            .into_inner();
        let first = tokio::time::timeout(DEADLINE, watch.next())
            .await
            .expect("first status in time")
            .expect("a status")
            .expect("no error");
        assert_eq!(first.status(), ServingStatus::Serving, "{service:?}");
        watches.push((service, watch));
    }
    server.begin_stop();
    for (service, mut watch) in watches {
        let next = tokio::time::timeout(DEADLINE, watch.next())
            .await
            .expect("a status change in time")
            .expect("a status")
            .expect("no error");
        assert_eq!(next.status(), ServingStatus::NotServing, "{service:?}");
    }
    server.stop().await;
}

async fn reflect(channel: Channel, request: MessageRequest) -> MessageResponse {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection")
        .into_inner();
    let answer: ServerReflectionResponse = tokio::time::timeout(DEADLINE, answers.next())
        .await
        .expect("an answer in time")
        .expect("an answer")
        .expect("no error");
    answer.message_response.expect("a response")
}

#[tokio::test]
async fn reflection_lists_and_describes_the_services() {
    let server = start_server().await;
    let MessageResponse::ListServicesResponse(list) = reflect(
        server.channel().await,
        MessageRequest::ListServices(String::new()),
    )
    .await
    else {
        panic!("expected a list of services");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        CHAT_SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }

    let MessageResponse::FileDescriptorResponse(files) = reflect(
        server.channel().await,
        MessageRequest::FileContainingSymbol(format!("{CHAT_SERVICE}.Publish")),
    )
    .await
    else {
        panic!("expected the file that defines Publish");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    // The encoded descriptor names its file and the messages a tool needs to call it.
    let file = String::from_utf8_lossy(&files.file_descriptor_proto[0]);
    assert!(file.contains("chittychat/v1/chittychat.proto"), "{file}");
    assert!(file.contains("PublishRequest"), "{file}");
}

#[tokio::test]
async fn probe_reports_serving_and_unreachable() {
    let server = start_server().await;
    assert_eq!(
        health_probe::probe(&server.url(), "").await.expect("probe"),
        Probed::Serving
    );
    let closed = closed_port_url().await;
    let err = health_probe::probe(&closed, "")
        .await
        .expect_err("nothing listens there");
    assert!(err.to_string().contains("cannot reach"), "{err}");
}

/// The URL of a port nothing listens on.
async fn closed_port_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("local address");
    drop(listener);
    format!("http://{address}")
}

fn run_health_check(listen: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_chittychat-server"))
        .args(["--health-check", "--listen", listen])
        .without_user_settings()
        .output()
        .expect("run chittychat-server --health-check")
}

#[tokio::test]
async fn health_check_flag_exits_zero_when_serving_and_one_otherwise() {
    let server = start_server().await;
    let listen = server.addr.to_string();
    let ok = tokio::task::spawn_blocking(move || run_health_check(&listen))
        .await
        .expect("probe task");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("is SERVING"), "{stdout}");

    let closed = closed_port_url().await;
    let closed = closed.trim_start_matches("http://").to_owned();
    let down = tokio::task::spawn_blocking(move || run_health_check(&closed))
        .await
        .expect("probe task");
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert_eq!(down.status.code(), Some(1), "{down:?}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("chittychat-server: error: cannot reach"),
        "{stderr}"
    );
}
