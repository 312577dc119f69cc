//! The scripted demonstration behind `chittychat-demo`: a real server and real
//! client processes play a conversation that shows every requirement, each writing
//! its JSON log into one run folder, which is then checked and drawn.
//!
//! The script: the first clients join one after another; each publishes; two
//! publish at the same moment (the server is paused until both have sent, so
//! the two are concurrent for certain); one more joins late and greets; one leaves with
//! `/quit`; one is killed (SIGKILL); the rest leave (end of input); the server is
//! stopped with SIGTERM. Every step waits, with a deadline, until every client still
//! present has shown its outcome on stdout, so the script never races itself.
//!
//! With `--cluster` the same conversation runs over [`CLUSTER_NODES`] server nodes
//! sharing one NATS JetStream server (`nats-server -js`, found on the PATH), the
//! participants spread over the nodes; after the late join one node is killed
//! (SIGKILL), its participants move to the other nodes and resume there, and one of
//! them speaks again before the rest of the script.

use crate::event::{joined_sentence, left_sentence};
use crate::log_schema::{self, NotListening, field, message, rpc};
use crate::trace;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use rand::Rng as _;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::watch;
use tokio::time::Instant;

/// Writes a line for the person running the demo. A reader that went away
/// (`| head`) is no reason to stop: the run and its logs matter more.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// The fewest clients that show a broadcast to "all participants" and the
/// assignment's "at least 3 client nodes".
pub const MIN_CLIENTS: usize = 3;

/// The most clients the demo starts at first; more would not fit a diagram.
pub const MAX_CLIENTS: usize = 12;

/// How many server nodes a `--cluster` run starts.
pub const CLUSTER_NODES: usize = 3;

/// The program the cluster's log runs on, looked up on the PATH.
const NATS_SERVER: &str = "nats-server";

/// How long one step may take by default before the demo gives up.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// How often the demo looks again whether the paused server has stopped.
const STOP_POLL: Duration = Duration::from_millis(1);

/// How often a log file is read again while waiting for a line in it.
const LOG_POLL: Duration = Duration::from_millis(10);

/// Names the participants get, shuffled by the seed.
const NAMES: [&str; 16] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "niaj", "olivia", "peggy", "rupert", "sybil",
];

/// What participants say, shuffled by the seed.
const LINES: [&str; 16] = [
    "hello everyone",
    "is this thing on?",
    "good morning from the client side",
    "who holds the clock?",
    "logical time beats wall time",
    "happened-before is a partial order",
    "anyone up for coffee?",
    "ping",
    "the server numbers every broadcast",
    "my clock just jumped ahead",
    "max(local, received) + 1",
    "hi all, glad to be here",
    "did everyone get that?",
    "concurrency is in the eye of the vector clock",
    "see you later",
    "what a lively chat",
];

/// What the demo is asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How many clients join at first (one more joins late); at least [`MIN_CLIENTS`].
    pub clients: usize,
    /// The run's folder: created if missing, refused if not empty. `None`: a fresh
    /// timestamped folder under `runs/`.
    pub out: Option<PathBuf>,
    /// The seed for names, messages and who does what.
    pub seed: u64,
    /// Where `chittychat-server` and `chittychat-client` are.
    pub bin_dir: PathBuf,
    /// How long one step may take.
    pub step_timeout: Duration,
    /// Whether to run the conversation over a cluster of [`CLUSTER_NODES`] nodes
    /// on a NATS JetStream server instead of one server.
    pub cluster: bool,
}

