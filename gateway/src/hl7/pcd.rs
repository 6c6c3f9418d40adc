//! IHE PCD-01 ("Communicate PCD Data") ORU^R01 messages → readings. Pure.
//!
//! # What is read
//!
//! | field | becomes |
//! | --- | --- |
//! | MSH-9 | must be `ORU^R01`, else the message is refused (AR) |
//! | MSH-10 | the control id the ACK echoes |
//! | MSH-11 | `T` (training) or `D` (debugging): the readings are test data (FHIR HTEST) |
//! | MSH-12 | version: 2.3 to 2.8 (PCD-01 uses 2.6), else AR |
//! | MSH-3 | the device when no OBX-18 names one (its EUI-64, HD.2 with HD.3 `EUI-64`, else its text) |
//! | MSH-7 | the time of last resort (below) |
//! | PID-3 | the patient: the first identifier with a value; the assigning authority (CX.4) is the system: HD.2 as `urn:oid:` (HD.3 `ISO`), as is (`URI`), `urn:uuid:` (`UUID`), else HD.1. An identifier without an authority is refused (AE): it would be someone's MRN in no namespace. Without PID-3 the `[[devices]]` binding of the device applies. |
//! | PV1-3 | the point of care, kept as written (`ICU^12^A`) |
//! | OBR-7 | the time of the OBX under it that carry none |
//! | OBX-2 | `NM` makes a reading; other value types make none |
//! | OBX-3 | `code^MDC_REF^MDC`: the metric, looked up by MDC code in the catalog (which adds LOINC where a vital-signs code exists) |
//! | OBX-4 | the containment path MDS.VMD.channel.metric; device-header OBX (no value type) carry the equipment id their metrics inherit |
//! | OBX-5 | the value, exactly as written (precision kept); IEEE 11073 FLOAT special values (NaN 8388607, NRes −8388608, ±INF 8388606/−8388606, reserved −8388607) and the configured vendor placeholders (e.g. −999) become a data-absent reading |
//! | OBX-6 | `code^MDC_DIM_…^MDC` translated to UCUM ([`super::units`]), or a `…^…^UCUM` code taken as is; any other unit is kept as the sender's text (OBX-6.2, else .1), marked as not UCUM ([`Bedside::unit_as_sent`]) — except on a blood-pressure part or when empty, where the OBX joins the dead letter |
//! | OBX-11 | the result status: F/U/V/B final, P/R/S preliminary (R and S have no v2-to-FHIR map; a monitor's unverified live value is preliminary), C corrected, A amended, D/W entered-in-error; X, I, N, O make no reading; empty is final |
//! | OBX-14, else OBX-19, else OBR-7, else MSH-7 | the effective time; without an offset, in `time_zone` |
//! | OBX-18 | the device: an EUI-64 (EI.3 with EI.4 `EUI-64`, or 16 hex digits in EI.1) |
//!
//! Systolic, diastolic and mean OBX of one channel (same device, channel path, time and
//! status) are one blood-pressure panel with components: the cuff's (MDC_PRESS_BLD_NONINV),
//! the arterial line's (MDC_PRESS_BLD_ART, _ABP) and the pulmonary artery's.
//!
//! # Outcomes
//!
//! - [`Mapped`]: the readings, and the numeric OBX the gateway cannot represent (a metric
//!   not in its catalog, a unit it does not know) with why — kept as one dead letter with
//!   the message, in the same commit, so nothing is dropped silently.
//! - [`Refusal`] with AE: the message parses but cannot be used (a missing OBX-3, a
//!   non-numeric NM value, a wrong escape, a bad time…); with AR: it cannot be processed
//!   (not ORU^R01, an unsupported version, no control id). Nothing of a refused message is
//!   stored. Error texts name segments and fields, never values.

use jiff::tz::TimeZone;
use time::OffsetDateTime;

use super::dtm;
use super::units;
use super::v2::{EscapeError, Message, Segment};
use crate::limits;
use crate::model::{
    AbsentReason, Bedside, Component, Decimal, DeviceId, DeviceRef, Measured, Metric, PatientRef,
    Quantity, Reading, ResultStatus, StatusFlag, TimeSync, Value,
};
use crate::profile::catalog;

