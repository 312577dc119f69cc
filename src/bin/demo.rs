//! `chittychat-demo`: runs the scripted demonstration in `chittychat::demo` with a
//! real server and real client processes, then checks and draws the run.

use chittychat::demo::{self, DEFAULT_STEP_TIMEOUT, DemoOptions, MAX_CLIENTS, MIN_CLIENTS};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit status when the run's logs break a rule.
const EXIT_CHECK_FAILED: u8 = 1;
/// Exit status when the demo could not be played.
const EXIT_DEMO_FAILED: u8 = 3;

/// Starts a Chitty-Chat server and client processes (with --cluster, three nodes on
/// NATS instead of the server), plays a conversation (joins, messages, two at the same moment, a late
/// join, a node killed, /quit, a SIGKILL, leaves), prints what each participant saw,
/// checks the logs and draws the space-time diagram.
#[derive(Debug, Parser)]
#[command(name = "chittychat-demo", version)]
struct Args {
    /// How many clients join at first; one more joins late.
    #[arg(long, default_value_t = MIN_CLIENTS as u64,
          value_parser = clap::value_parser!(u64).range(MIN_CLIENTS as u64..=MAX_CLIENTS as u64))]
    clients: u64,
    /// The run's folder; must be new or empty [default: a fresh folder in runs/ named by the UTC time].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed for names, messages and who does what; the same seed plays the same script.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds one step may take before the demo gives up.
    #[arg(long, default_value_t = DEFAULT_STEP_TIMEOUT.as_secs())]
    step_timeout: u64,
    /// Run over a cluster: three server nodes sharing a NATS JetStream server
    /// (nats-server on the PATH), participants spread over them, one node killed
    /// mid-run.
    #[arg(long)]
    cluster: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let bin_dir = match demo::sibling_dir() {
        Ok(dir) => dir,
        Err(err) => return fail(&err),
    };
    let options = DemoOptions {
        clients: args.clients as usize,
        out: args.out,
        seed: args.seed,
        bin_dir,
        step_timeout: Duration::from_secs(args.step_timeout.max(1)),
        cluster: args.cluster,
    };
    match demo::run(options).await {
        Ok(outcome) if outcome.check_ok => ExitCode::SUCCESS,
        Ok(outcome) => {
            eprintln!(
                "chittychat-demo: error: the logs in {} break the rules above",
                outcome.dir.display()
            );
            ExitCode::from(EXIT_CHECK_FAILED)
        }
        Err(err) => fail(&err),
    }
}

fn fail(err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("chittychat-demo: error: {err}");
    ExitCode::from(EXIT_DEMO_FAILED)
}