/// What can stop the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The options cannot be used.
    #[error("{0}")]
    Usage(String),
    /// A file or process could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A step did not finish in time.
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The deadline, in seconds.
        secs: u64,
    },
    /// A process ended unexpectedly or badly.
    #[error("{0}")]
    Process(String),
    /// SIGINT or SIGTERM arrived; the processes were stopped.
    #[error("interrupted by {0}; stopped the server and the clients")]
    Interrupted(&'static str),
    /// The run's logs could not be read back.
    #[error("cannot read the run's logs: {0}")]
    Logs(#[from] trace::parse::ParseError),
}

/// How the demo ended, for the caller to report.
#[derive(Debug)]
pub struct DemoOutcome {
    /// The run's folder.
    pub dir: PathBuf,
    /// Whether the checker found every rule to hold.
    pub check_ok: bool,
}

/// The folder of the running program, where its sibling binaries are.
pub fn sibling_dir() -> Result<PathBuf, DemoError> {
    let exe = std::env::current_exe().map_err(|source| DemoError::Io {
        what: "cannot find the running program".into(),
        source,
    })?;
    Ok(exe.parent().map(Path::to_owned).unwrap_or_default())
}

/// Runs the demo, printing its progress, the conversations, the check and where
/// the files are to stdout.
pub async fn run(options: DemoOptions) -> Result<DemoOutcome, DemoError> {
    if !(MIN_CLIENTS..=MAX_CLIENTS).contains(&options.clients) {
        return Err(DemoError::Usage(format!(
            "--clients must be from {MIN_CLIENTS} to {MAX_CLIENTS}, not {}",
            options.clients
        )));
    }
    let server_bin = options.bin_dir.join("chittychat-server");
    let client_bin = options.bin_dir.join("chittychat-client");
    for bin in [&server_bin, &client_bin] {
        if !bin.is_file() {
            return Err(DemoError::Usage(format!(
                "cannot find {}; build the binaries first (cargo build --bins)",
                bin.display()
            )));
        }
    }
    if options.cluster {
        Nats::installed().await?;
    }
    let dir = run_folder(options.out.as_deref())?;
    let plan = Plan::new(options.clients, options.seed);
    let over = if options.cluster {
        format!(" over {CLUSTER_NODES} nodes and a NATS server")
    } else {
        String::new()
    };
    say!(
        "Chitty-Chat demo: {} clients{over}, seed {}, run folder {}",
        options.clients + 1,
        options.seed,
        dir.display()
    );

    let mut stage = Stage {
        dir: dir.clone(),
        client_bin,
        timeout: options.step_timeout,
        changed: watch::channel(0u64).0,
        present: Vec::new(),
        gone: Vec::new(),
        step: 0,
        servers: Vec::new(),
    };
    // Interrupted, the demo still stops what it started: the servers gracefully,
    // the clients when `stage` drops, NATS when `nats` drops.
    let mut nats = None;
    let result = tokio::select! {
        result = async {
            if options.cluster {
                let started = Nats::start(&dir, stage.timeout).await?;
                let url = started.url.clone();
                nats = Some(started);
                for n in 1..=CLUSTER_NODES {
                    let role = Role::Node { name: format!("node-{n}"), nats: url.clone() };
                    let node = start_server(&server_bin, &dir, &stage, role).await?;
                    stage.servers.push(node);
                }
            } else {
                let server = start_server(&server_bin, &dir, &stage, Role::Alone).await?;
                stage.servers.push(server);
            }
            stage.play(&plan).await
        } => result,
        signal = interrupted() => Err(DemoError::Interrupted(signal)),
    };
    // Stop the servers on every path, so their logs are complete, then NATS.
    let mut stopped = Ok(());
    for server in &mut stage.servers {
        let outcome = server.stop(stage.timeout).await;
        stopped = stopped.and(outcome);
    }
    if let Some(nats) = nats {
        nats.stop(stage.timeout).await;
    }
    result?;
    stopped?;

    say!("\nThe conversation as each participant saw it:");
    let mut everyone: Vec<&Participant> = stage.gone.iter().chain(&stage.present).collect();
    everyone.sort_by_key(|p| p.joined);
    for participant in everyone {
        say!("\n  {} ({}):", participant.name, participant.ending);
        for line in participant
            .lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            say!("    {line}");
        }
    }

    let run = trace::parse::Run::read(std::slice::from_ref(&dir))?;
    let report = trace::check::check(&run);
    say!(
        "\nChecking the logs (chittychat-trace check {}):",
        dir.display()
    );
    for line in report.to_string().lines() {
        say!("  {line}");
    }
    let written = trace::write_diagrams(&run, &dir).map_err(|source| DemoError::Io {
        what: format!("cannot write the diagrams into {}", dir.display()),
        source,
    })?;
    say!("\nLogs (one JSON object per line): {}/*.log", dir.display());
    say!("Diagrams and exports:");
    for path in written {
        say!("  {}", path.display());
    }
    say!(
        "Open the SVG in a browser; paste run.shiviz into https://bestchai.bitbucket.io/shiviz/ to explore concurrency."
    );
    Ok(DemoOutcome {
        dir,
        check_ok: report.ok(),
    })
}

