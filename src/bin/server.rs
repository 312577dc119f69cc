//! `chittychat-server`: parses the command line, sets up logging, binds the listener
//! and serves until SIGINT or SIGTERM.

use anyhow::Context;
use chittychat::hub::{DEFAULT_QUEUE_DEPTH, HubConfig};
use chittychat::logging::{self, LogFormat};
use chittychat::server::{self, DEFAULT_LISTEN, ServerConfig};
use clap::Parser;
use std::path::PathBuf;
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _log = logging::init(args.log_format, args.log_file.as_deref(), "info")
        .with_context(|| format!("cannot open the log file {:?}", args.log_file))?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    // Every participant holds a connection, so lift the soft descriptor limit
    // (often 1024) to the hard one; 10,000 participants need about 10,000.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "file-descriptor limit"),
        Err(err) => tracing::warn!(error = %err, "cannot raise the file-descriptor limit"),
    }
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
    Ok(())
}
