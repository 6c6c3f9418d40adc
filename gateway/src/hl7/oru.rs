//! Readings → an IHE PCD-01 ORU^R01 (HL7 v2.6) message, for interface engines. Pure.
//!
//! # Format
//!
//! ```text
//! MSH|^~\&|<app>|<facility>|<receiving app>|<receiving facility>|<now>||ORU^R01^ORU_R01|<id>|P|2.6|||NE|AL||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO
//! PID|||<id>^^^<authority>                  (when the readings have a patient)
//! PV1||I|<point of care>                    (when the feed gave one)
//! OBR|1|<id>^<app>|<id>^<app>|182777000^monitoring of patient^SCT|||<time>
//! OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.1|97|262688^MDC_DIM_PERCENT^MDC|||||F|||<time>||||<EUI-64>^^<EUI-64>^EUI-64
//! ```
//!
//! - One message holds readings of one device, patient, time and point of care (the
//!   caller groups them); one OBX per quantity, one per component of a blood-pressure panel.
//! - OBX-3 the MDC code and reference id; OBX-6 the MDC unit where there is one
//!   ([`super::units`]), else the UCUM code with coding system `UCUM`; a unit the feed sent
//!   as text the gateway could not translate goes out as that text alone (`^<text>`).
//! - OBX-4 the containment path the reading came with; a panel's components get the
//!   channel's path plus their position (1 systolic, 2 diastolic, 3 mean); a reading from a
//!   personal device (no path) gets `1.1.1.<n>`.
//! - OBX-5 the value with the device's precision; a data-absent value is an empty OBX-5 with
//!   OBX-11 `X`. OBX-11 otherwise from the result status: F, P, C, A, W.
//! - OBX-14 the effective time with its offset; OBX-18 the device: an EUI-64 as
//!   `<hex>^^<hex>^EUI-64`, any other id as `<id>^<profile>`.
//! - PID-3: the identifier value, with the system as assigning authority: `urn:oid:` →
//!   `&<oid>&ISO`, `urn:uuid:` → `&<uuid>&UUID`, another URI → `&<uri>&URI`, anything else
//!   as the namespace; a literal reference (`Patient/123`) is written as its id alone.

use std::fmt::Write;

use time::OffsetDateTime;

use super::dtm;
use super::units;
use super::v2::Delimiters;
use crate::model::{DeviceId, Measured, PatientRef, Quantity, Reading, ResultStatus, Value};

/// The MSH sender and receiver fields.
#[derive(Debug, Clone, Default)]
pub struct Parties {
    /// MSH-3.
    pub sending_application: String,
    /// MSH-4.
    pub sending_facility: String,
    /// MSH-5.
    pub receiving_application: String,
    /// MSH-6.
    pub receiving_facility: String,
}

/// Why a reading cannot go into an ORU message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the HL7 v2 uplink sends numeric readings only (quantities and panels), not {0}")]
pub struct NotNumeric(pub &'static str);

/// Whether a reading can be written.
pub fn check(r: &Reading) -> Result<(), NotNumeric> {
    match r.value {
        Value::Quantity(_) | Value::Components(_) => Ok(()),
        Value::Samples(_) => Err(NotNumeric("sampled data")),
        Value::Coded { .. } => Err(NotNumeric("coded values")),
    }
}

/// PID-3 for a patient.
pub fn pid3(p: &PatientRef) -> String {
    let d = Delimiters::default();
    let (system, value) = match p {
        PatientRef::Identifier { system, value } => (system, value),
        PatientRef::Reference(reference) => {
            let id = reference.rsplit('/').next().unwrap_or(reference);
            return d.escape(id);
        }
    };
    let authority = if let Some(oid) = system.strip_prefix("urn:oid:") {
        format!("&{}&ISO", d.escape(oid))
    } else if let Some(uuid) = system.strip_prefix("urn:uuid:") {
        format!("&{}&UUID", d.escape(uuid))
    } else if system.contains(':') {
        format!("&{}&URI", d.escape(system))
    } else {
        d.escape(system)
    };
    format!("{}^^^{authority}", d.escape(value))
}

fn obx18(r: &Reading) -> String {
    let d = Delimiters::default();
    match &r.device.id {
        DeviceId::Eui64(_) => {
            let k = r.device.id.key();
            format!("{k}^^{k}^EUI-64")
        }
        other => format!("{}^{}", d.escape(&other.key()), d.escape(&r.device.profile)),
    }
}

fn status_letter(s: ResultStatus) -> &'static str {
    match s {
        ResultStatus::Final => "F",
        ResultStatus::Preliminary => "P",
        ResultStatus::Corrected => "C",
        ResultStatus::Amended => "A",
        ResultStatus::EnteredInError => "W",
    }
}

