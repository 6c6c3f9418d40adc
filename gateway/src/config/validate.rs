//! [`Config::validate`]: what the types cannot check (URLs, ranges, file permissions, ids
//! that must agree between tables). Every problem names its dotted key; all problems are
//! returned at once so one `check-config` run lists them all.
//!
//! What only the sources know — profile ids, Bluetooth addresses and services, line
//! profiles, which `[[devices]]` ids name the same device — they check themselves
//! (`ingest::check_config`); `crate::validate_config` runs both. This module imports
//! nothing of the crate but leaf modules.
//!
//! Every string and path first gets its length checked against [`crate::limits`] (ids 128
//! bytes, patient systems and references 256, codes and names 64, URLs 2048, MQTT topics
//! 256, paths 4096). When one is too long only those problems are reported: the other checks
//! may quote a value, open a path or compile a profile, none of which should see megabytes.

use std::collections::HashSet;
use std::path::Path;

use super::*;
use crate::error_chain::Chain;
use crate::limits::{
    MAX_CODE_LEN, MAX_ID_LEN, MAX_PATH_LEN, MAX_SYSTEM_LEN, MAX_TOPIC_LEN, MAX_UNIT_LEN,
    MAX_URL_LEN,
};

/// A gateway id that is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be 1 to {MAX_ID_LEN} ASCII letters, digits, '-', '_' or '.'")]
pub struct InvalidGatewayId;

/// Checks a gateway id (`gateway.id`, or the generated one kept in `<data_dir>/gateway-id`).
pub fn check_gateway_id(id: &str) -> Result<(), InvalidGatewayId> {
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(InvalidGatewayId);
    }
    Ok(())
}

/// One string of the configuration, for the length check: its key, its length in bytes and
/// its limit.
pub(super) type Text = (String, usize, usize);

fn text(key: impl Into<String>, value: &str, limit: usize) -> Text {
    (key.into(), value.len(), limit)
}

fn path(key: impl Into<String>, value: &Path) -> Text {
    (key.into(), value.as_os_str().len(), MAX_PATH_LEN)
}

