//! What a bench run measured: a table for people and JSON for scripts.

use serde::Serialize;
use std::fmt;

/// The results of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The mode run: saturate, rate, idle or join-storm.
    pub mode: String,
    /// Participants joined, each over its own connection.
    pub participants: usize,
    /// Participants that publish.
    pub publishers: usize,
    /// Characters per published message.
    pub message_chars: usize,
    /// How the publishers published: "unary" (a Publish call per message) or
    /// "stream" (a PublishStream each).
    pub publish_over: String,
    /// The offered rate in messages per second (rate mode).
    pub offered_msgs_per_s: Option<f64>,
    /// The measured window in seconds.
    pub window_s: f64,
    /// Events delivered to participants in the window.
    pub deliveries: u64,
    /// Deliveries per second in the window.
    pub deliveries_per_s: f64,
    /// Publishes the server accepted in the window.
    pub publishes: u64,
    /// Publishes per second in the window.
    pub publishes_per_s: f64,
    /// Publish-to-delivery latency over every delivery of every message published
    /// in the window.
    pub latency: Option<Latency>,
    /// Publish-to-reply latency of every message published in the window: how long
    /// a publisher waits for its message to be durable.
    pub publish_latency: Option<Latency>,
    /// Resume mode: how a returning participant caught up.
    pub resume: Option<Resumed>,
    /// Restart mode: how long a restart on a full log took.
    pub restart: Option<Restarted>,
    /// History-join mode: how long newcomers took to get their history.
    pub history_join: Option<HistoryJoined>,
    /// Sequence numbers a participant never received.
    pub lost: u64,
    /// Events a participant received twice or out of order.
    pub duplicated: u64,
    /// Over PublishStreams: messages delivered before one their publisher sent
    /// earlier (one participant's view; 0 when publishing over calls, whose
    /// concurrent messages have no order).
    pub reordered: u64,
    /// Calls or feeds that failed.
    pub failures: u64,
    /// The first failure.
    pub first_failure: Option<String>,
    /// How joining went.
    pub joins: Joins,
    /// The server process, when the bench spawned it.
    pub server: Option<ServerUsage>,
    /// The bench's own CPU use in the window, in percent of one core.
    pub load_cpu_percent: Option<f64>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Deliveries measured.
    pub samples: u64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// The slowest.
    pub max_us: f64,
}

impl Latency {
    /// "p50 / p99 / p99.9 µs (max, how many `samples_of`)", for the table.
    fn describe(&self, samples_of: &str) -> String {
        format!(
            "{:.0} / {:.0} / {:.0} µs (max {:.0} µs, {} {samples_of})",
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            thousands(self.samples as f64)
        )
    }
}

/// How a participant that was away caught up (resume mode).
#[derive(Debug, Clone, Serialize)]
pub struct Resumed {
    /// Events published while it was away.
    pub missed: u64,
    /// Seconds from sending the resuming Join until every missed event and its own
    /// join notice had arrived.
    pub seconds: f64,
    /// Whether the server resumed the feed exactly (no gap).
    pub gapless: bool,
}

/// How newcomers that asked for history got it (history-join mode).
#[derive(Debug, Clone, Serialize)]
pub struct HistoryJoined {
    /// Past events each newcomer asked for, and got.
    pub history: u32,
    /// Newcomers that joined, one after another.
    pub joins: u64,
    /// From sending each Join until its history and its own join notice had
    /// arrived.
    pub latency: Latency,
}

/// How a server restarted on a log of many events (restart mode).
#[derive(Debug, Clone, Serialize)]
pub struct Restarted {
    /// Events in the log when the server was killed.
    pub events: u64,
    /// Seconds from starting the server until it listened.
    pub listening_s: f64,
    /// Seconds from starting the server until a Join was answered.
    pub serving_s: f64,
}

/// How long joining took.
#[derive(Debug, Clone, Serialize)]
pub struct Joins {
    /// Seconds until every participant had its own join notice.
    pub all_joined_s: f64,
    /// Seconds until every participant had seen every later participant's notice.
    pub all_notices_seen_s: f64,
    /// Join notices delivered.
    pub deliveries: u64,
    /// Server CPU per join-notice delivery, when the bench spawned the server.
    pub server_cpu_ns_per_delivery: Option<f64>,
    /// Joins tried again because their connection failed before they were answered.
    pub retried: u64,
}

