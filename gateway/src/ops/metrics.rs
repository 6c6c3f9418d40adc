//! Process-wide counters and state, shared by every stage through an `Arc<Metrics>`.
//!
//! Nothing here is PHI: counters count events, and the state kept per device is its id, its
//! profile, the source it came through and when its last reading arrived, never a value or a
//! patient.
//!
//! # Who records what
//! - **Readings in** are counted centrally, per source and device profile, from the buffer
//!   writer's report after each group commit ([`Metrics::readings_committed`]); sources do not
//!   count them. The same call remembers each device's last reading time and records the
//!   receive → durable-commit latency.
//! - **The uplink** reports each batch outcome ([`Metrics::uplink_delivered`],
//!   [`Metrics::uplink_failed`], …), which also records the receive → destination-ack latency.
//! - **TLS failures** are counted by the stage that saw the handshake fail, with
//!   [`Metrics::tls_failed`] (per peer and cause, and in the total [`Metrics::tls_failures`]).
//! - **Authorization failures** of an uplink (no access token, or the server refused it) are
//!   counted per cause by [`Metrics::uplink_auth_failed`].
//!
//! The hot path costs one lock per commit group or uplink batch (never one per reading) and,
//! per reading, a map lookup and a histogram bucket search.
//!
//! The first version of this struct had only the public `AtomicU64` fields below, and sources
//! added to them with [`Metrics::add`]. Those fields and that call still work so that source
//! code written against them compiles; `readings_in`, `payloads_rejected` and `buffer_full`
//! are superseded by the central counts and are not exported.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;

use super::histogram::{Histogram, HistogramSnapshot};
use crate::model::{DeviceId, Reading};

/// Most devices whose last reading time is remembered for the status page. Beyond it the
/// device heard from least recently is forgotten, so a publisher inventing device ids cannot
/// grow the gateway's memory without bound.
pub const MAX_TRACKED_DEVICES: usize = 2000;

/// The gateway's counters and operational state.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Superseded by the per-source counts (not exported): readings a source decoded and the
    /// buffer accepted, if the source adds them.
    pub readings_in: AtomicU64,
    /// Readings the buffer already held (retransmissions), stored once.
    pub readings_duplicate: AtomicU64,
    /// Superseded by the per-source counts (not exported): payloads a source could not decode.
    pub payloads_rejected: AtomicU64,
    /// Superseded by the writer's count (not exported): buffer-full refusals a source saw.
    pub buffer_full: AtomicU64,
    /// Readings the destination acknowledged (all uplinks).
    pub readings_out: AtomicU64,
    /// Send attempts that will be retried (all uplinks).
    pub uplink_retries: AtomicU64,
    /// Readings moved to the dead-letter table by the uplink (all uplinks).
    pub readings_dead_lettered: AtomicU64,
    /// TLS handshakes that failed (uplink and sources).
    pub tls_failures: AtomicU64,
    /// Buffer transactions committed.
    pub commits: AtomicU64,

    /// Commit requests the buffer writer refused because the buffer was full.
    buffer_refusals: AtomicU64,
    /// Commit requests refused for lack of free space.
    space_refusals: AtomicU64,
    /// Buffer transactions that failed.
    commit_failures: AtomicU64,
    /// Connections the operations server refused (client not in `ops.http.allow_from`).
    connections_refused: AtomicU64,
    /// A device clock off by more than this many ms is shown as drifting (0: the default,
    /// `config::DEFAULT_CLOCK_DRIFT_WARN_S`).
    clock_drift_warn_ms: AtomicU64,
    /// Per-source counts and per-device state.
    ingest: Mutex<IngestState>,
    /// The last buffer commit's failure, cleared by the next successful commit.
    buffer_error: Mutex<Option<(OffsetDateTime, String)>>,
    /// Per-uplink counts and health, by transport name.
    uplinks: Mutex<BTreeMap<&'static str, UplinkStatus>>,
    /// (peer, cause) → TLS handshakes that failed.
    tls_causes: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Gateway receive time → durable commit, per reading.
    commit_latency: Histogram,
    /// Gateway receive time → destination acknowledgement, per reading.
    ack_latency: Histogram,
    /// The vendor profiles in use and the last reload's outcome.
    profiles: Mutex<ProfilesStatus>,
}