impl Config {
    /// Every string and path of the configuration with its key and length limit. A new
    /// string option belongs in this list (a test sets each one too long).
    pub(super) fn texts(&self) -> Vec<Text> {
        let mut all = vec![path("gateway.data_dir", &self.gateway.data_dir)];
        if let Some(id) = &self.gateway.id {
            all.push(text("gateway.id", id, MAX_ID_LEN));
        }
        let sources = &self.sources;
        if let Some(ble) = &sources.ble {
            if let Some(dir) = &ble.profiles_dir {
                all.push(path("sources.ble.profiles_dir", dir));
            }
            for (i, d) in ble.devices.iter().enumerate() {
                let key = |field: &str| format!("sources.ble.devices[{i}].{field}");
                for (field, value) in [
                    ("address", &d.address),
                    ("service", &d.service),
                    ("profile", &d.profile),
                ] {
                    if let Some(value) = value {
                        all.push(text(key(field), value, MAX_CODE_LEN));
                    }
                }
            }
        }
        if let Some(mqtt) = &sources.mqtt {
            all.push(text("sources.mqtt.url", &mqtt.url, MAX_URL_LEN));
            if let Some(id) = &mqtt.client_id {
                all.push(text("sources.mqtt.client_id", id, MAX_ID_LEN));
            }
            for (i, topic) in mqtt.topics.iter().enumerate() {
                all.push(text(
                    format!("sources.mqtt.topics[{i}]"),
                    topic,
                    MAX_TOPIC_LEN,
                ));
            }
            if let Some(tls) = &mqtt.tls {
                tls_paths("sources.mqtt.tls", tls, &mut all);
            }
        }
        for (i, port) in sources.serial.iter().enumerate() {
            let key = |field: &str| format!("sources.serial[{i}].{field}");
            all.push(text(key("name"), &port.name, MAX_CODE_LEN));
            for (field, value) in [("path", &port.path), ("profiles_dir", &port.profiles_dir)] {
                if let Some(value) = value {
                    all.push(path(key(field), value));
                }
            }
            for (field, value, limit) in [
                ("usb_serial", &port.usb_serial, MAX_ID_LEN),
                ("profile", &port.profile, MAX_CODE_LEN),
                ("device_id", &port.device_id, MAX_ID_LEN),
            ] {
                if let Some(value) = value {
                    all.push(text(key(field), value, limit));
                }
            }
        }
        if let Some(dir) = self.uplink.file.as_ref().and_then(|f| f.dir.as_ref()) {
            all.push(path("uplink.file.dir", dir));
        }
        if let Some(fhir) = &self.uplink.fhir {
            all.push(text("uplink.fhir.base_url", &fhir.base_url, MAX_URL_LEN));
            all.push(path("uplink.fhir.ca", &fhir.ca));
            if let Some(cert) = &fhir.cert {
                all.push(path("uplink.fhir.cert", cert));
            }
            if let Some(key) = &fhir.key {
                all.push(path("uplink.fhir.key", key));
            }
            if let Some(auth) = &fhir.auth {
                super::auth::texts(auth, &mut all);
            }
            for crl in &fhir.crls {
                all.push(path("uplink.fhir.crls", crl));
            }
        }
        super::streams::texts(
            self.uplink.mqtt.as_ref(),
            self.uplink.kafka.as_ref(),
            &mut all,
        );
        for (i, d) in self.devices.iter().enumerate() {
            let key = |field: &str| format!("devices[{i}].{field}");
            all.push(text(key("id"), &d.id, MAX_ID_LEN));
            for (field, value, limit) in [
                ("patient_system", &d.patient_system, MAX_SYSTEM_LEN),
                ("patient_id", &d.patient_id, MAX_ID_LEN),
                ("patient_reference", &d.patient_reference, MAX_SYSTEM_LEN),
            ] {
                if let Some(value) = value {
                    all.push(text(key(field), value, limit));
                }
            }
        }
        if let Some(d) = &self.default_patient {
            for (field, value, limit) in [
                ("system", &d.system, MAX_SYSTEM_LEN),
                ("id", &d.id, MAX_ID_LEN),
                ("reference", &d.reference, MAX_SYSTEM_LEN),
            ] {
                if let Some(value) = value {
                    all.push(text(format!("default_patient.{field}"), value, limit));
                }
            }
        }
        for (i, l) in self.clinical.limits.iter().enumerate() {
            all.push(text(
                format!("clinical.limits[{i}].metric"),
                &l.metric,
                MAX_CODE_LEN,
            ));
            if let Some(unit) = &l.unit {
                all.push(text(
                    format!("clinical.limits[{i}].unit"),
                    unit,
                    MAX_UNIT_LEN,
                ));
            }
        }
        if let Some(audit) = &self.ops.audit_log {
            all.push(path("ops.audit_log", audit));
        }
        super::hl7::texts(sources.hl7.as_ref(), self.uplink.hl7.as_ref(), &mut all);
        if let Some(http) = &self.ops.http {
            for (i, h) in http.hosts.iter().enumerate() {
                all.push(text(format!("ops.http.hosts[{i}]"), h, MAX_SYSTEM_LEN));
            }
            if let Some(t) = &http.tls {
                all.push(path("ops.http.tls.cert", &t.cert));
                all.push(path("ops.http.tls.key", &t.key));
                if let Some(ca) = &t.client_ca {
                    all.push(path("ops.http.tls.client_ca", ca));
                }
            }
            if let Some(t) = &http.token_file {
                all.push(path("ops.http.token_file", t));
            }
        }
        if let Some(dir) = &self.profiles.packs_dir {
            all.push(path("profiles.packs_dir", dir));
        }
        for (i, k) in self.profiles.trusted_keys.iter().enumerate() {
            all.push(text(
                format!("profiles.trusted_keys[{i}].id"),
                &k.id,
                MAX_CODE_LEN,
            ));
            all.push(text(
                format!("profiles.trusted_keys[{i}].ed25519"),
                &k.ed25519,
                MAX_CODE_LEN,
            ));
        }
        all
    }

