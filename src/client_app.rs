//! The `chittychat-client` program: join, show the feed, publish what the user types,
//! and leave however the user leaves (`/quit`, end of input, Ctrl-C, SIGTERM).
//!
//! On a terminal the user types at a prompt and events appear above the line being
//! typed; with stdin piped, each line is one message (scripts and tests use this).
//!
//! When the connection drops (the server restarted or shut down, the network
//! blipped, the server went silent), the client says so, retries with exponential
//! backoff and jitter, and rejoins under the same name, keeping its Lamport clock;
//! while it reconnects it reads no input, so piped lines wait rather than get lost.
//! A Publish is never retried on its own, so no message is sent twice.

use crate::client::{ClientError, ConnectOptions, Events, JoinOptions, Session, connect_with};
use crate::display::{event_line, sanitize};
use crate::error::ChatError;
use crate::lamport::LamportClock;
use crate::transport::JoinSecret;
use crate::validate::{MAX_MESSAGE_CHARS, validate_message};
use futures::io::AsyncWriteExt;
use rustyline_async::{Readline, ReadlineEvent, SharedWriter};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader, Stdin};
use tokio::signal::unix::{SignalKind, signal};
use tonic::Code;

/// Exit status after the participant left as asked.
pub const EXIT_OK: u8 = 0;
/// Exit status when the session ended against the user's will and could not be
/// resumed: the server went away, shut down, or disconnected this participant, and
/// reconnecting was off, gave up, or was refused.
pub const EXIT_SESSION_LOST: u8 = 1;
/// Exit status for a usage error: a bad flag (clap's own status) or a file named on
/// the command line that cannot be used.
pub const EXIT_USAGE: u8 = 2;
/// Exit status when the server could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit status when the server refused to let this participant join.
pub const EXIT_JOIN_REFUSED: u8 = 4;

/// How long leaving may take before the client exits anyway.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The wait before the first attempt to reconnect; each failed attempt doubles it.
pub const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(250);

/// The longest wait between two attempts to reconnect, so a server that comes back
/// is found within seconds.
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(10);

/// How long the client keeps trying to reconnect before it gives up.
pub const DEFAULT_RECONNECT_TIMEOUT: Duration = Duration::from_secs(300);

/// The line a user types to leave.
pub const QUIT_COMMAND: &str = "/quit";

/// What the client program is asked to do.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The participant's name.
    pub name: String,
    /// The server URL.
    pub server: String,
    /// Keepalive and TLS.
    pub connect: ConnectOptions,
    /// The server's join secret, if it needs one.
    pub join_secret: Option<JoinSecret>,
    /// Whether to reconnect and rejoin when the connection drops.
    pub reconnect: bool,
    /// How long to keep trying to reconnect before giving up.
    pub reconnect_timeout: Duration,
    /// Where the log goes, to tell the user; `None` when it goes to stderr.
    pub log_file: Option<PathBuf>,
}

