//! Logging setup shared by the binaries: text or JSON lines, to stderr or a file,
//! filtered by `RUST_LOG`, written by a background thread so logging never blocks
//! the caller on I/O, and written behind to disk when it lands in a file.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, IsTerminal, Write};
use std::os::fd::AsFd;
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
            let (writer, guard) = builder().finish(BufWriter::new(WriteBehind::new(file)));
            (writer, guard, false)
        }
        None => {
            let stderr = std::io::stderr();
            let ansi = stderr.is_terminal();
            let (writer, guard) = builder().finish(BufWriter::new(WriteBehind::new(stderr)));
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

/// How much of the log may be written to a file before the kernel is asked to
/// start writing it to disk, so that it never writes the log in bulk in the
/// middle of the event log's commits.
pub const LOG_WRITE_BEHIND_BYTES: u64 = 64 * 1024;

/// Writes the log and, when it lands in a regular file (`--log-file`, or stderr
/// sent to one), asks the kernel every [`LOG_WRITE_BEHIND_BYTES`] to start writing
/// the file's new pages to disk, without waiting for them.
///
/// Left alone, Linux keeps a file's new pages in memory for 30 s
/// (`vm.dirty_expire_centisecs`) and then writes them in bulk: 30 s of a busy
/// server's log, a line per message, is several megabytes. The event log's next
/// commit, on the same disk, waits for that write too: its fsync ends by asking
/// the disk to flush its write cache, which waits for what is already on its way
/// to the disk, whichever file it came from (on ext4 with a journal, the journal
/// commit an fsync makes waits for it as well). In every full siege with the log
/// in a file, a commit of 36–214 ms about 30 s after the server started
/// (`docs/hostile-peers.md`, *a tenth look*). Written behind in small pieces, a
/// commit waits for a few kilobytes at most. PostgreSQL's `*_flush_after`
/// settings do the same for its own files.
struct WriteBehind<W> {
    inner: W,
    /// The file behind `inner`, when it is a regular file the kernel can write
    /// behind; `None` for a terminal or a pipe, or once asking failed.
    file: Option<File>,
    unsent: u64,
    /// How many times the kernel was asked.
    asked: u64,
}

impl<W: Write + AsFd> WriteBehind<W> {
    fn new(inner: W) -> Self {
        let file = inner
            .as_fd()
            .try_clone_to_owned()
            .map(File::from)
            .ok()
            .filter(|file| file.metadata().is_ok_and(|meta| meta.is_file()));
        Self {
            inner,
            file,
            unsent: 0,
            asked: 0,
        }
    }

    fn wrote(&mut self, bytes: usize) {
        self.unsent += bytes as u64;
        if self.unsent < LOG_WRITE_BEHIND_BYTES {
            return;
        }
        self.unsent = 0;
        if let Some(file) = &self.file {
            if start_writing(file) {
                self.asked += 1;
            } else {
                // Not on this file system: write as the kernel sees fit.
                self.file = None;
            }
        }
    }
}

impl<W: Write + AsFd> Write for WriteBehind<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.wrote(written);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Asks the kernel to start writing `file`'s dirty pages to disk, not waiting for
/// them; false when it cannot.
#[cfg(target_os = "linux")]
fn start_writing(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range takes a descriptor we own and integers; it touches
    // no memory of ours. Offset 0 and length 0 mean the whole file.
    let done =
        unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    done == 0
}

/// Elsewhere the kernel writes the log as it sees fit.
#[cfg(not(target_os = "linux"))]
fn start_writing(_file: &File) -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_log_in_a_file_is_written_behind_as_it_grows_and_arrives_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.log");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let mut log = WriteBehind::new(file);
        let piece = vec![b'x'; LOG_WRITE_BEHIND_BYTES as usize / 4];
        for _ in 0..4 * 3 - 1 {
            log.write_all(&piece).unwrap();
        }
        assert_eq!(
            log.asked, 2,
            "asked after each {LOG_WRITE_BEHIND_BYTES} bytes"
        );
        log.write_all(&piece).unwrap();
        assert_eq!(log.asked, 3);
        log.write_all(b"the last line\n").unwrap();
        log.flush().unwrap();
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written.len(), 3 * LOG_WRITE_BEHIND_BYTES as usize + 14);
        assert!(written.ends_with(b"xthe last line\n"));
    }

    #[test]
    fn a_log_to_a_pipe_is_left_to_the_kernel() {
        let (reader, writer) = std::io::pipe().unwrap();
        let mut log = WriteBehind::new(writer);
        assert!(log.file.is_none());
        let reading = std::thread::spawn(move || std::io::read_to_string(reader).unwrap());
        let line = "a line\n".repeat(LOG_WRITE_BEHIND_BYTES as usize / 7 + 1);
        log.write_all(line.as_bytes()).unwrap();
        assert_eq!(log.asked, 0);
        drop(log);
        assert_eq!(reading.join().unwrap(), line);
    }
}
