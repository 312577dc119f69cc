//! The Lamport clock every Chitty-Chat process keeps: the server and each client.
//!
//! Lamport's rules (Lamport, "Time, Clocks, and the Ordering of Events in a
//! Distributed System", 1978), as this project applies them:
//!
//! 1. Before a local event or a send, a process ticks its clock: `L = L + 1`
//!    ([`LamportClock::tick`]). A send carries the new `L`.
//! 2. On receiving a message stamped `t`, a process merges: `L = max(L, t) + 1`
//!    ([`LamportClock::observe`]). The receive event has the new `L`.
//!
//! Together these give the clock condition: if event `a` happened before event `b`,
//! then `L(a) < L(b)`. The converse does not hold: `L(a) < L(b)` does not mean `a`
//! happened before `b` (the two may be concurrent).
//!
//! The clock is one atomic integer, so tasks on different threads may share it
//! through an `Arc` without a lock; every call returns the time of the event it
//! made, and no two calls return the same time.

use std::sync::atomic::{AtomicU64, Ordering};

/// A Lamport time: the logical time of one event in one process.
pub type LamportTime = u64;

/// A Lamport clock, safe to share between tasks and threads.
#[derive(Debug, Default)]
pub struct LamportClock {
    time: AtomicU64,
}

impl LamportClock {
    /// A clock at time 0; the first event is at time 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock whose last event was at `time`: a process that continues from a
    /// record (the server restarting on its log) stamps every new event later.
    pub fn starting_at(time: LamportTime) -> Self {
        Self {
            time: AtomicU64::new(time),
        }
    }

    /// The time of the last event, without making an event.
    pub fn now(&self) -> LamportTime {
        self.time.load(Ordering::Acquire)
    }

    /// A local or send event: advance the clock by one and return the event's time.
    pub fn tick(&self) -> LamportTime {
        // Saturating: a clock at u64::MAX stays there rather than wrapping to 0 and
        // breaking the clock condition. No honest run gets near it.
        self.advance(|local| local.saturating_add(1))
    }

    /// A receive event for a message stamped `received`: set the clock to
    /// `max(local, received) + 1` and return the event's time.
    pub fn observe(&self, received: LamportTime) -> LamportTime {
        self.advance(|local| local.max(received).saturating_add(1))
    }

    /// Applies `step` atomically and returns the new time.
    fn advance(&self, step: impl Fn(LamportTime) -> LamportTime) -> LamportTime {
        let previous = self
            .time
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |local| {
                Some(step(local))
            })
            .unwrap_or_else(|unchanged| unchanged);
        step(previous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    #[test]
    fn starts_at_zero_and_ticks_by_one() {
        let clock = LamportClock::new();
        assert_eq!(clock.now(), 0);
        assert_eq!(clock.tick(), 1);
        assert_eq!(clock.tick(), 2);
        assert_eq!(clock.now(), 2);
    }

    #[test]
    fn observe_takes_the_maximum_plus_one() {
        let cases = [
            // (local before, received, expected after)
            (0, 0, 1),
            (0, 5, 6),
            (5, 0, 6),
            (5, 5, 6),
            (7, 3, 8),
            (3, 7, 8),
        ];
        for (local, received, expected) in cases {
            let clock = LamportClock::new();
            for _ in 0..local {
                clock.tick();
            }
            assert_eq!(
                clock.observe(received),
                expected,
                "local {local}, received {received}"
            );
            assert_eq!(clock.now(), expected);
        }
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        let clock = LamportClock::new();
        clock.observe(u64::MAX - 1);
        assert_eq!(clock.tick(), u64::MAX);
        assert_eq!(clock.tick(), u64::MAX);
        assert_eq!(clock.observe(u64::MAX), u64::MAX);
    }

    #[test]
    fn send_is_before_receive_across_two_clocks() {
        let a = LamportClock::new();
        let b = LamportClock::new();
        b.tick();
        b.tick();
        b.tick();
        let sent = a.tick();
        let received = b.observe(sent);
        assert!(sent < received);
        let reply = b.tick();
        let got_reply = a.observe(reply);
        assert!(reply < got_reply);
        assert!(received < reply);
    }

    #[test]
    fn concurrent_ticks_and_observes_never_repeat_a_time() {
        const THREADS: u64 = 8;
        const CALLS: u64 = 10_000;
        let clock = Arc::new(LamportClock::new());
        let handles: Vec<_> = (0..THREADS)
            .map(|thread| {
                let clock = Arc::clone(&clock);
                std::thread::spawn(move || {
                    let mut seen = Vec::with_capacity(CALLS as usize);
                    let mut last = 0;
                    for call in 0..CALLS {
                        let t = if (thread + call) % 3 == 0 {
                            // A receive of a timestamp at or behind the clock.
                            clock.observe(call)
                        } else {
                            clock.tick()
                        };
                        assert!(t > last, "time went backwards within a thread");
                        last = t;
                        seen.push(t);
                    }
                    seen
                })
            })
            .collect();
        let mut all = HashSet::new();
        for handle in handles {
            for t in handle.join().expect("clock thread panicked") {
                assert!(all.insert(t), "time {t} was handed out twice");
            }
        }
        // The observed timestamps never exceeded the clock, so every call advanced
        // it by exactly one: the clock counts the events.
        assert_eq!(clock.now(), THREADS * CALLS);
        assert_eq!(all.len() as u64, THREADS * CALLS);
    }

    #[test]
    fn concurrent_observe_of_a_large_time_jumps_past_it() {
        let clock = Arc::new(LamportClock::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let clock = Arc::clone(&clock);
                std::thread::spawn(move || (0..1000).map(|_| clock.observe(1_000_000)).max())
            })
            .collect();
        for handle in handles {
            let max = handle.join().expect("clock thread panicked").unwrap_or(0);
            assert!(max > 1_000_000);
        }
        assert_eq!(clock.now(), 1_000_000 + 4000);
    }
}
