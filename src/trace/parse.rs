//! Reads the JSON logs of a run (one file per process) into processes and their
//! events: the server's broadcasts, and each client's sends, replies and receipts.
//! In a cluster's run each node is a process named by its node: its broadcasts are
//! the events it stamped, and it applies (receives) those the other nodes stamped.

use crate::event::{EventKind, UnknownKind};
use crate::lamport::LamportTime;
use crate::log_schema::{BroadcastCause, UnknownCause, field, message, rpc};
use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};

/// What is wrong with a field's value.
#[derive(Debug, thiserror::Error)]
pub enum BadValue {
    /// The value is not of the type the field has.
    #[error("the field \"{field}\" is not {expected}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// The type it should have ("an unsigned integer").
        expected: &'static str,
    },
    /// A leave or broadcast cause these tools do not know.
    #[error(transparent)]
    UnknownCause(#[from] UnknownCause),
    /// An event kind these tools do not know.
    #[error(transparent)]
    UnknownKind(#[from] UnknownKind),
}

/// What can go wrong reading a run's logs.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// A file or folder could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line is not a JSON object.
    #[error(
        "{}:{line}: not a JSON log line ({reason}); chittychat-trace reads the logs the \
         programs write with --log-format json: run them with it",
        .path.display()
    )]
    Json {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What the JSON parser said.
        reason: String,
    },
    /// A line the tools rely on lacks a field.
    #[error("{}:{line}: a \"{message}\" line without the field \"{field}\"", .path.display())]
    MissingField {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// The line's message ("broadcast", "sent", ...).
        message: String,
        /// The missing field.
        field: &'static str,
    },
    /// A field the tools read has a value they cannot read: a wrong type, or a
    /// cause they do not know.
    #[error("{}:{line}: {problem}", .path.display())]
    BadField {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        problem: BadValue,
    },
    /// Nothing to read.
    #[error("no Chitty-Chat log lines in {}", .0.display())]
    Empty(PathBuf),
}

/// Whether a process is the server or a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The Chitty-Chat server.
    Server,
    /// A participant's client.
    Client,
}

/// One process of the run: its name, its log file and its events.
#[derive(Debug, Clone)]
pub struct Process {
    /// `server`, or the participant's name.
    pub name: String,
    /// The name shown for it: its name, with `#2`, `#3`, ... for later processes
    /// of the same name (a participant that left and joined again).
    pub label: String,
    /// Server or client.
    pub role: Role,
    /// The log file it came from.
    pub file: PathBuf,
    /// Its events in the order of the log file.
    pub events: Vec<Event>,
}

/// One event of a process: a log line with a Lamport time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The line number in the log file, from 1.
    pub line: usize,
    /// The process's Lamport time of the event.
    pub lamport: LamportTime,
    /// What happened.
    pub action: Action,
}

/// What an event is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The server received a request (or noticed a dropout) and broadcast an event.
    Broadcast {
        /// The request it answers, or why a participant left without one.
        cause: BroadcastCause,
        /// `chat`, `joined` or `left`.
        kind: EventKind,
        /// The participant the event is about.
        participant: String,
        /// The message or notice.
        text: String,
        /// The broadcast's sequence number.
        seq: u64,
        /// The Lamport time of the client's request; absent for dropouts.
        client_lamport: Option<LamportTime>,
        /// For a Join that resumed a feed: the last event the client had received,
        /// so its new session must deliver every event after it.
        resumed_after: Option<u64>,
    },
    /// A cluster's node applied an event another node stamped (it read the
    /// record from the cluster's log and merged its time): a receive.
    Applied {
        /// `chat`, `joined` or `left`.
        kind: EventKind,
        /// The participant the event is about.
        participant: String,
        /// The message or notice.
        text: String,
        /// The event's sequence number.
        seq: u64,
        /// The Lamport time the stamping node gave it.
        stamp: LamportTime,
        /// The node that stamped it.
        stamped_by: String,
    },
    /// A client sent a request.
    Sent {
        /// `Join`, `Publish` or `Leave`.
        rpc: String,
        /// The message, for Publish.
        text: Option<String>,
    },
    /// A client got the server's reply to Publish or Leave.
    Reply {
        /// `Publish` or `Leave`.
        rpc: String,
        /// The sequence number of the broadcast the request became.
        seq: u64,
        /// The server's Lamport time in the reply.
        server_lamport: LamportTime,
    },
    /// A client received a broadcast on its feed.
    Received {
        /// `chat`, `joined` or `left`.
        kind: EventKind,
        /// The participant the event is about.
        participant: String,
        /// The message or notice.
        text: String,
        /// The broadcast's sequence number.
        seq: u64,
        /// The server's Lamport time of the broadcast.
        server_lamport: LamportTime,
        /// A past event replayed before the participant's join notice.
        history: bool,
    },
}

