//! The server process under test: spawning the real `chittychat-server` at its
//! defaults, and reading its CPU time and memory from `/proc`.

use super::BenchError;
use crate::client::{self, ConnectOptions, JoinOptions};
use crate::log_schema;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the spawned server may take to log the address it listens on.
pub const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The per-participant publish rate limit (and burst) the spawned server gets:
/// far above what one publisher can reach, so the limiter runs but never refuses.
pub const BENCH_PUBLISH_RATE: u32 = 1_000_000;

/// The pace of joins (and burst) the spawned server gets: far above what the bench
/// can reach, so the pace runs but never holds a join back, and a join storm
/// measures the server's work rather than its pace.
pub const BENCH_JOIN_RATE: u32 = 1_000_000;

/// A `chittychat-server` the bench started; killed when dropped.
#[derive(Debug)]
pub(super) struct SpawnedServer {
    child: Child,
    binary: PathBuf,
    participants: u64,
    history_limit: u64,
    streams: u64,
    address: String,
    log: PathBuf,
    keep_log: bool,
}

impl SpawnedServer {
    /// Starts `binary --listen 127.0.0.1:0` with its stderr (its log, at the
    /// default level and format) going to `log`, and waits until it listens.
    ///
    /// Everything is at its default except the limits a load test must lift: room
    /// for `participants`, a publish rate limit of [`BENCH_PUBLISH_RATE`], which
    /// stays switched on (so its cost is measured) but never refuses the bench, a
    /// pace of joins of [`BENCH_JOIN_RATE`], likewise, and room on each connection
    /// for `streams` calls at once.
    /// The server inherits the bench's file-descriptor limit.
    pub(super) async fn start(
        binary: &Path,
        participants: u64,
        history_limit: u64,
        streams: u64,
        log: PathBuf,
        keep_log: bool,
    ) -> Result<Self, BenchError> {
        // The durable log, as users run it, in a fresh directory beside the log.
        let _ = std::fs::remove_dir_all(log.with_extension("data"));
        let child = Self::spawn(binary, participants, history_limit, streams, &log)?;
        let mut server = SpawnedServer {
            child,
            binary: binary.to_owned(),
            participants,
            history_limit,
            streams,
            address: String::new(),
            log,
            keep_log,
        };
        server.address = server.wait_for_address().await?;
        Ok(server)
    }

    /// Kills the server (SIGKILL) and starts it again on the same data directory.
    /// Returns the seconds until it listened and until it answered a Join.
    pub(super) async fn restart(&mut self) -> Result<(f64, f64), BenchError> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let started = Instant::now();
        self.child = Self::spawn(
            &self.binary,
            self.participants,
            self.history_limit,
            self.streams,
            &self.log,
        )?;
        self.address = self.wait_for_address().await?;
        let listening = started.elapsed().as_secs_f64();
        let url = self.url();
        loop {
            let joined = client::join(
                &url,
                "bench-restart",
                &ConnectOptions::default(),
                JoinOptions::default(),
            )
            .await;
            match joined {
                Ok(_) => break,
                Err(_) if started.elapsed() < SERVER_START_TIMEOUT => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(err) => {
                    return Err(BenchError::Server(format!(
                        "the restarted server does not serve: {err}"
                    )));
                }
            }
        }
        Ok((listening, started.elapsed().as_secs_f64()))
    }

    fn spawn(
        binary: &Path,
        participants: u64,
        history_limit: u64,
        streams: u64,
        log: &Path,
    ) -> Result<Child, BenchError> {
        let spawn_error = |reason: String| {
            BenchError::Server(format!("cannot start {}: {reason}", binary.display()))
        };
        let log_file = File::create(log)
            .map_err(|err| spawn_error(format!("cannot create {}: {err}", log.display())))?;
        let data_dir = log.with_extension("data");
        Command::new(binary)
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data_dir)
            // Room for the participants and for the one more that resume and
            // restart modes join.
            .args(["--max-participants", &(participants + 1).to_string()])
            .args(["--publish-rate", &BENCH_PUBLISH_RATE.to_string()])
            .args(["--publish-burst", &BENCH_PUBLISH_RATE.to_string()])
            .args(["--join-rate", &BENCH_JOIN_RATE.to_string()])
            .args(["--join-burst", &BENCH_JOIN_RATE.to_string()])
            .args(["--history-limit", &history_limit.to_string()])
            .args(["--max-streams", &streams.to_string()])
            .env_remove("RUST_LOG")
            // The bench connects its participants in crowds and shares the machine
            // with the server: served at a lower priority, they would measure the
            // load generator. An environment variable, which a server from before
            // it ignores, so that earlier builds can be measured side by side (those
            // of 2026-12-06 read the second name).
            .env("CHITTYCHAT_CROWD_PRIORITY", "0")
            .env("CHITTYCHAT_CROWD_NICENESS", "0")
            // Its log must go to standard error, where the address is read from.
            .env_remove("CHITTYCHAT_LOG_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|err| spawn_error(err.to_string()))
    }

    /// Reads the log until the server says where it listens.
    async fn wait_for_address(&mut self) -> Result<String, BenchError> {
        let child = &mut self.child;
        log_schema::await_listening(
            &self.log,
            || child.try_wait().ok().flatten(),
            SERVER_START_TIMEOUT,
        )
        .await
        .map(|address| address.to_string())
        .map_err(|err| BenchError::Server(err.to_string()))
    }

    /// The URL clients connect to.
    pub(super) fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The server's process id.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        // Its state is of no further use, so no graceful shutdown.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(self.log.with_extension("data"));
        if !self.keep_log {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A process's CPU time (user + system, all threads) in nanoseconds.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    stat_cpu_ns(&format!("/proc/{pid}/stat"))
}

