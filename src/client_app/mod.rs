//! The `chittychat-client` program: join, show the feed, publish what the user types,
//! and leave however the user leaves (`/quit`, end of input, Ctrl-C, SIGTERM).
//!
//! On a terminal the user types at a prompt and events appear above the line being
//! typed, each with the local time; `/help`, `/who`, `/history` and `/quit` are
//! commands. With stdin piped, each line is one message (scripts and tests use this).
//!
//! When the connection drops (the server restarted or shut down, the network
//! blipped, the server went silent), the client says so at once, with the time of
//! its next attempt, retries with exponential backoff and jitter, and rejoins under
//! the same name, keeping its Lamport clock and resuming its feed where it stopped,
//! so it misses nothing the server still keeps. The prompt keeps working meanwhile:
//! lines typed while away are shown as pending and sent after the rejoin, and
//! Ctrl-C or `/quit` leave at once. Each line keeps one publish id across retries:
//! a Publish whose reply was lost is sent again after the rejoin and published
//! once. A Publish refused by the rate limit waits as long as the server says and
//! is sent again; piped input is read one line at a time, so it waits too
//! (back-pressure) rather than get lost.

mod command;
mod input;
mod screen;

pub use command::{COMMANDS, DEFAULT_HISTORY_COMMAND_COUNT};
pub use input::MAX_INPUT_LINE_BYTES;

use crate::client::{
    self, ClientError, ConnectOptions, Events, JoinOptions, PreviousSession, PublishId, Published,
    ResumePoint, Session,
};
use crate::display::{Style, colour_wanted, sanitize, wall_clock_in};
use crate::error::ChatError;
use crate::lamport::LamportClock;
use crate::transport::JoinSecret;
use crate::validate::{MAX_MESSAGE_CHARS, validate_message};
use command::Command;
use input::{Input, InputLine};
use screen::Screen;
use std::collections::VecDeque;
use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use time::UtcOffset;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
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
/// published: some were refused for good (invalid, too long, an unknown command)
/// or were still waiting when the user left.
pub const EXIT_NOT_ALL_SENT: u8 = 5;

/// How many typed lines may wait to be published (while reconnecting, or held back
/// by the rate limit); a line typed beyond them is refused.
pub const MAX_PENDING_LINES: usize = 100;

/// How long leaving may take before the client exits anyway.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The wait before the first attempt to reconnect; each failed attempt doubles it.
pub const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(250);

/// The longest wait between two attempts to reconnect, so a server that comes back
/// is found within seconds.
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(10);

/// How long a name may stay taken after this client's own Join went unanswered
/// (sent, then the connection failed): that Join may have been stored, and the
/// participant it made holds the name until the server, or a cluster that lost
/// the node, announces it as left (within 15 s at the defaults). Meanwhile the
/// client asks again every [`UNANSWERED_JOIN_RETRY`] instead of calling the name
/// someone else's.
pub const UNANSWERED_JOIN_WAIT: Duration = Duration::from_secs(20);

/// How often the client asks again for a name its own unanswered Join may hold.
pub const UNANSWERED_JOIN_RETRY: Duration = Duration::from_millis(500);

/// How long the client keeps trying to reconnect before it gives up.
pub const DEFAULT_RECONNECT_TIMEOUT: Duration = Duration::from_secs(300);

/// What the client program is asked to do.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The participant's name.
    pub name: String,
    /// The servers: one, or the nodes of a cluster, tried in turn.
    pub servers: Servers,
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
    /// The local time zone, for the wall-clock time shown beside each message at a
    /// prompt (and the time of the next reconnect attempt); `None` shows no times.
    pub clock: Option<UtcOffset>,
}

/// The servers a client may join: one, or several nodes of a cluster. It joins
/// the one it used last, and moves on to the next when that one cannot be reached
/// or cannot serve (a node cut off from its cluster, or shutting down).
#[derive(Debug, Clone)]
pub struct Servers {
    urls: Arc<[String]>,
    current: Arc<std::sync::atomic::AtomicUsize>,
}

impl Servers {
    /// The servers `urls`, in the order they are tried; at least one.
    pub fn new(urls: Vec<String>) -> Self {
        Self {
            urls: urls.into(),
            current: Arc::default(),
        }
    }

