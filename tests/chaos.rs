//! The chaos test: a real `chittychat-server` process; dozens of participants that
//! join, publish, leave and get killed at random (connections dropped mid-flight in
//! this process, `chittychat-client` processes killed with SIGKILL); a stalled
//! reader and a flooding publisher. Afterwards a checker holds the whole run against
//! the service's promises:
//!
//! - every participant received every event from its own join notice until it left,
//!   exactly once and in sequence order, and every participant saw the same event
//!   under the same sequence number, with Lamport times rising along it;
//! - every join is matched by exactly one leave, whether the participant left, was
//!   killed or was cut off as too slow;
//! - every accepted message was broadcast once, under the sequence number its
//!   sender was given, and no refused or unknown message was broadcast at all;
//! - the stalled reader was disconnected as too slow and announced as having left;
//! - the server's resident memory stayed bounded, it never panicked, and it shut
//!   down cleanly on SIGTERM.
//!
//! The run takes about 21 seconds. Its random choices come from one seed, printed
//! at the start; `CHITTYCHAT_CHAOS_SEED=<seed>` replays them (timing still varies).

mod fixture;

use chittychat::bench::status_kib;
use chittychat::client::{ClientError, Events, JoinOptions, Session, connect};
use chittychat::display::event_line;
use chittychat::event::{Event, EventKind, joined_sentence, left_sentence};
use chittychat::log_schema::{LeaveCause, field};
use fixture::{ServerProcess, WithoutUserSettings, within};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tonic::Code;
use tonic::transport::Endpoint;

