//! Operations: what monitoring, a technician and an auditor see of a running gateway.
//!
//! - [`metrics`]: counters and state every stage reports to (readings in per source and
//!   profile, uplink outcomes, latency histograms, devices heard from).
//! - [`server`]: the HTTP server (`[ops.http]`, loopback-only by default): `/metrics`
//!   ([`prometheus`] text format), `/healthz`, `/readyz`, and a read-only status page for
//!   technicians (`/`, polling `/status.json`, built by [`status`]).
//! - [`buffer_report`]: the buffer writer's report of each group commit, into metrics, log
//!   lines and audit events.
//! - [`audit`]: the append-only audit log of security-relevant events; [`config_change`]
//!   notices a changed configuration between starts, [`certs`] reads certificate validity.
//! - The client allow-list of the HTTP server is `ops.http.allow_from`, a list of
//!   [`crate::config::Cidr`].
//! - [`systemd`]: `sd_notify` readiness, watchdog and stopping notifications.
//!
//! Architecture invariant: nothing here shows or writes a patient value or identifier. Devices
//! appear by their own ids, readings only as counts and times.
//!
//! `ops` knows no stage: the buffer is reached through the [`QueueProbe`] trait, which the
//! buffer implements, and reports its commits through `pipeline::GroupReport`.

pub mod alloc;
pub mod audit;
pub mod buffer_report;
pub mod certs;
pub mod config_change;
pub mod histogram;
pub mod history;
pub mod metrics;
pub mod prometheus;
pub mod server;
pub mod status;
pub mod systemd;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use time::OffsetDateTime;

use crate::config::{Config, Destination};
use crate::error_chain::Chain;
use audit::{Audit, AuditError, Event};

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

impl GatewayInfo {
    /// This process, starting now, with gateway id `id`.
    pub fn new(id: &str, config: &Config) -> Self {
        let uplink = config
            .uplink
            .destinations()
            .into_iter()
            .map(|d| match d {
                Destination::Fhir(f) => format!("FHIR server {}", f.base_url),
                Destination::Hl7(h) => format!("HL7 v2 interface engine {}", h.address),
                Destination::File(f) => {
                    let dir = f.dir.unwrap_or_else(|| config.gateway.data_dir.join("out"));
                    format!("FHIR NDJSON files in {}", dir.display())
                }
                Destination::Mqtt(m) => format!("MQTT broker {} ({})", m.url, m.topic),
                Destination::Kafka(k) => {
                    format!("Kafka {} (topic {})", k.bootstrap.join(","), k.topic)
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            id: id.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started: OffsetDateTime::now_utc(),
            uplink,
        }
    }
}

/// Opens the audit log (`ops.audit_log`, default `<data_dir>/audit.log`) and records the
/// start: `gateway_started`, `config_changed` when the configuration's fingerprint differs
/// from the last start's (which is then replaced), and a `certificate_problem` for each
/// configured certificate that is expired, not yet valid, expiring soon or unreadable.
pub fn start_audit(
    config: &Config,
    gateway_id: &str,
    certs: &[certs::CertReport],
) -> Result<Audit, AuditError> {
    let data_dir = &config.gateway.data_dir;
    let audit = Audit::open(&audit_path(config), gateway_id)?;
    let fingerprint = config_change::fingerprint(config);
    audit.record(Event::GatewayStarted {
        version: env!("CARGO_PKG_VERSION"),
        config_sha256: &fingerprint.sha256,
    });
    let previous = config_change::previous(data_dir);
    if previous.as_ref().map(|p| &p.sha256) != Some(&fingerprint.sha256) {
        let sections = match &previous {
            Some(p) => fingerprint.changed_sections(p),
            None => fingerprint.sections.keys().cloned().collect(),
        };
        audit.record(Event::ConfigChanged {
            previous_sha256: previous.as_ref().map(|p| p.sha256.as_str()),
            sha256: &fingerprint.sha256,
            sections: &sections,
        });
        if let Err(e) = config_change::store(data_dir, &fingerprint) {
            tracing::warn!(error = %e, "cannot store the configuration fingerprint");
        }
    }
    let now = OffsetDateTime::now_utc();
    for report in certs {
        match &report.certs {
            Ok(list) => {
                for c in list {
                    let Some(problem) = c.problem(now) else {
                        continue;
                    };
                    tracing::warn!(usage = %report.usage, subject = %c.subject, problem = problem.as_str(), "certificate problem");
                    audit.record(Event::CertificateProblem {
                        usage: &report.usage,
                        path: &report.path,
                        subject: &c.subject,
                        not_after: Some(c.not_after),
                        problem: problem.as_str(),
                    });
                }
            }
            Err(e) => {
                tracing::warn!(usage = %report.usage, error = %Chain(e), "cannot read certificate");
                audit.record(Event::CertificateProblem {
                    usage: &report.usage,
                    path: &report.path,
                    subject: "",
                    not_after: None,
                    problem: "unreadable",
                });
            }
        }
    }
    Ok(audit)
}

/// The buffer's storage, as the operator needs to see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StorageGauges {
    /// While writes fail: since when, what the writer was doing, and the error kind.
    pub failing: Option<StorageFailing>,
    /// Free bytes on the buffer's file system at the last check.
    pub free_bytes: Option<u64>,
    /// The floor below which new readings are refused.
    pub floor_bytes: u64,
    /// Whether new readings are refused for lack of space.
    pub low_space: bool,
    /// Damaged databases waiting in `<data_dir>/quarantine/`.
    pub quarantined: u32,
}

/// A storage failure in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageFailing {
    /// The first failure of this episode.
    pub since: OffsetDateTime,
    /// `commit` or `delete`.
    pub during: &'static str,
    /// `disk_full`, `io`, `corrupt` or `other`.
    pub kind: &'static str,
    /// The last error, as the database said it.
    pub message: String,
}

