//! Exponential backoff with full jitter, honouring a server's Retry-After.

use std::time::Duration;

use rand::Rng;

/// Retry delays for one batch: attempt n waits a random time in `[0, min(max, initial·2ⁿ)]`,
/// but never less than a `Retry-After` the server asked for.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let cap = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jittered =
            Duration::from_millis(rand::thread_rng().gen_range(0..=cap.as_millis() as u64));
        // Never hammer: at least a tenth of the cap, so jitter cannot give a zero wait.
        let delay = jittered.max(cap / 10);
        match retry_after {
            Some(ra) => delay.max(ra.min(self.max.max(ra))),
            None => delay,
        }
    }
}

/// Parses a Retry-After header: delta-seconds or an HTTP-date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(24 * 3600)));
    }
    let format = time::format_description::well_known::Rfc2822;
    let when = time::OffsetDateTime::parse(value, &format).ok()?;
    let delta = when - time::OffsetDateTime::now_utc();
    Some(Duration::from_secs(
        delta.whole_seconds().clamp(0, 24 * 3600) as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_capped_and_honour_retry_after() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..30 {
            let d = b.next_delay(None);
            assert!(d <= Duration::from_secs(2), "{d:?}");
        }
        assert_eq!(b.attempts(), 30);
        let d = b.next_delay(Some(Duration::from_secs(5)));
        assert!(
            d >= Duration::from_secs(5),
            "Retry-After beyond the cap is still honoured: {d:?}"
        );
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