    /// Every string or path longer than its limit. Nothing else should look at a
    /// configuration that has one: other checks may quote a value, open a path or compile
    /// a profile.
    pub fn check_lengths(&self) -> Result<(), Vec<ConfigError>> {
        let too_long: Vec<ConfigError> = self
            .texts()
            .into_iter()
            .filter(|(_, len, limit)| len > limit)
            .map(|(key, _, limit)| err(&key, crate::limits::too_long_message(limit)))
            .collect();
        if too_long.is_empty() {
            Ok(())
        } else {
            Err(too_long)
        }
    }

    /// Checks what the types cannot, as far as the configuration alone can tell (see the
    /// module header for the rest). Returns every problem, each naming its key; when a
    /// string is too long, only those problems.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        self.check_lengths()?;
        let mut problems = Vec::new();
        let b = &self.buffer;
        if b.capacity == 0 {
            problems.push(err("buffer.capacity", "must be at least 1"));
        }
        if !(1..=100_000).contains(&b.commit_max_rows) {
            problems.push(err(
                "buffer.commit_max_rows",
                "must be between 1 and 100000",
            ));
        }
        if b.commit_linger_ms > 1000 {
            problems.push(err("buffer.commit_linger_ms", "must be at most 1000 ms"));
        }
        validate_key_files(b, &self.gateway.data_dir, &mut problems);
        if !(1..=super::MAX_WORKER_THREADS).contains(&self.gateway.worker_threads) {
            problems.push(err(
                "gateway.worker_threads",
                format!("must be between 1 and {}", super::MAX_WORKER_THREADS),
            ));
        }
        if let Some(id) = &self.gateway.id {
            if let Err(e) = check_gateway_id(id) {
                problems.push(err("gateway.id", e.to_string()));
            }
        }
        validate_profiles(&self.profiles, &mut problems);
        if let Some(sim) = &self.sources.sim {
            if sim.devices == 0 || sim.devices > 10_000 {
                problems.push(err("sources.sim.devices", "must be between 1 and 10000"));
            }
            if sim.interval_ms == 0 {
                problems.push(err("sources.sim.interval_ms", "must be at least 1"));
            }
        }
        if let Some(mqtt) = &self.sources.mqtt {
            validate_mqtt(mqtt, &mut problems);
        }
        if let Some(ble) = &self.sources.ble {
            validate_ble(ble, &mut problems);
        }
        let mut port_names = HashSet::new();
        for (i, port) in self.sources.serial.iter().enumerate() {
            validate_serial(i, port, &mut port_names, &mut problems);
        }
        let u = &self.uplink;
        if !(1..=10_000).contains(&u.batch_size) {
            problems.push(err("uplink.batch_size", "must be between 1 and 10000"));
        }
        if !(1..=64).contains(&u.in_flight) {
            problems.push(err("uplink.in_flight", "must be between 1 and 64"));
        }
        if u.batch_linger_ms > 10_000 {
            problems.push(err("uplink.batch_linger_ms", "must be at most 10000 ms"));
        }
        if u.retry_initial_ms == 0 || u.retry_initial_ms > u.retry_max_ms {
            problems.push(err(
                "uplink.retry_initial_ms",
                "must be at least 1 and at most uplink.retry_max_ms",
            ));
        }
        if let Some(mqtt) = &u.mqtt {
            super::streams::validate_mqtt(mqtt, &mut problems);
        }
        if let Some(kafka) = &u.kafka {
            super::streams::validate_kafka(kafka, &mut problems);
        }
        if let Some(hl7) = &u.hl7 {
            super::hl7::validate_uplink(hl7, &mut problems);
        }
        if let Some(hl7) = &self.sources.hl7 {
            super::hl7::validate_source(hl7, &mut problems);
        }
        if let Some(file) = &u.file {
            if file.rotate_bytes < 4096 {
                problems.push(err("uplink.file.rotate_bytes", "must be at least 4096"));
            }
        }
        if let Some(fhir) = &u.fhir {
            validate_fhir(fhir, &mut problems);
        }
        for (i, d) in self.devices.iter().enumerate() {
            let key = format!("devices[{i}]");
            if d.id.is_empty() {
                problems.push(err(&format!("{key}.id"), "must not be empty"));
            }
            match (&d.patient_system, &d.patient_id, &d.patient_reference) {
                (Some(_), Some(_), None) | (None, None, Some(_)) => {}
                _ => problems.push(err(
                    &key,
                    "give either patient_system and patient_id, or patient_reference",
                )),
            }
            for (field, value) in [
                ("patient_system", &d.patient_system),
                ("patient_id", &d.patient_id),
                ("patient_reference", &d.patient_reference),
            ] {
                if value.as_deref() == Some("") {
                    problems.push(err(&format!("{key}.{field}"), "must not be empty"));
                }
            }
            if d.user == Some(0xFF) {
                problems.push(err(
                    &format!("{key}.user"),
                    "255 means \"unknown user\" in BLE; use 0-254",
                ));
            }
        }
        if let Some(d) = &self.default_patient {
            match (&d.system, &d.id, &d.reference) {
                (Some(s), Some(v), None) if !s.is_empty() && !v.is_empty() => {}
                (None, None, Some(r)) if !r.is_empty() => {}
                _ => problems.push(err(
                    "default_patient",
                    "give either system and id, or reference",
                )),
            }
            if d.users.contains(&0xFF) {
                problems.push(err(
                    "default_patient.users",
                    "255 means \"unknown user\" in BLE; use 0-254",
                ));
            }
        }
        for (i, l) in self.clinical.limits.iter().enumerate() {
            if !(l.min.is_finite() && l.max.is_finite() && l.min < l.max) {
                problems.push(err(
                    &format!("clinical.limits[{i}]"),
                    "min and max must be numbers with min below max",
                ));
            }
        }
        if self.clinical.future_tolerance_s > 86_400 {
            problems.push(err(
                "clinical.future_tolerance_s",
                "must be at most 86400 (a day)",
            ));
        }
        validate_ops(&self.ops, &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

fn tls_paths(key: &str, tls: &TlsFiles, all: &mut Vec<Text>) {
    all.push(path(format!("{key}.ca"), &tls.ca));
    for crl in &tls.crls {
        all.push(path(format!("{key}.crls"), crl));
    }
    for (field, value) in [("cert", &tls.cert), ("key", &tls.key)] {
        if let Some(value) = value {
            all.push(path(format!("{key}.{field}"), value));
        }
    }
}

fn validate_profiles(p: &ProfilesConfig, problems: &mut Vec<ConfigError>) {
    if !(1024..=1024 * 1024 * 1024).contains(&p.max_pack_bytes) {
        problems.push(err(
            "profiles.max_pack_bytes",
            "must be between 1024 and 1073741824",
        ));
    }
    if !(1..=3600).contains(&p.reload_check_s) {
        problems.push(err("profiles.reload_check_s", "must be between 1 and 3600"));
    }
    let mut ids = HashSet::new();
    for (i, k) in p.trusted_keys.iter().enumerate() {
        let key = |f: &str| format!("profiles.trusted_keys[{i}].{f}");
        let id_ok = !k.id.is_empty()
            && k.id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !id_ok {
            problems.push(err(
                &key("id"),
                "must be lower-case letters, digits and dashes",
            ));
        } else if !ids.insert(k.id.as_str()) {
            problems.push(err(&key("id"), "is used by another trusted key"));
        }
        if k.ed25519.len() != 64 || !k.ed25519.bytes().all(|b| b.is_ascii_hexdigit()) {
            problems.push(err(
                &key("ed25519"),
                "must be the 32-byte public key as 64 hex digits",
            ));
        }
    }
}

fn validate_ble(ble: &BleSourceConfig, problems: &mut Vec<ConfigError>) {
    if ble.connect_timeout_s == 0 || ble.connect_timeout_s > 300 {
        problems.push(err(
            "sources.ble.connect_timeout_s",
            "must be between 1 and 300",
        ));
    }
    if ble.reconnect_initial_ms == 0 || ble.reconnect_initial_ms > ble.reconnect_max_ms {
        problems.push(err(
            "sources.ble.reconnect_initial_ms",
            "must be at least 1 and at most sources.ble.reconnect_max_ms",
        ));
    }
    if let Some(dir) = &ble.profiles_dir {
        if let Err(e) = std::fs::read_dir(dir) {
            problems.push(err(
                "sources.ble.profiles_dir",
                format!("cannot read directory {}: {e}", dir.display()),
            ));
        }
    }
    if ble.devices.is_empty() {
        problems.push(err(
            "sources.ble.devices",
            "list at least one [[sources.ble.devices]] (an address or a service)",
        ));
    }
    for (i, d) in ble.devices.iter().enumerate() {
        if d.address.is_some() == d.service.is_some() {
            problems.push(err(
                &format!("sources.ble.devices[{i}]"),
                "give exactly one of `address` or `service`",
            ));
        }
    }
}

fn validate_ops(ops: &OpsConfig, problems: &mut Vec<ConfigError>) {
    if let Some(path) = &ops.audit_log {
        if path.as_os_str().is_empty() || path.is_dir() {
            problems.push(err(
                "ops.audit_log",
                "must be a file path (the file is created if missing)",
            ));
        }
    }
    let Some(http) = &ops.http else { return };
    if http.listen.port() == 0 {
        problems.push(err(
            "ops.http.listen",
            "must name a port (e.g. 127.0.0.1:8642) so scrapers and technicians can find it",
        ));
    }
    if http.allow_from.is_empty() {
        problems.push(err(
            "ops.http.allow_from",
            "must list at least one network; [\"127.0.0.0/8\", \"::1/128\"] is this machine only",
        ));
    }
    if !http.listen.ip().is_loopback() && http.allow_from.iter().all(Cidr::is_loopback) {
        problems.push(err(
            "ops.http.listen",
            format!(
                "{} is not a loopback address: the status page and metrics name devices and queue \
                 state, so serving them beyond this machine must be explicit: list the client \
                 networks allowed in ops.http.allow_from (e.g. [\"10.20.0.0/16\"]), or listen on \
                 127.0.0.1",
                http.listen.ip()
            ),
        ));
    }
    if http.ready_staleness_s == 0 || http.ready_staleness_s > 7 * 24 * 3600 {
        problems.push(err(
            "ops.http.ready_staleness_s",
            "must be between 1 and 604800 (7 days)",
        ));
    }
    let beyond_loopback =
        !http.listen.ip().is_loopback() || !http.allow_from.iter().all(Cidr::is_loopback);
    let authenticated =
        http.tls.as_ref().is_some_and(|t| t.client_ca.is_some()) || http.token_file.is_some();
    if beyond_loopback && (http.tls.is_none() || !authenticated) {
        problems.push(err(
            "ops.http.tls",
            "serving beyond loopback needs HTTPS and a client check: set [ops.http.tls] cert and \
             key, and client_ca (client certificates) or ops.http.token_file (a token)",
        ));
    }
    if let Some(tls) = &http.tls {
        check_readable("ops.http.tls.cert", &tls.cert, problems);
        check_private_key("ops.http.tls.key", &tls.key, problems);
        if let Some(ca) = &tls.client_ca {
            check_readable("ops.http.tls.client_ca", ca, problems);
        }
    }
    if let Some(token) = &http.token_file {
        check_private_key("ops.http.token_file", token, problems);
    }
    for (i, h) in http.hosts.iter().enumerate() {
        let ok = !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        if !ok {
            problems.push(err(
                &format!("ops.http.hosts[{i}]"),
                "must be a host name or address, without a port",
            ));
        }
    }
    if !(1..=crate::limits::MAX_OPS_CONNECTIONS).contains(&http.max_connections_per_client) {
        problems.push(err(
            "ops.http.max_connections_per_client",
            format!(
                "must be between 1 and {}",
                crate::limits::MAX_OPS_CONNECTIONS
            ),
        ));
    }
}

fn validate_mqtt(mqtt: &MqttSourceConfig, problems: &mut Vec<ConfigError>) {
    match url::Url::parse(&mqtt.url) {
        Err(e) => problems.push(err(
            "sources.mqtt.url",
            format!("not a valid URL ({e}): expected mqtt://host:port or mqtts://host:port"),
        )),
        Ok(u) => {
            match u.scheme() {
                "mqtt" => {}
                "mqtts" => {
                    if mqtt.tls.is_none() {
                        problems.push(err(
                            "sources.mqtt.tls",
                            "mqtts:// needs a [sources.mqtt.tls] table with at least `ca`",
                        ));
                    }
                }
                other => problems.push(err(
                    "sources.mqtt.url",
                    format!("scheme {other:?} is not mqtt or mqtts"),
                )),
            }
            if u.host_str().is_none_or(str::is_empty) {
                problems.push(err("sources.mqtt.url", "has no host"));
            }
        }
    }
    if mqtt.topics.is_empty() || mqtt.topics.iter().any(String::is_empty) {
        problems.push(err(
            "sources.mqtt.topics",
            "needs at least one non-empty topic filter",
        ));
    }
    if mqtt.keep_alive_s < 5 {
        problems.push(err(
            "sources.mqtt.keep_alive_s",
            "must be at least 5 seconds",
        ));
    }
    if mqtt.commit_linger_ms > 1000 {
        problems.push(err(
            "sources.mqtt.commit_linger_ms",
            "must be at most 1000 ms",
        ));
    }
    if let Some(tls) = &mqtt.tls {
        check_readable("sources.mqtt.tls.ca", &tls.ca, problems);
        for (i, crl) in tls.crls.iter().enumerate() {
            check_readable(&format!("sources.mqtt.tls.crls[{i}]"), crl, problems);
        }
        match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                check_readable("sources.mqtt.tls.cert", cert, problems);
                check_private_key("sources.mqtt.tls.key", key, problems);
            }
            (None, None) => {}
            _ => problems.push(err(
                "sources.mqtt.tls",
                "give both `cert` and `key` for mutual TLS, or neither",
            )),
        }
    }
}