/// The device profile name of readings from HL7 v2.
pub const PROFILE: &str = "hl7-pcd01";

/// The acknowledgement code of a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// AA: accepted (stored).
    Accept,
    /// AE: the message was processed and has an error; the sender should not resend it as is.
    Error,
    /// AR: the message was not processed (unsupported, or the gateway could not store it now).
    Reject,
}

impl AckCode {
    /// `AA`, `AE`, `AR`.
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::Accept => "AA",
            AckCode::Error => "AE",
            AckCode::Reject => "AR",
        }
    }
}

/// HL7 table 0357 message error codes used here.
pub mod err_code {
    /// Segment sequence error.
    pub const SEGMENT_SEQUENCE: u16 = 100;
    /// Required field missing.
    pub const REQUIRED_FIELD_MISSING: u16 = 101;
    /// Data type error.
    pub const DATA_TYPE: u16 = 102;
    /// Unsupported message type.
    pub const UNSUPPORTED_MESSAGE_TYPE: u16 = 200;
    /// Unsupported event code.
    pub const UNSUPPORTED_EVENT: u16 = 201;
    /// Unsupported version id.
    pub const UNSUPPORTED_VERSION: u16 = 203;
    /// Application internal error.
    pub const INTERNAL: u16 = 207;
}

/// Where an error is, and what it is (for the ERR segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    /// Segment id (`OBX`), empty for the whole message.
    pub segment: String,
    /// Which segment of that id (1-based).
    pub sequence: usize,
    /// Field position, 0 for the whole segment.
    pub field: usize,
    /// HL7 table 0357 code.
    pub code: u16,
    /// What is wrong; names fields, never values.
    pub text: String,
}

/// A message refused (AE or AR): nothing of it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// AE or AR.
    pub ack: AckCode,
    /// What and where.
    pub error: ErrorInfo,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = &self.error;
        if e.segment.is_empty() {
            write!(f, "{}: {}", self.ack.as_str(), e.text)
        } else if e.field == 0 {
            write!(
                f,
                "{} {}[{}]: {}",
                self.ack.as_str(),
                e.segment,
                e.sequence,
                e.text
            )
        } else {
            write!(
                f,
                "{} {}[{}]-{}: {}",
                self.ack.as_str(),
                e.segment,
                e.sequence,
                e.field,
                e.text
            )
        }
    }
}

fn refuse(
    ack: AckCode,
    segment: &str,
    sequence: usize,
    field: usize,
    code: u16,
    text: impl Into<String>,
) -> Refusal {
    Refusal {
        ack,
        error: ErrorInfo {
            segment: segment.to_owned(),
            sequence,
            field,
            code,
            text: text.into(),
        },
    }
}

/// What the ACK needs from the message's MSH, read even when the rest is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// MSH-3, MSH-4, MSH-5, MSH-6 (unescaped text of the first repetition, components joined
    /// by `^` after escaping them for the default delimiters).
    pub sending_application: String,
    /// MSH-4.
    pub sending_facility: String,
    /// MSH-5.
    pub receiving_application: String,
    /// MSH-6.
    pub receiving_facility: String,
    /// MSH-9.2, the trigger event.
    pub event: String,
    /// MSH-10.
    pub control_id: String,
    /// MSH-11, first component.
    pub processing_id: String,
    /// MSH-12, first component.
    pub version: String,
}

/// A field's first repetition re-encoded for the default delimiters (`|^~\&`), keeping its
/// components and sub-components.
pub fn normalized(message: &Message, raw_field: &str) -> Result<String, EscapeError> {
    let d = &message.delimiters;
    let out = super::v2::Delimiters::default();
    let first = d.repetitions(raw_field).into_iter().next().unwrap_or("");
    let mut components = Vec::new();
    for component in first.split(d.component) {
        let subs: Vec<&str> = match d.subcomponent {
            Some(s) => component.split(s).collect(),
            None => vec![component],
        };
        let mut parts = Vec::with_capacity(subs.len());
        for sub in subs {
            parts.push(out.escape(&d.unescape(sub, message.charset)?));
        }
        components.push(parts.join("&"));
    }
    let mut text = components.join("^");
    while text.ends_with('^') {
        text.pop();
    }
    Ok(text)
}

