//! Observation and Device resources for one reading / one device.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{json, Value as Json};

use super::{
    if_none_exist, urn_uuid, Gateway, UnitConverter, IDENTIFIER_SYSTEM, LOINC, MDC,
    PQ_TRANSLATION_EXTENSION, STATUS_SYSTEM, TIME_SOURCE_EXTENSION, UCUM,
};
use crate::model::{
    search_safe, AbsentReason, Decimal, DeviceId, DeviceRef, Measured, Metric, PatientRef,
    Quantity, Reading, ResultStatus, StatusFlag, TimeSource, TimeText, Value,
};

/// PHD's identifier system for IEEE EUI-64 system ids.
pub const EUI64_SYSTEM: &str = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680";
/// Bluetooth device addresses (EUI-48).
pub const BLUETOOTH_SYSTEM: &str = "http://hl7.org/fhir/sid/eui-48/bluetooth";
/// Serial numbers and other device ids (qualified by the device profile).
pub const DEVICE_ID_SYSTEM: &str = "https://vitalbridge.dev/fhir/sid/device-id";
/// Gateway ids.
pub const GATEWAY_SYSTEM: &str = "https://vitalbridge.dev/fhir/sid/gateway";
/// The PHD IG's base Observation profile.
const PHD_BASE_PROFILE: &str = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation";
/// FHIR's data-absent-reason code system.
const DATA_ABSENT_REASON: &str = "http://terminology.hl7.org/CodeSystem/data-absent-reason";
/// The core extension pointing an Observation at the gateway that relayed it (PHD).
const GATEWAY_DEVICE_EXTENSION: &str =
    "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice";

/// A Device resource with what a Bundle entry needs.
#[derive(Debug, Clone)]
pub struct DeviceIdentifier {
    /// `urn:uuid:` fullUrl, deterministic.
    pub full_url: String,
    /// `identifier=system|value` for conditional create.
    pub if_none_exist: String,
    /// The Device resource.
    pub resource: Json,
}

/// A decimal written as a JSON number with exactly its own digits (`2.00` stays `2.00`).
struct Dec(Decimal);

impl Serialize for Dec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use std::io::Write;
        // `Decimal`'s Display is a valid JSON number literal, written here into a stack
        // buffer (the longest, an i64's digits behind 127 zeros or `0.`, is under 160 bytes)
        // and passed on as raw JSON: the exact text, nothing allocated.
        const CAP: usize = 160;
        let mut buf = [0u8; CAP];
        let mut out = &mut buf[..];
        let written = write!(out, "{}", self.0).is_ok();
        let len = CAP - out.len();
        let raw = std::str::from_utf8(&buf[..len])
            .ok()
            .filter(|_| written)
            .and_then(|text| serde_json::from_str::<&RawValue>(text).ok());
        match raw {
            Some(raw) => raw.serialize(serializer),
            None => serializer.serialize_none(),
        }
    }
}

#[derive(Serialize)]
struct Coding<'a> {
    system: &'a str,
    code: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<&'a str>,
}

impl<'a> Coding<'a> {
    fn new(system: &'a str, code: impl Into<Cow<'a, str>>, display: Option<&'a str>) -> Self {
        Self {
            system,
            code: code.into(),
            display,
        }
    }
}

#[derive(Serialize)]
struct Concept<'a> {
    coding: Vec<Coding<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
}

impl<'a> Concept<'a> {
    fn one(coding: Coding<'a>) -> Self {
        Self {
            coding: vec![coding],
            text: None,
        }
    }