/// Creates the run's folder: `out` if it is missing or empty, else a fresh
/// `runs/<UTC time>` (with a suffix if two runs start in the same second).
fn run_folder(out: Option<&Path>) -> Result<PathBuf, DemoError> {
    let io = |what: String| move |source| DemoError::Io { what, source };
    if let Some(out) = out {
        if out.exists() {
            let mut entries =
                std::fs::read_dir(out).map_err(io(format!("cannot read {}", out.display())))?;
            if entries.next().is_some() {
                return Err(DemoError::Usage(format!(
                    "{} is not empty; logs are appended to, so two runs would mix: choose a new folder",
                    out.display()
                )));
            }
        } else {
            std::fs::create_dir_all(out).map_err(io(format!("cannot create {}", out.display())))?;
        }
        return Ok(out.to_owned());
    }
    let runs = Path::new("runs");
    std::fs::create_dir_all(runs).map_err(io("cannot create runs/".into()))?;
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    for attempt in 1u32.. {
        let name = if attempt == 1 {
            stamp.clone()
        } else {
            format!("{stamp}-{attempt}")
        };
        let dir = runs.join(name);
        // create_dir fails if the folder exists: no two runs share one.
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(DemoError::Io {
                    what: format!("cannot create {}", dir.display()),
                    source,
                });
            }
        }
    }
    unreachable!("the attempts are unbounded")
}

/// Who does what, decided by the seed.
#[derive(Debug)]
struct Plan {
    /// The first clients, in joining order.
    first: Vec<String>,
    /// The late joiner.
    late: String,
    /// What each says: the first clients' lines, then the late joiner's.
    lines: Vec<String>,
    /// The two (indices into `first`) who publish at the same moment, and their lines.
    together: [(usize, String); 2],
    /// Who leaves with /quit (an index into `first`).
    quitter: usize,
    /// Who is killed (an index into `first`).
    killed: usize,
    /// In a cluster, the node killed after the late join (an index into the nodes).
    dead_node: usize,
    /// In a cluster, what the first participant to move off the dead node says.
    mover_line: String,
}

impl Plan {
    fn new(clients: usize, seed: u64) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut names: Vec<&str> = NAMES.to_vec();
        names.shuffle(&mut rng);
        let mut lines: Vec<&str> = LINES.to_vec();
        lines.shuffle(&mut rng);
        let mut order: Vec<usize> = (0..clients).collect();
        order.shuffle(&mut rng);
        // Drawn last, so a seed plays the same script with or without a cluster.
        let dead_node = rng.random_range(0..CLUSTER_NODES);
        // Lines cycle if there are more clients than lines.
        let line = |i: usize| lines[i % lines.len()].to_owned();
        Plan {
            first: names[..clients].iter().map(|n| (*n).to_owned()).collect(),
            late: names[clients].to_owned(),
            lines: (0..=clients).map(line).collect(),
            together: [(order[0], line(clients + 1)), (order[1], line(clients + 2))],
            // `order` is a permutation of at least three: these are distinct.
            quitter: order[2],
            killed: order[0],
            dead_node,
            mover_line: line(clients + 3),
        }
    }
}

/// One client process and what it showed.
struct Participant {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// How it ended, for the conversation listing.
    ending: &'static str,
    /// Its place in the joining order.
    joined: usize,
    /// Its JSON log.
    log: PathBuf,
    /// How many messages it was asked to publish.
    published: usize,
    /// The server it joined first (an index into the stage's servers).
    server: usize,
    /// How many lines it had shown when the step under way began: a step waits
    /// only for what came after, so a second leave notice of one name (a session
    /// replaced on another node, then the real leave) is not mistaken for the first.
    mark: usize,
}

impl Participant {
    /// Whether it has shown a line matching `pred` since the step began.
    fn shown(&self, pred: impl Fn(&str) -> bool) -> bool {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().skip(self.mark).any(|l| pred(l))
    }
}

/// The running demo: its folder, its clients, and a signal that output arrived.
struct Stage {
    dir: PathBuf,
    client_bin: PathBuf,
    timeout: Duration,
    /// Bumped whenever any process prints a line or exits.
    changed: watch::Sender<u64>,
    present: Vec<Participant>,
    gone: Vec<Participant>,
    step: usize,
    /// The server, or the cluster's nodes.
    servers: Vec<Server>,
}

