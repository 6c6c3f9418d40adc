//! Scripted misbehaviour: the FIFO of [`Fault`]s each `POST` takes the next one from.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::lock;

/// A scripted misbehaviour for one `POST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `503 Service Unavailable` with an OperationOutcome (`transient`); nothing applied.
    ServiceUnavailable,
    /// `429 Too Many Requests` with `Retry-After: SECONDS` (whole seconds, the delay-seconds
    /// form) and an OperationOutcome (`throttled`); nothing applied.
    TooManyRequests {
        /// Value of the `Retry-After` header, in seconds.
        retry_after_secs: u64,
    },
    /// Any status (e.g. 500, 502, or a permanent 400) with an OperationOutcome; nothing
    /// applied.
    Status(u16),
    /// Apply the request (store the resources exactly as a normal request would), then close
    /// the connection without sending a response. The client sees a connection error and
    /// must retry; conditional create makes the retry answer `200 OK` for each entry.
    CommitThenDrop,
    /// Close the connection without applying the request or responding.
    DropBeforeCommit,
    /// Wait this long, then handle the request normally. The request is applied even if the
    /// client gave up meanwhile (like a slow server that still commits).
    Delay(Duration),
}

/// The shared FIFO of faults; see [`Upstream::faults`].
#[derive(Debug, Clone, Default)]
pub struct Faults {
    queue: Arc<Mutex<VecDeque<Fault>>>,
}

impl Faults {
    /// Appends one fault: it applies to the next `POST` not already claimed by an earlier one.
    pub fn push(&self, fault: Fault) {
        lock(&self.queue).push_back(fault);
    }

    /// Appends `n` copies of `fault` (e.g. "503 to the next 3 requests").
    pub fn push_n(&self, fault: Fault, n: usize) {
        let mut q = lock(&self.queue);
        for _ in 0..n {
            q.push_back(fault.clone());
        }
    }

    /// Removes every pending fault.
    pub fn clear(&self) {
        lock(&self.queue).clear();
    }

    /// Faults not yet consumed, in order.
    pub fn pending(&self) -> Vec<Fault> {
        lock(&self.queue).iter().cloned().collect()
    }

    /// Number of faults not yet consumed.
    pub fn len(&self) -> usize {
        lock(&self.queue).len()
    }

    /// Whether every fault has been consumed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The fault for the next `POST`, if any.
    pub(super) fn pop(&self) -> Option<Fault> {
        lock(&self.queue).pop_front()
    }
}