    /// The `code` of a metric: LOINC (where there is one) and MDC. SpO2 measured by a pulse
    /// oximeter (MDC_PULS_OXIM_SAT_O2) also carries LOINC 59408-5, as the FHIR
    /// oxygen-saturation example does, so a search on either code finds it.
    fn metric(m: &'a Metric) -> Self {
        let mut coding = Vec::with_capacity(3);
        if let Some(loinc) = m.loinc {
            coding.push(Coding::new(LOINC, loinc, Some(m.display)));
        }
        if m.mdc == SPO2_BY_PULSE_OXIMETRY_MDC {
            coding.push(Coding::new(
                LOINC,
                "59408-5",
                Some("Oxygen saturation in Arterial blood by Pulse oximetry"),
            ));
        }
        coding.push(Coding::new(MDC, m.mdc.to_string(), Some(m.mdc_ref)));
        Self {
            coding,
            text: Some(m.display),
        }
    }

    fn absent(r: AbsentReason) -> Self {
        Self::one(Coding::new(DATA_ABSENT_REASON, r.as_str(), None))
    }
}

/// Serialized once and kept: JSON that is the same in every Observation where it appears.
fn constant_json(value: impl Serialize) -> &'static RawValue {
    match serde_json::value::to_raw_value(&value) {
        Ok(raw) => Box::leak(raw),
        // Serializing these types into a string cannot fail.
        Err(_) => RawValue::NULL,
    }
}

/// The `code` of a metric ([`Concept::metric`]), serialized once per catalog metric (every
/// metric is a catalog constant, so this holds a few dozen at most): the same bytes in every
/// Observation of that metric, written without escaping its strings again.
fn metric_code(m: &Metric) -> &'static RawValue {
    type Codes = RwLock<HashMap<(u32, Option<&'static str>, &'static str), &'static RawValue>>;
    static CODES: OnceLock<Codes> = OnceLock::new();
    let codes = CODES.get_or_init(Default::default);
    let key = (m.mdc, m.loinc, m.display);
    if let Some(code) = codes.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return code;
    }
    let mut codes = codes.write().unwrap_or_else(|e| e.into_inner());
    codes
        .entry(key)
        .or_insert_with(|| constant_json(Concept::metric(m)))
}

/// `Observation.category`: PHD's, after `vital-signs` for a vital sign; serialized once each.
fn category(vital_sign: bool) -> &'static RawValue {
    static CATEGORIES: OnceLock<[&'static RawValue; 2]> = OnceLock::new();
    let [other, vital] = *CATEGORIES.get_or_init(|| {
        let phd = || {
            Concept::one(Coding::new(
                "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories",
                "phd",
                Some("PHD generated Observation"),
            ))
        };
        let vital_signs = Concept::one(Coding::new(
            "http://terminology.hl7.org/CodeSystem/observation-category",
            "vital-signs",
            Some("Vital Signs"),
        ));
        [constant_json([phd()]), constant_json([vital_signs, phd()])]
    });
    if vital_sign {
        vital
    } else {
        other
    }
}

#[derive(Serialize)]
struct Qty<'a> {
    /// With converted units: the quantity as the device sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    extension: Option<[Translation<'a>; 1]>,
    value: Dec,
    unit: &'a str,
    /// UCUM, unless the unit is a sender's text that is not UCUM (HL7 v2 OBX-6).
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
}

/// The `iso21090-PQ-translation` extension: the same quantity in another unit.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Translation<'a> {
    url: &'static str,
    value_quantity: Original<'a>,
}

/// The quantity as the device sent it, inside [`Translation`].
#[derive(Serialize)]
struct Original<'a> {
    value: Dec,
    unit: &'a str,
    system: &'static str,
    code: &'a str,
}

impl<'a> Qty<'a> {
    fn new(value: Decimal, unit: &'a str) -> Self {
        Self {
            extension: None,
            value: Dec(value),
            unit,
            system: Some(UCUM),
            code: Some(unit),
        }
    }

    /// A unit that is not UCUM: its text only, no coded unit.
    fn text_unit(value: Decimal, unit: &'a str) -> Self {
        Self {
            system: None,
            code: None,
            ..Self::new(value, unit)
        }
    }
}

/// Converts quantities to their metric's canonical unit, where the configuration asks for it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Converter(pub(super) Option<UnitConverter>);

