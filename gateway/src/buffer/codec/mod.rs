//! The `readings.body` column: a [`Reading`] as stored in the buffer (before sealing, see
//! [`super::seal`]), and the content of a reading's dead letter.
//!
//! Two formats, told apart by the first byte:
//!
//! | first byte | format | written by |
//! | --- | --- | --- |
//! | `0x02` | version 2, binary ([`binary`]) | this gateway |
//! | `{` | version 1, a JSON object ([`json`]) | gateways before buffer schema 7; still read |
//!
//! Any other first byte is refused with what it is (a newer version is refused, never
//! guessed). Both formats carry the same fields; a reading decodes to the same value from
//! either. Version 1 was JSON so a technician could read a stuck row with `sqlite3`, but every
//! body is sealed before it reaches SQLite, so that never held; version 2 costs a third of the
//! bytes and a fraction of the CPU (docs/benchmark.md, "The buffer's row format").
//!
//! A metric unknown to the catalog (a newer gateway wrote it) is an error, not a guess. A
//! metric whose MDC code the catalog lists in more than one unit (glucose by mass or by
//! substance concentration) is the one whose unit fits the stored quantity's
//! (`catalog::by_mdc_for_unit`).

mod binary;
mod json;

use crate::model::{AbsentReason, Metric, Reading, ResultStatus, StatusFlag, TimeSync, Value};
use crate::profile::catalog;

/// Current body format version (the first byte of every body this gateway writes).
pub const FORMAT_VERSION: u8 = binary::VERSION;

/// A body that cannot be turned back into a reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The plain body is not a reading of this format (what is wrong, never a value).
    #[error("stored reading cannot be decoded: {0}")]
    Body(String),
    /// The sealed body cannot be opened.
    #[error("stored reading cannot be decoded")]
    Sealed(#[source] super::seal::OpenError),
}

/// Encodes a reading as a buffer body (format version 2).
pub fn encode(r: &Reading) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    encode_into(r, &mut out);
    out
}

/// Appends a reading's buffer body (format version 2) to `out`.
pub fn encode_into(r: &Reading, out: &mut Vec<u8>) {
    binary::encode_into(r, out);
}

/// Decodes a buffer body of either format back into a reading.
pub fn decode(bytes: &[u8]) -> Result<Reading, CodecError> {
    match bytes.first() {
        Some(&binary::VERSION) => binary::decode(bytes),
        Some(b'{') => json::decode(bytes),
        // Version 1 is JSON (its first byte is `{`): 0x00 and 0x01 were never a version byte.
        Some(&v) if v > binary::VERSION && v < b' ' => Err(CodecError::Body(format!(
            "body format version {v} is not supported (a newer vitalbridge wrote it; this one \
             reads versions 1 and 2)"
        ))),
        Some(_) => Err(CodecError::Body("not a reading body".into())),
        None => Err(CodecError::Body("empty body".into())),
    }
}

/// Encodes a reading as a version 1 (JSON) body, as gateways before buffer schema 7 did:
/// tests build such buffers with it.
#[cfg(test)]
pub(crate) fn encode_v1(r: &Reading) -> Vec<u8> {
    json::encode(r)
}

/// The stored name of NRes: FHIR has no code of its own for it (it is `error` there), and a
/// later mapping may want to tell it apart.
const NRES: &str = "nres";

fn absent_store(r: AbsentReason) -> &'static str {
    match r {
        AbsentReason::NotAtResolution => NRES,
        other => other.as_str(),
    }
}

fn absent_load(code: &str) -> Result<AbsentReason, CodecError> {
    if code == NRES {
        return Ok(AbsentReason::NotAtResolution);
    }
    AbsentReason::parse(code)
        .ok_or_else(|| CodecError::Body(format!("unknown absent reason {code:?}")))
}

fn status_load(name: &str) -> Result<StatusFlag, CodecError> {
    StatusFlag::parse(name).ok_or_else(|| CodecError::Body(format!("unknown status {name:?}")))
}

