//! `siege`: the long form of `tests/hostile_peers.rs`. It starts the real
//! `chittychat-server`, measures honest participants' round trips, then besieges the
//! server with stalled participants (they join with a 2^31 − 1 window and stop
//! reading) and a flood of connections that never join, and reports the server's
//! memory (`VmRSS`), the kernel's TCP memory (`/proc/net/sockstat`) and the honest
//! round trips before, during and after.
//!
//! ```text
//! cargo run --release --example siege -- --stalled 1000 --silent 2000 --honest 10 --duration 20 --waves 2
//! ```
//!
//! Exits 1 when an honest participant lost a message or its session, when a stalled
//! participant's connection outlived the attack, or when a `--max-…` bound given on
//! the command line was exceeded; timings are reported, not judged, unless asked.

#[path = "../tests/fixture/peer.rs"]
mod peer;

use chittychat::client::{Events, Session, connect};
use clap::Parser;
use hdrhistogram::Histogram;
use peer::{HUGE_WINDOW, RawPeer, open_remotes};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Besieges a `chittychat-server` and reports what it costs the server and the
/// honest participants.
#[derive(Debug, Parser)]
struct Args {
    /// Participants that join with the largest window and then stop reading.
    #[arg(long, default_value_t = 200)]
    stalled: usize,
    /// Connections that never join, each reopened as soon as the server closes it.
    #[arg(long, default_value_t = 500)]
    silent: usize,
    /// Honest participants, each publishing and reading its own message back.
    #[arg(long, default_value_t = 10)]
    honest: usize,
    /// Messages a second each honest participant publishes.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// How many times the siege comes back, after the attackers of the last one
    /// went: memory must not grow from wave to wave.
    #[arg(long, default_value_t = 1)]
    waves: usize,
    /// Seconds of each phase (unloaded, each wave of the siege).
    #[arg(long, default_value_t = 15.0)]
    duration: f64,
    /// Extra arguments for the server, such as "--send-timeout 2".
    #[arg(long, allow_hyphen_values = true, num_args = 1..)]
    server_args: Vec<String>,
    /// The server binary; by default the one built beside this example.
    #[arg(long)]
    server: Option<PathBuf>,
    /// Fail if the server's peak RSS exceeds this many MiB.
    #[arg(long)]
    max_rss_mib: Option<u64>,
    /// Fail if the kernel's peak TCP memory exceeds this many MiB.
    #[arg(long)]
    max_tcp_mib: Option<u64>,
    /// Fail if the honest p99 round trip under siege exceeds this multiple of the
    /// unloaded one.
    #[arg(long)]
    max_p99_ratio: Option<f64>,
    /// The attackers' CPU priority (nice, 0 to 19). The attackers stand in for peers
    /// on other machines; on one machine they would otherwise take CPU from the
    /// server they besiege, and the honest round trips would measure the siege
    /// program as much as the server. 0 runs them like everything else.
    #[arg(long, default_value_t = 19, value_parser = clap::value_parser!(i32).range(0..=19))]
    attacker_nice: i32,
    /// Write every honest round trip to this file, a line each: seconds since the
    /// siege program started, the phase (0 unloaded, 1 besieged, 2 after), the
    /// round trip and the part of it until the Publish was answered, in
    /// microseconds; and the siege's own moments as lines that begin with `#`. For
    /// finding when the slow ones came, and where they waited.
    #[arg(long)]
    timeline: Option<std::path::PathBuf>,
}

/// How long the server's log is now.
fn log_length(log: &std::path::Path) -> u64 {
    std::fs::metadata(log).map_or(0, |meta| meta.len())
}

/// The server's slow commits in each phase, each phase's lines lying between two of
/// `marks` in `log`: how many, and the slowest in milliseconds.
fn slow_commits(log: &std::path::Path, marks: &[u64; 4]) -> [String; 3] {
    use chittychat::log_schema::{field, message};
    let mut found: [Vec<u64>; 3] = Default::default();
    let text = std::fs::read(log).unwrap_or_default();
    let mut at = 0;
    for line in text.split_inclusive(|&byte| byte == b'\n') {
        let start = at as u64;
        at += line.len();
        let line = String::from_utf8_lossy(line);
        if !line.contains(message::SLOW_COMMIT) {
            continue;
        }
        let Some(phase) = (0..3).find(|&p| marks[p] <= start && start < marks[p + 1]) else {
            continue;
        };
        // `millis=328` in text, `"millis":328` in JSON.
        let millis = line
            .split_once(field::MILLIS)
            .map(|(_, rest)| rest.trim_start_matches(['"', ':', '=']))
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok())
            .unwrap_or(0);
        found[phase].push(millis);
    }
    found.map(|slow| match slow.iter().max() {
        Some(max) => format!("{}, {max} ms", slow.len()),
        None => "0".to_owned(),
    })
}

