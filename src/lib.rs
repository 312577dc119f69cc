//! Chitty-Chat: a small distributed chat service over gRPC that keeps logical time
//! with Lamport timestamps.
//!
//! The library is what a program embeds: the clock, validation, the client, the
//! server and its log. The programs' own code (command lines, logging setup, the
//! client's prompt, scripted participants, the demo, the bench) is built with the
//! `programs` feature, on by default; embed with `default-features = false` to
//! leave it and its dependencies out.
//!
//! A map of the crate:
//! - [`lamport`]: the Lamport clock every process keeps.
//! - [`validate`]: the rules for names and messages, shared by server and client.
//! - [`error`]: the domain's one error type; it knows nothing of gRPC.
//! - [`event`]: the events the server broadcasts.
//! - [`log`]: the ordered, durable event log (in memory or in redb) that every feed,
//!   history page and resume reads.
//! - [`log_schema`]: the field names, messages and causes of the JSON log lines
//!   that the trace tools and the demo read back.
//! - [`room`]: the chat room: participants, sessions, rate limits and the server's
//!   clock; every accepted request becomes one event in the log.
//! - [`feed`]: a participant's cursor into the log.
//! - [`pace`]: the server-wide pace of joins.
//! - [`server`]: the tonic service over the room, and `run`, which serves it.
//! - `status` (private): the one mapping of a domain error to a gRPC status, the
//!   `From<ChatError> for tonic::Status` every refusal goes through.
//! - [`connection`]: each accepted connection: the capped accept loop, the join and
//!   send deadlines, and closing a connection whose participant was cut off.
//! - [`health`]: the gRPC health service and server reflection.
//! - [`health_probe`]: the health probe behind `chittychat-server --health-check`.
//! - [`transport`]: connection settings shared by server and client: keepalive,
//!   the request size limit, TLS files, the join secret and the metadata keys.
//! - [`client`]: the client library: join, publish, leave, with the client's clock.
//! - [`client_app`] (programs): the `chittychat-client` program: prompt or piped input.
//! - [`script`] (programs): scripted participants, for demos and the container test.
//! - [`display`] (programs): how events look on a person's terminal.
//! - [`cli`] (programs): command-line flags the programs share.
//! - [`logging`] (programs): text or JSON logs to stderr or a file.
//! - [`pb`]: the code generated from `proto/`.
//! - [`trace`]: reads a run's JSON logs, checks them and draws space-time diagrams.
//! - [`demo`] (programs): the scripted demonstration run by `chittychat-demo`.
//! - [`wire`]: events encoded once per broadcast, as the server sends them.
//! - [`bench`](mod@bench) (programs): `chittychat-bench`, the load generator and its measurements.

#[cfg(feature = "programs")]
pub mod bench;
#[cfg(feature = "programs")]
pub mod cli;
pub mod client;
#[cfg(feature = "programs")]
pub mod client_app;
pub mod cluster;
pub mod connection;
#[cfg(feature = "programs")]
pub mod demo;
#[cfg(feature = "programs")]
pub mod display;
pub mod error;
pub mod event;
pub mod feed;
pub mod health;
pub mod health_probe;
pub mod lamport;
pub mod log;
pub mod log_schema;
#[cfg(feature = "programs")]
pub mod logging;
pub mod metrics;
pub mod pace;
pub mod pb;
pub mod room;
#[cfg(feature = "programs")]
pub mod script;
pub mod server;
mod status;
pub mod trace;
pub mod transport;
pub mod validate;
pub mod wire;