/// Reads the header. Values that do not unescape are left empty.
pub fn header(message: &Message) -> Header {
    let msh = message.msh();
    let field = |n: usize| normalized(message, msh.field(n)).unwrap_or_default();
    let first = |n: usize| message.value(msh, n, 1, 0).unwrap_or_default();
    Header {
        sending_application: field(3),
        sending_facility: field(4),
        receiving_application: field(5),
        receiving_facility: field(6),
        event: message.value(msh, 9, 2, 0).unwrap_or_default(),
        control_id: message.value(msh, 10, 0, 0).unwrap_or_default(),
        processing_id: first(11),
        version: first(12),
    }
}

/// Whether a version id (MSH-12) is one of 2.3 to 2.8 (with their point releases).
pub fn supported_version(v: &str) -> bool {
    let mut parts = v.split('.');
    parts.next() == Some("2")
        && parts
            .next()
            .and_then(|m| m.parse::<u8>().ok())
            .is_some_and(|m| (3..=8).contains(&m))
        && parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// What the mapping needs besides the message.
pub struct MapContext<'a> {
    /// When the gateway received the message.
    pub received_at: OffsetDateTime,
    /// The zone of times without an offset.
    pub zone: &'a TimeZone,
    /// Vendor placeholder values meaning "no value" (besides the IEEE 11073 ones).
    pub placeholders: &'a [Decimal],
    /// The `[[devices]]` patient of a device key, for messages without PID-3.
    pub binding: &'a dyn Fn(&str) -> Option<PatientRef>,
}

/// A message mapped.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// The readings, in message order (a blood-pressure panel where its first component was).
    pub readings: Vec<Reading>,
    /// Numeric OBX that cannot become readings here, each with why.
    pub unmapped: Vec<String>,
    /// OBX that make no reading by design: device headers, non-numeric values, status X.
    pub skipped: usize,
}

/// The one place HL7 v2 readings get their patient.
fn patient_ref(system: String, value: String) -> PatientRef {
    PatientRef::Identifier { system, value }
}

/// The IEEE 11073 FLOAT special values (24-bit mantissa), as PCD-01 senders pass them
/// through in OBX-5.
fn special_value(d: Decimal) -> Option<AbsentReason> {
    if d.exponent != 0 {
        return None;
    }
    Some(match d.mantissa {
        8_388_607 => AbsentReason::NotANumber,
        -8_388_608 => AbsentReason::NotAtResolution,
        8_388_606 => AbsentReason::PositiveInfinity,
        -8_388_606 => AbsentReason::NegativeInfinity,
        -8_388_607 => AbsentReason::Error,
        _ => return None,
    })
}

/// An HL7 NM value: optional sign, digits, optional decimal point (no exponent).
fn parse_nm(text: &str) -> Option<Decimal> {
    let t = text.trim();
    let body = t.strip_prefix(['+', '-']).unwrap_or(t);
    if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    Decimal::parse(t)
}

struct Panel {
    panel: Metric,
    parts: [Metric; 3],
}

fn panels() -> [Panel; 4] {
    [
        Panel {
            panel: catalog::BLOOD_PRESSURE,
            parts: [
                catalog::SYSTOLIC,
                catalog::DIASTOLIC,
                catalog::MEAN_ARTERIAL,
            ],
        },
        Panel {
            panel: catalog::PRESS_BLD_ART,
            parts: [
                catalog::PRESS_BLD_ART_SYS,
                catalog::PRESS_BLD_ART_DIA,
                catalog::PRESS_BLD_ART_MEAN,
            ],
        },
        Panel {
            panel: catalog::PRESS_BLD_ART_ABP,
            parts: [
                catalog::PRESS_BLD_ART_ABP_SYS,
                catalog::PRESS_BLD_ART_ABP_DIA,
                catalog::PRESS_BLD_ART_ABP_MEAN,
            ],
        },
        Panel {
            panel: catalog::PRESS_BLD_ART_PULM,
            parts: [
                catalog::PRESS_BLD_ART_PULM_SYS,
                catalog::PRESS_BLD_ART_PULM_DIA,
                catalog::PRESS_BLD_ART_PULM_MEAN,
            ],
        },
    ]
}

