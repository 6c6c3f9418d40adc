//! The JSON the technician CLI prints for decoded readings (`vitalbridge decode …`,
//! diagnostics). A display format for people and scripts, not a wire format between stages:
//! FHIR output lives in `fhir/`.
//!
//! # Shape
//!
//! ```json
//! {
//!   "readings": [
//!     {
//!       "metric": {"mdc": 150020, "loinc": "85354-9", "display": "Blood pressure panel with all children optional"},
//!       "components": [
//!         {"metric": {"mdc": 150021, "loinc": "8480-6", "display": "Systolic blood pressure"},
//!          "value": 120, "unit": "mm[Hg]"},
//!         {"metric": {"mdc": 150022, "loinc": "8462-4", "display": "Diastolic blood pressure"},
//!          "value": 80, "unit": "mm[Hg]"},
//!         {"metric": {"mdc": 150023, "loinc": "8478-0", "display": "Mean blood pressure"},
//!          "value": null, "unit": "mm[Hg]", "data_absent_reason": "not-a-number"}
//!       ],
//!       "time": "2013-12-05T10:20:30Z",
//!       "time_source": "device",
//!       "device_time": "2013-12-05T10:20:30Z",
//!       "received_at": "2013-12-05T10:21:00Z",
//!       "status": ["irregular-pulse"],
//!       "device": "A1B2C3D4E5F6",
//!       "device_user": 1
//!     }
//!   ]
//! }
//! ```
//!
//! Per reading:
//!
//! - `metric`: `mdc` (the 32-bit MDC code, a number: partition × 65536 + term), `loinc`
//!   (string or `null`), `display`.
//! - The value, by kind:
//!   - a quantity: `value` and `unit` (UCUM code, as the device reported it);
//!   - a compound (blood pressure): `components`, each `{metric, value, unit}`, and no
//!     `value`/`unit` of its own;
//!   - a coded value: `code`: `{system, code, display}`;
//!   - sampled data: `samples`: `{period_ms, origin, factor, unit, data}`.
//! - `value` is a JSON number with exactly the device's precision (SFLOAT mantissa 200,
//!   exponent -2 prints `2.00`), built from the decimal's text, never through `f64`.
//!   When the device sent a special value, `value` is `null` and `data_absent_reason` holds
//!   the FHIR `data-absent-reason` code: NaN → `not-a-number`, +INF → `positive-infinity`,
//!   -INF → `negative-infinity`, and NRes and every other device error → `error` (the
//!   mapping the HL7 PHD IG gives for NRes and the reserved value).
//! - `time`: the effective time (RFC 3339) and `time_source`: `device`, `device-corrected`
//!   (device time plus the gateway's clock offset) or `gateway-receive` (no device clock);
//!   `device_time` (the time as the device sent it, or `null`) and `received_at`, so the
//!   provenance is visible.
//! - `status`: device status flags, kebab-case (`body-movement`, `cuff-loose`,
//!   `irregular-pulse`, `pulse-rate-out-of-range`, `improper-position`, `questionable`,
//!   `calibrating`, `test-data`, `low-battery`, `sensor-fault`, `invalid`); `[]` if none.
//! - `device`: the device key (upper-case hex address or system id, else the id text).
//! - Only when present: `sequence` (device sequence number), `device_user` (BLE user
//!   index), `duration_seconds`.

use std::str::FromStr;

use serde_json::{json, Map, Number, Value as Json};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::model::{Decimal, Measured, Metric, Quantity, Reading, Value};

/// The report for `readings`, in the shape described in the module doc.
pub fn readings_to_json(readings: &[Reading]) -> Json {
    json!({ "readings": readings.iter().map(reading_to_json).collect::<Vec<_>>() })
}

