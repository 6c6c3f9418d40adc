//! Operations: what monitoring, a technician and an auditor see of a running gateway.
//!
//! - [`metrics`]: counters and state every stage reports to (readings in per source and
//!   profile, uplink outcomes, latency histograms, devices heard from).
//! - [`server`]: the HTTP server (`[ops.http]`, loopback-only by default): `/metrics`
//!   ([`prometheus`] text format), `/healthz`, `/readyz`, and a read-only status page for
//!   technicians (`/`, polling `/status.json`, built by [`status`]).
//! - [`audit`]: the append-only audit log of security-relevant events; [`config_change`]
//!   notices a changed configuration between starts, [`certs`] reads certificate validity.
//! - [`net`]: the client allow-list of the HTTP server.
//!
//! Architecture invariant: nothing here shows or writes a patient value or identifier. Devices
//! appear by their own ids, readings only as counts and times.
//!
//! `ops` knows no stage: the buffer is reached through the [`QueueProbe`] trait, which
//! `lib.rs` implements for the buffer's store.

pub mod audit;
pub mod certs;
pub mod config_change;
pub mod histogram;
pub mod metrics;
pub mod net;
pub mod prometheus;
pub mod server;
pub mod status;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use time::OffsetDateTime;

/// Who and what this gateway is, for the status page and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayInfo {
    /// Gateway id.
    pub id: String,
    /// Gateway version.
    pub version: String,
    /// When this process started.
    pub started: OffsetDateTime,
    /// Where readings go, in words (e.g. `FHIR server https://fhir.example.org/r4`).
    pub uplink: String,
}

/// Queue figures, read from the buffer when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueGauges {
    /// Readings waiting for delivery (the queue depth).
    pub pending: u64,
    /// `buffer.capacity`.
    pub capacity: u64,
    /// Readings handed to the uplink and not yet settled.
    pub leased: u64,
    /// Rows in the dead-letter table.
    pub dead_letters: u64,
    /// Age of the reading at the head of the queue; `None` when empty.
    pub oldest_age: Option<Duration>,
}

/// Reads queue figures; implemented for the buffer in `lib.rs`.
pub trait QueueProbe: Send + Sync + 'static {
    /// Current figures, or why they could not be read.
    fn gauges(&self) -> impl Future<Output = Result<QueueGauges, String>> + Send;
}

/// Where the gateway is in its life, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Stages are being started.
    Starting,
    /// Every stage runs.
    Running,
    /// Shutdown has begun: sources no longer acknowledge.
    Stopping,
}

/// The current [`Phase`], shared between `lib.rs` and the server.
#[derive(Debug, Default)]
pub struct Lifecycle(AtomicU8);

impl Lifecycle {
    /// Moves to `phase`.
    pub fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::Relaxed);
    }

    /// The current phase.
    pub fn get(&self) -> Phase {
        match self.0.load(Ordering::Relaxed) {
            0 => Phase::Starting,
            1 => Phase::Running,
            _ => Phase::Stopping,
        }
    }
}

/// Everything one page view or scrape shows, gathered at one moment.
#[derive(Debug)]
pub struct View<'a> {
    /// Who and what this gateway is.
    pub info: &'a GatewayInfo,
    /// The phase.
    pub phase: Phase,
    /// Counters and state.
    pub snapshot: &'a metrics::Snapshot,
    /// Queue figures, or why they could not be read.
    pub queue: &'a Result<QueueGauges, String>,
    /// Configured certificates.
    pub certs: &'a [certs::CertReport],
    /// What `/readyz` says.
    pub readiness: &'a status::Readiness,
    /// The audit log file, if one is written.
    pub audit_log: Option<&'a Path>,
    /// Now.
    pub now: OffsetDateTime,
}