/// One thread's CPU time (user + system) in nanoseconds: thread `tid` of process
/// `pid`.
pub fn thread_cpu_ns(pid: u32, tid: u32) -> Option<u64> {
    stat_cpu_ns(&format!("/proc/{pid}/task/{tid}/stat"))
}

/// The CPU time (user + system) in a `stat` file of `/proc`, in nanoseconds.
fn stat_cpu_ns(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may contain spaces; the fields after its ")" do not.
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ")".
    let mut fields = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = u128::from(utime) + u128::from(stime);
    u64::try_from(ticks * 1_000_000_000 / u128::from(clock_ticks_per_second()?)).ok()
}

/// The kernel's unit for the CPU times in `/proc/PID/stat` (`USER_HZ`), as the
/// system reports it (`sysconf(_SC_CLK_TCK)`).
fn clock_ticks_per_second() -> Option<u64> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    u64::try_from(ticks).ok().filter(|&ticks| ticks > 0)
}

/// How long the threads of process `pid` now alive have waited, ready to run, for a
/// CPU, in nanoseconds: the scheduler's run delay (`/proc/PID/task/*/schedstat`). A
/// thread that has ended takes its share with it. `None` where the kernel keeps no
/// scheduler statistics.
pub fn run_delay_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = None;
    for task in tasks.flatten() {
        let tid = task.file_name();
        let Some(delay) = tid
            .to_str()
            .and_then(|tid| tid.parse().ok())
            .and_then(|tid| thread_run_delay_ns(pid, tid))
        else {
            // The thread ended since the directory was read.
            continue;
        };
        total = Some(total.unwrap_or(0) + delay);
    }
    total
}

/// How long thread `tid` of process `pid` has waited, ready to run, for a CPU, in
/// nanoseconds (the second field of its `schedstat`).
pub fn thread_run_delay_ns(pid: u32, tid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A field of `/proc/PID/status` in KiB, such as `VmRSS` or `VmHWM` (peak RSS).
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_ns(me).is_some());
        // Where the kernel keeps scheduler statistics, they are read for one thread
        // and for all.
        let kept = std::path::Path::new(&format!("/proc/{me}/task/{me}/schedstat")).exists();
        assert_eq!(thread_run_delay_ns(me, me).is_some(), kept);
        assert_eq!(run_delay_ns(me).is_some(), kept);
        assert_eq!(run_delay_ns(u32::MAX), None);
        assert!(status_kib(me, "VmRSS").unwrap() > 0);
        assert!(status_kib(me, "VmHWM").unwrap() >= status_kib(me, "VmRSS").unwrap() / 2);
        assert_eq!(status_kib(me, "NoSuchField"), None);
    }
}
