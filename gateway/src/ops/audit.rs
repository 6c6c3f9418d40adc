//! The audit log: security-relevant events, one JSON object per line, in a file of its own
//! that the gateway only ever appends to (`O_APPEND`; never truncated, rewritten or rotated
//! by the gateway). The file is its user's alone: created with mode 0600 (and its directory
//! 0700), and an existing one open to group or others is restricted when it is opened
//! ([`crate::fsmode`]), which the log says.
//!
//! # Format
//! Every line is one JSON object with, in this order, `time` (RFC 3339, UTC, milliseconds),
//! `kind`, `gateway` (the gateway id), then the fields of the kind:
//!
//! | kind | fields |
//! | --- | --- |
//! | `gateway_started` | `version`, `config_sha256` |
//! | `gateway_stopped` | — |
//! | `config_changed` | `previous_sha256` (null on the first start with this data directory), `sha256`, `sections` (top-level config tables that differ) |
//! | `certificate_problem` | `usage` (config key), `path`, `subject`, `not_after`, `problem` (`expired`, `not_yet_valid`, `expires_soon`, `unreadable`) |
//! | `tls_failure` | `peer` (`uplink:fhir`, `source:mqtt`), `cause` (a label: `unknown_ca`, `bad_certificate`, `certificate_revoked`, `peer_unknown_issuer`, `peer_expired`, `no_tls12_or_13`, …, see `tls::cause_label`), `reason`, `count` |
//! | `auth_failure` | `uplink`, `cause` (`token_refused`, `token_endpoint_unreachable`, `token_response_invalid`, `discovery_failed`, `assertion_unsigned`, `static_token_refused`, `server_401`, `server_403`), `reason` (no secret, no token), `count`: rows stay buffered and are retried |
//! | `connection_refused` | `endpoint` (`ops` or `source:mqtt`), `direction` (`inbound`: this gateway refused a client; `outbound`: a server refused this gateway), `address`, `reason`, `count` |
//! | `payload_dead_lettered` | `source`, `origin`, `count`, `bytes` (total size); one line per origin per buffer commit |
//! | `readings_dead_lettered` | `uplink`, `count`, `cause` (`http_NNN`, `refused`, `undecodable_row`) |
//! | `buffer_quarantined` | `path` (where the damaged database was moved), `reason` |
//! | `buffer_warning` | `message` (a replaced, missing or older database found at start) |
//! | `buffer_key_created` | `path` |
//! | `buffer_key_rotated` | `rows` (sealed again under the new key) |
//! | `buffer_salvaged` | `from`, `found` (readings read), `queued` (of them, not yet in the buffer) |
//! | `storage_failed` | `during` (`commit`, `delete`), `error` (`disk_full`, `io`, `corrupt`, `other`) |
//! | `storage_recovered` | `after_s` |
//! | `low_space` | `free_bytes`, `floor_bytes`: new readings refused |
//! | `space_ok` | `free_bytes`: new readings accepted again |
//! | `pack_installed` | `name`, `version`, `key_id`, `previous` (`name version` of the pack it replaced, or null) |
//! | `pack_refused` | `pack` (the directory given), `refusal` (a label: `unsigned`, `unknown_key`, `bad_signature`, `changed_after_signing`, `extra_file`, `missing_file`, `older_version`, `oversized`, `path_escapes`, …), `reason` |
//! | `pack_rolled_back` | `from`, `to` (`name version` each) |
//! | `profiles_reloaded` | `pack` (`name version`, or null for the built-in profiles only), `profiles` (vendor JSON profiles now in use) |
//! | `profiles_reload_failed` | `pack`, `reason`: the previous profiles stay in use |
//! | `input_lost` | `source`, `origin`, `readings`, `payloads` (undecodable ones that were to be dead-lettered): not stored, and the device cannot resend them (a line device's, still waiting for room in the buffer when the gateway stopped) |
//!
//! Repeats: a `tls_failure`, `auth_failure` or `connection_refused` with the same peer (or
//! uplink, or endpoint and address) as one written less than [`REPEAT_WINDOW`] ago is not written at once; it is
//! counted, and the next line for that key — or a summary at shutdown — carries `count`, the
//! number of occurrences it stands for. A port scanner or a server down for a day thus costs a
//! line a minute, and no occurrence goes uncounted.
//!
//! No patient data: ids of devices, sources and uplinks, counts, HTTP statuses and TLS
//! reasons only; never a value, a patient identifier or a reading's identifier (which embeds
//! the patient's). Rotate with logrotate's `copytruncate` or by moving the file and restarting.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Repeats of a rate-limited event within this window are counted, not written.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(60);

