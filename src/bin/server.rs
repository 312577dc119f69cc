//! `chittychat-server`: parses the command line, sets up logging, binds the listener
//! and serves until SIGINT or SIGTERM; or, with `--health-check`, probes a running
//! server.

use anyhow::Context;
use bytes::Bytes;
use chittychat::cli::KeepaliveArgs;
use chittychat::cluster::{self, ClusterConfig};
use chittychat::connection::{
    ConnectionLimits, CrowdPriority, DEFAULT_CROWD_PRIORITY, DEFAULT_JOIN_TIMEOUT,
    DEFAULT_MAX_STREAMS_PER_CONNECTION, DEFAULT_SEND_TIMEOUT,
};
use chittychat::health_probe::{self, Probed};
use chittychat::log::{DEFAULT_HISTORY_LIMIT, Log, LogConfig, Recovered, Retention, Storage};
use chittychat::log_schema::{field, message};
use chittychat::logging::{self, LogFormat};
use chittychat::pace::{DEFAULT_JOIN_BURST, DEFAULT_JOIN_RATE, JoinRate};
use chittychat::room::{
    DEFAULT_JOIN_HISTORY, DEFAULT_MAX_PARTICIPANTS, DEFAULT_PUBLISH_BURST, DEFAULT_PUBLISH_RATE,
    MAX_HISTORY_PAGE, PublishRate, RoomConfig,
};
use chittychat::server::{self, DEFAULT_LISTEN, ServerConfig};
use chittychat::transport::{DEFAULT_MAX_REQUEST_BYTES, JoinSecret, Seconds, TlsIdentity};
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusBuilder;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};