/// Participants that live, die and rejoin side by side during the run, each life on
/// a connection of its own, each slot reusing its name from one life to the next.
const SLOTS: usize = 50;
/// `chittychat-client` processes started during the run and killed with SIGKILL.
const KILLED_PROCESSES: usize = 6;
/// How long the participants run wild.
const CHAOS_FOR: Duration = Duration::from_secs(20);
/// The shortest and longest life of a participant, in milliseconds.
const LIFETIME_MS: std::ops::Range<u64> = 200..4_000;
/// The shortest and longest pause between two messages of a participant, in ms.
const PUBLISH_EVERY_MS: std::ops::Range<u64> = 50..600;
/// The chance that a life ends in a kill rather than a Leave.
const KILL_CHANCE: f64 = 0.4;
/// How many events the server's log keeps for the run: few enough that the stalled
/// reader's position is trimmed within seconds, so it is cut off.
const HISTORY_LIMIT: u32 = 256;
/// The stalled reader's HTTP/2 stream window in bytes: how much the server may send
/// it ahead of its reading. The client's default (2 MiB, about 20 000 events) would
/// take minutes of chat to fill; with a small window its feed stops within seconds,
/// and the log (which keeps only `HISTORY_LIMIT` events here) soon trims its
/// position, as it would for a default client after 2 MiB.
const STALLED_READER_WINDOW: u32 = 4 * 1024;
/// How much the server's resident memory may grow between the start of the chaos
/// and its peak. The growth measured is a few MiB; the bound only catches a leak or
/// unbounded buffering.
const RSS_GROWTH_LIMIT_KIB: u64 = 96 * 1024;
/// The deadline of every step outside the chaos itself: starting, joining,
/// draining a feed, waiting for the room to empty, stopping.
const STEP_DEADLINE: Duration = Duration::from_secs(20);
/// How often the server's memory is sampled.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos() {
    let seed = fixture::chaos_seed("chaos");
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let server = start_server().await;
    let url = server.url();

    // The observer is present from the first event to the last and reads them all;
    // it also tells when the room is empty again.
    let (observer, observer_events) = join_retrying(&url, "observer").await.expect("join");
    let (present_tx, mut present_rx) = watch::channel(0usize);
    let observer_reader = tokio::spawn(observe(observer_events, present_tx));

    // The stalled reader joins, then never reads its feed.
    let stalled_channel = Endpoint::from_shared(url.clone())
        .expect("the server URL")
        .initial_stream_window_size(STALLED_READER_WINDOW)
        .connect()
        .await
        .expect("connect the stalled reader");
    let (stalled, stalled_events) = Session::join_with(stalled_channel, "stalled", no_history())
        .await
        .expect("join");

    let memory = MemoryWatch::start(server.pid());
    let chaos_ends = Instant::now() + CHAOS_FOR;
    let flooder = tokio::spawn(flood(url.clone(), chaos_ends));
    let processes = tokio::spawn(killed_processes(url.clone(), rng.random(), chaos_ends));
    let slots: Vec<_> = (0..SLOTS)
        .map(|slot| tokio::spawn(slot_lives(url.clone(), slot, rng.random(), chaos_ends)))
        .collect();

    let mut records = Vec::new();
    for slot in slots {
        records.extend(slot.await.expect("a participant task panicked"));
    }
    records.push(flooder.await.expect("the flooder panicked"));
    let processes = processes.await.expect("the process task panicked");

    // The stalled reader must have been cut off by now; what it holds ends in the error.
    let mut stalled_record = Record::new("stalled", 0);
    stalled_record.end = drain(stalled_events, &mut stalled_record.received).await;
    drop(stalled);
    records.push(stalled_record);

    // Everyone but the observer has gone; the observer sees the last leave notices.
    let emptied = timeout(STEP_DEADLINE, present_rx.wait_for(|present| *present == 1))
        .await
        .map(|waited| waited.map(|_| ()));
    match emptied {
        Ok(Ok(())) => {}
        Ok(Err(_)) => panic!("the observer's feed ended early"),
        Err(_) => panic!(
            "the room did not empty: {} still present",
            *present_rx.borrow()
        ),
    }
    let rss_end = rss_kib(server.pid());
    observer.leave().await.expect("the observer leaves");
    let observer_record = timeout(STEP_DEADLINE, observer_reader)
        .await
        .expect("the observer's feed ends after Leave")
        .expect("the observer panicked");
    let (rss_start, rss_peak) = memory.stop().await;
    let (status, server_log) = within(
        STEP_DEADLINE,
        "the server to stop after SIGTERM",
        server.terminate_with_log(),
    )
    .await;
    let chaos_took = started.elapsed();

    let figures = check(
        observer_record,
        &records,
        &processes,
        &server_log.seen,
        status,
    );
    println!(
        "chaos reached: {} participant lives under {} names ({} at once at the peak), \
         {} events, {} deliveries, {} kills ({} dropped connections, {} SIGKILLed \
         processes), {} cut off as too slow, {} messages accepted, {} refused; \
         server memory {} KiB at the start, {} KiB at the peak, {} KiB at the end; \
         took {:.1} s",
        figures.lives,
        figures.names,
        figures.peak_present,
        figures.events,
        figures.deliveries,
        figures.dropped + processes.len(),
        figures.dropped,
        processes.len(),
        figures.too_slow,
        figures.accepted,
        figures.refused,
        rss_start,
        rss_peak,
        rss_end,
        chaos_took.as_secs_f64(),
    );
    assert!(
        rss_peak <= rss_start + RSS_GROWTH_LIMIT_KIB,
        "the server's memory grew from {rss_start} KiB to {rss_peak} KiB"
    );
}

/// Starts the server for the chaos, with JSON logs of warnings (refusals, too-slow
/// disconnects) and the listening address.
async fn start_server() -> ServerProcess {
    let history_limit = HISTORY_LIMIT.to_string();
    ServerProcess::start_with_env(
        &["--listen", "127.0.0.1:0"],
        // The stalled reader reads nothing for the whole chaos and must then find
        // the reason it was cut off; a reader silent for the send timeout loses
        // its connection instead (tests/hostile_peers.rs), so outlast the chaos.
        &["--history-limit", &history_limit, "--send-timeout", "120"],
        &[("RUST_LOG", "warn,chittychat_server=info")],
    )
    .await
}

/// The server's resident set size in KiB, from /proc; 0 when it cannot be read.
fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS").unwrap_or(0)
}

/// Samples the server's memory until stopped; the first sample is the baseline.
struct MemoryWatch {
    start: u64,
    stop: oneshot::Sender<()>,
    peak: tokio::task::JoinHandle<u64>,
}

