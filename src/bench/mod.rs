//! `chittychat-bench`: drives a Chitty-Chat server through the client library, each
//! participant over its own HTTP/2 connection, and measures deliveries, latency,
//! loss and duplication, and the server's CPU and memory.
//!
//! - `load`: the participants and publishers.
//! - `process`: the spawned server and its `/proc` readings ([`cpu_ns`], [`thread_cpu_ns`],
//!   [`run_delay_ns`], [`thread_run_delay_ns`], [`status_kib`]).
//! - `report`: the results ([`Report`]), as a table or JSON.

mod load;
mod process;
mod report;

use crate::cli::AccessArgs;
use crate::client::{ClientError, Session};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use load::{Access, Pace, Shared};
use process::SpawnedServer;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

pub use load::MIN_MESSAGE_CHARS;
pub use process::{
    BENCH_JOIN_RATE, BENCH_PUBLISH_RATE, SERVER_START_TIMEOUT, cpu_ns, run_delay_ns, status_kib,
    thread_cpu_ns, thread_run_delay_ns,
};
pub use report::{HistoryJoined, Joins, Latency, Report, Restarted, Resumed, ServerUsage};

/// How long, after publishing stops, every participant has to receive everything;
/// what has not arrived by then counts as lost.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long joining may take before the bench gives up; a large crowd is allowed
/// more, for the join notices everyone hears.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(300);

/// How long the join storm of `participants` may take: [`JOIN_TIMEOUT`], and 2 µs
/// more for each of the n²/2 join notices, since everyone hears every join (at
/// 50,000 participants, 1.25 billion deliveries).
fn join_deadline(participants: u64) -> Duration {
    JOIN_TIMEOUT + Duration::from_micros(participants.saturating_mul(participants))
}

/// How long idle mode waits after the probe before reading the server's memory.
pub const IDLE_SETTLE: Duration = Duration::from_secs(2);

/// File descriptors the bench needs besides one per participant.
const SPARE_FDS: u64 = 64;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Publishers send as fast as the server accepts, pipelined, bounded by --window.
    Saturate,
    /// Publishers together offer --rate messages a second.
    Rate,
    /// Participants join, one probe is broadcast, then the server's memory is read.
    Idle,
    /// The time until all participants joined and saw every join notice.
    JoinStorm,
    /// One participant leaves, --missed events are published, and it resumes:
    /// the time until it has caught up.
    Resume,
    /// --events are published, the server is killed (SIGKILL) and started again
    /// on its data directory: the time until it serves again.
    Restart,
    /// --history events are published, then --joins newcomers join one after
    /// another, each asking for --history past events: the time until each has
    /// them and its own join notice.
    HistoryJoin,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Saturate => "saturate",
            Mode::Rate => "rate",
            Mode::Idle => "idle",
            Mode::JoinStorm => "join-storm",
            Mode::Resume => "resume",
            Mode::Restart => "restart",
            Mode::HistoryJoin => "history-join",
        }
    }
}

/// How the bench's publishers send their messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublishOver {
    /// One Publish call per message.
    Unary,
    /// One PublishStream per publisher.
    Stream,
}