fn validate_serial<'a>(
    i: usize,
    port: &'a SerialPortConfig,
    earlier_names: &mut HashSet<&'a str>,
    problems: &mut Vec<ConfigError>,
) {
    let key = |field: &str| format!("sources.serial[{i}].{field}");
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.len() <= 64
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if !valid_name(&port.name) {
        problems.push(err(
            &key("name"),
            "must be 1 to 64 ASCII letters, digits, '-', '_' or '.'",
        ));
    } else if !earlier_names.insert(&port.name) {
        problems.push(err(
            &key("name"),
            format!("serial port {:?} is configured twice", port.name),
        ));
    }
    match (&port.path, &port.usb) {
        (Some(_), None) => {
            if port.usb_serial.is_some() {
                problems.push(err(&key("usb_serial"), "only with `usb`"));
            }
        }
        (None, Some(_)) => {}
        _ => problems.push(err(
            &format!("sources.serial[{i}]"),
            "give exactly one of `path` or `usb`",
        )),
    }
    match port.protocol {
        SerialProtocol::Line => {
            if port.profile.is_none() {
                problems.push(err(
                    &key("profile"),
                    "a `line` port needs a line profile id (e.g. line-nonin-ascii)",
                ));
            }
        }
        SerialProtocol::Firmware => {
            for (field, set) in [
                ("profile", port.profile.is_some()),
                ("profiles_dir", port.profiles_dir.is_some()),
                ("device_id", port.device_id.is_some()),
                ("device_utc_offset", port.device_utc_offset.is_some()),
            ] {
                if set {
                    problems.push(err(
                        &key(field),
                        "only for `line` ports: a firmware device identifies itself and syncs its clock",
                    ));
                }
            }
        }
    }
    if let Some(id) = &port.device_id {
        if id.is_empty() || id.chars().any(char::is_control) {
            problems.push(err(
                &key("device_id"),
                format!("must be 1 to {MAX_ID_LEN} bytes of printable characters"),
            ));
        }
    }
    if port.baud.is_some_and(|b| !(50..=4_000_000).contains(&b)) {
        problems.push(err(&key("baud"), "must be between 50 and 4000000"));
    }
    if port.data_bits.is_some_and(|b| !(5..=8).contains(&b)) {
        problems.push(err(&key("data_bits"), "must be 5, 6, 7 or 8"));
    }
    if port.stop_bits.is_some_and(|b| !(1..=2).contains(&b)) {
        problems.push(err(&key("stop_bits"), "must be 1 or 2"));
    }
    if !(250..=600_000).contains(&port.reconnect_max_ms) {
        problems.push(err(
            &key("reconnect_max_ms"),
            "must be between 250 and 600000",
        ));
    }
}

