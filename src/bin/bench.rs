//! `chittychat-bench`: parses the command line, runs the bench and prints its
//! report; exits 1 if any event was lost, duplicated or reordered, or anything failed.

use chittychat::bench::{self, BenchConfig};
use chittychat::logging::{self, LogFormat};
use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = BenchConfig::parse();
    // The load side logs only warnings unless RUST_LOG says otherwise, so its own
    // logging does not compete with the server for the CPU.
    let _log = logging::init(LogFormat::Text, None, "warn");
    let report = match bench::run(&config).await {
        Ok(report) => report,
        Err(err) => {
            eprintln!("chittychat-bench: {err}");
            return ExitCode::FAILURE;
        }
    };
    if config.json {
        match serde_json::to_string(&report) {
            Ok(json) => println!("{json}"),
            Err(err) => {
                eprintln!("chittychat-bench: cannot write the report as JSON: {err}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{report}");
    }
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "chittychat-bench: {} lost, {} duplicated, {} reordered, {} failures",
            report.lost, report.duplicated, report.reordered, report.failures
        );
        ExitCode::FAILURE
    }
}

/// The server's allocator (see `chittychat-server`): the load generator shares the
/// machine with the server it measures, so the less CPU it spends, the more the
/// server has.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