/// The bench's settings: its command line.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "chittychat-bench",
    version,
    about = "Load generator for Chitty-Chat: measures deliveries/s, latency, loss and \
             duplication, and the server's CPU and memory"
)]
pub struct BenchConfig {
    /// What to measure.
    #[arg(value_enum)]
    pub mode: Mode,
    /// The server to drive: http://host:port, or https://host:port for one that
    /// serves TLS (--tls-ca and --join-secret-file apply to it); for a cluster,
    /// several nodes, comma-separated, over which the participants are spread in
    /// turn. Without it the bench starts chittychat-server at its defaults and
    /// also reports its CPU and memory.
    #[arg(long, value_name = "URL[,URL…]")]
    pub server: Option<String>,
    /// How to get into the server given by --server.
    #[command(flatten)]
    pub access: AccessArgs,
    /// The chittychat-server binary to start (default: next to this binary).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Keep the started server's log at this path (default: a temporary file,
    /// removed at the end).
    #[arg(long)]
    pub server_log: Option<PathBuf>,
    /// Participants to join, each over its own connection.
    #[arg(long, short = 'n', default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub participants: u64,
    /// How many of the participants publish.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub publishers: u64,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 5.0, value_parser = seconds)]
    pub duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0, value_parser = seconds)]
    pub warmup: f64,
    /// Characters per message (at least 17: a mark and the send time).
    #[arg(long, default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(MIN_MESSAGE_CHARS as u64..=crate::validate::MAX_MESSAGE_CHARS as u64))]
    pub message_chars: u64,
    /// Rate mode: messages a second, offered by all publishers together.
    #[arg(long, default_value_t = 1000.0, value_parser = seconds)]
    pub rate: f64,
    /// Saturate mode: how many messages any participant may fall behind what
    /// was published; keep it well below the server's --history-limit.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub window: u64,
    /// Publish calls each publisher keeps outstanding. A durable server answers a
    /// Publish once its commit is synced, so one publisher's rate is what it
    /// keeps in flight over that round trip: 64 left the server idle part of the
    /// time, before the event log too; 256 saturates it.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub inflight: u64,
    /// How the publishers publish: a Publish call per message, or one
    /// PublishStream each, with --inflight messages awaiting their outcome (the
    /// server works on at most 256 of a stream's at once).
    #[arg(long, value_enum, default_value_t = PublishOver::Unary)]
    pub publish_over: PublishOver,
    /// Loopback addresses the participants connect from, in turn: 127.0.0.1,
    /// 127.0.0.2, and so on. One source address reaches a server over only as
    /// many connections as it has ephemeral ports (about 28,000 on Linux). By
    /// default one per 20,000 participants when every server is on 127.0.0.0/8;
    /// otherwise the system chooses.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub source_addresses: Option<u8>,
    /// Participants connecting and joining at the same time.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub join_concurrency: u64,
    /// Resume mode: events published while the participant is away. The report
    /// counts one more: the participant's own leave notice, which it missed too.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub missed: u64,
    /// Restart mode: events in the log before the server is killed (the spawned
    /// server keeps at least this many).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub events: u64,
    /// History-join mode: past events each newcomer asks for (and the log is
    /// filled with first).
    #[arg(long, default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::transport::MAX_HISTORY_PAGE)))]
    pub history: u32,
    /// History-join mode: newcomers that join, one after another.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub joins: u64,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value >= 0.0 => Ok(value),
        _ => Err(format!("\"{text}\" is not a non-negative number")),
    }
}

/// Why a bench run could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The settings cannot work.
    #[error("{0}")]
    Config(String),
    /// The server could not be started or died.
    #[error("{0}")]
    Server(String),
    /// A participant could not connect or join.
    #[error("{what}: {source}")]
    Client {
        /// Who.
        what: String,
        /// Why.
        source: ClientError,
    },
    /// Something did not happen in time.
    #[error("{0}")]
    Timeout(String),
    /// A participant lost its feed while the bench waited for it.
    #[error("{0}")]
    FeedLost(String),
}

/// Raises this process's file-descriptor limit so `participants` connections fit;
/// a spawned server inherits it.
pub fn raise_fd_limit(participants: u64) -> Result<u64, BenchError> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).map_err(|err| {
        BenchError::Config(format!("cannot raise the file-descriptor limit: {err}"))
    })?;
    let needed = participants + SPARE_FDS;
    if limit < needed {
        return Err(BenchError::Config(format!(
            "{participants} participants need {needed} file descriptors, but the limit is {limit}; raise the hard limit (ulimit -Hn)"
        )));
    }
    Ok(limit)
}

/// Runs the bench as `config` says and reports what it measured.
pub async fn run(config: &BenchConfig) -> Result<Report, BenchError> {
    if config.publishers > config.participants {
        return Err(BenchError::Config(format!(
            "--publishers {} exceeds --participants {}",
            config.publishers, config.participants
        )));
    }
    raise_fd_limit(config.participants)?;
    let mut bench = Bench::new(config).await?;
    let (began, joins) = bench.join_everyone().await?;
    let mut report = first_report(config, joins);
    match config.mode {
        Mode::JoinStorm => bench.join_storm(&began, &mut report),
        Mode::Idle => bench.idle(&mut report).await?,
        Mode::Saturate | Mode::Rate => bench.publish_and_drain(&mut report).await,
        Mode::Resume => bench.resume(&mut report).await?,
        Mode::Restart => bench.restart(&mut report).await?,
        Mode::HistoryJoin => bench.history_join(&mut report).await?,
    }
    bench.finish(&mut report);
    Ok(report)
}