/// The spawned server, killed when dropped.
struct Server {
    child: Child,
    url: String,
    addr: std::net::SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_server(args: &Args, log: &std::path::Path, data_dir: &std::path::Path) -> Server {
    let binary = args.server.clone().unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("the example's path");
        exe.parent()
            .and_then(|examples| examples.parent())
            .expect("target/<profile>/examples")
            .join("chittychat-server")
    });
    let places = args.stalled + args.honest;
    let mut child = Command::new(&binary)
        .args(["--listen", "127.0.0.1:0", "--publish-rate", "0"])
        // The durable log, as users run it, in a directory of its own, unless the
        // server's arguments ask for it in memory.
        .args(if args.server_args.iter().any(|a| a == "--ephemeral") {
            Vec::new()
        } else {
            vec![std::ffi::OsStr::new("--data-dir"), data_dir.as_os_str()]
        })
        .args(["--max-participants", &places.to_string()])
        .args(&args.server_args)
        .env_remove("RUST_LOG")
        // Its log must go to standard error, where the address is read from.
        .env_remove("CHITTYCHAT_LOG_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("the server's log file"))
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
    let listening = chittychat::log_schema::await_listening(
        log,
        || child.try_wait().ok().flatten(),
        Duration::from_secs(10),
    )
    .await;
    let addr = listening.unwrap_or_else(|err| panic!("{err}"));
    Server {
        url: format!("http://{addr}"),
        addr,
        child,
    }
}

/// The server's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    chittychat::bench::status_kib(pid, "VmRSS").unwrap_or(0)
}

/// The kernel's TCP memory (`/proc/net/sockstat`, in pages) in KiB, and the TCP
/// sockets in use.
fn kernel_tcp() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let line = text.lines().find(|l| l.starts_with("TCP:")).unwrap_or("");
    let field = |name: &str| -> u64 {
        let mut words = line.split_whitespace();
        while let Some(word) = words.next() {
            if word == name {
                return words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            }
        }
        0
    };
    (field("mem") * 4, field("inuse"))
}

/// What the honest participants say: 120 characters, near the longest message,
/// so that the stalled participants' buffers fill in few messages.
const MESSAGE: &str = "a long line, as people write when they explain something at length to the room, and then they add a bit more to it!!";

/// The phases, in order; the honest participants record into the current one.
const UNLOADED: usize = 0;
const BESIEGED: usize = 1;
const AFTER: usize = 2;
const STOPPED: usize = 3;

/// One honest round trip, for the timeline.
struct RoundTrip {
    /// When it ended, since the siege program started.
    at: Duration,
    phase: usize,
    micros: u64,
    /// The part of it until the Publish was answered.
    answered_micros: u64,
}

/// What the honest participants measured: round trips per phase, and failures.
struct Honest {
    phase: AtomicUsize,
    round_trips: StdMutex<Vec<Histogram<u64>>>,
    failures: StdMutex<Vec<String>>,
    /// Every round trip, when a timeline is asked for: when it ended, its phase
    /// and its length in microseconds.
    timeline: Option<StdMutex<Vec<RoundTrip>>>,
    /// The siege's own moments, for the timeline.
    moments: StdMutex<Vec<(Duration, String)>>,
    started: Instant,
}

impl Honest {
    fn new(timeline: bool) -> Self {
        let histogram = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
        Self {
            phase: AtomicUsize::new(UNLOADED),
            round_trips: StdMutex::new(vec![histogram(), histogram(), histogram()]),
            failures: StdMutex::new(Vec::new()),
            timeline: timeline.then(|| StdMutex::new(Vec::new())),
            moments: StdMutex::new(Vec::new()),
            started: Instant::now(),
        }
    }