    /// The server joined last (or to join first).
    pub fn current(&self) -> &str {
        let index = self.current.load(Ordering::Acquire) % self.urls.len().max(1);
        self.urls.get(index).map_or("", String::as_str)
    }

    /// The servers from the current one on, round, with their places.
    fn in_turn(&self) -> impl Iterator<Item = (usize, &str)> {
        let first = self.current.load(Ordering::Acquire);
        let count = self.urls.len();
        (0..count).map(move |k| {
            let index = (first + k) % count;
            (index, self.urls[index].as_str())
        })
    }
}

impl std::fmt::Display for Servers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.current())
    }
}

/// Whether a failed join may succeed at another server of the list: this one
/// cannot be reached, or cannot serve now.
fn worth_another_server(err: &ClientError) -> bool {
    err.connection_failed() || err.code() == Some(Code::Unavailable)
}

/// Joins for the first time. A server that paces joins may say "too many joins at
/// once, retry in …"; then the client says so on stderr, waits that long (and a
/// little more at random, so that a crowd does not come back in lockstep) and tries
/// again, for up to the reconnect timeout.
///
/// A Join that was sent and went unanswered (the connection broke, or the server
/// began to shut down) is tried again too, with backoff, unless reconnecting is
/// off: the server was there a moment ago. Its participant may then hold the name
/// until the server notices the connection gone, so a name found taken is asked
/// for again for up to [`UNANSWERED_JOIN_WAIT`]. A server that cannot be reached at
/// all fails at once, as a mistyped address should.
async fn first_join(options: &ClientOptions) -> Result<(Session, Events), ClientError> {
    let started = Instant::now();
    // One clock for every attempt: a Join that was sent was an event of this
    // process, and the next one must come later in its time.
    let clock = Arc::new(LamportClock::default());
    let mut unanswered_since: Option<Instant> = None;
    let mut delay = RECONNECT_FIRST_DELAY;
    loop {
        let err = match join(options, Some(Arc::clone(&clock)), None, None).await {
            Ok(joined) => return Ok(joined),
            Err(err) => err,
        };
        let again = match join_again(options, &err, unanswered_since) {
            Some(again) => again,
            None => return Err(err),
        };
        let wait = match again {
            JoinAgain::Busy(wait) => {
                let wait = wait + wait.mul_f64(rand::random::<f64>() / 2.0);
                eprintln!(
                    "chittychat-client: the server is busy admitting joins; joining in {:.1} s",
                    wait.as_secs_f64()
                );
                wait
            }
            JoinAgain::Unanswered => {
                unanswered_since.get_or_insert_with(Instant::now);
                let wait = equal_jitter(delay);
                delay = (delay * 2).min(RECONNECT_MAX_DELAY);
                eprintln!(
                    "chittychat-client: {} while joining; joining again in {:.1} s",
                    session_lost(&err),
                    wait.as_secs_f64()
                );
                wait
            }
            JoinAgain::MaybeOurs => {
                tracing::info!("the name may be held by this client's own unanswered Join");
                UNANSWERED_JOIN_RETRY
            }
        };
        if started.elapsed() + wait > options.reconnect_timeout {
            return Err(err);
        }
        tokio::time::sleep(wait).await;
    }
}

/// Why a first Join that failed is tried again.
enum JoinAgain {
    /// The server paces joins, and says when.
    Busy(Duration),
    /// It was sent and went unanswered: the connection was made, then broke (or
    /// the server could not serve it) before the answer came.
    Unanswered,
    /// The name is taken, perhaps by the participant an unanswered Join made.
    MaybeOurs,
}

/// Whether, and why, a first Join that failed with `err` is tried again, given
/// since when an earlier attempt went unanswered.
fn join_again(
    options: &ClientOptions,
    err: &ClientError,
    unanswered_since: Option<Instant>,
) -> Option<JoinAgain> {
    match err.code() {
        Some(Code::ResourceExhausted) => err.retry_after().map(JoinAgain::Busy),
        Some(Code::AlreadyExists) => unanswered_since
            .is_some_and(|since| since.elapsed() < UNANSWERED_JOIN_WAIT)
            .then_some(JoinAgain::MaybeOurs),
        Some(_) if options.reconnect && worth_another_server(err) => Some(JoinAgain::Unanswered),
        _ => None,
    }
}