impl Stage {
    async fn play(&mut self, plan: &Plan) -> Result<(), DemoError> {
        for name in &plan.first {
            self.join(name, "joins").await?;
        }
        for (i, name) in plan.first.iter().enumerate() {
            self.announce(&format!("{name} says \"{}\"", plan.lines[i]));
            self.say(&[(name, &plan.lines[i])]).await?;
        }
        let [(a, a_line), (b, b_line)] = &plan.together;
        let (a, b) = (&plan.first[*a], &plan.first[*b]);
        let paused = if self.servers.len() > 1 {
            "every node paused"
        } else {
            "the server paused"
        };
        self.announce(&format!(
            "{a} and {b} publish at the same moment, {paused} until both have sent: \"{a_line}\" and \"{b_line}\""
        ));
        self.say(&[(a, a_line), (b, b_line)]).await?;
        let late = &plan.late;
        self.join(late, "joins late").await?;
        let late_line = &plan.lines[plan.first.len()];
        self.announce(&format!("{late} says \"{late_line}\""));
        self.say(&[(late, late_line)]).await?;
        if self.servers.len() > 1 {
            self.kill_node(plan.dead_node, &plan.mover_line).await?;
        }
        let quitter = &plan.first[plan.quitter];
        self.announce(&format!("{quitter} leaves with /quit"));
        self.leave(quitter, Leaving::Quit).await?;
        let killed = &plan.first[plan.killed];
        self.announce(&format!("{killed} is killed (SIGKILL)"));
        self.leave(killed, Leaving::Kill).await?;
        let rest: Vec<String> = self.present.iter().map(|p| p.name.clone()).collect();
        for name in rest {
            self.announce(&format!("{name} leaves (end of input)"));
            self.leave(&name, Leaving::EndOfInput).await?;
        }
        Ok(())
    }

    /// Kills node `dead` (SIGKILL) and waits until each of its participants has
    /// moved: its client fails over to the next node in its list and rejoins,
    /// replacing its old session (everyone sees that session leave and the
    /// participant join again), and resumes where it was. Then one of them speaks.
    async fn kill_node(&mut self, dead: usize, line: &str) -> Result<(), DemoError> {
        let node = self.servers[dead].name.clone();
        let movers: Vec<String> = self
            .present
            .iter()
            .filter(|p| p.server == dead)
            .map(|p| p.name.clone())
            .collect();
        self.announce(&format!(
            "{node} is killed (SIGKILL); {} move to other nodes and resume there",
            movers.join(" and ")
        ));
        self.mark();
        let deadline = Instant::now() + self.timeout;
        let server = &mut self.servers[dead];
        server.killed = true;
        server.child.start_kill().map_err(|source| DemoError::Io {
            what: format!("cannot kill {node}"),
            source,
        })?;
        tokio::time::timeout_at(deadline, server.child.wait())
            .await
            .map_err(|_| self.timeout_error(&format!("{node} to exit")))?
            .map_err(|source| DemoError::Io {
                what: format!("cannot wait for {node}"),
                source,
            })?;
        for mover in &movers {
            let left = left_sentence(mover, 0).trim_end_matches('0').to_owned();
            self.everyone_shows(&format!("{mover}'s old session to end"), |l| {
                l.starts_with(&left)
            })
            .await?;
            let joined = joined_sentence(mover, 0).trim_end_matches('0').to_owned();
            self.everyone_shows(&format!("{mover} to join again on another node"), |l| {
                l.starts_with(&joined)
            })
            .await?;
        }
        if let Some(mover) = movers.first() {
            self.announce(&format!("{mover} says \"{line}\" from its new node"));
            self.say(&[(mover, &line.to_owned())]).await?;
        }
        Ok(())
    }

    /// Starts a step: what every present client shows from now on is its outcome.
    fn mark(&mut self) {
        for participant in &mut self.present {
            participant.mark = participant
                .lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len();
        }
    }

    fn announce(&mut self, what: &str) {
        self.step += 1;
        say!("{:>3}. {what}", self.step);
    }

