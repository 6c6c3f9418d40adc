//! `vitalbridge devices unbound` and `vitalbridge devices bind`: the readings held because
//! no patient is bound to their device (`buffer::unbound`), and their release to a patient.
//!
//! `bind` takes the buffer's one-writer lock, so it runs while the gateway is stopped (a
//! running gateway holds the lock, and the command says so). It releases what is held, in
//! one transaction, and audits it (`unbound_released`: device, user, count; never the
//! patient). It does not change the configuration: readings measured later are bound by
//! `[[devices]]` (or `[default_patient]`), which the command prints for the device.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::buffer::unbound::{Release, Released};
use crate::buffer::{self, BufferError, OpenOptions};
use crate::ingest::binding_key;
use crate::limits::{MAX_ID_LEN, MAX_SYSTEM_LEN};
use crate::model::PatientRef;
use crate::ops::audit::{Audit, Event};

/// Why a devices command failed.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    /// A command-line value is not usable.
    #[error("{0}")]
    Usage(String),
    /// The buffer could not be used (another gateway holds it, no buffer, …).
    #[error(transparent)]
    Buffer(#[from] BufferError),
}

/// `--patient`: `SYSTEM|VALUE` (an identifier) or `Patient/ID` (a literal reference).
pub fn parse_patient(text: &str) -> Result<PatientRef, DevicesError> {
    let bad = |why: &str| DevicesError::Usage(format!("--patient: {why}"));
    if text.chars().any(char::is_control) {
        return Err(bad("must not contain control characters"));
    }
    match text.split_once('|') {
        Some((system, value)) => {
            if system.is_empty() || value.is_empty() {
                return Err(bad("give SYSTEM|VALUE with both parts, or Patient/ID"));
            }
            if system.len() > MAX_SYSTEM_LEN || value.len() > MAX_ID_LEN {
                return Err(bad(&format!(
                    "the system may have {MAX_SYSTEM_LEN} bytes, the value {MAX_ID_LEN}"
                )));
            }
            Ok(PatientRef::identifier(system, value))
        }
        None if text.starts_with("Patient/") && text.len() > 8 => {
            if text.len() > MAX_SYSTEM_LEN {
                return Err(bad(&format!("longer than {MAX_SYSTEM_LEN} bytes")));
            }
            Ok(PatientRef::Reference(text.to_owned()))
        }
        None => Err(bad("give SYSTEM|VALUE (an identifier) or Patient/ID")),
    }
}

fn time_arg(name: &str, text: Option<&str>) -> Result<Option<OffsetDateTime>, DevicesError> {
    text.map(|t| {
        OffsetDateTime::parse(t, &Rfc3339).map_err(|_| {
            DevicesError::Usage(format!(
                "{name}: not an RFC 3339 time with an offset, e.g. 2026-11-25T08:00:00Z"
            ))
        })
    })
    .transpose()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// The held readings per device and user, as a table (no values, no patients).
pub async fn list_unbound(dir: &std::path::Path) -> Result<String, DevicesError> {
    let store = buffer::open_read_only(dir, None).await?;
    let rows = store.unbound_devices().await?;
    store.close().await;
    if rows.is_empty() {
        return Ok("no readings are held unbound".into());
    }
    let mut out =
        String::from("device\tuser\treadings\tfirst received (UTC)\tlast received (UTC)\n");
    for r in &rows {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\n",
            r.device_key,
            r.user.map_or("-".into(), |u| u.to_string()),
            r.readings,
            rfc3339(r.first_received),
            rfc3339(r.last_received)
        ));
    }
    out.push_str(
        "release with: vitalbridge devices bind DEVICE --patient SYSTEM|VALUE [--user N] \
         (gateway stopped)",
    );
    Ok(out)
}

/// What `devices bind` is asked to do.
#[derive(Debug, Clone)]
pub struct BindRequest<'a> {
    /// The device id as in `[[devices]]` (a Bluetooth address with or without colons).
    pub device: &'a str,
    /// `--patient`.
    pub patient: &'a str,
    /// `--user`: the readings that reported this user index; none: those that reported none.
    pub user: Option<u8>,
    /// `--since`: only readings measured at or after this time.
    pub since: Option<&'a str>,
    /// `--until`: only readings measured before this time.
    pub until: Option<&'a str>,
}

/// Releases the held readings of a device (and user) to a patient; returns the text to print.
pub async fn bind(
    dir: &std::path::Path,
    options: &OpenOptions,
    request: &BindRequest<'_>,
    audit: Option<&Audit>,
) -> Result<String, DevicesError> {
    let patient = parse_patient(request.patient)?;
    if request.device.is_empty() || request.device.len() > MAX_ID_LEN {
        return Err(DevicesError::Usage(format!(
            "DEVICE: 1 to {MAX_ID_LEN} bytes"
        )));
    }
    let release = Release {
        device_key: binding_key(request.device),
        user: request.user,
        since: time_arg("--since", request.since)?,
        until: time_arg("--until", request.until)?,
        patient,
    };
    let (_store, mut writer, _) = buffer::open(dir, options).await?;
    let done: Released = writer.release_unbound(&release).await?;
    writer.close().await;
    if let Some(audit) = audit {
        audit.record(Event::UnboundReleased {
            device: &release.device_key,
            user: release.user,
            readings: done.released,
        });
    }
    let user = release.user.map_or("-".into(), |u| u.to_string());
    let mut out = format!(
        "released {} readings of device {} (user {user}) to the patient given; they are \
         delivered when the gateway runs",
        done.released, release.device_key
    );
    if done.kept > 0 {
        out.push_str(&format!(
            "\nkept {} held readings measured outside --since/--until",
            done.kept
        ));
    }
    if done.unreadable > 0 {
        out.push_str(&format!(
            "\n{} held readings cannot be opened with this key and stay held",
            done.unreadable
        ));
    }
    out.push_str(
        "\nreadings measured from now on are bound by the configuration: add a [[devices]] \
         table for this device (id, user, patient_system and patient_id, or patient_reference)",
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patient_is_an_identifier_or_a_literal_reference_and_nothing_else() {
        assert_eq!(
            parse_patient("urn:oid:1.2.3|p-1").unwrap(),
            PatientRef::identifier("urn:oid:1.2.3", "p-1")
        );
        assert_eq!(
            parse_patient("Patient/9").unwrap(),
            PatientRef::Reference("Patient/9".into())
        );
        for bad in ["", "p-1", "|p-1", "urn:x|", "Patient/", "urn:x|p\n1"] {
            assert!(parse_patient(bad).is_err(), "{bad:?}");
        }
    }
}