fn validate_fhir(fhir: &FhirUplinkConfig, problems: &mut Vec<ConfigError>) {
    match url::Url::parse(&fhir.base_url) {
        Err(e) => problems.push(err(
            "uplink.fhir.base_url",
            format!("not a valid URL ({e})"),
        )),
        Ok(u) if u.scheme() != "https" => problems.push(err(
            "uplink.fhir.base_url",
            format!(
                "scheme {:?} is not https: the uplink speaks only HTTPS",
                u.scheme()
            ),
        )),
        Ok(u) if u.host_str().is_none_or(str::is_empty) => {
            problems.push(err("uplink.fhir.base_url", "has no host"))
        }
        Ok(_) => {}
    }
    check_readable("uplink.fhir.ca", &fhir.ca, problems);
    match (&fhir.cert, &fhir.key) {
        (Some(cert), Some(key)) => {
            check_readable("uplink.fhir.cert", cert, problems);
            check_private_key("uplink.fhir.key", key, problems);
        }
        (None, None) if fhir.auth.is_some() => {}
        (None, None) => problems.push(err(
            "uplink.fhir",
            "give cert and key (mutual TLS), or an [uplink.fhir.auth] table, or both: the \
             gateway does not send to a server without authenticating",
        )),
        (Some(_), None) => problems.push(err("uplink.fhir.key", "is required with cert")),
        (None, Some(_)) => problems.push(err("uplink.fhir.cert", "is required with key")),
    }
    for (i, crl) in fhir.crls.iter().enumerate() {
        check_readable(&format!("uplink.fhir.crls[{i}]"), crl, problems);
    }
    if fhir.timeout_s == 0 || fhir.timeout_s > 600 {
        problems.push(err("uplink.fhir.timeout_s", "must be between 1 and 600"));
    }
    if let Some(auth) = &fhir.auth {
        super::auth::validate(auth, problems);
    }
    if fhir
        .max_entries
        .is_some_and(|n| n < super::MIN_BUNDLE_ENTRIES)
    {
        problems.push(err(
            "uplink.fhir.max_entries",
            format!(
                "must be at least {} (the gateway's Device, a measuring Device and one Observation)",
                super::MIN_BUNDLE_ENTRIES
            ),
        ));
    }
    if fhir.patient_reference == super::PatientReference::Conditional
        && fhir.bundle_type == super::BundleType::Batch
    {
        problems.push(err(
            "uplink.fhir.patient_reference",
            "\"conditional\" needs bundle_type = \"transaction\": servers resolve conditional references only inside a transaction",
        ));
    }
    if fhir
        .max_request_bytes
        .is_some_and(|n| n < super::MIN_REQUEST_BYTES)
    {
        problems.push(err(
            "uplink.fhir.max_request_bytes",
            format!(
                "must be at least {} (one Observation and its Devices)",
                super::MIN_REQUEST_BYTES
            ),
        ));
    }
}