/// "Equal jitter": half of `delay`, plus up to as much again at random, so that
/// clients cut off together do not come back in lockstep.
fn equal_jitter(delay: Duration) -> Duration {
    delay / 2 + delay.mul_f64(rand::random::<f64>() / 2.0)
}

/// Whether the client runs with a prompt: stdin and stdout are both terminals.
pub fn is_interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// Runs the client until the participant leaves or the session is lost.
pub async fn run(options: ClientOptions) -> ExitCode {
    let (session, events) = match first_join(&options).await {
        Ok(joined) => joined,
        Err(err) if err.code() == Some(Code::Unauthenticated) && options.join_secret.is_none() => {
            let hint = format!("{err}; pass it with --join-secret-file or CHITTYCHAT_JOIN_SECRET");
            return fail(join_failed_status(&err), &hint);
        }
        Err(err) => return fail(join_failed_status(&err), &err),
    };
    let (input, screen) = if is_interactive() {
        match Input::prompt() {
            Ok(prompt) => prompt,
            Err(err) => {
                return fail(
                    EXIT_SESSION_LOST,
                    &format!("cannot set up the terminal: {err}"),
                );
            }
        }
    } else {
        Input::piped()
    };
    let style = if screen.is_prompt() {
        Style {
            colour: colour_wanted(),
            me: Some(Arc::from(options.name.as_str())),
            clock: options.clock,
        }
    } else {
        Style::PLAIN
    };
    let terminate = match signal(SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(err) => {
            return fail(
                EXIT_SESSION_LOST,
                &format!("cannot watch for SIGTERM: {err}"),
            );
        }
    };
    if screen.is_prompt() {
        let log = match &options.log_file {
            Some(path) => format!(" Logs: {}.", path.display()),
            None => String::new(),
        };
        screen.notice(&format!(
            "Joined Chitty-Chat at {} as {}. Type a message and press Enter; /help lists the commands; /quit or Ctrl-D leaves.{log}",
            options.servers, options.name
        ));
        show_who(&session, &screen).await;
    }
    let oldest_seen = Arc::new(AtomicU64::new(u64::MAX));
    let clock = Arc::clone(session.clock());
    let link = Link::up(session, events, &screen, &style, &oldest_seen);
    let mut chat = Chat {
        clock,
        options,
        input,
        screen,
        style,
        terminate,
        outbox: VecDeque::new(),
        not_sent: 0,
        input_done: false,
        oldest_seen,
        link,
    };
    let status = chat.run().await;
    let Chat {
        input,
        screen,
        not_sent,
        link,
        ..
    } = chat;
    if let Link::Down(rejoin) = link {
        rejoin.abort();
    }
    // The last words go straight to the terminal, below the prompt's last line.
    screen.finish();
    input.close();
    match status {
        Ok(left) => {
            if screen.is_prompt() {
                screen.notice(&match left {
                    Some(lamport) => format!("You left Chitty-Chat at Lamport time {lamport}."),
                    None => "You left Chitty-Chat while disconnected; the server will say you left once it notices.".to_owned(),
                });
            }
            if not_sent > 0 {
                screen.notice(&format!("{not_sent} lines were not sent"));
                ExitCode::from(EXIT_NOT_ALL_SENT)
            } else {
                ExitCode::from(EXIT_OK)
            }
        }
        Err(err) => fail(EXIT_SESSION_LOST, &format!("{err:#}")),
    }
}

/// The exit status for a failed first Join: the client's and a scripted
/// participant's.
pub fn join_failed_status(err: &ClientError) -> u8 {
    match err {
        ClientError::Unreachable { .. } | ClientError::InvalidUrl { .. } => EXIT_UNREACHABLE,
        ClientError::Invalid(_) | ClientError::Rpc { .. } => match err.code() {
            Some(Code::Unavailable) => EXIT_UNREACHABLE,
            _ => EXIT_JOIN_REFUSED,
        },
        _ => EXIT_SESSION_LOST,
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

/// A rejoin in progress, which says on the screen how it goes.
type Rejoining = JoinHandle<Result<(Session, Events), ClientError>>;

/// The connection to the server.
#[expect(
    clippy::large_enum_variant,
    reason = "there is one link, never a collection of them"
)]
enum Link {
    /// Joined: the session, and the task showing its feed.
    Up {
        session: Session,
        feed: JoinHandle<Result<(), ClientError>>,
        /// The Publish in flight, if any.
        publishing: Option<Publishing>,
        /// When the rate limit lets the next Publish go.
        retry_at: Option<tokio::time::Instant>,
    },
    /// Away: a task is trying to rejoin.
    Down(Rejoining),
}