/// The device profiles in use, for the status page and `vitalbridge status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfilesStatus {
    /// `name version` of the active pack; `None`: the built-in profiles only.
    pub pack: Option<String>,
    /// The vendor JSON profiles in use, `id@version`.
    pub vendor_profiles: Vec<String>,
    /// When they were loaded.
    pub loaded_at: Option<OffsetDateTime>,
    /// Why the last reload failed, if it did (the profiles above stay in use).
    pub error: Option<String>,
}

#[derive(Debug, Default)]
struct IngestState {
    /// source → profile → readings durably accepted.
    readings: BTreeMap<String, BTreeMap<String, u64>>,
    /// source → undecodable payloads dead-lettered.
    rejected: BTreeMap<String, u64>,
    /// (source, check) → readings the admission check refused (dead-lettered).
    refused: BTreeMap<(String, &'static str), u64>,
    /// source → input discarded without a dead-letter row (line noise, corrupt frames).
    discarded: BTreeMap<String, u64>,
    /// source → (readings, undecodable payloads) a source could not store and nobody will
    /// resend (a line device's, at shutdown).
    lost: BTreeMap<String, (u64, u64)>,
    /// Devices heard from, at most [`MAX_TRACKED_DEVICES`].
    devices: HashMap<DeviceId, Seen>,
    /// Devices dropped from `devices` to stay within the bound.
    forgotten: u64,
}

#[derive(Debug)]
struct Seen {
    profile: String,
    source: Arc<str>,
    last_received: OffsetDateTime,
    readings: u64,
    /// Readings held for want of a patient.
    unbound: u64,
    /// Readings flagged for their time (`time-in-future`, `time-too-old`).
    time_flagged: u64,
    /// The clock offset of the device's latest reading that had one, in ms.
    clock_offset_ms: Option<i64>,
    /// Latest receive time per metric (MDC reference id), at most [`MAX_METRICS_PER_DEVICE`].
    metrics: Vec<(&'static str, OffsetDateTime)>,
}

/// Most metrics remembered per device (a body-composition scale reports about a dozen).
pub const MAX_METRICS_PER_DEVICE: usize = 24;

impl Seen {
    fn metric(&mut self, reading: &Reading) {
        let name = reading.metric.mdc_ref;
        let full = self.metrics.len() >= MAX_METRICS_PER_DEVICE;
        match self.metrics.iter_mut().find(|(m, _)| *m == name) {
            Some((_, at)) => *at = (*at).max(reading.received_at),
            None if !full => self.metrics.push((name, reading.received_at)),
            None => {}
        }
    }
}

/// Readings durably accepted from one source with one device profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceCount {
    /// Source name (`sim`, `mqtt`, …).
    pub source: String,
    /// Device profile id.
    pub profile: String,
    /// Readings.
    pub readings: u64,
}

impl DeviceStatus {
    /// Whether its clock is off by more than `warn`.
    pub fn clock_drifting(&self, warn: Duration) -> bool {
        self.clock_offset_ms
            .is_some_and(|ms| u128::from(ms.unsigned_abs()) > warn.as_millis())
    }
}

/// What the gateway knows about one device. No values, no patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    /// `DeviceId::key()`: the device's own id (serial number, Bluetooth address, …).
    pub id: String,
    /// What kind of id it is: `eui64`, `bluetooth`, `serial` or `other`.
    pub id_kind: &'static str,
    /// Device profile id.
    pub profile: String,
    /// The source its readings came through.
    pub source: String,
    /// Gateway receive time of its latest reading.
    pub last_received: OffsetDateTime,
    /// Readings held unbound (no patient), counted since start.
    pub unbound: u64,
    /// Readings flagged for their time, counted since start.
    pub time_flagged: u64,
    /// The device clock's offset from the gateway's (gateway − device), in ms, from its
    /// latest reading that had one.
    pub clock_offset_ms: Option<i64>,
    /// Readings accepted from it since the gateway started.
    pub readings: u64,
    /// The latest receive time of each metric it reported (MDC reference id), by metric.
    pub metrics: Vec<(&'static str, OffsetDateTime)>,
}

/// Why the uplink's last attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkError {
    /// When.
    pub at: OffsetDateTime,
    /// `tls` (handshake failed), `auth` (no access token, or the server refused it) or
    /// `transient` (connection, timeout, 408/429/5xx).
    pub kind: &'static str,
    /// The transport's explanation (it never contains patient data).
    pub message: String,
}

