//! Scripted participants: `chittychat-client --script FILE` plays its part of a
//! conversation from a file instead of reading the keyboard, so a demo (and the
//! container test) holds the same conversation every time, whatever order the
//! participants happen to join in.
//!
//! A script has one step a line; blank lines and lines starting with `#` are skipped:
//!
//! ```text
//! meet carol dave            # wait until carol and dave are known to be present
//! say Hello carol and dave   # publish a message
//! await chat carol Hi bob    # wait for carol to say exactly "Hi bob"
//! await joined erin          # wait for erin's join notice
//! await left dave            # wait for dave's leave notice
//! leave                      # leave now and exit
//! ```
//!
//! Awaited events count from the moment this participant joined, so an event that
//! arrived before its step is not waited for twice. After the last step (unless it
//! is `leave`) the participant stays, showing events, until the session ends or it
//! gets SIGINT/SIGTERM, when it leaves.
//!
//! When the feed is lost (its server died, shut down or was cut off from its
//! cluster) and reconnecting is on, the participant rejoins as the client at a
//! prompt does (`client_app`'s rejoin: backoff, the next server of `--server`,
//! the feed resumed gaplessly from the last event received, the old session
//! replaced), and plays on from the step it was at. A `say` whose answer was lost
//! is sent again with the same publish id, so it is published once. Everything
//! received before and after the rejoin counts for the awaits, once: the resumed
//! feed carries on where the old one stopped.
//!
//! Failing over replaces a session, so the others see "X left" and at once (the
//! next sequence number) "X joined". Such a leave is a replacement, not a
//! departure: `await left X` is not satisfied by a leave of X that X's join
//! follows at the next sequence number, nor, while that leave is the last event
//! received, when the server says X is present.
//!
//! `meet` is the rendezvous: a participant only learns of those who join after it,
//! so while meeting, it welcomes every awaited participant whose join notice it sees
//! ("welcome, NAME"), which tells that newcomer it is present. Every pair of
//! participants is thereby introduced whichever joined first, and every message
//! said after `meet` reaches all of them.

use crate::client::{ClientError, Events, PublishId, Session};
use crate::client_app::{
    self, ClientOptions, EXIT_OK, EXIT_SESSION_LOST, LEAVE_TIMEOUT, fail, join_failed_status,
};
use crate::display::{event_line, sanitize};
use crate::error::ChatError;
use crate::event::{Event, EventKind};
use crate::validate::{validate_message, validate_name};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio::signal::unix::{SignalKind, signal};

/// Exit status when the script cannot be read or has a mistake.
pub const EXIT_BAD_SCRIPT: u8 = 2;

/// The largest script read, far beyond any conversation worth scripting.
pub const MAX_SCRIPT_BYTES: u64 = 1 << 20;

/// One step of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Publish the text.
    Say(String),
    /// Wait until every named participant is known to be present, welcoming each
    /// one whose join notice arrives.
    Meet(Vec<String>),
    /// Wait for the named participant's join notice.
    AwaitJoined(String),
    /// Wait for the named participant's leave notice.
    AwaitLeft(String),
    /// Wait for a chat message with exactly this text from the named participant.
    AwaitChat {
        /// Who says it.
        from: String,
        /// What they say.
        text: String,
    },
    /// Leave and exit.
    Leave,
}

/// A mistake in a script, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct ScriptError {
    /// The line of the mistake.
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