impl Event {
    /// A short description for people: `sent Publish "hi"`, `received #3 chat from alice`.
    pub fn describe(&self) -> String {
        match &self.action {
            Action::Broadcast {
                cause,
                kind,
                participant,
                text,
                seq,
                ..
            } => match kind {
                EventKind::Chat => format!("broadcast #{seq} {participant}: \"{text}\" ({cause})"),
                _ => format!("broadcast #{seq} {participant} {kind} ({cause})"),
            },
            Action::Applied {
                seq,
                stamp,
                stamped_by,
                ..
            } => format!("applied #{seq} from {stamped_by} (stamped {stamp})"),
            Action::Sent { rpc, text: Some(t) } => format!("sent {rpc} \"{t}\""),
            Action::Sent { rpc, text: None } => format!("sent {rpc}"),
            Action::Reply {
                rpc,
                seq,
                server_lamport,
            } => format!("reply to {rpc}: #{seq} at server time {server_lamport}"),
            Action::Received {
                kind,
                participant,
                text,
                seq,
                server_lamport,
                history,
            } => {
                let how = if *history {
                    "received as history"
                } else {
                    "received"
                };
                match kind {
                    EventKind::Chat => format!(
                        "{how} #{seq} {participant}: \"{text}\" (server time {server_lamport})"
                    ),
                    _ => {
                        format!("{how} #{seq} {participant} {kind} (server time {server_lamport})")
                    }
                }
            }
        }
    }
}

/// Where an event is: a process and the event's index in its log order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    /// The index of the process in [`Run::processes`].
    pub process: usize,
    /// The index of the event in [`Process::events`].
    pub index: usize,
}

/// All the processes of one run: the server first, then the clients in the order
/// they joined.
#[derive(Debug, Clone)]
pub struct Run {
    /// The processes.
    pub processes: Vec<Process>,
}

impl Run {
    /// Reads a run from files and folders; a folder stands for its `*.log` files.
    pub fn read(paths: &[PathBuf]) -> Result<Run, ParseError> {
        let mut files = Vec::new();
        for path in paths {
            let meta = std::fs::metadata(path).map_err(|source| ParseError::Read {
                path: path.clone(),
                source,
            })?;
            if meta.is_dir() {
                let entries = std::fs::read_dir(path).map_err(|source| ParseError::Read {
                    path: path.clone(),
                    source,
                })?;
                let mut logs: Vec<PathBuf> = entries
                    .filter_map(|entry| entry.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|ext| ext == "log"))
                    .collect();
                logs.sort();
                files.extend(logs);
            } else {
                files.push(path.clone());
            }
        }
        let mut processes = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).map_err(|source| ParseError::Read {
                path: file.clone(),
                source,
            })?;
            if let Some(process) = parse_process(file, &text)? {
                processes.push(process);
            }
        }
        if processes.is_empty() {
            let shown = paths.first().cloned().unwrap_or_default();
            return Err(ParseError::Empty(shown));
        }
        Ok(Run::new(processes))
    }

    /// A run of these processes, put in the canonical order.
    pub fn new(mut processes: Vec<Process>) -> Run {
        // The server first, then clients by the sequence number of their own join
        // notice, then by name: the order in which they joined.
        processes.sort_by_key(|p| (p.role == Role::Client, own_join_seq(p), p.name.clone()));
        let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for process in &mut processes {
            let count = seen.entry(process.name.clone()).or_default();
            *count += 1;
            // Names cannot contain '#', so a label never collides with a name.
            process.label = match *count {
                1 => process.name.clone(),
                n => format!("{}#{n}", process.name),
            };
        }
        Run { processes }
    }

    /// The event at `id`.
    pub fn event(&self, id: EventId) -> &Event {
        &self.processes[id.process].events[id.index]
    }

    /// `alice.log:7`, for pointing a person at the line.
    pub fn location(&self, id: EventId) -> String {
        let process = &self.processes[id.process];
        let file = process.file.file_name().map_or_else(
            || process.file.display().to_string(),
            |f| f.to_string_lossy().into(),
        );
        format!("{file}:{}", process.events[id.index].line)
    }

    /// Every event's id, process by process, in log order.
    pub fn event_ids(&self) -> impl Iterator<Item = EventId> + '_ {
        self.processes.iter().enumerate().flat_map(|(p, process)| {
            (0..process.events.len()).map(move |index| EventId { process: p, index })
        })
    }

    /// The index of the server process, if the run has its log.
    pub fn server(&self) -> Option<usize> {
        self.processes.iter().position(|p| p.role == Role::Server)
    }
}

/// The sequence number of a client's own join notice; `u64::MAX` when unknown.
fn own_join_seq(process: &Process) -> u64 {
    process
        .events
        .iter()
        .find_map(|e| match &e.action {
            Action::Received {
                kind,
                participant,
                seq,
                ..
            } if *kind == EventKind::Joined && *participant == process.name => Some(*seq),
            _ => None,
        })
        .unwrap_or(u64::MAX)
}

