//! `chittychat-client`: parses the command line, sets up logging and runs the client
//! program in `chittychat::client_app`.

use chittychat::cli::{AccessArgs, KeepaliveArgs};
use chittychat::client::{ConnectOptions, DEFAULT_SERVER_URL};
use chittychat::client_app::{self, ClientOptions, DEFAULT_RECONNECT_TIMEOUT, Servers};
use chittychat::logging::{self, LogFormat};
use chittychat::script::{self, ScriptOptions};
use chittychat::transport::Seconds;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Chat in Chitty-Chat: joins a Chitty-Chat server as NAME, shows every message
/// with its Lamport time, and publishes each line typed at the prompt (or piped in).
/// /help lists the commands; leave with /quit, Ctrl-D or Ctrl-C.
#[derive(Debug, Parser)]
#[command(name = "chittychat-client", version, after_help = AFTER_HELP)]
struct Args {
    /// Your name: 1 to 32 ASCII letters, digits, '-', '_' or '.', unique on the
    /// server regardless of case (alice and Alice cannot both be present).
    #[arg(long, env = "CHITTYCHAT_NAME")]
    name: String,
    /// The server's URL: http://HOST:PORT, or https://HOST:PORT for a server that
    /// serves TLS. For a cluster, several nodes (repeat the flag, or separate them
    /// with commas): the client joins the first it can, and when its node goes
    /// away or is cut off from the cluster it moves to another and resumes there.
    #[arg(long, env = "CHITTYCHAT_SERVER", default_value = DEFAULT_SERVER_URL,
          value_delimiter = ',', value_name = "URL")]
    server: Vec<String>,
    #[command(flatten)]
    access: AccessArgs,
    /// Exit when the connection drops, instead of reconnecting and rejoining.
    #[arg(long, env = "CHITTYCHAT_NO_RECONNECT")]
    no_reconnect: bool,
    /// Seconds to keep trying to reconnect before giving up.
    #[arg(long, env = "CHITTYCHAT_RECONNECT_TIMEOUT", value_name = "SECONDS",
          default_value_t = Seconds(DEFAULT_RECONNECT_TIMEOUT))]
    reconnect_timeout: Seconds,
    #[command(flatten)]
    keepalive: KeepaliveArgs,
    /// Log format: text for people, json for tools (one object per line).
    #[arg(long, env = "CHITTYCHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Append the whole log (every call, every event with its Lamport time) to this
    /// file. Without it, a prompt logs to client-NAME.log in $XDG_STATE_HOME/chittychat
    /// (else ~/.local/state/chittychat), and piped input logs only warnings and
    /// errors, to stderr.
    #[arg(long, env = "CHITTYCHAT_LOG_FILE")]
    log_file: Option<PathBuf>,
    /// Do not show the local time (HH:MM) beside each message at the prompt.
    #[arg(long, env = "CHITTYCHAT_NO_TIME")]
    no_time: bool,
    /// How many past messages to see on joining (at most 1000). Default: the
    /// server's choice (20 unless its operator changed it).
    #[arg(long, env = "CHITTYCHAT_HISTORY", value_name = "N",
          value_parser = clap::value_parser!(u32).range(0..=1000))]
    history: Option<u32>,
    /// Play a scripted part of a conversation from this file instead of reading
    /// input (steps: say, meet, await, leave; see the documentation of
    /// `chittychat::script`).
    #[arg(long, env = "CHITTYCHAT_SCRIPT")]
    script: Option<PathBuf>,
}

/// The help's closing words: the environment-only setting and the exit statuses.
const AFTER_HELP: &str = "\
Environment: each flag may instead be set in the variable shown with it.
CHITTYCHAT_JOIN_SECRET holds the join secret, if the server needs one (or use
--join-secret-file). RUST_LOG filters the log (default: info in a log file,
warn on stderr).

Exit status: 0 after leaving; 1 when the session was lost and could not be
resumed; 2 for a usage error or an unreadable file; 3 when the server cannot be
reached; 4 when the server refused to let you join; 5 after leaving when not
every input line was published (some were invalid, or still waiting when you
left with Ctrl-C).";

fn main() -> ExitCode {
    let args = Args::parse();
    // Asked while this is the only thread: the time zone cannot be read safely once
    // the runtime's threads run.
    let clock = (!args.no_time)
        .then(|| time::UtcOffset::current_local_offset().unwrap_or(time::UtcOffset::UTC));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("chittychat-client: error: cannot start the async runtime: {err}");
            return ExitCode::from(client_app::EXIT_SESSION_LOST);
        }
    };
    let status = runtime.block_on(run(args, clock));
    // A read of piped stdin blocks a runtime thread until a line or end of input
    // comes; when the session ends first, exit without waiting for it.
    runtime.shutdown_background();
    status
}

async fn run(args: Args, clock: Option<time::UtcOffset>) -> ExitCode {
    // At a prompt, log lines on the terminal would tear through the line being
    // typed, so they go to one file per name in one place.
    let log_file = args.log_file.clone().or_else(|| {
        client_app::is_interactive()
            .then(|| default_log_file(&args.name))
            .flatten()
    });
    // A log file gets everything; stderr, shared with the errors, only what is wrong.
    let default_filter = if log_file.is_some() { "info" } else { "warn" };
    let _log = match logging::init(args.log_format, log_file.as_deref(), default_filter) {
        Ok(guard) => guard,
        Err(err) => {
            let path = log_file.as_deref().unwrap_or(std::path::Path::new("-"));
            eprintln!(
                "chittychat-client: error: cannot open the log file {}: {err}",
                path.display()
            );
            return ExitCode::from(client_app::EXIT_USAGE);
        }
    };
    let (tls_ca, join_secret) = match (args.access.tls_ca(), args.access.join_secret()) {
        (Ok(tls_ca), Ok(join_secret)) => (tls_ca, join_secret),
        (Err(err), _) | (_, Err(err)) => {
            eprintln!("chittychat-client: error: {err:#}");
            return ExitCode::from(client_app::EXIT_USAGE);
        }
    };
    let options = ClientOptions {
        name: args.name,
        servers: Servers::new(args.server),
        connect: ConnectOptions {
            keepalive: args.keepalive.keepalive(),
            tls_ca,
            ..ConnectOptions::default()
        },
        join_secret,
        reconnect: !args.no_reconnect,
        reconnect_timeout: args.reconnect_timeout.0,
        log_file,
        history: args.history,
        clock,
    };
    // A scripted participant connects and joins as the client does: TLS and the
    // join secret included.
    match args.script {
        Some(script) => {
            script::run(ScriptOptions {
                client: options,
                script,
            })
            .await
        }
        None => client_app::run(options).await,
    }
}

/// Where a prompt logs when no file is named: `client-NAME.log` in
/// `$XDG_STATE_HOME/chittychat`, else `~/.local/state/chittychat` (created when
/// missing); `None` when there is no such place.
fn default_log_file(name: &str) -> Option<PathBuf> {
    let from_env = |var| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    let dir = from_env("XDG_STATE_HOME")
        .or_else(|| from_env("HOME").map(|home| home.join(".local/state")))?
        .join("chittychat");
    std::fs::create_dir_all(&dir).ok()?;
    let name = name.replace(
        |c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "_",
    );
    Some(dir.join(format!("client-{name}.log")))
}