/// One security-relevant event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    /// The gateway started with this configuration.
    GatewayStarted {
        /// Gateway version.
        version: &'a str,
        /// SHA-256 of the effective configuration.
        config_sha256: &'a str,
    },
    /// The gateway stopped cleanly.
    GatewayStopped,
    /// The effective configuration differs from the last start's.
    ConfigChanged {
        /// The last start's hash, `None` on the first start.
        previous_sha256: Option<&'a str>,
        /// This start's hash.
        sha256: &'a str,
        /// The top-level tables that differ.
        sections: &'a [String],
    },
    /// A configured certificate is expired, not yet valid, expiring soon or unreadable.
    CertificateProblem {
        /// The config key naming the file.
        usage: &'a str,
        /// The file.
        path: &'a Path,
        /// The certificate's subject (empty when unreadable).
        subject: &'a str,
        /// Its notAfter, if read.
        not_after: Option<OffsetDateTime>,
        /// `expired`, `not_yet_valid`, `expires_soon` or `unreadable`.
        problem: &'a str,
    },
    /// A TLS handshake failed.
    TlsFailure {
        /// Who the gateway talked to: `uplink:fhir`, `source:mqtt`.
        peer: &'a str,
        /// Why, as a label (`tls::cause_label`).
        cause: &'a str,
        /// Why, as `tls::explain` puts it.
        reason: &'a str,
    },
    /// An uplink could not authorize its requests: no access token, or the server refused
    /// it. The rows stay buffered.
    AuthFailure {
        /// The uplink (`fhir`).
        uplink: &'a str,
        /// Why, as a label (`uplink::auth::AuthError::label`, `server_401`, `server_403`).
        cause: &'a str,
        /// Why, in words (never a secret or a token).
        reason: &'a str,
    },
    /// A connection was refused, by this gateway or by a server.
    ConnectionRefused {
        /// `ops` (this gateway's server) or `source:mqtt` (the broker refused the gateway).
        endpoint: &'a str,
        /// `inbound` or `outbound`.
        direction: &'a str,
        /// The client's address, for inbound refusals.
        address: Option<IpAddr>,
        /// Why.
        reason: &'a str,
    },
    /// Undecodable payloads from one origin were dead-lettered in one buffer commit.
    PayloadDeadLettered {
        /// The source name.
        source: &'a str,
        /// Where in the source (e.g. `mqtt:<topic>`).
        origin: &'a str,
        /// How many payloads.
        count: usize,
        /// Their total size.
        bytes: usize,
    },
    /// Readings of one device refused by one admission check (a unit that does not fit its
    /// metric, an implausible value) were dead-lettered in one buffer commit.
    ReadingsRefused {
        /// The source name.
        source: &'a str,
        /// The device (`DeviceId::key()`).
        device: &'a str,
        /// `unit` or `plausibility`.
        check: &'a str,
        /// How many.
        count: usize,
    },
    /// Readings were filed under the patient their payload named (the source trusts payload
    /// patients: `trust_payload_patient`). Rate-limited per source.
    PayloadPatientTrusted {
        /// The source name.
        source: &'a str,
        /// Readings in this commit.
        readings: usize,
    },
    /// Held (unbound) readings were released to a patient by `vitalbridge devices bind`.
    UnboundReleased {
        /// The device.
        device: &'a str,
        /// The device user index, if the release was for one.
        user: Option<u8>,
        /// Readings released.
        readings: u64,
    },
    /// A source could not store input that its device cannot send again.
    InputLost {
        /// The source name.
        source: &'a str,
        /// Where in the source (e.g. `serial:<port>`).
        origin: &'a str,
        /// Readings lost.
        readings: u64,
        /// Undecodable payloads lost (they were to be dead-lettered).
        payloads: u64,
    },
    /// The uplink dead-lettered readings.
    ReadingsDeadLettered {
        /// The uplink (`uplink:fhir`).
        uplink: &'a str,
        /// How many.
        count: usize,
        /// `http_NNN`, `refused` or `undecodable_row`.
        cause: &'a str,
    },
    /// A damaged buffer database was moved aside at start.
    BufferQuarantined {
        /// Where it was moved.
        path: &'a Path,
        /// What was wrong.
        reason: &'a str,
    },
    /// Something about the buffer at start that an operator must hear about.
    BufferWarning {
        /// What (no patient data: paths, ids and counts).
        message: &'a str,
    },
    /// The buffer key file was created.
    BufferKeyCreated {
        /// The key file.
        path: &'a Path,
    },
    /// The buffer was sealed again under a new key.
    BufferKeyRotated {
        /// How many rows.
        rows: u64,
    },
    /// Readings were recovered from a quarantined database.
    BufferSalvaged {
        /// The quarantined database.
        from: &'a Path,
        /// Readings read from it.
        found: u64,
        /// Of them, put back in the queue (the others were still there).
        queued: u64,
    },
    /// Buffer writes started failing: sources are no longer acknowledged.
    StorageFailed {
        /// `commit` or `delete`.
        during: &'a str,
        /// `disk_full`, `io`, `corrupt` or `other`.
        error: &'a str,
    },
    /// Buffer writes succeed again.
    StorageRecovered {
        /// How long the failure lasted, in seconds.
        after_s: u64,
    },
    /// Free space fell below the floor: new readings are refused.
    LowSpace {
        /// Free bytes.
        free_bytes: u64,
        /// The floor.
        floor_bytes: u64,
    },
    /// Free space is above the floor again.
    SpaceOk {
        /// Free bytes.
        free_bytes: u64,
    },
    /// A signed profile pack was installed and activated.
    PackInstalled {
        /// Its name.
        name: &'a str,
        /// Its version.
        version: &'a str,
        /// The key that signed it.
        key_id: &'a str,
        /// `name version` of the pack it replaced.
        previous: Option<&'a str>,
    },
    /// A profile pack was refused.
    PackRefused {
        /// The directory given.
        pack: &'a str,
        /// A stable label of the refusal.
        refusal: &'a str,
        /// The message.
        reason: &'a str,
    },
    /// An older installed pack was made active again.
    PackRolledBack {
        /// `name version` of the pack that was active.
        from: &'a str,
        /// `name version` of the pack now active.
        to: &'a str,
    },
    /// The running gateway loaded a newly activated pack's profiles.
    ProfilesReloaded {
        /// `name version`, or `None` for the built-in profiles only.
        pack: Option<&'a str>,
        /// Vendor JSON profiles now in use.
        profiles: usize,
    },
    /// The running gateway could not load a newly activated pack; the previous profiles
    /// stay in use.
    ProfilesReloadFailed {
        /// `name version`, or the link's target when no manifest could be read.
        pack: &'a str,
        /// Why.
        reason: &'a str,
    },
}