/// The EUI-64 an EI field names, if it names one.
fn eui64(message: &Message, field: &str) -> Option<[u8; 8]> {
    let d = &message.delimiters;
    for rep in d.repetitions(field) {
        let c = |n| {
            d.unescape(d.component_of_repetition(rep, n), message.charset)
                .unwrap_or_default()
        };
        // EI: entity^namespace^universal id^type; HD (MSH-3): namespace^universal id^type.
        let candidates = if c(4).eq_ignore_ascii_case("EUI-64") {
            vec![c(3), c(1)]
        } else if c(3).eq_ignore_ascii_case("EUI-64") {
            vec![c(2), c(1)]
        } else {
            vec![c(1)]
        };
        for text in candidates {
            if let Some(b) = parse_eui64(&text) {
                return Some(b);
            }
        }
    }
    None
}

fn parse_eui64(text: &str) -> Option<[u8; 8]> {
    let hex: String = text.chars().filter(|c| *c != '-' && *c != ':').collect();
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 8];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

/// A numeric observation before panels are made.
struct Obs {
    metric: Metric,
    quantity: Quantity,
    time: OffsetDateTime,
    device: DeviceId,
    containment: Vec<u32>,
    status: ResultStatus,
    patient: Option<PatientRef>,
    unit_as_sent: bool,
}

