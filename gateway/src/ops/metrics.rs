//! Process-wide counters, shared by every stage through an `Arc<Metrics>`.
//!
//! Counters only ever count events and ids, never values: nothing here is PHI.

use std::sync::atomic::{AtomicU64, Ordering};

/// The gateway's counters. Every field is a monotonically increasing count.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Readings a source decoded and the buffer accepted.
    pub readings_in: AtomicU64,
    /// Readings the buffer already held (retransmissions), stored once.
    pub readings_duplicate: AtomicU64,
    /// Source payloads that could not be decoded (dead-lettered).
    pub payloads_rejected: AtomicU64,
    /// Commit requests refused because the buffer was full (backpressure).
    pub buffer_full: AtomicU64,
    /// Readings the destination acknowledged.
    pub readings_out: AtomicU64,
    /// Send attempts that will be retried.
    pub uplink_retries: AtomicU64,
    /// Readings moved to the dead-letter table by the uplink.
    pub readings_dead_lettered: AtomicU64,
    /// TLS handshakes that failed (uplink and sources).
    pub tls_failures: AtomicU64,
    /// Buffer transactions committed.
    pub commits: AtomicU64,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
