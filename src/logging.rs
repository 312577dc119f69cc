//! Logging setup shared by the binaries: text or JSON lines, to stderr or a file,
//! filtered by `RUST_LOG`, gathered for a few milliseconds and written in batches
//! by a background thread, so logging never blocks the caller on I/O, and written
//! behind to disk when it lands in a file.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

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
/// guard alive until the program ends: dropping it writes what is gathered.
pub fn init(
    format: LogFormat,
    file: Option<&Path>,
    default_filter: &str,
) -> std::io::Result<LogGuard> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let (writer, guard, ansi) = match file {
        Some(path) => {
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            let (writer, guard) = batched(WriteBehind::new(file), LOG_GATHERED_BYTES)?;
            (writer, guard, false)
        }
        None => {
            let stderr = std::io::stderr();
            let ansi = stderr.is_terminal();
            let (writer, guard) = batched(WriteBehind::new(stderr), LOG_GATHERED_BYTES)?;
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

/// How long the first of a batch of log lines waits for the lines after it before
/// the batch is written.
///
/// A busy server logs a line for every call, a thousand and more a second. Handed
/// to a writer thread one by one, each line woke that thread (and cost a `write`
/// system call): on two CPUs shared with the load, hundreds of wake-ups a second,
/// each of which waited for a CPU that the requests were waiting for too. Gathered
/// for this long, the thread wakes at most twice a batch and never when nothing is
/// logged; a line reaches the file or the terminal at most this much later.
pub const LOG_GATHER: Duration = Duration::from_millis(10);

/// How many bytes of log lines may wait to be written. A thread that logs while
/// this much waits waits itself until the writer has taken it: the log is lossless,
/// because it is the record the Lamport timestamps are checked against. Lines
/// are 100–250 bytes: 1 MiB is several seconds of a thousand lines a second, so a
/// disk that stalls for less holds up no thread that logs.
pub const LOG_GATHERED_BYTES: usize = 1 << 20;

/// Keeps the log's writer thread running; dropping it writes every line gathered
/// and ends the thread.
#[must_use = "dropping the guard ends logging"]
pub struct LogGuard {
    shared: Arc<Gathered>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        lock(&self.shared).closing = true;
        self.shared.arrived.notify_all();
        self.shared.taken.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogGuard").finish_non_exhaustive()
    }
}

/// The lines waiting to be written, shared by the threads that log and the writer.
struct Gathered {
    waiting: Mutex<Waiting>,
    /// Signalled when a line arrives and nothing was waiting, when the lines fill
    /// the limit, and when the guard is dropped.
    arrived: Condvar,
    /// Signalled when the writer has taken the waiting lines.
    taken: Condvar,
    limit: usize,
}

struct Waiting {
    lines: Vec<u8>,
    /// The guard was dropped: write what is left and end.
    closing: bool,
    /// The writer thread has ended: later lines have nowhere to go.
    ended: bool,
}

fn lock(gathered: &Gathered) -> MutexGuard<'_, Waiting> {
    // Nothing that holds the lock can leave it half-done: a panic while a line is
    // copied in at worst loses that line.
    gathered
        .waiting
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// What `tracing-subscriber` writes each line through: it formats a line whole,
/// then writes it with one `write_all` to the writer this makes.
#[derive(Clone)]
struct Batched(Arc<Gathered>);

impl<'a> MakeWriter<'a> for Batched {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        let gathered = &*self.0;
        let mut waiting = lock(gathered);
        while waiting.lines.len() >= gathered.limit && !waiting.closing {
            gathered.arrived.notify_one();
            waiting = gathered
                .taken
                .wait(waiting)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let was_empty = waiting.lines.is_empty();
        LineWriter {
            waiting: (!waiting.ended).then_some(waiting),
            gathered,
            was_empty,
        }
    }
}

/// Copies one line in, holding the lock so that lines never interleave.
struct LineWriter<'a> {
    waiting: Option<MutexGuard<'a, Waiting>>,
    gathered: &'a Gathered,
    was_empty: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(waiting) = &mut self.waiting {
            waiting.lines.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        let Some(waiting) = self.waiting.take() else {
            return;
        };
        let first = self.was_empty && !waiting.lines.is_empty();
        // Unlocked first, so that the writer does not wake into a held lock.
        drop(waiting);
        if first {
            self.gathered.arrived.notify_one();
        }
    }
}

