//! A fixed-bucket latency histogram built on atomics: recording takes no lock.
//!
//! A batch of samples is first counted into a local array, then added to the shared counters
//! with one atomic add per touched bucket, so the cost per sample is a short bucket search.
//! The total count is the sum of the buckets (there is no separate count that could disagree
//! with them), which keeps the rendered `+Inf` bucket equal to `_count` in every scrape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds. They span a local commit (milliseconds)
/// to a reading that waited out a day-long network outage in the buffer.
pub const LATENCY_BUCKETS: [f64; 18] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 21600.0, 86400.0,
];

const SLOTS: usize = LATENCY_BUCKETS.len() + 1;

/// Samples counted per bucket (the last slot is above the highest bound), plus their sum.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative count per bucket; slot `i` holds samples in
    /// `(LATENCY_BUCKETS[i-1], LATENCY_BUCKETS[i]]`, the last slot those above every bound.
    slots: [AtomicU64; SLOTS],
    /// Sum of all samples, in microseconds.
    sum_us: AtomicU64,
}

/// A copy of a histogram's figures at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, cumulative count)` for every finite bound, ascending.
    pub buckets: Vec<(f64, u64)>,
    /// Number of samples (the `+Inf` bucket).
    pub count: u64,
    /// Sum of the samples, in seconds.
    pub sum_seconds: f64,
}

fn slot(d: Duration) -> usize {
    let s = d.as_secs_f64();
    LATENCY_BUCKETS.partition_point(|bound| *bound < s)
}

impl Histogram {
    /// Records every sample of a batch (one atomic add per touched bucket).
    pub fn observe_all(&self, samples: impl IntoIterator<Item = Duration>) {
        let mut local = [0u64; SLOTS];
        let mut sum_us: u64 = 0;
        for d in samples {
            local[slot(d)] += 1;
            sum_us = sum_us.saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        }
        for (shared, n) in self.slots.iter().zip(local) {
            if n > 0 {
                shared.fetch_add(n, Ordering::Relaxed);
            }
        }
        if sum_us > 0 {
            self.sum_us.fetch_add(sum_us, Ordering::Relaxed);
        }
    }

    /// The current figures.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len());
        for (bound, n) in LATENCY_BUCKETS.iter().zip(&self.slots) {
            cumulative += n.load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        let count = cumulative + self.slots[SLOTS - 1].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count,
            sum_seconds: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_the_first_bucket_whose_bound_is_not_below_them() {
        let h = Histogram::default();
        h.observe_all([
            Duration::from_millis(1),   // ≤ 0.005
            Duration::from_millis(5),   // ≤ 0.005 (bounds are inclusive)
            Duration::from_millis(6),   // ≤ 0.01
            Duration::from_secs(2),     // ≤ 2.5
            Duration::from_secs(90000), // above every bound
        ]);
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.buckets[0], (0.005, 2));
        assert_eq!(s.buckets[1], (0.01, 3));
        assert_eq!(s.buckets[7], (1.0, 3));
        assert_eq!(s.buckets[8], (2.5, 4));
        assert_eq!(s.buckets.last(), Some(&(86400.0, 4)));
        assert!(
            (s.sum_seconds - 90002.012).abs() < 1e-6,
            "{}",
            s.sum_seconds
        );
    }

    #[test]
    fn buckets_are_cumulative_and_never_exceed_the_count() {
        let h = Histogram::default();
        h.observe_all((0..1000).map(|i| Duration::from_millis(i * 37)));
        let s = h.snapshot();
        assert_eq!(s.count, 1000);
        assert!(s.buckets.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!(s.buckets.iter().all(|(_, n)| *n <= s.count));
    }
}
