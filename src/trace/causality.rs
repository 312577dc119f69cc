//! The messages of a run, found by pairing each receive with its send, and what they
//! imply: each process's order of events, the run's vector clocks, and which events
//! are concurrent.
//!
//! The pairs: a client's request "sent" at Lamport time `t` is received by the
//! server's "broadcast" line with the same cause, participant and `client_lamport =
//! t`; a broadcast with sequence number `s` is received by each client's "received"
//! line with `seq = s`, and answered by the sender's "reply" line with `seq = s`.
//! In a cluster each node's log holds the broadcasts of the events it stamped, and
//! applies the others' (an "applied" receive, paired by `seq` like a receipt).

use super::parse::{Action, EventId, Role, Run};
use crate::log_schema::rpc;
use std::collections::HashMap;

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A client's request (Join, Publish, Leave) to the server.
    Request,
    /// A broadcast event on a client's feed.
    Broadcast,
    /// The server's reply to Publish or Leave.
    Reply,
}

/// One message: a send event and its receive event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    /// What it is.
    pub kind: MessageKind,
    /// The send event.
    pub from: EventId,
    /// The receive event.
    pub to: EventId,
}

/// Lookups from the fields that pair receives with sends.
#[derive(Debug)]
pub struct Index {
    /// The server's broadcasts by sequence number.
    pub broadcasts: HashMap<u64, EventId>,
    /// The clients' requests by (participant, rpc, Lamport time); more than one
    /// when a name left and joined again as a new process.
    pub requests: HashMap<(String, String, u64), Vec<EventId>>,
    /// The client processes by name.
    pub clients: HashMap<String, usize>,
}

impl Index {
    /// Indexes `run`. When two lines claim the same key the first one wins; the
    /// checker reports such duplicates.
    pub fn new(run: &Run) -> Index {
        let mut index = Index {
            broadcasts: HashMap::new(),
            requests: HashMap::new(),
            clients: HashMap::new(),
        };
        for (p, process) in run.processes.iter().enumerate() {
            if process.role == Role::Client {
                index.clients.entry(process.name.clone()).or_insert(p);
            }
        }
        for id in run.event_ids() {
            let process = &run.processes[id.process];
            let event = run.event(id);
            match &event.action {
                Action::Broadcast { seq, .. } => {
                    index.broadcasts.entry(*seq).or_insert(id);
                }
                Action::Sent { rpc, .. } => {
                    index
                        .requests
                        .entry((process.name.clone(), rpc.clone(), event.lamport))
                        .or_default()
                        .push(id);
                }
                _ => {}
            }
        }
        index
    }

    /// The send event that the receive event `id` pairs with, if any.
    pub fn send_of(&self, run: &Run, id: EventId) -> Option<(MessageKind, EventId)> {
        match &run.event(id).action {
            Action::Broadcast {
                cause,
                participant,
                client_lamport: Some(t),
                seq,
                ..
            } => {
                let candidates =
                    self.requests
                        .get(&(participant.clone(), cause.as_str().to_owned(), *t))?;
                // Two processes of one name (a rejoin) may have sent the same
                // request at the same time: the sender is the one that got this
                // broadcast back, on its feed or as its reply.
                let from = candidates
                    .iter()
                    .copied()
                    .find(|c| {
                        run.processes[c.process].events.iter().any(|e| {
                            matches!(&e.action,
                                Action::Received { seq: s, .. } | Action::Reply { seq: s, .. } if s == seq)
                        })
                    })
                    .or_else(|| candidates.first().copied())?;
                Some((MessageKind::Request, from))
            }
            // A cluster's node applying another's event receives it as a client
            // receives a broadcast: from the node that stamped it.
            Action::Received { seq, .. } | Action::Applied { seq, .. } => self
                .broadcasts
                .get(seq)
                .map(|&from| (MessageKind::Broadcast, from)),
            Action::Reply { seq, .. } => self
                .broadcasts
                .get(seq)
                .map(|&from| (MessageKind::Reply, from)),
            _ => None,
        }
    }
}

/// Every message whose send and receive are both in the logs, in the order the
/// server handled them.
pub fn messages(run: &Run) -> Vec<Message> {
    let index = Index::new(run);
    let mut messages: Vec<Message> = run
        .event_ids()
        .filter_map(|to| {
            index
                .send_of(run, to)
                .map(|(kind, from)| Message { kind, from, to })
        })
        .collect();
    // In the order the server saw them: a request at its receipt, a broadcast or
    // reply at its send; then requests before the broadcast they caused, and
    // broadcasts before replies.
    messages.sort_by_key(|m| {
        let (server_side, rank) = match m.kind {
            MessageKind::Request => (m.to, 0),
            MessageKind::Broadcast => (m.from, 1),
            MessageKind::Reply => (m.from, 2),
        };
        (
            run.event(server_side).lamport,
            rank,
            run.event(m.to).lamport,
            m.to.process,
        )
    });
    messages
}