/// Starts the thread that writes the gathered lines to `out`.
fn batched<W: Write + Send + 'static>(
    out: W,
    limit: usize,
) -> std::io::Result<(Batched, LogGuard)> {
    let shared = Arc::new(Gathered {
        waiting: Mutex::new(Waiting {
            lines: Vec::new(),
            closing: false,
            ended: false,
        }),
        arrived: Condvar::new(),
        taken: Condvar::new(),
        limit,
    });
    let thread = std::thread::Builder::new()
        .name("chittychat-lines".into())
        .spawn({
            let shared = Arc::clone(&shared);
            move || write_batches(&shared, out)
        })?;
    Ok((
        Batched(Arc::clone(&shared)),
        LogGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

/// The writer thread: waits for a line, lets the lines of the next [`LOG_GATHER`]
/// join it, and writes them all at once; until the guard is dropped and nothing is
/// left.
fn write_batches(gathered: &Gathered, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        let mut waiting = gathered
            .arrived
            .wait_while(lock(gathered), |w| w.lines.is_empty() && !w.closing)
            .unwrap_or_else(PoisonError::into_inner);
        if waiting.lines.is_empty() {
            waiting.ended = true;
            return;
        }
        if !waiting.closing {
            waiting = gathered
                .arrived
                .wait_timeout_while(waiting, LOG_GATHER, |w| {
                    w.lines.len() < gathered.limit && !w.closing
                })
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        std::mem::swap(&mut waiting.lines, &mut batch);
        drop(waiting);
        gathered.taken.notify_all();
        // A log that cannot be written has nowhere to say so; the lines are dropped
        // and the next batch tries again.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        // One burst's buffer is not kept for good.
        batch.shrink_to(gathered.limit);
    }
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

#[cfg(test)]
mod gathering_tests {
    use super::*;
    use std::sync::mpsc;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// A sink that hands every write to the test and, when gated, then waits for
    /// the test's leave to return.
    struct Sink {
        written: mpsc::Sender<Vec<u8>>,
        gate: Option<mpsc::Receiver<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.written.send(buf.to_vec());
            if let Some(gate) = &self.gate {
                let _ = gate.recv();
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log_line(writer: &Batched, line: &str) {
        writer.make_writer().write_all(line.as_bytes()).unwrap();
    }

    /// A writer thread that writes to a sink that never holds it up, and what the
    /// sink was handed.
    fn ungated() -> (Batched, LogGuard, mpsc::Receiver<Vec<u8>>) {
        let (written, arrived) = mpsc::channel();
        let sink = Sink {
            written,
            gate: None,
        };
        let (writer, guard) = batched(sink, LOG_GATHERED_BYTES).unwrap();
        (writer, guard, arrived)
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_and_in_order_and_all_by_the_guard_s_drop() {
        let (writer, guard, arrived) = ungated();
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let writer = &writer;
                scope.spawn(move || {
                    for n in 0..2000 {
                        log_line(writer, &format!("thread {thread} line {n}\n"));
                    }
                });
            }
        });
        drop(guard);
        let all: Vec<u8> = arrived.try_iter().flatten().collect();
        let all = String::from_utf8(all).unwrap();
        let mut next = [0; 4];
        for line in all.lines() {
            let words: Vec<&str> = line.split(' ').collect();
            let [_, thread, _, n] = words[..] else {
                panic!("a torn line: {line:?}");
            };
            let thread: usize = thread.parse().unwrap();
            assert_eq!(n.parse::<usize>().unwrap(), next[thread], "{line}");
            next[thread] += 1;
        }
        assert_eq!(next, [2000; 4], "every line written, once");
    }

    #[test]
    fn a_lone_line_is_written_without_waiting_for_more() {
        let (writer, _guard, arrived) = ungated();
        log_line(&writer, "alone\n");
        assert_eq!(arrived.recv_timeout(DEADLINE).unwrap(), b"alone\n");
        log_line(&writer, "and later another\n");
        assert_eq!(
            arrived.recv_timeout(DEADLINE).unwrap(),
            b"and later another\n"
        );
    }

    #[test]
    fn a_thread_that_logs_past_the_limit_waits_for_the_writer_and_loses_nothing() {
        let (written, arrived) = mpsc::channel();
        let (open, gate) = mpsc::sync_channel(0);
        let (writer, guard) = batched(
            Sink {
                written,
                gate: Some(gate),
            },
            64,
        )
        .unwrap();
        // Bound again after the guard, so that it is dropped first: a failed assert
        // then lets the sink go before the guard waits for the writer.
        let open = open;
        // The writer takes the first line and is held in the sink's write.
        log_line(&writer, "first\n");
        assert_eq!(arrived.recv_timeout(DEADLINE).unwrap(), b"first\n");
        let (logged, done) = mpsc::channel();
        let logging = std::thread::spawn({
            let writer = writer.clone();
            move || {
                for n in 0..20 {
                    log_line(&writer, &format!("line {n:02} of twenty\n"));
                    logged.send(n).unwrap();
                }
            }
        });
        // 18 bytes a line: the fourth fills the limit, and the fifth must wait.
        for n in 0..4 {
            assert_eq!(done.recv_timeout(DEADLINE).unwrap(), n);
        }
        assert_eq!(
            done.recv_timeout(Duration::from_millis(200)),
            Err(mpsc::RecvTimeoutError::Timeout),
            "a thread logging past the limit must wait for the writer"
        );
        // Let the sink go: every line arrives.
        std::thread::spawn(move || while open.send(()).is_ok() {});
        logging.join().unwrap();
        drop(guard);
        let all: Vec<u8> = arrived.try_iter().flatten().collect();
        let expected: String = (0..20)
            .map(|n| format!("line {n:02} of twenty\n"))
            .collect();
        assert_eq!(String::from_utf8(all).unwrap(), expected);
    }
}