/// Run a Chitty-Chat server: it holds the participants and a Lamport clock, keeps
/// the conversation in an event log, and broadcasts every message, join and leave
/// to everyone present.
#[derive(Debug, Parser)]
#[command(name = "chittychat-server", version, after_help = AFTER_HELP)]
struct Args {
    /// Address to listen on; port 0 picks a free port (the bound address is logged).
    #[arg(long, env = "CHITTYCHAT_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: String,
    /// Keep the event log in this directory (created on first start). Default: the
    /// user's data directory, $XDG_DATA_HOME/chittychat or ~/.local/share/chittychat.
    #[arg(
        long,
        env = "CHITTYCHAT_DATA_DIR",
        value_name = "DIR",
        conflicts_with = "ephemeral"
    )]
    data_dir: Option<PathBuf>,
    /// Keep the event log in memory only: history, resume and publish ids are
    /// forgotten when the server stops.
    #[arg(long, env = "CHITTYCHAT_EPHEMERAL")]
    ephemeral: bool,
    /// How many events the log keeps; older ones are trimmed. A client that was
    /// away for longer is told how many it missed.
    #[arg(long, env = "CHITTYCHAT_HISTORY_LIMIT", default_value_t = DEFAULT_HISTORY_LIMIT,
          value_parser = clap::value_parser!(u64).range(1..))]
    history_limit: u64,
    /// Trim events older than this many seconds too. Default: keep them however old.
    #[arg(long, env = "CHITTYCHAT_HISTORY_MAX_AGE", value_name = "SECONDS")]
    history_max_age: Option<Seconds>,
    /// How many past events a newcomer sees before its join notice when its client
    /// does not ask for a number (at most 1000).
    #[arg(long, env = "CHITTYCHAT_JOIN_HISTORY", default_value_t = DEFAULT_JOIN_HISTORY,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_HISTORY_PAGE)))]
    join_history: u32,
    /// How many participants may be present at once; Join beyond it gets
    /// RESOURCE_EXHAUSTED ("server full").
    #[arg(long, env = "CHITTYCHAT_MAX_PARTICIPANTS", default_value_t = DEFAULT_MAX_PARTICIPANTS,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_participants: u32,
    /// How many messages a second each participant may publish, sustained; a
    /// Publish beyond it gets RESOURCE_EXHAUSTED saying when to retry. 0 turns
    /// the limit off.
    #[arg(long, env = "CHITTYCHAT_PUBLISH_RATE", default_value_t = DEFAULT_PUBLISH_RATE)]
    publish_rate: u32,
    /// How many messages each participant may publish at once after a quiet spell.
    #[arg(long, env = "CHITTYCHAT_PUBLISH_BURST", default_value_t = DEFAULT_PUBLISH_BURST,
          value_parser = clap::value_parser!(u32).range(1..))]
    publish_burst: u32,
    /// How many joins a second the server admits, server-wide; a Join beyond it
    /// waits its turn (up to 5 s, else RESOURCE_EXHAUSTED saying when to retry),
    /// since everyone present hears every join. 0 turns the pace off.
    #[arg(long, env = "CHITTYCHAT_JOIN_RATE", default_value_t = DEFAULT_JOIN_RATE)]
    join_rate: u32,
    /// How many joins the server admits at once after a quiet spell.
    #[arg(long, env = "CHITTYCHAT_JOIN_BURST", default_value_t = DEFAULT_JOIN_BURST,
          value_parser = clap::value_parser!(u32).range(1..))]
    join_burst: u32,
    /// The largest request, in bytes once encoded, the server decodes; a larger one
    /// gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "CHITTYCHAT_MAX_REQUEST_BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES as u32,
          value_parser = clap::value_parser!(u32).range(64..))]
    max_request_bytes: u32,
    #[command(flatten)]
    keepalive: KeepaliveArgs,
    /// How many connections may be open at once; one more is closed as soon as it
    /// is accepted. Default: the file-descriptor limit less 256.
    #[arg(long, env = "CHITTYCHAT_MAX_CONNECTIONS",
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
    /// Seconds a connection may go without a participant (a client that joined and
    /// has not left) before the server closes it: each connection is given between
    /// this and a fifth more, so that connections that came together are not all
    /// closed together.
    #[arg(long, env = "CHITTYCHAT_JOIN_TIMEOUT", value_name = "SECONDS",
          default_value_t = Seconds(DEFAULT_JOIN_TIMEOUT))]
    join_timeout: Seconds,
    /// Seconds a connection's socket may accept no data while the server has some to
    /// send (the client stopped reading) before the server closes it.
    #[arg(long, env = "CHITTYCHAT_SEND_TIMEOUT", value_name = "SECONDS",
          default_value_t = Seconds(DEFAULT_SEND_TIMEOUT))]
    send_timeout: Seconds,
    /// How many HTTP/2 streams (calls in progress, a feed included) one connection
    /// may have open at once; a client waits for a free one beyond it.
    #[arg(long, env = "CHITTYCHAT_MAX_STREAMS", default_value_t = DEFAULT_MAX_STREAMS_PER_CONNECTION,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_streams: u32,
    /// The CPU priority of the threads that serve crowds: connections that arrive
    /// more than 30 within a tenth of a second, such as a flood, are served at it
    /// for as long as they live, so that they take the CPU the others leave over.
    /// A niceness to lower by, 1 to 19; 0 serves them like the rest; idle (Linux's
    /// SCHED_IDLE) serves them only on CPU nothing else on the machine wants,
    /// which suits a machine that serves chat alone.
    #[arg(long, alias = "crowd-niceness", env = "CHITTYCHAT_CROWD_PRIORITY",
          value_name = "NICENESS|idle", default_value_t = DEFAULT_CROWD_PRIORITY)]
    crowd_priority: CrowdPriority,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key. Clients then
    /// connect with https:// URLs.
    #[arg(
        long,
        env = "CHITTYCHAT_TLS_CERT",
        value_name = "PEM_FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(
        long,
        env = "CHITTYCHAT_TLS_KEY",
        value_name = "PEM_FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Require this secret of everyone who joins (Join without it gets
    /// UNAUTHENTICATED). Prefer the environment variable or --join-secret-file:
    /// other users of the machine can read a command line.
    #[arg(
        long,
        env = "CHITTYCHAT_JOIN_SECRET",
        value_name = "SECRET",
        hide_env_values = true,
        conflicts_with = "join_secret_file"
    )]
    join_secret: Option<String>,
    /// Require the secret in this file (surrounding whitespace ignored) of everyone
    /// who joins.
    #[arg(long, env = "CHITTYCHAT_JOIN_SECRET_FILE", value_name = "FILE")]
    join_secret_file: Option<PathBuf>,
    /// Serve as a node of a cluster whose log is a NATS JetStream stream on these
    /// servers (comma-separated, nats://HOST:PORT); the node's own log is then in
    /// memory, rebuilt from the stream. Needs --node.
    #[arg(long, env = "CHITTYCHAT_NATS", value_name = "URLS", value_delimiter = ',',
          requires = "node", conflicts_with_all = ["data_dir", "ephemeral"])]
    nats: Vec<String>,
    /// This node's name in the cluster, unique among its nodes (letters, digits,
    /// '-', '_'); a node restarted under its name retires its earlier run.
    #[arg(long, env = "CHITTYCHAT_NODE", value_name = "NAME", requires = "nats",
          value_parser = parse_node_name)]
    node: Option<String>,
    /// The JetStream stream that holds the cluster's log.
    #[arg(long, env = "CHITTYCHAT_NATS_STREAM", value_name = "NAME", default_value = cluster::DEFAULT_STREAM,
          value_parser = parse_node_name)]
    nats_stream: String,
    /// How many NATS servers keep a copy of the stream, when this node is the one
    /// that creates it (3 on a three-server NATS cluster).
    #[arg(long, env = "CHITTYCHAT_NATS_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    nats_replicas: u8,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0 picks a free port;
    /// the bound address is logged). Off by default.
    #[arg(long, env = "CHITTYCHAT_METRICS", value_name = "ADDR")]
    metrics: Option<String>,
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