impl Link {
    /// Joined: starts showing the feed.
    fn up(
        session: Session,
        events: Events,
        screen: &Screen,
        style: &Style,
        oldest_seen: &Arc<AtomicU64>,
    ) -> Link {
        let (screen, style, oldest) = (screen.clone(), style.clone(), Arc::clone(oldest_seen));
        let feed = tokio::spawn(async move { show_feed(events, &screen, &style, &oldest).await });
        Link::Up {
            session,
            feed,
            publishing: None,
            retry_at: None,
        }
    }
}

/// What happened that the loop must act on.
#[expect(
    clippy::large_enum_variant,
    reason = "one at a time, moved straight into the match"
)]
enum Happened {
    /// The user left, with `/quit`, Ctrl-C, end of input or SIGTERM.
    Leave,
    /// The feed ended: `Ok` when the server ended it.
    FeedEnded(Result<Result<(), ClientError>, tokio::task::JoinError>),
    /// The Publish in flight was answered.
    Published(Result<Published, ClientError>),
    /// The rate limit's wait is over.
    RetryNow,
    /// The rejoin ended.
    Rejoined(Result<Result<(Session, Events), ClientError>, tokio::task::JoinError>),
    /// A line came in.
    Input(InputLine),
}

/// One participant's chat: the connection, the input, and what waits to be sent.
struct Chat {
    options: ClientOptions,
    /// The participant's clock, kept across rejoins.
    clock: Arc<LamportClock>,
    input: Input,
    screen: Screen,
    style: Style,
    terminate: tokio::signal::unix::Signal,
    /// Lines accepted from the input and not yet published, oldest first; each
    /// keeps its publish id across retries and reconnects, so it is published once.
    outbox: VecDeque<Outgoing>,
    /// Lines refused for good (invalid, unknown commands, or dropped on leaving).
    not_sent: usize,
    /// Piped input ended (or said `/quit`): leave once the outbox is sent.
    input_done: bool,
    /// The oldest sequence number shown, where `/history` pages back from.
    oldest_seen: Arc<AtomicU64>,
    link: Link,
}

impl Chat {
    /// Runs until the user leaves (`Ok`, with the Lamport time of the leave notice
    /// when the server heard it) or the session is lost for good (`Err`).
    async fn run(&mut self) -> anyhow::Result<Option<u64>> {
        loop {
            self.start_publishing();
            if self.input_done && self.outbox.is_empty() {
                return self.leave().await;
            }
            match self.next().await {
                Happened::Leave => return self.leave().await,
                Happened::Input(line) => {
                    if self.handle_input(line).await {
                        return self.leave().await;
                    }
                }
                Happened::RetryNow => {
                    if let Link::Up { retry_at, .. } = &mut self.link {
                        *retry_at = None;
                    }
                }
                Happened::Published(published) => self.published(published)?,
                Happened::FeedEnded(Ok(Ok(()))) => {
                    anyhow::bail!("the server ended this session");
                }
                Happened::FeedEnded(Ok(Err(err))) => self.down(err)?,
                Happened::FeedEnded(Err(join_error)) => {
                    anyhow::bail!("the feed task failed: {join_error}");
                }
                Happened::Rejoined(Ok(Ok((session, events)))) => {
                    self.screen.notice(&format!(
                        "reconnected to {}; rejoined Chitty-Chat as {}",
                        self.options.servers, self.options.name
                    ));
                    self.rejoined_notice(&session);
                    self.up(session, events).await;
                }
                Happened::Rejoined(Ok(Err(err))) => {
                    anyhow::bail!("gave up reconnecting: {err}");
                }
                Happened::Rejoined(Err(join_error)) => {
                    anyhow::bail!("the reconnect task failed: {join_error}");
                }
            }
        }
    }