/// The bench's view of the server: how to reach it, and its pid when it was spawned.
struct Target {
    access: Arc<Access>,
    spawned: Option<SpawnedServer>,
}

impl Target {
    /// The server `--server` names, or else one the bench starts.
    async fn new(config: &BenchConfig) -> Result<Self, BenchError> {
        if let Some(url) = &config.server {
            let access = external(url, &config.access)?;
            let sources = source_addresses(config, &access.urls)?;
            return Ok(Target {
                access: Arc::new(access.with_sources(sources)),
                spawned: None,
            });
        }
        if config.access.tls_ca.is_some() || config.access.join_secret_file.is_some() {
            return Err(BenchError::Config(
                "--tls-ca and --join-secret-file apply only with --server: the server the bench starts serves plain HTTP and needs no join secret".into(),
            ));
        }
        let server = spawn_server(config).await?;
        let access = Access::plain(server.url());
        let sources = source_addresses(config, &access.urls)?;
        Ok(Target {
            access: Arc::new(access.with_sources(sources)),
            spawned: Some(server),
        })
    }

    fn pid(&self) -> Option<u32> {
        self.spawned.as_ref().map(SpawnedServer::pid)
    }
}

/// How many participants connect from one source address when the bench spreads
/// them (`--source-addresses`): well under the about 28,000 ephemeral ports Linux
/// gives one address, since earlier runs' connections may still hold some.
pub const PARTICIPANTS_PER_SOURCE_ADDRESS: u64 = 20_000;

/// The addresses the participants connect from: 127.0.0.1 up to 127.0.0.N for
/// `--source-addresses N` (or as many as the participants need), or none, where
/// the system chooses.
fn source_addresses(
    config: &BenchConfig,
    urls: &[String],
) -> Result<Vec<std::net::IpAddr>, BenchError> {
    let on_loopback = |url: &String| {
        url.parse::<tonic::codegen::http::Uri>()
            .ok()
            .and_then(|uri| uri.host()?.parse::<std::net::Ipv4Addr>().ok())
            .is_some_and(|ip| ip.is_loopback())
    };
    let all_on_loopback = urls.iter().all(on_loopback);
    let count = match config.source_addresses {
        Some(count) if count > 1 && !all_on_loopback => {
            return Err(BenchError::Config(format!(
                "--source-addresses spreads the connections over 127.0.0.x, so every server must be on 127.0.0.0/8 (given: {})",
                urls.join(",")
            )));
        }
        Some(count) => u64::from(count),
        None if all_on_loopback => config
            .participants
            .div_ceil(PARTICIPANTS_PER_SOURCE_ADDRESS)
            .min(254),
        None => 1,
    };
    if count <= 1 {
        return Ok(Vec::new());
    }
    Ok((1..=count)
        .map(|last| std::net::IpAddr::from([127, 0, 0, last as u8]))
        .collect())
}

/// How to reach the server at `url` that the bench is pointed at: with the TLS
/// authority and join secret `args` name, each read now.
fn external(urls: &str, args: &AccessArgs) -> Result<Access, BenchError> {
    let urls: Vec<String> = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        return Err(BenchError::Config("--server names no server".into()));
    }
    Ok(Access::new(
        urls,
        crate::client::ConnectOptions {
            tls_ca: args
                .tls_ca()
                .map_err(|err| BenchError::Config(format!("{err:#}")))?,
            ..Default::default()
        },
        args.join_secret()
            .map_err(|err| BenchError::Config(format!("{err:#}")))?,
    ))
}