impl MemoryWatch {
    fn start(pid: u32) -> Self {
        let start = rss_kib(pid);
        assert!(start > 0, "cannot read the server's VmRSS");
        let (stop, mut stopped) = oneshot::channel();
        let peak = tokio::spawn(async move {
            let mut peak = start;
            loop {
                peak = peak.max(rss_kib(pid));
                tokio::select! {
                    _ = &mut stopped => return peak,
                    _ = sleep(RSS_SAMPLE_EVERY) => {}
                }
            }
        });
        Self { start, stop, peak }
    }

    /// The baseline and the peak, in KiB.
    async fn stop(self) -> (u64, u64) {
        let _ = self.stop.send(());
        (
            self.start,
            self.peak.await.expect("the memory watch panicked"),
        )
    }
}

/// What one participant's life looked like from its side.
#[derive(Debug)]
struct Record {
    name: String,
    life: usize,
    /// Every event it received, in the order received.
    received: Vec<Event>,
    published: Vec<Published>,
    end: End,
}

impl Record {
    fn new(name: &str, life: usize) -> Self {
        Self {
            name: name.to_owned(),
            life,
            received: Vec::new(),
            published: Vec::new(),
            end: End::Left,
        }
    }
}

#[derive(Debug)]
struct Published {
    text: String,
    outcome: Outcome,
}

#[derive(Debug, PartialEq)]
enum Outcome {
    /// The server broadcast it under this sequence number.
    Accepted(u64),
    /// The server refused it (a rate limit, or the sender was already cut off).
    Refused(Option<Code>),
    /// The participant was killed while the request was in flight.
    Unknown,
}

#[derive(Debug, PartialEq)]
enum End {
    /// It called Leave and its feed ended cleanly.
    Left,
    /// Its connection was dropped without a Leave.
    Killed,
    /// The server ended its feed with this status code.
    Cut(Option<Code>),
}

/// Joins as `name` on a connection of its own, retrying while the name is still
/// held by a previous life whose disconnection the server has not yet processed,
/// or while the server is full.
async fn join_retrying(url: &str, name: &str) -> Result<(Session, Events), ClientError> {
    let give_up = Instant::now() + STEP_DEADLINE;
    let channel = connect(url).await?;
    loop {
        match Session::join_with(channel.clone(), name, no_history()).await {
            Err(err)
                if matches!(
                    err.code(),
                    Some(Code::AlreadyExists | Code::ResourceExhausted)
                ) && Instant::now() < give_up =>
            {
                sleep(Duration::from_millis(20)).await;
            }
            joined => return joined,
        }
    }
}

/// Reads a feed to its end into `received`; returns how it ended.
async fn drain(mut events: Events, received: &mut Vec<Event>) -> End {
    let drained = timeout(STEP_DEADLINE, async {
        loop {
            match events.next().await {
                Ok(Some(event)) => received.push(event.event),
                Ok(None) => return End::Left,
                Err(err) => return End::Cut(err.code()),
            }
        }
    })
    .await;
    drained.unwrap_or_else(|_| panic!("a feed did not end in time ({} events)", received.len()))
}

/// The observer's reader: records everything, and counts who is present.
async fn observe(mut events: Events, present_count: watch::Sender<usize>) -> Record {
    let mut record = Record::new("observer", 0);
    let mut present = HashSet::new();
    loop {
        match events.next().await {
            Ok(Some(received)) => {
                let event = received.event;
                match event.kind {
                    EventKind::Joined => {
                        present.insert(event.participant.to_string());
                    }
                    EventKind::Left => {
                        present.remove(&*event.participant);
                    }
                    EventKind::Chat => {}
                }
                present_count.send_replace(present.len());
                record.received.push(event);
            }
            Ok(None) => return record,
            Err(err) => {
                record.end = End::Cut(err.code());
                return record;
            }
        }
    }
}