    /// Starts `name`'s client and waits until everyone shows its join. In a
    /// cluster the participants are spread over the nodes in turn, and each client
    /// is given every node, its own first, to fail over to.
    async fn join(&mut self, name: &str, joins: &str) -> Result<(), DemoError> {
        let joined = self.present.len() + self.gone.len();
        let server = joined % self.servers.len();
        let urls: Vec<String> = (0..self.servers.len())
            .map(|k| self.servers[(server + k) % self.servers.len()].url.clone())
            .collect();
        if self.servers.len() > 1 {
            let node = self.servers[server].name.clone();
            self.announce(&format!("{name} {joins} on {node}"));
        } else {
            self.announce(&format!("{name} {joins}"));
        }
        self.mark();
        let log = self.dir.join(format!("{name}.log"));
        let mut child = logging_to(&self.client_bin, &log)
            .arg("--name")
            .arg(name)
            .arg("--server")
            .arg(urls.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| DemoError::Io {
                what: format!("cannot start {}", self.client_bin.display()),
                source,
            })?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            collect(out, Arc::clone(&lines), self.changed.clone());
        }
        if let Some(err) = child.stderr.take() {
            collect(err, Arc::clone(&stderr), self.changed.clone());
        }
        self.present.push(Participant {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            ending: "present at the end",
            joined,
            log,
            published: 0,
            server,
            mark: 0,
        });
        let notice = joined_sentence(name, 0);
        let prefix = notice.trim_end_matches('0').to_owned();
        self.everyone_shows(&format!("the join of {name}"), |line| {
            line.starts_with(&prefix)
        })
        .await
    }

    /// Has each `(name, line)` typed, then waits until everyone shows them.
    ///
    /// Two or more lines are made concurrent for certain: the server is paused
    /// (SIGSTOP) until every one of them has been sent, so no sender can hear of
    /// another's message before sending its own.
    async fn say(&mut self, lines: &[(&String, &String)]) -> Result<(), DemoError> {
        for (name, _) in lines {
            self.find(name)?;
        }
        let pause = lines.len() > 1;
        self.mark();
        let typed = if pause {
            self.signal_server(Signal::SIGSTOP);
            self.server_stopped().await
        } else {
            Ok(())
        };
        let typed = match typed {
            Ok(()) => self.type_lines(lines).await,
            err => err,
        };
        let sent = match typed {
            Ok(()) if pause => {
                let mut all = Ok(());
                for (name, _) in lines {
                    let wanted = self.find(name)?.published + 1;
                    all = self.logged(name, message::SENT, wanted).await;
                    if all.is_err() {
                        break;
                    }
                }
                all
            }
            other => other,
        };
        if pause {
            // On every path: a paused server would fail every later step.
            self.signal_server(Signal::SIGCONT);
        }
        sent?;
        for (name, line) in lines {
            let suffix = format!("] {name}: {line}");
            self.everyone_shows(&format!("{name}'s message"), |l| {
                l.starts_with("[Lamport ") && l.ends_with(&suffix)
            })
            .await?;
            self.find(name)?.published += 1;
        }
        // A client reads its next line only once Publish has returned, and the
        // reply may trail the broadcast: wait for it, so the next step starts
        // from a client that is ready.
        for (name, _) in lines {
            let wanted = self.find(name)?.published;
            self.logged(name, message::REPLY, wanted).await?;
        }
        Ok(())
    }

    /// Types every line into its client's stdin at once.
    async fn type_lines(&mut self, lines: &[(&String, &String)]) -> Result<(), DemoError> {
        let writes = self.present.iter_mut().filter_map(|participant| {
            let (_, line) = lines.iter().find(|(name, _)| **name == participant.name)?;
            Some(async move {
                let name = &participant.name;
                let stdin = participant.stdin.as_mut().ok_or_else(|| {
                    DemoError::Process(format!("{name}'s input is already closed"))
                })?;
                stdin
                    .write_all(format!("{line}\n").as_bytes())
                    .await
                    .map_err(|source| DemoError::Io {
                        what: format!("cannot type into {name}'s client"),
                        source,
                    })
            })
        });
        futures::future::try_join_all(writes).await.map(drop)
    }

    /// Waits until every server still running has stopped. SIGSTOP only starts a
    /// stop: until one of its threads gets a CPU to carry it out, the others keep
    /// serving, so a loaded machine could still let one message through.
    async fn server_stopped(&self) -> Result<(), DemoError> {
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        let deadline = Instant::now() + self.timeout;
        for server in &self.servers {
            let Some(pid) = server.pid() else {
                continue;
            };
            loop {
                // WUNTRACED reports the stop once every thread has stopped; WNOHANG
                // keeps the call from blocking. Neither reaps the process.
                match waitpid(pid, Some(WaitPidFlag::WUNTRACED | WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Stopped(..)) => break,
                    Ok(WaitStatus::StillAlive) => {}
                    Ok(other) => {
                        return Err(DemoError::Process(format!(
                            "{} did not stop as asked: {other:?}",
                            server.name
                        )));
                    }
                    Err(err) => {
                        return Err(DemoError::Process(format!(
                            "cannot tell whether {} stopped: {err}",
                            server.name
                        )));
                    }
                }
                if Instant::now() >= deadline {
                    return Err(self.timeout_error(&format!("{} to pause", server.name)));
                }
                tokio::time::sleep(STOP_POLL).await;
            }
        }
        Ok(())
    }

    /// Sends `signal` to every server still running.
    fn signal_server(&self, signal: Signal) {
        for server in &self.servers {
            server.signal(signal);
        }
    }

    /// Waits until `name`'s log has `wanted` Publish lines of kind `message`
    /// ("sent" or "reply").
    async fn logged(&mut self, name: &str, message: &str, wanted: usize) -> Result<(), DemoError> {
        let deadline = Instant::now() + self.timeout;
        let log = self.find(name)?.log.clone();
        loop {
            // The log is written by a background thread; read what is there.
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let count = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|l| l[field::MESSAGE] == message && l[field::RPC] == rpc::PUBLISH)
                .count();
            if count >= wanted {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(
                    self.timeout_error(&format!("{name}'s log to show {message} for Publish"))
                );
            }
            tokio::time::sleep(LOG_POLL).await;
        }
    }

    async fn leave(&mut self, name: &str, how: Leaving) -> Result<(), DemoError> {
        let position = self
            .present
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| DemoError::Process(format!("{name} is not present")))?;
        self.mark();
        let mut participant = self.present.remove(position);
        let what = format!("{name} to exit");
        let deadline = Instant::now() + self.timeout;
        match how {
            Leaving::Quit | Leaving::EndOfInput => {
                if let Some(mut stdin) = participant.stdin.take()
                    && how == Leaving::Quit
                {
                    let _ = stdin.write_all(b"/quit\n").await;
                }
                participant.ending = how.ending();
                let status = self
                    .exit_of(&mut participant.child, deadline, name, &what)
                    .await?;
                if !status.success() {
                    let stderr = last_words(&participant.stderr);
                    self.gone.push(participant);
                    return Err(DemoError::Process(format!(
                        "{name}'s client exited with {status} on leaving{stderr}"
                    )));
                }
            }
            Leaving::Kill => {
                participant.ending = how.ending();
                participant
                    .child
                    .start_kill()
                    .map_err(|source| DemoError::Io {
                        what: format!("cannot kill {name}"),
                        source,
                    })?;
                self.exit_of(&mut participant.child, deadline, name, &what)
                    .await?;
            }
        }
        self.gone.push(participant);
        let prefix = left_sentence(name, 0).trim_end_matches('0').to_owned();
        self.everyone_shows(&format!("the leave of {name}"), |line| {
            line.starts_with(&prefix)
        })
        .await
    }

    fn find(&mut self, name: &str) -> Result<&mut Participant, DemoError> {
        self.present
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| DemoError::Process(format!("{name} is not present")))
    }

    /// Waits until every present client has shown a line matching `pred`, failing
    /// early if one of them exits.
    async fn everyone_shows(
        &mut self,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> Result<(), DemoError> {
        let deadline = Instant::now() + self.timeout;
        let mut changed = self.changed.subscribe();
        loop {
            changed.borrow_and_update();
            if self.present.iter().all(|p| p.shown(&pred)) {
                return Ok(());
            }
            for participant in &mut self.present {
                if let Ok(Some(status)) = participant.child.try_wait() {
                    let stderr = last_words(&participant.stderr);
                    return Err(DemoError::Process(format!(
                        "{}'s client exited with {status} while waiting for {what}{stderr}",
                        participant.name
                    )));
                }
            }
            // A line or an exit bumps `changed`; poll exits now and then as well,
            // since an exit without output bumps nothing.
            let wake = Instant::now() + Duration::from_millis(200);
            match tokio::time::timeout_at(deadline.min(wake), changed.changed()).await {
                Ok(_) => {}
                Err(_) if Instant::now() >= deadline => return Err(self.timeout_error(what)),
                Err(_) => {}
            }
        }
    }

    /// Waits until `child`, the process of `name`, has exited, within the step's
    /// `deadline`.
    async fn exit_of(
        &self,
        child: &mut Child,
        deadline: Instant,
        name: &str,
        what: &str,
    ) -> Result<std::process::ExitStatus, DemoError> {
        tokio::time::timeout_at(deadline, child.wait())
            .await
            .map_err(|_| self.timeout_error(what))?
            .map_err(|source| DemoError::Io {
                what: format!("cannot wait for {name}"),
                source,
            })
    }

    fn timeout_error(&self, what: &str) -> DemoError {
        DemoError::Timeout {
            what: what.to_owned(),
            secs: self.timeout.as_secs(),
        }
    }
}