fn result_status_load(code: &str) -> Result<ResultStatus, CodecError> {
    ResultStatus::from_fhir_code(code)
        .ok_or_else(|| CodecError::Body(format!("unknown result status {code:?}")))
}

fn time_sync_load(name: &str) -> Result<TimeSync, CodecError> {
    TimeSync::parse(name).ok_or_else(|| CodecError::Body(format!("unknown time sync {name:?}")))
}

/// A component's metric.
fn metric(mdc: u32) -> Result<Metric, CodecError> {
    catalog::by_mdc(mdc)
        .ok_or_else(|| CodecError::Body(format!("metric {mdc} is not in this gateway's catalog")))
}

/// The reading's metric: for a quantity, the one whose unit fits.
fn reading_metric(mdc: u32, value: &Value) -> Result<Metric, CodecError> {
    match value {
        Value::Quantity(q) => catalog::by_mdc_for_unit(mdc, &q.unit).ok_or_else(|| {
            CodecError::Body(format!("metric {mdc} is not in this gateway's catalog"))
        }),
        _ => metric(mdc),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::model::{
        Bedside, Component, Decimal, DeviceId, DeviceRef, Measured, PatientRef, Quantity,
    };
    use time::macros::datetime;
    use time::Duration;

    /// A reading with every field set.
    pub(in crate::buffer) fn sample() -> Reading {
        Reading {
            device: DeviceRef {
                id: DeviceId::Bluetooth([1, 2, 3, 4, 5, 6]),
                profile: "ble-blood-pressure".into(),
                model: Some("BP-1".into()),
                manufacturer: None,
            },
            patient: Some(PatientRef::identifier("urn:x", "p")),
            metric: catalog::BLOOD_PRESSURE,
            value: Value::Components(vec![
                Component {
                    metric: catalog::SYSTOLIC,
                    quantity: Quantity {
                        value: Measured::Value(Decimal::new(1200, -1)),
                        unit: "mm[Hg]".into(),
                    },
                },
                Component {
                    metric: catalog::MEAN_ARTERIAL,
                    quantity: Quantity {
                        value: Measured::Absent(AbsentReason::NotAtResolution),
                        unit: "mm[Hg]".into(),
                    },
                },
            ]),
            device_time: Some(datetime!(2026-01-02 03:04:05.678 -05:00)),
            clock_offset: Some(Duration::milliseconds(-1500)),
            received_at: datetime!(2026-01-02 08:04:07 UTC),
            duration: Some(Duration::seconds(40)),
            sequence: Some(99),
            status: vec![StatusFlag::CuffLoose, StatusFlag::TestData],
            device_user: Some(2),
            bedside: Some(Box::new(Bedside {
                containment: vec![1, 13, 1, 2],
                location: Some("ICU^12^A".into()),
                status: ResultStatus::Corrected,
                unit_as_sent: true,
            })),
            time_sync: None,
        }
    }

    #[test]
    fn writes_version_2_and_reads_both_versions_to_the_same_reading() {
        let r = sample();
        let v2 = encode(&r);
        assert_eq!(v2[0], 2);
        let v1 = json::encode(&r);
        assert_eq!(v1[0], b'{');
        assert_eq!(decode(&v2).unwrap(), r);
        assert_eq!(decode(&v1).unwrap(), r);
        assert!(v2.len() * 2 < v1.len(), "{} vs {}", v2.len(), v1.len());
    }

    #[test]
    fn refuses_newer_versions_and_garbage_by_the_first_byte() {
        let mut newer = encode(&sample());
        newer[0] = 3;
        assert!(decode(&newer)
            .unwrap_err()
            .to_string()
            .contains("version 3 is not supported"));
        assert!(decode(b"").unwrap_err().to_string().contains("empty body"));
        for garbage in [&b"\xff\x00"[..], b"\x00", b"\x01{}"] {
            assert!(decode(garbage)
                .unwrap_err()
                .to_string()
                .contains("not a reading body"));
        }
    }
}
