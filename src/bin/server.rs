//! `chittychat-server`: parses the command line, sets up logging, binds the listener
//! and serves until SIGINT or SIGTERM; or, with `--health-check`, probes a running
//! server.

use anyhow::Context;
use chittychat::health::{self, Probed};
use chittychat::hub::{DEFAULT_QUEUE_DEPTH, HubConfig};
use chittychat::logging::{self, LogFormat};
use chittychat::server::{self, DEFAULT_LISTEN, ServerConfig};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::signal::unix::{SignalKind, signal};

/// The Chitty-Chat server: holds the participants and a Lamport clock, and
/// broadcasts every message, join and leave to everyone present.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on; port 0 picks a free port (the bound address is logged).
    #[arg(long, env = "CHITTYCHAT_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: String,
    /// How many events may wait for one participant before it is disconnected as
    /// too slow (and announced as having left).
    #[arg(long, env = "CHITTYCHAT_QUEUE_DEPTH", default_value_t = DEFAULT_QUEUE_DEPTH,
          value_parser = clap::value_parser!(u32).range(1..))]
    queue_depth: u32,
    /// Log format: text for people, json for tools (one object per line).
    #[arg(long, env = "CHITTYCHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Append logs to this file instead of stderr.
    #[arg(long, env = "CHITTYCHAT_LOG_FILE")]
    log_file: Option<PathBuf>,
    /// Do not serve: ask the server listening at --listen (over loopback when it
    /// listens on all addresses) whether it is serving, through the gRPC health
    /// service, print one line and exit: 0 serving, 1 not serving or unreachable.
    /// Container health checks use this.
    #[arg(long)]
    health_check: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if args.health_check {
        return Ok(health_check(&args.listen).await);
    }
    let _log = logging::init(args.log_format, args.log_file.as_deref(), "info")
        .with_context(|| format!("cannot open the log file {:?}", args.log_file))?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "Chitty-Chat server listening");
    let mut terminate = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    };
    let config = ServerConfig {
        hub: HubConfig {
            queue_depth: args.queue_depth as usize,
        },
    };
    server::run(listener, config, shutdown).await?;
    tracing::info!("Chitty-Chat server stopped");
    Ok(ExitCode::SUCCESS)
}

/// Probes the server at `listen`; logs nothing, so a probe never writes into the
/// server's log file.
async fn health_check(listen: &str) -> ExitCode {
    let url = health::probe_url(listen);
    match health::probe(&url, "").await {
        Ok(Probed::Serving) => {
            println!("chittychat-server: the server at {url} is SERVING");
            ExitCode::SUCCESS
        }
        Ok(Probed::NotServing(status)) => {
            eprintln!("chittychat-server: error: the server at {url} is {status}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("chittychat-server: error: {err}");
            ExitCode::FAILURE
        }
    }
}
