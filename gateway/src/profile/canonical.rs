//! The canonical JSON reading format, version 1: what publishers send to the MQTT source.
//!
//! A message is one reading object, or a JSON array of up to [`MAX_READINGS_PER_MESSAGE`]
//! of them (all or none are accepted). UTF-8 JSON, no comments.
//!
//! ```json
//! {
//!   "device": {"id": "A1B2C3D4E5F6", "id_type": "bluetooth", "model": "BP-100", "manufacturer": "Acme"},
//!   "patient": {"system": "urn:oid:2.16.840.1.113883.4.1", "value": "12345"},
//!   "time": "2026-11-25T08:30:00.000+01:00",
//!   "metric": "blood-pressure",
//!   "components": [
//!     {"metric": "systolic",  "value": 120, "unit": "mm[Hg]"},
//!     {"metric": "diastolic", "value": 80,  "unit": "mm[Hg]"},
//!     {"metric": "mean-arterial-pressure", "value": null, "data_absent_reason": "not-a-number", "unit": "mm[Hg]"}
//!   ],
//!   "seq": 42,
//!   "status": ["irregular-pulse"]
//! }
//! ```
//!
//! | key | required | meaning |
//! | --- | --- | --- |
//! | `device` | yes | a string id, or an object: `id` (required), `id_type` (`eui64` — 16 hex digits, `bluetooth` — 12 hex digits, `serial`, `other`; default `other`), `model`, `manufacturer` |
//! | `patient` | no | `{"system": URI, "value": id}`, or `{"reference": "Patient/123"}`; used only where the source trusts payload patients (`trust_payload_patient`), then instead of the config binding; otherwise ignored (still checked) |
//! | `time` | no | RFC 3339 with an offset, as the device reported it. Absent: the device has no clock and the gateway's receive time is used (and recorded as such) |
//! | `metric` | yes | short name (`spo2`, `heart-rate`, `body-temperature`, `body-weight`, `blood-pressure`, …), MDC code (`150456`), MDC reference id or LOINC code |
//! | `value` | one of `value`/`components` | a JSON number, kept with its written precision (`36.60` stays `36.60`); or `null` with `data_absent_reason` |
//! | `data_absent_reason` | with `value: null` | `not-a-number`, `error`, `positive-infinity`, `negative-infinity` |
//! | `unit` | with `value` | UCUM code; default: the metric's canonical unit |
//! | `components` | one of `value`/`components` | list of `{metric, value, unit, data_absent_reason}` |
//! | `seq` | no | the device's sequence number for this measurement |
//! | `duration_ms` | no | measurement duration (effective period) |
//! | `status` | no | list of `body-movement`, `cuff-loose`, `irregular-pulse`, `pulse-rate-out-of-range`, `improper-position`, `questionable`, `calibrating`, `test-data`, `low-battery`, `sensor-fault`, `invalid` |
//! | `user` | no | device user index (0–255) on shared devices |
//!
//! Every string has a length limit (bytes of UTF-8, from [`crate::limits`]): `device.id` and
//! `patient.value` 128, `device.model` and `device.manufacturer` 128, `patient.system` and
//! `patient.reference` 256, `metric`, `id_type`, `data_absent_reason` and each `status` 64,
//! `unit` 32, `time` 64. A longer one makes the message a dead letter naming the field and
//! the limit. Ids, names and patient fields must not contain control characters; a blank
//! `model` or `manufacturer` counts as absent. A status flag given twice counts once.
//!
//! Unknown keys are refused, so a typo is a dead letter with a reason rather than a silently
//! dropped field. The two readings that differ only in a key the gateway ignores would
//! otherwise share an identifier.
//!
//! Decoding never panics; errors name the field (but never echo a value, which may be PHI).

use std::fmt;

use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::limits::{
    too_long_message, MAX_CODE_LEN, MAX_ID_LEN, MAX_NAME_LEN, MAX_SYSTEM_LEN, MAX_TIME_LEN,
    MAX_UNIT_LEN,
};
use crate::model::{
    AbsentReason, Component, Decimal, DeviceId, DeviceIdKind, DeviceRef, Measured, Metric,
    PatientRef, Quantity, Reading, StatusFlag, Value,
};
use crate::profile::{catalog, units};

/// The profile id recorded on devices whose readings came in this format.
pub const PROFILE_ID: &str = "canonical-json-v1";

/// Most readings accepted in one message.
pub const MAX_READINGS_PER_MESSAGE: usize = 1000;

/// Why a payload could not be decoded. The text names fields, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON of the expected shape.
    #[error("invalid JSON reading: {0}")]
    Json(String),
    /// A field has a value outside what it allows.
    #[error("field `{field}`: {problem}")]
    Field {
        /// The field (path) at fault.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

fn field(field: impl fmt::Display, problem: impl Into<String>) -> DecodeError {
    DecodeError::Field {
        field: field.to_string(),
        problem: problem.into(),
    }
}

/// A field's name in an error: `list[index]`, then `.leaf` unless `leaf` is empty. Written
/// only when there is an error (a reading's components would otherwise format theirs
/// every time).
#[derive(Clone, Copy)]
struct Name<'a> {
    list: &'a str,
    index: usize,
    leaf: &'a str,
}

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.list, self.index)?;
        if !self.leaf.is_empty() {
            write!(f, ".{}", self.leaf)?;
        }
        Ok(())
    }
}