/// Maps a parsed ORU^R01 to readings (see the module docs).
pub fn map(message: &Message, ctx: &MapContext<'_>) -> Result<Mapped, Refusal> {
    let msh = message.msh();
    let reject =
        |field, code, text: &str| Err(refuse(AckCode::Reject, "MSH", 1, field, code, text));
    let value = |s: &Segment, f, c, sub| message.value(s, f, c, sub);
    let kind = value(msh, 9, 1, 0).unwrap_or_default();
    let event = value(msh, 9, 2, 0).unwrap_or_default();
    if kind.is_empty() {
        return reject(
            9,
            err_code::REQUIRED_FIELD_MISSING,
            "MSH-9 message type is missing",
        );
    }
    if kind != "ORU" {
        return reject(
            9,
            err_code::UNSUPPORTED_MESSAGE_TYPE,
            "unsupported message type: only ORU^R01 is accepted",
        );
    }
    if event != "R01" {
        return reject(
            9,
            err_code::UNSUPPORTED_EVENT,
            "unsupported trigger event: only ORU^R01 is accepted",
        );
    }
    let version = value(msh, 12, 1, 0).unwrap_or_default();
    if !supported_version(&version) {
        return reject(
            12,
            err_code::UNSUPPORTED_VERSION,
            "unsupported version: 2.3 to 2.8 are accepted",
        );
    }
    if value(msh, 10, 0, 0).unwrap_or_default().is_empty() {
        return reject(
            10,
            err_code::REQUIRED_FIELD_MISSING,
            "MSH-10 message control id is missing",
        );
    }
    let test = matches!(value(msh, 11, 1, 0).as_deref(), Ok("T") | Ok("D"));

    let mut counts: std::collections::HashMap<&str, usize> = Default::default();
    let mut located: Vec<(&Segment, usize)> = Vec::with_capacity(message.segments.len());
    for s in &message.segments {
        let n = counts.entry(s.id.as_str()).or_insert(0);
        *n += 1;
        located.push((s, *n));
    }
    let ae = |s: &Segment, seq: usize, field: usize, code: u16, text: String| {
        refuse(AckCode::Error, &s.id, seq, field, code, text)
    };
    let escape_err = |s: &Segment, seq: usize, field: usize, e: EscapeError| {
        ae(
            s,
            seq,
            field,
            err_code::DATA_TYPE,
            format!("{}-{field}: {e}", s.id),
        )
    };

    let msh7 = value(msh, 7, 1, 0).unwrap_or_default();
    let msh_time = if msh7.is_empty() {
        None
    } else {
        Some(
            dtm::parse(&msh7, ctx.zone)
                .map_err(|e| ae(msh, 1, 7, err_code::DATA_TYPE, format!("MSH-7: {e}")))?,
        )
    };
    let sender_device = eui64(message, msh.field(3))
        .map(DeviceId::Eui64)
        .or_else(|| {
            let app = normalized(message, msh.field(3)).unwrap_or_default();
            (!app.is_empty() && app.len() <= limits::MAX_ID_LEN).then_some(DeviceId::Other(app))
        });

    let mut patient: Option<PatientRef> = None;
    let mut location: Option<String> = None;
    let mut obr_time: Option<OffsetDateTime> = None;
    let mut headers: Vec<(Vec<u32>, [u8; 8])> = Vec::new();
    let mut observations: Vec<Obs> = Vec::new();
    let mut unmapped = Vec::new();
    let mut skipped = 0;

    for &(s, seq) in &located {
        match s.id.as_str() {
            "PID" if patient.is_none() => {
                patient = pid_patient(message, s)
                    .map_err(|text| ae(s, seq, 3, err_code::DATA_TYPE, text))?;
            }
            "PV1" if location.is_none() => {
                let loc = normalized(message, s.field(3)).map_err(|e| escape_err(s, seq, 3, e))?;
                if loc.len() > limits::MAX_SYSTEM_LEN {
                    return Err(ae(
                        s,
                        seq,
                        3,
                        err_code::DATA_TYPE,
                        format!("PV1-3 is longer than {} bytes", limits::MAX_SYSTEM_LEN),
                    ));
                }
                location = (!loc.is_empty()).then_some(loc);
            }
            "OBR" => {
                let t = value(s, 7, 1, 0).map_err(|e| escape_err(s, seq, 7, e))?;
                obr_time =
                    if t.is_empty() {
                        None
                    } else {
                        Some(dtm::parse(&t, ctx.zone).map_err(|e| {
                            ae(s, seq, 7, err_code::DATA_TYPE, format!("OBR-7: {e}"))
                        })?)
                    };
            }
            "OBX" => {
                let code = value(s, 3, 1, 0).map_err(|e| escape_err(s, seq, 3, e))?;
                let reference = value(s, 3, 2, 0).map_err(|e| escape_err(s, seq, 3, e))?;
                let system = value(s, 3, 3, 0).map_err(|e| escape_err(s, seq, 3, e))?;
                if code.is_empty() && reference.is_empty() {
                    return Err(ae(
                        s,
                        seq,
                        3,
                        err_code::REQUIRED_FIELD_MISSING,
                        "OBX-3 observation identifier is missing".into(),
                    ));
                }
                let sub_id = value(s, 4, 0, 0).map_err(|e| escape_err(s, seq, 4, e))?;
                let containment = parse_sub_id(&sub_id).ok_or_else(|| {
                    ae(
                        s,
                        seq,
                        4,
                        err_code::DATA_TYPE,
                        "OBX-4 is not a dotted containment path (MDS.VMD.channel.metric)".into(),
                    )
                })?;
                let own_device = eui64(message, s.field(18));
                let value_type = value(s, 2, 0, 0).map_err(|e| escape_err(s, seq, 2, e))?;
                if value_type.is_empty() {
                    // A device header (MDS, VMD, channel): its equipment id is inherited.
                    if let Some(eui) = own_device {
                        let mut prefix = containment.clone();
                        while prefix.last() == Some(&0) {
                            prefix.pop();
                        }
                        headers.push((prefix, eui));
                    }
                    skipped += 1;
                    continue;
                }
                let status_text = value(s, 11, 0, 0).map_err(|e| escape_err(s, seq, 11, e))?;
                let status = match status_text.as_str() {
                    "" | "F" | "U" | "V" | "B" => ResultStatus::Final,
                    "P" | "R" | "S" => ResultStatus::Preliminary,
                    "C" => ResultStatus::Corrected,
                    "A" => ResultStatus::Amended,
                    "D" | "W" => ResultStatus::EnteredInError,
                    "X" | "I" | "N" | "O" => {
                        skipped += 1;
                        continue;
                    }
                    _ => {
                        return Err(ae(
                            s,
                            seq,
                            11,
                            err_code::DATA_TYPE,
                            "OBX-11 is not a result status of HL7 table 0085".into(),
                        ))
                    }
                };
                if value_type != "NM" {
                    skipped += 1;
                    continue;
                }
                let raw_value = value(s, 5, 0, 0).map_err(|e| escape_err(s, seq, 5, e))?;
                let measured = if raw_value.trim().is_empty() {
                    Measured::Absent(AbsentReason::Error)
                } else {
                    let d = parse_nm(&raw_value).ok_or_else(|| {
                        ae(
                            s,
                            seq,
                            5,
                            err_code::DATA_TYPE,
                            "OBX-5 is not a number (value type NM)".into(),
                        )
                    })?;
                    match special_value(d) {
                        Some(reason) => Measured::Absent(reason),
                        None if ctx.placeholders.iter().any(|p| p.same_value(d)) => {
                            Measured::Absent(AbsentReason::Error)
                        }
                        None => Measured::Value(d),
                    }
                };
                let time_text = [(14usize, s), (19, s)]
                    .into_iter()
                    .map(|(f, s)| {
                        value(s, f, 1, 0)
                            .map(|t| (f, t))
                            .map_err(|e| escape_err(s, seq, f, e))
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .into_iter()
                    .find(|(_, t)| !t.is_empty());
                let time = match time_text {
                    Some((f, t)) => dtm::parse(&t, ctx.zone)
                        .map_err(|e| ae(s, seq, f, err_code::DATA_TYPE, format!("OBX-{f}: {e}")))?,
                    None => match obr_time.or(msh_time) {
                        Some(t) => t,
                        None => {
                            return Err(ae(
                                s,
                                seq,
                                14,
                                err_code::REQUIRED_FIELD_MISSING,
                                "no time: none of OBX-14, OBX-19, OBR-7, MSH-7".into(),
                            ))
                        }
                    },
                };
                let device = own_device
                    .or_else(|| {
                        headers
                            .iter()
                            .filter(|(p, _)| containment.starts_with(p))
                            .max_by_key(|(p, _)| p.len())
                            .map(|(_, e)| *e)
                    })
                    .map(DeviceId::Eui64)
                    .or_else(|| sender_device.clone())
                    .ok_or_else(|| {
                        ae(
                            s,
                            seq,
                            18,
                            err_code::REQUIRED_FIELD_MISSING,
                            "no device: no EUI-64 in OBX-18 or a device header, and no MSH-3"
                                .into(),
                        )
                    })?;
                // The metric.
                let metric = if system == "MDC" || system.is_empty() && !reference.is_empty() {
                    let by_code = if code.is_empty() {
                        catalog::ALL
                            .iter()
                            .find(|m| m.mdc_ref == reference)
                            .cloned()
                    } else {
                        let n: u32 = code.parse().map_err(|_| {
                            ae(
                                s,
                                seq,
                                3,
                                err_code::DATA_TYPE,
                                "OBX-3.1 is not an MDC code number".into(),
                            )
                        })?;
                        catalog::by_mdc(n)
                    };
                    match by_code {
                        Some(m) => m,
                        None => {
                            unmapped.push(format!(
                                "OBX[{seq}]: MDC code {} ({}) is not in this gateway's catalog",
                                clip(&code),
                                clip(&reference)
                            ));
                            continue;
                        }
                    }
                } else if system == "LN" {
                    match catalog::ALL.iter().find(|m| m.loinc == Some(code.as_str())) {
                        Some(m) => m.clone(),
                        None => {
                            unmapped.push(format!(
                                "OBX[{seq}]: LOINC code {} is not in this gateway's catalog",
                                clip(&code)
                            ));
                            continue;
                        }
                    }
                } else {
                    unmapped.push(format!(
                        "OBX[{seq}]: coding system {} of OBX-3 is not MDC or LN",
                        clip(&system)
                    ));
                    continue;
                };
                // The unit.
                let unit_code = value(s, 6, 1, 0).map_err(|e| escape_err(s, seq, 6, e))?;
                let unit_ref = value(s, 6, 2, 0).map_err(|e| escape_err(s, seq, 6, e))?;
                let unit_system = value(s, 6, 3, 0).map_err(|e| escape_err(s, seq, 6, e))?;
                let unit = match unit_system.as_str() {
                    "MDC" => units::ucum_of_mdc(&unit_code, &unit_ref).map(str::to_owned),
                    "UCUM" if valid_ucum_token(&unit_code) => Some(unit_code.clone()),
                    _ => None,
                };
                // A unit that is neither: kept as the sender's text on a single quantity; a
                // blood-pressure part (its panel needs one unit system) or no unit at all
                // becomes part of the dead letter. Never guessed either way.
                let text = if unit_ref.is_empty() {
                    &unit_code
                } else {
                    &unit_ref
                };
                let (unit, unit_as_sent) = match unit {
                    Some(u) => (u, false),
                    None if valid_unit_text(text) && !is_panel_part(&metric) => {
                        (text.clone(), true)
                    }
                    None => {
                        unmapped.push(format!(
                            "OBX[{seq}]: unit {}^{}^{} is neither a known MDC unit nor UCUM; kept here, not guessed",
                            clip(&unit_code), clip(&unit_ref), clip(&unit_system)
                        ));
                        continue;
                    }
                };
                let bound = patient.clone().or_else(|| (ctx.binding)(&device.key()));
                observations.push(Obs {
                    metric,
                    quantity: Quantity {
                        value: measured,
                        unit,
                    },
                    time,
                    device,
                    containment,
                    status,
                    patient: bound,
                    unit_as_sent,
                });
            }
            _ => {}
        }
    }
    let readings = combine(observations, location, test, ctx.received_at);
    Ok(Mapped {
        readings,
        unmapped,
        skipped,
    })
}

fn clip(text: &str) -> String {
    let mut t: String = text.chars().filter(|c| !c.is_control()).take(64).collect();
    if text.chars().count() > 64 {
        t.push('…');
    }
    t
}

fn valid_unit_text(text: &str) -> bool {
    !text.trim().is_empty()
        && text.len() <= limits::MAX_UNIT_LEN
        && !text.chars().any(char::is_control)
}

fn is_panel_part(m: &Metric) -> bool {
    panels()
        .iter()
        .any(|p| p.parts.iter().any(|c| c.mdc == m.mdc))
}

fn valid_ucum_token(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= limits::MAX_UNIT_LEN
        && code.bytes().all(|b| b.is_ascii_graphic())
}

/// OBX-4 as numbers; empty is an empty path.
fn parse_sub_id(text: &str) -> Option<Vec<u32>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    let parts: Option<Vec<u32>> = text.split('.').map(|p| p.parse().ok()).collect();
    parts.filter(|p| p.len() <= 8)
}

/// The patient of PID-3, `Ok(None)` when PID-3 is empty.
fn pid_patient(message: &Message, pid: &Segment) -> Result<Option<PatientRef>, String> {
    let d = &message.delimiters;
    let un = |raw: &str| {
        d.unescape(raw, message.charset)
            .map_err(|e| format!("PID-3: {e}"))
    };
    for rep in d.repetitions(pid.field(3)) {
        let value = un(d.component_of_repetition(rep, 1))?;
        if value.is_empty() {
            continue;
        }
        if value.len() > limits::MAX_ID_LEN {
            return Err(format!(
                "PID-3.1 is longer than {} bytes",
                limits::MAX_ID_LEN
            ));
        }
        let authority = d.component_of_repetition(rep, 4);
        let namespace = un(d.subcomponent(authority, 1))?;
        let universal = un(d.subcomponent(authority, 2))?;
        let kind = un(d.subcomponent(authority, 3))?;
        let system = match kind.as_str() {
            "ISO" if !universal.is_empty() => format!("urn:oid:{universal}"),
            "UUID" if !universal.is_empty() => format!("urn:uuid:{universal}"),
            "URI" if !universal.is_empty() => universal,
            _ if !namespace.is_empty() => namespace,
            _ => return Err(
                "PID-3 has no assigning authority (CX.4): the identifier would have no namespace"
                    .into(),
            ),
        };
        if system.len() > limits::MAX_SYSTEM_LEN {
            return Err(format!(
                "PID-3.4 is longer than {} bytes",
                limits::MAX_SYSTEM_LEN
            ));
        }
        return Ok(Some(patient_ref(system, value)));
    }
    Ok(None)
}

/// What makes blood-pressure parts one panel: the panel, device, channel, time and status.
type PanelKey = (usize, DeviceId, Vec<u32>, OffsetDateTime, ResultStatus);

/// Readings from observations: blood-pressure parts of one channel become one panel.
fn combine(
    observations: Vec<Obs>,
    location: Option<String>,
    test: bool,
    received_at: OffsetDateTime,
) -> Vec<Reading> {
    let panels = panels();
    let part_of = |m: &Metric| {
        panels
            .iter()
            .enumerate()
            .find_map(|(i, p)| p.parts.iter().position(|c| c.mdc == m.mdc).map(|j| (i, j)))
    };
    let channel = |c: &[u32]| c[..c.len().min(3)].to_vec();
    // (panel index, device, channel, time, status, patient) → reading index.
    let mut open: Vec<(PanelKey, usize)> = Vec::new();
    let mut readings: Vec<Reading> = Vec::with_capacity(observations.len());
    let bedside = |containment: Vec<u32>, status, unit_as_sent| {
        Some(Box::new(Bedside {
            containment,
            location: location.clone(),
            status,
            unit_as_sent,
        }))
    };
    for o in observations {
        let reading = |metric: Metric, value: Value, containment: Vec<u32>, o: &Obs| Reading {
            device: DeviceRef {
                id: o.device.clone(),
                profile: PROFILE.into(),
                model: None,
                manufacturer: None,
            },
            patient: o.patient.clone(),
            metric,
            value,
            device_time: Some(o.time),
            clock_offset: None,
            received_at,
            duration: None,
            sequence: None,
            status: if test {
                vec![StatusFlag::TestData]
            } else {
                Vec::new()
            },
            device_user: None,
            bedside: bedside(containment, o.status, o.unit_as_sent),
            time_sync: Some(TimeSync::Hl7TimeZone),
        };
        match part_of(&o.metric) {
            Some((p, _)) => {
                let key = (
                    p,
                    o.device.clone(),
                    channel(&o.containment),
                    o.time,
                    o.status,
                );
                let component = Component {
                    metric: o.metric.clone(),
                    quantity: o.quantity.clone(),
                };
                match open.iter().find(|(k, _)| *k == key) {
                    Some((_, i)) => {
                        if let Value::Components(parts) = &mut readings[*i].value {
                            parts.push(component);
                            let order = |c: &Component| {
                                panels[p].parts.iter().position(|m| m.mdc == c.metric.mdc)
                            };
                            parts.sort_by_key(order);
                        }
                    }
                    None => {
                        open.push((key, readings.len()));
                        readings.push(reading(
                            panels[p].panel.clone(),
                            Value::Components(vec![component]),
                            channel(&o.containment),
                            &o,
                        ));
                    }
                }
            }
            None => {
                let metric = o.metric.clone();
                let value = Value::Quantity(o.quantity.clone());
                let containment = o.containment.clone();
                readings.push(reading(metric, value, containment, &o));
            }
        }
    }
    readings
}

#[cfg(test)]
mod tests;
