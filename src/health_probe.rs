//! The health probe behind `chittychat-server --health-check`: a client of the
//! standard gRPC health service that [`crate::health`] serves.

use crate::client::{ClientError, connect};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// How long `--health-check` waits for the whole probe (connect and answer). Docker
/// and Kubernetes run the probe with their own timeout; this one keeps it finite
/// when they do not.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

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
}