fn unit_field(q: &Quantity, metric: &crate::model::Metric) -> String {
    match units::mdc_of_ucum(&q.unit, metric) {
        Some((code, reference)) => format!("{code}^{reference}^MDC"),
        None => {
            let u = Delimiters::default().escape(&q.unit);
            format!("{u}^{u}^UCUM")
        }
    }
}

/// Writes the ORU^R01 for `readings` (one device, patient, time and point of care; each
/// passes [`check`]). `now` is the message time.
pub fn write(
    readings: &[&Reading],
    parties: &Parties,
    control_id: &str,
    now: OffsetDateTime,
) -> String {
    let d = Delimiters::default();
    let e = |t: &str| d.escape(t);
    let mut m = String::with_capacity(512 + readings.len() * 160);
    let _ = write!(
        m,
        "MSH|^~\\&|{}|{}|{}|{}|{}||ORU^R01^ORU_R01|{}|P|2.6|||NE|AL||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO\r",
        e(&parties.sending_application),
        e(&parties.sending_facility),
        e(&parties.receiving_application),
        e(&parties.receiving_facility),
        dtm::format(now),
        e(control_id),
    );
    let Some(first) = readings.first() else {
        return m;
    };
    if let Some(p) = &first.patient {
        let _ = write!(m, "PID|||{}\r", pid3(p));
    }
    if let Some(loc) = first.bedside.as_ref().and_then(|b| b.location.as_deref()) {
        // Kept in the default delimiters' form by the PCD-01 mapping.
        let _ = write!(m, "PV1||I|{loc}\r");
    }
    let (time, _) = first.effective_time();
    let app = e(&parties.sending_application);
    let _ = write!(
        m,
        "OBR|1|{id}^{app}|{id}^{app}|182777000^monitoring of patient^SCT|||{}\r",
        dtm::format(time),
        id = e(control_id),
    );
    let mut n = 0;
    for r in readings {
        let (time, _) = r.effective_time();
        let status = r.bedside.as_ref().map_or(ResultStatus::Final, |b| b.status);
        let path = r.bedside.as_ref().map(|b| b.containment.clone());
        let device = obx18(r);
        let text_unit = r.bedside.as_ref().is_some_and(|b| b.unit_as_sent);
        let count = n;
        let mut obx = |code: u32, reference: &str, sub_id: String, q: &Quantity, metric| {
            n += 1;
            let (value, status) = match q.value {
                Measured::Value(v) => (v.to_string(), status_letter(status)),
                Measured::Absent(_) => (String::new(), "X"),
            };
            let _ = write!(
                m,
                "OBX|{n}|NM|{code}^{reference}^MDC|{sub_id}|{value}|{}|||||{status}|||{}||||{device}\r",
                if text_unit {
                    format!("^{}", Delimiters::default().escape(&q.unit))
                } else {
                    unit_field(q, metric)
                },
                dtm::format(time),
            );
        };
        match &r.value {
            Value::Quantity(q) => {
                let sub = match &path {
                    Some(p) if !p.is_empty() => join(p),
                    _ => format!("1.1.1.{}", count + 1),
                };
                obx(r.metric.mdc, r.metric.mdc_ref, sub, q, &r.metric);
            }
            Value::Components(parts) => {
                let channel = match &path {
                    Some(p) if !p.is_empty() => join(p),
                    _ => "1.1.1".to_owned(),
                };
                for (i, c) in parts.iter().enumerate() {
                    obx(
                        c.metric.mdc,
                        c.metric.mdc_ref,
                        format!("{channel}.{}", i + 1),
                        &c.quantity,
                        &c.metric,
                    );
                }
            }
            Value::Samples(_) | Value::Coded { .. } => {}
        }
    }
    m
}

