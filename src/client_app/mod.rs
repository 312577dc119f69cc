//! The `chittychat-client` program: join, show the feed, publish what the user types,
//! and leave however the user leaves (`/quit`, end of input, Ctrl-C, SIGTERM).
//!
//! On a terminal the user types at a prompt and events appear above the line being
//! typed; with stdin piped, each line is one message (scripts and tests use this).
//!
//! When the connection drops (the server restarted or shut down, the network
//! blipped, the server went silent), the client says so, retries with exponential
//! backoff and jitter, and rejoins under the same name, keeping its Lamport clock
//! and resuming its feed where it stopped, so it misses nothing the server still
//! keeps. Each line keeps one publish id across retries: a Publish whose reply was
//! lost is sent again after the rejoin and published once. A Publish refused by the
//! rate limit waits as long as the server says and is sent again; piped input is
//! read one line at a time, so it waits too (back-pressure) rather than get lost.

use crate::client::{
    ClientError, ConnectOptions, Events, JoinOptions, PublishId, Published, ResumePoint, Session,
    connect_with,
};
use crate::display::{event_line, history_line, sanitize};
use crate::error::ChatError;
use crate::lamport::LamportClock;
use crate::room::MAX_HISTORY_PAGE;
use crate::transport::JoinSecret;
use crate::validate::{MAX_MESSAGE_CHARS, validate_message};
use futures::io::AsyncWriteExt;
use rustyline_async::{Readline, ReadlineEvent, SharedWriter};
use std::collections::VecDeque;
use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
/// Exit status after the participant left as asked, when not every input line was
/// published: some were refused for good (invalid, too long) or were still waiting
/// when the user left with Ctrl-C or a signal.
pub const EXIT_NOT_ALL_SENT: u8 = 5;

/// How many typed lines may wait to be published (while reconnecting, or held back
/// by the rate limit) before the prompt stops taking more.
pub const MAX_PENDING_LINES: usize = 100;

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

/// The command that shows older messages: `/history` or `/history N`.
pub const HISTORY_COMMAND: &str = "/history";

/// How many older messages `/history` shows when no number is given.
pub const DEFAULT_HISTORY_COMMAND_COUNT: u32 = 20;

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
    /// How many past events to see on joining; the server's default when `None`.
    pub history: Option<u32>,
}