    /// Records a round trip of `micros`, whose Publish was answered after
    /// `answered_micros`.
    fn record(&self, phase: usize, micros: u64, answered_micros: u64) {
        let _ = self.round_trips.lock().expect("not poisoned")[phase].record(micros.max(1));
        if let Some(timeline) = &self.timeline {
            let at = self.started.elapsed();
            timeline.lock().expect("not poisoned").push(RoundTrip {
                at,
                phase,
                micros,
                answered_micros,
            });
        }
    }

    /// Notes a moment of the siege for the timeline.
    fn moment(&self, what: impl Into<String>) {
        if self.timeline.is_some() {
            let at = self.started.elapsed();
            self.moments
                .lock()
                .expect("not poisoned")
                .push((at, what.into()));
        }
    }

    /// Writes the timeline to `path`.
    fn write_timeline(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for (at, what) in self.moments.lock().expect("not poisoned").iter() {
            writeln!(out, "# {:.3} {what}", at.as_secs_f64())?;
        }
        if let Some(timeline) = &self.timeline {
            for trip in timeline.lock().expect("not poisoned").iter() {
                writeln!(
                    out,
                    "{:.4} {} {} {}",
                    trip.at.as_secs_f64(),
                    trip.phase,
                    trip.micros,
                    trip.answered_micros
                )?;
            }
        }
        out.flush()
    }

    fn quantile_ms(&self, phase: usize, quantile: f64) -> f64 {
        self.round_trips.lock().expect("not poisoned")[phase].value_at_quantile(quantile) as f64
            / 1000.0
    }

    fn count(&self, phase: usize) -> u64 {
        self.round_trips.lock().expect("not poisoned")[phase].len()
    }

    fn fail(&self, failure: String) {
        self.failures.lock().expect("not poisoned").push(failure);
    }
}

/// One honest participant: publishes at `rate` and waits for its own message back,
/// recording the round trip, until the phase is [`STOPPED`].
///
/// It publishes on a grid of its own, `phase` into the period, and keeps to that
/// grid after a late round trip (it skips the ticks it missed): independent people
/// do not fall into step. Restarting the period from the late answer, as it once
/// did, put every honest participant into step after the first stall they shared,
/// and from then on all of them published in the same instant and queued behind
/// one another: the median round trip doubled with no attacker at all.
async fn honest(session: Session, mut events: Events, rate: u32, phase: f64, record: Arc<Honest>) {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let first = tokio::time::Instant::now() + period.mul_f64(phase);
    let mut tick = tokio::time::interval_at(first, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let phase = record.phase.load(Ordering::Relaxed);
        if phase == STOPPED {
            return;
        }
        let started = Instant::now();
        let published = match session.publish(MESSAGE).await {
            Ok(published) => published,
            Err(err) => return record.fail(format!("publish: {err}")),
        };
        let answered = started.elapsed();
        loop {
            match events.next().await {
                Ok(Some(received)) if received.event.seq == published.seq => break,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return record.fail("an honest feed ended".to_owned()),
            }
        }
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        record.record(phase, micros(started.elapsed()), micros(answered));
    }
}

/// Peaks sampled during a phase.
#[derive(Debug, Default, Clone, Copy)]
struct Peaks {
    rss_kib: u64,
    tcp_kib: u64,
    sockets: u64,
}

/// A stalled participant's connection, as the sampler watches it.
struct Stalled {
    peer: RawPeer,
    since: Instant,
    closed_after: Option<Duration>,
}

/// How often the sampler reads memory figures.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// The attackers' threads (their runtime's), by thread id, for their CPU time.
static ATTACKER_THREADS: StdMutex<Vec<u32>> = StdMutex::new(Vec::new());

/// The honest participants' thread id, for its CPU time.
static HONEST_THREAD: AtomicU32 = AtomicU32::new(0);

/// The calling thread's id.
fn this_thread() -> u32 {
    // SAFETY: gettid takes nothing and cannot fail.
    u32::try_from(unsafe { libc::gettid() }).unwrap_or(0)
}

/// CPU time used so far by the server, the attackers and the honest participants,
/// and how long the server's threads and the honest participants' have waited for a
/// CPU while ready to run.
#[derive(Debug, Clone, Copy)]
struct CpuMark {
    at: Instant,
    server: u64,
    attackers: u64,
    honest: u64,
    server_waited: Option<u64>,
    honest_waited: Option<u64>,
}

