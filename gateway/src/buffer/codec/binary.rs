//! Body format version 2: the byte `0x02`, then the fields below in the
//! [postcard 1 wire format](https://postcard.jamesmunns.com/wire-format) — unsigned integers
//! as LEB128 varints, signed ones zigzag-encoded first, a string or sequence as its length
//! (varint) then its elements, an `Option` as `0` or `1` then the value, an enum as its
//! variant index (varint, the order given here) then the variant's fields, a fixed array and
//! a tuple as their elements alone. Nothing may follow the last field.
//!
//! | # | field | type |
//! | --- | --- | --- |
//! | 1 | device id | enum: 0 `Eui64([u8; 8])`, 1 `Bluetooth([u8; 6])`, 2 `Serial(str)`, 3 `Other(str)` |
//! | 2 | device profile | str |
//! | 3 | device model | Option\<str\> |
//! | 4 | device manufacturer | Option\<str\> |
//! | 5 | patient | Option\<enum: 0 `Identifier(system: str, value: str)`, 1 `Reference(str)`\> |
//! | 6 | metric MDC code | u32; the rest of the metric comes from the catalog |
//! | 7 | value | enum: 0 `Quantity(measured, unit: str)`, 1 `Components([(mdc: u32, measured, unit: str)])`, 2 `Samples(period_ms: decimal, origin: decimal, factor: decimal, unit: str, data: [i32])`, 3 `Coded(system: str, code: str, display: Option<str>)` |
//! | 8 | device time as reported | Option\<time\> |
//! | 9 | clock offset, ms | Option\<i64\> |
//! | 10 | gateway receive time | time |
//! | 11 | duration, ms | Option\<i64\> |
//! | 12 | device sequence number | Option\<u64\> |
//! | 13 | status flags | [str] (`StatusFlag::as_str`) |
//! | 14 | device user index | Option\<u8\> |
//! | 15 | how the device clock's offset is known | Option\<str\> (`TimeSync::as_str`) |
//! | 16 | point-of-care context (HL7 v2 PCD-01) | Option\<(containment: [u32], location: Option<str>, result status: str, unit as sent: bool)\> |
//!
//! where `measured` is an enum: 0 `Value(decimal)`, 1 `Absent(str)` (`AbsentReason::as_str`,
//! but `nres` for NRes, kept apart from `error`); `decimal` is `(mantissa: i64, exponent: i8)`,
//! the number `mantissa × 10^exponent` with the device's precision; `time` is
//! `(unix seconds: i64, nanoseconds: u32, UTC offset seconds: i32)`, the instant and the
//! offset it was reported in; the result status is the FHIR `Observation.status` code.
//!
//! Enumerations the model owns are stored by name, not by index, so reordering them in the
//! code cannot change what a stored body means.

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime, UtcOffset};

use super::{
    absent_load, absent_store, metric, reading_metric, result_status_load, status_load,
    time_sync_load, CodecError,
};
use crate::model::{
    Bedside, Component, Decimal, DeviceId, DeviceRef, Measured, PatientRef, Quantity, Reading,
    Samples, Value,
};

/// This format's version: the body's first byte.
pub(super) const VERSION: u8 = 2;

#[derive(Serialize, Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    device: Dev<'a>,
    profile: &'a str,
    #[serde(borrow)]
    model: Option<&'a str>,
    #[serde(borrow)]
    manufacturer: Option<&'a str>,
    #[serde(borrow)]
    patient: Option<Patient<'a>>,
    mdc: u32,
    #[serde(borrow)]
    value: Val<'a>,
    device_time: Option<Time>,
    clock_offset_ms: Option<i64>,
    received_at: Time,
    duration_ms: Option<i64>,
    sequence: Option<u64>,
    #[serde(borrow)]
    status: Vec<&'a str>,
    device_user: Option<u8>,
    #[serde(borrow)]
    time_sync: Option<&'a str>,
    #[serde(borrow)]
    bedside: Option<Bed<'a>>,
}

