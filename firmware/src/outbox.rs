//! The device side of reliable delivery: keep every reading until the gateway acknowledges
//! it by sequence number, and send it again when no acknowledgement came in time.
//!
//! The outbox is a plain state machine with no clock and no I/O: the device passes its
//! monotonic time in milliseconds (`now_ms`) to every call that needs it, sends the
//! [`Readings`] that [`Outbox::poll`] returns, and feeds back the [`Ack`]s and [`Nack`]s it
//! receives.
//!
//! Guarantees:
//!
//! - A reading leaves the outbox only when an [`Ack`] names its sequence number. A gateway
//!   restart, a lost frame or a pulled cable only delays it: it is sent again every
//!   `ack_timeout_ms` until acknowledged. (The gateway therefore sees duplicates, which it
//!   recognises by sequence number and acknowledges again.)
//! - A full outbox refuses a new reading ([`OutboxFull`] hands it back); it never drops an
//!   unacknowledged one.
//! - A [`Nack`] keeps the readings and delays them by `nack_backoff_ms`.
//! - Readings are sent in sequence order; each gets the next sequence number when pushed.

use crate::message::{Ack, Nack, Reading, Readings};
use heapless::Vec;

/// How long to wait before sending a reading again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// After sending, wait this long for an [`Ack`] before sending again.
    pub ack_timeout_ms: u32,
    /// After a [`Nack`], wait this long before sending again.
    pub nack_backoff_ms: u32,
}

impl Default for RetryPolicy {
    /// 2 s for an acknowledgement (a gateway commits within a few hundred ms), 10 s after a
    /// refusal (a full buffer does not drain faster than that).
    fn default() -> Self {
        Self {
            ack_timeout_ms: 2_000,
            nack_backoff_ms: 10_000,
        }
    }
}

/// The outbox is full; the reading was not taken and is handed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxFull(pub Reading);

/// One unacknowledged reading.
#[derive(Debug, Clone)]
struct Entry {
    /// The reading, with its sequence number.
    reading: Reading,
    /// Earliest `now_ms` at which it may be sent (again); 0 for "at once".
    due_ms: u64,
}

/// Up to `N` readings waiting for an acknowledgement.
#[derive(Debug, Clone)]
pub struct Outbox<const N: usize> {
    /// Unacknowledged readings in sequence order.
    entries: Vec<Entry, N>,
    /// The sequence number the next pushed reading gets.
    next_seq: u32,
    /// Retransmission timing.
    policy: RetryPolicy,
}

impl<const N: usize> Outbox<N> {
    /// An empty outbox whose first reading gets sequence number `first_seq`.
    ///
    /// A device that can should persist [`Outbox::next_seq`] and start from it after a
    /// reboot, so sequence numbers are never reused; the gateway treats a reused number with
    /// a different device time as a new reading, but one with the same time as a duplicate.
    pub const fn new(first_seq: u32, policy: RetryPolicy) -> Self {
        Self {
            entries: Vec::new(),
            next_seq: first_seq,
            policy,
        }
    }

    /// Adds a reading, giving it the next sequence number (any `seq` it had is overwritten),
    /// and returns that number. It is due for sending at once.
    pub fn push(&mut self, mut reading: Reading) -> Result<u32, OutboxFull> {
        if self.entries.is_full() {
            return Err(OutboxFull(reading));
        }
        let seq = self.next_seq;
        reading.seq = seq;
        self.entries
            .push(Entry { reading, due_ms: 0 })
            .map_err(|entry| OutboxFull(entry.reading))?;
        self.next_seq = seq.wrapping_add(1);
        Ok(seq)
    }

    /// The next batch to send: up to [`MAX_READINGS`](crate::message::MAX_READINGS) readings that are due at `now_ms`, in
    /// sequence order. They are then not due again until `now_ms + ack_timeout_ms`. Call
    /// until it returns `None`.
    pub fn poll(&mut self, now_ms: u64) -> Option<Readings> {
        let mut batch = Readings {
            readings: Vec::new(),
        };
        let next_due = now_ms.saturating_add(u64::from(self.policy.ack_timeout_ms));
        for entry in self.entries.iter_mut().filter(|e| e.due_ms <= now_ms) {
            if batch.readings.push(entry.reading.clone()).is_err() {
                break;
            }
            entry.due_ms = next_due;
        }
        (!batch.readings.is_empty()).then_some(batch)
    }

    /// Removes the acknowledged readings; returns how many were still held (acks for unknown
    /// or already acknowledged numbers are ignored).
    pub fn handle_ack(&mut self, ack: &Ack) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|entry| !ack.seqs.contains(&entry.reading.seq));
        before - self.entries.len()
    }

    /// Delays the refused readings by `nack_backoff_ms` from `now_ms`; returns how many it
    /// applied to. The readings stay in the outbox.
    pub fn handle_nack(&mut self, nack: &Nack, now_ms: u64) -> usize {
        let due = now_ms.saturating_add(u64::from(self.policy.nack_backoff_ms));
        let mut count = 0;
        for entry in self
            .entries
            .iter_mut()
            .filter(|e| nack.seqs.contains(&e.reading.seq))
        {
            entry.due_ms = due;
            count += 1;
        }
        count
    }

    /// Makes every held reading due at once, e.g. after the link came back.
    pub fn resend_all(&mut self) {
        for entry in &mut self.entries {
            entry.due_ms = 0;
        }
    }

    /// The earliest time at which [`Outbox::poll`] will have something to send, if anything
    /// is held; a device may sleep until then.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.entries.iter().map(|e| e.due_ms).min()
    }

    /// The unacknowledged readings, in sequence order.
    pub fn pending(&self) -> impl Iterator<Item = &Reading> {
        self.entries.iter().map(|e| &e.reading)
    }

    /// How many readings are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether [`Outbox::push`] would refuse.
    pub fn is_full(&self) -> bool {
        self.entries.is_full()
    }

    /// The sequence number the next pushed reading gets (persist it across reboots).
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }
}