impl CpuMark {
    fn now(server: u32) -> Self {
        let me = std::process::id();
        let thread = |tid: u32| chittychat::bench::thread_cpu_ns(me, tid).unwrap_or(0);
        let attackers = ATTACKER_THREADS
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|&tid| thread(tid))
            .sum();
        let honest = HONEST_THREAD.load(Ordering::Relaxed);
        Self {
            at: Instant::now(),
            server: chittychat::bench::cpu_ns(server).unwrap_or(0),
            attackers,
            honest: thread(honest),
            server_waited: chittychat::bench::run_delay_ns(server),
            honest_waited: chittychat::bench::thread_run_delay_ns(me, honest),
        }
    }
}

/// What the server, the attackers and the honest participants took of the
/// machine's CPUs over one or more spans of time, and how long the server and the
/// honest participants waited for one.
#[derive(Debug, Default, Clone, Copy)]
struct CpuShare {
    wall_ns: u128,
    server: u64,
    attackers: u64,
    honest: u64,
    /// `None` where the kernel keeps no scheduler statistics.
    server_waited: Option<u64>,
    honest_waited: Option<u64>,
}

impl CpuShare {
    /// Adds the span between two marks.
    fn add(&mut self, from: CpuMark, to: CpuMark) {
        self.wall_ns += to.at.duration_since(from.at).as_nanos();
        self.server += to.server.saturating_sub(from.server);
        // A thread that ended took its CPU time with it: never below zero.
        self.attackers += to.attackers.saturating_sub(from.attackers);
        self.honest += to.honest.saturating_sub(from.honest);
        let waited = |from: Option<u64>, to: Option<u64>, sum: Option<u64>| {
            Some(sum.unwrap_or(0) + to?.saturating_sub(from?))
        };
        self.server_waited = waited(from.server_waited, to.server_waited, self.server_waited);
        self.honest_waited = waited(from.honest_waited, to.honest_waited, self.honest_waited);
    }

    /// "server / attackers / honest", each in percent of all the machine's CPUs.
    fn percents(&self) -> String {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let percent = |ns: u64| ns as f64 * 100.0 / (self.wall_ns.max(1) as f64 * cpus);
        format!(
            "{:.0} / {:.0} / {:.0}",
            percent(self.server),
            percent(self.attackers),
            percent(self.honest)
        )
    }

    /// "server / honest": how long their threads waited, ready to run, for a CPU, in
    /// milliseconds a second (summed over the threads, so it may exceed 1000).
    fn waits(&self) -> String {
        let per_second = |ns: Option<u64>| match ns {
            Some(ns) => format!("{:.0}", ns as f64 * 1000.0 / self.wall_ns.max(1) as f64),
            None => "?".to_owned(),
        };
        format!(
            "{} / {}",
            per_second(self.server_waited),
            per_second(self.honest_waited)
        )
    }
}