#[derive(Serialize, Deserialize)]
enum Dev<'a> {
    Eui64([u8; 8]),
    Bluetooth([u8; 6]),
    Serial(&'a str),
    Other(&'a str),
}

#[derive(Serialize, Deserialize)]
enum Patient<'a> {
    Identifier(&'a str, &'a str),
    Reference(&'a str),
}

#[derive(Serialize, Deserialize)]
enum Val<'a> {
    Quantity(#[serde(borrow)] M<'a>, &'a str),
    Components(#[serde(borrow)] Vec<(u32, M<'a>, &'a str)>),
    Samples(Dec, Dec, Dec, &'a str, Vec<i32>),
    Coded(&'a str, &'a str, #[serde(borrow)] Option<&'a str>),
}

/// A measured number, or the name of the reason there is none.
#[derive(Serialize, Deserialize)]
enum M<'a> {
    Value(Dec),
    Absent(&'a str),
}

/// A decimal: mantissa and exponent.
type Dec = (i64, i8);

/// An instant and its offset: Unix seconds, nanoseconds, offset seconds.
type Time = (i64, u32, i32);

#[derive(Serialize, Deserialize)]
struct Bed<'a> {
    containment: Vec<u32>,
    #[serde(borrow)]
    location: Option<&'a str>,
    status: &'a str,
    unit_as_sent: bool,
}

fn dec(d: Decimal) -> Dec {
    (d.mantissa, d.exponent)
}

fn measured_out(m: &Measured) -> M<'static> {
    match m {
        Measured::Value(d) => M::Value(dec(*d)),
        Measured::Absent(r) => M::Absent(absent_store(*r)),
    }
}

fn measured_in(m: &M<'_>) -> Result<Measured, CodecError> {
    match m {
        M::Value((mantissa, exponent)) => Ok(Measured::Value(Decimal::new(*mantissa, *exponent))),
        M::Absent(reason) => absent_load(reason).map(Measured::Absent),
    }
}

fn time_out(t: OffsetDateTime) -> Time {
    (
        t.unix_timestamp(),
        t.nanosecond(),
        t.offset().whole_seconds(),
    )
}

fn time_in((secs, nanos, offset): Time) -> Result<OffsetDateTime, CodecError> {
    let bad = || CodecError::Body("bad time".into());
    let offset = UtcOffset::from_whole_seconds(offset).map_err(|_| bad())?;
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.replace_nanosecond(nanos).ok())
        .and_then(|t| t.checked_to_offset(offset))
        .ok_or_else(bad)
}

fn millis(d: Duration) -> i64 {
    // Readings' durations and clock offsets are far inside ±2^63 ms.
    d.whole_milliseconds() as i64
}

/// Encodes a reading as a version 2 body.
pub(super) fn encode_into(r: &Reading, out: &mut Vec<u8>) {
    let value = match &r.value {
        Value::Quantity(q) => Val::Quantity(measured_out(&q.value), &q.unit),
        Value::Components(cs) => Val::Components(
            cs.iter()
                .map(|c| {
                    (
                        c.metric.mdc,
                        measured_out(&c.quantity.value),
                        c.quantity.unit.as_str(),
                    )
                })
                .collect(),
        ),
        Value::Samples(s) => Val::Samples(
            dec(s.period_ms),
            dec(s.origin),
            dec(s.factor),
            &s.unit,
            s.data.clone(),
        ),
        Value::Coded {
            system,
            code,
            display,
        } => Val::Coded(system, code, display.as_deref()),
    };
    let body = Body {
        device: match &r.device.id {
            DeviceId::Eui64(b) => Dev::Eui64(*b),
            DeviceId::Bluetooth(b) => Dev::Bluetooth(*b),
            DeviceId::Serial(s) => Dev::Serial(s),
            DeviceId::Other(s) => Dev::Other(s),
        },
        profile: &r.device.profile,
        model: r.device.model.as_deref(),
        manufacturer: r.device.manufacturer.as_deref(),
        patient: r.patient.as_ref().map(|p| match p {
            PatientRef::Identifier { system, value } => Patient::Identifier(system, value),
            PatientRef::Reference(reference) => Patient::Reference(reference),
        }),
        mdc: r.metric.mdc,
        value,
        device_time: r.device_time.map(time_out),
        clock_offset_ms: r.clock_offset.map(millis),
        received_at: time_out(r.received_at),
        duration_ms: r.duration.map(millis),
        sequence: r.sequence,
        status: r.status.iter().map(|f| f.as_str()).collect(),
        device_user: r.device_user,
        time_sync: r.time_sync.map(|t| t.as_str()),
        bedside: r.bedside.as_ref().map(|b| Bed {
            containment: b.containment.clone(),
            location: b.location.as_deref(),
            status: b.status.fhir_code(),
            unit_as_sent: b.unit_as_sent,
        }),
    };
    out.push(VERSION);
    // Serializing into a Vec cannot fail: every field has a fixed shape and known length (if
    // it ever did, the body would end early, and be refused as such when it is read).
    let _ = postcard::to_extend(&body, Append(out));
}

/// Appends to a `Vec` it borrows (postcard's `to_extend` takes its sink by value).
struct Append<'a>(&'a mut Vec<u8>);

