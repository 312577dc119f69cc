//! The standard gRPC health service (`grpc.health.v1`) and server reflection, which
//! make the server usable by the tools people already have (grpcurl,
//! grpc_health_probe, evans), and the probe behind `chittychat-server --health-check`.
//!
//! Health reports `SERVING` for the whole server (service `""`) and for
//! [`CHAT_SERVICE`] while the server is up, and `NOT_SERVING` for both from the moment
//! shutdown begins, so a load balancer or an orchestrator stops sending newcomers.

use crate::client::{ClientError, connect};
use crate::pb;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tonic_health::ServingStatus;
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::HealthReporter;
use tonic_reflection::server::{v1, v1alpha};

/// The fully qualified name of the chat service, as the health service knows it.
pub const CHAT_SERVICE: &str = pb::chitty_chat_server::SERVICE_NAME;

/// How long `--health-check` waits for the whole probe (connect and answer). Docker
/// and Kubernetes run the probe with their own timeout; this one keeps it finite
/// when they do not.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The health service, already reporting `SERVING` for the server and the chat
/// service, and the reporter that flips both to `NOT_SERVING` at shutdown.
pub(crate) async fn serving() -> (HealthReporter, HealthServer<impl Health>) {
    let (reporter, service) = tonic_health::server::health_reporter();
    set_all(&reporter, ServingStatus::Serving).await;
    (reporter, service)
}

/// Reports `NOT_SERVING` for the server and the chat service.
pub(crate) async fn shutting_down(reporter: &HealthReporter) {
    set_all(reporter, ServingStatus::NotServing).await;
}

async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(CHAT_SERVICE, status).await;
}

/// The reflection service in both versions tools use (`v1`, and `v1alpha` for older
/// grpcurl and evans), describing the chat service, the health service and itself.
#[allow(clippy::type_complexity)]
pub(crate) fn reflection() -> Result<
    (
        v1::ServerReflectionServer<impl v1::ServerReflection>,
        v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// The URL a probe on the server's own host uses to reach a server listening on
/// `listen`: an unspecified address (`0.0.0.0`, `[::]`) becomes the loopback address.
pub fn probe_url(listen: &str) -> String {
    match listen.parse::<SocketAddr>() {
        Ok(mut address) => {
            match address.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => {
                    address.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST))
                }
                IpAddr::V6(ip) if ip.is_unspecified() => {
                    address.set_ip(IpAddr::V6(Ipv6Addr::LOCALHOST))
                }
                _ => {}
            }
            format!("http://{address}")
        }
        // A host name, as `bind` accepts it.
        Err(_) => format!("http://{listen}"),
    }
}

/// What a health probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probed {
    /// The server answered `SERVING`.
    Serving,
    /// The server answered, but not `SERVING` (shutting down, or unknown).
    NotServing(&'static str),
}

/// Asks the server at `url` for the health of `service` (`""` for the whole server),
/// within [`PROBE_TIMEOUT`].
pub async fn probe(url: &str, service: &str) -> Result<Probed, ClientError> {
    let ask = async {
        let channel = connect(url).await?;
        let request = HealthCheckRequest {
            service: service.to_owned(),
        };
        HealthClient::new(channel)
            .check(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| ClientError::Rpc {
                rpc: "Check",
                status,
            })
    };
    let answer: HealthCheckResponse =
        tokio::time::timeout(PROBE_TIMEOUT, ask)
            .await
            .map_err(|_| ClientError::Unreachable {
                url: url.to_owned(),
                reason: format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
            })??;
    Ok(match WireStatus::try_from(answer.status) {
        Ok(WireStatus::Serving) => Probed::Serving,
        Ok(status) => Probed::NotServing(status.as_str_name()),
        Err(_) => Probed::NotServing("UNKNOWN"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_url_reaches_unspecified_addresses_over_loopback() {
        assert_eq!(probe_url("0.0.0.0:50051"), "http://127.0.0.1:50051");
        assert_eq!(probe_url("[::]:7"), "http://[::1]:7");
        assert_eq!(probe_url("10.1.2.3:9"), "http://10.1.2.3:9");
        assert_eq!(probe_url("localhost:9"), "http://localhost:9");
    }

    #[test]
    fn reflection_accepts_the_descriptors() {
        assert!(reflection().is_ok());
    }

    #[test]
    fn chat_service_name_is_the_proto_name() {
        assert_eq!(CHAT_SERVICE, "chittychat.v1.ChittyChat");
    }
}