/// Refuses `value` when it is longer than `limit` bytes.
fn limit(name: impl fmt::Display, value: &str, limit: usize) -> Result<(), DecodeError> {
    if value.len() > limit {
        return Err(field(name, too_long_message(limit)));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireReading {
    device: WireDevice,
    #[serde(default)]
    patient: Option<WirePatient>,
    #[serde(default)]
    time: Option<String>,
    metric: String,
    /// Outer `None`: key absent; `Some(None)`: `"value": null`.
    #[serde(default, deserialize_with = "present")]
    value: Option<Option<WireNumber>>,
    #[serde(default)]
    data_absent_reason: Option<String>,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    components: Option<Vec<WireComponent>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    duration_ms: Option<u64>,
    #[serde(default)]
    status: Vec<String>,
    #[serde(default)]
    user: Option<u8>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<WireNumber>>, D::Error> {
    Option::<WireNumber>::deserialize(d).map(Some)
}

/// A JSON number, parsed into a [`Decimal`] from its text in the payload (borrowed, not
/// copied: `serde_json::Number` would copy it into a `String` first). `None`: a number too
/// large or too precise for a `Decimal`. Anything but a number is refused by its JSON type,
/// never echoed.
struct WireNumber(Option<Decimal>);

impl<'de> Deserialize<'de> for WireNumber {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, Unexpected};
        let text = <&serde_json::value::RawValue>::deserialize(d)?.get();
        let what = match text.as_bytes().first() {
            Some(b'-' | b'0'..=b'9') => return Ok(WireNumber(Decimal::parse(text))),
            Some(b'"') => "string",
            Some(b'{') => "map",
            Some(b'[') => "sequence",
            Some(b't' | b'f') => "boolean",
            _ => "value",
        };
        Err(D::Error::invalid_type(Unexpected::Other(what), &"a number"))
    }
}

/// `device`: its id alone, or an object with the id and what else is known.
enum WireDevice {
    Id(String),
    Full(WireDeviceFull),
}

impl<'de> Deserialize<'de> for WireDevice {
    /// Chosen by the JSON type, by hand as [`OneOrMany`] is: serde's untagged enum would
    /// buffer the value first and copy the id twice.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = WireDevice;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a device id or a device object")
            }

            fn visit_str<E: serde::de::Error>(self, id: &str) -> Result<WireDevice, E> {
                Ok(WireDevice::Id(id.to_owned()))
            }

            fn visit_string<E: serde::de::Error>(self, id: String) -> Result<WireDevice, E> {
                Ok(WireDevice::Id(id))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<WireDevice, A::Error> {
                WireDeviceFull::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(WireDevice::Full)
            }
        }
        d.deserialize_any(Visit)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireDeviceFull {
    id: String,
    #[serde(default)]
    id_type: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    manufacturer: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WirePatient {
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    reference: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireComponent {
    metric: String,
    value: Option<WireNumber>,
    #[serde(default)]
    data_absent_reason: Option<String>,
    #[serde(default)]
    unit: Option<String>,
}

/// A message: one reading object or an array of them, decoded in one pass.
struct OneOrMany(Vec<WireReading>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = OneOrMany;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a reading object or an array of them")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<OneOrMany, A::Error> {
                WireReading::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|w| OneOrMany(vec![w]))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(w) = seq.next_element::<WireReading>()? {
                    items.push(w);
                }
                Ok(OneOrMany(items))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// What [`decode_with`] decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The readings.
    pub readings: Vec<Reading>,
    /// How many of them are filed under the patient their payload named (trusted).
    pub payload_patients: usize,
}

/// Decodes a canonical JSON message into readings received at `received_at`, trusting a
/// payload's `patient` (see [`decode_with`]).
pub fn decode(
    payload: &[u8],
    received_at: OffsetDateTime,
    binding: &dyn Fn(&str, Option<u8>) -> Option<PatientRef>,
) -> Result<Vec<Reading>, DecodeError> {
    decode_with(payload, received_at, binding, true).map(|d| d.readings)
}

/// Decodes a canonical JSON message into readings received at `received_at`.
/// `binding` is the config's patient for a device key and device user index (shared
/// devices). With `trust_payload_patient`, a payload's `patient` is used instead of the
/// binding; without, it is checked and ignored, and the binding applies (none: the reading
/// has no patient and is held unbound).
pub fn decode_with(
    payload: &[u8],
    received_at: OffsetDateTime,
    binding: &dyn Fn(&str, Option<u8>) -> Option<PatientRef>,
    trust_payload_patient: bool,
) -> Result<Decoded, DecodeError> {
    // One pass, straight into the structs (no `serde_json::Value` tree first). The
    // one-or-many choice is made by hand ([`OneOrMany`]): serde's untagged enums would buffer
    // the input and lose the exact decimal text that `arbitrary_precision` keeps.
    let wires = match payload.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{' | b'[') => {
            serde_json::from_slice::<OneOrMany>(payload)
                .map_err(|e| DecodeError::Json(describe_json_error(&e)))?
                .0
        }
        // Anything else is refused as before: parsed for the syntax error, else the shape's.
        _ => {
            serde_json::from_slice::<serde::de::IgnoredAny>(payload)
                .map_err(|e| DecodeError::Json(describe_json_error(&e)))?;
            return Err(DecodeError::Json(
                "expected a reading object or an array of them".into(),
            ));
        }
    };
    if wires.is_empty() {
        return Err(DecodeError::Json("empty array".into()));
    }
    if wires.len() > MAX_READINGS_PER_MESSAGE {
        return Err(DecodeError::Json(format!(
            "more than {MAX_READINGS_PER_MESSAGE} readings in one message"
        )));
    }
    let mut payload_patients = 0;
    let readings = wires
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            if trust_payload_patient && w.patient.is_some() {
                payload_patients += 1;
            }
            convert(w, received_at, binding, trust_payload_patient).map_err(|e| match e {
                DecodeError::Field { field, problem } if i > 0 => DecodeError::Field {
                    field: format!("[{i}].{field}"),
                    problem,
                },
                other => other,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Decoded {
        readings,
        payload_patients,
    })
}

/// serde_json messages can quote the offending value; keep only the category and position.
fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "I/O error",
        Category::Syntax => "syntax error",
        Category::Eof => "truncated JSON",
        Category::Data => {
            // Data errors name fields (`missing field `metric``, `unknown field `x``), which is
            // safe and useful; they can also quote values ("invalid type: string \"...\""), so
            // keep only the part before any quote of a value. A number or boolean is quoted
            // in backticks (`invalid type: integer `97`, expected …`): that value is dropped
            // and what was expected kept.
            let mut text = e.to_string();
            if text.starts_with("invalid type: ") || text.starts_with("invalid value: ") {
                if let Some(start) = text.find(" `") {
                    let end = text[start + 2..]
                        .find('`')
                        .map_or(text.len(), |i| start + 2 + i + 1);
                    text.replace_range(start..end, "");
                }
            }
            let cut = text
                .find(": \"")
                .or_else(|| text.find(" \""))
                .unwrap_or(text.len());
            let cut = text[..cut].find(" at line ").unwrap_or(cut);
            return if e.line() == 0 {
                text[..cut].to_owned()
            } else {
                format!(
                    "{} (line {}, column {})",
                    &text[..cut],
                    e.line(),
                    e.column()
                )
            };
        }
    };
    format!("{what} at line {}, column {}", e.line(), e.column())
}

fn convert(
    w: WireReading,
    received_at: OffsetDateTime,
    binding: &dyn Fn(&str, Option<u8>) -> Option<PatientRef>,
    trust_payload_patient: bool,
) -> Result<Reading, DecodeError> {
    let device = device(w.device)?;
    let named = w.patient.map(patient).transpose()?;
    let patient = match named {
        Some(p) if trust_payload_patient => Some(p),
        _ => binding(&device.id.key(), w.user),
    };
    let mut metric = lookup_metric("metric", &w.metric)?;
    let device_time = match &w.time {
        None => None,
        Some(t) => Some({
            limit("time", t, MAX_TIME_LEN)?;
            OffsetDateTime::parse(t, &Rfc3339)
                .map_err(|_| field("time", "not an RFC 3339 date-time with an offset"))?
        }),
    };
    if let Some(reason) = &w.data_absent_reason {
        limit("data_absent_reason", reason, MAX_CODE_LEN)?;
    }
    let value = match (w.value, w.components) {
        (Some(_), Some(_)) => {
            return Err(field(
                "value",
                "give either `value` or `components`, not both",
            ))
        }
        (None, None) => return Err(field("value", "missing: give `value` or `components`")),
        (Some(v), None) => {
            let unit = w.unit.unwrap_or_else(|| metric.unit.to_owned());
            check_unit("unit", &metric, &unit)?;
            metric = units::metric_for_unit(metric, &unit);
            Value::Quantity(Quantity {
                value: measured("value", v, w.data_absent_reason.as_deref())?,
                unit,
            })
        }
        (None, Some(components)) => {
            if w.unit.is_some() || w.data_absent_reason.is_some() {
                return Err(field(
                    "unit",
                    "a reading with components has units on its components",
                ));
            }
            if components.is_empty() || components.len() > 16 {
                return Err(field("components", "must have between 1 and 16 entries"));
            }
            let parts = components
                .into_iter()
                .enumerate()
                .map(|(i, c)| component(i, c))
                .collect::<Result<Vec<_>, _>>()?;
            Value::Components(parts)
        }
    };
    let mut status = Vec::new();
    for (i, s) in w.status.iter().enumerate() {
        let name = Name {
            list: "status",
            index: i,
            leaf: "",
        };
        limit(name, s, MAX_CODE_LEN)?;
        let flag = StatusFlag::parse(s).ok_or_else(|| field(name, "unknown status flag"))?;
        if !status.contains(&flag) {
            status.push(flag);
        }
    }
    let duration = match w.duration_ms {
        Some(ms) => Some(Duration::milliseconds(
            i64::try_from(ms).map_err(|_| field("duration_ms", "too large"))?,
        )),
        None => None,
    };
    Ok(Reading {
        device,
        patient,
        metric,
        value,
        device_time,
        clock_offset: None,
        received_at,
        duration,
        sequence: w.seq,
        status,
        device_user: w.user,
        bedside: None,
        time_sync: None,
    })
}

fn device(w: WireDevice) -> Result<DeviceRef, DecodeError> {
    let full = match w {
        WireDevice::Id(id) => WireDeviceFull {
            id,
            id_type: None,
            model: None,
            manufacturer: None,
        },
        WireDevice::Full(f) => f,
    };
    if full.id.is_empty() || full.id.len() > MAX_ID_LEN || full.id.chars().any(char::is_control) {
        return Err(field(
            "device.id",
            format!("must be 1 to {MAX_ID_LEN} bytes of printable characters"),
        ));
    }
    if let Some(id_type) = &full.id_type {
        limit("device.id_type", id_type, MAX_CODE_LEN)?;
    }
    let model = display_name("device.model", full.model)?;
    let manufacturer = display_name("device.manufacturer", full.manufacturer)?;
    let kind = match full.id_type.as_deref() {
        None => DeviceIdKind::Other,
        Some(name) => DeviceIdKind::parse(name).ok_or_else(|| {
            field(
                "device.id_type",
                "must be eui64, bluetooth, serial or other",
            )
        })?,
    };
    let key = match kind {
        DeviceIdKind::Bluetooth => full.id.chars().filter(|c| *c != ':').collect(),
        _ => full.id,
    };
    let id = DeviceId::from_key(kind, key).ok_or_else(|| match kind {
        DeviceIdKind::Eui64 => field("device.id", "eui64 needs 16 hex digits"),
        _ => field("device.id", "bluetooth needs 12 hex digits"),
    })?;
    Ok(DeviceRef {
        id,
        profile: PROFILE_ID.to_owned(),
        model,
        manufacturer,
    })
}

/// A model or manufacturer name: at most [`MAX_NAME_LEN`] bytes, no control characters; a
/// blank one is absent.
fn display_name(name: &str, text: Option<String>) -> Result<Option<String>, DecodeError> {
    let Some(text) = text else { return Ok(None) };
    limit(name, &text, MAX_NAME_LEN)?;
    if text.chars().any(char::is_control) {
        return Err(field(name, "must not contain control characters"));
    }
    let trimmed = text.trim();
    Ok((!trimmed.is_empty()).then(|| trimmed.to_owned()))
}

fn patient(p: WirePatient) -> Result<PatientRef, DecodeError> {
    for (name, text, max) in [
        ("patient.system", &p.system, MAX_SYSTEM_LEN),
        ("patient.value", &p.value, MAX_ID_LEN),
        ("patient.reference", &p.reference, MAX_SYSTEM_LEN),
    ] {
        let Some(text) = text else { continue };
        limit(name, text, max)?;
        if text.chars().any(char::is_control) {
            return Err(field(name, "must not contain control characters"));
        }
    }
    match (p.system, p.value, p.reference) {
        (Some(system), Some(value), None) if !system.is_empty() && !value.is_empty() => {
            Ok(PatientRef::Identifier { system, value })
        }
        (None, None, Some(reference))
            if reference.starts_with("Patient/") && reference.len() > 8 =>
        {
            Ok(PatientRef::Reference(reference))
        }
        _ => Err(field(
            "patient",
            "give `system` and `value`, or a `reference` like Patient/123",
        )),
    }
}

fn lookup_metric(name: impl fmt::Display + Copy, key: &str) -> Result<Metric, DecodeError> {
    limit(name, key, MAX_CODE_LEN)?;
    catalog::lookup(key).ok_or_else(|| {
        field(
            name,
            "unknown metric (use a short name, MDC code or LOINC code)",
        )
    })
}

/// The unit is printable, within its limit, and fits the metric ([`units::check_unit`]).
fn check_unit(
    name: impl fmt::Display + Copy,
    metric: &Metric,
    unit: &str,
) -> Result<(), DecodeError> {
    if unit.is_empty() || unit.len() > MAX_UNIT_LEN || !unit.chars().all(|c| c.is_ascii_graphic()) {
        return Err(field(
            name,
            format!("must be a UCUM code (printable ASCII, up to {MAX_UNIT_LEN} characters)"),
        ));
    }
    units::check_unit(metric, unit).map_err(|e| field(name, e.to_string()))?;
    Ok(())
}

fn measured(
    name: impl fmt::Display,
    value: Option<WireNumber>,
    reason: Option<&str>,
) -> Result<Measured, DecodeError> {
    match (value, reason) {
        (Some(WireNumber(n)), None) => n
            .map(Measured::Value)
            .ok_or_else(|| field(name, "number out of range")),
        (None, Some(r)) => AbsentReason::parse(r).map(Measured::Absent).ok_or_else(|| {
            field(
                "data_absent_reason",
                "must be not-a-number, error, positive-infinity or negative-infinity",
            )
        }),
        (Some(_), Some(_)) => Err(field("data_absent_reason", "only with `value: null`")),
        (None, None) => Err(field(name, "null needs a `data_absent_reason`")),
    }
}

fn component(i: usize, c: WireComponent) -> Result<Component, DecodeError> {
    let name = |leaf| Name {
        list: "components",
        index: i,
        leaf,
    };
    let metric = lookup_metric(name("metric"), &c.metric)?;
    let unit = c.unit.unwrap_or_else(|| metric.unit.to_owned());
    check_unit(name("unit"), &metric, &unit)?;
    let metric = units::metric_for_unit(metric, &unit);
    if let Some(reason) = &c.data_absent_reason {
        limit(name("data_absent_reason"), reason, MAX_CODE_LEN)?;
    }
    let value = measured(name("value"), c.value, c.data_absent_reason.as_deref())?;
    Ok(Component {
        metric,
        quantity: Quantity { value, unit },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn no_binding(_: &str, _: Option<u8>) -> Option<PatientRef> {
        None
    }

    fn check(payload: &str) -> Result<Vec<Reading>, DecodeError> {
        decode(
            payload.as_bytes(),
            datetime!(2026-11-25 12:00 UTC),
            &no_binding,
        )
    }

    #[test]
    fn decodes_a_quantity_with_its_precision() {
        let r = check(r#"{"device":"thermo-1","time":"2026-11-25T08:30:00+01:00","metric":"body-temperature","value":36.60,"unit":"Cel","seq":3}"#)
            .unwrap();
        assert_eq!(r.len(), 1);
        let Value::Quantity(q) = &r[0].value else {
            panic!("not a quantity")
        };
        assert_eq!(q.value, Measured::Value(Decimal::new(3660, -2)));
        assert_eq!(q.unit, "Cel");
        assert_eq!(r[0].metric, catalog::BODY_TEMPERATURE);
        assert_eq!(r[0].sequence, Some(3));
        assert_eq!(r[0].device_time, Some(datetime!(2026-11-25 08:30 +01:00)));
    }

    #[test]
    fn decodes_blood_pressure_components_and_absent_values() {
        let r = check(r#"{"device":{"id":"A1:B2:C3:D4:E5:F6","id_type":"bluetooth"},"metric":"85354-9","components":[
            {"metric":"systolic","value":120,"unit":"mm[Hg]"},{"metric":"diastolic","value":80},
            {"metric":"150023","value":null,"data_absent_reason":"not-a-number"}],"status":["irregular-pulse"]}"#)
        .unwrap();
        let Value::Components(c) = &r[0].value else {
            panic!("not components")
        };
        assert_eq!(c.len(), 3);
        assert_eq!(c[1].quantity.unit, "mm[Hg]");
        assert_eq!(
            c[2].quantity.value,
            Measured::Absent(AbsentReason::NotANumber)
        );
        assert_eq!(
            r[0].device.id,
            DeviceId::Bluetooth([0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6])
        );
        assert_eq!(r[0].status, vec![StatusFlag::IrregularPulse]);
        assert_eq!(r[0].device_time, None);
    }

    #[test]
    fn an_array_is_all_or_nothing() {
        let ok = check(
            r#"[{"device":"d","metric":"spo2","value":97},{"device":"d","metric":"heart-rate","value":61}]"#,
        );
        assert_eq!(ok.unwrap().len(), 2);
        let bad = check(
            r#"[{"device":"d","metric":"spo2","value":97},{"device":"d","metric":"nope","value":61}]"#,
        );
        assert_eq!(
            bad.unwrap_err(),
            field(
                "[1].metric",
                "unknown metric (use a short name, MDC code or LOINC code)"
            )
        );
    }

    /// The one-pass decode takes what the two-pass one took and refuses what it refused.
    #[test]
    fn the_message_shape_is_chosen_in_one_pass() {
        let spaced = check(" \n\t[{\"device\":\"d\",\"metric\":\"spo2\",\"value\":97.50}] ");
        let Value::Quantity(q) = &spaced.unwrap()[0].value else {
            panic!("not a quantity")
        };
        assert_eq!(q.value, Measured::Value(Decimal::parse("97.50").unwrap()));
        for (payload, expect) in [
            ("5", "expected a reading object or an array of them"),
            (
                "\"Jane Doe\"",
                "expected a reading object or an array of them",
            ),
            ("Jane", "syntax error"),
            ("", "truncated"),
            ("[5]", "invalid type"),
            (
                "[{\"device\":\"d\",\"metric\":\"spo2\",\"value\":97},",
                "truncated",
            ),
        ] {
            let e = check(payload).expect_err(payload).to_string();
            assert!(
                e.contains(expect),
                "{payload}: {e:?} should mention {expect:?}"
            );
            assert!(!e.contains("Jane"), "{payload}: error echoes a value: {e}");
            assert!(
                !e.contains("424242"),
                "{payload}: error echoes a value: {e}"
            );
        }
    }

    #[test]
    fn errors_name_the_field_and_never_echo_values() {
        let cases = [
            (r#"{"device":"d","metric":"spo2"}"#, "value"),
            (
                r#"{"device":"d","metric":"spo2","value":97,"colour":"red"}"#,
                "unknown field `colour`",
            ),
            (
                r#"{"device":"d","metric":"spo2","value":97,"time":"Jane Doe"}"#,
                "time",
            ),
            (
                r#"{"device":"d","metric":"spo2","value":null}"#,
                "null needs",
            ),
            (r#"{"device":"","metric":"spo2","value":1}"#, "device.id"),
            (
                r#"{"device":7,"metric":"spo2","value":1}"#,
                "expected a device id or a device object",
            ),
            (
                r#"{"device":["Jane Doe"],"metric":"spo2","value":1}"#,
                "expected a device id or a device object",
            ),
            (
                r#"{"device":{"id":"d","colour":"red"},"metric":"spo2","value":1}"#,
                "unknown field `colour`",
            ),
            (
                r#"{"device":"d","metric":"spo2","value":1,"patient":{"system":"x"}}"#,
                "patient",
            ),
            (
                r#"{"device":{"id":"XYZ","id_type":"eui64"},"metric":"spo2","value":1}"#,
                "eui64",
            ),
            (
                r#"{"device":"d","metric":"spo2","value":"Jane Doe"}"#,
                "JSON",
            ),
            (r#"{"device":"d","metric":"spo2","value":1e400}"#, "value"),
            (
                r#"{"device":"d","metric":"blood-pressure","components":[{"metric":"systolic","value":1},{"metric":"diastolic","value":null}]}"#,
                "field `components[1].value`: null needs",
            ),
            (
                r#"{"device":"d","metric":424242,"value":1}"#,
                "invalid type: integer, expected a string",
            ),
            (
                r#"{"device":424242,"metric":"spo2","value":1}"#,
                "invalid type: integer, expected a device id or a device object",
            ),
            (
                r#"{"device":"d","metric":"spo2","value":1,"seq":-424242}"#,
                "invalid value: integer, expected u64",
            ),
            (
                r#"{"device":"d","metric":"spo2","value":1,"user":424242}"#,
                "expected u8",
            ),
            (r#"[]"#, "empty"),
            (r#"{"device":"d""#, "truncated"),
        ];
        for (payload, expect) in cases {
            let e = check(payload).expect_err(payload).to_string();
            assert!(
                e.contains(expect),
                "{payload}: {e:?} should mention {expect:?}"
            );
            assert!(!e.contains("Jane"), "{payload}: error echoes a value: {e}");
            assert!(
                !e.contains("424242"),
                "{payload}: error echoes a value: {e}"
            );
        }
    }

    #[test]
    fn the_config_binding_applies_when_the_payload_names_no_patient() {
        let bind = |key: &str, user: Option<u8>| {
            (key == "d" && user != Some(2)).then(|| PatientRef::identifier("urn:x", "p1"))
        };
        let r = decode(
            br#"{"device":"d","metric":"spo2","value":97}"#,
            datetime!(2026-11-25 12:00 UTC),
            &bind,
        )
        .unwrap();
        assert_eq!(r[0].patient, Some(PatientRef::identifier("urn:x", "p1")));
        // The device user index reaches the binding (shared scales and cuffs).
        let r = decode(
            br#"{"device":"d","metric":"spo2","value":97,"user":2}"#,
            datetime!(2026-11-25 12:00 UTC),
            &bind,
        )
        .unwrap();
        assert_eq!(r[0].patient, None);
        let r = decode(
            br#"{"device":"d","metric":"spo2","value":97,"patient":{"reference":"Patient/9"}}"#,
            datetime!(2026-11-25 12:00 UTC),
            &bind,
        )
        .unwrap();
        assert_eq!(
            r[0].patient,
            Some(PatientRef::Reference("Patient/9".into()))
        );
    }

    /// A payload's patient is used only where the source trusts it; otherwise the binding
    /// applies (none: no patient, so the reading is held unbound), and the count of trusted
    /// uses is what the source audits.
    #[test]
    fn a_payload_patient_is_used_only_when_trusted() {
        let bind =
            |key: &str, _: Option<u8>| (key == "d").then(|| PatientRef::identifier("urn:x", "p1"));
        let at = datetime!(2026-11-25 12:00 UTC);
        let named =
            br#"[{"device":"d","metric":"spo2","value":97,"patient":{"reference":"Patient/9"}},
            {"device":"e","metric":"spo2","value":97,"patient":{"reference":"Patient/9"}},
            {"device":"e","metric":"spo2","value":98}]"#;
        let trusted = decode_with(named, at, &bind, true).unwrap();
        assert_eq!(trusted.payload_patients, 2);
        assert_eq!(
            trusted.readings[0].patient,
            Some(PatientRef::Reference("Patient/9".into()))
        );
        let ignored = decode_with(named, at, &bind, false).unwrap();
        assert_eq!(ignored.payload_patients, 0);
        let patients: Vec<_> = ignored.readings.iter().map(|r| r.patient.clone()).collect();
        assert_eq!(
            patients,
            [Some(PatientRef::identifier("urn:x", "p1")), None, None]
        );
        // Still checked when ignored: a malformed patient is a dead letter either way.
        let bad = br#"{"device":"d","metric":"spo2","value":97,"patient":{"system":"x"}}"#;
        assert!(decode_with(bad, at, &bind, false).is_err());
    }

    #[test]
    fn a_unit_that_does_not_fit_the_metric_is_refused_naming_its_dimension() {
        let e = check(r#"{"device":"d","metric":"spo2","value":970,"unit":"kg"}"#).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("field `unit`: `kg` is a mass;"), "{text}");
        assert!(text.contains("MDC_PULS_OXIM_SAT_O2"), "{text}");
        assert!(!text.contains("970"), "{text}");
        // Commensurable units are kept as sent; glucose by substance takes the molar code.
        let r = check(r#"{"device":"d","metric":"glucose","value":5.4,"unit":"mmol/L"}"#).unwrap();
        assert_eq!(r[0].metric, catalog::GLUCOSE_CAPILLARY_PLASMA_MOLAR);
        let r = check(r#"{"device":"d","metric":"body-weight","value":154.3,"unit":"[lb_av]"}"#)
            .unwrap();
        let Value::Quantity(q) = &r[0].value else {
            panic!()
        };
        assert_eq!(
            (q.unit.as_str(), q.value),
            ("[lb_av]", Measured::Value(Decimal::new(1543, -1)))
        );
    }

    /// Every string of the format, one over its limit at a time: the message is refused,
    /// naming the field and the limit, never the value.
    #[test]
    fn every_string_has_a_length_limit() {
        let long = |n: usize| "Jane Doe ".repeat(n / 9 + 1)[..n].to_owned();
        // (field in the error, limit, payload with `{}` where the long string goes)
        let cases: &[(&str, usize, &str)] = &[
            (
                "device.id",
                MAX_ID_LEN,
                r#"{"device":"{}","metric":"spo2","value":97}"#,
            ),
            (
                "device.id",
                MAX_ID_LEN,
                r#"{"device":{"id":"{}","id_type":"serial"},"metric":"spo2","value":97}"#,
            ),
            (
                "device.id_type",
                MAX_CODE_LEN,
                r#"{"device":{"id":"d","id_type":"{}"},"metric":"spo2","value":97}"#,
            ),
            (
                "device.model",
                MAX_NAME_LEN,
                r#"{"device":{"id":"d","model":"{}"},"metric":"spo2","value":97}"#,
            ),
            (
                "device.manufacturer",
                MAX_NAME_LEN,
                r#"{"device":{"id":"d","manufacturer":"{}"},"metric":"spo2","value":97}"#,
            ),
            (
                "patient.system",
                MAX_SYSTEM_LEN,
                r#"{"device":"d","patient":{"system":"{}","value":"p"},"metric":"spo2","value":97}"#,
            ),
            (
                "patient.value",
                MAX_ID_LEN,
                r#"{"device":"d","patient":{"system":"urn:x","value":"{}"},"metric":"spo2","value":97}"#,
            ),
            (
                "patient.reference",
                MAX_SYSTEM_LEN,
                r#"{"device":"d","patient":{"reference":"{}"},"metric":"spo2","value":97}"#,
            ),
            (
                "time",
                MAX_TIME_LEN,
                r#"{"device":"d","time":"{}","metric":"spo2","value":97}"#,
            ),
            (
                "metric",
                MAX_CODE_LEN,
                r#"{"device":"d","metric":"{}","value":97}"#,
            ),
            (
                "unit",
                MAX_UNIT_LEN,
                r#"{"device":"d","metric":"spo2","value":97,"unit":"{}"}"#,
            ),
            (
                "data_absent_reason",
                MAX_CODE_LEN,
                r#"{"device":"d","metric":"spo2","value":null,"data_absent_reason":"{}"}"#,
            ),
            (
                "status[1]",
                MAX_CODE_LEN,
                r#"{"device":"d","metric":"spo2","value":97,"status":["questionable","{}"]}"#,
            ),
            (
                "components[0].metric",
                MAX_CODE_LEN,
                r#"{"device":"d","metric":"blood-pressure","components":[{"metric":"{}","value":1}]}"#,
            ),
            (
                "components[0].unit",
                MAX_UNIT_LEN,
                r#"{"device":"d","metric":"blood-pressure","components":[{"metric":"systolic","value":1,"unit":"{}"}]}"#,
            ),
            (
                "components[0].data_absent_reason",
                MAX_CODE_LEN,
                r#"{"device":"d","metric":"blood-pressure","components":[{"metric":"systolic","value":null,"data_absent_reason":"{}"}]}"#,
            ),
            (
                "[1].device.model",
                MAX_NAME_LEN,
                r#"[{"device":"d","metric":"spo2","value":97},{"device":{"id":"d","model":"{}"},"metric":"spo2","value":97}]"#,
            ),
        ];
        for (name, max, template) in cases {
            // At the limit the string passes the length check (it may fail another one).
            let at_limit = check(&template.replace("{}", &long(*max)));
            if let Err(e) = &at_limit {
                assert!(!e.to_string().contains("longer than"), "{name}: {e}");
            }
            let payload = template.replace("{}", &long(max + 1));
            let e = check(&payload).expect_err(name).to_string();
            let expected = format!("field `{name}`:");
            assert!(e.contains(&expected), "{name}: {e}");
            assert!(
                e.contains(&format!("{max} bytes")) || e.contains(&format!("{max} characters")),
                "{name}: the limit is named: {e}"
            );
            assert!(!e.contains("Jane"), "{name}: echoes the value: {e}");
        }
    }

    #[test]
    fn the_100000_character_model_of_the_bug_report_is_refused() {
        let payload = format!(
            r#"{{"device":{{"id":"d","model":"{}"}},"metric":"spo2","value":97}}"#,
            "M".repeat(100_000)
        );
        assert_eq!(
            check(&payload).unwrap_err(),
            field("device.model", "longer than 128 bytes")
        );
    }

    #[test]
    fn names_are_printable_blank_ones_absent_and_flags_counted_once() {
        let e = check(r#"{"device":{"id":"d","model":"BP\u001b[2J"},"metric":"spo2","value":97}"#)
            .unwrap_err();
        assert_eq!(
            e,
            field("device.model", "must not contain control characters")
        );
        let e = check(
            r#"{"device":"d","patient":{"system":"urn:x","value":"p\n1"},"metric":"spo2","value":97}"#,
        )
        .unwrap_err();
        assert_eq!(
            e,
            field("patient.value", "must not contain control characters")
        );
        let r = check(
            r#"{"device":{"id":"d","model":"  ","manufacturer":" Acme "},"metric":"spo2","value":97,
                "status":["questionable","questionable","invalid","questionable"]}"#,
        )
        .unwrap();
        assert_eq!(r[0].device.model, None);
        assert_eq!(r[0].device.manufacturer.as_deref(), Some("Acme"));
        assert_eq!(
            r[0].status,
            vec![StatusFlag::Questionable, StatusFlag::Invalid]
        );
    }

    /// A value that is not a number is named by its JSON type, never echoed, wherever it is.
    #[test]
    fn a_value_that_is_no_number_is_named_by_its_type() {
        for (value, kind) in [
            ("\"Jane Doe\"", "string"),
            ("true", "boolean"),
            ("{\"v\":424242}", "map"),
            ("[424242]", "sequence"),
        ] {
            let expect = format!("invalid type: {kind}, expected a number (line 1, column ");
            let single = format!(r#"{{"device":"d","metric":"spo2","value":{value}}}"#);
            let part = format!(
                r#"{{"device":"d","metric":"blood-pressure","components":[{{"metric":"systolic","value":{value}}}]}}"#
            );
            for payload in [single, part] {
                let e = check(&payload).expect_err(&payload).to_string();
                assert!(e.contains(&expect), "{payload}: {e}");
                assert!(
                    !e.contains("Jane") && !e.contains("424242"),
                    "{payload}: {e}"
                );
            }
        }
    }

    proptest::proptest! {
        /// The value is the `Decimal` of the number's own text, as parsed through
        /// `serde_json::Number` before (the same text, the same refusals out of range).
        #[test]
        fn a_value_is_the_decimal_of_its_text(
            mantissa in proptest::num::i64::ANY,
            fraction in proptest::option::of(0u32..1_000_000),
            exponent in proptest::option::of(-400i32..400),
        ) {
            let mut text = mantissa.to_string();
            if let Some(f) = fraction {
                text.push_str(&format!(".{f}"));
            }
            if let Some(e) = exponent {
                text.push_str(&format!("e{e}"));
            }
            let number: serde_json::Number = serde_json::from_str(&text).unwrap();
            let before = Decimal::parse(number.as_str());
            let payload = format!(r#"{{"device":"d","metric":"spo2","value":{text}}}"#);
            match (check(&payload), before) {
                (Ok(r), Some(d)) => {
                    let Value::Quantity(q) = &r[0].value else { panic!("not a quantity") };
                    proptest::prop_assert_eq!(q.value, Measured::Value(d));
                }
                (Err(e), None) => proptest::prop_assert!(e.to_string().contains("number out of range"), "{}", e),
                // decode checks no plausibility: any other pairing is a difference.
                (got, before) => proptest::prop_assert!(false, "{}: {:?} vs {:?}", text, got, before),
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode(&bytes, datetime!(2026-11-25 12:00 UTC), &no_binding);
        }
    }
}