/// Parses a script; every name and message is checked by the server's rules here,
/// so a script with a mistake fails before it joins.
pub fn parse(script: &str) -> Result<Vec<Step>, ScriptError> {
    let mut steps = Vec::new();
    for (index, line) in script.lines().enumerate() {
        let error = |problem: String| ScriptError {
            line: index + 1,
            problem,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (command, rest) = split_word(line);
        let step = match command {
            "say" => Step::Say(message(rest).map_err(|e| error(e.to_string()))?),
            "meet" => {
                let names: Vec<String> = rest.split_whitespace().map(str::to_owned).collect();
                if names.is_empty() {
                    return Err(error("meet needs at least one name".to_owned()));
                }
                for name in &names {
                    validate_name(name.as_bytes()).map_err(|e| error(e.to_string()))?;
                }
                Step::Meet(names)
            }
            "await" => {
                let (kind, rest) = split_word(rest);
                let (name, rest) = split_word(rest);
                validate_name(name.as_bytes()).map_err(|e| error(e.to_string()))?;
                let name = name.to_owned();
                match (kind, rest.is_empty()) {
                    ("joined", true) => Step::AwaitJoined(name),
                    ("left", true) => Step::AwaitLeft(name),
                    ("chat", false) => Step::AwaitChat {
                        from: name,
                        text: message(rest).map_err(|e| error(e.to_string()))?,
                    },
                    _ => {
                        return Err(error(
                            "expected \"await joined NAME\", \"await left NAME\" or \
                             \"await chat NAME TEXT\""
                                .to_owned(),
                        ));
                    }
                }
            }
            "leave" if rest.is_empty() => Step::Leave,
            _ => {
                return Err(error(format!(
                    "unknown step \"{}\"; the steps are say, meet, await and leave",
                    sanitize(line)
                )));
            }
        };
        steps.push(step);
    }
    Ok(steps)
}

/// The first word of `line` and the rest, trimmed.
fn split_word(line: &str) -> (&str, &str) {
    match line.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (line, ""),
    }
}

fn message(text: &str) -> Result<String, ChatError> {
    validate_message(text.as_bytes()).map(str::to_owned)
}

/// Why a script file cannot be played.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file cannot be read.
    #[error("cannot read the script {}: {source}", .path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_SCRIPT_BYTES`].
    #[error("the script {} is {size} bytes; the limit is {MAX_SCRIPT_BYTES}", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// A line of the script is wrong.
    #[error("in the script {}: {mistake}", .path.display())]
    Mistake {
        /// The file.
        path: PathBuf,
        /// The mistake and its line.
        mistake: ScriptError,
    },
}

/// What a scripted participant is asked to do.
#[derive(Debug, Clone)]
pub struct ScriptOptions {
    /// Who joins where, and how it connects (TLS, the join secret), as for the
    /// client program.
    pub client: ClientOptions,
    /// The script file.
    pub script: PathBuf,
}

