//! Readiness (`/readyz`) and the status page's data (`/status.json`).
//!
//! # Readiness
//! Ready means the gateway can take readings and is getting them out:
//! - it has finished starting and is not shutting down;
//! - **the buffer is writable**: its figures can be read, it is below capacity (at capacity
//!   sources are refused), its writes do not fail (a failure is cleared by the next
//!   successful write), and its file system has more free space than the floor
//!   (`buffer.min_free_mb`);
//! - **the uplink is reachable within the staleness**: no uplink has been failing
//!   continuously (no answer, TLS failure, 408/429/5xx for whole batches) for longer than
//!   `ops.http.ready_staleness_s`. An idle uplink with nothing to send is not failing.
//!
//! Each unmet condition is one reason line, in words a technician can act on.
//!
//! # `/status.json`
//! ```json
//! {"time": "...", "gateway": {"id", "version", "started", "uptime_s", "phase", "uplink"},
//!  "ready": {"ready": true, "reasons": []},
//!  "queue": {"pending", "capacity", "leased", "dead_letters", "unbound", "oldest_age_s"}
//!           | {"error"},
//!  "buffer": {"commits", "commit_failures", "full_refusals", "duplicates", "last_error",
//!             "storage": {"failing": {"since", "during", "kind", "message"} | null,
//!                         "free_bytes", "floor_bytes", "low_space", "quarantined"}},
//!  "sources": [{"source", "profile", "readings"}],
//!  "payloads_dead_lettered": [{"source", "count"}],
//!  "devices": [{"id", "id_kind", "profile", "source", "last_reading", "readings",
//!               "unbound", "time_flagged", "clock_offset_ms", "clock_drifting",
//!               "metrics": [{"metric", "last_reading"}]}],
//!  "readings_refused": [{"source", "check", "count"}],
//!  "devices_not_shown": 0,
//!  "uplinks": [{"name", "pending", "state", "delivered", "retries", "dead_lettered", "last_delivery",
//!               "failing_since", "last_error": {"at", "kind", "message"},
//!               "auth_failures": {"<cause>": count}}],
//!  "tls_failures": 0, "tls_failures_by_cause": [{"peer", "cause", "count"}],
//!  "ops_connections_refused": 0,
//!  "certificates": [{"usage", "path", "subject", "not_before", "not_after", "days_left",
//!                    "problem"} | {"usage", "path", "error"}],
//!  "audit_log": "...",
//!  "profiles": {"pack": "name version" | null, "vendor_profiles": ["id@version"],
//!               "loaded_at", "error": "…" | null},
//!  "history": {"step_s", "points": [{"t", "in", "out", "queue"}]}}
//! ```
//! (`profiles` and `history` are added by the server: `super::history`.) Times are RFC 3339 UTC. There are no values and no patient identifiers in it: devices are
//! listed by their own ids with counts and times only.

use std::time::Duration;

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::metrics::Snapshot;
use super::{Phase, ProbeError, QueueGauges, View};
use crate::error_chain::Chain;

/// What `/readyz` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Whether every condition holds.
    pub ready: bool,
    /// One line per unmet condition.
    pub reasons: Vec<String>,
}

fn seconds(d: time::Duration) -> i64 {
    d.whole_seconds().max(0)
}

/// Evaluates readiness (see the module docs).
pub fn readiness(
    phase: Phase,
    queue: &Result<QueueGauges, ProbeError>,
    snapshot: &Snapshot,
    staleness: Duration,
    now: OffsetDateTime,
) -> Readiness {
    let mut reasons = Vec::new();
    match phase {
        Phase::Starting => reasons.push("starting".to_owned()),
        Phase::Stopping => reasons.push("shutting down".to_owned()),
        Phase::Running => {}
    }
    match queue {
        Err(e) => reasons.push(format!("buffer: cannot read the queue: {}", Chain(e))),
        Ok(q) => {
            if q.pending >= q.capacity {
                reasons.push(format!(
                    "buffer: full ({} of {} readings); sources are refused until the uplink drains it",
                    q.pending, q.capacity
                ));
            }
            if let Some(f) = &q.storage.failing {
                reasons.push(format!(
                    "buffer: writes failing for {} s ({}, during {}: {}); sources are not \
                     acknowledged and delivered rows are not deleted until a write succeeds",
                    seconds(now - f.since),
                    f.kind,
                    f.during,
                    f.message
                ));
            }
            if q.storage.low_space {
                reasons.push(format!(
                    "buffer: {} MiB free on data_dir's file system, below the floor of {} MiB \
                     (buffer.min_free_mb); new readings are refused until space is freed",
                    q.storage.free_bytes.unwrap_or(0) / (1024 * 1024),
                    q.storage.floor_bytes / (1024 * 1024)
                ));
            }
        }
    }
    let failing_now = matches!(queue, Ok(q) if q.storage.failing.is_some());
    if let Some((at, message)) = snapshot.buffer_error.as_ref().filter(|_| !failing_now) {
        reasons.push(format!(
            "buffer: the last write failed {} s ago: {message}",
            seconds(now - *at)
        ));
    }
    for (name, uplink) in &snapshot.uplinks {
        let Some(since) = uplink.failing_since else {
            continue;
        };
        let failing = now - since;
        if failing > staleness {
            let why = uplink
                .last_error
                .as_ref()
                .map_or(String::new(), |e| format!(": {}", e.message));
            reasons.push(format!(
                "uplink {name}: failing for {} s, longer than ops.http.ready_staleness_s ({} s){why}",
                seconds(failing),
                staleness.as_secs()
            ));
        }
    }
    Readiness {
        ready: reasons.is_empty(),
        reasons,
    }
}