/// Starts chittychat-server with room for what `config` asks of it.
async fn spawn_server(config: &BenchConfig) -> Result<SpawnedServer, BenchError> {
    let binary = match &config.server_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|err| BenchError::Config(format!("cannot find this binary: {err}")))?
            .with_file_name("chittychat-server"),
    };
    let (log, keep) = match &config.server_log {
        Some(path) => (path.clone(), true),
        None => (
            std::env::temp_dir().join(format!(
                "chittychat-bench-server-{}.log",
                std::process::id()
            )),
            false,
        ),
    };
    let history_limit = match config.mode {
        Mode::Restart => config.events.max(crate::log::DEFAULT_HISTORY_LIMIT),
        Mode::Resume => config.missed.max(crate::log::DEFAULT_HISTORY_LIMIT) + 16,
        _ => crate::log::DEFAULT_HISTORY_LIMIT,
    };
    // A publisher's calls in flight, its feed and a spare.
    let streams = config.inflight + 2;
    SpawnedServer::start(
        &binary,
        config.participants,
        history_limit,
        streams,
        log,
        keep,
    )
    .await
}

/// When the join storm began.
struct Began {
    /// The server's CPU time then, when the bench spawned it.
    server_cpu: Option<u64>,
    at: Instant,
}

/// The report as the join storm leaves it: the storm is the measured window until
/// a mode measures one of its own.
fn first_report(config: &BenchConfig, joins: Joins) -> Report {
    Report {
        mode: config.mode.name().into(),
        participants: config.participants as usize,
        publishers: config.publishers as usize,
        message_chars: config.message_chars as usize,
        publish_over: match config.publish_over {
            PublishOver::Unary => "unary",
            PublishOver::Stream => "stream",
        }
        .into(),
        offered_msgs_per_s: (config.mode == Mode::Rate).then_some(config.rate),
        window_s: joins.all_notices_seen_s,
        deliveries: joins.deliveries,
        deliveries_per_s: joins.deliveries as f64 / joins.all_notices_seen_s,
        publishes: 0,
        publishes_per_s: 0.0,
        latency: None,
        publish_latency: None,
        resume: None,
        restart: None,
        history_join: None,
        lost: 0,
        duplicated: 0,
        reordered: 0,
        failures: 0,
        first_failure: None,
        joins,
        server: None,
        load_cpu_percent: None,
    }
}

/// One bench run: the server, the participants and what they received.
///
/// The fields drop in this order: the participants before the server they talk to.
struct Bench<'a> {
    sessions: Vec<Session>,
    shared: Arc<Shared>,
    progress: Progress,
    target: Target,
    config: &'a BenchConfig,
    /// The spawned server's resident memory before anyone joined.
    baseline_rss: Option<u64>,
}

impl<'a> Bench<'a> {
    /// Finds or starts the server; nobody has joined yet.
    async fn new(config: &'a BenchConfig) -> Result<Self, BenchError> {
        let target = Target::new(config).await?;
        let participants = config.participants as usize;
        Ok(Self {
            sessions: Vec::with_capacity(participants),
            shared: Arc::new(Shared::new(participants, config.publish_over)),
            progress: Progress::new(),
            baseline_rss: target.pid().and_then(|pid| status_kib(pid, "VmRSS")),
            target,
            config,
        })
    }

    /// Joins every participant, `--join-concurrency` at a time, and waits until
    /// each has seen every later join notice: the join storm every mode starts with.
    async fn join_everyone(&mut self) -> Result<(Began, Joins), BenchError> {
        let n = self.config.participants as usize;
        let began = Began {
            server_cpu: self.target.pid().and_then(cpu_ns),
            at: Instant::now(),
        };
        let gate = Arc::new(Semaphore::new(self.config.join_concurrency as usize));
        let handles: Vec<_> = (0..n)
            .map(|who| {
                tokio::spawn(load::join(
                    Arc::clone(&self.target.access),
                    who,
                    Arc::clone(&self.shared),
                    Arc::clone(&gate),
                ))
            })
            .collect();
        self.progress.bar(n as u64, "joining");
        for handle in handles {
            let session = handle
                .await
                .map_err(|err| BenchError::Server(format!("a joining task failed: {err}")))??;
            self.sessions.push(session);
            self.progress.set(self.sessions.len() as u64);
        }
        let shared = &self.shared;
        wait_for_everyone(
            shared,
            "every participant to get its own join notice",
            join_deadline(n as u64),
            || shared.joined() == n,
        )
        .await?;
        let all_joined_s = began.at.elapsed().as_secs_f64();
        let last_join = shared.max_first_seq();
        self.progress.message("waiting for every join notice");
        wait_for_everyone(
            shared,
            "every participant to see every join notice",
            join_deadline(n as u64),
            || shared.min_last_seq() >= last_join,
        )
        .await?;
        let all_notices_seen_s = began.at.elapsed().as_secs_f64();
        let deliveries = shared.deliveries();
        let joins = Joins {
            all_joined_s,
            all_notices_seen_s,
            deliveries,
            server_cpu_ns_per_delivery: self
                .target
                .pid()
                .and_then(cpu_ns)
                .zip(began.server_cpu)
                .map(|(end, start)| (end - start) as f64 / deliveries.max(1) as f64),
            retried: shared.joins_retried.load(Relaxed),
        };
        Ok((began, joins))
    }

