//! The in-memory store (`--ephemeral`): the log lives and dies with the process.

use super::{Entry, Epoch, LogError, Recovered, Retention, Store, now_ms};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Keeps the events in memory, up to the retention limit, under a new random epoch.
#[derive(Debug)]
pub struct MemoryStore {
    epoch: Epoch,
    events: Mutex<VecDeque<Arc<Entry>>>,
}

impl MemoryStore {
    /// An empty store with a new epoch.
    pub fn new() -> Self {
        Self::with_epoch(Epoch::random())
    }

    /// An empty store for a log whose epoch is already decided (a cluster node's
    /// copy of the cluster's log).
    pub fn with_epoch(epoch: Epoch) -> Self {
        Self {
            epoch,
            events: Mutex::new(VecDeque::new()),
        }
    }

    fn trim_locked(events: &mut VecDeque<Arc<Entry>>, retention: &Retention) -> u64 {
        let max = usize::try_from(retention.max_events).unwrap_or(usize::MAX);
        while events.len() > max {
            events.pop_front();
        }
        if let Some(max_age) = retention.max_age {
            let oldest_kept =
                now_ms().saturating_sub(u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX));
            while events
                .front()
                .is_some_and(|entry| entry.appended_ms() < oldest_kept)
            {
                events.pop_front();
            }
        }
        events.front().map_or(0, |entry| entry.seq)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Store for MemoryStore {
    fn recover(&self) -> Result<Recovered, LogError> {
        Ok(Recovered {
            epoch: self.epoch,
            head: 0,
            first_held: 1,
            last_lamport: 0,
            present: Vec::new(),
            publish_ids: Vec::new(),
            recent: Vec::new(),
        })
    }

    fn append(&self, entries: &[Arc<Entry>], retention: &Retention) -> Result<u64, LogError> {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.extend(entries.iter().cloned());
        let first = Self::trim_locked(&mut events, retention);
        // Everything was trimmed by age: the next event will be the first held.
        Ok(if events.is_empty() {
            entries.last().map_or(first, |entry| entry.seq + 1)
        } else {
            first
        })
    }

    fn trim(&self, retention: &Retention) -> Result<u64, LogError> {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let head = events.back().map(|entry| entry.seq);
        let first = Self::trim_locked(&mut events, retention);
        Ok(match (events.is_empty(), head) {
            (true, Some(head)) => head + 1,
            _ => first,
        })
    }

    fn read(&self, from: u64, max: usize) -> Result<Vec<Arc<Entry>>, LogError> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let Some(first) = events.front().map(|entry| entry.seq) else {
            return Ok(Vec::new());
        };
        if from < first {
            return Ok(Vec::new());
        }
        let start = usize::try_from(from - first).unwrap_or(usize::MAX);
        Ok(events
            .range(start.min(events.len())..)
            .take(max)
            .cloned()
            .collect())
    }
}