/// One reading as a JSON object.
pub fn reading_to_json(reading: &Reading) -> Json {
    let mut o = Map::new();
    o.insert("metric".into(), metric_json(&reading.metric));
    match &reading.value {
        Value::Quantity(q) => quantity_into(&mut o, q),
        Value::Components(components) => {
            let list = components
                .iter()
                .map(|c| {
                    let mut co = Map::new();
                    co.insert("metric".into(), metric_json(&c.metric));
                    quantity_into(&mut co, &c.quantity);
                    Json::Object(co)
                })
                .collect();
            o.insert("components".into(), Json::Array(list));
        }
        Value::Coded {
            system,
            code,
            display,
        } => {
            o.insert(
                "code".into(),
                json!({"system": system, "code": code, "display": display}),
            );
        }
        Value::Samples(s) => {
            o.insert(
                "samples".into(),
                json!({
                    "period_ms": decimal_json(s.period_ms),
                    "origin": decimal_json(s.origin),
                    "factor": decimal_json(s.factor),
                    "unit": s.unit,
                    "data": s.data,
                }),
            );
        }
    }
    let (time, source) = reading.effective_time();
    o.insert("time".into(), time_json(Some(time)));
    o.insert("time_source".into(), Json::from(source.as_str()));
    o.insert("device_time".into(), time_json(reading.device_time));
    o.insert("received_at".into(), time_json(Some(reading.received_at)));
    o.insert(
        "status".into(),
        Json::Array(
            reading
                .status
                .iter()
                .map(|s| Json::from(s.as_str()))
                .collect(),
        ),
    );
    o.insert("device".into(), Json::from(reading.device.id.key()));
    if let Some(seq) = reading.sequence {
        o.insert("sequence".into(), Json::from(seq));
    }
    if let Some(user) = reading.device_user {
        o.insert("device_user".into(), Json::from(user));
    }
    if let Some(d) = reading.duration {
        // Exact: whole seconds, or nanoseconds scaled by 10^-9.
        let number = if d.subsec_nanoseconds() == 0 {
            decimal_json(Decimal::integer(d.whole_seconds()))
        } else {
            i64::try_from(d.whole_nanoseconds())
                .map(|n| decimal_json(Decimal::new(n, -9)))
                .unwrap_or(Json::Null)
        };
        o.insert("duration_seconds".into(), number);
    }
    Json::Object(o)
}

/// A decimal as a JSON number with exactly its precision (`2.00` stays `2.00`).
pub fn decimal_json(d: Decimal) -> Json {
    // `Decimal`'s text is always a valid JSON number literal; with serde_json's
    // `arbitrary_precision` the literal is kept as written.
    Number::from_str(&d.to_string())
        .map(Json::Number)
        .unwrap_or(Json::Null)
}

fn metric_json(m: &Metric) -> Json {
    json!({"mdc": m.mdc, "loinc": m.loinc, "display": m.display})
}

fn quantity_into(o: &mut Map<String, Json>, q: &Quantity) {
    match q.value {
        Measured::Value(d) => {
            o.insert("value".into(), decimal_json(d));
            o.insert("unit".into(), Json::from(q.unit.clone()));
        }
        Measured::Absent(reason) => {
            o.insert("value".into(), Json::Null);
            o.insert("unit".into(), Json::from(q.unit.clone()));
            o.insert("data_absent_reason".into(), Json::from(reason.as_str()));
        }
    }
}