/// One slot: lives one participant after another until the chaos ends.
async fn slot_lives(url: String, slot: usize, seed: u64, chaos_ends: Instant) -> Vec<Record> {
    let mut rng = StdRng::seed_from_u64(seed);
    let name = format!("p{slot}");
    let mut records = Vec::new();
    while Instant::now() < chaos_ends {
        sleep(Duration::from_millis(rng.random_range(0..300))).await;
        let plan = Plan {
            lifetime: Duration::from_millis(rng.random_range(LIFETIME_MS)),
            publish_every: Duration::from_millis(rng.random_range(PUBLISH_EVERY_MS)),
            killed: rng.random_bool(KILL_CHANCE),
        };
        records.push(live(&url, &name, records.len(), plan, chaos_ends).await);
    }
    records
}

/// How one life goes.
struct Plan {
    lifetime: Duration,
    publish_every: Duration,
    killed: bool,
}

/// One life: join, read and publish, then leave or be killed.
async fn live(url: &str, name: &str, life: usize, plan: Plan, chaos_ends: Instant) -> Record {
    let mut record = Record::new(name, life);
    let (session, mut events) = join_retrying(url, name)
        .await
        .unwrap_or_else(|err| panic!("{name} could not join: {err}"));
    // A participant knows it is in once it reads its own join notice; only then
    // may it die, so that each life's history starts at a known event.
    match timeout(STEP_DEADLINE, events.next()).await {
        Ok(Ok(Some(received))) => record.received.push(received.event),
        other => panic!("{name} got no join notice: {other:?}"),
    }
    let ends = (Instant::now() + plan.lifetime).min(chaos_ends);
    let mut next_publish = Instant::now() + plan.publish_every;
    loop {
        tokio::select! {
            _ = sleep_until(ends) => break,
            received = events.next() => match received {
                Ok(Some(received)) => record.received.push(received.event),
                Ok(None) => panic!("{name}'s feed ended while it was present"),
                Err(err) => {
                    record.end = End::Cut(err.code());
                    return record;
                }
            },
            _ = sleep_until(next_publish) => {
                next_publish += plan.publish_every;
                let text = format!("{name} life {life} message {}", record.published.len());
                let publish = session.publish(&text);
                // A kill may come while the request is in flight.
                let outcome = tokio::select! {
                    result = publish => match result {
                        Ok(published) => Outcome::Accepted(published.seq),
                        Err(err) => Outcome::Refused(err.code()),
                    },
                    _ = sleep_until(ends), if plan.killed => Outcome::Unknown,
                };
                let unknown = outcome == Outcome::Unknown;
                record.published.push(Published { text, outcome });
                if unknown {
                    break;
                }
            }
        }
    }
    if plan.killed {
        drop(session);
        drop(events);
        record.end = End::Killed;
        return record;
    }
    match timeout(STEP_DEADLINE, session.leave()).await {
        Ok(Ok(_)) => record.end = drain(events, &mut record.received).await,
        // Cut off as too slow just before leaving: the feed tells why.
        Ok(Err(err)) if err.code() == Some(Code::Unauthenticated) => {
            record.end = drain(events, &mut record.received).await;
            assert_ne!(record.end, End::Left, "{name}: Leave refused: {err}");
        }
        Ok(Err(err)) => panic!("{name}: Leave failed: {err}"),
        Err(_) => panic!("{name}: Leave did not answer in time"),
    }
    record
}

/// The flooding publisher: publishes back to back for the whole run while another
/// task reads its feed, then leaves.
async fn flood(url: String, chaos_ends: Instant) -> Record {
    let mut record = Record::new("flooder", 0);
    let (session, events) = join_retrying(&url, "flooder").await.expect("join");
    let reader = tokio::spawn(async move {
        let mut received = Vec::new();
        let end = drain_until_left(events, &mut received).await;
        (received, end)
    });
    while Instant::now() < chaos_ends {
        let text = format!("flood {}", record.published.len());
        let outcome = match session.publish(&text).await {
            Ok(published) => Outcome::Accepted(published.seq),
            Err(err) => Outcome::Refused(err.code()),
        };
        let cut_off = outcome == Outcome::Refused(Some(Code::Unauthenticated));
        record.published.push(Published { text, outcome });
        if cut_off {
            break;
        }
    }
    let _ = session.leave().await;
    let (received, end) = reader.await.expect("the flooder's reader panicked");
    record.received = received;
    record.end = end;
    record
}