/// The help's closing words.
const AFTER_HELP: &str = "\
Environment: each flag may instead be set in the variable shown with it. RUST_LOG
filters the log (default: info).

Every refusal (a limit reached, a bad request, a missing join secret) is logged at
warn level as \"refused\" with the participant's name.";

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("chittychat-server: error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    if args.health_check {
        return runtime.block_on(health_check(&args.listen));
    }
    let log = match logging::init(args.log_format, args.log_file.as_deref(), "info") {
        Ok(log) => log,
        Err(err) => {
            // Only opening the file can fail, so there is one.
            let path = args
                .log_file
                .as_deref()
                .unwrap_or(std::path::Path::new("-"));
            eprintln!(
                "chittychat-server: error: cannot open the log file {}: {err}",
                path.display()
            );
            return ExitCode::FAILURE;
        }
    };
    return_freed_memory_periodically();
    let served = runtime.block_on(serve(args));
    // The tasks still running (a cluster's NATS connection, say) end with the
    // runtime, and may log as they do: while the log is still open, so that a
    // JSON log stays JSON to its last line.
    drop(runtime);
    drop(log);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, the causes joined: what a person needs, never a backtrace.
            eprintln!("chittychat-server: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let config = server_config(&args)?;
    // Metrics before anything counts.
    if let Some(address) = &args.metrics {
        serve_metrics(address).await?;
    }
    // The log first: a data directory that cannot be used, or a cluster that
    // cannot be reached, is refused before the server takes its port.
    let log = match &config.cluster {
        Some(cluster) => {
            Opened::Node(cluster::start(cluster, config.room.clone(), config.log.retention).await?)
        }
        None => {
            if let Storage::Disk(dir) = &config.log.storage {
                tracing::info!(data_dir = %dir.display(), "event log on disk");
            }
            let (log, recovered) = Log::open(&config.log)?;
            Opened::Alone(log, recovered)
        }
    };
    let listener = bind(&args.listen).await?;
    // Every participant holds a connection, so lift the soft descriptor limit
    // (often 1024) to the hard one; 10,000 participants need about 10,000.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "file-descriptor limit"),
        Err(err) => tracing::warn!(error = %err, "cannot raise the file-descriptor limit"),
    }
    let address = listener.local_addr()?;
    tracing::info!({ field::ADDRESS } = %address, "{}", message::LISTENING);
    let mut terminate = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    };
    let served = match log {
        Opened::Alone(log, recovered) => {
            server::run_with_log(listener, config, log, recovered, shutdown).await
        }
        Opened::Node(node) => server::run_node(listener, config, node, shutdown).await,
    };
    if let Err(err) = &served {
        tracing::error!(error = %err, "Chitty-Chat server stopped");
    } else {
        tracing::info!("Chitty-Chat server stopped");
    }
    Ok(served?)
}