/// How a participant leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaving {
    Quit,
    Kill,
    EndOfInput,
}

impl Leaving {
    fn ending(self) -> &'static str {
        match self {
            Leaving::Quit => "left with /quit",
            Leaving::Kill => "killed",
            Leaving::EndOfInput => "left at end of input",
        }
    }
}

/// Reads lines from a child's output into `lines`, bumping `changed` for each.
fn collect(
    output: impl AsyncRead + Unpin + Send + 'static,
    lines: Arc<Mutex<Vec<String>>>,
    changed: watch::Sender<u64>,
) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(output).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            changed.send_modify(|n| *n += 1);
        }
        changed.send_modify(|n| *n += 1);
    });
}

/// What a process said on stderr, as ": line | line", or nothing if it said nothing.
fn last_words(stderr: &Mutex<Vec<String>>) -> String {
    let lines = stderr.lock().unwrap_or_else(|e| e.into_inner());
    if lines.is_empty() {
        String::new()
    } else {
        format!(": {}", lines.join(" | "))
    }
}

/// A command for one of the run's processes: it writes its JSON log to `log` at the
/// default level (whatever `RUST_LOG` says here), and dies with the demo.
fn logging_to(bin: &Path, log: &Path) -> Command {
    let mut command = Command::new(bin);
    command
        .arg("--log-format")
        .arg("json")
        .arg("--log-file")
        .arg(log)
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    command
}