impl Extend<u8> for Append<'_> {
    fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
        self.0.extend(bytes);
    }
}

/// [`encode_into`] a new `Vec`.
#[cfg(test)]
fn encode(r: &Reading) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(r, &mut out);
    out
}

/// Decodes a version 2 body (its first byte already checked).
pub(super) fn decode(bytes: &[u8]) -> Result<Reading, CodecError> {
    let (b, rest): (Body<'_>, _) = postcard::take_from_bytes(bytes.get(1..).unwrap_or_default())
        .map_err(|e| CodecError::Body(format!("not a v2 body: {e}")))?;
    if !rest.is_empty() {
        return Err(CodecError::Body(format!(
            "{} bytes after the v2 body",
            rest.len()
        )));
    }
    let value = match b.value {
        Val::Quantity(m, unit) => Value::Quantity(Quantity {
            value: measured_in(&m)?,
            unit: unit.to_owned(),
        }),
        Val::Components(cs) => Value::Components(
            cs.iter()
                .map(|(mdc, m, unit)| {
                    Ok(Component {
                        metric: metric(*mdc)?,
                        quantity: Quantity {
                            value: measured_in(m)?,
                            unit: (*unit).to_owned(),
                        },
                    })
                })
                .collect::<Result<_, CodecError>>()?,
        ),
        Val::Samples(period, origin, factor, unit, data) => Value::Samples(Samples {
            period_ms: Decimal::new(period.0, period.1),
            origin: Decimal::new(origin.0, origin.1),
            factor: Decimal::new(factor.0, factor.1),
            unit: unit.to_owned(),
            data,
        }),
        Val::Coded(system, code, display) => Value::Coded {
            system: system.to_owned(),
            code: code.to_owned(),
            display: display.map(str::to_owned),
        },
    };
    Ok(Reading {
        device: DeviceRef {
            id: match b.device {
                Dev::Eui64(b) => DeviceId::Eui64(b),
                Dev::Bluetooth(b) => DeviceId::Bluetooth(b),
                Dev::Serial(s) => DeviceId::Serial(s.to_owned()),
                Dev::Other(s) => DeviceId::Other(s.to_owned()),
            },
            profile: b.profile.to_owned(),
            model: b.model.map(str::to_owned),
            manufacturer: b.manufacturer.map(str::to_owned),
        },
        patient: b.patient.map(|p| match p {
            Patient::Identifier(system, value) => PatientRef::identifier(system, value),
            Patient::Reference(reference) => PatientRef::Reference(reference.to_owned()),
        }),
        metric: reading_metric(b.mdc, &value)?,
        value,
        device_time: b.device_time.map(time_in).transpose()?,
        clock_offset: b.clock_offset_ms.map(Duration::milliseconds),
        received_at: time_in(b.received_at)?,
        duration: b.duration_ms.map(Duration::milliseconds),
        sequence: b.sequence,
        status: b
            .status
            .iter()
            .map(|s| status_load(s))
            .collect::<Result<_, _>>()?,
        device_user: b.device_user,
        time_sync: b.time_sync.map(time_sync_load).transpose()?,
        bedside: b
            .bedside
            .map(|bed| {
                Ok::<_, CodecError>(Box::new(Bedside {
                    containment: bed.containment,
                    location: bed.location.map(str::to_owned),
                    status: result_status_load(bed.status)?,
                    unit_as_sent: bed.unit_as_sent,
                }))
            })
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;
    use crate::model::{AbsentReason, StatusFlag, TimeSync};
    use crate::profile::catalog;
    use proptest::prelude::*;
    use time::macros::datetime;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The bytes of a stored body are the format: a change here makes rows already buffered
    /// unreadable, so it must be a new version instead.
    #[test]
    fn stored_version_2_body_decodes_and_encodes_to_the_same_bytes() {
        let stored = [
            "02",                                           // version
            "01010203040506",                               // Bluetooth 01:02:03:04:05:06
            "12626c652d626c6f6f642d7072657373757265",       // profile "ble-blood-pressure"
            "010442502d31",                                 // model "BP-1"
            "00",                                           // no manufacturer
            "01000575726e3a780170",                         // patient Identifier("urn:x", "p")
            "849409",                                       // mdc 150020
            "0102",                                         // Components, 2 of them
            "85940900e012ff066d6d5b48675d",                 // 150021, Value(1200, -1), "mm[Hg]"
            "87940901046e726573066d6d5b48675d",             // 150023, Absent("nres"), "mm[Hg]"
            "01eaefbb950d80eba5c3029f9902",                 // 2026-01-02T03:04:05.678-05:00
            "01b717",                                       // clock offset -1500 ms
            "eeefbb950d0000",                               // received 2026-01-02T08:04:07Z
            "0180f104",                                     // duration 40000 ms
            "0163",                                         // sequence 99
            "020a637566662d6c6f6f736509746573742d64617461", // "cuff-loose", "test-data"
            "0102",                                         // user 2
            "00",                                           // no time sync
            "0104010d0102",                                 // bedside: containment 1.13.1.2
            "01084943555e31325e41",                         // location "ICU^12^A"
            "09636f72726563746564",                         // status "corrected"
            "01",                                           // unit as sent
        ]
        .concat();
        assert_eq!(hex(&encode(&sample())), stored);
        let bytes: Vec<u8> = (0..stored.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&stored[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(decode(&bytes).unwrap(), sample());
    }

    fn reading_with(value: Value, metric: crate::model::Metric) -> Reading {
        Reading {
            value,
            metric,
            ..sample()
        }
    }

    #[test]
    fn every_kind_of_device_patient_and_value_round_trips() {
        let devices = [
            DeviceId::Eui64([0xfe, 0xed, 0xab, 0xee, 0xde, 0xad, 0xbe, 0xef]),
            DeviceId::Serial("ttyUSB0 — Ω".into()),
            DeviceId::Other(String::new()),
        ];
        let values = [
            reading_with(
                Value::Quantity(Quantity {
                    value: Measured::Value(Decimal::new(-3660, -2)),
                    unit: "Cel".into(),
                }),
                catalog::BODY_TEMPERATURE,
            ),
            reading_with(
                Value::Quantity(Quantity {
                    value: Measured::Absent(AbsentReason::NegativeInfinity),
                    unit: "%".into(),
                }),
                catalog::SPO2,
            ),
            reading_with(
                Value::Samples(Samples {
                    period_ms: Decimal::new(4, 0),
                    origin: Decimal::new(i64::MIN, i8::MIN),
                    factor: Decimal::new(i64::MAX, i8::MAX),
                    unit: "mV".into(),
                    data: vec![i32::MIN, 0, i32::MAX],
                }),
                catalog::SPO2,
            ),
            reading_with(
                Value::Coded {
                    system: "http://snomed.info/sct".into(),
                    code: "123".into(),
                    display: Some("a \"display\"".into()),
                },
                catalog::SPO2,
            ),
        ];
        for (i, mut r) in values.into_iter().enumerate() {
            r.device.id = devices[i % devices.len()].clone();
            r.device.manufacturer = Some("Acme".into());
            r.patient = (i != 2).then(|| PatientRef::Reference(format!("Patient/{i}")));
            r.time_sync = Some(TimeSync::ALL[i % TimeSync::ALL.len()]);
            r.status = StatusFlag::ALL.to_vec();
            r.bedside = None;
            // An offset with seconds, which RFC 3339 (version 1) could not keep.
            r.device_time = Some(datetime!(1970-01-01 00:00:00.000000001 +05:30:15));
            assert_eq!(decode(&encode(&r)).unwrap(), r, "value {i}");
        }
    }

    #[test]
    fn a_cut_or_padded_body_is_an_error_never_a_panic() {
        let body = encode(&sample());
        for end in 1..body.len() {
            assert!(decode(&body[..end]).is_err(), "cut at {end}");
        }
        let mut padded = body.clone();
        padded.push(0);
        assert!(decode(&padded)
            .unwrap_err()
            .to_string()
            .contains("1 bytes after"));
    }

    /// A body of the right shape whose names or numbers this gateway does not know.
    #[test]
    fn unknown_names_and_impossible_times_are_refused() {
        let r = sample();
        let bytes = encode(&r);
        let edit = |f: &dyn Fn(&mut Body<'_>)| {
            let (mut b, _): (Body<'_>, _) = postcard::take_from_bytes(&bytes[1..]).unwrap();
            f(&mut b);
            let mut out = vec![VERSION];
            out.extend(postcard::to_allocvec(&b).unwrap());
            decode(&out).unwrap_err().to_string()
        };
        assert!(edit(&|b| b.status = vec!["cuff-loose", "nope"]).contains("unknown status"));
        assert!(edit(&|b| b.time_sync = Some("sundial")).contains("unknown time sync"));
        assert!(edit(&|b| b.mdc = 1).contains("not in this gateway's catalog"));
        assert!(edit(&|b| b.received_at = (i64::MAX, 0, 0)).contains("bad time"));
        assert!(edit(&|b| b.received_at = (0, 1_000_000_000, 0)).contains("bad time"));
        assert!(edit(&|b| b.received_at = (0, 0, 100_000)).contains("bad time"));
        assert!(edit(&|b| {
            if let Val::Components(cs) = &mut b.value {
                cs[1].1 = M::Absent("error?");
            }
        })
        .contains("unknown absent reason"));
        assert!(edit(&|b| {
            if let Some(bed) = &mut b.bedside {
                bed.status = "done";
            }
        })
        .contains("unknown result status"));
    }

    proptest! {
        /// Any reading's numbers, times and texts come back exactly, from either format.
        #[test]
        fn numbers_times_and_texts_round_trip(
            mantissa in any::<i64>(),
            exponent in any::<i8>(),
            secs in -377_705_116_800i64..253_402_300_799,
            nanos in 0u32..1_000_000_000,
            offset in -93_599i32..93_599,
            text in ".*",
            seq in any::<Option<u64>>(),
        ) {
            let mut r = reading_with(
                Value::Quantity(Quantity { value: Measured::Value(Decimal::new(mantissa, exponent)), unit: "kg".into() }),
                catalog::BODY_WEIGHT,
            );
            let offset = UtcOffset::from_whole_seconds(offset).unwrap();
            r.device_time = Some(OffsetDateTime::from_unix_timestamp(secs).unwrap()
                .replace_nanosecond(nanos).unwrap().to_offset(offset));
            r.device.profile = text.clone();
            r.patient = Some(PatientRef::identifier(text.clone(), text));
            r.sequence = seq;
            prop_assert_eq!(decode(&encode(&r)).unwrap(), r);
        }

        /// Bytes that are not a body are refused, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut body = vec![VERSION];
            body.extend(bytes);
            let _ = decode(&body);
        }
    }
}