    /// Join-storm mode: the measured window is the join storm itself.
    fn join_storm(&self, began: &Began, report: &mut Report) {
        let window = Window {
            started: began.at,
            deliveries0: 0,
            cpu0: began.server_cpu,
            load_cpu0: None,
            ..Window::open(&self.target, &self.shared)
        };
        self.close_window(&window, report);
    }

    /// Idle mode: one probe reaches everyone, then the server settles before its
    /// memory is read.
    async fn idle(&self, report: &mut Report) -> Result<(), BenchError> {
        let window = Window::open(&self.target, &self.shared);
        self.progress.message("probe");
        let probe = self.shared.message(self.config.message_chars as usize);
        self.sessions[0]
            .publish(&probe)
            .await
            .map_err(|source| BenchError::Client {
                what: "the probe".into(),
                source,
            })?;
        let shared = &self.shared;
        wait_until(
            "every participant to receive the probe",
            DRAIN_TIMEOUT,
            || shared.min_chats() >= 1,
        )
        .await?;
        tokio::time::sleep(IDLE_SETTLE).await;
        self.close_window(&window, report);
        Ok(())
    }

    /// Saturate and rate modes: the publishers publish through the warm-up and the
    /// measured window, then every participant must receive everything in time.
    async fn publish_and_drain(&self, report: &mut Report) {
        let config = self.config;
        let shared = &self.shared;
        let pace = match config.mode {
            Mode::Saturate => Pace::Saturate {
                window: config.window,
            },
            _ => Pace::Rate(config.rate / config.publishers as f64),
        };
        let publishers: Vec<_> = self
            .sessions
            .iter()
            .take(config.publishers as usize)
            .map(|session| {
                tokio::spawn(load::publish(
                    session.clone(),
                    pace,
                    config.message_chars as usize,
                    config.inflight as usize,
                    config.publish_over,
                    Arc::clone(shared),
                ))
            })
            .collect();
        self.progress.timed(config.warmup, "warming up").await;
        let window = Window::open(&self.target, shared);
        shared.open_window();
        self.progress.timed(config.duration, "measuring").await;
        shared.close_window();
        window.close(shared, report);
        shared.stopping.store(true, Relaxed);
        self.progress.message("draining");
        for publisher in publishers {
            let _ = publisher.await;
        }
        let last = shared.max_seq.load(Relaxed);
        // Whatever has not arrived by the deadline is counted as lost below.
        let _ = wait_until(
            "every participant to receive everything",
            DRAIN_TIMEOUT,
            || shared.min_last_seq() >= last,
        )
        .await;
        report.lost = shared
            .tallies
            .iter()
            .map(|t| t.lost.load(Relaxed) + last.saturating_sub(t.last_seq.load(Relaxed)))
            .sum();
        report.latency = latency(shared.take_latencies());
        report.publish_latency = latency(shared.take_publish_latencies());
    }

    /// Resume mode, timed by [`time_resume`].
    async fn resume(&self, report: &mut Report) -> Result<(), BenchError> {
        let window = Window::open(&self.target, &self.shared);
        self.progress.message("resuming");
        report.resume = Some(time_resume(&self.target.access, self.config, &self.sessions).await?);
        self.close_window(&window, report);
        Ok(())
    }

