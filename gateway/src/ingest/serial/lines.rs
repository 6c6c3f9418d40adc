//! The line-protocol session: bytes in, [`Action`]s out, for devices that print ASCII lines
//! (decoded by a [`LineProfile`]). Pure, like the firmware [`super::session`].
//!
//! Framing: a line ends at LF or CR, so CR LF, LF and CR endings all work; the empty line
//! between a CR and its LF is skipped. A line longer than the profile's `max_length` is
//! cut: the bytes up to the next terminator are discarded and the line is reported once as
//! too long. The partial line is forgotten on reconnect.
//!
//! Line devices cannot be asked to resend, so every decoded line is committed with
//! `hold: true` (the port task keeps retrying while the buffer is full, and stops reading,
//! rather than drop it), and every line that does not decode is dead-lettered with the
//! decoder's reason (which names fields, never values) so a technician can see it.

use time::{OffsetDateTime, UtcOffset};

use super::{Action, BatchId, CommitOutcome};
use crate::ingest::Bindings;
use crate::model::DeviceRef;
use crate::profile::line::{DecodeError, Decoded, LineProfile};
use crate::profile::FrameContext;

/// Splits a byte stream into lines of at most `max` bytes.
#[derive(Debug, Clone)]
pub struct LineFramer {
    buf: Vec<u8>,
    max: usize,
    /// The line in progress outgrew `max`; drop bytes until the next terminator.
    overflowed: bool,
}

/// One framed line, or a line that was too long (its first `max` bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its terminator; never empty.
    Text(Vec<u8>),
    /// A line longer than the limit; its first bytes.
    TooLong(Vec<u8>),
}

impl LineFramer {
    /// A framer for lines of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
            overflowed: false,
        }
    }

    /// Every line that ends in `bytes`; the rest is kept for the next call.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Line> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                if self.overflowed {
                    lines.push(Line::TooLong(std::mem::take(&mut self.buf)));
                } else if !self.buf.is_empty() {
                    lines.push(Line::Text(std::mem::take(&mut self.buf)));
                }
                self.buf.clear();
                self.overflowed = false;
            } else if self.buf.len() < self.max {
                self.buf.push(b);
            } else {
                self.overflowed = true;
            }
        }
        lines
    }

    /// Forgets the partial line.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.overflowed = false;
    }
}

/// Counts for logs and metrics. Never values.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LineStats {
    /// Lines framed (including ignored and bad ones).
    pub lines: u64,
    /// Lines the profile says to skip.
    pub ignored: u64,
    /// Lines that did not decode (dead-lettered).
    pub bad_lines: u64,
    /// Readings sent for commit.
    pub readings: u64,
}

/// The gateway side of one serial port speaking a line protocol.
#[derive(Debug)]
pub struct LineSession {
    profile: LineProfile,
    framer: LineFramer,
    device: DeviceRef,
    utc_offset: UtcOffset,
    bindings: Bindings,
    next_batch: BatchId,
    stats: LineStats,
    /// The kind of the last decode error, for the log.
    last_error: Option<&'static str>,
}

impl LineSession {
    /// A session decoding `profile` for `device`, whose clock keeps `utc_offset`.
    pub fn new(
        profile: LineProfile,
        device: DeviceRef,
        utc_offset: UtcOffset,
        bindings: Bindings,
    ) -> Self {
        Self {
            framer: LineFramer::new(profile.max_length),
            profile,
            device,
            utc_offset,
            bindings,
            next_batch: 0,
            stats: LineStats::default(),
            last_error: None,
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> LineStats {
        self.stats
    }

    /// The kind of the most recent decode error, if any (and forgets it).
    pub fn take_last_error(&mut self) -> Option<&'static str> {
        self.last_error.take()
    }

    /// The port was (re)opened: forget the partial line.
    pub fn reconnected(&mut self) {
        self.framer.reset();
    }

    /// Bytes arrived at `now`.
    pub fn receive(&mut self, bytes: &[u8], now: OffsetDateTime) -> Vec<Action> {
        let mut actions = Vec::new();
        for line in self.framer.push(bytes) {
            self.stats.lines += 1;
            let (decoded, payload) = match line {
                Line::Text(text) => (self.decode(&text, now), text),
                Line::TooLong(head) => (
                    Err(DecodeError::TooLong {
                        max: self.profile.max_length,
                    }),
                    head,
                ),
            };
            let batch = self.next_batch;
            self.next_batch += 1;
            match decoded {
                Ok(Decoded::Ignored) => self.stats.ignored += 1,
                Ok(Decoded::Readings(readings)) if readings.is_empty() => {}
                Ok(Decoded::Readings(readings)) => {
                    self.stats.readings += readings.len() as u64;
                    actions.push(Action::Commit {
                        batch,
                        readings,
                        hold: true,
                    });
                }
                Err(e) => {
                    self.stats.bad_lines += 1;
                    self.last_error = Some(e.kind());
                    actions.push(Action::Reject {
                        batch,
                        reason: format!("{}: {e}", self.profile.id),
                        payload,
                        hold: true,
                    });
                }
            }
        }
        actions
    }

    /// Nothing to answer: line devices are not acknowledged.
    pub fn committed(&mut self, _batch: BatchId, _outcome: CommitOutcome) -> Vec<Action> {
        Vec::new()
    }

    fn decode(&self, line: &[u8], now: OffsetDateTime) -> Result<Decoded, DecodeError> {
        let ctx = FrameContext {
            device: self.device.clone(),
            patient: self.bindings.patient(&self.device.id.key()),
            received_at: now,
            clock_offset: None,
            // The device's clock keeps local time; its zone is `device_utc_offset`.
            time_sync: Some(crate::model::TimeSync::ConfiguredZone),
        };
        self.profile.decode(line, &ctx, self.utc_offset)
    }
}