    /// Waits for the next thing to act on.
    async fn next(&mut self) -> Happened {
        // Piped input waits while a line is on its way (back-pressure); a prompt is
        // always read, so typing, Ctrl-C and /quit work at any moment.
        let read_input = !self.input_done && (self.input.is_prompt() || self.outbox.is_empty());
        let Self {
            input,
            terminate,
            link,
            ..
        } = self;
        match link {
            Link::Up {
                feed,
                publishing,
                retry_at,
                ..
            } => tokio::select! {
                ended = feed => Happened::FeedEnded(ended),
                _ = tokio::signal::ctrl_c() => Happened::Leave,
                _ = terminate.recv() => Happened::Leave,
                () = sleep_until(*retry_at), if retry_at.is_some() => Happened::RetryNow,
                published = poll_publishing(publishing), if publishing.is_some() => {
                    *publishing = None;
                    Happened::Published(published)
                }
                line = input.next_line(), if read_input => Happened::Input(line),
            },
            Link::Down(rejoin) => tokio::select! {
                rejoined = rejoin => Happened::Rejoined(rejoined),
                _ = tokio::signal::ctrl_c() => Happened::Leave,
                _ = terminate.recv() => Happened::Leave,
                line = input.next_line(), if read_input => Happened::Input(line),
            },
        }
    }

    /// Sends the oldest waiting line, when joined and nothing else is on its way.
    fn start_publishing(&mut self) {
        if let Link::Up {
            session,
            publishing: publishing @ None,
            retry_at: None,
            ..
        } = &mut self.link
            && let Some(next) = self.outbox.front()
        {
            let (session, next) = (session.clone(), next.clone());
            *publishing = Some(Box::pin(async move {
                session.publish_with_id(&next.text, &next.id).await
            }));
        }
    }

    /// Acts on the answer to a Publish.
    fn published(&mut self, published: Result<Published, ClientError>) -> anyhow::Result<()> {
        match published {
            Ok(_) => {
                self.outbox.pop_front();
            }
            // Rate limited: wait as long as the server says, then send the same line
            // again.
            Err(err) if err.retry_after().is_some() => {
                let wait = err.retry_after().unwrap_or_default();
                tracing::debug!(wait_ms = wait.as_millis() as u64, "rate limited; waiting");
                if let Link::Up { retry_at, .. } = &mut self.link {
                    *retry_at = Some(tokio::time::Instant::now() + wait);
                }
            }
            // The outcome is unknown: retried with the same id after the rejoin, so
            // it is published once either way.
            Err(err) if err.connection_failed() => self.down(err)?,
            Err(err) => {
                self.outbox.pop_front();
                self.not_sent += 1;
                self.screen.error(&format!("{err} (not sent)"));
            }
        }
        Ok(())
    }

    /// Acts on one line of input; `true` when the user leaves.
    async fn handle_input(&mut self, line: InputLine) -> bool {
        let command = match line {
            InputLine::End => {
                if self.input.is_prompt() {
                    return true;
                }
                self.input_done = true;
                return false;
            }
            InputLine::TooLong(bytes) => {
                self.refuse(&format!(
                    "message is {bytes} bytes long, more than {MAX_MESSAGE_CHARS} characters can be (not sent)"
                ));
                return false;
            }
            InputLine::Command(command) => command,
        };
        match command {
            Command::Quit if self.input.is_prompt() => return true,
            Command::Quit => self.input_done = true,
            Command::Help => {
                for line in command::help_lines() {
                    self.screen.line(&line);
                }
            }
            Command::Who => match &self.link {
                Link::Up { session, .. } => show_who(session, &self.screen).await,
                Link::Down(_) => self
                    .screen
                    .error("not connected: /who works again once reconnected"),
            },
            Command::History(count) => match &self.link {
                Link::Up { session, .. } => {
                    show_history(session, count, &self.oldest_seen, &self.screen, &self.style)
                        .await;
                }
                Link::Down(_) => self
                    .screen
                    .error("not connected: /history works again once reconnected"),
            },
            Command::Misused(message) => self.refuse_command(&message),
            Command::Unknown(word) => self.refuse_command(&command::unknown_hint(&word)),
            Command::Say(line) => self.say(&line),
        }
        false
    }