fn time_json(t: Option<OffsetDateTime>) -> Json {
    t.and_then(|t| t.format(&Rfc3339).ok())
        .map_or(Json::Null, Json::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AbsentReason, Component, DeviceId, DeviceRef, StatusFlag};
    use crate::profile::catalog;
    use time::macros::datetime;

    fn reading(metric: Metric, value: Value) -> Reading {
        Reading {
            device: DeviceRef {
                id: DeviceId::Bluetooth([0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6]),
                profile: "ble-blood-pressure".into(),
                model: None,
                manufacturer: None,
            },
            patient: None,
            metric,
            value,
            device_time: Some(datetime!(2013-12-05 10:20:30 UTC)),
            clock_offset: None,
            received_at: datetime!(2013-12-05 10:21:00 UTC),
            duration: None,
            sequence: None,
            status: vec![StatusFlag::IrregularPulse],
            device_user: Some(1),
            bedside: None,
            time_sync: None,
        }
    }

    fn q(value: Measured, unit: &str) -> Quantity {
        Quantity {
            value,
            unit: unit.into(),
        }
    }

    #[test]
    fn numbers_keep_the_device_precision_in_the_printed_json() {
        let r = reading(
            catalog::BODY_TEMPERATURE,
            Value::Quantity(q(Measured::Value(Decimal::new(3760, -2)), "Cel")),
        );
        let text = serde_json::to_string(&readings_to_json(&[r])).unwrap();
        assert!(text.contains(r#""value":37.60"#), "{text}");
        for (d, literal) in [
            (Decimal::new(200, -2), "2.00"),
            (Decimal::new(70000, -3), "70.000"),
            (Decimal::new(-5, -1), "-0.5"),
            (Decimal::new(30, 5), "3000000"),
        ] {
            assert_eq!(decimal_json(d).to_string(), literal);
        }
    }

    #[test]
    fn blood_pressure_prints_components_and_absent_values_with_a_reason() {
        let mm = |v| q(v, "mm[Hg]");
        let r = reading(
            catalog::BLOOD_PRESSURE,
            Value::Components(vec![
                Component {
                    metric: catalog::SYSTOLIC,
                    quantity: mm(Measured::Value(Decimal::integer(120))),
                },
                Component {
                    metric: catalog::DIASTOLIC,
                    quantity: mm(Measured::Value(Decimal::integer(80))),
                },
                Component {
                    metric: catalog::MEAN_ARTERIAL,
                    quantity: mm(Measured::Absent(AbsentReason::NotANumber)),
                },
            ]),
        );
        let expected = json!({"readings": [{
            "metric": {"mdc": 150020, "loinc": "85354-9",
                       "display": "Blood pressure panel with all children optional"},
            "components": [
                {"metric": {"mdc": 150021, "loinc": "8480-6", "display": "Systolic blood pressure"},
                 "value": 120, "unit": "mm[Hg]"},
                {"metric": {"mdc": 150022, "loinc": "8462-4", "display": "Diastolic blood pressure"},
                 "value": 80, "unit": "mm[Hg]"},
                {"metric": {"mdc": 150023, "loinc": "8478-0", "display": "Mean blood pressure"},
                 "value": null, "unit": "mm[Hg]", "data_absent_reason": "not-a-number"}
            ],
            "time": "2013-12-05T10:20:30Z",
            "time_source": "device",
            "device_time": "2013-12-05T10:20:30Z",
            "received_at": "2013-12-05T10:21:00Z",
            "status": ["irregular-pulse"],
            "device": "A1B2C3D4E5F6",
            "device_user": 1
        }]});
        assert_eq!(readings_to_json(&[r]), expected);
    }

    #[test]
    fn every_special_value_has_its_fhir_reason() {
        for (reason, code) in [
            (AbsentReason::NotANumber, "not-a-number"),
            (AbsentReason::NotAtResolution, "error"),
            (AbsentReason::PositiveInfinity, "positive-infinity"),
            (AbsentReason::NegativeInfinity, "negative-infinity"),
            (AbsentReason::Error, "error"),
        ] {
            let r = reading(
                catalog::SPO2,
                Value::Quantity(q(Measured::Absent(reason), "%")),
            );
            let j = reading_to_json(&r);
            assert_eq!(j["value"], Json::Null);
            assert_eq!(j["data_absent_reason"], code);
        }
    }

    #[test]
    fn coded_values_sequence_and_receive_time_are_reported() {
        let mut r = reading(
            catalog::GLUCOSE_MEAL_CONTEXT,
            Value::Coded {
                system: "urn:iso:std:iso:11073:10101".into(),
                code: "8417872".into(),
                display: Some("MDC_CTXT_GLU_MEAL_POSTPRANDIAL".into()),
            },
        );
        r.device_time = None;
        r.sequence = Some(7);
        r.duration = Some(time::Duration::seconds(60));
        let j = reading_to_json(&r);
        assert_eq!(j["code"]["code"], "8417872");
        assert_eq!(j["sequence"], 7);
        assert_eq!(j["time_source"], "gateway-receive");
        assert_eq!(j["time"], "2013-12-05T10:21:00Z");
        assert_eq!(j["device_time"], Json::Null);
        assert_eq!(j["duration_seconds"].to_string(), "60");
        assert!(j.get("value").is_none());
    }
}
