//! What an operator can watch: the server's metrics, through the `metrics` facade.
//!
//! The library only counts. Without a recorder installed (a program embedding the
//! library, the tests) every count is a no-op; `chittychat-server --metrics ADDR`
//! installs a Prometheus recorder and serves `/metrics`. The handles of the counts
//! on hot paths are made once, so counting costs one atomic add.

use metrics::{Counter, Gauge, Histogram};
use std::sync::OnceLock;

/// Participants present (in a cluster, on every node).
pub const PARTICIPANTS_PRESENT: &str = "chittychat_participants_present";
/// Sessions this server serves (in a cluster, this node's).
pub const SESSIONS: &str = "chittychat_sessions";
/// Events appended to this server's log (in a cluster, applied from the stream).
pub const EVENTS_APPENDED: &str = "chittychat_events_appended_total";
/// Events delivered to participants' feeds.
pub const EVENTS_DELIVERED: &str = "chittychat_events_delivered_total";
/// How long an accepted Publish took to answer, in seconds.
pub const PUBLISH_SECONDS: &str = "chittychat_publish_seconds";
/// How long each commit of the event log's store took, in seconds: with the log
/// on disk, mostly the disk's `fdatasync`. Every request is answered only once its
/// commit is done, so a slow disk shows here first.
pub const LOG_COMMIT_SECONDS: &str = "chittychat_log_commit_seconds";
/// Joins that asked to resume, by outcome (`resumed`, `gap`, `other_log`).
pub const RESUMES: &str = "chittychat_resumes_total";
/// Participants cut off for falling behind what the log keeps.
pub const READERS_CUT_OFF: &str = "chittychat_readers_cut_off_total";
/// 1 while a cluster's node reaches NATS, 0 while it does not.
pub const NATS_CONNECTED: &str = "chittychat_nats_connected";

/// Describes every metric to the recorder installed now, for its `# HELP` lines.
pub fn describe() {
    metrics::describe_gauge!(
        PARTICIPANTS_PRESENT,
        "Participants present (in a cluster, on every node)"
    );
    metrics::describe_gauge!(
        SESSIONS,
        "Sessions this server serves (in a cluster, this node's)"
    );
    metrics::describe_counter!(
        EVENTS_APPENDED,
        "Events appended to this server's log (in a cluster, applied from the stream)"
    );
    metrics::describe_counter!(EVENTS_DELIVERED, "Events delivered to participants' feeds");
    metrics::describe_histogram!(
        PUBLISH_SECONDS,
        metrics::Unit::Seconds,
        "How long an accepted Publish took to answer"
    );
    metrics::describe_histogram!(
        LOG_COMMIT_SECONDS,
        metrics::Unit::Seconds,
        "How long each commit of the event log took (with the log on disk, mostly the disk)"
    );
    metrics::describe_counter!(
        RESUMES,
        "Joins that asked to resume, by outcome (resumed, gap, other_log)"
    );
    metrics::describe_counter!(
        READERS_CUT_OFF,
        "Participants cut off for falling behind what the log keeps"
    );
    metrics::describe_gauge!(
        NATS_CONNECTED,
        "1 while this cluster node reaches NATS, 0 while it does not"
    );
}

/// The count of events appended.
pub(crate) fn appended() -> &'static Counter {
    static HANDLE: OnceLock<Counter> = OnceLock::new();
    HANDLE.get_or_init(|| metrics::counter!(EVENTS_APPENDED))
}

/// The count of events delivered.
pub(crate) fn delivered() -> &'static Counter {
    static HANDLE: OnceLock<Counter> = OnceLock::new();
    HANDLE.get_or_init(|| metrics::counter!(EVENTS_DELIVERED))
}

/// The time Publish takes.
pub(crate) fn publish_seconds() -> &'static Histogram {
    static HANDLE: OnceLock<Histogram> = OnceLock::new();
    HANDLE.get_or_init(|| metrics::histogram!(PUBLISH_SECONDS))
}

/// The time a commit of the event log takes.
pub(crate) fn commit_seconds() -> &'static Histogram {
    static HANDLE: OnceLock<Histogram> = OnceLock::new();
    HANDLE.get_or_init(|| metrics::histogram!(LOG_COMMIT_SECONDS))
}

/// Who is present, and whom this server serves.
pub(crate) fn presence(present: usize, sessions: usize) {
    static PRESENT: OnceLock<Gauge> = OnceLock::new();
    static SERVED: OnceLock<Gauge> = OnceLock::new();
    PRESENT
        .get_or_init(|| metrics::gauge!(PARTICIPANTS_PRESENT))
        .set(present as f64);
    SERVED
        .get_or_init(|| metrics::gauge!(SESSIONS))
        .set(sessions as f64);
}

/// A Join that asked to resume, and how it turned out.
pub(crate) fn resumed(outcome: &'static str) {
    metrics::counter!(RESUMES, "outcome" => outcome).increment(1);
}

/// Participants cut off for falling behind.
pub(crate) fn cut_off(count: usize) {
    metrics::counter!(READERS_CUT_OFF).increment(count as u64);
}

/// Whether this cluster node reaches NATS.
pub(crate) fn nats_connected(connected: bool) {
    metrics::gauge!(NATS_CONNECTED).set(if connected { 1.0 } else { 0.0 });
}