/// Installs the Prometheus recorder and serves what it holds at `/metrics` on
/// `address`, in a task of its own; logs the address bound.
async fn serve_metrics(address: &str) -> anyhow::Result<()> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .context("cannot set up metrics")?;
    chittychat::metrics::describe();
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot serve metrics on {address}"))?;
    tracing::info!(address = %listener.local_addr()?, "metrics listening");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors, say: wait rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let handle = handle.clone();
            let answer = service_fn(move |request: hyper::Request<Incoming>| {
                let response = if request.uri().path() == "/metrics" {
                    hyper::Response::builder()
                        .header("content-type", "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(handle.render())))
                } else {
                    hyper::Response::builder()
                        .status(404)
                        .body(Full::new(Bytes::from_static(b"try /metrics\n")))
                };
                async move { response }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), answer)
                    .await;
            });
        }
    });
    Ok(())
}

/// The log the server serves: its own, or its cluster's.
enum Opened {
    Alone(Arc<Log>, Recovered),
    Node(cluster::Node),
}

/// A node's or a stream's name: what NATS accepts in a stream name and a subject.
fn parse_node_name(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(text.to_owned())
    } else {
        Err("1 to 64 ASCII letters, digits, '-' or '_'".to_owned())
    }
}

/// Probes the server at `listen`; logs nothing, so a probe never writes into the
/// server's log file.
async fn health_check(listen: &str) -> ExitCode {
    let url = health_probe::probe_url(listen);
    match health_probe::probe(&url, "").await {
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

fn server_config(args: &Args) -> anyhow::Result<ServerConfig> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsIdentity::from_files(cert, key)?),
        _ => None,
    };
    let join_secret = match (&args.join_secret, &args.join_secret_file) {
        (Some(text), _) => Some(JoinSecret::new(text)?),
        (None, Some(path)) => Some(JoinSecret::from_file(path)?),
        (None, None) => None,
    };
    let publish_rate = NonZeroU32::new(args.publish_rate).map(|per_second| PublishRate {
        per_second,
        burst: NonZeroU32::new(args.publish_burst).unwrap_or(NonZeroU32::MIN),
    });
    let join_rate = NonZeroU32::new(args.join_rate).map(|per_second| JoinRate {
        per_second,
        burst: NonZeroU32::new(args.join_burst).unwrap_or(NonZeroU32::MIN),
    });
    let storage = if args.ephemeral {
        Storage::Memory
    } else {
        match &args.data_dir {
            Some(dir) => Storage::Disk(dir.clone()),
            None => Storage::Disk(default_data_dir().context(
                "no data directory: set HOME or XDG_DATA_HOME, pass --data-dir, or run --ephemeral",
            )?),
        }
    };
    Ok(ServerConfig {
        room: RoomConfig {
            max_participants: args.max_participants as usize,
            publish_rate,
            join_history: args.join_history,
        },
        log: LogConfig {
            storage,
            retention: Retention {
                max_events: args.history_limit,
                max_age: args.history_max_age.map(|age| age.0),
            },
        },
        keepalive: args.keepalive.keepalive(),
        max_request_bytes: args.max_request_bytes as usize,
        tls,
        join_secret,
        join_rate,
        connections: ConnectionLimits {
            max_connections: args.max_connections.map(|max| max as usize),
            join_timeout: args.join_timeout.0,
            send_timeout: args.send_timeout.0,
            max_streams: args.max_streams,
            crowd_priority: args.crowd_priority,
        },
        cluster: args.node.as_ref().map(|node| ClusterConfig {
            servers: args.nats.clone(),
            node: node.clone(),
            stream: args.nats_stream.clone(),
            replicas: usize::from(args.nats_replicas),
        }),
    })
}