impl Converter {
    /// The value in the metric's canonical unit, if it is in another one that converts.
    fn canonical(self, metric: &Metric, value: Decimal, unit: &str) -> Option<Decimal> {
        let convert = self.0?;
        (unit != metric.unit)
            .then(|| convert(value, unit, metric.unit))
            .flatten()
    }

    /// The unit a quantity of `metric` is written in.
    fn unit_of<'a>(self, metric: &'a Metric, q: &'a Quantity) -> &'a str {
        match q.value {
            Measured::Value(v) if self.canonical(metric, v, &q.unit).is_some() => metric.unit,
            _ => &q.unit,
        }
    }
}

#[derive(Serialize)]
struct Reference<'a> {
    reference: &'a str,
}

#[derive(Serialize)]
struct Identifier<'a> {
    system: &'a str,
    value: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Subject<'a> {
    Reference(Reference<'a>),
    Identifier {
        identifier: Identifier<'a>,
    },
    /// A reference the server resolves (a conditional reference or a Bundle entry's
    /// `urn:uuid`), with the identifier kept beside it.
    Both {
        reference: &'a str,
        identifier: Identifier<'a>,
    },
}

#[derive(Serialize)]
struct Meta<'a> {
    #[serde(skip_serializing_if = "Profiles::is_empty")]
    profile: Profiles,
    #[serde(skip_serializing_if = "Option::is_none")]
    security: Option<[Coding<'a>; 1]>,
    /// The device profile (and its version) that decoded the reading: [`PROFILE_TAG_SYSTEM`].
    tag: [Coding<'a>; 1],
}

/// `Observation.meta.profile`: the PHD base profile when the reading has a patient, and then
/// the FHIR vital-signs profile the Observation may claim (its short name, written as the
/// full canonical URL without building it first).
struct Profiles {
    phd: bool,
    vital_signs: Option<&'static str>,
}

impl Profiles {
    fn is_empty(&self) -> bool {
        !self.phd
    }
}

impl Serialize for Profiles {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        struct VitalSigns(&'static str);
        impl Serialize for VitalSigns {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&format_args!(
                    "http://hl7.org/fhir/StructureDefinition/{}",
                    self.0
                ))
            }
        }
        let len = usize::from(self.phd) + usize::from(self.phd && self.vital_signs.is_some());
        let mut seq = s.serialize_seq(Some(len))?;
        if self.phd {
            seq.serialize_element(PHD_BASE_PROFILE)?;
            if let Some(vs) = self.vital_signs {
                seq.serialize_element(&VitalSigns(vs))?;
            }
        }
        seq.end()
    }
}

/// The code system of `Observation.meta.tag` naming the device profile that decoded a
/// reading, as `id` or `id@version` (vendor JSON profiles), so the Observations of a bad
/// profile version can be found on the server.
pub const PROFILE_TAG_SYSTEM: &str = "https://vitalbridge.dev/fhir/CodeSystem/device-profile";

/// `extension[gatewayDevice]`: the gateway Device that relayed the reading.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GatewayExtension<'a> {
    url: &'static str,
    value_reference: Reference<'a>,
}

/// [`TIME_SOURCE_EXTENSION`] of one reading, written from these fields (no list of parts is
/// built: every Observation carries one).
struct TimeSourceExtension {
    source: TimeSource,
    /// With [`TimeSource::DeviceCorrected`]: the device's own time (`deviceTime`) and the
    /// correction (`offsetMs`); the time is formatted only then.
    device_time: Option<DateTime>,
    offset_ms: i64,
    /// How the device clock is known, when it has one (`synchronization`).
    synchronization: Option<&'static str>,
}

impl TimeSourceExtension {
    fn new(r: &Reading, source: TimeSource) -> Self {
        Self {
            source,
            device_time: r
                .device_time
                .filter(|_| source == TimeSource::DeviceCorrected)
                .map(|t| DateTime(TimeText::new(t))),
            offset_ms: r
                .clock_offset
                .map(|d| d.whole_milliseconds() as i64)
                .unwrap_or(0),
            synchronization: r
                .time_sync
                .filter(|_| r.device_time.is_some())
                .map(|sync| sync.as_str()),
        }
    }
}