/// Like [`drain`], without a deadline: for a feed that lasts the whole run.
async fn drain_until_left(mut events: Events, received: &mut Vec<Event>) -> End {
    loop {
        match events.next().await {
            Ok(Some(event)) => received.push(event.event),
            Ok(None) => return End::Left,
            Err(err) => return End::Cut(err.code()),
        }
    }
}

/// A `chittychat-client` process that was killed with SIGKILL, and what it printed.
struct KilledProcess {
    name: String,
    stdout: Vec<String>,
}

/// Starts [`KILLED_PROCESSES`] client processes at random times, has each publish a
/// few lines, and kills each with SIGKILL while it is present.
async fn killed_processes(url: String, seed: u64, chaos_ends: Instant) -> Vec<KilledProcess> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut killed = Vec::new();
    let spacing = CHAOS_FOR / KILLED_PROCESSES as u32;
    for i in 0..KILLED_PROCESSES {
        let name = format!("process{i}");
        sleep(Duration::from_millis(
            rng.random_range(0..spacing.as_millis() as u64 / 2),
        ))
        .await;
        let mut child = Command::new(env!("CARGO_BIN_EXE_chittychat-client"))
            .args(["--server", &url, "--name", &name, "--history", "0"])
            .without_user_settings()
            .env("RUST_LOG", "off")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chittychat-client");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        // Its first line is its own join notice: from then on it is present.
        let first = timeout(STEP_DEADLINE, stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("{name} did not join in time"))
            .expect("read the client's stdout")
            .unwrap_or_else(|| panic!("{name} exited before joining"));
        let printed = tokio::spawn(async move {
            let mut printed = vec![first];
            while let Ok(Some(line)) = stdout.next_line().await {
                printed.push(line);
            }
            printed
        });
        // Keep stdin open: its end would make the client leave politely.
        let mut stdin = child.stdin.take().expect("piped stdin");
        for n in 0..3 {
            let line = format!("{name} says hello {n}\n");
            stdin.write_all(line.as_bytes()).await.expect("write stdin");
        }
        let lives_for = Duration::from_millis(rng.random_range(500..3_000));
        sleep_until((Instant::now() + lives_for).min(chaos_ends)).await;
        child.start_kill().expect("SIGKILL the client");
        let status = timeout(STEP_DEADLINE, child.wait())
            .await
            .expect("a killed client exits")
            .expect("wait for the client");
        assert!(
            !status.success(),
            "{name} was killed, yet exited with {status}"
        );
        drop(stdin);
        let stdout = timeout(STEP_DEADLINE, printed)
            .await
            .expect("a killed client's stdout closes")
            .expect("the stdout reader panicked");
        killed.push(KilledProcess { name, stdout });
    }
    killed
}

/// What the run reached.
struct Figures {
    lives: usize,
    names: usize,
    peak_present: usize,
    events: usize,
    deliveries: usize,
    dropped: usize,
    too_slow: usize,
    accepted: usize,
    refused: usize,
}