    /// Queues a typed line to be published.
    fn say(&mut self, line: &[u8]) {
        let text = match validate_message(line) {
            Ok(text) => text.to_owned(),
            // An empty (or blank) line at a prompt is a stray Enter: nothing to say.
            Err(ChatError::MessageEmpty) => return,
            Err(err) => return self.refuse(&format!("{err} (not sent)")),
        };
        if self.outbox.len() >= MAX_PENDING_LINES {
            return self.refuse(&format!(
                "{MAX_PENDING_LINES} lines are already waiting to be sent (not sent)"
            ));
        }
        if let Link::Down(_) = self.link
            && self.screen.is_prompt()
        {
            self.screen
                .notice(&format!("pending: \"{text}\" is sent once reconnected"));
        }
        self.outbox.push_back(Outgoing {
            text,
            id: PublishId::random(),
        });
    }

    /// Says why a line was not sent, and counts it for the exit status.
    fn refuse(&mut self, message: &str) {
        self.not_sent += 1;
        self.screen.error(message);
    }

    /// Says why a command was not understood. At a prompt the user reads it and types
    /// again; piped, the line was meant for the chat and was not sent.
    fn refuse_command(&mut self, message: &str) {
        if self.input.is_prompt() {
            self.screen.error(message);
        } else {
            self.refuse(message);
        }
    }

    /// Joined: shows the feed, and at a prompt who is present.
    async fn up(&mut self, session: Session, events: Events) {
        if self.screen.is_prompt() {
            show_who(&session, &self.screen).await;
        }
        self.link = Link::up(
            session,
            events,
            &self.screen,
            &self.style,
            &self.oldest_seen,
        );
    }

    /// The connection is gone: says so at once and starts rejoining, or, when that
    /// is off or cannot help, ends the session.
    fn down(&mut self, lost: ClientError) -> anyhow::Result<()> {
        let Link::Up { session, feed, .. } = &self.link else {
            return Ok(());
        };
        feed.abort();
        let reason = session_lost(&lost);
        if !(self.options.reconnect && worth_reconnecting(&lost)) {
            anyhow::bail!(reason);
        }
        let rejoin = tokio::spawn(rejoin(
            self.options.clone(),
            Arc::clone(&self.clock),
            (session.resume_point(), session.previous()),
            self.screen.clone(),
            reason,
        ));
        self.link = Link::Down(rejoin);
        Ok(())
    }

    /// After a rejoin, says what could not be resumed.
    fn rejoined_notice(&self, session: &Session) {
        let info = session.joined();
        match (info.resumed, info.missed) {
            (Some(false), Some(missed)) => self.screen.notice(&format!(
                "missed {missed} events while away (the server no longer keeps them); showing the latest {}",
                info.history
            )),
            (Some(false), None) => self.screen.notice(&format!(
                "the server's log was replaced while you were away, so what you missed is unknown; showing the latest {} events",
                info.history
            )),
            _ => {}
        }
    }

