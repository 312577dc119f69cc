//! The checker: does a run's logs show Lamport clocks and broadcasts working?
//!
//! It verifies four rules and explains every violation with the events, processes,
//! log lines and timestamps involved:
//! 1. **Process order**: a process never gives two events the same Lamport time,
//!    and its times rise along each of its tasks (the server's broadcasts in
//!    sequence order; a client's feed; a client's requests and replies).
//! 2. **Matched receives and the clock condition**: every receive has its send in
//!    the logs (a request and the server's broadcast of it; a broadcast and each
//!    client's receipt and reply), and the receive's time is greater than the send's.
//! 3. **Delivery**: every participant received each broadcast made while it was
//!    present exactly once, in sequence order, which is the same order for everyone.
//!    A participant that vanished (killed, or too slow) may miss the tail that was
//!    in flight when it went, never one in the middle. A session that resumed a feed
//!    must deliver every broadcast after the resume point, those made while the
//!    participant was away included: a resume has no gap. A past event replayed as
//!    history is a receive like any other, and may come from before the session.
//! 4. **Join and leave**: each join is matched by at most one leave.

use super::causality::Index;
use super::parse::{Action, EventId, Role, Run};
use crate::event::EventKind;
use crate::log_schema::{BroadcastCause, LeaveCause};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Which rule a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Rule 1.
    ProcessOrder,
    /// Rule 2, a receive without its send.
    UnmatchedReceive,
    /// Rule 2, a receive not later than its send.
    ClockCondition,
    /// Rule 3.
    Delivery,
    /// Rule 4.
    JoinLeave,
}

impl Rule {
    /// The rule's name, as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::ProcessOrder => "process order",
            Rule::UnmatchedReceive => "unmatched receive",
            Rule::ClockCondition => "clock condition",
            Rule::Delivery => "delivery",
            Rule::JoinLeave => "join and leave",
        }
    }
}

/// One broken rule, explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The rule.
    pub rule: Rule,
    /// What is wrong, naming events by log line and Lamport time.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule.as_str(), self.message)
    }
}

/// What a check found.
#[derive(Debug, Clone)]
pub struct Report {
    /// How many processes the run has.
    pub processes: usize,
    /// How many events.
    pub events: usize,
    /// How many send-receive pairs were matched.
    pub messages: usize,
    /// Every violation; empty when all rules hold.
    pub violations: Vec<Violation>,
}

impl Report {
    /// Whether every rule holds.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for violation in &self.violations {
            writeln!(f, "{violation}")?;
        }
        let verdict = match self.violations.len() {
            0 => "all rules hold".to_owned(),
            1 => "1 violation".to_owned(),
            n => format!("{n} violations"),
        };
        write!(
            f,
            "checked {} processes, {} events, {} messages: {verdict}",
            self.processes, self.events, self.messages
        )
    }
}

/// Checks every rule on `run`.
pub fn check(run: &Run) -> Report {
    let mut checker = Checker {
        run,
        index: Index::new(run),
        violations: Vec::new(),
        messages: 0,
    };
    checker.process_order();
    checker.receives();
    checker.delivery();
    checker.join_leave();
    Report {
        processes: run.processes.len(),
        events: run.processes.iter().map(|p| p.events.len()).sum(),
        messages: checker.messages,
        violations: checker.violations,
    }
}

/// One stay of a participant: from its join's broadcast to its leave's.
struct Session {
    /// The first broadcast the session must deliver: its join notice, or the one
    /// after its resume point.
    from: u64,
    join: u64,
    leave: Option<u64>,
    /// It left without asking (killed, disconnected, too slow) or never left.
    vanished: bool,
}

impl Session {
    fn contains(&self, seq: u64) -> bool {
        seq >= self.from && self.leave.is_none_or(|leave| seq < leave)
    }