/// Reads a script file, bounded by [`MAX_SCRIPT_BYTES`].
pub fn read(path: &Path) -> Result<Vec<Step>, ReadError> {
    let cannot = |source| ReadError::Unreadable {
        path: path.to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(cannot)?.len();
    if size > MAX_SCRIPT_BYTES {
        return Err(ReadError::TooLarge {
            path: path.to_owned(),
            size,
        });
    }
    let text = std::fs::read_to_string(path).map_err(cannot)?;
    parse(&text).map_err(|mistake| ReadError::Mistake {
        path: path.to_owned(),
        mistake,
    })
}

/// Joins, plays the script, and stays until the session ends or a signal comes.
pub async fn run(options: ScriptOptions) -> ExitCode {
    let steps = match read(&options.script) {
        Ok(steps) => steps,
        Err(message) => return fail(EXIT_BAD_SCRIPT, &message),
    };
    let (session, events) = match client_app::join(&options.client, None, None, None).await {
        Ok(joined) => joined,
        Err(err) => return fail(join_failed_status(&err), &err),
    };
    let mut player = Player {
        options: options.client,
        session,
        events,
        seen: Vec::new(),
        welcomed: HashSet::new(),
        leaving: false,
    };
    let stopped = async {
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    let played = tokio::select! {
        played = player.play(&steps) => played,
        () = stopped => Ok(Played::Stopped),
    };
    match played {
        Ok(Played::Leave | Played::Stopped) => player.leave().await,
        Ok(Played::Ended) => fail(EXIT_SESSION_LOST, &"the server ended this session"),
        Err(err) => fail(EXIT_SESSION_LOST, &err),
    }
}

/// How playing ended.
enum Played {
    /// The script said `leave`.
    Leave,
    /// A signal asked the participant to leave.
    Stopped,
    /// The server ended the feed.
    Ended,
}

struct Player {
    /// How to rejoin when the feed is lost.
    options: ClientOptions,
    session: Session,
    events: Events,
    /// Every event received since joining.
    seen: Vec<Event>,
    /// Those already welcomed while meeting.
    welcomed: HashSet<String>,
    /// Leaving: a lost feed is not rejoined any more.
    leaving: bool,
}

impl Player {
    /// Plays every step, then shows events until the session ends. Cancel-safe at
    /// every await, so a signal can interrupt it anywhere.
    async fn play(&mut self, steps: &[Step]) -> Result<Played, ClientError> {
        for step in steps {
            match step {
                Step::Say(text) => self.say(text).await?,
                Step::Leave => return Ok(Played::Leave),
                Step::Meet(names) => loop {
                    self.welcome_newcomers(names).await?;
                    if names.iter().all(|name| self.knows_present(name)) {
                        break;
                    }
                    if !self.receive().await? {
                        return Ok(Played::Ended);
                    }
                },
                awaited => {
                    while !self.awaited(awaited).await {
                        if !self.receive().await? {
                            return Ok(Played::Ended);
                        }
                    }
                }
            }
        }
        while self.receive().await? {}
        Ok(Played::Ended)
    }

    /// Publishes `text`, once, rejoining when the connection fails on the way: the
    /// same publish id goes again, so a Publish whose answer was lost is not
    /// published twice.
    async fn say(&mut self, text: &str) -> Result<(), ClientError> {
        let id = PublishId::random();
        loop {
            match self.session.publish_with_id(text, &id).await {
                Ok(_) => return Ok(()),
                Err(err) if err.connection_failed() => self.rejoin(err).await?,
                Err(err) => return Err(err),
            }
        }
    }

    /// Rejoins after the session was lost with `lost`, replacing it and resuming
    /// its feed; `Err` when reconnecting is off, cannot help, or gave up.
    async fn rejoin(&mut self, lost: ClientError) -> Result<(), ClientError> {
        if self.leaving {
            return Err(lost);
        }
        let (session, events) =
            client_app::rejoin_after(&self.options, &self.session, lost).await?;
        if session.joined().resumed != Some(true) {
            // The awaits still count what arrives; the gap is the server's to say.
            tracing::warn!(
                missed = session.joined().missed,
                "rejoined without resuming the feed"
            );
        }
        self.session = session;
        self.events = events;
        Ok(())
    }

    /// Whether `step` (an await) is satisfied by what was received. A leave that
    /// is a replacement (see the module's doc) does not count.
    async fn awaited(&self, step: &Step) -> bool {
        for (index, event) in self.seen.iter().enumerate() {
            if !satisfies(event, step) {
                continue;
            }
            if event.kind != EventKind::Left {
                return true;
            }
            match self.seen.get(index + 1) {
                Some(next) if !rejoined(event, next) => return true,
                Some(_) => {}
                // The leave is the last event yet: the server knows whether its
                // join follows. When it cannot be asked, the next event tells.
                None => match self.session.who().await {
                    Ok(present) if !present.iter().any(|name| **name == *event.participant) => {
                        return true;
                    }
                    Ok(_) => {}
                    Err(err) => tracing::debug!(error = %err, "cannot ask who is present"),
                },
            }
        }
        false
    }

    /// Receives and shows one event, rejoining when the feed is lost; `false` once
    /// the server has ended the feed.
    async fn receive(&mut self) -> Result<bool, ClientError> {
        let received = loop {
            match self.events.next().await {
                Ok(Some(received)) => break received,
                Ok(None) => return Ok(false),
                Err(err) => self.rejoin(err).await?,
            }
        };
        // Like the prompt, a closed stdout does not stop the participant.
        let line = format!("{}\n", event_line(&received.event, false));
        let mut stdout = std::io::stdout().lock();
        let _ = stdout
            .write_all(line.as_bytes())
            .and_then(|()| stdout.flush());
        self.seen.push(received.event);
        Ok(true)
    }

    /// Whether `name` joined after this participant did, or spoke since.
    fn knows_present(&self, name: &str) -> bool {
        self.seen.iter().any(|event| {
            &*event.participant == name && matches!(event.kind, EventKind::Joined | EventKind::Chat)
        })
    }

    /// Welcomes each of `names` whose join notice arrived and who was not welcomed.
    async fn welcome_newcomers(&mut self, names: &[String]) -> Result<(), ClientError> {
        let newcomers: Vec<String> = names
            .iter()
            .filter(|name| {
                name.as_str() != self.session.name()
                    && !self.welcomed.contains(*name)
                    && self.seen.iter().any(|event| {
                        event.kind == EventKind::Joined && &*event.participant == name.as_str()
                    })
            })
            .cloned()
            .collect();
        for name in newcomers {
            self.say(&format!("welcome, {name}")).await?;
            self.welcomed.insert(name);
        }
        Ok(())
    }

    /// Leaves, shows what the server queued before the leave, and exits.
    async fn leave(mut self) -> ExitCode {
        self.leaving = true;
        match tokio::time::timeout(LEAVE_TIMEOUT, self.session.leave()).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return fail(EXIT_SESSION_LOST, &err),
            Err(_) => {
                return fail(
                    EXIT_SESSION_LOST,
                    &"the server did not answer Leave in time",
                );
            }
        }
        let drain = async { while let Ok(true) = self.receive().await {} };
        let _ = tokio::time::timeout(LEAVE_TIMEOUT, drain).await;
        ExitCode::from(EXIT_OK)
    }
}

/// Whether `next` is the join of the participant whose leave `left` is, at the
/// next sequence number: the leave of a replaced session.
fn rejoined(left: &Event, next: &Event) -> bool {
    next.kind == EventKind::Joined
        && next.participant == left.participant
        && next.seq == left.seq + 1
}

/// Whether `event` is what an await step waits for.
fn satisfies(event: &Event, step: &Step) -> bool {
    let about = |name: &str| &*event.participant == name;
    match step {
        Step::AwaitJoined(name) => event.kind == EventKind::Joined && about(name),
        Step::AwaitLeft(name) => event.kind == EventKind::Left && about(name),
        Step::AwaitChat { from, text } => {
            event.kind == EventKind::Chat && about(from) && event.text == *text
        }
        Step::Say(_) | Step::Meet(_) | Step::Leave => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_step() {
        let steps = parse(
            "# a comment\n\nmeet carol dave\nsay Hello  there\nawait chat carol Hi bob\n\
             await joined erin\nawait left dave\nleave\n",
        )
        .expect("a valid script");
        assert_eq!(
            steps,
            vec![
                Step::Meet(vec!["carol".into(), "dave".into()]),
                Step::Say("Hello  there".into()),
                Step::AwaitChat {
                    from: "carol".into(),
                    text: "Hi bob".into()
                },
                Step::AwaitJoined("erin".into()),
                Step::AwaitLeft("dave".into()),
                Step::Leave,
            ]
        );
    }

    #[test]
    fn reports_mistakes_with_their_line() {
        for (script, line, needle) in [
            ("say hi\nshout hi", 2, "unknown step"),
            ("meet", 1, "at least one name"),
            ("await joined", 1, "invalid name"),
            ("await chat bob", 1, "expected"),
            ("await left bob now", 1, "expected"),
            ("meet bob c@rol", 1, "invalid name"),
            (&format!("say {}", "x".repeat(129)), 1, "the limit is 128"),
            ("leave now", 1, "unknown step"),
        ] {
            let err = parse(script).expect_err(script);
            assert_eq!(err.line, line, "{script}");
            assert!(err.to_string().contains(needle), "{script}: {err}");
        }
    }

    fn event(kind: EventKind, participant: &str, text: &str) -> Event {
        Event {
            kind,
            participant: participant.into(),
            text: text.into(),
            lamport: 1,
            seq: 1,
        }
    }

    #[test]
    fn awaits_match_only_their_event() {
        let said = event(EventKind::Chat, "carol", "Hi bob");
        let chat = |from: &str, text: &str| Step::AwaitChat {
            from: from.into(),
            text: text.into(),
        };
        assert!(satisfies(&said, &chat("carol", "Hi bob")));
        assert!(!satisfies(&said, &chat("carol", "Hi")));
        assert!(!satisfies(&said, &chat("dave", "Hi bob")));
        assert!(!satisfies(&said, &Step::AwaitJoined("carol".into())));
        let left = event(EventKind::Left, "dave", "Participant dave left");
        assert!(satisfies(&left, &Step::AwaitLeft("dave".into())));
        assert!(!satisfies(&left, &Step::AwaitJoined("dave".into())));
    }

    #[test]
    fn a_leave_followed_at_once_by_the_same_join_is_a_replacement() {
        let left = event(EventKind::Left, "dave", "Participant dave left");
        let next = |kind, participant: &str, seq| Event {
            seq,
            ..event(kind, participant, "")
        };
        assert!(rejoined(&left, &next(EventKind::Joined, "dave", 2)));
        assert!(!rejoined(&left, &next(EventKind::Joined, "dave", 3)));
        assert!(!rejoined(&left, &next(EventKind::Joined, "carol", 2)));
        assert!(!rejoined(&left, &next(EventKind::Chat, "dave", 2)));
    }
}