/// Whether the client runs with a prompt: stdin and stdout are both terminals.
pub fn is_interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// Runs the client until the participant leaves or the session is lost.
pub async fn run(options: ClientOptions) -> ExitCode {
    let (session, events) = match join(&options, None).await {
        Ok(joined) => joined,
        Err(err @ (ClientError::Unreachable { .. } | ClientError::InvalidUrl { .. })) => {
            return fail(EXIT_UNREACHABLE, &err);
        }
        Err(err @ (ClientError::Invalid(_) | ClientError::Rpc { .. })) => {
            let status = match err.code() {
                Some(Code::Unavailable) => EXIT_UNREACHABLE,
                _ => EXIT_JOIN_REFUSED,
            };
            return fail(status, &err);
        }
        Err(err) => return fail(EXIT_SESSION_LOST, &err),
    };
    let colour = std::io::stdout().is_terminal();
    let (mut input, screen) = if is_interactive() {
        match Readline::new("> ".to_owned()) {
            Ok((mut readline, writer)) => {
                readline.should_print_line_on(false, false);
                (Input::Prompt(readline), Screen::Prompt(writer))
            }
            Err(err) => {
                return fail(
                    EXIT_SESSION_LOST,
                    &format!("cannot set up the terminal: {err}"),
                );
            }
        }
    } else {
        (Input::piped(), Screen::Plain)
    };
    let mut screen = screen;
    if input.is_prompt() {
        let log = match &options.log_file {
            Some(path) => format!("Logs: {}.", path.display()),
            None => "Logs go to stderr.".to_owned(),
        };
        screen
            .line(&format!(
                "Joined Chitty-Chat at {} as {}. Type a message and press Enter; {} or Ctrl-D to leave. {log}",
                options.server, options.name, QUIT_COMMAND
            ))
            .await;
    }

    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(err) => {
            return fail(
                EXIT_SESSION_LOST,
                &format!("cannot watch for SIGTERM: {err}"),
            );
        }
    };
    let clock = Arc::clone(session.clock());
    let mut joined = (session, events);
    let status = loop {
        let (session, events) = joined;
        let mut screen_for_feed = screen.clone();
        let mut feed =
            tokio::spawn(async move { show_feed(events, &mut screen_for_feed, colour).await });
        let ended = loop {
            tokio::select! {
                ended = &mut feed => break Some(ended),
                _ = tokio::signal::ctrl_c() => break None,
                _ = terminate.recv() => break None,
                line = input.next_line() => match line {
                    InputLine::Quit => break None,
                    InputLine::Line(line) => publish_line(&session, &line, &mut screen).await,
                    InputLine::TooLong(bytes) => {
                        let err = format!(
                            "message is {bytes} bytes long, more than {MAX_MESSAGE_CHARS} characters can be (not sent)"
                        );
                        screen.error(&err).await;
                    }
                },
            }
        };
        let lost = match ended {
            // The user left: say so to the server, then let the feed drain.
            None => {
                break match tokio::time::timeout(LEAVE_TIMEOUT, session.leave()).await {
                    Ok(Ok(())) => {
                        let _ = tokio::time::timeout(LEAVE_TIMEOUT, &mut feed).await;
                        if input.is_prompt() {
                            screen.line("You left Chitty-Chat.").await;
                        }
                        Ok(())
                    }
                    Ok(Err(err)) => Err(session_lost(&err)),
                    Err(_) => Err("the server did not answer Leave in time".to_owned()),
                };
            }
            Some(Ok(Ok(()))) => break Err("the server ended this session".to_owned()),
            Some(Ok(Err(err))) => err,
            Some(Err(join_error)) => break Err(format!("the feed task failed: {join_error}")),
        };
        if !(options.reconnect && worth_reconnecting(&lost)) {
            break Err(session_lost(&lost));
        }
        screen
            .notice(&format!(
                "{}; reconnecting (Ctrl-C to stop)",
                session_lost(&lost)
            ))
            .await;
        let rejoined = tokio::select! {
            rejoined = rejoin(&options, &clock) => rejoined,
            _ = tokio::signal::ctrl_c() => break Ok(()),
            _ = terminate.recv() => break Ok(()),
        };
        match rejoined {
            Ok(again) => {
                screen
                    .notice(&format!(
                        "reconnected to {}; rejoined Chitty-Chat as {}",
                        options.server, options.name
                    ))
                    .await;
                joined = again;
            }
            Err(err) => break Err(format!("gave up reconnecting: {err}")),
        }
    };
    input.close();
    match status {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(message) => fail(EXIT_SESSION_LOST, &message),
    }
}

/// Connects and joins as `options` say, keeping `clock` when rejoining.
async fn join(
    options: &ClientOptions,
    clock: Option<Arc<LamportClock>>,
) -> Result<(Session, Events), ClientError> {
    let channel = connect_with(&options.server, &options.connect).await?;
    let join = JoinOptions {
        join_secret: options.join_secret.clone(),
        clock,
    };
    Session::join_with(channel, &options.name, join).await
}

/// Whether a lost feed may come back by joining again: the connection failed, the
/// server shut down, or this participant fell behind; not a refusal that would
/// only repeat.
fn worth_reconnecting(err: &ClientError) -> bool {
    connection_failed(err) || err.code() == Some(Code::ResourceExhausted)
}

/// Whether a call failed because the connection did (or the server shut down),
/// rather than because the server refused it.
fn connection_failed(err: &ClientError) -> bool {
    match err {
        ClientError::Rpc { status, .. } => matches!(
            status.code(),
            Code::Unavailable
                | Code::Unknown
                | Code::Cancelled
                | Code::Internal
                | Code::DeadlineExceeded
        ),
        ClientError::Unreachable { .. } => true,
        _ => false,
    }
}

/// Whether a failed rejoin may succeed later: the server is not back yet, still
/// holds the old session under this name (until its keepalive notices it is
/// gone), or is full.
fn worth_retrying_join(err: &ClientError) -> bool {
    worth_reconnecting(err) || err.code() == Some(Code::AlreadyExists)
}