/// Binds the listening socket; the errors a newcomer meets say what to do.
async fn bind(listen: &str) -> anyhow::Result<tokio::net::TcpListener> {
    use std::io::ErrorKind;
    match chittychat::connection::listen(listen).await {
        Ok(listener) => Ok(listener),
        Err(err) if err.kind() == ErrorKind::AddrInUse => Err(anyhow::anyhow!(
            "{listen} is already in use: is another chittychat-server running? choose \
             another with --listen"
        )),
        Err(err) if err.kind() == ErrorKind::InvalidInput => Err(anyhow::anyhow!(
            "cannot listen on \"{listen}\": {err}; --listen takes HOST:PORT, such as \
             127.0.0.1:50051 or 0.0.0.0:50051"
        )),
        Err(err) if err.kind() == ErrorKind::AddrNotAvailable => Err(anyhow::anyhow!(
            "cannot listen on {listen}: no network interface of this machine has that \
             address; use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        )),
        Err(err) if err.kind() == ErrorKind::PermissionDenied => Err(anyhow::anyhow!(
            "cannot listen on {listen}: permission denied (ports below 1024 need \
             privileges); choose a port above 1023 with --listen"
        )),
        Err(err) => Err(err).with_context(|| format!("cannot listen on {listen}")),
    }
}

/// The user's data directory for Chitty-Chat: `$XDG_DATA_HOME/chittychat`, else
/// `~/.local/share/chittychat` (the XDG Base Directory rule; relative paths in
/// `XDG_DATA_HOME` are ignored, as the rule says).
fn default_data_dir() -> Option<PathBuf> {
    let from_env = |name| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    from_env("XDG_DATA_HOME")
        .or_else(|| from_env("HOME").map(|home| home.join(".local/share")))
        .map(|base| base.join("chittychat"))
}

/// jemalloc, not the system's allocator: a Publish allocates and frees on whichever
/// worker thread polls it, and jemalloc's per-thread caches take about a third less
/// CPU per accepted publish than glibc's arenas did (docs/performance.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How often the server asks jemalloc to hand back the pages freed since
/// ([`return_freed_memory`]).
const FREED_MEMORY_INTERVAL: Duration = Duration::from_secs(5);

/// Starts a thread that hands freed memory back to the system every
/// [`FREED_MEMORY_INTERVAL`]. jemalloc returns the pages a burst freed (a siege's
/// thousands of connections, say) over its decay time, 10 s, but only when the
/// program allocates again: a server left idle afterwards would keep them. Its own
/// background threads would do this too, but cost a few threads and, under a
/// siege, a higher peak and p99 (docs/hostile-peers.md, a fourteenth look); one
/// thread that wakes every few seconds did not move the p99.
fn return_freed_memory_periodically() {
    let started = std::thread::Builder::new()
        .name("chittychat-free".into())
        .spawn(|| {
            loop {
                std::thread::sleep(FREED_MEMORY_INTERVAL);
                if let Err(code) = return_freed_memory() {
                    tracing::warn!(code, "jemalloc refused to return freed memory");
                    return;
                }
            }
        });
    if let Err(err) = started {
        tracing::warn!(error = %err, "cannot start the thread that returns freed memory");
    }
}

/// Asks jemalloc to return to the system, in every arena, the freed pages that its
/// decay time says are due; an error holds the code mallctl returned.
fn return_freed_memory() -> Result<(), i32> {
    // "arena.<MALLCTL_ARENAS_ALL>.decay", as jemalloc's manual gives it: no value in,
    // none out.
    // SAFETY: a NUL-terminated name and null pointers with a zero length, which is
    // what this control takes; 4096 is MALLCTL_ARENAS_ALL (jemalloc does not check
    // an arena index past its arenas); it touches only jemalloc's own state.
    let code = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.decay".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    match code {
        0 => Ok(()),
        code => Err(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jemalloc_takes_the_request_to_return_freed_memory() {
        // Something to return first; a wrong control name is refused (ENOENT).
        let freed: Vec<Vec<u8>> = (0..64).map(|_| vec![1; 64 * 1024]).collect();
        drop(freed);
        assert_eq!(return_freed_memory(), Ok(()));
    }
}