/// A log line as a JSON object, read field by field through the names in
/// [`field`]; fields the tools do not read are ignored.
struct Line(serde_json::Map<String, Value>);

impl Line {
    /// The field `name`, or `None` when it is absent or null.
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|value| !value.is_null())
    }

    /// The field `name` as text; an error names the field when it is not text.
    fn text(&self, name: &'static str) -> Result<Option<String>, BadValue> {
        self.get(name)
            .map(|value| {
                value
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| wrong_type(name, "a string"))
            })
            .transpose()
    }

    /// The field `name` as an unsigned integer.
    fn number(&self, name: &'static str) -> Result<Option<u64>, BadValue> {
        self.get(name)
            .map(|value| {
                value
                    .as_u64()
                    .ok_or_else(|| wrong_type(name, "an unsigned integer"))
            })
            .transpose()
    }

    /// The field `name` as a boolean.
    fn flag(&self, name: &'static str) -> Result<Option<bool>, BadValue> {
        self.get(name)
            .map(|value| value.as_bool().ok_or_else(|| wrong_type(name, "a boolean")))
            .transpose()
    }
}

/// Why a field cannot be read: its value is not of the `expected` type.
fn wrong_type(field: &'static str, expected: &'static str) -> BadValue {
    BadValue::WrongType { field, expected }
}

/// Parses one process's log; `None` when it has no Chitty-Chat events.
///
/// The process is the server if it logged a broadcast, else a client named by its
/// Join request (or, failing that, by the file's name).
pub fn parse_process(path: &Path, text: &str) -> Result<Option<Process>, ParseError> {
    let mut events = Vec::new();
    let mut name = None;
    let mut server = false;
    // A cluster's node names itself when it joins the cluster; its broadcast lines
    // for events other nodes stamped are receives.
    let node = cluster_node(text);
    for (number, raw) in text.lines().enumerate() {
        let line = number + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let parsed = Line(serde_json::from_str(raw).map_err(|err| ParseError::Json {
            path: path.to_owned(),
            line,
            reason: err.to_string(),
        })?);
        // Only the lines of events are read field by field: another line may use a
        // field name of its own with another type.
        let message = match parsed.get(field::MESSAGE).and_then(Value::as_str) {
            Some(
                message @ (message::BROADCAST | message::SENT | message::REPLY | message::RECEIVED),
            ) => message,
            _ => continue,
        };
        let missing = |field: &'static str| ParseError::MissingField {
            path: path.to_owned(),
            line,
            message: message.to_owned(),
            field,
        };
        let bad_field = |problem: BadValue| ParseError::BadField {
            path: path.to_owned(),
            line,
            problem,
        };
        let text = |name| parsed.text(name).map_err(bad_field);
        let number = |name| parsed.number(name).map_err(bad_field);
        let kind = || -> Result<EventKind, ParseError> {
            let kind = text(field::KIND)?.ok_or_else(|| missing(field::KIND))?;
            kind.parse()
                .map_err(|err: UnknownKind| bad_field(err.into()))
        };
        let stamped_by = text(field::NODE)?;
        let action = match message {
            message::BROADCAST if stamped_by.is_some() && node.is_some() && stamped_by != node => {
                server = true;
                Action::Applied {
                    kind: kind()?,
                    participant: text(field::PARTICIPANT)?
                        .ok_or_else(|| missing(field::PARTICIPANT))?,
                    text: text(field::TEXT)?.unwrap_or_default(),
                    seq: number(field::SEQ)?.ok_or_else(|| missing(field::SEQ))?,
                    stamp: number(field::LAMPORT)?.ok_or_else(|| missing(field::LAMPORT))?,
                    stamped_by: stamped_by.unwrap_or_default(),
                }
            }
            message::BROADCAST => {
                server = true;
                let cause = text(field::CAUSE)?.ok_or_else(|| missing(field::CAUSE))?;
                Action::Broadcast {
                    cause: cause
                        .parse()
                        .map_err(|err: UnknownCause| bad_field(err.into()))?,
                    kind: kind()?,
                    participant: text(field::PARTICIPANT)?
                        .ok_or_else(|| missing(field::PARTICIPANT))?,
                    text: text(field::TEXT)?.unwrap_or_default(),
                    seq: number(field::SEQ)?.ok_or_else(|| missing(field::SEQ))?,
                    client_lamport: number(field::CLIENT_LAMPORT)?,
                    resumed_after: number(field::RESUMED_AFTER)?,
                }
            }
            message::SENT => {
                let call = text(field::RPC)?.ok_or_else(|| missing(field::RPC))?;
                if call == rpc::JOIN && name.is_none() {
                    name = text(field::NAME)?;
                }
                Action::Sent {
                    rpc: call,
                    text: text(field::TEXT)?,
                }
            }
            message::REPLY => Action::Reply {
                rpc: text(field::RPC)?.ok_or_else(|| missing(field::RPC))?,
                seq: number(field::SEQ)?.ok_or_else(|| missing(field::SEQ))?,
                server_lamport: number(field::SERVER_LAMPORT)?
                    .ok_or_else(|| missing(field::SERVER_LAMPORT))?,
            },
            _ => Action::Received {
                kind: kind()?,
                participant: text(field::PARTICIPANT)?
                    .ok_or_else(|| missing(field::PARTICIPANT))?,
                text: text(field::TEXT)?.unwrap_or_default(),
                seq: number(field::SEQ)?.ok_or_else(|| missing(field::SEQ))?,
                server_lamport: number(field::SERVER_LAMPORT)?
                    .ok_or_else(|| missing(field::SERVER_LAMPORT))?,
                history: parsed
                    .flag(field::HISTORY)
                    .map_err(bad_field)?
                    .unwrap_or(false),
            },
        };
        // An applied event happens at the node's time of merging it.
        let lamport = match action {
            Action::Applied { .. } => {
                number(field::NODE_LAMPORT)?.ok_or_else(|| missing(field::NODE_LAMPORT))?
            }
            _ => number(field::LAMPORT)?.ok_or_else(|| missing(field::LAMPORT))?,
        };
        events.push(Event {
            line,
            lamport,
            action,
        });
    }
    if events.is_empty() {
        return Ok(None);
    }
    let (role, name) = if server {
        (Role::Server, node.unwrap_or_else(|| "server".to_owned()))
    } else {
        let stem = path
            .file_stem()
            .map_or_else(|| "client".to_owned(), |s| s.to_string_lossy().into_owned());
        (Role::Client, name.unwrap_or(stem))
    };
    Ok(Some(Process {
        label: name.clone(),
        name,
        role,
        file: path.to_owned(),
        events,
    }))
}