/// What a server process is in the run.
enum Role {
    /// The one server, its event log in the run folder.
    Alone,
    /// A node of a cluster whose log is on the NATS server at `nats`.
    Node { name: String, nats: String },
}

/// A server process: the one server, or one node of a cluster.
struct Server {
    /// "the server", or the node's name.
    name: String,
    child: Child,
    url: String,
    /// Killed on purpose: its end is no failure.
    killed: bool,
}

impl Server {
    /// Its process id while it runs.
    fn pid(&self) -> Option<Pid> {
        (!self.killed)
            .then(|| self.child.id())
            .flatten()
            .map(|id| Pid::from_raw(id as i32))
    }

    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(pid, signal);
        }
    }
}

async fn start_server(
    bin: &Path,
    dir: &Path,
    stage: &Stage,
    role: Role,
) -> Result<Server, DemoError> {
    let (name, log) = match &role {
        Role::Alone => ("the server".to_owned(), dir.join("server.log")),
        Role::Node { name, .. } => (name.clone(), dir.join(format!("{name}.log"))),
    };
    let mut command = logging_to(bin, &log);
    command.arg("--listen").arg("127.0.0.1:0");
    match &role {
        // The run folder is the server's data directory: the event log stays with
        // the logs of the run that made it.
        Role::Alone => command.arg("--data-dir").arg(dir),
        Role::Node { name, nats } => command.arg("--nats").arg(nats).arg("--node").arg(name),
    };
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| DemoError::Io {
            what: format!("cannot start {}", bin.display()),
            source,
        })?;
    let stderr = Arc::new(Mutex::new(Vec::new()));
    if let Some(err) = child.stderr.take() {
        collect(err, Arc::clone(&stderr), stage.changed.clone());
    }
    // The server logs its bound address; the log file is the only place it says it.
    let listening =
        log_schema::await_listening(&log, || child.try_wait().ok().flatten(), stage.timeout).await;
    match listening {
        Ok(address) => Ok(Server {
            name,
            child,
            url: format!("http://{address}"),
            killed: false,
        }),
        Err(NotListening::Exited { status, .. }) => {
            let stderr = last_words(&stderr);
            Err(DemoError::Process(format!(
                "{name} exited with {status} at start{stderr}"
            )))
        }
        Err(NotListening::TimedOut { .. }) => Err(DemoError::Timeout {
            what: format!("{name} to listen"),
            secs: stage.timeout.as_secs(),
        }),
    }
}

