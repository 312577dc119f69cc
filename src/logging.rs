//! Logging setup shared by the binaries: text or JSON lines, to stderr or a file,
//! filtered by `RUST_LOG`, written by a background thread so logging never blocks
//! the caller on I/O.

use std::fs::OpenOptions;
use std::io::{BufWriter, IsTerminal};
use std::path::Path;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line; the Lamport time is the field `lamport`.
    Json,
}

/// Installs the global subscriber. Logs go to `file` (appended) or, without one, to
/// stderr. `default_filter` applies when `RUST_LOG` is unset. Keep the returned
/// guard alive until the program ends: dropping it flushes what is buffered.
pub fn init(
    format: LogFormat,
    file: Option<&Path>,
    default_filter: &str,
) -> std::io::Result<WorkerGuard> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let (writer, guard, ansi) = match file {
        Some(path) => {
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            let (writer, guard) = builder().finish(BufWriter::new(file));
            (writer, guard, false)
        }
        None => {
            let ansi = std::io::stderr().is_terminal();
            let (writer, guard) = builder().finish(BufWriter::new(std::io::stderr()));
            (writer, guard, ansi)
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    let installed = match format {
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    // A subscriber is already installed only when a test calls this twice; the
    // first one keeps working.
    drop(installed);
    Ok(guard)
}

/// The writer thread flushes whenever it has written every line waiting for it,
/// so the `BufWriter` it writes through turns a burst of lines into one system
/// call without holding any line back once the burst is over.
fn builder() -> NonBlockingBuilder {
    // Lossless: a burst waits for the writer rather than dropping lines, because the
    // logs are the record the Lamport timestamps are checked against.
    NonBlockingBuilder::default().lossy(false)
}