/// A path still starting with `${CREDENTIALS_DIRECTORY}/` after [`Config::load`]: the
/// variable was not set.
fn unresolved_credential(key: &str, path: &Path, problems: &mut Vec<ConfigError>) -> bool {
    let unresolved = path
        .to_str()
        .is_some_and(|p| p.starts_with(CREDENTIALS_PREFIX));
    if unresolved {
        problems.push(err(
            key,
            format!(
                "{} names a systemd credential, but $CREDENTIALS_DIRECTORY is not set: \
                 start the gateway with its systemd unit (LoadCredential=), or, to check the \
                 file by hand, set CREDENTIALS_DIRECTORY to the directory holding the files",
                path.display()
            ),
        ));
    }
    unresolved
}

/// A certificate (readable) or, with `private`, a private key (readable by its owner only).
pub(super) fn check_readable_key(
    key: &str,
    path: &Path,
    private: bool,
    problems: &mut Vec<ConfigError>,
) {
    if private {
        check_private_key(key, path, problems);
    } else {
        check_readable(key, path, problems);
    }
}

pub(super) fn check_readable(key: &str, path: &Path, problems: &mut Vec<ConfigError>) {
    if unresolved_credential(key, path, problems) {
        return;
    }
    if let Err(e) = std::fs::File::open(path) {
        problems.push(err(key, format!("cannot read {}: {e}", path.display())));
    }
}