/// The NATS server a cluster's nodes share: `nats-server -js` on a free loopback
/// port, its store and its log in the run folder's `nats/` (apart from the `*.log`
/// files the checker reads).
struct Nats {
    child: Child,
    url: String,
}

impl Nats {
    /// Whether `nats-server` can be run, asking it for its version; if not, the
    /// error says how to install it.
    async fn installed() -> Result<(), DemoError> {
        let version = Command::new(NATS_SERVER)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await;
        match version {
            Ok(_) => Ok(()),
            Err(source) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(DemoError::Usage(format!(
                    "--cluster needs {NATS_SERVER} (with JetStream, 2.9 or later) on the PATH; on Debian: apt-get install nats-server"
                )))
            }
            Err(source) => Err(DemoError::Io {
                what: format!("cannot run {NATS_SERVER}"),
                source,
            }),
        }
    }

    async fn start(dir: &Path, timeout: Duration) -> Result<Nats, DemoError> {
        let home = dir.join("nats");
        std::fs::create_dir_all(&home).map_err(|source| DemoError::Io {
            what: format!("cannot create {}", home.display()),
            source,
        })?;
        let log = home.join("nats-server.log");
        let mut child = Command::new(NATS_SERVER)
            .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
            .arg(home.join("store"))
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| DemoError::Io {
                what: format!("cannot start {NATS_SERVER}"),
                source,
            })?;
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // "[pid] date time [INF] Listening for client connections on 127.0.0.1:4222"
            let port = text
                .lines()
                .find(|l| l.contains("Listening for client connections on"))
                .and_then(|l| l.rsplit(':').next())
                .and_then(|port| port.trim().parse::<u16>().ok());
            if let Some(port) = port
                && text.contains("Server is ready")
            {
                return Ok(Nats {
                    child,
                    url: format!("nats://127.0.0.1:{port}"),
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                let last = text.lines().last().unwrap_or("no log output");
                return Err(DemoError::Process(format!(
                    "{NATS_SERVER} exited with {status} at start: {last}"
                )));
            }
            if Instant::now() >= deadline {
                return Err(DemoError::Timeout {
                    what: format!("{NATS_SERVER} to be ready (its log: {})", log.display()),
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(LOG_POLL).await;
        }
    }

    /// Stops it with SIGTERM, SIGKILL if it hangs: the run is over by now.
    async fn stop(mut self, timeout: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        if tokio::time::timeout(timeout, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Completes on SIGINT or SIGTERM, naming it.
async fn interrupted() -> &'static str {
    let Ok(mut terminate) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        // Without a SIGTERM handler, wait for SIGINT alone.
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

impl Server {
    /// Stops the server with SIGTERM, so it flushes its log; SIGKILL if it hangs.
    /// A server killed on purpose is only reaped.
    async fn stop(&mut self, timeout: Duration) -> Result<(), DemoError> {
        if self.killed {
            let _ = self.child.wait().await;
            return Ok(());
        }
        // An interrupted demo may have left it paused, deaf to SIGTERM.
        self.signal(Signal::SIGCONT);
        self.signal(Signal::SIGTERM);
        let name = &self.name;
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(DemoError::Process(format!(
                "{name} exited with {status} on SIGTERM"
            ))),
            Ok(Err(source)) => Err(DemoError::Io {
                what: format!("cannot wait for {name}"),
                source,
            }),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(DemoError::Timeout {
                    what: format!("{name} to stop"),
                    secs: timeout.as_secs(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_is_a_function_of_the_seed() {
        for clients in MIN_CLIENTS..=MAX_CLIENTS {
            for seed in 0..50 {
                let plan = Plan::new(clients, seed);
                let again = Plan::new(clients, seed);
                assert_eq!(plan.first, again.first);
                assert_eq!(plan.lines, again.lines);
                assert_eq!(plan.first.len(), clients);
                assert!(!plan.first.contains(&plan.late));
                assert_ne!(plan.together[0].0, plan.together[1].0);
                assert_ne!(plan.quitter, plan.killed, "clients {clients} seed {seed}");
                assert!(plan.quitter < clients && plan.killed < clients);
            }
        }
    }

    #[test]
    fn a_non_empty_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.log"), "").unwrap();
        let err = run_folder(Some(dir.path())).unwrap_err();
        assert!(err.to_string().contains("is not empty"), "{err}");
    }
}
