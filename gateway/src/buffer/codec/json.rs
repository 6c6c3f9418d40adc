//! Body format version 1: a JSON object (UTF-8), written by gateways before buffer schema 7
//! and still read (rows waiting in an upgraded buffer, dead letters, salvaged files). Keys:
//!
//! | key | type | meaning |
//! | --- | --- | --- |
//! | `v` | 1 | format version; a newer version is refused, never guessed |
//! | `dev` | `{t, id, p, model?, mfr?}` | device: `t` = the id's kind (`DeviceIdKind::as_str`, but `bt` for `bluetooth`), `id` = key, `p` = profile |
//! | `pat` | `[system, value]`? | patient: an identifier, or `["", reference]` for a literal reference |
//! | `mdc` | u32 | metric MDC code; the rest of the metric comes from the catalog |
//! | `val` | value | `{"q":[number\|null, unit, absent?]}`, `{"c":[[mdc, number\|null, unit, absent?], …]}`, `{"s":{…}}`, `{"k":[system, code, display?]}`; `absent` is `AbsentReason::as_str`, but `nres` for NRes, kept apart from `error` |
//! | `dt` | RFC 3339? | device time as reported |
//! | `off` | i64? | clock offset, ms |
//! | `rx` | RFC 3339 | gateway receive time |
//! | `dur` | i64? | duration, ms |
//! | `seq` | u64? | device sequence number |
//! | `st` | [string] | status flags (`StatusFlag::as_str`) |
//! | `usr` | u8? | device user index |
//! | `bed` | `{c, loc?, rs, ut?}`? | point-of-care context (HL7 v2 PCD-01): `c` the containment path (OBX-4) as numbers, `loc` the point of care (PV1-3), `rs` the FHIR `Observation.status` code, `ut` true when the unit is the sender's text, not UCUM |
//! | `ts` | string? | how the gateway knows the device clock's offset (`TimeSync::as_str`) |
//!
//! Numbers are JSON numbers with their exact decimal text. The encoder is kept for tests,
//! which build buffers as older gateways left them.

use serde::{Deserialize, Serialize};
use serde_json::Number;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use super::{
    absent_load, metric, reading_metric, result_status_load, status_load, time_sync_load,
    CodecError,
};
use crate::model::{
    Bedside, Component, Decimal, DeviceId, DeviceIdKind, DeviceRef, Measured, PatientRef, Quantity,
    Reading, Samples, Value,
};

/// This format's version (the `v` key).
const VERSION: u8 = 1;

#[derive(Serialize, Deserialize)]
struct Body {
    v: u8,
    dev: Dev,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pat: Option<(String, String)>,
    mdc: u32,
    val: Val,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    off: Option<i64>,
    rx: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dur: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    st: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usr: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ts: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bed: Option<Bed>,
}

#[derive(Serialize, Deserialize)]
struct Bed {
    c: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    loc: Option<String>,
    rs: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    ut: bool,
}

#[derive(Serialize, Deserialize)]
struct Dev {
    t: String,
    id: String,
    p: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mfr: Option<String>,
}

/// One number: the value (or null), the unit, and the absent reason when null.
type Q = (Option<Number>, String, Option<String>);

#[derive(Serialize, Deserialize)]
enum Val {
    #[serde(rename = "q")]
    Quantity(Q),
    #[serde(rename = "c")]
    Components(Vec<(u32, Option<Number>, String, Option<String>)>),
    #[serde(rename = "s")]
    Samples {
        period: Number,
        origin: Number,
        factor: Number,
        unit: String,
        data: Vec<i32>,
    },
    #[serde(rename = "k")]
    Coded(String, String, Option<String>),
}

#[cfg(test)]
fn number(d: Decimal) -> Number {
    // `Decimal`'s Display is a valid JSON number literal; arbitrary_precision keeps it exact.
    d.to_string().parse().unwrap_or_else(|_| Number::from(0))
}

fn decimal(n: &Number) -> Result<Decimal, CodecError> {
    Decimal::parse(&n.to_string()).ok_or_else(|| CodecError::Body("number out of range".into()))
}

/// The stored name of the Bluetooth kind of device id (version 1 bodies say `bt`).
const BLUETOOTH: &str = "bt";

#[cfg(test)]
fn kind_store(kind: DeviceIdKind) -> &'static str {
    match kind {
        DeviceIdKind::Bluetooth => BLUETOOTH,
        other => other.as_str(),
    }
}

fn kind_load(name: &str) -> Result<DeviceIdKind, CodecError> {
    if name == BLUETOOTH {
        return Ok(DeviceIdKind::Bluetooth);
    }
    DeviceIdKind::parse(name)
        .ok_or_else(|| CodecError::Body(format!("unknown device id type {name:?}")))
}

#[cfg(test)]
fn measured_out(m: &Measured) -> (Option<Number>, Option<String>) {
    match m {
        Measured::Value(d) => (Some(number(*d)), None),
        Measured::Absent(r) => (None, Some(super::absent_store(*r).to_owned())),
    }
}