fn join(path: &[u32]) -> String {
    path.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Bedside, Component, Decimal, DeviceRef, Metric};
    use crate::profile::catalog;
    use time::macros::datetime;

    fn reading(metric: Metric, value: Value, containment: Vec<u32>) -> Reading {
        Reading {
            device: DeviceRef {
                id: DeviceId::Eui64([0, 0x12, 0x21, 0x18, 0x39, 0, 0, 1]),
                profile: "hl7-pcd01".into(),
                model: None,
                manufacturer: None,
            },
            patient: Some(PatientRef::identifier("urn:oid:1.2.3", "MRN^7")),
            metric,
            value,
            device_time: Some(datetime!(2026-01-05 10:15:00 +01:00)),
            clock_offset: None,
            received_at: datetime!(2026-01-05 09:15:01 UTC),
            duration: None,
            sequence: None,
            status: vec![],
            device_user: None,
            time_sync: None,
            bedside: Some(Box::new(Bedside {
                containment,
                location: Some("ICU^12^A".into()),
                status: ResultStatus::Preliminary,
                unit_as_sent: false,
            })),
        }
    }

    fn q(v: Measured, unit: &str) -> Quantity {
        Quantity {
            value: v,
            unit: unit.into(),
        }
    }

    #[test]
    fn writes_a_pcd01_message_field_by_field() {
        let spo2 = reading(
            catalog::SPO2,
            Value::Quantity(q(Measured::Value(Decimal::new(970, -1)), "%")),
            vec![1, 3, 1, 1],
        );
        let bp = reading(
            catalog::BLOOD_PRESSURE,
            Value::Components(vec![
                Component {
                    metric: catalog::SYSTOLIC,
                    quantity: q(Measured::Value(Decimal::integer(120)), "mm[Hg]"),
                },
                Component {
                    metric: catalog::DIASTOLIC,
                    quantity: q(
                        Measured::Absent(crate::model::AbsentReason::NotANumber),
                        "mm[Hg]",
                    ),
                },
            ]),
            vec![1, 2, 1],
        );
        let parties = Parties {
            sending_application: "VITALBRIDGE".into(),
            sending_facility: "WARD 3".into(),
            receiving_application: "ENGINE".into(),
            receiving_facility: "HOSP".into(),
        };
        let text = write(
            &[&spo2, &bp],
            &parties,
            "VB-1",
            datetime!(2026-01-05 10:15:02 +01:00),
        );
        let lines: Vec<&str> = text.split('\r').collect();
        assert_eq!(lines[0], "MSH|^~\\&|VITALBRIDGE|WARD 3|ENGINE|HOSP|20260105101502+0100||ORU^R01^ORU_R01|VB-1|P|2.6|||NE|AL||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO");
        assert_eq!(lines[1], "PID|||MRN\\S\\7^^^&1.2.3&ISO");
        assert_eq!(lines[2], "PV1||I|ICU^12^A");
        assert_eq!(lines[3], "OBR|1|VB-1^VITALBRIDGE|VB-1^VITALBRIDGE|182777000^monitoring of patient^SCT|||20260105101500+0100");
        assert_eq!(lines[4], "OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.1|97.0|262688^MDC_DIM_PERCENT^MDC|||||P|||20260105101500+0100||||0012211839000001^^0012211839000001^EUI-64");
        assert_eq!(lines[5], "OBX|2|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|1.2.1.1|120|266016^MDC_DIM_MMHG^MDC|||||P|||20260105101500+0100||||0012211839000001^^0012211839000001^EUI-64");
        assert_eq!(lines[6], "OBX|3|NM|150022^MDC_PRESS_BLD_NONINV_DIA^MDC|1.2.1.2||266016^MDC_DIM_MMHG^MDC|||||X|||20260105101500+0100||||0012211839000001^^0012211839000001^EUI-64");
        assert_eq!(lines.len(), 8);
    }

    #[test]
    fn pid3_keeps_the_system_as_assigning_authority() {
        let p = |s: &str, v: &str| PatientRef::identifier(s, v);
        assert_eq!(pid3(&p("urn:oid:1.2.3", "7")), "7^^^&1.2.3&ISO");
        assert_eq!(pid3(&p("urn:uuid:ab-cd", "7")), "7^^^&ab-cd&UUID");
        assert_eq!(
            pid3(&p("https://h.example/mrn", "7")),
            "7^^^&https://h.example/mrn&URI"
        );
        assert_eq!(pid3(&p("HOSP", "7")), "7^^^HOSP");
        assert_eq!(pid3(&PatientRef::Reference("Patient/123".into())), "123");
    }
}