/// Counts and health of one uplink.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UplinkStatus {
    /// Readings the destination acknowledged.
    pub delivered: u64,
    /// Attempts that will be retried.
    pub retries: u64,
    /// Readings dead-lettered (permanent refusal, or unreadable in the buffer).
    pub dead_lettered: u64,
    /// When the destination last acknowledged a reading.
    pub last_delivery: Option<OffsetDateTime>,
    /// Since when every attempt has failed; `None` while the destination answers.
    pub failing_since: Option<OffsetDateTime>,
    /// The latest failure (kept after recovery, for the status page).
    pub last_error: Option<UplinkError>,
    /// Authorization failures by cause (`uplink::auth::AuthError::label`, `server_401`, …).
    pub auth_failures: BTreeMap<&'static str, u64>,
}

/// A consistent-enough copy of everything, for rendering.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Readings in, per source and profile, sorted.
    pub readings_in: Vec<SourceCount>,
    /// Undecodable payloads dead-lettered, per source, sorted.
    pub payloads_rejected: Vec<(String, u64)>,
    /// Readings refused by an admission check (dead-lettered): `(source, check, count)`.
    pub readings_refused: Vec<(String, &'static str, u64)>,
    /// A device clock off by more than this is drifting (`clinical.clock_drift_warn_s`).
    pub clock_drift_warn: Duration,
    /// Input discarded without a dead-letter row (serial line noise), per source, sorted.
    pub input_discarded: Vec<(String, u64)>,
    /// Readings and undecodable payloads lost (not stored, and the device cannot resend
    /// them), per source, sorted: `(source, readings, payloads)`.
    pub lost: Vec<(String, u64, u64)>,
    /// Devices heard from, sorted by id.
    pub devices: Vec<DeviceStatus>,
    /// Devices forgotten to stay within [`MAX_TRACKED_DEVICES`].
    pub devices_forgotten: u64,
    /// Readings already buffered when they arrived again.
    pub duplicates: u64,
    /// Commit requests refused because the buffer was full.
    pub buffer_refusals: u64,
    /// Commit requests refused for lack of free space.
    pub space_refusals: u64,
    /// Buffer transactions committed.
    pub commits: u64,
    /// Buffer transactions that failed.
    pub commit_failures: u64,
    /// The last commit failure, if the buffer has not committed since.
    pub buffer_error: Option<(OffsetDateTime, String)>,
    /// TLS handshake failures.
    pub tls_failures: u64,
    /// TLS handshake failures by peer and cause (`tls::cause_label`), sorted.
    pub tls_failures_by_cause: Vec<(String, &'static str, u64)>,
    /// Connections the operations server refused.
    pub connections_refused: u64,
    /// Per uplink, by name.
    pub uplinks: Vec<(&'static str, UplinkStatus)>,
    /// Gateway receive time → durable commit.
    pub commit_latency: HistogramSnapshot,
    /// Gateway receive time → destination acknowledgement.
    pub ack_latency: HistogramSnapshot,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Time from `from` to `to`, zero if the clock went backwards (e.g. an NTP step at boot).
fn elapsed(from: OffsetDateTime, to: OffsetDateTime) -> Duration {
    Duration::try_from(to - from).unwrap_or(Duration::ZERO)
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

    /// After a group commit: `requests` (source name, readings) are now durably held. Counts
    /// them per source and profile, remembers each device's latest reading time, records the
    /// receive → commit latency, and clears a previous commit failure.
    pub fn readings_committed(
        &self,
        requests: &[(Arc<str>, Vec<Reading>)],
        committed_at: OffsetDateTime,
    ) {
        *lock(&self.buffer_error) = None;
        if requests.is_empty() {
            return;
        }
        self.commit_latency.observe_all(
            requests
                .iter()
                .flat_map(|(_, readings)| readings)
                .map(|r| elapsed(r.received_at, committed_at)),
        );
        let mut state = lock(&self.ingest);
        for (source, readings) in requests {
            for reading in readings {
                state.count(source, &reading.device.profile, 1);
                state.seen(source, reading);
            }
        }
    }

    /// A reading from `source` refused by the admission check `check` is now in the
    /// dead-letter table.
    pub fn reading_refused(&self, source: &str, check: &'static str) {
        *lock(&self.ingest)
            .refused
            .entry((source.to_owned(), check))
            .or_default() += 1;
    }

    /// Sets the clock offset beyond which a device is shown as drifting
    /// (`clinical.clock_drift_warn_s`).
    pub fn set_clock_drift_warn(&self, warn: std::time::Duration) {
        self.clock_drift_warn_ms.store(
            u64::try_from(warn.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// An undecodable payload from `source` is now in the dead-letter table.
    pub fn payload_dead_lettered(&self, source: &str) {
        let mut state = lock(&self.ingest);
        match state.rejected.get_mut(source) {
            Some(n) => *n += 1,
            None => {
                state.rejected.insert(source.to_owned(), 1);
            }
        }
    }

    /// `n` pieces of input from `source` were discarded as unusable and not dead-lettered:
    /// frames that fail their CRC or framing on a serial line, which cannot even be
    /// attributed to a device (the source logs their kinds).
    pub fn input_discarded(&self, source: &str, n: u64) {
        let mut state = lock(&self.ingest);
        match state.discarded.get_mut(source) {
            Some(c) => *c += n,
            None => {
                state.discarded.insert(source.to_owned(), n);
            }
        }
    }

    /// `readings` readings and `payloads` undecodable payloads from `source` were never
    /// stored and cannot be sent again by their device (a line device's, still waiting for
    /// room in the buffer when the gateway stopped). The source also audits them.
    pub fn input_lost(&self, source: &str, readings: u64, payloads: u64) {
        let mut state = lock(&self.ingest);
        let entry = state.lost.entry(source.to_owned()).or_default();
        entry.0 += readings;
        entry.1 += payloads;
    }

    /// The buffer writer refused `requests` commit requests because the buffer was full.
    pub fn buffer_refused_full(&self, requests: u64) {
        self.buffer_refusals.fetch_add(requests, Ordering::Relaxed);
    }

    /// The buffer refused `requests` commit requests for lack of free space.
    pub fn buffer_refused_space(&self, requests: u64) {
        self.space_refusals.fetch_add(requests, Ordering::Relaxed);
    }

    /// A buffer transaction failed: nothing of its group was stored.
    pub fn buffer_commit_failed(&self, reason: String) {
        self.commit_failures.fetch_add(1, Ordering::Relaxed);
        *lock(&self.buffer_error) = Some((OffsetDateTime::now_utc(), reason));
    }

    /// The operations server refused a connection.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    fn uplink(&self, name: &'static str, update: impl FnOnce(&mut UplinkStatus)) {
        update(lock(&self.uplinks).entry(name).or_default());
    }

    /// A TLS handshake with `peer` (`uplink:fhir`, `source:mqtt`, …) failed for `cause`
    /// ([`crate::tls::cause_label`]).
    pub fn tls_failed(&self, peer: &str, cause: &'static str) {
        self.tls_failures.fetch_add(1, Ordering::Relaxed);
        *lock(&self.tls_causes)
            .entry((peer.to_owned(), cause))
            .or_default() += 1;
    }

    /// `uplink` could not authorize a request, for `cause`.
    pub fn uplink_auth_failed(&self, uplink: &'static str, cause: &'static str) {
        self.uplink(uplink, |u| *u.auth_failures.entry(cause).or_default() += 1);
    }

    /// `uplink` exists (its series are exported from zero, before its first batch).
    pub fn uplink_registered(&self, uplink: &'static str) {
        self.uplink(uplink, |_| {});
    }

    /// The destination of `uplink` answered (whatever it said about the entries): it is
    /// reachable.
    pub fn uplink_answered(&self, uplink: &'static str) {
        self.uplink(uplink, |u| u.failing_since = None);
    }

    /// The destination of `uplink` acknowledged readings received by the gateway at
    /// `received`; records the receive → acknowledgement latency.
    pub fn uplink_delivered(&self, uplink: &'static str, received: &[OffsetDateTime]) {
        if received.is_empty() {
            return;
        }
        let now = OffsetDateTime::now_utc();
        let n = received.len() as u64;
        self.readings_out.fetch_add(n, Ordering::Relaxed);
        self.ack_latency
            .observe_all(received.iter().map(|t| elapsed(*t, now)));
        self.uplink(uplink, |u| {
            u.delivered += n;
            u.last_delivery = Some(now);
            u.failing_since = None;
        });
    }

    /// A send through `uplink` failed and will be retried: no answer, or an answer that says
    /// "later" for the whole batch. `kind` is `tls` or `transient`.
    pub fn uplink_failed(&self, uplink: &'static str, kind: &'static str, message: &str) {
        let now = OffsetDateTime::now_utc();
        self.uplink_retries.fetch_add(1, Ordering::Relaxed);
        self.uplink(uplink, |u| {
            u.retries += 1;
            u.failing_since.get_or_insert(now);
            u.last_error = Some(UplinkError {
                at: now,
                kind,
                message: message.to_owned(),
            });
        });
    }

    /// The destination answered but asked for some entries again later: a retry, while the
    /// destination stays reachable.
    pub fn uplink_retried(&self, uplink: &'static str) {
        self.uplink_retries.fetch_add(1, Ordering::Relaxed);
        self.uplink(uplink, |u| u.retries += 1);
    }

    /// `n` readings were moved to the dead-letter table by `uplink`.
    pub fn uplink_dead_lettered(&self, uplink: &'static str, n: u64) {
        self.readings_dead_lettered.fetch_add(n, Ordering::Relaxed);
        self.uplink(uplink, |u| u.dead_lettered += n);
    }

    /// Records the profiles now in use (a load succeeded).
    pub fn set_profiles(
        &self,
        pack: Option<String>,
        vendor_profiles: Vec<String>,
        error: Option<String>,
    ) {
        *lock(&self.profiles) = ProfilesStatus {
            pack,
            vendor_profiles,
            loaded_at: Some(OffsetDateTime::now_utc()),
            error,
        };
    }

    /// Records why a reload failed; the profiles in use stay.
    pub fn set_profiles_error(&self, error: String) {
        lock(&self.profiles).error = Some(error);
    }

    /// The profiles in use.
    pub fn profiles(&self) -> ProfilesStatus {
        lock(&self.profiles).clone()
    }

    /// A copy of everything, for `/metrics` and the status page.
    pub fn snapshot(&self) -> Snapshot {
        let readings_refused: Vec<(String, &'static str, u64)> = lock(&self.ingest)
            .refused
            .iter()
            .map(|((source, check), n)| (source.clone(), *check, *n))
            .collect();
        let (readings_in, payloads_rejected, input_discarded, lost, devices, devices_forgotten) = {
            let state = lock(&self.ingest);
            let readings_in = state
                .readings
                .iter()
                .flat_map(|(source, profiles)| {
                    profiles.iter().map(|(profile, n)| SourceCount {
                        source: source.clone(),
                        profile: profile.clone(),
                        readings: *n,
                    })
                })
                .collect();
            let rejected = state
                .rejected
                .iter()
                .map(|(s, n)| (s.clone(), *n))
                .collect();
            let discarded = state
                .discarded
                .iter()
                .map(|(s, n)| (s.clone(), *n))
                .collect();
            let lost = state
                .lost
                .iter()
                .map(|(s, (r, p))| (s.clone(), *r, *p))
                .collect();
            let mut devices: Vec<DeviceStatus> = state
                .devices
                .iter()
                .map(|(id, seen)| DeviceStatus {
                    id: id.key(),
                    id_kind: id.kind().as_str(),
                    profile: seen.profile.clone(),
                    source: seen.source.to_string(),
                    last_received: seen.last_received,
                    readings: seen.readings,
                    unbound: seen.unbound,
                    time_flagged: seen.time_flagged,
                    clock_offset_ms: seen.clock_offset_ms,
                    metrics: {
                        let mut m = seen.metrics.clone();
                        m.sort_unstable();
                        m
                    },
                })
                .collect();
            devices.sort_by(|a, b| a.id.cmp(&b.id));
            (
                readings_in,
                rejected,
                discarded,
                lost,
                devices,
                state.forgotten,
            )
        };
        let warn_ms = Self::get(&self.clock_drift_warn_ms);
        Snapshot {
            readings_in,
            payloads_rejected,
            readings_refused,
            clock_drift_warn: if warn_ms == 0 {
                Duration::from_secs(crate::config::DEFAULT_CLOCK_DRIFT_WARN_S)
            } else {
                Duration::from_millis(warn_ms)
            },
            input_discarded,
            lost,
            devices,
            devices_forgotten,
            duplicates: Self::get(&self.readings_duplicate),
            buffer_refusals: Self::get(&self.buffer_refusals),
            space_refusals: Self::get(&self.space_refusals),
            commits: Self::get(&self.commits),
            commit_failures: Self::get(&self.commit_failures),
            buffer_error: lock(&self.buffer_error).clone(),
            tls_failures: Self::get(&self.tls_failures),
            tls_failures_by_cause: lock(&self.tls_causes)
                .iter()
                .map(|((peer, cause), n)| (peer.clone(), *cause, *n))
                .collect(),
            connections_refused: Self::get(&self.connections_refused),
            uplinks: lock(&self.uplinks)
                .iter()
                .map(|(name, u)| (*name, u.clone()))
                .collect(),
            commit_latency: self.commit_latency.snapshot(),
            ack_latency: self.ack_latency.snapshot(),
        }
    }
}

impl IngestState {
    fn count(&mut self, source: &str, profile: &str, n: u64) {
        if let Some(count) = self
            .readings
            .get_mut(source)
            .and_then(|p| p.get_mut(profile))
        {
            *count += n;
            return;
        }
        *self
            .readings
            .entry(source.to_owned())
            .or_default()
            .entry(profile.to_owned())
            .or_default() += n;
    }

    fn seen(&mut self, source: &Arc<str>, reading: &Reading) {
        let unbound = u64::from(reading.patient.is_none());
        let time_flagged = u64::from(reading.status.iter().any(|f| {
            matches!(
                f,
                crate::model::StatusFlag::TimeInFuture | crate::model::StatusFlag::TimeTooOld
            )
        }));
        let offset = reading
            .device_time
            .and(reading.clock_offset)
            .map(|d| d.whole_milliseconds() as i64);
        if let Some(seen) = self.devices.get_mut(&reading.device.id) {
            seen.metric(reading);
            seen.readings += 1;
            seen.unbound += unbound;
            seen.time_flagged += time_flagged;
            if offset.is_some() {
                seen.clock_offset_ms = offset;
            }
            seen.last_received = seen.last_received.max(reading.received_at);
            if seen.profile != reading.device.profile {
                seen.profile.clone_from(&reading.device.profile);
            }
            if *seen.source != **source {
                seen.source = source.clone();
            }
            return;
        }
        if self.devices.len() >= MAX_TRACKED_DEVICES {
            let stalest = self
                .devices
                .iter()
                .min_by_key(|(_, s)| s.last_received)
                .map(|(id, _)| id.clone());
            if let Some(id) = stalest {
                self.devices.remove(&id);
                self.forgotten += 1;
            }
        }
        let mut seen = Seen {
            profile: reading.device.profile.clone(),
            source: source.clone(),
            last_received: reading.received_at,
            readings: 1,
            unbound,
            time_flagged,
            clock_offset_ms: offset,
            metrics: Vec::new(),
        };
        seen.metric(reading);
        self.devices.insert(reading.device.id.clone(), seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceRef, Measured, Quantity, Value};
    use crate::profile::catalog;

    fn reading(device: &str, profile: &str, received: OffsetDateTime) -> Reading {
        Reading {
            device: DeviceRef {
                id: DeviceId::Other(device.into()),
                profile: profile.into(),
                model: None,
                manufacturer: None,
            },
            patient: None,
            metric: catalog::SPO2,
            value: Value::Quantity(Quantity {
                value: Measured::Value(crate::model::Decimal::integer(97)),
                unit: "%".into(),
            }),
            device_time: None,
            clock_offset: None,
            received_at: received,
            duration: None,
            sequence: None,
            status: vec![],
            device_user: None,
            bedside: None,
            time_sync: None,
        }
    }

    #[test]
    fn readings_are_counted_per_source_and_profile_and_devices_remembered() {
        let m = Metrics::default();
        let t0 = OffsetDateTime::now_utc() - Duration::from_secs(2);
        let sim: Arc<str> = "sim".into();
        let mqtt: Arc<str> = "mqtt".into();
        m.readings_committed(
            &[
                (
                    sim.clone(),
                    vec![reading("A", "sim", t0), reading("B", "sim", t0)],
                ),
                (mqtt.clone(), vec![reading("C", "canonical-json", t0)]),
                (sim, vec![reading("A", "sim", t0 + Duration::from_secs(1))]),
            ],
            t0 + Duration::from_secs(1),
        );
        m.payload_dead_lettered("mqtt");
        m.payload_dead_lettered("mqtt");
        let s = m.snapshot();
        assert_eq!(
            s.readings_in,
            vec![
                SourceCount {
                    source: "mqtt".into(),
                    profile: "canonical-json".into(),
                    readings: 1
                },
                SourceCount {
                    source: "sim".into(),
                    profile: "sim".into(),
                    readings: 3
                },
            ]
        );
        assert_eq!(s.payloads_rejected, vec![("mqtt".to_owned(), 2)]);
        let ids: Vec<&str> = s.devices.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["A", "B", "C"]);
        assert_eq!(s.devices[0].readings, 2);
        assert_eq!(s.devices[0].last_received, t0 + Duration::from_secs(1));
        assert_eq!(s.devices[2].source, "mqtt");
        assert_eq!(s.commit_latency.count, 4);
    }

    #[test]
    fn the_device_table_is_bounded_and_forgets_the_stalest_device() {
        let m = Metrics::default();
        let t0 = OffsetDateTime::now_utc();
        let src: Arc<str> = "mqtt".into();
        let batch: Vec<Reading> = (0..MAX_TRACKED_DEVICES + 5)
            .map(|i| {
                reading(
                    &format!("dev-{i:05}"),
                    "p",
                    t0 + Duration::from_secs(i as u64),
                )
            })
            .collect();
        m.readings_committed(&[(src, batch)], t0);
        let s = m.snapshot();
        assert_eq!(s.devices.len(), MAX_TRACKED_DEVICES);
        assert_eq!(s.devices_forgotten, 5);
        assert_eq!(
            s.devices[0].id, "dev-00005",
            "the five oldest were forgotten"
        );
    }

    #[test]
    fn an_uplink_is_failing_from_its_first_failure_until_it_is_answered() {
        let m = Metrics::default();
        m.uplink_failed("fhir", "transient", "server answered HTTP 503");
        let first = m.snapshot().uplinks[0].1.failing_since.unwrap();
        m.uplink_failed("fhir", "tls", "TLS handshake failed");
        let u = m.snapshot().uplinks[0].1.clone();
        assert_eq!(u.failing_since, Some(first), "a streak keeps its start");
        assert_eq!(u.retries, 2);
        assert_eq!(u.last_error.as_ref().unwrap().kind, "tls");
        m.uplink_answered("fhir");
        let u = m.snapshot().uplinks[0].1.clone();
        assert_eq!(u.failing_since, None);
        assert!(u.last_error.is_some(), "the last error stays visible");
        m.uplink_delivered("fhir", &[OffsetDateTime::now_utc(); 3]);
        m.uplink_dead_lettered("fhir", 1);
        let s = m.snapshot();
        assert_eq!(s.uplinks[0].1.delivered, 3);
        assert_eq!(s.uplinks[0].1.dead_lettered, 1);
        assert_eq!(s.ack_latency.count, 3);
        assert_eq!(Metrics::get(&m.readings_out), 3);
        assert_eq!(Metrics::get(&m.uplink_retries), 2);
    }

    #[test]
    fn lost_input_is_counted_per_source() {
        let m = Metrics::default();
        m.input_lost("serial", 6, 0);
        m.input_lost("serial", 3, 1);
        m.input_lost("ble", 0, 2);
        assert_eq!(
            m.snapshot().lost,
            [("ble".to_owned(), 0, 2), ("serial".to_owned(), 9, 1)]
        );
    }

    #[test]
    fn a_successful_commit_clears_the_last_commit_failure() {
        let m = Metrics::default();
        m.buffer_commit_failed("disk I/O error".into());
        assert!(m.snapshot().buffer_error.is_some());
        m.readings_committed(&[], OffsetDateTime::now_utc());
        let s = m.snapshot();
        assert!(s.buffer_error.is_none());
        assert_eq!(s.commit_failures, 1);
    }
}