    /// Leaves: tells the server when connected, and lets the feed drain.
    async fn leave(&mut self) -> anyhow::Result<Option<u64>> {
        // A line on its way may already be published: hear the answer first, so
        // that it is not reported as unsent.
        if let Link::Up {
            publishing: publishing @ Some(_),
            ..
        } = &mut self.link
            && let Ok(Ok(_)) =
                tokio::time::timeout(LEAVE_TIMEOUT, poll_publishing(publishing)).await
        {
            self.outbox.pop_front();
        }
        if !self.outbox.is_empty() {
            self.not_sent += self.outbox.len();
            self.screen
                .error(&format!("{} typed lines were not sent", self.outbox.len()));
            self.outbox.clear();
        }
        let Link::Up {
            session,
            feed,
            publishing,
            ..
        } = &mut self.link
        else {
            return Ok(None);
        };
        *publishing = None;
        match tokio::time::timeout(LEAVE_TIMEOUT, session.leave()).await {
            Ok(Ok(lamport)) => {
                let _ = tokio::time::timeout(LEAVE_TIMEOUT, feed).await;
                Ok(Some(lamport))
            }
            Ok(Err(err)) if err.connection_failed() => {
                feed.abort();
                Ok(None)
            }
            Ok(Err(err)) => Err(anyhow::Error::msg(session_lost(&err))),
            Err(_) => Err(anyhow::anyhow!("the server did not answer Leave in time")),
        }
    }
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

/// Shows who is present, as the server says.
async fn show_who(session: &Session, screen: &Screen) {
    match session.who().await {
        Ok(names) => screen.notice(&format!("Present ({}): {}", names.len(), names.join(", "))),
        Err(err) => screen.error(&err.to_string()),
    }
}

/// Shows `count` events from before the oldest one shown so far.
async fn show_history(
    session: &Session,
    count: u32,
    oldest_seen: &AtomicU64,
    screen: &Screen,
    style: &Style,
) {
    let before = match oldest_seen.load(Ordering::Acquire) {
        u64::MAX => 0,
        seq => seq,
    };
    match session.history(before, count).await {
        Ok((events, _)) if events.is_empty() => screen.notice("no older messages"),
        Ok((events, _)) => {
            for event in &events {
                screen.line(&style.line(event, true));
            }
            if let Some(first) = events.first() {
                oldest_seen.fetch_min(first.seq, Ordering::AcqRel);
            }
        }
        Err(err) => screen.error(&err.to_string()),
    }
}

/// Connects and joins as `options` say, keeping `clock`, resuming from `resume`
/// and replacing the session `replaces` when rejoining, through [`client::join`]:
/// the prompt, piped input and scripted participants alike. Tries each server in
/// turn, from the one joined last. After a Join that went unanswered, a name
/// found taken may be held by that Join's own participant: the servers are asked
/// again for up to [`UNANSWERED_JOIN_WAIT`].
pub(crate) async fn join(
    options: &ClientOptions,
    clock: Option<Arc<LamportClock>>,
    resume: Option<ResumePoint>,
    replaces: Option<PreviousSession>,
) -> Result<(Session, Events), ClientError> {
    // One clock for every server tried: a Join a node refused was still an event
    // of this process, and the next one must come later in its time.
    let clock = clock.unwrap_or_default();
    let join = JoinOptions {
        join_secret: options.join_secret.clone(),
        clock: Some(clock),
        history: options.history,
        resume,
        replaces,
    };
    let started = Instant::now();
    // Whether a Join of this call was sent and never answered, so that the name
    // may be held by the participant it made.
    let mut unanswered = false;
    loop {
        let mut failed = None;
        let mut maybe_ours = false;
        for (index, url) in options.servers.in_turn() {
            match client::join(url, &options.name, &options.connect, join.clone()).await {
                Ok(joined) => {
                    options.servers.current.store(index, Ordering::Release);
                    return Ok(joined);
                }
                Err(err) if worth_another_server(&err) => {
                    tracing::info!(server = url, error = %err, "cannot join here; trying the next server");
                    unanswered |= matches!(err, ClientError::Rpc { .. });
                    failed = Some(err);
                }
                Err(err)
                    if unanswered
                        && err.code() == Some(Code::AlreadyExists)
                        && started.elapsed() < UNANSWERED_JOIN_WAIT =>
                {
                    tracing::info!(
                        server = url,
                        "the name may be held by this client's own unanswered Join; asking again"
                    );
                    maybe_ours = true;
                    failed = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        if !maybe_ours {
            return Err(failed.unwrap_or_else(|| ClientError::InvalidUrl {
                url: String::new(),
                reason: "no server given".to_owned(),
            }));
        }
        tokio::time::sleep(UNANSWERED_JOIN_RETRY).await;
    }
}

/// Rejoins after the feed (or a Publish) of `session` failed with `lost`, as the
/// client does at a prompt: backoff with jitter, each server of the list in turn,
/// the feed resumed where it stopped and the old session replaced, notices on
/// stderr. Scripted participants fail over through it. `Err(lost)` when
/// reconnecting is off or cannot help.
pub(crate) async fn rejoin_after(
    options: &ClientOptions,
    session: &Session,
    lost: ClientError,
) -> Result<(Session, Events), ClientError> {
    if !(options.reconnect && worth_reconnecting(&lost)) {
        return Err(lost);
    }
    let reason = session_lost(&lost);
    let rejoined = rejoin(
        options.clone(),
        Arc::clone(session.clock()),
        (session.resume_point(), session.previous()),
        Screen::Plain,
        reason,
    )
    .await?;
    Screen::Plain.notice(&format!(
        "reconnected to {}; rejoined Chitty-Chat as {}",
        options.servers, options.name
    ));
    Ok(rejoined)
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
/// the reconnect timeout, resuming the feed from `resume`. Says on `screen` why the
/// connection was lost and when each attempt comes.
async fn rejoin(
    options: ClientOptions,
    clock: Arc<LamportClock>,
    (resume, previous): (Option<ResumePoint>, PreviousSession),
    screen: Screen,
    reason: String,
) -> Result<(Session, Events), ClientError> {
    let started = Instant::now();
    let mut delay = RECONNECT_FIRST_DELAY;
    let mut failed: Option<ClientError> = None;
    loop {
        let wait = equal_jitter(delay);
        let at = match options.clock {
            Some(offset) => format!("at {}", wall_clock_in(offset, wait)),
            None => format!("in {:.1} s", wait.as_secs_f64()),
        };
        match &failed {
            None => screen.notice(&format!(
                "{reason}; reconnecting, next attempt {at} (Ctrl-C or /quit to leave)"
            )),
            // Quick retries need no word each; slower ones say they are coming.
            Some(err) if wait >= Duration::from_secs(1) => {
                screen.notice(&format!("still away ({err}); next attempt {at}"));
            }
            Some(_) => {}
        }
        tokio::time::sleep(wait).await;
        let replaces = Some(previous.clone());
        match join(&options, Some(Arc::clone(&clock)), resume.clone(), replaces).await {
            Ok(joined) => return Ok(joined),
            Err(err)
                if worth_retrying_join(&err) && started.elapsed() < options.reconnect_timeout =>
            {
                delay = (delay * 2).min(RECONNECT_MAX_DELAY);
                tracing::info!(error = %err, next_delay_ms = delay.as_millis() as u64, "rejoin failed");
                failed = Some(err);
            }
            Err(err) => return Err(err),
        }
    }
}

/// Shows every event until the feed ends; `Ok` when it ended because we left.
async fn show_feed(
    mut events: Events,
    screen: &Screen,
    style: &Style,
    oldest_seen: &AtomicU64,
) -> Result<(), ClientError> {
    while let Some(received) = events.next().await? {
        oldest_seen.fetch_min(received.event.seq, Ordering::AcqRel);
        screen.line(&style.line(&received.event, received.history));
    }
    Ok(())
}

/// A person-readable reason for a lost session.
fn session_lost(err: &ClientError) -> String {
    if err.server_shut_down() {
        return "the Chitty-Chat server shut down".to_owned();
    }
    match err {
        ClientError::Rpc { status, .. } => match status.code() {
            // A status the server sent says why in its message ("the node lost
            // its connection to NATS"); one the transport made from a broken
            // connection carries its cause instead, in HTTP/2's words, which
            // tell a person nothing: the log keeps them.
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal => {
                match std::error::Error::source(status) {
                    Some(_) => {
                        tracing::info!(error = %status.message(), "the connection broke");
                        "lost the connection to the server".to_owned()
                    }
                    None => format!("lost the connection to the server: {}", status.message()),
                }
            }
            _ => status.message().to_owned(),
        },
        other => other.to_string(),
    }
}

/// Prints one error line on stderr and returns the exit status.
pub(crate) fn fail(status: u8, err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("chittychat-client: error: {}", sanitize(&err.to_string()));
    ExitCode::from(status)
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
    fn a_broken_connection_is_told_plainly_and_a_servers_reason_in_full() {
        let broken = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "h2 protocol error: error reading a body from connection",
        )));
        assert_eq!(
            session_lost(&failed(broken)),
            "lost the connection to the server"
        );
        let refused = Status::unavailable("the node lost its connection to NATS");
        assert_eq!(
            session_lost(&failed(refused)),
            "lost the connection to the server: the node lost its connection to NATS"
        );
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