/// Opens the audit log for a maintenance command (`queue salvage`): the same file as
/// [`start_audit`], without recording a start.
pub fn start_cli_audit(config: &Config, gateway_id: &str) -> Result<Audit, AuditError> {
    Audit::open(&audit_path(config), gateway_id)
}

/// `ops.audit_log`, default `<data_dir>/audit.log`.
fn audit_path(config: &Config) -> std::path::PathBuf {
    config
        .ops
        .audit_log
        .clone()
        .unwrap_or_else(|| config.gateway.data_dir.join("audit.log"))
}

/// Queue figures, read from the buffer when asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueGauges {
    /// Readings waiting for delivery (the queue depth).
    pub pending: u64,
    /// `buffer.capacity`.
    pub capacity: u64,
    /// Readings handed to the uplink and not yet settled.
    pub leased: u64,
    /// Rows in the dead-letter table.
    pub dead_letters: u64,
    /// Readings held for want of a patient binding (never delivered until released).
    pub unbound: u64,
    /// Age of the reading at the head of the queue; `None` when empty.
    pub oldest_age: Option<Duration>,
    /// Readings each destination (by name) still has to deliver: a reading stays in the
    /// buffer until every destination has it, so these differ when one lags.
    pub pending_by_destination: Vec<(String, u64)>,
    /// The storage under the queue.
    pub storage: StorageGauges,
}

/// Why queue figures could not be read: the buffer's own error, kept whole.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ProbeError(pub Box<dyn std::error::Error + Send + Sync>);

/// Reads queue figures; implemented by the buffer (`buffer::Store`).
pub trait QueueProbe: Send + Sync + 'static {
    /// Current figures, or why they could not be read.
    fn gauges(&self) -> impl Future<Output = Result<QueueGauges, ProbeError>> + Send;
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
    pub queue: &'a Result<QueueGauges, ProbeError>,
    /// Configured certificates.
    pub certs: &'a [certs::CertReport],
    /// What `/readyz` says.
    pub readiness: &'a status::Readiness,
    /// The audit log file, if one is written.
    pub audit_log: Option<&'a Path>,
    /// Now.
    pub now: OffsetDateTime,
}