/// Joins again under the same name, with exponential backoff and jitter, for up to
/// the reconnect timeout.
async fn rejoin(
    options: &ClientOptions,
    clock: &Arc<LamportClock>,
) -> Result<(Session, Events), ClientError> {
    let started = Instant::now();
    let mut delay = RECONNECT_FIRST_DELAY;
    loop {
        // "Equal jitter": half the delay, plus up to as much again at random, so
        // clients cut off together do not come back in lockstep.
        let wait = delay / 2 + delay.mul_f64(rand::random::<f64>() / 2.0);
        tokio::time::sleep(wait).await;
        match join(options, Some(Arc::clone(clock))).await {
            Ok(joined) => return Ok(joined),
            Err(err)
                if worth_retrying_join(&err) && started.elapsed() < options.reconnect_timeout =>
            {
                delay = (delay * 2).min(RECONNECT_MAX_DELAY);
                tracing::info!(error = %err, next_delay_ms = delay.as_millis() as u64, "rejoin failed");
            }
            Err(err) => return Err(err),
        }
    }
}

/// Checks and publishes one typed line; problems are shown and the client goes on.
async fn publish_line(session: &Session, line: &[u8], screen: &mut Screen) {
    if line.is_empty() {
        return;
    }
    if let Err(err) = validate_message(line) {
        screen.error(&format!("{err} (not sent)")).await;
        return;
    }
    // validate_message checked the UTF-8 above.
    let text = String::from_utf8_lossy(line);
    if let Err(err) = session.publish(&text).await {
        // When the connection failed, the server may have broadcast the message
        // before its reply was lost; it is not sent again, so nobody sees it twice.
        let outcome = if connection_failed(&err) {
            "perhaps not sent"
        } else {
            "not sent"
        };
        screen.error(&format!("{err} ({outcome})")).await;
    }
}

/// Shows every event until the feed ends; `Ok` when it ended because we left.
async fn show_feed(
    mut events: Events,
    screen: &mut Screen,
    colour: bool,
) -> Result<(), ClientError> {
    while let Some(received) = events.next().await? {
        screen.line(&event_line(&received.event, colour)).await;
    }
    Ok(())
}

/// A person-readable reason for a lost session.
fn session_lost(err: &ClientError) -> String {
    match err {
        ClientError::Rpc { status, .. } => match status.code() {
            Code::Unavailable
                if status
                    .message()
                    .contains(ChatError::ShuttingDown.to_string().as_str()) =>
            {
                "the Chitty-Chat server shut down".to_owned()
            }
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal => {
                format!("lost the connection to the server: {}", status.message())
            }
            _ => status.message().to_owned(),
        },
        other => other.to_string(),
    }
}

/// Prints one error line on stderr and returns the exit status.
fn fail(status: u8, err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("chittychat-client: error: {}", sanitize(&err.to_string()));
    ExitCode::from(status)
}

/// Where lines for the person go: straight to stdout, or above the prompt.
#[derive(Clone)]
enum Screen {
    Plain,
    Prompt(SharedWriter),
}

impl Screen {
    async fn line(&mut self, line: &str) {
        match self {
            Screen::Plain => {
                let mut stdout = std::io::stdout().lock();
                let _ = std::io::Write::write_all(&mut stdout, format!("{line}\n").as_bytes());
                let _ = std::io::Write::flush(&mut stdout);
            }
            Screen::Prompt(writer) => {
                let _ = AsyncWriteExt::write_all(writer, format!("{line}\n").as_bytes()).await;
            }
        }
    }

    /// A word about the connection: on stderr when output is piped, so stdout holds
    /// only the chat.
    async fn notice(&mut self, message: &str) {
        match self {
            Screen::Plain => eprintln!("chittychat-client: {}", sanitize(message)),
            Screen::Prompt(_) => self.line(&sanitize(message)).await,
        }
    }

    async fn error(&mut self, message: &str) {
        match self {
            Screen::Plain => eprintln!("chittychat-client: error: {}", sanitize(message)),
            Screen::Prompt(_) => self.line(&format!("error: {}", sanitize(message))).await,
        }
    }
}

/// Where the user's lines come from.
enum Input {
    Prompt(Readline),
    Piped {
        reader: BufReader<Stdin>,
        /// The line read so far, at most [`MAX_INPUT_LINE_BYTES`] of it.
        buffer: Vec<u8>,
        /// How many bytes of the current line did not fit in `buffer`.
        dropped: usize,
    },
}

