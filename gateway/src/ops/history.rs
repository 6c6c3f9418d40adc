//! The last hour at a glance, for the status page's chart: every [`STEP`] the operations
//! server samples the readings taken in and delivered so far and the queue depth, and keeps
//! the latest [`SAMPLES`] + 1 samples (a fixed, small amount of memory). `/status.json`
//! carries them as per-step counts:
//!
//! ```json
//! "history": {"step_s": 60, "points": [{"t": "…", "in": 120, "out": 118, "queue": 4}]}
//! ```
//!
//! `in` and `out` are the readings stored and delivered during the step ending at `t`;
//! `queue` is the depth at `t` (null when the buffer could not be read). Counts only.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Time between samples.
pub const STEP: Duration = Duration::from_secs(60);

/// Steps kept: an hour.
pub const SAMPLES: usize = 60;

/// One sample: totals since start, and the queue depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// When.
    pub at: OffsetDateTime,
    /// Readings stored since start.
    pub readings_in: u64,
    /// Readings delivered since start.
    pub readings_out: u64,
    /// Readings waiting, if the buffer could be read.
    pub queue: Option<u64>,
}

/// The kept samples.
#[derive(Debug, Default)]
pub struct History(Mutex<VecDeque<Sample>>);

impl History {
    /// Adds a sample, forgetting the oldest beyond [`SAMPLES`] + 1.
    pub fn record(&self, sample: Sample) {
        let mut q = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        q.push_back(sample);
        while q.len() > SAMPLES + 1 {
            q.pop_front();
        }
    }

    /// The `history` object of `/status.json`.
    pub fn json(&self) -> Value {
        let q = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let points: Vec<Value> = q
            .iter()
            .zip(q.iter().skip(1))
            .map(|(a, b)| {
                json!({
                    "t": b.at.format(&Rfc3339).unwrap_or_default(),
                    "in": b.readings_in.saturating_sub(a.readings_in),
                    "out": b.readings_out.saturating_sub(a.readings_out),
                    "queue": b.queue,
                })
            })
            .collect();
        json!({"step_s": STEP.as_secs(), "points": points})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hour_of_per_step_counts_is_kept_and_no_more() {
        let h = History::default();
        assert_eq!(h.json()["points"], json!([]));
        for i in 0..200u64 {
            h.record(Sample {
                at: OffsetDateTime::UNIX_EPOCH + time::Duration::minutes(i as i64),
                readings_in: i * 10,
                readings_out: i * 9,
                queue: (i % 2 == 0).then_some(i),
            });
        }
        let points = h.json()["points"].as_array().unwrap().clone();
        assert_eq!(points.len(), SAMPLES);
        let last = points.last().unwrap();
        assert_eq!(last["in"], 10);
        assert_eq!(last["out"], 9);
        assert_eq!(last["queue"], Value::Null, "199 is odd: unreadable");
        assert_eq!(points[0]["t"], "1970-01-01T02:20:00Z");
        assert_eq!(h.json()["step_s"], 60);
    }
}