impl Serialize for TimeSourceExtension {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut e = s.serialize_struct("Extension", 2)?;
        e.serialize_field("url", TIME_SOURCE_EXTENSION)?;
        e.serialize_field("extension", &TimeSourceParts(self))?;
        e.end()
    }
}

/// The nested extensions of [`TimeSourceExtension`], in their order.
struct TimeSourceParts<'a>(&'a TimeSourceExtension);

impl Serialize for TimeSourceParts<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Code {
            url: &'static str,
            value_code: &'static str,
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct When<'a> {
            url: &'static str,
            value_date_time: &'a str,
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Integer {
            url: &'static str,
            value_integer: i64,
        }
        let e = self.0;
        let corrected = e.source == TimeSource::DeviceCorrected;
        let len = 1 + 2 * usize::from(corrected) + usize::from(e.synchronization.is_some());
        let mut seq = s.serialize_seq(Some(len))?;
        seq.serialize_element(&Code {
            url: "source",
            value_code: e.source.as_str(),
        })?;
        if corrected {
            seq.serialize_element(&When {
                url: "deviceTime",
                value_date_time: e.device_time.as_ref().map_or("", |t| t.0.as_str()),
            })?;
            seq.serialize_element(&Integer {
                url: "offsetMs",
                value_integer: e.offset_ms,
            })?;
        }
        if let Some(sync) = e.synchronization {
            seq.serialize_element(&Code {
                url: "synchronization",
                value_code: sync,
            })?;
        }
        seq.end()
    }
}

/// A time as FHIR `dateTime` text, written from its buffer (the model derives no serde).
struct DateTime(TimeText);

impl Serialize for DateTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

#[derive(Serialize)]
struct Period {
    start: DateTime,
    end: DateTime,
    extension: [TimeSourceExtension; 1],
}

/// `_effectiveDateTime`: the extensions of the primitive `effectiveDateTime`.
#[derive(Serialize)]
struct Extensions {
    extension: [TimeSourceExtension; 1],
}

#[derive(Serialize)]
struct SampledData<'a> {
    origin: Qty<'a>,
    period: Dec,
    factor: Dec,
    dimensions: u32,
    data: String,
}