impl Event<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Event::GatewayStarted { .. } => "gateway_started",
            Event::GatewayStopped => "gateway_stopped",
            Event::ConfigChanged { .. } => "config_changed",
            Event::CertificateProblem { .. } => "certificate_problem",
            Event::TlsFailure { .. } => "tls_failure",
            Event::AuthFailure { .. } => "auth_failure",
            Event::ConnectionRefused { .. } => "connection_refused",
            Event::PayloadDeadLettered { .. } => "payload_dead_lettered",
            Event::InputLost { .. } => "input_lost",
            Event::ReadingsRefused { .. } => "readings_refused",
            Event::PayloadPatientTrusted { .. } => "payload_patient_trusted",
            Event::UnboundReleased { .. } => "unbound_released",
            Event::ReadingsDeadLettered { .. } => "readings_dead_lettered",
            Event::BufferQuarantined { .. } => "buffer_quarantined",
            Event::BufferWarning { .. } => "buffer_warning",
            Event::BufferKeyCreated { .. } => "buffer_key_created",
            Event::BufferKeyRotated { .. } => "buffer_key_rotated",
            Event::BufferSalvaged { .. } => "buffer_salvaged",
            Event::StorageFailed { .. } => "storage_failed",
            Event::StorageRecovered { .. } => "storage_recovered",
            Event::LowSpace { .. } => "low_space",
            Event::SpaceOk { .. } => "space_ok",
            Event::PackInstalled { .. } => "pack_installed",
            Event::PackRefused { .. } => "pack_refused",
            Event::PackRolledBack { .. } => "pack_rolled_back",
            Event::ProfilesReloaded { .. } => "profiles_reloaded",
            Event::ProfilesReloadFailed { .. } => "profiles_reload_failed",
        }
    }

    /// The key repeats are counted under, for rate-limited kinds.
    fn repeat_key(&self) -> Option<String> {
        match self {
            Event::TlsFailure { peer, .. } => Some(format!("tls {peer}")),
            Event::AuthFailure { uplink, .. } => Some(format!("auth {uplink}")),
            Event::PayloadPatientTrusted { source, .. } => {
                Some(format!("payload patient {source}"))
            }
            Event::ConnectionRefused {
                endpoint, address, ..
            } => Some(format!(
                "refused {endpoint} {}",
                address.map(|a| a.to_string()).unwrap_or_default()
            )),
            _ => None,
        }
    }

    fn fields(&self) -> Map<String, Value> {
        let value = match self {
            Event::GatewayStarted {
                version,
                config_sha256,
            } => json!({"version": version, "config_sha256": config_sha256}),
            Event::GatewayStopped => json!({}),
            Event::ConfigChanged {
                previous_sha256,
                sha256,
                sections,
            } => {
                json!({"previous_sha256": previous_sha256, "sha256": sha256, "sections": sections})
            }
            Event::CertificateProblem {
                usage,
                path,
                subject,
                not_after,
                problem,
            } => json!({
                "usage": usage,
                "path": path.display().to_string(),
                "subject": subject,
                "not_after": not_after.and_then(|t| t.format(&Rfc3339).ok()),
                "problem": problem,
            }),
            Event::TlsFailure {
                peer,
                cause,
                reason,
            } => json!({"peer": peer, "cause": cause, "reason": reason}),
            Event::AuthFailure {
                uplink,
                cause,
                reason,
            } => json!({"uplink": uplink, "cause": cause, "reason": reason}),
            Event::ConnectionRefused {
                endpoint,
                direction,
                address,
                reason,
            } => json!({
                "endpoint": endpoint,
                "direction": direction,
                "address": address.map(|a| a.to_string()),
                "reason": reason,
            }),
            Event::PayloadDeadLettered {
                source,
                origin,
                count,
                bytes,
            } => json!({"source": source, "origin": origin, "count": count, "bytes": bytes}),
            Event::ReadingsRefused {
                source,
                device,
                check,
                count,
            } => json!({"source": source, "device": device, "check": check, "count": count}),
            Event::PayloadPatientTrusted { source, readings } => {
                json!({"source": source, "readings": readings})
            }
            Event::UnboundReleased {
                device,
                user,
                readings,
            } => json!({"device": device, "user": user, "readings": readings}),
            Event::InputLost {
                source,
                origin,
                readings,
                payloads,
            } => {
                json!({"source": source, "origin": origin, "readings": readings, "payloads": payloads})
            }
            Event::ReadingsDeadLettered {
                uplink,
                count,
                cause,
            } => json!({"uplink": uplink, "count": count, "cause": cause}),
            Event::BufferQuarantined { path, reason } => {
                json!({"path": path.display().to_string(), "reason": reason})
            }
            Event::BufferWarning { message } => json!({ "message": message }),
            Event::BufferKeyCreated { path } => json!({"path": path.display().to_string()}),
            Event::BufferKeyRotated { rows } => json!({ "rows": rows }),
            Event::BufferSalvaged {
                from,
                found,
                queued,
            } => json!({"from": from.display().to_string(), "found": found, "queued": queued}),
            Event::StorageFailed { during, error } => json!({"during": during, "error": error}),
            Event::StorageRecovered { after_s } => json!({ "after_s": after_s }),
            Event::LowSpace {
                free_bytes,
                floor_bytes,
            } => json!({"free_bytes": free_bytes, "floor_bytes": floor_bytes}),
            Event::SpaceOk { free_bytes } => json!({ "free_bytes": free_bytes }),
            Event::PackInstalled {
                name,
                version,
                key_id,
                previous,
            } => json!({"name": name, "version": version, "key_id": key_id, "previous": previous}),
            Event::PackRefused {
                pack,
                refusal,
                reason,
            } => json!({"pack": pack, "refusal": refusal, "reason": reason}),
            Event::PackRolledBack { from, to } => json!({"from": from, "to": to}),
            Event::ProfilesReloaded { pack, profiles } => {
                json!({"pack": pack, "profiles": profiles})
            }
            Event::ProfilesReloadFailed { pack, reason } => {
                json!({"pack": pack, "reason": reason})
            }
        };
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }
}