/// Whether the client runs with a prompt: stdin and stdout are both terminals.
pub fn is_interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// Runs the client until the participant leaves or the session is lost.
pub async fn run(options: ClientOptions) -> ExitCode {
    let (session, events) = match join(&options, None, None).await {
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
                "Joined Chitty-Chat at {} as {}. Type a message and press Enter; {HISTORY_COMMAND} [N] shows older messages; {} or Ctrl-D to leave. {log}",
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
    // Lines accepted from the input and not yet published, oldest first; each keeps
    // its publish id across retries and reconnects, so it is published once.
    let mut outbox: VecDeque<Outgoing> = VecDeque::new();
    // Lines refused for good (invalid, or dropped when leaving), for the exit status.
    let mut not_sent = 0usize;
    let mut input_done = false;
    let oldest_seen = Arc::new(AtomicU64::new(u64::MAX));
    let mut joined = (session, events);
    let status = loop {
        let (session, events) = joined;
        let mut screen_for_feed = screen.clone();
        let oldest = Arc::clone(&oldest_seen);
        let mut feed =
            tokio::spawn(
                async move { show_feed(events, &mut screen_for_feed, colour, &oldest).await },
            );
        let mut publishing: Option<Publishing> = None;
        let mut retry_at: Option<tokio::time::Instant> = None;
        let ended = loop {
            if publishing.is_none()
                && retry_at.is_none()
                && let Some(next) = outbox.front()
            {
                let (session, next) = (session.clone(), next.clone());
                publishing = Some(Box::pin(async move {
                    session.publish_with_id(&next.text, &next.id).await
                }));
            }
            if input_done && outbox.is_empty() {
                break Ended::Leave;
            }
            // Piped input waits while a line is on its way (back-pressure); at a
            // prompt, typed lines queue up to a bound.
            let read_input = !input_done
                && if input.is_prompt() {
                    outbox.len() < MAX_PENDING_LINES
                } else {
                    outbox.is_empty()
                };
            tokio::select! {
                ended = &mut feed => break Ended::Feed(ended),
                _ = tokio::signal::ctrl_c() => break Ended::Leave,
                _ = terminate.recv() => break Ended::Leave,
                () = sleep_until(retry_at), if retry_at.is_some() => retry_at = None,
                published = poll_publishing(&mut publishing), if publishing.is_some() => {
                    publishing = None;
                    match published {
                        Ok(_) => {
                            outbox.pop_front();
                        }
                        // Rate limited: wait as long as the server says, then send the
                        // same line again.
                        Err(err) if err.retry_after().is_some() => {
                            let wait = err.retry_after().unwrap_or_default();
                            tracing::debug!(wait_ms = wait.as_millis() as u64, "rate limited; waiting");
                            retry_at = Some(tokio::time::Instant::now() + wait);
                        }
                        // The outcome is unknown: retried with the same id after the
                        // rejoin, so it is published once either way.
                        Err(err) if err.connection_failed() => break Ended::Lost(err),
                        Err(err) => {
                            outbox.pop_front();
                            not_sent += 1;
                            screen.error(&format!("{err} (not sent)")).await;
                        }
                    }
                }
                line = input.next_line(), if read_input => match line {
                    InputLine::Quit if input.is_prompt() => break Ended::Leave,
                    InputLine::Quit => input_done = true,
                    InputLine::History(count) => {
                        show_history(&session, count, &oldest_seen, &mut screen, colour).await;
                    }
                    InputLine::Line(line) => match accept_line(&line) {
                        Ok(Some(text)) => outbox.push_back(Outgoing {
                            text,
                            id: PublishId::random(),
                        }),
                        Ok(None) => {}
                        Err(err) => {
                            not_sent += 1;
                            screen.error(&format!("{err} (not sent)")).await;
                        }
                    },
                    InputLine::TooLong(bytes) => {
                        not_sent += 1;
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
            Ended::Leave => {
                drop(publishing);
                if !outbox.is_empty() {
                    not_sent += outbox.len();
                    screen
                        .error(&format!("{} typed lines were not sent", outbox.len()))
                        .await;
                }
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
            Ended::Feed(Ok(Ok(()))) => break Err("the server ended this session".to_owned()),
            Ended::Feed(Ok(Err(err))) => err,
            Ended::Feed(Err(join_error)) => {
                break Err(format!("the feed task failed: {join_error}"));
            }
            Ended::Lost(err) => {
                feed.abort();
                err
            }
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
        let resume = session.resume_point();
        let rejoined = tokio::select! {
            rejoined = rejoin(&options, &clock, resume) => rejoined,
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
                let info = again.0.joined();
                match (info.resumed, info.missed) {
                    (Some(false), Some(missed)) => {
                        screen
                            .notice(&format!(
                                "missed {missed} events while away (the server no longer keeps them); showing the latest {}",
                                info.history
                            ))
                            .await;
                    }
                    (Some(false), None) => {
                        screen
                            .notice(&format!(
                                "the server's log was replaced while you were away, so what you missed is unknown; showing the latest {} events",
                                info.history
                            ))
                            .await;
                    }
                    _ => {}
                }
                joined = again;
            }
            Err(err) => break Err(format!("gave up reconnecting: {err}")),
        }
    };
    input.close();
    match status {
        Ok(()) if not_sent > 0 => {
            eprintln!("chittychat-client: {not_sent} lines were not sent");
            ExitCode::from(EXIT_NOT_ALL_SENT)
        }
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(message) => fail(EXIT_SESSION_LOST, &message),
    }
}

/// A line waiting to be published, with the id it keeps across retries.
#[derive(Debug, Clone)]
struct Outgoing {
    text: String,
    id: PublishId,
}

/// A Publish in flight.
type Publishing = Pin<Box<dyn Future<Output = Result<Published, ClientError>> + Send>>;

/// Why a session's loop ended.
enum Ended {
    /// The user left.
    Leave,
    /// The feed ended.
    Feed(Result<Result<(), ClientError>, tokio::task::JoinError>),
    /// A Publish found the connection gone.
    Lost(ClientError),
}

/// Awaits the Publish in flight; only polled when there is one.
async fn poll_publishing(publishing: &mut Option<Publishing>) -> Result<Published, ClientError> {
    match publishing {
        Some(publishing) => publishing.await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; only polled when there is a time.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A typed line as a message to send: `None` for an empty line, an error for one
/// the server would refuse.
fn accept_line(line: &[u8]) -> Result<Option<String>, ChatError> {
    if line.is_empty() {
        return Ok(None);
    }
    validate_message(line).map(|text| Some(text.to_owned()))
}

/// Shows `count` events from before the oldest one shown so far.
async fn show_history(
    session: &Session,
    count: u32,
    oldest_seen: &AtomicU64,
    screen: &mut Screen,
    colour: bool,
) {
    let before = match oldest_seen.load(Ordering::Acquire) {
        u64::MAX => 0,
        seq => seq,
    };
    match session.history(before, count).await {
        Ok((events, _)) if events.is_empty() => {
            screen.notice("no older messages").await;
        }
        Ok((events, _)) => {
            for event in &events {
                screen.line(&history_line(event, colour)).await;
            }
            if let Some(first) = events.first() {
                oldest_seen.fetch_min(first.seq, Ordering::AcqRel);
            }
        }
        Err(err) => screen.error(&err.to_string()).await,
    }
}

/// Connects and joins as `options` say, keeping `clock` and resuming from `resume`
/// when rejoining.
async fn join(
    options: &ClientOptions,
    clock: Option<Arc<LamportClock>>,
    resume: Option<ResumePoint>,
) -> Result<(Session, Events), ClientError> {
    let channel = connect_with(&options.server, &options.connect).await?;
    let join = JoinOptions {
        join_secret: options.join_secret.clone(),
        clock,
        history: options.history,
        resume,
    };
    Session::join_with(channel, &options.name, join).await
}

/// Whether a lost feed may come back by joining again: the connection failed, the
/// server shut down, or this participant fell behind; not a refusal that would
/// only repeat.
fn worth_reconnecting(err: &ClientError) -> bool {
    err.connection_failed() || err.code() == Some(Code::ResourceExhausted)
}

/// Whether a failed rejoin may succeed later: the server is not back yet, still
/// holds the old session under this name (until its keepalive notices it is
/// gone), or is full.
fn worth_retrying_join(err: &ClientError) -> bool {
    worth_reconnecting(err) || err.code() == Some(Code::AlreadyExists)
}

/// Joins again under the same name, with exponential backoff and jitter, for up to
/// the reconnect timeout, resuming the feed from `resume`.
async fn rejoin(
    options: &ClientOptions,
    clock: &Arc<LamportClock>,
    resume: Option<ResumePoint>,
) -> Result<(Session, Events), ClientError> {
    let started = Instant::now();
    let mut delay = RECONNECT_FIRST_DELAY;
    loop {
        // "Equal jitter": half the delay, plus up to as much again at random, so
        // clients cut off together do not come back in lockstep.
        let wait = delay / 2 + delay.mul_f64(rand::random::<f64>() / 2.0);
        tokio::time::sleep(wait).await;
        match join(options, Some(Arc::clone(clock)), resume.clone()).await {
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

/// Shows every event until the feed ends; `Ok` when it ended because we left.
async fn show_feed(
    mut events: Events,
    screen: &mut Screen,
    colour: bool,
    oldest_seen: &AtomicU64,
) -> Result<(), ClientError> {
    while let Some(received) = events.next().await? {
        oldest_seen.fetch_min(received.event.seq, Ordering::AcqRel);
        let line = if received.history {
            history_line(&received.event, colour)
        } else {
            event_line(&received.event, colour)
        };
        screen.line(&line).await;
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
    /// `/history [N]`: show N older messages.
    History(u32),
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
            return InputLine::Quit;
        }
        if let Some(count) = history_command(&line) {
            return InputLine::History(count);
        }
        InputLine::Line(line)
    }

    /// Shows what is still queued for the screen, then restores the terminal (the
    /// prompt's drop leaves raw mode).
    fn close(self) {
        if let Input::Prompt(mut readline) = self {
            let _ = readline.flush();
        }
    }
}

/// The count of a `/history` or `/history N` line (N from 1 to the server's page
/// size); `None` for any other line.
fn history_command(line: &[u8]) -> Option<u32> {
    let rest = std::str::from_utf8(line)
        .ok()?
        .strip_prefix(HISTORY_COMMAND)?;
    match rest.trim() {
        "" if rest.is_empty() || rest.starts_with(' ') => Some(DEFAULT_HISTORY_COMMAND_COUNT),
        count if rest.starts_with(' ') => count
            .parse::<u32>()
            .ok()
            .filter(|count| *count > 0)
            .map(|count| count.min(MAX_HISTORY_PAGE)),
        _ => None,
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
            ChatError::TooSlow {
                position: 4,
                first_held: 9
            }
            .into()
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
    fn history_commands_are_recognised_and_other_lines_are_messages() {
        assert_eq!(
            history_command(b"/history"),
            Some(DEFAULT_HISTORY_COMMAND_COUNT)
        );
        assert_eq!(history_command(b"/history 5"), Some(5));
        assert_eq!(history_command(b"/history 99999"), Some(MAX_HISTORY_PAGE));
        assert_eq!(history_command(b"/history 0"), None);
        assert_eq!(history_command(b"/historyx"), None);
        assert_eq!(history_command(b"/history five"), None);
        assert_eq!(history_command(b"history"), None);
    }

    #[test]
    fn a_rate_limited_publish_says_when_to_retry() {
        let limited: Status = ChatError::RateLimited {
            per_second: 1,
            burst: 1,
            retry_after_ms: 250,
        }
        .into();
        assert_eq!(
            failed(limited).retry_after(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(failed(Status::unavailable("gone")).retry_after(), None);
    }

    #[test]
    fn a_rate_limited_publish_was_not_sent_a_cut_one_perhaps_was() {
        let limited = ChatError::RateLimited {
            per_second: 1,
            burst: 1,
            retry_after_ms: 10,
        };
        assert!(!failed(limited.into()).connection_failed());
        assert!(failed(Status::unavailable("gone")).connection_failed());
    }
}