/// `value[x]`, `dataAbsentReason` or `component`: what the reading says.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
enum ObsValue<'a> {
    ValueQuantity(Qty<'a>),
    DataAbsentReason(Concept<'a>),
    Component(Vec<ObsComponent<'a>>),
    ValueSampledData(SampledData<'a>),
    ValueCodeableConcept(Concept<'a>),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ObsComponent<'a> {
    code: &'static RawValue,
    #[serde(flatten)]
    value: ObsValue<'a>,
}

fn measured<'a>(q: &'a Quantity, metric: &'a Metric, units: Converter) -> ObsValue<'a> {
    match q.value {
        Measured::Value(d) => match units.canonical(metric, d, &q.unit) {
            Some(converted) => ObsValue::ValueQuantity(Qty {
                extension: Some([Translation {
                    url: PQ_TRANSLATION_EXTENSION,
                    value_quantity: Original {
                        value: Dec(d),
                        unit: &q.unit,
                        system: UCUM,
                        code: &q.unit,
                    },
                }]),
                ..Qty::new(converted, metric.unit)
            }),
            None => ObsValue::ValueQuantity(Qty::new(d, &q.unit)),
        },
        Measured::Absent(r) => ObsValue::DataAbsentReason(Concept::absent(r)),
    }
}

/// The Observation resource of one reading, as typed JSON (field order = output order).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Observation<'a> {
    resource_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<Meta<'a>>,
    identifier: [Identifier<'a>; 1],
    status: &'static str,
    category: &'static RawValue,
    code: &'static RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<Subject<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    effective_period: Option<Period>,
    #[serde(skip_serializing_if = "Option::is_none")]
    effective_date_time: Option<DateTime>,
    #[serde(rename = "_effectiveDateTime", skip_serializing_if = "Option::is_none")]
    effective_date_time_ext: Option<Extensions>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    interpretation: Vec<Concept<'a>>,
    #[serde(flatten)]
    value: ObsValue<'a>,
    device: Reference<'a>,
    extension: [GatewayExtension<'a>; 1],
}

impl<'a> Observation<'a> {
    /// The Observation for `r` whose identifier value is `identifier` (`r.identifier()`,
    /// passed in so a caller that already has it does not build it twice), referencing its
    /// Device and the gateway Device by `device_url` and `gateway_url`; values in the units
    /// the device sent, the patient by identifier only.
    pub fn new(
        r: &'a Reading,
        identifier: &'a str,
        device_url: &'a str,
        gateway_url: &'a str,
    ) -> Self {
        Self::new_with(r, identifier, device_url, gateway_url, None, None)
    }

    /// [`Observation::new`], with `patient_url`, when given, as the `subject.reference` for a
    /// patient bound by identifier (a conditional reference or the `urn:uuid` of the Patient
    /// entry; the identifier stays beside it), and values converted to their metric's
    /// canonical unit by `convert_units` where it is given ([`Gateway::convert_units`]).
    pub fn new_with(
        r: &'a Reading,
        identifier: &'a str,
        device_url: &'a str,
        gateway_url: &'a str,
        patient_url: Option<&'a str>,
        convert_units: Option<UnitConverter>,
    ) -> Self {
        let units = Converter(convert_units);
        let meta = {
            let profile = Profiles {
                phd: r.patient.is_some(),
                vital_signs: r
                    .patient
                    .is_some()
                    .then(|| vital_signs_profile(r, units))
                    .flatten(),
            };
            let security = r.status.contains(&StatusFlag::TestData).then(|| {
                [Coding::new(
                    "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                    "HTEST",
                    Some("test health data"),
                )]
            });
            let tag = [Coding::new(PROFILE_TAG_SYSTEM, &r.device.profile, None)];
            Some(Meta {
                profile,
                security,
                tag,
            })
        };
        let subject = r.patient.as_ref().map(|p| match p {
            PatientRef::Reference(reference) => Subject::Reference(Reference { reference }),
            PatientRef::Identifier { system, value } => match patient_url {
                Some(reference) => Subject::Both {
                    reference,
                    identifier: Identifier { system, value },
                },
                None => Subject::Identifier {
                    identifier: Identifier { system, value },
                },
            },
        });
        let (when, source) = r.effective_time();
        let time_ext = TimeSourceExtension::new(r, source);
        let (effective_period, effective_date_time, effective_date_time_ext) = match r.duration {
            Some(d) => (
                Some(Period {
                    start: DateTime(TimeText::new(when - d)),
                    end: DateTime(TimeText::new(when)),
                    extension: [time_ext],
                }),
                None,
                None,
            ),
            None => (
                None,
                Some(DateTime(TimeText::new(when))),
                Some(Extensions {
                    extension: [time_ext],
                }),
            ),
        };
        let interpretation = r
            .status
            .iter()
            .filter(|f| **f != StatusFlag::TestData)
            .map(|f| {
                Concept::one(Coding::new(
                    STATUS_SYSTEM,
                    f.as_str(),
                    Some(status_display(*f)),
                ))
            })
            .collect();
        let value = match &r.value {
            Value::Quantity(q) => match (q.value, &r.bedside) {
                (Measured::Value(d), Some(b)) if b.unit_as_sent => {
                    ObsValue::ValueQuantity(Qty::text_unit(d, &q.unit))
                }
                _ => measured(q, &r.metric, units),
            },
            Value::Components(parts) => ObsValue::Component(
                parts
                    .iter()
                    .map(|c| ObsComponent {
                        code: metric_code(&c.metric),
                        value: measured(&c.quantity, &c.metric, units),
                    })
                    .collect(),
            ),
            Value::Samples(s) => ObsValue::ValueSampledData(SampledData {
                origin: Qty::new(s.origin, &s.unit),
                period: Dec(s.period_ms),
                factor: Dec(s.factor),
                dimensions: 1,
                data: s
                    .data
                    .iter()
                    .map(i32::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
            }),
            Value::Coded {
                system,
                code,
                display,
            } => ObsValue::ValueCodeableConcept(Concept::one(Coding::new(
                system,
                code.as_str(),
                display.as_deref(),
            ))),
        };
        let gateway = GatewayExtension {
            url: GATEWAY_DEVICE_EXTENSION,
            value_reference: Reference {
                reference: gateway_url,
            },
        };
        Self {
            resource_type: "Observation",
            meta,
            identifier: [Identifier {
                system: IDENTIFIER_SYSTEM,
                value: identifier,
            }],
            // PHD: `final` unless the measurement status says otherwise; here, unless the
            // sender's result status (HL7 OBX-11) is another, or a flag of the device or of
            // the gateway's checks doubts the value or its time.
            status: match r.bedside.as_ref().map(|b| b.status) {
                Some(status) if status != ResultStatus::Final => status.fhir_code(),
                _ if r.status.iter().any(|f| f.doubts_value()) => "preliminary",
                _ => "final",
            },
            category: category(is_vital_sign(&r.metric)),
            code: metric_code(&r.metric),
            subject,
            effective_period,
            effective_date_time,
            effective_date_time_ext,
            interpretation,
            value,
            device: Reference {
                reference: device_url,
            },
            extension: [gateway],
        }
    }
}

/// MDC_PULS_OXIM_SAT_O2: SpO2, which only a pulse oximeter measures.
const SPO2_BY_PULSE_OXIMETRY_MDC: u32 = 150456;

/// MDC codes of blood-pressure parts that are vital signs on their own (systolic,
/// diastolic, mean), though only the panel can claim the `bp` profile.
const BLOOD_PRESSURE_PARTS_MDC: [u32; 3] = [150021, 150022, 150023];

/// Whether an Observation of `m` is in the `vital-signs` category: a metric with a
/// vital-signs profile, or a part of a blood pressure sent on its own.
fn is_vital_sign(m: &Metric) -> bool {
    m.vital_sign_profile.is_some() || BLOOD_PRESSURE_PARTS_MDC.contains(&m.mdc)
}

/// UCUM codes each FHIR R4 vital-signs profile allows for `valueQuantity.code` (its required
/// unit bindings; blood pressure: its components). `None`: the profile fixes no unit.
fn vital_signs_units(profile: &str) -> Option<&'static [&'static str]> {
    Some(match profile {
        "bp" => &["mm[Hg]"],
        "heartrate" | "resprate" => &["/min"],
        "oxygensat" => &["%"],
        "bodytemp" => &["Cel", "[degF]"],
        "bodyweight" => &["kg", "g", "[lb_av]"],
        "bodyheight" | "headcircum" => &["cm", "[in_i]"],
        "bmi" => &["kg/m2"],
        _ => return None,
    })
}

/// The vital-signs profile the Observation of `r` may claim: the metric's, unless the value is
/// written in a unit that profile does not allow (a kPa cuff, a height in metres, kept as the
/// device sent them). Such a reading claims only the PHD profile. With converted units the
/// value is in the metric's canonical unit, which every profile allows.
fn vital_signs_profile(r: &Reading, units: Converter) -> Option<&'static str> {
    let profile = r.metric.vital_sign_profile?;
    let Some(allowed) = vital_signs_units(profile) else {
        return Some(profile);
    };
    if r.bedside.as_ref().is_some_and(|b| b.unit_as_sent) {
        return None;
    }
    let fits = match &r.value {
        Value::Quantity(q) => allowed.contains(&units.unit_of(&r.metric, q)),
        Value::Components(parts) => parts
            .iter()
            .all(|c| allowed.contains(&units.unit_of(&c.metric, &c.quantity))),
        Value::Samples(_) | Value::Coded { .. } => false,
    };
    fits.then_some(profile)
}

fn status_display(flag: StatusFlag) -> &'static str {
    match flag {
        StatusFlag::BodyMovement => "Body movement during measurement",
        StatusFlag::CuffLoose => "Cuff too loose",
        StatusFlag::IrregularPulse => "Irregular pulse detected",
        StatusFlag::PulseRateOutOfRange => "Pulse rate out of range",
        StatusFlag::ImproperPosition => "Improper measurement position",
        StatusFlag::Questionable => "Questionable measurement",
        StatusFlag::Calibrating => "Device calibrating",
        StatusFlag::TestData => "Test data",
        StatusFlag::LowBattery => "Low battery",
        StatusFlag::SensorFault => "Sensor fault",
        StatusFlag::Invalid => "Invalid measurement",
        StatusFlag::Implausible => "Outside physiological limits (gateway check)",
        StatusFlag::TimeInFuture => "Measurement time ahead of the gateway's clock",
        StatusFlag::TimeTooOld => "Measurement time implausibly old",
    }
}

/// The Observation for `r` as a JSON value, referencing its Device and the gateway Device
/// by fullUrl (or any reference). For one-off use (the CLI, the file uplink); the Bundle
/// writer serializes [`Observation`] directly.
pub fn observation(r: &Reading, device_url: &str, gateway_url: &str) -> Json {
    let identifier = r.identifier();
    // Serializing these types into a Value cannot fail: every key is a string.
    serde_json::to_value(Observation::new(r, &identifier, device_url, gateway_url))
        .unwrap_or(Json::Null)
}

/// The identifier (system, value) of a measuring device. A serial number or other id is
/// written search-safe ([`search_safe`]); `serialNumber` keeps it as the device gave it.
pub fn device_identifier(d: &DeviceRef) -> (String, String) {
    match &d.id {
        DeviceId::Eui64(_) => (EUI64_SYSTEM.to_owned(), d.id.key()),
        DeviceId::Bluetooth(_) => (BLUETOOTH_SYSTEM.to_owned(), d.id.key()),
        DeviceId::Serial(s) => (
            format!("{DEVICE_ID_SYSTEM}/serial"),
            search_safe(s).into_owned(),
        ),
        DeviceId::Other(s) => (DEVICE_ID_SYSTEM.to_owned(), search_safe(s).into_owned()),
    }
}

/// A measuring device's Device resource, written straight from the device (the Bundle
/// writes one per distinct device of every batch, so no JSON tree is built for it).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceResource<'a> {
    resource_type: &'static str,
    identifier: [Identifier<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    serial_number: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    manufacturer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_number: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_name: Option<[DeviceName<'a>; 1]>,
    property: [ProfileProperty<'a>; 1],
}

#[derive(Serialize)]
struct DeviceName<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProfileProperty<'a> {
    #[serde(rename = "type")]
    kind: Text<'static>,
    value_code: [Text<'a>; 1],
}

#[derive(Serialize)]
struct Text<'a> {
    text: &'a str,
}

impl<'a> DeviceResource<'a> {
    /// The resource of `d`, identified by `system` and `value` ([`device_identifier`]).
    pub fn new(d: &'a DeviceRef, system: &'a str, value: &'a str) -> Self {
        Self {
            resource_type: "Device",
            identifier: [Identifier { system, value }],
            serial_number: match &d.id {
                DeviceId::Serial(s) => Some(s),
                _ => None,
            },
            manufacturer: d.manufacturer.as_deref(),
            model_number: d.model.as_deref(),
            device_name: d.model.as_deref().map(|name| {
                [DeviceName {
                    name,
                    kind: "model-name",
                }]
            }),
            property: [ProfileProperty {
                kind: Text {
                    text: "vitalbridge device profile",
                },
                value_code: [Text { text: &d.profile }],
            }],
        }
    }
}

/// The `fullUrl` of a measuring device's entry, from its identifier.
pub fn device_full_url(system: &str, value: &str) -> String {
    urn_uuid("Device", &format!("{system}|{value}"))
}

/// The Device resource for a measuring device.
pub fn device(d: &DeviceRef) -> DeviceIdentifier {
    let (system, value) = device_identifier(d);
    // A struct of strings always converts.
    let resource =
        serde_json::to_value(DeviceResource::new(d, &system, &value)).unwrap_or(Json::Null);
    DeviceIdentifier {
        full_url: device_full_url(&system, &value),
        if_none_exist: if_none_exist(&system, &value),
        resource,
    }
}

/// The Device resource for this gateway (PHD: the personal health gateway).
pub fn gateway_device(g: &Gateway) -> DeviceIdentifier {
    let id = search_safe(&g.id);
    let resource = json!({
        "resourceType": "Device",
        "identifier": [{"system": GATEWAY_SYSTEM, "value": id}],
        "manufacturer": "Vitalbridge",
        "deviceName": [{"name": "Vitalbridge gateway", "type": "manufacturer-name"}],
        "version": [{"value": g.version}],
        "property": [{"type": {"text": "time synchronization"}, "valueCode": [{"text": "host system clock (NTP)"}]}],
    });
    DeviceIdentifier {
        full_url: urn_uuid("Device", &format!("{GATEWAY_SYSTEM}|{id}")),
        if_none_exist: if_none_exist(GATEWAY_SYSTEM, &id),
        resource,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::catalog;

    /// The kept `code` and `category` are exactly what serializing them each time wrote, for
    /// every catalog metric, and metrics that share an MDC code (glucose by mass and by
    /// substance) keep their own.
    #[test]
    fn kept_codes_and_categories_are_the_json_written_each_time_before() {
        for m in catalog::ALL.iter().chain(catalog::VARIANTS) {
            let fresh = serde_json::to_string(&Concept::metric(m)).unwrap();
            assert_eq!(metric_code(m).get(), fresh, "{}", m.mdc_ref);
            assert_eq!(metric_code(m).get(), fresh, "{} again", m.mdc_ref);
        }
        let (mass, molar) = (
            catalog::GLUCOSE_CAPILLARY_PLASMA,
            catalog::GLUCOSE_CAPILLARY_PLASMA_MOLAR,
        );
        assert_eq!(mass.mdc, molar.mdc);
        assert_ne!(metric_code(&mass).get(), metric_code(&molar).get());
        let vital: Json = serde_json::from_str(category(true).get()).unwrap();
        let other: Json = serde_json::from_str(category(false).get()).unwrap();
        assert_eq!(vital[0]["coding"][0]["code"], "vital-signs");
        assert_eq!(vital[1]["coding"][0]["code"], "phd");
        assert_eq!(other.as_array().map(Vec::len), Some(1));
        assert_eq!(other[0]["coding"][0]["code"], "phd");
    }

    proptest::proptest! {
        /// A decimal is written, as text and as a JSON tree, exactly as a `Number` parsed
        /// from its Display text was (the way before): same digits, same precision, for any
        /// mantissa and exponent, the extremes included.
        #[test]
        fn a_decimal_is_written_as_the_number_of_its_text(
            mantissa in proptest::prop_oneof![
                proptest::num::i64::ANY,
                proptest::strategy::Just(i64::MIN),
                proptest::strategy::Just(0i64),
            ],
            exponent in proptest::prop_oneof![
                proptest::num::i8::ANY,
                proptest::strategy::Just(i8::MIN),
                proptest::strategy::Just(i8::MAX),
            ],
        ) {
            let d = Decimal::new(mantissa, exponent);
            let number: serde_json::Number = d.to_string().parse().unwrap();
            let want = serde_json::to_string(&number).unwrap();
            proptest::prop_assert_eq!(serde_json::to_string(&Dec(d)).unwrap(), want.as_str());
            proptest::prop_assert_eq!(serde_json::to_value(Dec(d)).unwrap(), Json::Number(number));
        }
    }
}
