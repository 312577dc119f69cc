//! `chittychat-trace`: reads the JSON logs of a run and checks them, draws them, or
//! exports them; the work is in `chittychat::trace`.

use anyhow::Context as _;
use chittychat::trace::causality::{self, format_clock};
use chittychat::trace::parse::Run;
use chittychat::trace::{check, mermaid, shiviz, svg, timeline};
use clap::{Parser, Subcommand};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit status when the logs break a rule.
const EXIT_VIOLATIONS: u8 = 1;
/// Exit status for a request that does not fit the run (clap uses it too).
const EXIT_USAGE: u8 = 2;
/// Exit status when the logs cannot be read or an output cannot be written.
const EXIT_IO: u8 = 3;

/// Checks and draws the logs of a Chitty-Chat run: give a run's folder (its *.log
/// files are read) or log files written with --log-format json.
#[derive(Debug, Parser)]
#[command(name = "chittychat-trace", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify the clock condition, matched sends and receives, delivery and
    /// join/leave; explain every violation. Exit 0 only when all holds.
    Check {
        /// A run's folder, or log files.
        #[arg(required = true)]
        logs: Vec<PathBuf>,
    },
    /// Draw the space-time diagram as SVG and as a Mermaid sequenceDiagram.
    Diagram {
        /// A run's folder, or log files.
        #[arg(required = true)]
        logs: Vec<PathBuf>,
        /// Where to write the SVG [default: diagram.svg in the run's folder, or here].
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Where to write the Mermaid source [default: diagram.mmd next to the SVG].
        #[arg(long)]
        mermaid: Option<PathBuf>,
        /// Draw only the server and this participant (repeat for more): one
        /// participant's story.
        #[arg(long, value_name = "NAME")]
        only: Vec<String>,
    },
    /// Print the run in ShiViz's input format, with vector clocks.
    Shiviz {
        /// A run's folder, or log files.
        #[arg(required = true)]
        logs: Vec<PathBuf>,
    },
    /// Print every event in (Lamport time, process) order.
    Timeline {
        /// A run's folder, or log files.
        #[arg(required = true)]
        logs: Vec<PathBuf>,
        /// Show each event's vector clock too.
        #[arg(long)]
        vector: bool,
    },
    /// Print pairs of client requests that Lamport times order but that are
    /// concurrent (neither happened before the other), closest first.
    Concurrent {
        /// A run's folder, or log files.
        #[arg(required = true)]
        logs: Vec<PathBuf>,
        /// How many pairs to print.
        #[arg(long, default_value_t = 3)]
        limit: usize,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let logs = match &args.command {
        Command::Check { logs }
        | Command::Diagram { logs, .. }
        | Command::Shiviz { logs }
        | Command::Timeline { logs, .. }
        | Command::Concurrent { logs, .. } => logs.clone(),
    };
    let run = match Run::read(&logs) {
        Ok(run) => run,
        Err(err) => return fail(EXIT_IO, &err),
    };
    let done = match args.command {
        Command::Check { .. } => Ok(check_run(&run)),
        Command::Diagram {
            svg, mermaid, only, ..
        } => diagram(run, &logs, svg, mermaid, &only).map(|out| (out, ExitCode::SUCCESS)),
        Command::Shiviz { .. } => {
            let messages = causality::messages(&run);
            let clocks = causality::vector_clocks(&run, &messages);
            Ok((shiviz::shiviz(&run, &messages, &clocks), ExitCode::SUCCESS))
        }
        Command::Timeline { vector, .. } => {
            let clocks = vector.then(|| {
                let messages = causality::messages(&run);
                causality::vector_clocks(&run, &messages)
            });
            Ok((timeline::timeline(&run, clocks.as_ref()), ExitCode::SUCCESS))
        }
        Command::Concurrent { limit, .. } => Ok((concurrent(&run, limit), ExitCode::SUCCESS)),
    };
    let (out, status) = match done {
        Ok(done) => done,
        Err((status, message)) => return fail(status, &message),
    };
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        // A reader that stopped early (`| head`) wanted no more: not an error.
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            fail(EXIT_IO, &format!("cannot write to stdout: {err}"))
        }
        _ => status,
    }
}

/// A command that could not be done: the exit status and what to say.
type Failed = (u8, anyhow::Error);

/// `check`: the report, and the status that says whether every rule holds.
fn check_run(run: &Run) -> (String, ExitCode) {
    let report = check::check(run);
    let status = if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_VIOLATIONS)
    };
    (format!("{report}\n"), status)
}

/// `diagram`: writes the SVG and the Mermaid drawing (of the processes in `only`,
/// when named) and says where.
fn diagram(
    run: Run,
    logs: &[PathBuf],
    svg: Option<PathBuf>,
    mermaid: Option<PathBuf>,
    only: &[String],
) -> Result<String, Failed> {
    let run = if only.is_empty() {
        run
    } else {
        let unknown: Vec<&str> = only
            .iter()
            .filter(|name| !run.processes.iter().any(|p| &p.label == *name))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            let known: Vec<&str> = run.processes.iter().map(|p| p.label.as_str()).collect();
            return Err((
                EXIT_USAGE,
                anyhow::anyhow!(
                    "no process named {} in this run; it has {}",
                    unknown.join(", "),
                    known.join(", ")
                ),
            ));
        }
        causality::focus(&run, only)
    };
    let messages = causality::messages(&run);
    let folder = logs
        .first()
        .filter(|p| p.is_dir())
        .cloned()
        .unwrap_or_default();
    let svg_path = svg.unwrap_or_else(|| folder.join("diagram.svg"));
    let mermaid_path = mermaid.unwrap_or_else(|| svg_path.with_extension("mmd"));
    let mut out = String::new();
    for (path, content) in [
        (&svg_path, svg::svg(&run, &messages)),
        (&mermaid_path, mermaid::mermaid(&run, &messages)),
    ] {
        write(path, &content).map_err(|err| (EXIT_IO, err))?;
        let _ = writeln!(out, "wrote {}", path.display());
    }
    Ok(out)
}

/// `concurrent`: up to `limit` pairs of requests that Lamport time orders but
/// causality does not, each with its vector clocks.
fn concurrent(run: &Run, limit: usize) -> String {
    let messages = causality::messages(run);
    let clocks = causality::vector_clocks(run, &messages);
    let pairs = causality::concurrent_requests(run, &clocks);
    let mut out = String::new();
    if pairs.is_empty() {
        let _ = writeln!(out, "no two requests of this run are concurrent");
    }
    for (a, b) in pairs.into_iter().take(limit) {
        for id in [a, b] {
            let event = run.event(id);
            let _ = writeln!(
                out,
                "{} at Lamport {}: {}  {}",
                run.processes[id.process].label,
                event.lamport,
                event.describe(),
                format_clock(run, &clocks[&id])
            );
        }
        let _ = writeln!(
            out,
            "  Lamport {} < {}, yet neither vector clock is below the other: concurrent",
            run.event(a).lamport,
            run.event(b).lamport
        );
    }
    out
}

fn write(path: &Path, content: &str) -> anyhow::Result<()> {
    std::fs::write(path, content).with_context(|| format!("cannot write {}", path.display()))
}

fn fail(status: u8, err: &dyn std::fmt::Display) -> ExitCode {
    // `{:#}` shows an error's context and its cause.
    eprintln!("chittychat-trace: error: {err:#}");
    ExitCode::from(status)
}