    /// Restart mode: fills the log, kills the server (SIGKILL) and times its return.
    async fn restart(&mut self, report: &mut Report) -> Result<(), BenchError> {
        let window = Window::open(&self.target, &self.shared);
        self.progress.message("filling the log");
        let chars = self.config.message_chars as usize;
        let fill = fill_log(&self.sessions, self.config.events, chars).await?;
        let server = self
            .target
            .spawned
            .as_mut()
            .ok_or_else(|| BenchError::Config("restart mode starts its own server".into()))?;
        self.progress.message("restarting");
        // The participants' feeds end with the killed server: not failures.
        self.shared.stopping.store(true, Relaxed);
        let (listening_s, serving_s) = server.restart().await?;
        report.restart = Some(Restarted {
            events: fill,
            listening_s,
            serving_s,
        });
        self.close_window(&window, report);
        Ok(())
    }

    /// History-join mode, timed by [`time_history_joins`].
    async fn history_join(&self, report: &mut Report) -> Result<(), BenchError> {
        self.progress.message("filling the history");
        let chars = self.config.message_chars as usize;
        fill_log(&self.sessions[..1], u64::from(self.config.history), chars).await?;
        let window = Window::open(&self.target, &self.shared);
        self.progress.message("newcomers joining");
        // The newcomers run on a thread of their own, as on a machine of their own:
        // on the bench's runtime their feeds would wait behind the deliveries to
        // everyone already present, and the bench would time itself.
        let (access, config, shared) = (
            Arc::clone(&self.target.access),
            self.config.clone(),
            Arc::clone(&self.shared),
        );
        let newcomers = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| BenchError::Config(format!("cannot start a runtime: {err}")))?
                .block_on(time_history_joins(&access, &config, &shared))
        });
        let joined = tokio::task::spawn_blocking(move || newcomers.join())
            .await
            .map_err(|err| BenchError::Config(format!("the newcomers' thread failed: {err}")))?
            .map_err(|_| BenchError::Config("the newcomers' thread panicked".into()))??;
        report.history_join = Some(joined);
        self.close_window(&window, report);
        Ok(())
    }

    /// Closes the window of a mode that measures no publishing of its own: a gap
    /// any participant saw counts as lost.
    fn close_window(&self, window: &Window, report: &mut Report) {
        window.close(&self.shared, report);
        report.lost = self
            .shared
            .tallies
            .iter()
            .map(|t| t.lost.load(Relaxed))
            .sum();
    }

    /// What every mode ends with: the feeds may end now; duplicates, failures and
    /// the spawned server's memory go into the report.
    fn finish(&self, report: &mut Report) {
        let shared = &self.shared;
        shared.stopping.store(true, Relaxed);
        self.progress.finish();
        report.duplicated = shared
            .tallies
            .iter()
            .map(|t| t.duplicated.load(Relaxed))
            .sum();
        report.reordered = shared.reordered.load(Relaxed);
        report.failures = shared.failures.load(Relaxed);
        report.first_failure = shared.failure();
        if let (Some(server), Some(baseline)) = (&self.target.spawned, self.baseline_rss) {
            let rss = status_kib(server.pid(), "VmRSS").unwrap_or(0);
            if let Some(usage) = report.server.as_mut() {
                usage.baseline_rss_kib = baseline;
                usage.rss_kib = rss;
                usage.peak_rss_kib = status_kib(server.pid(), "VmHWM").unwrap_or(0);
                usage.kib_per_participant =
                    rss.saturating_sub(baseline) as f64 / self.config.participants as f64;
            }
        }
    }
}

/// Counters at the start of the measured window.
struct Window {
    pid: Option<u32>,
    started: Instant,
    deliveries0: u64,
    accepted0: u64,
    cpu0: Option<u64>,
    load_cpu0: Option<u64>,
}

impl Window {
    fn open(target: &Target, shared: &Shared) -> Self {
        let pid = target.pid();
        Self {
            pid,
            started: Instant::now(),
            deliveries0: shared.deliveries(),
            accepted0: shared.accepted.load(Relaxed),
            cpu0: pid.and_then(cpu_ns),
            load_cpu0: cpu_ns(std::process::id()),
        }
    }