/// Formats one audit line (without the newline).
pub fn line(
    time: OffsetDateTime,
    gateway: &str,
    kind: &str,
    fields: Map<String, Value>,
    count: Option<u64>,
) -> String {
    let mut object = Map::new();
    let time = time
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(time.millisecond() as u32 * 1_000_000)
        .unwrap_or(time);
    object.insert(
        "time".into(),
        Value::String(time.format(&Rfc3339).unwrap_or_default()),
    );
    object.insert("kind".into(), Value::String(kind.to_owned()));
    object.insert("gateway".into(), Value::String(gateway.to_owned()));
    object.extend(fields);
    if let Some(count) = count {
        object.insert("count".into(), Value::from(count));
    }
    escape_invisible(&Value::Object(object).to_string())
}

/// Whether `c` changes how text around it reads without being seen itself, or ends a line
/// for some readers though JSON allows it raw in a string: bidirectional embeddings,
/// overrides and isolates (U+202A–U+202E, U+2066–U+2069), marks (U+200E, U+200F, U+061C),
/// zero-width characters (U+200B–U+200D, U+2060, U+FEFF), and the line and paragraph
/// separators U+2028 and U+2029.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// A JSON text with every [`is_invisible`] character written as a `\uXXXX` escape: the same
/// JSON value, but a device id carrying U+202E reads in a terminal as what it is, and a
/// U+2028 cannot split a line for a reader that takes it as a line end. (serde_json escapes
/// only what JSON requires: `"`, `\\` and C0 controls.) Such characters can only be inside
/// strings, so an escape is always valid there.
fn escape_invisible(json: &str) -> String {
    if !json.chars().any(is_invisible) {
        return json.to_owned();
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if is_invisible(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// Why the audit log could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the audit log {}", .path.display())]
pub struct AuditError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

#[derive(Debug, Default)]
struct Repeat {
    /// When a line for this key was last written.
    written: Option<Instant>,
    /// Occurrences since then that were not written.
    pending: u64,
    /// The latest of them: its time, kind and fields.
    latest: Option<(OffsetDateTime, &'static str, Map<String, Value>)>,
}

#[derive(Debug)]
struct Inner {
    gateway: String,
    path: PathBuf,
    file: Mutex<File>,
    repeats: Mutex<HashMap<String, Repeat>>,
}

/// A handle to the audit log; cheap to clone. [`Audit::default`] records nothing (for tests
/// and tools that run no gateway).
#[derive(Debug, Clone, Default)]
pub struct Audit {
    inner: Option<Arc<Inner>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Audit {
    /// Opens (creating, mode 0600, with its directory, 0700) the audit log at `path` for
    /// appending; an existing file open to group or others for reading is restricted to its
    /// owner. Refused: a symbolic link at `path` (the log would be written wherever it
    /// points), anything but a regular file, and an existing file that group or others may
    /// write (its lines cannot be trusted to be the gateway's: check it, then fix its mode).
    pub fn open(path: &Path, gateway: &str) -> Result<Audit, AuditError> {
        use std::io::{Error, ErrorKind};
        use std::os::unix::fs::PermissionsExt;
        let fail = |source| AuditError {
            path: path.into(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::fsmode::create_private_dir_all(dir).map_err(fail)?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(fail(Error::new(
                    ErrorKind::PermissionDenied,
                    "it is a symbolic link: refused (configure the real path)",
                )))
            }
            Ok(m) if !m.file_type().is_file() => {
                return Err(fail(Error::new(
                    ErrorKind::InvalidInput,
                    "not a regular file: refused",
                )))
            }
            Ok(m) if m.permissions().mode() & 0o022 != 0 => {
                return Err(fail(Error::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "mode {:04o} lets group or others write it, so its lines may not be \
                         the gateway's: check it, then `chmod 600` it",
                        m.permissions().mode() & 0o7777
                    ),
                )))
            }
            _ => {}
        }
        let file = crate::fsmode::open_private_append(path).map_err(fail)?;
        Ok(Audit {
            inner: Some(Arc::new(Inner {
                gateway: gateway.to_owned(),
                path: path.into(),
                file: Mutex::new(file),
                repeats: Mutex::new(HashMap::new()),
            })),
        })
    }

    /// The file, if this handle writes one.
    pub fn path(&self) -> Option<&Path> {
        self.inner.as_deref().map(|i| i.path.as_path())
    }

    /// Records an event (see the module docs for what is written when).
    pub fn record(&self, event: Event<'_>) {
        let Some(inner) = &self.inner else { return };
        let now = OffsetDateTime::now_utc();
        let (kind, fields) = (event.kind(), event.fields());
        let Some(key) = event.repeat_key() else {
            inner.write(&line(now, &inner.gateway, kind, fields, None));
            return;
        };
        let count = {
            let mut repeats = lock(&inner.repeats);
            let r = repeats.entry(key).or_default();
            if r.written.is_some_and(|t| t.elapsed() < REPEAT_WINDOW) {
                r.pending += 1;
                r.latest = Some((now, kind, fields));
                return;
            }
            let count = r.pending + 1;
            *r = Repeat {
                written: Some(Instant::now()),
                pending: 0,
                latest: None,
            };
            count
        };
        inner.write(&line(now, &inner.gateway, kind, fields, Some(count)));
    }

    /// Writes the occurrences still being counted (at shutdown).
    pub fn flush_repeats(&self) {
        let Some(inner) = &self.inner else { return };
        let pending: Vec<_> = lock(&inner.repeats)
            .values_mut()
            .filter(|r| r.pending > 0)
            .filter_map(|r| {
                let count = std::mem::take(&mut r.pending);
                r.latest.take().map(|latest| (latest, count))
            })
            .collect();
        for ((time, kind, fields), count) in pending {
            inner.write(&line(time, &inner.gateway, kind, fields, Some(count)));
        }
    }
}

impl Inner {
    fn write(&self, text: &str) {
        let mut bytes = Vec::with_capacity(text.len() + 1);
        bytes.extend_from_slice(text.as_bytes());
        bytes.push(b'\n');
        // One write of the whole line on an O_APPEND file: lines never interleave.
        if let Err(e) = lock(&self.file).write_all(&bytes) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write to the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is one JSON object"))
            .collect()
    }

    #[test]
    fn a_line_starts_with_time_kind_and_gateway_and_carries_the_fields() {
        let t = time::macros::datetime!(2026-03-04 05:06:07.123456 +02:00);
        let event = Event::ReadingsDeadLettered {
            uplink: "uplink:fhir",
            count: 3,
            cause: "http_422",
        };
        assert_eq!(
            line(t, "hub-1", event.kind(), event.fields(), None),
            r#"{"time":"2026-03-04T03:06:07.123Z","kind":"readings_dead_lettered","gateway":"hub-1","uplink":"uplink:fhir","count":3,"cause":"http_422"}"#
        );
    }

    #[test]
    fn every_kind_renders_its_documented_fields() {
        let path = Path::new("/etc/vitalbridge/gateway.pem");
        let sections = vec!["uplink".to_owned()];
        let cases: Vec<(Event<'_>, &str, &[&str])> = vec![
            (
                Event::GatewayStarted {
                    version: "0.1.0",
                    config_sha256: "ab",
                },
                "gateway_started",
                &["version", "config_sha256"],
            ),
            (Event::GatewayStopped, "gateway_stopped", &[]),
            (
                Event::ConfigChanged {
                    previous_sha256: None,
                    sha256: "cd",
                    sections: &sections,
                },
                "config_changed",
                &["previous_sha256", "sha256", "sections"],
            ),
            (
                Event::CertificateProblem {
                    usage: "uplink.fhir.cert",
                    path,
                    subject: "CN=hub",
                    not_after: None,
                    problem: "expired",
                },
                "certificate_problem",
                &["usage", "path", "subject", "not_after", "problem"],
            ),
            (
                Event::TlsFailure {
                    peer: "uplink:fhir",
                    cause: "unknown_ca",
                    reason: "x",
                },
                "tls_failure",
                &["peer", "cause", "reason"],
            ),
            (
                Event::AuthFailure {
                    uplink: "fhir",
                    cause: "token_refused",
                    reason: "x",
                },
                "auth_failure",
                &["uplink", "cause", "reason"],
            ),
            (
                Event::ConnectionRefused {
                    endpoint: "ops",
                    direction: "inbound",
                    address: Some("10.0.0.9".parse().unwrap()),
                    reason: "not in ops.http.allow_from",
                },
                "connection_refused",
                &["endpoint", "direction", "address", "reason"],
            ),
            (
                Event::PayloadDeadLettered {
                    source: "mqtt",
                    origin: "mqtt:vitals/x",
                    count: 1,
                    bytes: 8,
                },
                "payload_dead_lettered",
                &["source", "origin", "count", "bytes"],
            ),
            (
                Event::InputLost {
                    source: "serial",
                    origin: "serial:bed-1",
                    readings: 6,
                    payloads: 1,
                },
                "input_lost",
                &["source", "origin", "readings", "payloads"],
            ),
        ];
        for (event, kind, keys) in cases {
            assert_eq!(event.kind(), kind);
            let fields: Vec<String> = event.fields().keys().cloned().collect();
            assert_eq!(fields, keys, "{kind}");
        }
    }

    #[test]
    fn events_are_appended_as_json_lines_and_repeats_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.log");
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(&path, "{\"kind\":\"from_an_earlier_run\"}\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let loose = std::fs::Permissions::from_mode(0o644);
        std::fs::set_permissions(&path, loose).unwrap();
        let audit = Audit::open(&path, "hub-1").unwrap();
        audit.record(Event::GatewayStarted {
            version: "0.1.0",
            config_sha256: "ab",
        });
        for _ in 0..5 {
            audit.record(Event::TlsFailure {
                peer: "uplink:fhir",
                cause: "peer_expired",
                reason: "TLS handshake failed: expired",
            });
        }
        audit.record(Event::TlsFailure {
            peer: "source:mqtt",
            cause: "unknown_ca",
            reason: "other peer, other key",
        });
        audit.flush_repeats();
        audit.flush_repeats();
        let got = lines(&path);
        assert_eq!(
            got[0]["kind"], "from_an_earlier_run",
            "appended, not truncated"
        );
        assert_eq!(got[1]["kind"], "gateway_started");
        assert_eq!(got[1]["gateway"], "hub-1");
        assert_eq!(got[2]["kind"], "tls_failure");
        assert_eq!(got[2]["count"], 1);
        assert_eq!(got[3]["peer"], "source:mqtt");
        assert_eq!(got[4]["peer"], "uplink:fhir");
        assert_eq!(got[4]["count"], 4, "the four repeats, summarised once");
        assert_eq!(got.len(), 5);

        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600, "the earlier run's file is restricted");
        let fresh = dir.path().join("new/audit.log");
        Audit::open(&fresh, "hub-1").unwrap();
        assert_eq!(mode(&fresh), 0o600, "owner only");
        assert_eq!(mode(&dir.path().join("new")), 0o700, "owner only");
    }

    #[test]
    fn invisible_and_line_separating_characters_are_escaped() {
        let fields = json!({"origin": "mqtt:dev/\u{202e}GNP.exe", "address": "a\u{2028}b\u{200b}"});
        let Value::Object(fields) = fields else {
            unreachable!()
        };
        let text = line(OffsetDateTime::UNIX_EPOCH, "hub", "k", fields, None);
        assert!(!text.chars().any(is_invisible), "{text}");
        assert!(text.contains("\\u202e"), "{text}");
        assert!(text.contains("a\\u2028b\\u200b"), "{text}");
        // Still the same JSON value.
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["origin"], "mqtt:dev/\u{202e}GNP.exe");
        assert_eq!(back["address"], "a\u{2028}b\u{200b}");
    }

    #[test]
    fn a_symlinked_or_group_writable_audit_log_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere.log");
        std::fs::write(&elsewhere, "").unwrap();
        let link = dir.path().join("audit.log");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let chain = |e: &AuditError| crate::error_chain::Chain(e).to_string();
        let e = chain(&Audit::open(&link, "hub").unwrap_err());
        assert!(e.contains("symbolic link"), "{e}");

        for mode in [0o620, 0o602, 0o666] {
            let path = dir.path().join(format!("w{mode:o}.log"));
            std::fs::write(&path, "").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = chain(&Audit::open(&path, "hub").unwrap_err());
            assert!(e.contains("group or others write"), "{e}");
            let kept = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(kept, mode, "left as found, for whoever looks into it");
        }
        std::fs::create_dir(dir.path().join("dir.log")).unwrap();
        assert!(Audit::open(&dir.path().join("dir.log"), "hub").is_err());
    }

    #[test]
    fn a_default_handle_records_nothing() {
        let audit = Audit::default();
        assert!(audit.path().is_none());
        audit.record(Event::GatewayStopped);
        audit.flush_repeats();
    }
}