/// The name of the cluster node whose log `text` is: the `node` of its "joined the
/// cluster" line; `None` for a server alone, or a client.
fn cluster_node(text: &str) -> Option<String> {
    text.lines()
        .filter(|line| line.contains(message::JOINED_CLUSTER))
        .find_map(|line| {
            let line: serde_json::Map<String, Value> = serde_json::from_str(line).ok()?;
            if line.get(field::MESSAGE)?.as_str()? != message::JOINED_CLUSTER {
                return None;
            }
            Some(line.get(field::NODE)?.as_str()?.to_owned())
        })
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Server => "server",
            Role::Client => "client",
        })
    }
}

/// `text` cut to at most `max` characters, with an ellipsis when cut.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_named_by_its_join() {
        let log = r#"{"message":"sent","rpc":"Join","name":"alice","lamport":1}
{"message":"received","kind":"joined","participant":"alice","text":"Participant alice joined Chitty-Chat at Lamport time 2","seq":1,"server_lamport":2,"lamport":3}
{"message":"something else"}
"#;
        let process = parse_process(Path::new("x/whatever.log"), log)
            .unwrap()
            .unwrap();
        assert_eq!(process.name, "alice");
        assert_eq!(process.role, Role::Client);
        assert_eq!(process.events.len(), 2);
        assert_eq!(process.events[1].line, 2);
        assert_eq!(process.events[1].lamport, 3);
    }

    #[test]
    fn broken_lines_are_reported_with_their_place() {
        let err = parse_process(Path::new("s.log"), "{\"message\":\"broadcast\"}\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "s.log:1: a \"broadcast\" line without the field \"cause\""
        );
        let err = parse_process(Path::new("s.log"), "\nnot json\n").unwrap_err();
        assert!(
            err.to_string().starts_with("s.log:2: not a JSON log line")
                && err.to_string().contains("run them with it"),
            "{err}"
        );
    }

    #[test]
    fn a_field_of_the_wrong_type_or_an_unknown_cause_is_named() {
        let line = r#"{"message":"broadcast","cause":"Join","kind":"joined","participant":"a","seq":"one","lamport":2}"#;
        let err = parse_process(Path::new("s.log"), line).unwrap_err();
        assert_eq!(
            err.to_string(),
            "s.log:1: the field \"seq\" is not an unsigned integer"
        );
        let line = r#"{"message":"broadcast","cause":"magic","kind":"left","participant":"a","seq":1,"lamport":2}"#;
        let err = parse_process(Path::new("s.log"), line).unwrap_err();
        assert_eq!(err.to_string(), "s.log:1: unknown cause \"magic\"");
    }

    #[test]
    fn shorten_counts_characters() {
        assert_eq!(shorten("héllo", 5), "héllo");
        assert_eq!(shorten("héllo world", 6), "héllo…");
    }
}