/// The server's CPU and memory, read from `/proc`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerUsage {
    /// The server's pid.
    pub pid: u32,
    /// CPU in the window, in percent of one core.
    pub cpu_percent: f64,
    /// Server CPU time per delivery in the window.
    pub cpu_ns_per_delivery: Option<f64>,
    /// Server CPU time per accepted publish in the window.
    pub cpu_ns_per_publish: Option<f64>,
    /// Resident memory before any participant joined.
    pub baseline_rss_kib: u64,
    /// Resident memory at the end.
    pub rss_kib: u64,
    /// Peak resident memory.
    pub peak_rss_kib: u64,
    /// (resident memory at the end - before joining) / participants.
    pub kib_per_participant: f64,
}

impl Report {
    /// True when every event reached every participant exactly once, and each
    /// publisher's messages in the order sent where that is promised.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.reordered == 0 && self.failures == 0
    }
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let offered = self
            .offered_msgs_per_s
            .map(|r| format!(", {} msgs/s offered", thousands(r)))
            .unwrap_or_default();
        writeln!(
            f,
            "chittychat-bench {}: {} participants, {} publisher{} ({}), {}-char messages{offered}",
            self.mode,
            self.participants,
            self.publishers,
            if self.publishers == 1 { "" } else { "s" },
            self.publish_over,
            self.message_chars
        )?;
        // Values start in one column; a longer label still gets its space.
        let row = |f: &mut fmt::Formatter<'_>, label: &str, value: String| {
            writeln!(f, "  {label:<23} {value}")
        };
        row(f, "window", format!("{:.1} s", self.window_s))?;
        row(f, "deliveries/s", thousands(self.deliveries_per_s))?;
        row(f, "publishes/s", thousands(self.publishes_per_s))?;
        if let Some(l) = &self.latency {
            row(f, "latency p50/p99/p99.9", l.describe("deliveries"))?;
        }
        if let Some(l) = &self.publish_latency {
            row(f, "publish p50/p99/p99.9", l.describe("publishes"))?;
        }
        if let Some(r) = &self.resume {
            row(
                f,
                "resume",
                format!(
                    "{} missed events caught up in {:.3} s ({})",
                    thousands(r.missed as f64),
                    r.seconds,
                    if r.gapless { "no gap" } else { "with a gap" }
                ),
            )?;
        }
        if let Some(h) = &self.history_join {
            row(
                f,
                "join with history",
                format!(
                    "{} newcomers, {} past events each: {}",
                    h.joins,
                    h.history,
                    h.latency.describe("joins")
                ),
            )?;
        }
        if let Some(r) = &self.restart {
            row(
                f,
                "restart",
                format!(
                    "{} events: listening after {:.2} s, serving after {:.2} s",
                    thousands(r.events as f64),
                    r.listening_s,
                    r.serving_s
                ),
            )?;
        }
        row(
            f,
            "lost / duplicated",
            format!("{} / {}", self.lost, self.duplicated),
        )?;
        if self.publish_over == "stream" {
            row(f, "reordered", self.reordered.to_string())?;
        }
        if self.failures > 0 {
            row(
                f,
                "failures",
                format!(
                    "{} (first: {})",
                    self.failures,
                    self.first_failure.as_deref().unwrap_or("?")
                ),
            )?;
        }
        let j = &self.joins;
        row(
            f,
            "joins",
            format!(
                "all joined in {:.2} s, all notices seen in {:.2} s{}{}",
                j.all_joined_s,
                j.all_notices_seen_s,
                j.server_cpu_ns_per_delivery
                    .map(|ns| format!(", {ns:.0} server ns per notice"))
                    .unwrap_or_default(),
                match j.retried {
                    0 => String::new(),
                    1 => "; 1 Join tried again after its connection failed".to_owned(),
                    n => format!("; {n} Joins tried again after their connection failed"),
                }
            ),
        )?;
        if let Some(s) = &self.server {
            let per = |v: Option<f64>| v.map_or("-".into(), thousands);
            row(
                f,
                "server CPU",
                format!(
                    "{:.0}% of a core; {} ns per delivery; {} ns per publish",
                    s.cpu_percent,
                    per(s.cpu_ns_per_delivery),
                    per(s.cpu_ns_per_publish)
                ),
            )?;
            row(
                f,
                "server memory",
                format!(
                    "{:.1} MiB now, {:.1} MiB peak, {:.1} KiB per participant",
                    s.rss_kib as f64 / 1024.0,
                    s.peak_rss_kib as f64 / 1024.0,
                    s.kib_per_participant
                ),
            )?;
        }
        if let Some(cpu) = self.load_cpu_percent {
            row(f, "bench CPU", format!("{cpu:.0}% of a core"))?;
        }
        Ok(())
    }
}