/// Samples the server's memory and the kernel's TCP memory until `until`, and
/// notes when the server closed each stalled connection (to within
/// [`SAMPLE_EVERY`]), from the state of the peer's own socket: one system call
/// each, where listing the server's connections (`/proc/net/tcp`) took tens of
/// milliseconds of CPU with thousands open, which the honest round trips paid for.
async fn sample_until(pid: u32, until: Instant, stalled: &StdMutex<Vec<Stalled>>) -> Peaks {
    let mut peaks = Peaks::default();
    while Instant::now() < until {
        let (tcp, sockets) = kernel_tcp();
        peaks.rss_kib = peaks.rss_kib.max(rss_kib(pid));
        peaks.tcp_kib = peaks.tcp_kib.max(tcp);
        peaks.sockets = peaks.sockets.max(sockets);
        for stalled in stalled.lock().expect("not poisoned").iter_mut() {
            if stalled.closed_after.is_none() && !stalled.peer.established() {
                stalled.closed_after = Some(stalled.since.elapsed());
            }
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    peaks
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args
        .server_args
        .iter()
        .any(|arg| arg == "--log-file" || arg.starts_with("--log-file="))
    {
        // The siege learns where the server listens from its standard error.
        eprintln!(
            "siege: --log-file cannot be among --server-args: the server's log goes to a file the siege names, kept when the siege fails"
        );
        return ExitCode::from(2);
    }
    // The attackers run on this runtime's worker threads; the sampler runs on the
    // main thread and the honest participants on a thread of their own, both at the
    // usual priority.
    let nice = args.attacker_nice;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || {
            ATTACKER_THREADS
                .lock()
                .expect("not poisoned")
                .push(this_thread());
            lower_priority(nice);
        })
        .build()
        .expect("a runtime");
    runtime.block_on(siege(args))
}

/// Lowers the calling thread's CPU priority to `nice` (Linux gives each thread its
/// own nice value).
fn lower_priority(nice: i32) {
    // SAFETY: setpriority reads no memory of ours.
    let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, this_thread(), nice) };
    if done != 0 {
        eprintln!(
            "siege: cannot lower an attacker thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

async fn siege(args: Args) -> ExitCode {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let log = std::env::temp_dir().join(format!("siege-server-{}.log", std::process::id()));
    let data_dir = tempfile::tempdir().expect("a temporary data directory");
    let server = start_server(&args, &log, data_dir.path()).await;
    let pid = server.child.id();
    let phase_length = Duration::from_secs_f64(args.duration);
    let mut failed = Vec::new();

    // Honest participants, each on its own connection, on a runtime and thread of
    // their own, so that they never wait behind the attackers' tasks.
    let record = Arc::new(Honest::new(args.timeline.is_some()));
    let (joined, all_joined) = tokio::sync::oneshot::channel();
    let honest_thread = {
        let (url, record, count, rate) = (
            server.url.clone(),
            Arc::clone(&record),
            args.honest,
            args.rate,
        );
        std::thread::spawn(move || {
            HONEST_THREAD.store(this_thread(), Ordering::Relaxed);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let mut tasks = JoinSet::new();
                for i in 0..count {
                    let channel = connect(&url).await.expect("connect");
                    let (session, events) = Session::join(channel, &format!("honest-{i}"))
                        .await
                        .expect("an honest join");
                    // Evenly spread over the period: the server sees a steady stream.
                    let phase = i as f64 / count as f64;
                    tasks.spawn(honest(session, events, rate, phase, Arc::clone(&record)));
                }
                let _ = joined.send(());
                while tasks.join_next().await.is_some() {}
            });
        })
    };
    all_joined.await.expect("the honest participants joined");
    let (idle_tcp, idle_sockets) = kernel_tcp();
    println!("siege: server pid {pid}, log {}", log.display());
    println!(
        "phase 1: {} honest participants, {} msgs/s each, {:.0} s unloaded",
        args.honest, args.rate, args.duration
    );
    let none = StdMutex::new(Vec::new());
    let mut cpu = [CpuShare::default(); 3];
    // Where each phase begins in the server's log, to tell its slow commits apart.
    let mut log_marks = [log_length(&log); 4];
    let mark = CpuMark::now(pid);
    let unloaded = sample_until(pid, Instant::now() + phase_length, &none).await;
    cpu[UNLOADED].add(mark, CpuMark::now(pid));

    // The siege, in waves.
    record.phase.store(BESIEGED, Ordering::Relaxed);
    log_marks[BESIEGED] = log_length(&log);
    let mut waves = Vec::new();
    for wave in 1..=args.waves {
        println!(
            "phase 2, wave {wave}: {} stalled participants and {} silent connections, {:.0} s",
            args.stalled, args.silent, args.duration
        );
        record.moment(format!("wave {wave} begins"));
        let mark = CpuMark::now(pid);
        let stop = Arc::new(AtomicBool::new(false));
        let stalled: Arc<StdMutex<Vec<Stalled>>> = Arc::default();
        let mut attackers = JoinSet::new();
        for i in 0..args.stalled {
            let (addr, stalled, record) = (server.addr, Arc::clone(&stalled), Arc::clone(&record));
            let count = args.stalled;
            attackers.spawn(async move {
                let Ok(mut peer) = RawPeer::connect(addr, HUGE_WINDOW, Some(4096)).await else {
                    return;
                };
                // The feed is kept, unread, until the server closes the connection.
                let _feed = match peer.join(&format!("stalled-{wave}-{i}")).await {
                    Ok((_token, feed)) => feed,
                    Err(err) => {
                        return eprintln!("siege: stalled-{wave}-{i} could not join: {err}");
                    }
                };
                peer.gate.stop_reading();
                // The peer reads nothing, so it learns nothing: the sampler asks the
                // kernel for its socket's state.
                let joined = {
                    let mut stalled = stalled.lock().expect("not poisoned");
                    stalled.push(Stalled {
                        peer,
                        since: Instant::now(),
                        closed_after: None,
                    });
                    stalled.len()
                };
                if joined == count {
                    record.moment(format!("wave {wave}: every stalled participant joined"));
                }
                // Held, unread, until the siege ends.
                std::future::pending::<()>().await;
            });
        }
        let silent_closed = Arc::new(AtomicU64::new(0));
        for _ in 0..args.silent {
            let (addr, stop, closed) = (server.addr, Arc::clone(&stop), Arc::clone(&silent_closed));
            attackers.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match RawPeer::connect(addr, 65_535, None).await {
                        Ok(mut peer) => {
                            let _ = (&mut peer.driver).await;
                            closed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            });
        }
        let besieged = sample_until(pid, Instant::now() + phase_length, &stalled).await;
        cpu[BESIEGED].add(mark, CpuMark::now(pid));
        let (stalled_joined, stalled_closed, slowest_close, missed) = {
            let stalled = stalled.lock().expect("not poisoned");
            let closed: Vec<Duration> = stalled.iter().filter_map(|s| s.closed_after).collect();
            // A peer whose kernel dropped the server's reset still looks open: the
            // server's side, listed once, says whether it is.
            let looks_open: Vec<SocketAddr> = stalled
                .iter()
                .filter(|s| s.closed_after.is_none())
                .map(|s| s.peer.local)
                .collect();
            let missed = if looks_open.is_empty() {
                0
            } else {
                let open: HashSet<SocketAddr> = open_remotes(server.addr).into_iter().collect();
                looks_open.iter().filter(|a| !open.contains(a)).count() as u64
            };
            (
                stalled.len() as u64,
                closed.len() as u64 + missed,
                closed.into_iter().max().unwrap_or_default(),
                missed,
            )
        };
        if missed > 0 {
            println!(
                "  wave {wave}: {missed} stalled connections closed by the server still looked open to their peer (a reset it dropped)"
            );
        }

        // The attackers go; memory should come back.
        record.moment(format!("wave {wave}: the attackers go"));
        stop.store(true, Ordering::Relaxed);
        attackers.shutdown().await;
        // The stalled peers' own sockets go with them.
        stalled.lock().expect("not poisoned").clear();
        let settle = Instant::now();
        while kernel_tcp().1 > idle_sockets + 8 && settle.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "  wave {wave}: peak RSS {:.1} MiB, peak kernel TCP {:.1} MiB; {stalled_joined} of {} stalled joined, {stalled_closed} of them closed, the last {:.1} s after it stopped reading; RSS after {:.1} MiB",
            besieged.rss_kib as f64 / 1024.0,
            besieged.tcp_kib as f64 / 1024.0,
            args.stalled,
            slowest_close.as_secs_f64(),
            rss_kib(pid) as f64 / 1024.0,
        );
        if stalled_closed < stalled_joined {
            failed.push(format!(
                "wave {wave}: {} stalled connections were still open when the siege ended",
                stalled_joined - stalled_closed
            ));
        }
        waves.push((
            besieged,
            stalled_closed,
            slowest_close,
            silent_closed.load(Ordering::Relaxed),
        ));
    }
    record.phase.store(AFTER, Ordering::Relaxed);
    log_marks[AFTER] = log_length(&log);
    // The peaks and counts of the worst wave.
    let besieged = Peaks {
        rss_kib: waves.iter().map(|w| w.0.rss_kib).max().unwrap_or(0),
        tcp_kib: waves.iter().map(|w| w.0.tcp_kib).max().unwrap_or(0),
        sockets: waves.iter().map(|w| w.0.sockets).max().unwrap_or(0),
    };
    let stalled_closed = waves.iter().map(|w| w.1).min().unwrap_or(0);
    let slowest_close = waves.iter().map(|w| w.2).max().unwrap_or_default();
    let silent_closed: u64 = waves.iter().map(|w| w.3).sum();
    let mark = CpuMark::now(pid);
    let after = sample_until(
        pid,
        Instant::now() + phase_length.min(Duration::from_secs(5)),
        &none,
    )
    .await;
    cpu[AFTER].add(mark, CpuMark::now(pid));
    let after_rss = rss_kib(pid);
    let after_tcp = kernel_tcp();
    record.phase.store(STOPPED, Ordering::Relaxed);
    log_marks[STOPPED] = log_length(&log);
    let _ = honest_thread.join();
    if let Some(path) = &args.timeline
        && let Err(err) = record.write_timeline(path)
    {
        failed.push(format!("cannot write {}: {err}", path.display()));
    }

    let mib = |kib: u64| kib as f64 / 1024.0;
    println!();
    println!("| | unloaded | besieged | after |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| server RSS, peak (MiB) | {:.1} | {:.1} | {:.1} |",
        mib(unloaded.rss_kib),
        mib(besieged.rss_kib),
        mib(after_rss)
    );
    println!(
        "| kernel TCP memory, peak (MiB) | {:.1} | {:.1} | {:.1} |",
        mib(unloaded.tcp_kib),
        mib(besieged.tcp_kib),
        mib(after_tcp.0)
    );
    println!(
        "| TCP sockets in use, peak | {} | {} | {} |",
        unloaded.sockets, besieged.sockets, after_tcp.1
    );
    println!(
        "| CPU, % of the machine: server / attackers / honest | {} | {} | {} |",
        cpu[UNLOADED].percents(),
        cpu[BESIEGED].percents(),
        cpu[AFTER].percents()
    );
    println!(
        "| waiting for a CPU, ms a second: server / honest | {} | {} | {} |",
        cpu[UNLOADED].waits(),
        cpu[BESIEGED].waits(),
        cpu[AFTER].waits()
    );
    let q = |phase, quantile| record.quantile_ms(phase, quantile);
    println!(
        "| honest round trip p50 / p99 (ms) | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} |",
        q(UNLOADED, 0.5),
        q(UNLOADED, 0.99),
        q(BESIEGED, 0.5),
        q(BESIEGED, 0.99),
        q(AFTER, 0.5),
        q(AFTER, 0.99),
    );
    let slow = slow_commits(&log, &log_marks);
    println!(
        "| commits over {} ms (the disk), slowest | {} | {} | {} |",
        chittychat::log::SLOW_COMMIT.as_millis(),
        slow[UNLOADED],
        slow[BESIEGED],
        slow[AFTER]
    );
    println!(
        "| honest messages | {} | {} | {} |",
        record.count(UNLOADED),
        record.count(BESIEGED),
        record.count(AFTER)
    );
    let _ = (idle_tcp, after);
    println!(
        "| stalled connections closed by the server | | {stalled_closed} of {}, the last {:.1} s after it stopped reading | |",
        args.stalled,
        slowest_close.as_secs_f64()
    );
    println!("| silent connections closed by the server | | {silent_closed} | |",);

    failed.extend(
        record
            .failures
            .lock()
            .expect("not poisoned")
            .iter()
            .cloned(),
    );
    if let Some(max) = args.max_rss_mib
        && besieged.rss_kib > max * 1024
    {
        failed.push(format!(
            "server RSS {:.1} MiB > {max} MiB",
            mib(besieged.rss_kib)
        ));
    }
    if let Some(max) = args.max_tcp_mib
        && besieged.tcp_kib > max * 1024
    {
        failed.push(format!(
            "kernel TCP memory {:.1} MiB > {max} MiB",
            mib(besieged.tcp_kib)
        ));
    }
    if let Some(ratio) = args.max_p99_ratio {
        let (before, during) = (q(UNLOADED, 0.99), q(BESIEGED, 0.99));
        if during > before * ratio {
            failed.push(format!(
                "honest p99 {during:.2} ms > {ratio} × {before:.2} ms"
            ));
        }
    }
    if failed.is_empty() {
        let _ = std::fs::remove_file(&log);
        ExitCode::SUCCESS
    } else {
        for failure in failed {
            eprintln!("siege: {failure}");
        }
        ExitCode::FAILURE
    }
}