    fn describe(&self) -> String {
        let joined = if self.from < self.join {
            format!("joined at #{} resuming after #{}", self.join, self.from - 1)
        } else {
            format!("joined at #{}", self.join)
        };
        match self.leave {
            Some(leave) => format!("{joined}, left at #{leave}"),
            None => format!("{joined}, never left"),
        }
    }
}

struct Checker<'a> {
    run: &'a Run,
    index: Index,
    violations: Vec<Violation>,
    messages: usize,
}

impl Checker<'_> {
    fn violation(&mut self, rule: Rule, message: String) {
        self.violations.push(Violation { rule, message });
    }

    /// `alice.log:7 (sent Publish "hi", Lamport 4)`.
    fn at(&self, id: EventId) -> String {
        let event = self.run.event(id);
        format!(
            "{} ({}, Lamport {})",
            self.run.location(id),
            event.describe(),
            event.lamport
        )
    }

    /// The participant's name of the process of `id`, for matching.
    fn name(&self, id: EventId) -> &str {
        &self.run.processes[id.process].name
    }

    /// The process of `id` as shown to people.
    fn label(&self, id: EventId) -> &str {
        &self.run.processes[id.process].label
    }

    /// The server's broadcasts in sequence order.
    fn broadcasts(&self) -> Vec<(u64, EventId)> {
        let mut all: Vec<(u64, EventId)> = self
            .run
            .event_ids()
            .filter_map(|id| match &self.run.event(id).action {
                Action::Broadcast { seq, .. } => Some((*seq, id)),
                _ => None,
            })
            .collect();
        all.sort();
        all
    }

    fn process_order(&mut self) {
        for (p, process) in self.run.processes.iter().enumerate() {
            let ids: Vec<EventId> = (0..process.events.len())
                .map(|index| EventId { process: p, index })
                .collect();
            // No two events at the same time.
            let mut by_time: BTreeMap<u64, EventId> = BTreeMap::new();
            for &id in &ids {
                let lamport = self.run.event(id).lamport;
                if let Some(&first) = by_time.get(&lamport) {
                    let message = format!(
                        "{} has two events at Lamport time {lamport}: {} and {}",
                        process.label,
                        self.at(first),
                        self.at(id)
                    );
                    self.violation(Rule::ProcessOrder, message);
                } else {
                    by_time.insert(lamport, id);
                }
            }
            // Times rise along each task.
            let tasks: Vec<(&str, Vec<EventId>)> = match process.role {
                Role::Server => {
                    // A cluster's node also applies the events other nodes stamped,
                    // in sequence order: a task of its own.
                    let (mut chain, mut applied): (Vec<EventId>, Vec<EventId>) =
                        ids.iter().partition(|&&id| {
                            matches!(self.run.event(id).action, Action::Broadcast { .. })
                        });
                    let seq_of = |id: &EventId| match &self.run.event(*id).action {
                        Action::Broadcast { seq, .. } | Action::Applied { seq, .. } => *seq,
                        _ => 0,
                    };
                    chain.sort_by_key(seq_of);
                    applied.sort_by_key(seq_of);
                    // Each sequence number names one broadcast.
                    for pair in chain.windows(2) {
                        let seq = |id: EventId| match &self.run.event(id).action {
                            Action::Broadcast { seq, .. } => Some(*seq),
                            _ => None,
                        };
                        if let (Some(a), Some(b)) = (seq(pair[0]), seq(pair[1]))
                            && a == b
                        {
                            let message = format!(
                                "the server numbered two broadcasts #{a}: {} and {}",
                                self.at(pair[0]),
                                self.at(pair[1])
                            );
                            self.violation(Rule::ProcessOrder, message);
                        }
                    }
                    vec![
                        ("in sequence order", chain),
                        ("applying other nodes' events", applied),
                    ]
                }
                Role::Client => {
                    let (feed, calls): (Vec<EventId>, Vec<EventId>) =
                        ids.iter().partition(|&&id| {
                            matches!(self.run.event(id).action, Action::Received { .. })
                        });
                    vec![("on its feed", feed), ("across its calls", calls)]
                }
            };
            for (task, chain) in tasks {
                for pair in chain.windows(2) {
                    let (a, b) = (pair[0], pair[1]);
                    if self.run.event(b).lamport <= self.run.event(a).lamport {
                        let message = format!(
                            "{}'s Lamport time does not rise {task}: {} is followed by {}",
                            process.label,
                            self.at(a),
                            self.at(b)
                        );
                        self.violation(Rule::ProcessOrder, message);
                    }
                }
            }
        }
    }

    fn receives(&mut self) {
        if self.run.server().is_none() {
            self.violation(
                Rule::UnmatchedReceive,
                "the run has no server log (no \"broadcast\" lines), so no receive can be matched"
                    .into(),
            );
            return;
        }
        let ids: Vec<EventId> = self.run.event_ids().collect();
        for to in ids {
            let event = self.run.event(to);
            let expected = match &event.action {
                Action::Broadcast {
                    cause,
                    participant,
                    client_lamport: Some(t),
                    ..
                } if cause.is_request() => Some(format!(
                    "a {cause} request from {participant} sent at Lamport time {t}, but {}",
                    if self.index.clients.contains_key(participant) {
                        format!("{participant}'s log has no such request")
                    } else {
                        format!("the run has no log of {participant}")
                    }
                )),
                Action::Received { seq, .. } => Some(format!(
                    "broadcast #{seq}, but the server's log has no broadcast #{seq}"
                )),
                Action::Applied {
                    seq, stamped_by, ..
                } => Some(format!(
                    "#{seq} as stamped by {stamped_by}, but no server log of the run has broadcast #{seq}"
                )),
                Action::Reply { seq, .. } => Some(format!(
                    "a reply naming broadcast #{seq}, but the server's log has no broadcast #{seq}"
                )),
                _ => None,
            };
            let Some(expected) = expected else { continue };
            let Some((_, from)) = self.index.send_of(self.run, to) else {
                let message = format!("{} received {expected}", self.at(to));
                self.violation(Rule::UnmatchedReceive, message);
                continue;
            };
            self.messages += 1;
            self.compare_copy(from, to);
            let (sent, received) = (self.run.event(from).lamport, self.run.event(to).lamport);
            if received <= sent {
                let message = format!(
                    "{} sent at Lamport time {sent}: {}; {} received it at {received}: {}; a receive must be later than its send",
                    self.label(from),
                    self.at(from),
                    self.label(to),
                    self.at(to)
                );
                self.violation(Rule::ClockCondition, message);
            }
        }
    }

    /// A receipt or reply must carry the broadcast's time, and a receipt its content.
    fn compare_copy(&mut self, from: EventId, to: EventId) {
        let Action::Broadcast {
            kind,
            participant,
            text,
            ..
        } = &self.run.event(from).action
        else {
            return;
        };
        let broadcast_at = self.run.event(from).lamport;
        let differs = match &self.run.event(to).action {
            Action::Received {
                kind: k,
                participant: p,
                text: t,
                server_lamport,
                ..
            } => {
                if *server_lamport != broadcast_at {
                    Some(format!("server time {server_lamport}, not {broadcast_at}"))
                } else if (k, p, t) != (kind, participant, text) {
                    Some(format!(
                        "{k} {p} \"{t}\", not {kind} {participant} \"{text}\""
                    ))
                } else {
                    None
                }
            }
            Action::Applied {
                kind: k,
                participant: p,
                text: t,
                stamp,
                stamped_by,
                ..
            } => {
                if *stamp != broadcast_at {
                    Some(format!("stamp {stamp}, not {broadcast_at}"))
                } else if (k, p, t) != (kind, participant, text) {
                    Some(format!(
                        "{k} {p} \"{t}\", not {kind} {participant} \"{text}\""
                    ))
                } else if stamped_by != self.name(from) {
                    Some(format!("stamped by {stamped_by}, not {}", self.name(from)))
                } else {
                    None
                }
            }
            Action::Reply { server_lamport, .. } => {
                if *server_lamport != broadcast_at {
                    Some(format!("server time {server_lamport}, not {broadcast_at}"))
                } else if participant != self.name(to) {
                    Some(format!(
                        "a broadcast about {participant}, not {}",
                        self.name(to)
                    ))
                } else {
                    None
                }
            }
            _ => None,
        };
        if let Some(differs) = differs {
            let message = format!(
                "{} does not match what the server sent, {}: it says {differs}",
                self.at(to),
                self.at(from)
            );
            self.violation(Rule::UnmatchedReceive, message);
        }
    }

    fn delivery(&mut self) {
        let broadcasts = self.broadcasts();
        for p in 0..self.run.processes.len() {
            if self.run.processes[p].role != Role::Client {
                continue;
            }
            let sessions = self.sessions_of(p, &broadcasts);
            if sessions.is_empty() {
                // Refused, or never reached the server: nothing to deliver.
                continue;
            }
            let received = self.received_by(p);
            let seen = self.check_receipts(p, &sessions, &received);
            self.check_missing(p, &sessions, &received, &seen, &broadcasts);
        }
    }

    /// The stays of client process `p`. Each Join the server accepted opens a
    /// session (a client that reconnects joins again, keeping its clock): the
    /// session lasts from the join's broadcast to the first leave of this name
    /// after it.
    fn sessions_of(&self, p: usize, broadcasts: &[(u64, EventId)]) -> Vec<Session> {
        let name = &self.run.processes[p].name;
        let mut sessions: Vec<Session> = Vec::new();
        for (join_seq, id) in broadcasts {
            let (is_join, resumed_after) = match &self.run.event(*id).action {
                Action::Broadcast {
                    cause,
                    resumed_after,
                    ..
                } => (*cause == BroadcastCause::Join, *resumed_after),
                _ => (false, None),
            };
            let from = resumed_after.map_or(*join_seq, |after| after + 1);
            let ours = self
                .index
                .send_of(self.run, *id)
                .is_some_and(|(_, from)| from.process == p);
            if !(is_join && ours) {
                continue;
            }
            let leave = broadcasts.iter().find(|(seq, id)| {
                *seq > *join_seq
                    && matches!(&self.run.event(*id).action,
                        Action::Broadcast { kind, participant, .. } if *kind == EventKind::Left && participant == name)
            });
            sessions.push(match leave {
                Some((seq, id)) => Session {
                    from,
                    join: *join_seq,
                    leave: Some(*seq),
                    vanished: !matches!(&self.run.event(*id).action,
                        Action::Broadcast { cause, .. } if *cause == BroadcastCause::Leave(LeaveCause::Requested)),
                },
                // Still present when the logs end: whatever was in flight may
                // be lost.
                None => Session {
                    from,
                    join: *join_seq,
                    leave: None,
                    vanished: true,
                },
            });
        }
        sessions
    }

    /// What client process `p` received, in its log's order: sequence number,
    /// event, and whether it was replayed as history.
    fn received_by(&self, p: usize) -> Vec<(u64, EventId, bool)> {
        (0..self.run.processes[p].events.len())
            .map(|index| EventId { process: p, index })
            .filter_map(|id| match &self.run.event(id).action {
                Action::Received { seq, history, .. } => Some((*seq, id, *history)),
                _ => None,
            })
            .collect()
    }

    /// Checks each receipt of client process `p`: once only, while present, in
    /// sequence order. Returns the first receipt of each sequence number.
    fn check_receipts(
        &mut self,
        p: usize,
        sessions: &[Session],
        received: &[(u64, EventId, bool)],
    ) -> HashMap<u64, EventId> {
        let who = self.run.processes[p].label.clone();
        let mut seen: HashMap<u64, EventId> = HashMap::new();
        let mut last: Option<(u64, EventId)> = None;
        for &(seq, id, history) in received {
            // History replays what was said before; seen once already is fine.
            if history {
                seen.entry(seq).or_insert(id);
                continue;
            }
            if let Some(&first) = seen.get(&seq) {
                let message = format!(
                    "{who} received #{seq} twice: {} and {}",
                    self.run.location(first),
                    self.run.location(id)
                );
                self.violation(Rule::Delivery, message);
                continue;
            }
            seen.insert(seq, id);
            // A broadcast the server never made is the unmatched-receive rule's.
            if self.index.broadcasts.contains_key(&seq) && !sessions.iter().any(|s| s.contains(seq))
            {
                let stays: Vec<String> = sessions.iter().map(Session::describe).collect();
                let message = format!(
                    "{who} received #{seq} ({}), but it was broadcast while {who} was not present ({})",
                    self.run.location(id),
                    stays.join("; ")
                );
                self.violation(Rule::Delivery, message);
            }
            if let Some((prev, prev_id)) = last
                && seq < prev
            {
                let message = format!(
                    "{who} received #{seq} ({}) after #{prev} ({}); broadcasts must arrive in sequence order, the same for everyone",
                    self.run.location(id),
                    self.run.location(prev_id)
                );
                self.violation(Rule::Delivery, message);
            }
            last = Some((seq, id));
        }
        seen
    }

    /// Checks that client process `p` received every broadcast made while it was
    /// present (`seen` holds what it received), but for the tail a vanished
    /// session may lose.
    fn check_missing(
        &mut self,
        p: usize,
        sessions: &[Session],
        received: &[(u64, EventId, bool)],
        seen: &HashMap<u64, EventId>,
        broadcasts: &[(u64, EventId)],
    ) {
        let who = self.run.processes[p].label.clone();
        for session in sessions {
            let last_received = received
                .iter()
                .map(|(s, _, _)| *s)
                .filter(|s| session.contains(*s))
                .max()
                .unwrap_or(0);
            for &(seq, from) in broadcasts {
                if !session.contains(seq) || seen.contains_key(&seq) {
                    continue;
                }
                // A vanished participant may lose the tail that was in flight.
                if session.vanished && seq > last_received {
                    continue;
                }
                let message = format!(
                    "{who} never received #{seq}, {}, though it was present ({})",
                    self.at(from),
                    session.describe()
                );
                self.violation(Rule::Delivery, message);
            }
        }
    }

    fn join_leave(&mut self) {
        let mut present: HashMap<String, (u64, EventId)> = HashMap::new();
        let mut left: HashMap<String, (u64, EventId)> = HashMap::new();
        for (seq, id) in self.broadcasts() {
            let Action::Broadcast {
                kind, participant, ..
            } = &self.run.event(id).action
            else {
                continue;
            };
            match kind {
                EventKind::Joined => {
                    if let Some(&(since, since_id)) = present.get(participant) {
                        let message = format!(
                            "{participant} joined again at #{seq}, {}, while present since #{since}, {}",
                            self.at(id),
                            self.at(since_id)
                        );
                        self.violation(Rule::JoinLeave, message);
                    }
                    present.insert(participant.clone(), (seq, id));
                    left.remove(participant);
                }
                EventKind::Left => {
                    if present.remove(participant).is_some() {
                        left.insert(participant.clone(), (seq, id));
                    } else {
                        let why = match left.get(participant) {
                            Some(&(before, before_id)) => {
                                format!("it had already left at #{before}, {}", self.at(before_id))
                            }
                            None => "it never joined".to_owned(),
                        };
                        let message =
                            format!("{participant} left at #{seq}, {}, but {why}", self.at(id));
                        self.violation(Rule::JoinLeave, message);
                    }
                }
                _ => {}
            }
        }
    }
}
