//! The server-wide pace of joins: at most `--join-rate` a second, in bursts of up to
//! `--join-burst`; a Join beyond that waits its turn, in the order it came.
//!
//! Everyone present hears every join (R6), so a join costs the server one delivery
//! per participant present: a thousand joins at once, at a thousand present, are a
//! million deliveries that every other participant's messages would wait behind.
//! Paced, the same joins are spread over a few seconds and the conversation goes on
//! meanwhile; a crowd coming back after a restart waits a few seconds more, nothing
//! else. A Join that would wait longer than [`MAX_JOIN_WAIT`] is refused at once
//! with the time to retry, so a waiting join never outlives its connection's
//! `--join-timeout` at the defaults.

use crate::error::ChatError;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many joins a second the server admits, sustained.
///
/// At the default `--max-participants` (1000) every join is a thousand deliveries,
/// so this keeps join notices to a fraction of what the server delivers at its
/// fastest, while a full room that comes back at once is in within five seconds.
pub const DEFAULT_JOIN_RATE: u32 = 200;

/// How many joins the server admits at once after a quiet spell.
pub const DEFAULT_JOIN_BURST: u32 = 100;

/// The longest a Join waits for its turn before it is refused; half the default
/// `--join-timeout`, so the connection is still there when the turn comes.
pub const MAX_JOIN_WAIT: Duration = Duration::from_secs(5);

/// The pace of joins: a token bucket of `burst` joins refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinRate {
    /// The sustained rate, in joins a second.
    pub per_second: NonZeroU32,
    /// How many joins may come at once after a quiet spell.
    pub burst: NonZeroU32,
}

impl Default for JoinRate {
    fn default() -> Self {
        Self {
            per_second: NonZeroU32::new(DEFAULT_JOIN_RATE).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(DEFAULT_JOIN_BURST).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// Hands out turns to join at a [`JoinRate`].
///
/// A generic cell rate algorithm that reserves: each Join takes the next free turn
/// and learns how long to wait for it, so a thousand waiting joins are a thousand
/// timers, not a thousand tasks retrying.
#[derive(Debug)]
pub struct JoinPace {
    rate: JoinRate,
    /// The turn after the last one handed out (the "theoretical arrival time").
    next: Mutex<Option<Instant>>,
}

impl JoinPace {
    /// A pace at `rate`, with a full bucket.
    pub fn new(rate: JoinRate) -> Self {
        Self {
            rate,
            next: Mutex::new(None),
        }
    }

    /// Takes the next turn at `now`: how long to wait for it, or a refusal when the
    /// wait would exceed [`MAX_JOIN_WAIT`] (then no turn is taken).
    pub fn reserve(&self, now: Instant) -> Result<Duration, ChatError> {
        let interval = Duration::from_secs(1) / self.rate.per_second.get();
        // How far ahead of `now` turns may be handed out without waiting.
        let tolerance = interval * (self.rate.burst.get() - 1);
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let turn = next.map_or(now, |next| next.max(now));
        let wait = turn.saturating_duration_since(now + tolerance);
        if wait > MAX_JOIN_WAIT {
            return Err(ChatError::JoinsBusy {
                per_second: self.rate.per_second.get(),
                retry_after_ms: u64::try_from((wait - MAX_JOIN_WAIT).as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            });
        }
        *next = Some(turn + interval);
        Ok(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(per_second: u32, burst: u32) -> JoinPace {
        JoinPace::new(JoinRate {
            per_second: NonZeroU32::new(per_second).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        })
    }

    #[test]
    fn a_burst_goes_at_once_and_the_rest_waits_its_turn_in_order() {
        let pace = pace(10, 3);
        let now = Instant::now();
        let waits: Vec<Duration> = (0..6).map(|_| pace.reserve(now).unwrap()).collect();
        let ms = |ms| Duration::from_millis(ms);
        assert_eq!(waits, [ms(0), ms(0), ms(0), ms(100), ms(200), ms(300)]);
    }

    #[test]
    fn the_bucket_refills_at_the_rate() {
        let pace = pace(10, 2);
        let start = Instant::now();
        for _ in 0..4 {
            pace.reserve(start).unwrap();
        }
        // Turns were handed out up to 400 ms ahead; a second later the bucket is
        // full again.
        let later = start + Duration::from_millis(1400);
        assert_eq!(pace.reserve(later).unwrap(), Duration::ZERO);
        assert_eq!(pace.reserve(later).unwrap(), Duration::ZERO);
        assert_eq!(pace.reserve(later).unwrap(), Duration::from_millis(100));
    }

    #[test]
    fn a_join_that_would_wait_too_long_is_refused_without_taking_a_turn() {
        let pace = pace(1, 1);
        let now = Instant::now();
        let waited: Vec<u64> = (0..=MAX_JOIN_WAIT.as_secs())
            .map(|_| pace.reserve(now).unwrap().as_secs())
            .collect();
        assert_eq!(waited, [0, 1, 2, 3, 4, 5]);
        match pace.reserve(now) {
            Err(ChatError::JoinsBusy {
                per_second: 1,
                retry_after_ms: 1000,
            }) => {}
            other => panic!("expected JoinsBusy, got {other:?}"),
        }
        // Refusing took no turn: a second later the next turn is the same one.
        let later = now + Duration::from_secs(1);
        assert_eq!(pace.reserve(later).unwrap(), MAX_JOIN_WAIT);
    }
}