fn rfc3339(t: OffsetDateTime) -> Value {
    t.format(&Rfc3339).map_or(Value::Null, Value::String)
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Starting => "starting",
        Phase::Running => "running",
        Phase::Stopping => "stopping",
    }
}

/// The `/status.json` document (see the module docs).
pub fn status_json(v: &View<'_>) -> Value {
    let s = v.snapshot;
    let storage = match v.queue {
        Ok(q) => {
            let st = &q.storage;
            json!({
                "failing": st.failing.as_ref().map(|f| json!({
                    "since": rfc3339(f.since), "during": f.during, "kind": f.kind, "message": f.message,
                })),
                "free_bytes": st.free_bytes,
                "floor_bytes": st.floor_bytes,
                "low_space": st.low_space,
                "quarantined": st.quarantined,
            })
        }
        Err(_) => Value::Null,
    };
    let queue = match v.queue {
        Ok(q) => json!({
            "pending": q.pending,
            "capacity": q.capacity,
            "leased": q.leased,
            "dead_letters": q.dead_letters,
            "unbound": q.unbound,
            "oldest_age_s": q.oldest_age.map(|d| d.as_secs()),
        }),
        Err(e) => json!({ "error": Chain(e).to_string() }),
    };
    let certificates: Vec<Value> = v
        .certs
        .iter()
        .flat_map(|report| match &report.certs {
            Ok(certs) => certs
                .iter()
                .map(|c| {
                    json!({
                        "usage": report.usage,
                        "path": report.path.display().to_string(),
                        "subject": c.subject,
                        "not_before": rfc3339(c.not_before),
                        "not_after": rfc3339(c.not_after),
                        "days_left": (c.not_after - v.now).whole_days(),
                        "problem": c.problem(v.now).map(|p| p.as_str()),
                    })
                })
                .collect::<Vec<_>>(),
            Err(e) => vec![json!({
                "usage": report.usage,
                "path": report.path.display().to_string(),
                "error": Chain(e).to_string(),
            })],
        })
        .collect();
    json!({
        "time": rfc3339(v.now),
        "gateway": {
            "id": v.info.id,
            "version": v.info.version,
            "started": rfc3339(v.info.started),
            "uptime_s": seconds(v.now - v.info.started),
            "phase": phase_name(v.phase),
            "uplink": v.info.uplink,
        },
        "ready": {"ready": v.readiness.ready, "reasons": v.readiness.reasons},
        "queue": queue,
        "buffer": {
            "commits": s.commits,
            "commit_failures": s.commit_failures,
            "full_refusals": s.buffer_refusals,
            "duplicates": s.duplicates,
            "last_error": s.buffer_error.as_ref().map(|(at, m)| json!({"at": rfc3339(*at), "message": m})),
            "storage": storage,
        },
        "sources": s.readings_in.iter().map(|c| json!({
            "source": c.source, "profile": c.profile, "readings": c.readings,
        })).collect::<Vec<_>>(),
        "payloads_dead_lettered": s.payloads_rejected.iter().map(|(source, n)| json!({
            "source": source, "count": n,
        })).collect::<Vec<_>>(),
        "devices": s.devices.iter().map(|d| json!({
            "id": d.id,
            "id_kind": d.id_kind,
            "profile": d.profile,
            "source": d.source,
            "last_reading": rfc3339(d.last_received),
            "readings": d.readings,
            "unbound": d.unbound,
            "time_flagged": d.time_flagged,
            "clock_offset_ms": d.clock_offset_ms,
            "clock_drifting": d.clock_drifting(s.clock_drift_warn),
            "metrics": d.metrics.iter().map(|(m, at)| json!({"metric": m, "last_reading": rfc3339(*at)})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "readings_refused": s.readings_refused.iter().map(|(source, check, n)| json!({
            "source": source, "check": check, "count": n,
        })).collect::<Vec<_>>(),
        "devices_not_shown": s.devices_forgotten,
        "uplinks": s.uplinks.iter().map(|(name, u)| json!({
            "name": name,
            "pending": v.queue.as_ref().ok().and_then(|q| {
                q.pending_by_destination.iter().find(|(d, _)| d == name).map(|(_, n)| *n)
            }),
            "state": if u.failing_since.is_some() { "failing" } else { "ok" },
            "delivered": u.delivered,
            "retries": u.retries,
            "dead_lettered": u.dead_lettered,
            "last_delivery": u.last_delivery.map(rfc3339),
            "failing_since": u.failing_since.map(rfc3339),
            "last_error": u.last_error.as_ref().map(|e| json!({
                "at": rfc3339(e.at), "kind": e.kind, "message": e.message,
            })),
            "auth_failures": u.auth_failures,
        })).collect::<Vec<_>>(),
        "tls_failures": s.tls_failures,
        "tls_failures_by_cause": s.tls_failures_by_cause.iter().map(|(peer, cause, n)| json!({
            "peer": peer, "cause": cause, "count": n,
        })).collect::<Vec<_>>(),
        "ops_connections_refused": s.connections_refused,
        "certificates": certificates,
        "audit_log": v.audit_log.map(|p| p.display().to_string()),
    })
}

/// The `profiles` object of `/status.json`.
pub fn profiles_json(p: &super::metrics::ProfilesStatus) -> Value {
    json!({
        "pack": p.pack,
        "vendor_profiles": p.vendor_profiles,
        "loaded_at": p.loaded_at.map(rfc3339),
        "error": p.error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::metrics::Metrics;

    fn queue(pending: u64, capacity: u64) -> Result<QueueGauges, ProbeError> {
        Ok(QueueGauges {
            pending,
            capacity,
            leased: 0,
            dead_letters: 0,
            unbound: 0,
            oldest_age: None,
            pending_by_destination: Vec::new(),
            storage: Default::default(),
        })
    }

    const STALE: Duration = Duration::from_secs(60);

    #[test]
    fn a_running_gateway_with_room_and_an_answering_uplink_is_ready() {
        let m = Metrics::default();
        m.uplink_answered("fhir");
        let r = readiness(
            Phase::Running,
            &queue(5, 10),
            &m.snapshot(),
            STALE,
            OffsetDateTime::now_utc(),
        );
        assert_eq!(
            r,
            Readiness {
                ready: true,
                reasons: vec![]
            }
        );
    }

    #[test]
    fn each_unmet_condition_gives_its_reason() {
        let m = Metrics::default();
        m.uplink_failed("fhir", "transient", "server answered HTTP 503");
        m.buffer_commit_failed("database or disk is full".into());
        let later = OffsetDateTime::now_utc() + Duration::from_secs(61);
        let r = readiness(Phase::Running, &queue(10, 10), &m.snapshot(), STALE, later);
        assert!(!r.ready);
        assert_eq!(r.reasons.len(), 3, "{:?}", r.reasons);
        assert!(r.reasons[0].starts_with("buffer: full (10 of 10 readings)"));
        assert!(r.reasons[1].contains("the last write failed"));
        assert!(r.reasons[1].contains("database or disk is full"));
        assert!(
            r.reasons[2].starts_with("uplink fhir: failing for 61 s")
                && r.reasons[2].ends_with("server answered HTTP 503"),
            "{}",
            r.reasons[2]
        );
        let r = readiness(
            Phase::Stopping,
            &Err(ProbeError("closed".into())),
            &Metrics::default().snapshot(),
            STALE,
            later,
        );
        assert_eq!(
            r.reasons,
            ["shutting down", "buffer: cannot read the queue: closed"]
        );
    }

    #[test]
    fn failing_writes_and_low_space_each_give_their_reason() {
        let m = Metrics::default();
        m.buffer_commit_failed("database or disk is full".into());
        let now = OffsetDateTime::now_utc();
        let mut q = queue(1, 10).unwrap();
        q.storage = crate::ops::StorageGauges {
            failing: Some(crate::ops::StorageFailing {
                since: now - Duration::from_secs(42),
                during: "commit",
                kind: "disk_full",
                message: "database or disk is full".into(),
            }),
            free_bytes: Some(512 * 1024),
            floor_bytes: 1024 * 1024,
            low_space: true,
            quarantined: 0,
        };
        let r = readiness(Phase::Running, &Ok(q), &m.snapshot(), STALE, now);
        assert_eq!(r.reasons.len(), 2, "{:?}", r.reasons);
        assert!(
            r.reasons[0].starts_with("buffer: writes failing for 42 s (disk_full, during commit"),
            "{}",
            r.reasons[0]
        );
        assert!(r.reasons[1].contains("0 MiB free"), "{}", r.reasons[1]);
        assert!(
            r.reasons[1].contains("buffer.min_free_mb"),
            "{}",
            r.reasons[1]
        );
    }

    #[test]
    fn an_uplink_failing_for_less_than_the_staleness_is_still_ready() {
        let m = Metrics::default();
        m.uplink_failed("fhir", "tls", "TLS handshake failed");
        let soon = OffsetDateTime::now_utc() + Duration::from_secs(30);
        let r = readiness(Phase::Running, &queue(1, 10), &m.snapshot(), STALE, soon);
        assert!(r.ready, "{:?}", r.reasons);
    }
}
