//! What the buffer writer reports after each group commit, turned into metrics, log lines and
//! audit events. The writer calls [`BufferReporter::report`] once per group (see
//! `pipeline::GroupReport`), so the hot path costs one call per commit, not one per reading.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::audit::{Audit, Event};
use super::metrics::Metrics;
use crate::pipeline::{GroupReport, Transition};

/// Counts and audits what each buffer group commit did.
#[derive(Debug)]
pub struct BufferReporter {
    metrics: Arc<Metrics>,
    audit: Audit,
    /// Whether the buffer is full, so the log says when that starts and when it ends, not
    /// once per refused request. Full: a request was refused with the buffer at 90 % of its
    /// capacity or more (a refusal below that is a source's group too big for the room
    /// left, which it splits); over: back at 80 % or less.
    full: AtomicBool,
}

impl BufferReporter {
    /// Reports to `metrics` and `audit`.
    pub fn new(metrics: Arc<Metrics>, audit: Audit) -> Self {
        Self {
            metrics,
            audit,
            full: AtomicBool::new(false),
        }
    }

    /// Takes one group's report.
    pub fn report(&self, report: &GroupReport<'_>) {
        let (metrics, audit, c) = (&self.metrics, &self.audit, &report.counts);
        Metrics::add(&metrics.commits, c.commits);
        Metrics::add(&metrics.readings_duplicate, c.duplicates);
        metrics.buffer_refused_full(c.refused_full);
        metrics.buffer_refused_space(c.refused_space);
        for t in report.transitions {
            audit.record(transition_event(t));
        }
        self.log_fullness(c.refused_full > 0, report.pending, report.capacity);
        if let Some(e) = report.error {
            metrics.buffer_commit_failed(e.to_string());
        }
        if let Some(at) = report.committed_at {
            metrics.readings_committed(report.readings, at);
        }
        // One audit line per origin per commit, so a flood of garbage costs a line per group;
        // refused readings, one per source, device and check.
        let mut by_origin: Vec<(&str, &str, usize, usize)> = Vec::new();
        let mut refused: Vec<(&str, &str, &str, usize)> = Vec::new();
        for (source, rejected) in report.rejected {
            if let Some(r) = &rejected.refused {
                metrics.reading_refused(source, r.check);
                match refused
                    .iter_mut()
                    .find(|(s, d, c, _)| *s == &**source && *d == r.device && *c == r.check)
                {
                    Some((_, _, _, n)) => *n += 1,
                    None => refused.push((source, &r.device, r.check, 1)),
                }
                continue;
            }
            metrics.payload_dead_lettered(source);
            match by_origin
                .iter_mut()
                .find(|(_, o, _, _)| *o == rejected.origin)
            {
                Some((_, _, count, bytes)) => {
                    *count += 1;
                    *bytes += rejected.payload.len();
                }
                None => by_origin.push((source, &rejected.origin, 1, rejected.payload.len())),
            }
        }
        for (source, device, check, count) in refused {
            audit.record(Event::ReadingsRefused {
                source,
                device,
                check,
                count,
            });
        }
        for (source, origin, count, bytes) in by_origin {
            audit.record(Event::PayloadDeadLettered {
                source,
                origin,
                count,
                bytes,
            });
        }
    }

    fn log_fullness(&self, refused: bool, pending: u64, capacity: u64) {
        if refused && pending >= capacity * 9 / 10 {
            if !self.full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "buffer full: sources stop acknowledging and devices keep their readings until the uplink makes room"
                );
            }
        } else if pending <= capacity * 8 / 10 && self.full.swap(false, Ordering::Relaxed) {
            tracing::info!("buffer has room again: sources acknowledge again");
        }
    }
}

fn transition_event(t: &Transition) -> Event<'_> {
    match t {
        Transition::Failed(p) => Event::StorageFailed {
            during: p.during,
            error: p.failure.kind.as_str(),
        },
        Transition::Recovered { after } => Event::StorageRecovered {
            after_s: after.as_secs(),
        },
        Transition::LowSpace {
            free_bytes,
            floor_bytes,
        } => Event::LowSpace {
            free_bytes: *free_bytes,
            floor_bytes: *floor_bytes,
        },
        Transition::SpaceOk { free_bytes } => Event::SpaceOk {
            free_bytes: *free_bytes,
        },
    }
}