/// The buffer key: outside `data_dir`; private when it exists (it is created at the first
/// start); the previous keys must exist and be private.
fn validate_key_files(b: &BufferConfig, data_dir: &Path, problems: &mut Vec<ConfigError>) {
    if is_within(&b.key_file, data_dir) {
        problems.push(err(
            "buffer.key_file",
            format!(
                "must not be under gateway.data_dir ({}): a key kept beside the data it seals protects nothing",
                data_dir.display()
            ),
        ));
    }
    if !unresolved_credential("buffer.key_file", &b.key_file, problems) && b.key_file.exists() {
        check_private_key("buffer.key_file", &b.key_file, problems);
    }
    for (i, path) in b.previous_key_files.iter().enumerate() {
        check_private_key(&format!("buffer.previous_key_files[{i}]"), path, problems);
    }
}

/// Whether `path` is `dir` or inside it (both made absolute against the working
/// directory, and resolved through links where they exist).
fn is_within(path: &Path, dir: &Path) -> bool {
    let absolute = |p: &Path| {
        let p = std::env::current_dir()
            .map(|cwd| cwd.join(p))
            .unwrap_or_else(|_| p.to_path_buf());
        // Resolve what exists (the directory, or the file's directory) through links.
        match (
            p.canonicalize(),
            p.parent().and_then(|d| d.canonicalize().ok()),
            p.file_name(),
        ) {
            (Ok(c), _, _) => c,
            (Err(_), Some(parent), Some(name)) => parent.join(name),
            _ => p,
        }
    };
    absolute(path).starts_with(absolute(dir))
}

/// Private keys must exist and be accessible to nobody but their owner and the gateway's
/// own user (see [`crate::keyfile`]: mode 0600 or stricter, or an equivalent POSIX ACL such as
/// the one systemd puts on a credential).
pub fn check_private_key(key: &str, path: &Path, problems: &mut Vec<ConfigError>) {
    if unresolved_credential(key, path, problems) {
        return;
    }
    if let Err(e) = crate::keyfile::check_private(path) {
        problems.push(err(key, Chain(&e).to_string()));
    }
}
