//! The standard gRPC health service (`grpc.health.v1`) and server reflection, which
//! make the server usable by the tools people already have (grpcurl,
//! grpc_health_probe, evans). The probe behind `chittychat-server --health-check`,
//! a client, is [`crate::health_probe`].
//!
//! Health reports `SERVING` for the whole server (service `""`) and for
//! [`CHAT_SERVICE`] while the server is up, and `NOT_SERVING` for both from the moment
//! shutdown begins, so a load balancer or an orchestrator stops sending newcomers.
//! A cluster's node also reports `NOT_SERVING` while it cannot reach NATS.

use crate::pb;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_reflection::server::{v1, v1alpha};

/// The fully qualified name of the chat service, as the health service knows it.
pub const CHAT_SERVICE: &str = pb::chitty_chat_server::SERVICE_NAME;

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

/// Reports `SERVING` while `reachable` holds and `NOT_SERVING` while it does not
/// (a cluster's node that cannot reach NATS), until the sender is gone.
pub(crate) async fn follow(
    reporter: HealthReporter,
    mut reachable: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let status = if *reachable.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        set_all(&reporter, status).await;
        if reachable.changed().await.is_err() {
            return;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflection_accepts_the_descriptors() {
        assert!(reflection().is_ok());
    }

    #[test]
    fn chat_service_name_is_the_proto_name() {
        assert_eq!(CHAT_SERVICE, "chittychat.v1.ChittyChat");
    }
}