    fn close(&self, shared: &Shared, report: &mut Report) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let deliveries = shared.deliveries() - self.deliveries0;
        let publishes = shared.accepted.load(Relaxed) - self.accepted0;
        report.window_s = elapsed;
        report.deliveries = deliveries;
        report.deliveries_per_s = deliveries as f64 / elapsed;
        report.publishes = publishes;
        report.publishes_per_s = publishes as f64 / elapsed;
        report.load_cpu_percent = self
            .load_cpu0
            .zip(cpu_ns(std::process::id()))
            .map(|(start, end)| 100.0 * (end - start) as f64 / 1e9 / elapsed);
        let per = |cpu: u64, count: u64| (count > 0).then(|| cpu as f64 / count as f64);
        report.server = self.pid.and_then(|pid| {
            let cpu = cpu_ns(pid)? - self.cpu0?;
            Some(ServerUsage {
                pid,
                cpu_percent: 100.0 * cpu as f64 / 1e9 / elapsed,
                cpu_ns_per_delivery: per(cpu, deliveries),
                cpu_ns_per_publish: per(cpu, publishes),
                baseline_rss_kib: 0,
                rss_kib: 0,
                peak_rss_kib: 0,
                kib_per_participant: 0.0,
            })
        });
    }
}

/// The name resume mode's returning participant joins under.
const RESUMER: &str = "bench-resumer";