/// Holds the run against the service's promises; panics with the first broken one.
fn check(
    observer: Record,
    records: &[Record],
    processes: &[KilledProcess],
    server_log: &[String],
    server_status: ExitStatus,
) -> Figures {
    // The server shut down cleanly and never panicked.
    let alarming: Vec<&String> = server_log
        .iter()
        .filter(|line| line.contains("panicked") || line.contains("ERROR"))
        .collect();
    assert!(alarming.is_empty(), "the server logged: {alarming:#?}");
    assert!(
        server_status.success(),
        "the server ended with {server_status}"
    );

    // The observer saw the whole history: from its own join (seq 1) on, no gaps.
    assert_eq!(observer.end, End::Left, "the observer's feed ended early");
    let history: Vec<&Event> = observer.received.iter().collect();
    for (i, event) in history.iter().enumerate() {
        assert_eq!(
            event.seq,
            i as u64 + 1,
            "the observer missed or repeated an event"
        );
    }
    let by_seq: BTreeMap<u64, &Event> = history.iter().map(|e| (e.seq, *e)).collect();

    // Lamport times rise with sequence numbers; notices say the exact sentences.
    for pair in history.windows(2) {
        assert!(
            pair[0].lamport < pair[1].lamport,
            "Lamport time fell or stood still from seq {} to seq {}",
            pair[0].seq,
            pair[1].seq
        );
    }
    for event in &history {
        let expected = match event.kind {
            EventKind::Joined => joined_sentence(&event.participant, event.lamport),
            EventKind::Left => left_sentence(&event.participant, event.lamport),
            EventKind::Chat => continue,
        };
        assert_eq!(event.text, expected, "seq {}", event.seq);
    }

    // Joins and leaves alternate per name, and every join is matched by one leave
    // (the observer's own leave is broadcast to nobody).
    let mut present: HashSet<&str> = HashSet::new();
    let mut peak_present = 0;
    let mut joins = 0;
    for event in &history {
        match event.kind {
            EventKind::Joined => {
                joins += 1;
                assert!(
                    present.insert(&event.participant),
                    "{} joined twice without leaving (seq {})",
                    event.participant,
                    event.seq
                );
                peak_present = peak_present.max(present.len());
            }
            EventKind::Left => assert!(
                present.remove(&*event.participant),
                "{} left without having joined (seq {})",
                event.participant,
                event.seq
            ),
            EventKind::Chat => assert!(
                present.contains(&*event.participant),
                "{} published while absent (seq {})",
                event.participant,
                event.seq
            ),
        }
    }
    assert_eq!(
        present.into_iter().collect::<Vec<_>>(),
        ["observer"],
        "participants never announced as having left"
    );

    // Every chat message was broadcast once.
    let mut broadcast_texts: HashMap<&str, u64> = HashMap::new();
    for event in history.iter().filter(|e| e.kind == EventKind::Chat) {
        if let Some(first) = broadcast_texts.insert(&event.text, event.seq) {
            panic!(
                "{:?} was broadcast twice (seq {first} and {})",
                event.text, event.seq
            );
        }
    }

    let mut figures = Figures {
        lives: records.len() + processes.len() + 1,
        names: 0,
        peak_present,
        events: history.len(),
        deliveries: observer.received.len(),
        dropped: 0,
        too_slow: 0,
        accepted: 0,
        refused: 0,
    };
    let mut names: HashSet<&str> = HashSet::new();
    let mut own_joins = 1;
    for record in records {
        let who = format!("{} (life {})", record.name, record.life);
        names.insert(&record.name);
        figures.deliveries += record.received.len();

        // Its feed: its own join notice, then every later event without a gap, each
        // exactly as everyone else saw it.
        let first = record
            .received
            .first()
            .unwrap_or_else(|| panic!("{who} received not even its own join notice"));
        assert!(
            first.kind == EventKind::Joined && *first.participant == *record.name,
            "{who}'s first event is not its own join notice: {first:?}"
        );
        own_joins += 1;
        for (i, event) in record.received.iter().enumerate() {
            assert_eq!(
                event.seq,
                first.seq + i as u64,
                "{who} missed or repeated an event"
            );
            assert_eq!(
                Some(&event),
                by_seq.get(&event.seq),
                "{who} and the observer disagree on seq {}",
                event.seq
            );
        }

        // Its one leave notice, and how its feed ended against it.
        let left = next_notice(&history, &record.name, first.seq)
            .filter(|e| e.kind == EventKind::Left)
            .unwrap_or_else(|| panic!("{who} was never announced as having left"));
        let last = record.received.last().map_or(0, |e| e.seq);
        match record.end {
            // After Leave, it received everything up to its own leave notice.
            End::Left => assert_eq!(
                last + 1,
                left.seq,
                "{who} left but missed events: after #{last} came {:?}",
                by_seq.get(&(last + 1))
            ),
            End::Killed => {
                assert!(last < left.seq, "{who} received events after its leave");
                figures.dropped += 1;
            }
            End::Cut(Some(Code::ResourceExhausted)) => {
                assert!(last < left.seq, "{who} received events after its leave");
                figures.too_slow += 1;
            }
            // A reader cut off while it read nothing loses its connection within the
            // grace; reading later, it finds the connection gone, not the status.
            End::Cut(Some(Code::Unknown | Code::Unavailable)) if record.name == "stalled" => {
                assert!(last < left.seq, "{who} received events after its leave");
                figures.too_slow += 1;
            }
            End::Cut(code) => panic!("{who}'s feed ended with {code:?}"),
        }

        // Its messages: accepted ones broadcast under their number, refused ones never.
        for Published { text, outcome } in &record.published {
            let broadcast = broadcast_texts.get(text.as_str());
            match outcome {
                Outcome::Accepted(seq) => {
                    figures.accepted += 1;
                    assert_eq!(broadcast, Some(seq), "{who}'s {text:?}");
                    assert_eq!(*by_seq[seq].participant, *record.name, "{text:?}");
                }
                Outcome::Refused(code) => {
                    figures.refused += 1;
                    assert_eq!(broadcast, None, "{who}'s refused {text:?} was broadcast");
                    assert!(
                        matches!(code, Some(Code::ResourceExhausted | Code::Unauthenticated)),
                        "{who}'s {text:?} was refused with {code:?}"
                    );
                }
                Outcome::Unknown => {
                    if let Some(seq) = broadcast {
                        assert_eq!(*by_seq[seq].participant, *record.name, "{text:?}");
                    }
                }
            }
        }
    }
    let every_text: HashSet<&str> = records
        .iter()
        .flat_map(|r| r.published.iter().map(|p| p.text.as_str()))
        .collect();
    for (text, seq) in &broadcast_texts {
        let from_a_process = processes
            .iter()
            .any(|p| *by_seq[seq].participant == *p.name);
        assert!(
            every_text.contains(text) || from_a_process,
            "seq {seq}: {text:?} was never published"
        );
    }

    // The stalled reader was cut off as too slow, and the operator was told.
    let stalled = records
        .iter()
        .find(|r| r.name == "stalled")
        .expect("the stalled reader's record");
    // It read nothing until the end, long after the grace its status had: its
    // connection was closed at once, so it finds the connection gone.
    assert!(
        matches!(
            stalled.end,
            End::Cut(Some(Code::Unknown | Code::Unavailable))
        ),
        "the stalled reader was not disconnected as too slow: {:?}",
        stalled.end
    );
    assert!(
        server_log.iter().any(|line| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|line| {
                line[field::CAUSE] == LeaveCause::TooSlow.as_str()
                    && line[field::PARTICIPANT] == "stalled"
            })
        }),
        "the server did not log the stalled reader's disconnection"
    );

    // Each killed process joined, printed what it received in order, and was
    // announced as having left.
    for process in processes {
        names.insert(&process.name);
        let joined = history
            .iter()
            .find(|e| e.kind == EventKind::Joined && *e.participant == *process.name)
            .unwrap_or_else(|| panic!("{} never joined", process.name));
        own_joins += 1;
        let left =
            next_notice(&history, &process.name, joined.seq).filter(|e| e.kind == EventKind::Left);
        assert!(
            left.is_some(),
            "{} was never announced as left",
            process.name
        );
        for (i, line) in process.stdout.iter().enumerate() {
            let seq = joined.seq + i as u64;
            let expected = event_line(by_seq[&seq], false);
            let complete = i + 1 < process.stdout.len();
            assert!(
                *line == expected || (!complete && expected.starts_with(line.as_str())),
                "{} printed {line:?} for seq {seq}, expected {expected:?}",
                process.name
            );
        }
        figures.deliveries += process.stdout.len();
    }
    assert_eq!(joins, own_joins, "the server announced joins nobody made");
    figures.names = names.len() + 1;
    figures
}

/// The first join or leave notice about `name` after seq `after`.
fn next_notice<'a>(history: &[&'a Event], name: &str, after: u64) -> Option<&'a Event> {
    history
        .iter()
        .find(|e| e.seq > after && e.kind != EventKind::Chat && *e.participant == *name)
        .copied()
}

/// Joins without history: every record starts at its own join notice.
fn no_history() -> JoinOptions {
    JoinOptions {
        history: Some(0),
        ..JoinOptions::default()
    }
}
