//! The gateway's one retry delay: exponential backoff with jitter, used by every stage that
//! waits before trying again (the uplink's batches, the MQTT broker connection, BLE scans and
//! device sessions, serial ports).
//!
//! Attempt `n` (from 0) has the ceiling `min(max, initial·2ⁿ)` and waits a random time in
//! `[ceiling/10, ceiling]`: "full jitter", so that many hubs that lost the same server or
//! broker at the same moment do not come back at the same moment, with a floor of a tenth so
//! that jitter never gives a zero wait. A server's `Retry-After` is a floor too, honoured even
//! above `max`. [`Backoff::reset`] starts again from `initial` after a success.
//!
//! A leaf: it imports nothing of the crate, so every stage may use it.

use std::time::Duration;

use rand::Rng;

/// Doublings after which the ceiling stops growing (`initial·2²⁰` is past any sane `max`).
const MAX_DOUBLINGS: u32 = 20;

/// Retry delays for one thing being retried (a batch, a connection, a device).
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The ceiling of the first delay.
    initial: Duration,
    /// The largest ceiling.
    max: Duration,
    /// Delays handed out since the start or the last reset.
    attempt: u32,
}

impl Backoff {
    /// A fresh backoff whose delays grow from `initial` to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// Delays handed out since the start or the last [`reset`](Self::reset): the number of
    /// consecutive failures, for logs.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The most the next delay can be (without a `Retry-After`).
    pub fn ceiling(&self) -> Duration {
        self.initial
            .saturating_mul(1u32 << self.attempt.min(MAX_DOUBLINGS))
            .min(self.max)
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_at_least(None)
    }

    /// The delay before the next attempt, never less than `retry_after` (a server's
    /// `Retry-After`), even when that is above `max`.
    pub fn next_delay_at_least(&mut self, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let floor = ceiling / 10;
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let jittered =
            Duration::from_nanos(rand::thread_rng().gen_range(nanos(floor)..=nanos(ceiling)));
        jittered.max(floor).max(retry_after.unwrap_or_default())
    }

    /// Starts again from `initial` (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITIAL: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(2);

    #[test]
    fn ceilings_double_from_initial_and_stop_at_max() {
        let mut b = Backoff::new(INITIAL, MAX);
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay();
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(b.attempts(), 8);
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), MAX, "no overflow after many attempts");
    }

    #[test]
    fn every_delay_lies_between_a_tenth_of_its_ceiling_and_the_ceiling() {
        let mut b = Backoff::new(INITIAL, MAX);
        for _ in 0..40 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(d >= ceiling / 10 && d <= ceiling, "{d:?} for {ceiling:?}");
        }
    }

    #[test]
    fn delays_are_jittered_not_fixed() {
        let mut distinct = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
            distinct.insert(b.next_delay());
        }
        assert!(distinct.len() > 10, "{distinct:?}");
    }

    #[test]
    fn retry_after_is_a_floor_even_above_max() {
        let mut b = Backoff::new(INITIAL, MAX);
        let d = b.next_delay_at_least(Some(Duration::from_secs(5)));
        assert_eq!(d, Duration::from_secs(5));
        let short = b.next_delay_at_least(Some(Duration::from_millis(1)));
        assert!(
            short >= Duration::from_millis(20),
            "the backoff's own floor: {short:?}"
        );
        assert_eq!(b.attempts(), 2, "Retry-After still counts as an attempt");
    }

    #[test]
    fn reset_starts_again_from_initial() {
        let mut b = Backoff::new(INITIAL, MAX);
        for _ in 0..6 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), MAX);
        b.reset();
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.ceiling(), INITIAL);
        assert!(b.next_delay() <= INITIAL);
    }

    #[test]
    fn a_zero_initial_delay_never_panics() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(b.next_delay(), Duration::ZERO);
    }
}