/// Resume mode: a participant joins and leaves its connection; `config.missed`
/// events are published by the first participant; it joins again with its resume
/// point and reads until it has caught up.
async fn time_resume(
    access: &Access,
    config: &BenchConfig,
    sessions: &[Session],
) -> Result<Resumed, BenchError> {
    use crate::client::connect_with;
    let failed = |what: &str| {
        let what = what.to_owned();
        move |source| BenchError::Client { what, source }
    };
    let (session, mut events) = access.join(RESUMER).await.map_err(failed("the resumer"))?;
    events.next().await.map_err(failed("the resumer"))?;
    let point = session
        .resume_point()
        .ok_or_else(|| BenchError::Server("the server named no log epoch".into()))?;
    // Away: the connection is gone, the server announces the leave.
    drop(events);
    drop(session);
    fill_log(&sessions[..1], config.missed, config.message_chars as usize).await?;
    // Connected before the clock starts, and joined over that one connection until
    // the name is free: the time measured is the resume's, not the connection's.
    let channel = connect_with(&access.url, &access.connect)
        .await
        .map_err(failed("the resumer"))?;
    let started = Instant::now();
    let resume = access.join_options(Some(point));
    let (session, mut events) = loop {
        // The old session may still hold the name for a moment.
        match Session::join_with(channel.clone(), RESUMER, resume.clone()).await {
            Ok(joined) => break joined,
            Err(err) if err.code() == Some(tonic::Code::AlreadyExists) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(err) => return Err(failed("the resumer")(err)),
        }
    };
    let mut received = 0u64;
    loop {
        let Some(event) = events.next().await.map_err(failed("the resumer"))? else {
            return Err(BenchError::Server("the resumed feed ended".into()));
        };
        received += 1;
        if event.event.kind == crate::event::EventKind::Joined
            && &*event.event.participant == RESUMER
        {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Resumed {
        missed: received.saturating_sub(1),
        seconds,
        gapless: session.joined().resumed == Some(true),
    })
}

/// Joins `config.joins` newcomers one after another, each over a connection opened
/// before its clock starts and asking for `config.history` past events, and times
/// each from sending its Join until it has them all and its own join notice. Each
/// leaves, and everyone present has heard that before the next comes, so every
/// newcomer finds the same quiet room of `--participants`.
async fn time_history_joins(
    access: &Access,
    config: &BenchConfig,
    shared: &Shared,
) -> Result<HistoryJoined, BenchError> {
    use crate::client::connect_with;
    let mut samples = Vec::new();
    for i in 0..config.joins {
        let name = format!("newcomer-{i}");
        let failed = |source| BenchError::Client {
            what: name.clone(),
            source,
        };
        let channel = connect_with(&access.url, &access.connect)
            .await
            .map_err(failed)?;
        let mut options = access.join_options(None);
        options.history = Some(config.history);
        let started = Instant::now();
        let (session, mut events) = Session::join_with(channel, &name, options)
            .await
            .map_err(failed)?;
        let mut history = 0u32;
        let joined_seq = loop {
            let Some(received) = events.next().await.map_err(failed)? else {
                return Err(BenchError::Server(format!("{name}'s feed ended")));
            };
            if received.history {
                history += 1;
            } else if received.event.kind == crate::event::EventKind::Joined
                && *received.event.participant == *name
            {
                break received.event.seq;
            }
        };
        samples.push(u32::try_from(started.elapsed().as_nanos()).unwrap_or(u32::MAX));
        if history != config.history {
            return Err(BenchError::Server(format!(
                "{name} asked for {} past events and got {history}",
                config.history
            )));
        }
        session.leave().await.map_err(failed)?;
        // The leave is the event after the join: the room is quiet again once
        // everyone has it.
        wait_until("everyone to hear a newcomer leave", DRAIN_TIMEOUT, || {
            shared.min_last_seq() > joined_seq
        })
        .await?;
    }
    Ok(HistoryJoined {
        history: config.history,
        joins: config.joins,
        latency: latency(samples).ok_or_else(|| BenchError::Config("no joins".into()))?,
    })
}

/// Publishes `count` messages from `sessions` together, as fast as the server
/// takes them (64 in flight each). Returns how many were accepted.
async fn fill_log(sessions: &[Session], count: u64, chars: usize) -> Result<u64, BenchError> {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let text: Arc<str> = Arc::from("f".repeat(chars.max(1)));
    let mut tasks = Vec::new();
    for session in sessions {
        for _ in 0..64 {
            let (session, next, text) = (session.clone(), Arc::clone(&next), Arc::clone(&text));
            tasks.push(tokio::spawn(async move {
                let mut accepted = 0u64;
                while next.fetch_add(1, Relaxed) < count {
                    session
                        .publish(&text)
                        .await
                        .map_err(|source| BenchError::Client {
                            what: format!("{} filling the log", session.name()),
                            source,
                        })?;
                    accepted += 1;
                }
                Ok::<u64, BenchError>(accepted)
            }));
        }
    }
    let mut accepted = 0;
    for task in tasks {
        accepted += task
            .await
            .map_err(|err| BenchError::Server(format!("a publishing task failed: {err}")))??;
    }
    Ok(accepted)
}

/// Percentiles of `samples` (nanoseconds) through an HDR histogram.
fn latency(samples: Vec<u32>) -> Option<Latency> {
    if samples.is_empty() {
        return None;
    }
    // 1 µs to 60 s in microseconds, three significant digits.
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("the bounds are valid");
    for ns in &samples {
        histogram.saturating_record((u64::from(*ns) / 1000).max(1));
    }
    Some(Latency {
        samples: histogram.len(),
        p50_us: histogram.value_at_quantile(0.50) as f64,
        p99_us: histogram.value_at_quantile(0.99) as f64,
        p999_us: histogram.value_at_quantile(0.999) as f64,
        max_us: histogram.max() as f64,
    })
}

/// Polls `done` every millisecond until it holds, or fails after `timeout`.
async fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(format!(
                "gave up waiting {} s for {what}",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// Waits as [`wait_until`] does for something every participant must see, but
/// fails at once when one has lost its feed, since then it never will.
async fn wait_for_everyone(
    shared: &Shared,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<(), BenchError> {
    let mut lost = None;
    wait_until(what, timeout, || {
        lost = shared.failure();
        lost.is_some() || done()
    })
    .await?;
    match lost {
        Some(failure) => Err(BenchError::FeedLost(failure)),
        None => Ok(()),
    }
}

/// A progress bar on stderr when it is a terminal; nothing otherwise.
struct Progress(ProgressBar);

impl Progress {
    fn new() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        Self(bar)
    }

    fn bar(&self, length: u64, message: &'static str) {
        self.0.set_style(
            ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {elapsed}")
                .expect("the template is valid")
                .progress_chars("=> "),
        );
        self.0.set_length(length);
        self.0.set_position(0);
        self.0.set_message(message);
    }

    fn set(&self, position: u64) {
        self.0.set_position(position);
    }

    fn message(&self, message: &'static str) {
        self.0
            .set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid"));
        self.0.set_message(message);
        self.0.tick();
    }

    /// Shows a countdown of `secs` seconds and waits them out.
    async fn timed(&self, secs: f64, message: &'static str) {
        let millis = (secs * 1000.0) as u64;
        self.bar(millis, message);
        let end = Instant::now() + Duration::from_millis(millis);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            self.0.set_position(millis - (end - now).as_millis() as u64);
            tokio::select! {
                _ = tick.tick() => {}
                _ = tokio::time::sleep_until(end.into()) => {}
            }
        }
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}
