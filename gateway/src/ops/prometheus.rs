//! The Prometheus text exposition format (version 0.0.4), written by hand: a few families of
//! counters, gauges and two histograms do not need a metrics library.
//!
//! Format, per family: `# HELP name text` (backslash and newline escaped), `# TYPE name kind`,
//! then one line per sample: `name{label="value",…} number`. Label values escape backslash,
//! double quote and newline. A histogram has cumulative `name_bucket{le="…"}` samples ending
//! with `le="+Inf"`, then `name_sum` and `name_count`. Served as
//! `text/plain; version=0.0.4; charset=utf-8`.
//!
//! [`render`] maps the gateway's figures to families; the list and the meaning of each is in
//! docs/operations.md.

use std::fmt::Write;

use time::OffsetDateTime;

use super::histogram::HistogramSnapshot;
use super::metrics::UplinkStatus;
use super::View;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Metric kinds of the text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets to 0 when the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

/// Writes families one after the other.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value as the text format spells it.
pub fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

impl Exposition {
    /// Starts a family: its `HELP` and `TYPE` lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A whole histogram family (no labels).
    pub fn histogram(&mut self, name: &str, help: &str, h: &HistogramSnapshot) {
        self.family(name, Kind::Histogram, help);
        let bucket = format!("{name}_bucket");
        for (bound, n) in &h.buckets {
            self.sample(&bucket, &[("le", &number(*bound))], *n as f64);
        }
        self.sample(&bucket, &[("le", "+Inf")], h.count as f64);
        self.sample(&format!("{name}_sum"), &[], h.sum_seconds);
        self.sample(&format!("{name}_count"), &[], h.count as f64);
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

fn unix(t: OffsetDateTime) -> f64 {
    t.unix_timestamp_nanos() as f64 / 1e9
}

/// Renders every family.
pub fn render(v: &View<'_>) -> String {
    let s = v.snapshot;
    let mut e = Exposition::default();
    e.family(
        "vitalbridge_build_info",
        Kind::Gauge,
        "Always 1; the labels name the gateway and its version.",
    );
    e.sample(
        "vitalbridge_build_info",
        &[("gateway", &v.info.id), ("version", &v.info.version)],
        1.0,
    );
    e.single(
        "vitalbridge_start_time_seconds",
        Kind::Gauge,
        "When this gateway process started, Unix time.",
        unix(v.info.started),
    );
    e.single(
        "vitalbridge_ready",
        Kind::Gauge,
        "1 when /readyz answers 200 (buffer writable, uplink not failing beyond ready_staleness_s), else 0.",
        if v.readiness.ready { 1.0 } else { 0.0 },
    );

    e.family(
        "vitalbridge_readings_in_total",
        Kind::Counter,
        "Readings durably committed to the buffer, by source and device profile (retransmissions included).",
    );
    for c in &s.readings_in {
        e.sample(
            "vitalbridge_readings_in_total",
            &[("source", &c.source), ("profile", &c.profile)],
            c.readings as f64,
        );
    }
    e.single(
        "vitalbridge_readings_duplicate_total",
        Kind::Counter,
        "Readings that arrived again while already buffered (stored once).",
        s.duplicates as f64,
    );
    e.family(
        "vitalbridge_payloads_dead_lettered_total",
        Kind::Counter,
        "Payloads a source could not decode, kept in the dead-letter table, by source.",
    );
    for (source, n) in &s.payloads_rejected {
        e.sample(
            "vitalbridge_payloads_dead_lettered_total",
            &[("source", source)],
            *n as f64,
        );
    }

    e.family(
        "vitalbridge_readings_refused_total",
        Kind::Counter,
        "Readings an admission check refused and dead-lettered (check: unit, a unit that does not fit the metric; plausibility, a value outside its physiological limits), by source and check. Also in the audit log.",
    );
    for (source, check, n) in &s.readings_refused {
        e.sample(
            "vitalbridge_readings_refused_total",
            &[("source", source), ("check", check)],
            *n as f64,
        );
    }
    let warn = s.clock_drift_warn;
    e.single(
        "vitalbridge_devices_clock_drifting",
        Kind::Gauge,
        "Devices whose clock is off from the gateway's by more than clinical.clock_drift_warn_s (their latest reading).",
        s.devices.iter().filter(|d| d.clock_drifting(warn)).count() as f64,
    );
    e.family(
        "vitalbridge_device_clock_offset_seconds",
        Kind::Gauge,
        "The clock offset (gateway - device) of each device off by more than clinical.clock_drift_warn_s, by device.",
    );
    for d in s.devices.iter().filter(|d| d.clock_drifting(warn)) {
        e.sample(
            "vitalbridge_device_clock_offset_seconds",
            &[("device", &d.id)],
            d.clock_offset_ms.unwrap_or(0) as f64 / 1000.0,
        );
    }
    e.family(
        "vitalbridge_device_readings_time_flagged_total",
        Kind::Counter,
        "Readings flagged time-in-future or time-too-old, by device (devices with any).",
    );
    for d in s.devices.iter().filter(|d| d.time_flagged > 0) {
        e.sample(
            "vitalbridge_device_readings_time_flagged_total",
            &[("device", &d.id)],
            d.time_flagged as f64,
        );
    }
    e.family(
        "vitalbridge_device_readings_unbound_total",
        Kind::Counter,
        "Readings held unbound for want of a patient binding, by device (devices with any).",
    );
    for d in s.devices.iter().filter(|d| d.unbound > 0) {
        e.sample(
            "vitalbridge_device_readings_unbound_total",
            &[("device", &d.id)],
            d.unbound as f64,
        );
    }

    e.family(
        "vitalbridge_input_discarded_total",
        Kind::Counter,
        "Input a source discarded without a dead-letter row (corrupt or truncated serial frames, line noise), by source.",
    );
    for (source, n) in &s.input_discarded {
        e.sample(
            "vitalbridge_input_discarded_total",
            &[("source", source)],
            *n as f64,
        );
    }

    e.family(
        "vitalbridge_readings_lost_total",
        Kind::Counter,
        "Readings a source could not store and its device cannot resend (a line device's, still waiting for room in the buffer when the gateway stopped), by source. Also in the audit log.",
    );
    for (source, readings, _) in &s.lost {
        e.sample(
            "vitalbridge_readings_lost_total",
            &[("source", source)],
            *readings as f64,
        );
    }
    e.family(
        "vitalbridge_payloads_lost_total",
        Kind::Counter,
        "Undecodable payloads a source could not dead-letter and its device cannot resend, by source. Also in the audit log.",
    );
    for (source, _, payloads) in &s.lost {
        e.sample(
            "vitalbridge_payloads_lost_total",
            &[("source", source)],
            *payloads as f64,
        );
    }

    if let Ok(q) = v.queue {
        e.single(
            "vitalbridge_buffer_pending_readings",
            Kind::Gauge,
            "Readings in the buffer waiting for delivery (the queue depth).",
            q.pending as f64,
        );
        e.family(
            "vitalbridge_uplink_pending_readings",
            Kind::Gauge,
            "Readings a destination still has to deliver, by uplink (a reading leaves the buffer when every destination has it).",
        );
        for (uplink, n) in &q.pending_by_destination {
            e.sample(
                "vitalbridge_uplink_pending_readings",
                &[("uplink", uplink)],
                *n as f64,
            );
        }
        e.single(
            "vitalbridge_buffer_capacity_readings",
            Kind::Gauge,
            "buffer.capacity: at this depth sources are refused (backpressure).",
            q.capacity as f64,
        );
        e.single(
            "vitalbridge_buffer_leased_readings",
            Kind::Gauge,
            "Readings handed to the uplink and not yet acknowledged.",
            q.leased as f64,
        );
        e.single(
            "vitalbridge_buffer_oldest_age_seconds",
            Kind::Gauge,
            "Age of the reading at the head of the queue (gateway receive time); 0 when empty.",
            q.oldest_age.map_or(0.0, |d| d.as_secs_f64()),
        );
        e.single(
            "vitalbridge_buffer_unbound_readings",
            Kind::Gauge,
            "Readings held because no patient is bound to their device (never delivered; release with vitalbridge devices bind).",
            q.unbound as f64,
        );
        e.single(
            "vitalbridge_buffer_dead_letters",
            Kind::Gauge,
            "Rows in the dead-letter table (undecodable payloads and refused readings).",
            q.dead_letters as f64,
        );
        let st = &q.storage;
        e.single(
            "vitalbridge_buffer_storage_failing",
            Kind::Gauge,
            "1 while buffer writes fail (sources are not acknowledged), else 0.",
            if st.failing.is_some() { 1.0 } else { 0.0 },
        );
        if let Some(free) = st.free_bytes {
            e.single(
                "vitalbridge_buffer_free_bytes",
                Kind::Gauge,
                "Free bytes on the buffer's file system at the last check (absent before one).",
                free as f64,
            );
        }
        e.single(
            "vitalbridge_buffer_free_floor_bytes",
            Kind::Gauge,
            "buffer.min_free_mb in bytes: below it new readings are refused.",
            st.floor_bytes as f64,
        );
        e.single(
            "vitalbridge_buffer_low_space",
            Kind::Gauge,
            "1 while new readings are refused for lack of free space, else 0.",
            if st.low_space { 1.0 } else { 0.0 },
        );
        e.single(
            "vitalbridge_buffer_quarantined_databases",
            Kind::Gauge,
            "Damaged buffer databases moved to <data_dir>/quarantine/ (salvage them with `vitalbridge queue salvage`).",
            f64::from(st.quarantined),
        );
    }
    if let Some(n) = super::alloc::allocations() {
        e.single(
            "vitalbridge_allocations_total",
            Kind::Counter,
            "Heap allocations since start (only in builds with the alloc-counter feature, for benchmarks).",
            n as f64,
        );
    }
    e.single(
        "vitalbridge_buffer_full_refusals_total",
        Kind::Counter,
        "Commit requests refused because the buffer was at capacity.",
        s.buffer_refusals as f64,
    );
    e.single(
        "vitalbridge_buffer_low_space_refusals_total",
        Kind::Counter,
        "Commit requests refused because free space was below buffer.min_free_mb.",
        s.space_refusals as f64,
    );
    e.single(
        "vitalbridge_buffer_commits_total",
        Kind::Counter,
        "Buffer transactions committed (synchronous=FULL).",
        s.commits as f64,
    );
    e.single(
        "vitalbridge_buffer_commit_failures_total",
        Kind::Counter,
        "Buffer transactions that failed (a full disk, an I/O error); nothing of them was acknowledged.",
        s.commit_failures as f64,
    );

    let uplink_counter =
        |e: &mut Exposition, name: &str, help: &str, f: &dyn Fn(&UplinkStatus) -> u64| {
            e.family(name, Kind::Counter, help);
            for (uplink, u) in &s.uplinks {
                e.sample(name, &[("uplink", uplink)], f(u) as f64);
            }
        };
    uplink_counter(
        &mut e,
        "vitalbridge_readings_out_total",
        "Readings the destination acknowledged, by uplink.",
        &|u| u.delivered,
    );
    uplink_counter(
        &mut e,
        "vitalbridge_uplink_retries_total",
        "Send attempts that will be retried, by uplink.",
        &|u| u.retries,
    );
    uplink_counter(
        &mut e,
        "vitalbridge_readings_dead_lettered_total",
        "Readings the uplink moved to the dead-letter table (permanent refusal), by uplink.",
        &|u| u.dead_lettered,
    );
    e.family(
        "vitalbridge_uplink_auth_failures_total",
        Kind::Counter,
        "Requests the uplink could not authorize, by uplink and cause (token_refused, token_endpoint_unreachable, server_401, server_403, ...); the rows stay buffered.",
    );
    for (uplink, u) in &s.uplinks {
        for (cause, n) in &u.auth_failures {
            e.sample(
                "vitalbridge_uplink_auth_failures_total",
                &[("uplink", uplink), ("cause", cause)],
                *n as f64,
            );
        }
    }
    e.family(
        "vitalbridge_uplink_last_delivery_timestamp_seconds",
        Kind::Gauge,
        "When the destination last acknowledged a reading, Unix time (absent before the first).",
    );
    for (uplink, u) in &s.uplinks {
        if let Some(t) = u.last_delivery {
            e.sample(
                "vitalbridge_uplink_last_delivery_timestamp_seconds",
                &[("uplink", uplink)],
                unix(t),
            );
        }
    }
    e.family(
        "vitalbridge_uplink_failing_seconds",
        Kind::Gauge,
        "How long every attempt of the uplink has been failing; 0 while the destination answers.",
    );
    for (uplink, u) in &s.uplinks {
        let failing = u
            .failing_since
            .map_or(0.0, |t| (v.now - t).as_seconds_f64().max(0.0));
        e.sample(
            "vitalbridge_uplink_failing_seconds",
            &[("uplink", uplink)],
            failing,
        );
    }

    e.single(
        "vitalbridge_tls_failures_total",
        Kind::Counter,
        "TLS handshakes that failed (uplink and MQTT source).",
        s.tls_failures as f64,
    );
    e.family(
        "vitalbridge_tls_failures_by_cause_total",
        Kind::Counter,
        "TLS handshakes that failed, by peer (uplink:fhir, source:mqtt, ...) and cause (unknown_ca, bad_certificate, certificate_revoked, peer_unknown_issuer, peer_expired, no_tls12_or_13, ...).",
    );
    for (peer, cause, n) in &s.tls_failures_by_cause {
        e.sample(
            "vitalbridge_tls_failures_by_cause_total",
            &[("peer", peer), ("cause", cause)],
            *n as f64,
        );
    }
    e.single(
        "vitalbridge_ops_connections_refused_total",
        Kind::Counter,
        "Connections to this server refused because the client is not in ops.http.allow_from.",
        s.connections_refused as f64,
    );
    e.family(
        "vitalbridge_certificate_expiry_timestamp_seconds",
        Kind::Gauge,
        "notAfter of each configured certificate, Unix time, by config key and subject.",
    );
    for report in v.certs {
        if let Ok(certs) = &report.certs {
            for c in certs {
                e.sample(
                    "vitalbridge_certificate_expiry_timestamp_seconds",
                    &[("use", &report.usage), ("subject", &c.subject)],
                    unix(c.not_after),
                );
            }
        }
    }

    e.histogram(
        "vitalbridge_ingest_to_commit_seconds",
        "Per reading: from the gateway receiving it to the buffer transaction holding it being durably committed (when the source may acknowledge upstream).",
        &s.commit_latency,
    );
    e.histogram(
        "vitalbridge_ingest_to_ack_seconds",
        "Per reading: from the gateway receiving it to the destination acknowledging it (includes time queued in the buffer, also across restarts).",
        &s.ack_latency,
    );
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escapes_follow_the_text_format() {
        let mut e = Exposition::default();
        e.family("x_total", Kind::Counter, "Line one\\two\nthree");
        e.sample("x_total", &[("a", "q\"uo\\te\nd"), ("b", "plain")], 3.0);
        e.sample("x_total", &[], 0.5);
        e.single("y", Kind::Gauge, "A gauge.", f64::INFINITY);
        assert_eq!(
            e.finish(),
            "# HELP x_total Line one\\\\two\\nthree\n\
             # TYPE x_total counter\n\
             x_total{a=\"q\\\"uo\\\\te\\nd\",b=\"plain\"} 3\n\
             x_total 0.5\n\
             # HELP y A gauge.\n\
             # TYPE y gauge\n\
             y +Inf\n"
        );
    }

    #[test]
    fn a_histogram_has_cumulative_buckets_then_inf_sum_and_count() {
        let h = HistogramSnapshot {
            buckets: vec![(0.005, 1), (0.5, 3), (10.0, 3)],
            count: 4,
            sum_seconds: 12.25,
        };
        let mut e = Exposition::default();
        e.histogram("lat_seconds", "Latency.", &h);
        assert_eq!(
            e.finish(),
            "# HELP lat_seconds Latency.\n\
             # TYPE lat_seconds histogram\n\
             lat_seconds_bucket{le=\"0.005\"} 1\n\
             lat_seconds_bucket{le=\"0.5\"} 3\n\
             lat_seconds_bucket{le=\"10\"} 3\n\
             lat_seconds_bucket{le=\"+Inf\"} 4\n\
             lat_seconds_sum 12.25\n\
             lat_seconds_count 4\n"
        );
    }

    #[test]
    fn numbers_are_spelled_as_prometheus_parses_them() {
        assert_eq!(number(1.0), "1");
        assert_eq!(number(0.025), "0.025");
        assert_eq!(number(1_780_000_000.5), "1780000000.5");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
    }
}