fn measured_in(n: Option<&Number>, reason: Option<&str>) -> Result<Measured, CodecError> {
    match (n, reason) {
        (Some(n), _) => decimal(n).map(Measured::Value),
        (None, Some(r)) => absent_load(r).map(Measured::Absent),
        (None, None) => Err(CodecError::Body("null value without a reason".into())),
    }
}

#[cfg(test)]
fn time_text(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn time_parse(t: &str) -> Result<OffsetDateTime, CodecError> {
    OffsetDateTime::parse(t, &Rfc3339).map_err(|_| CodecError::Body("bad time".into()))
}

/// Encodes a reading as a version 1 body (tests build old buffers with it).
#[cfg(test)]
pub(super) fn encode(r: &Reading) -> Vec<u8> {
    let val = match &r.value {
        Value::Quantity(q) => {
            let (n, reason) = measured_out(&q.value);
            Val::Quantity((n, q.unit.clone(), reason))
        }
        Value::Components(cs) => Val::Components(
            cs.iter()
                .map(|c| {
                    let (n, reason) = measured_out(&c.quantity.value);
                    (c.metric.mdc, n, c.quantity.unit.clone(), reason)
                })
                .collect(),
        ),
        Value::Samples(s) => Val::Samples {
            period: number(s.period_ms),
            origin: number(s.origin),
            factor: number(s.factor),
            unit: s.unit.clone(),
            data: s.data.clone(),
        },
        Value::Coded {
            system,
            code,
            display,
        } => Val::Coded(system.clone(), code.clone(), display.clone()),
    };
    let body = Body {
        v: VERSION,
        dev: Dev {
            t: kind_store(r.device.id.kind()).to_owned(),
            id: r.device.id.key(),
            p: r.device.profile.clone(),
            model: r.device.model.clone(),
            mfr: r.device.manufacturer.clone(),
        },
        pat: r.patient.as_ref().map(|p| match p {
            PatientRef::Identifier { system, value } => (system.clone(), value.clone()),
            PatientRef::Reference(reference) => (String::new(), reference.clone()),
        }),
        mdc: r.metric.mdc,
        val,
        dt: r.device_time.map(time_text),
        off: r.clock_offset.map(|d| d.whole_milliseconds() as i64),
        rx: time_text(r.received_at),
        dur: r.duration.map(|d| d.whole_milliseconds() as i64),
        seq: r.sequence,
        st: r.status.iter().map(|f| f.as_str().to_owned()).collect(),
        usr: r.device_user,
        bed: r.bedside.as_ref().map(|b| Bed {
            c: b.containment.clone(),
            loc: b.location.clone(),
            rs: b.status.fhir_code().to_owned(),
            ut: b.unit_as_sent,
        }),
        ts: r.time_sync.map(|t| t.as_str().to_owned()),
    };
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Decodes a version 1 body.
pub(super) fn decode(bytes: &[u8]) -> Result<Reading, CodecError> {
    let b: Body = serde_json::from_slice(bytes)
        .map_err(|e| CodecError::Body(format!("not a v1 body: {}", e.classify_str())))?;
    if b.v != VERSION {
        return Err(CodecError::Body(format!(
            "body format version {} is not supported",
            b.v
        )));
    }
    let id = DeviceId::from_key(kind_load(&b.dev.t)?, b.dev.id)
        .ok_or_else(|| CodecError::Body("bad device id".into()))?;
    let value = match b.val {
        Val::Quantity((n, unit, reason)) => Value::Quantity(Quantity {
            value: measured_in(n.as_ref(), reason.as_deref())?,
            unit,
        }),
        Val::Components(cs) => Value::Components(
            cs.into_iter()
                .map(|(mdc, n, unit, reason)| {
                    Ok(Component {
                        metric: metric(mdc)?,
                        quantity: Quantity {
                            value: measured_in(n.as_ref(), reason.as_deref())?,
                            unit,
                        },
                    })
                })
                .collect::<Result<_, CodecError>>()?,
        ),
        Val::Samples {
            period,
            origin,
            factor,
            unit,
            data,
        } => Value::Samples(Samples {
            period_ms: decimal(&period)?,
            origin: decimal(&origin)?,
            factor: decimal(&factor)?,
            unit,
            data,
        }),
        Val::Coded(system, code, display) => Value::Coded {
            system,
            code,
            display,
        },
    };
    Ok(Reading {
        device: DeviceRef {
            id,
            profile: b.dev.p,
            model: b.dev.model,
            manufacturer: b.dev.mfr,
        },
        patient: b.pat.map(|(system, value)| {
            if system.is_empty() {
                PatientRef::Reference(value)
            } else {
                PatientRef::Identifier { system, value }
            }
        }),
        metric: reading_metric(b.mdc, &value)?,
        value,
        device_time: b.dt.as_deref().map(time_parse).transpose()?,
        clock_offset: b.off.map(Duration::milliseconds),
        received_at: time_parse(&b.rx)?,
        duration: b.dur.map(Duration::milliseconds),
        sequence: b.seq,
        status: b
            .st
            .iter()
            .map(|s| status_load(s))
            .collect::<Result<_, _>>()?,
        device_user: b.usr,
        bedside: b
            .bed
            .map(|bed| {
                Ok::<_, CodecError>(Box::new(Bedside {
                    containment: bed.c,
                    location: bed.loc,
                    status: result_status_load(&bed.rs)?,
                    unit_as_sent: bed.ut,
                }))
            })
            .transpose()?,
        time_sync: b.ts.as_deref().map(time_sync_load).transpose()?,
    })
}

trait ClassifyStr {
    fn classify_str(&self) -> &'static str;
}

impl ClassifyStr for serde_json::Error {
    fn classify_str(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "eof",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;
    use crate::model::{AbsentReason, StatusFlag};
    use crate::profile::catalog;

    #[test]
    fn round_trips_every_field_exactly() {
        let r = sample();
        assert_eq!(decode(&encode(&r)).unwrap(), r);
        let q = Reading {
            value: Value::Quantity(Quantity {
                value: Measured::Value(Decimal::new(200, -2)),
                unit: "kg".into(),
            }),
            metric: catalog::BODY_WEIGHT,
            device_time: None,
            clock_offset: None,
            patient: None,
            ..r
        };
        assert_eq!(decode(&encode(&q)).unwrap(), q);
        assert!(String::from_utf8(encode(&q)).unwrap().contains("2.00"));
    }

    /// Bodies as gateways before schema 7 stored them, byte for byte: they must keep decoding
    /// (and the test encoder must keep writing them, or the tests that build old buffers with
    /// it build something no gateway wrote).
    #[test]
    fn stored_version_1_bodies_decode_and_encode_to_the_same_bytes() {
        let stored = [
            (
                Reading {
                    bedside: None,
                    ..sample()
                },
                r#"{"v":1,"dev":{"t":"bt","id":"010203040506","p":"ble-blood-pressure","model":"BP-1"},"pat":["urn:x","p"],"mdc":150020,"val":{"c":[[150021,120.0,"mm[Hg]",null],[150023,null,"mm[Hg]","nres"]]},"dt":"2026-01-02T03:04:05.678-05:00","off":-1500,"rx":"2026-01-02T08:04:07Z","dur":40000,"seq":99,"st":["cuff-loose","test-data"],"usr":2}"#,
            ),
            (
                sample(),
                r#"{"v":1,"dev":{"t":"bt","id":"010203040506","p":"ble-blood-pressure","model":"BP-1"},"pat":["urn:x","p"],"mdc":150020,"val":{"c":[[150021,120.0,"mm[Hg]",null],[150023,null,"mm[Hg]","nres"]]},"dt":"2026-01-02T03:04:05.678-05:00","off":-1500,"rx":"2026-01-02T08:04:07Z","dur":40000,"seq":99,"st":["cuff-loose","test-data"],"usr":2,"bed":{"c":[1,13,1,2],"loc":"ICU^12^A","rs":"corrected","ut":true}}"#,
            ),
            (
                Reading {
                    patient: Some(PatientRef::Reference("Patient/123".into())),
                    device: DeviceRef {
                        id: DeviceId::Eui64([0xfe, 0xed, 0xab, 0xee, 0xde, 0xad, 0xbe, 0xef]),
                        profile: "canonical-json-v1".into(),
                        model: None,
                        manufacturer: Some("Acme".into()),
                    },
                    value: Value::Quantity(Quantity {
                        value: Measured::Absent(AbsentReason::PositiveInfinity),
                        unit: "%".into(),
                    }),
                    metric: catalog::SPO2,
                    duration: None,
                    sequence: None,
                    device_user: None,
                    status: vec![StatusFlag::SensorFault],
                    bedside: None,
                    ..sample()
                },
                r#"{"v":1,"dev":{"t":"eui64","id":"FEEDABEEDEADBEEF","p":"canonical-json-v1","mfr":"Acme"},"pat":["","Patient/123"],"mdc":150456,"val":{"q":[null,"%","positive-infinity"]},"dt":"2026-01-02T03:04:05.678-05:00","off":-1500,"rx":"2026-01-02T08:04:07Z","st":["sensor-fault"]}"#,
            ),
        ];
        for (reading, body) in stored {
            assert_eq!(String::from_utf8(encode(&reading)).unwrap(), body);
            assert_eq!(decode(body.as_bytes()).as_ref(), Ok(&reading), "{body}");
        }
    }

    #[test]
    fn refuses_other_versions_and_garbage() {
        let newer = String::from_utf8(encode(&sample()))
            .unwrap()
            .replacen("\"v\":1", "\"v\":2", 1);
        assert!(decode(newer.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("version 2"));
        assert!(decode(b"{\"v\":1").is_err());
    }
}
