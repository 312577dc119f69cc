//! `chittychat-client`: parses the command line, sets up logging and runs the client
//! program in `chittychat::client_app`.

use chittychat::client::DEFAULT_SERVER_URL;
use chittychat::client_app::{self, ClientOptions};
use chittychat::logging::{self, LogFormat};
use chittychat::script::{self, ScriptOptions};
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// A Chitty-Chat participant: joins as NAME, shows every message with its Lamport
/// time, and publishes each line typed (or piped in). Leave with /quit, Ctrl-D or
/// Ctrl-C.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Your name: 1 to 32 ASCII letters, digits, '-', '_' or '.'.
    #[arg(long, env = "CHITTYCHAT_NAME")]
    name: String,
    /// The server's URL.
    #[arg(long, env = "CHITTYCHAT_SERVER", default_value = DEFAULT_SERVER_URL)]
    server: String,
    /// Log format: text for people, json for tools (one object per line).
    #[arg(long, env = "CHITTYCHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Append logs to this file. Without it, logs go to stderr, or, at an
    /// interactive prompt, to a file in the temporary directory.
    #[arg(long, env = "CHITTYCHAT_LOG_FILE")]
    log_file: Option<PathBuf>,
    /// Play a scripted part of a conversation from this file instead of reading
    /// input (steps: say, meet, await, leave; see the documentation of
    /// `chittychat::script`).
    #[arg(long, env = "CHITTYCHAT_SCRIPT")]
    script: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // At a prompt, log lines on the terminal would tear through the line being typed.
    let log_file = args.log_file.or_else(|| {
        client_app::is_interactive().then(|| {
            std::env::temp_dir().join(format!(
                "chittychat-client-{}-{}.log",
                args.name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
                std::process::id()
            ))
        })
    });
    let _log = match logging::init(args.log_format, log_file.as_deref(), "info") {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("chittychat-client: error: cannot open the log file {log_file:?}: {err}");
            return ExitCode::from(client_app::EXIT_SESSION_LOST);
        }
    };
    if let Some(script) = args.script {
        return script::run(ScriptOptions {
            name: args.name,
            server: args.server,
            script,
        })
        .await;
    }
    client_app::run(ClientOptions {
        name: args.name,
        server: args.server,
        log_file,
    })
    .await
}