/// A process's events in the order they happened: by Lamport time.
///
/// A client stamps and logs from two tasks (its feed, and the caller of Publish and
/// Leave), so its log lines can land out of order by a hair; its clock never gives
/// two events the same time, so the times give the order.
pub fn process_order(run: &Run, process: usize) -> Vec<EventId> {
    let mut ids: Vec<EventId> = (0..run.processes[process].events.len())
        .map(|index| EventId { process, index })
        .collect();
    ids.sort_by_key(|&id| (run.event(id).lamport, id.index));
    ids
}

/// All events in (Lamport time, process) order: a total order that extends the
/// happened-before relation whenever the clock condition holds.
pub fn linear_order(run: &Run) -> Vec<EventId> {
    let mut ids: Vec<EventId> = run.event_ids().collect();
    ids.sort_by_key(|&id| (run.event(id).lamport, id.process, id.index));
    ids
}

/// A vector clock: one entry per process of the run, in [`Run::processes`] order.
pub type VectorClock = Vec<u64>;

/// The vector clock of every event, computed from the messages: each event ticks
/// its own entry by one, and a receive first takes the entry-wise maximum with its
/// send's clock.
pub fn vector_clocks(run: &Run, messages: &[Message]) -> HashMap<EventId, VectorClock> {
    let width = run.processes.len();
    let incoming: HashMap<EventId, EventId> = messages.iter().map(|m| (m.to, m.from)).collect();
    let mut clocks: HashMap<EventId, VectorClock> = HashMap::new();
    let mut current: Vec<VectorClock> = vec![vec![0; width]; width];
    // Lamport order visits every send before its receive when the clock condition
    // holds; a send not yet visited (a broken log) contributes nothing.
    for id in linear_order(run) {
        let mut clock = current[id.process].clone();
        if let Some(send) = incoming.get(&id).and_then(|from| clocks.get(from)) {
            for (mine, theirs) in clock.iter_mut().zip(send) {
                *mine = (*mine).max(*theirs);
            }
        }
        clock[id.process] += 1;
        current[id.process] = clock.clone();
        clocks.insert(id, clock);
    }
    clocks
}

/// Whether `a` happened before `b`, by their vector clocks.
pub fn happened_before(a: &VectorClock, b: &VectorClock) -> bool {
    a != b && a.iter().zip(b).all(|(x, y)| x <= y)
}

/// Pairs of concurrent client requests, `(earlier, later)` by Lamport time: events
/// that Lamport times put in an order, though neither could have influenced the
/// other. Two Publish requests come first, closest in time first; then other
/// requests, such as a late Join whose small Lamport time belies how late it was.
pub fn concurrent_requests(
    run: &Run,
    clocks: &HashMap<EventId, VectorClock>,
) -> Vec<(EventId, EventId)> {
    let requests: Vec<EventId> = linear_order(run)
        .into_iter()
        .filter(|&id| matches!(&run.event(id).action, Action::Sent { .. }))
        .collect();
    let is_publish = |id: EventId| match &run.event(id).action {
        Action::Sent { rpc: call, .. } => call == rpc::PUBLISH,
        _ => false,
    };
    let mut pairs = Vec::new();
    for (i, &a) in requests.iter().enumerate() {
        for &b in &requests[i + 1..] {
            if a.process == b.process {
                continue;
            }
            let (ca, cb) = (&clocks[&a], &clocks[&b]);
            if !happened_before(ca, cb) && !happened_before(cb, ca) {
                pairs.push((a, b));
            }
        }
    }
    pairs.sort_by_key(|&(a, b)| {
        let (ta, tb) = (run.event(a).lamport, run.event(b).lamport);
        (
            !(is_publish(a) && is_publish(b)),
            // Different times show best that Lamport order is not causality.
            ta == tb,
            tb - ta,
            ta,
        )
    });
    pairs
}

/// `{server: 3, alice: 2}`-style text of a clock, naming only non-zero entries.
pub fn format_clock(run: &Run, clock: &VectorClock) -> String {
    let parts: Vec<String> = clock
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(p, n)| format!("{}: {n}", run.processes[p].label))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// The part of `run` that involves the processes labelled `labels`: the server,
/// those processes, and only the server's events that exchange a message with
/// them. For drawing one participant's story; a checker would find the rest
/// missing.
pub fn focus(run: &Run, labels: &[String]) -> Run {
    let keep: Vec<usize> = run
        .processes
        .iter()
        .enumerate()
        .filter(|(_, p)| p.role == Role::Server || labels.contains(&p.label))
        .map(|(i, _)| i)
        .collect();
    let mut server_events = std::collections::HashSet::new();
    for m in messages(run) {
        let (from, to) = (m.from.process, m.to.process);
        if run.processes[from].role == Role::Server && keep.contains(&to) {
            server_events.insert(m.from);
        }
        if run.processes[to].role == Role::Server && keep.contains(&from) {
            server_events.insert(m.to);
        }
    }
    let processes = keep
        .into_iter()
        .map(|p| {
            let mut process = run.processes[p].clone();
            if process.role == Role::Server {
                process.events = (0..process.events.len())
                    .filter(|&index| server_events.contains(&EventId { process: p, index }))
                    .map(|index| process.events[index].clone())
                    .collect();
            }
            process
        })
        .collect();
    Run { processes }
}