/// The most of one piped input line the client keeps. A message is at most 128
/// characters of at most 4 bytes each, plus a line ending; anything longer cannot be
/// sent, so the rest of it is counted and dropped rather than held in memory.
pub const MAX_INPUT_LINE_BYTES: usize = MAX_MESSAGE_CHARS * 4 + 2;

enum InputLine {
    Line(Vec<u8>),
    /// A line longer than [`MAX_INPUT_LINE_BYTES`], of this many bytes.
    TooLong(usize),
    Quit,
}

impl Input {
    fn piped() -> Self {
        Input::Piped {
            reader: BufReader::new(tokio::io::stdin()),
            buffer: Vec::new(),
            dropped: 0,
        }
    }

    fn is_prompt(&self) -> bool {
        matches!(self, Input::Prompt(_))
    }

    /// The next line, without its line ending. Cancel-safe: a partly read line stays
    /// in the buffer for the next call.
    async fn next_line(&mut self) -> InputLine {
        let line = match self {
            Input::Prompt(readline) => match readline.readline().await {
                Ok(ReadlineEvent::Line(line)) => {
                    readline.add_history_entry(line.clone());
                    line.into_bytes()
                }
                Ok(ReadlineEvent::Eof | ReadlineEvent::Interrupted) | Err(_) => {
                    return InputLine::Quit;
                }
            },
            Input::Piped {
                reader,
                buffer,
                dropped,
            } => {
                loop {
                    // A read error ends the input like end of file does.
                    let chunk = reader.fill_buf().await.unwrap_or(&[]);
                    if chunk.is_empty() {
                        if buffer.is_empty() && *dropped == 0 {
                            return InputLine::Quit;
                        }
                        // End of input after a last line without a newline.
                        break;
                    }
                    let (part, ends_line) = match chunk.iter().position(|&b| b == b'\n') {
                        Some(end) => (&chunk[..=end], true),
                        None => (chunk, false),
                    };
                    let keep = part.len().min(MAX_INPUT_LINE_BYTES - buffer.len());
                    buffer.extend_from_slice(&part[..keep]);
                    *dropped += part.len() - keep;
                    let used = part.len();
                    reader.consume(used);
                    if ends_line {
                        break;
                    }
                }
                if *dropped > 0 {
                    let bytes = buffer.len() + std::mem::take(dropped);
                    buffer.clear();
                    return InputLine::TooLong(bytes);
                }
                std::mem::take(buffer)
            }
        };
        let line = trim_line_ending(line);
        if line == QUIT_COMMAND.as_bytes() {
            InputLine::Quit
        } else {
            InputLine::Line(line)
        }
    }

    /// Shows what is still queued for the screen, then restores the terminal (the
    /// prompt's drop leaves raw mode).
    fn close(self) {
        if let Input::Prompt(mut readline) = self {
            let _ = readline.flush();
        }
    }
}

fn trim_line_ending(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    fn failed(status: Status) -> ClientError {
        ClientError::Rpc {
            rpc: "Join",
            status,
        }
    }

    #[test]
    fn a_lost_connection_or_a_shutdown_is_worth_reconnecting_a_refusal_is_not() {
        assert!(worth_reconnecting(&failed(ChatError::ShuttingDown.into())));
        assert!(worth_reconnecting(&failed(Status::unknown(
            "h2 protocol error"
        ))));
        assert!(worth_reconnecting(&failed(
            ChatError::TooSlow { queued: 4 }.into()
        )));
        assert!(!worth_reconnecting(&failed(
            ChatError::JoinSecretWrong.into()
        )));
        assert!(!worth_reconnecting(&failed(
            ChatError::UnknownSession.into()
        )));
        assert!(!worth_reconnecting(&ClientError::Invalid(
            ChatError::MessageEmpty
        )));
    }

    #[test]
    fn a_rejoin_is_retried_while_the_old_session_holds_the_name_or_the_server_is_full() {
        let taken = ChatError::NameTaken {
            name: "alice".into(),
        };
        assert!(worth_retrying_join(&failed(taken.into())));
        assert!(worth_retrying_join(&failed(
            ChatError::ServerFull { max: 1 }.into()
        )));
        assert!(!worth_retrying_join(&failed(
            ChatError::JoinSecretMissing.into()
        )));
    }

    #[test]
    fn a_rate_limited_publish_was_not_sent_a_cut_one_perhaps_was() {
        let limited = ChatError::RateLimited {
            per_second: 1,
            burst: 1,
            retry_after_ms: 10,
        };
        assert!(!connection_failed(&failed(limited.into())));
        assert!(connection_failed(&failed(Status::unavailable("gone"))));
    }
}
