//! Observation and Device resources for one reading / one device.

use serde_json::{json, Map, Number, Value as Json};

use super::{
    if_none_exist, urn_uuid, Gateway, IDENTIFIER_SYSTEM, LOINC, MDC, STATUS_SYSTEM,
    TIME_SOURCE_EXTENSION, UCUM,
};
use crate::model::{
    format_time, AbsentReason, Decimal, DeviceId, DeviceRef, Measured, Metric, PatientRef,
    Quantity, Reading, StatusFlag, TimeSource, Value,
};
use crate::profile::canonical;

/// PHD's identifier system for IEEE EUI-64 system ids.
pub const EUI64_SYSTEM: &str = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680";
/// Bluetooth device addresses (EUI-48).
pub const BLUETOOTH_SYSTEM: &str = "http://hl7.org/fhir/sid/eui-48/bluetooth";
/// Serial numbers and other device ids (qualified by the device profile).
pub const DEVICE_ID_SYSTEM: &str = "https://vitalbridge.dev/fhir/sid/device-id";
/// Gateway ids.
pub const GATEWAY_SYSTEM: &str = "https://vitalbridge.dev/fhir/sid/gateway";

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

fn decimal(d: Decimal) -> Json {
    // Display renders a valid JSON number; arbitrary_precision keeps its exact text.
    d.to_string()
        .parse::<Number>()
        .map(Json::Number)
        .unwrap_or(Json::Null)
}

fn absent(r: AbsentReason) -> Json {
    let code = match r {
        AbsentReason::NotANumber => "not-a-number",
        AbsentReason::NotAtResolution | AbsentReason::Error => "error",
        AbsentReason::PositiveInfinity => "positive-infinity",
        AbsentReason::NegativeInfinity => "negative-infinity",
    };
    json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": code}]})
}

fn code(m: &Metric) -> Json {
    let mut codings = Vec::new();
    if let Some(loinc) = m.loinc {
        codings.push(json!({"system": LOINC, "code": loinc, "display": m.display}));
    }
    codings.push(json!({"system": MDC, "code": m.mdc.to_string(), "display": m.mdc_ref}));
    json!({"coding": codings, "text": m.display})
}

fn quantity(d: Decimal, unit: &str) -> Json {
    json!({"value": decimal(d), "unit": unit, "system": UCUM, "code": unit})
}

/// Puts `valueQuantity` or `dataAbsentReason` into `target`.
fn put_value(target: &mut Map<String, Json>, q: &Quantity) {
    match q.value {
        Measured::Value(d) => {
            target.insert("valueQuantity".into(), quantity(d, &q.unit));
        }
        Measured::Absent(r) => {
            target.insert("dataAbsentReason".into(), absent(r));
        }
    }
}

fn subject(p: &PatientRef) -> Json {
    if p.system.is_empty() {
        json!({"reference": p.value})
    } else {
        json!({"identifier": {"system": p.system, "value": p.value}})
    }
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
    }
}

/// The Observation for `r`, referencing its Device and the gateway Device by fullUrl.
pub fn observation(r: &Reading, device_url: &str, gateway_url: &str) -> Json {
    let mut o = Map::new();
    o.insert("resourceType".into(), json!("Observation"));
    let mut meta = Map::new();
    if r.patient.is_some() {
        let mut profiles = vec![json!(
            "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation"
        )];
        if let Some(vs) = r.metric.vital_sign_profile {
            profiles.push(json!(format!(
                "http://hl7.org/fhir/StructureDefinition/{vs}"
            )));
        }
        meta.insert("profile".into(), Json::Array(profiles));
    }
    if r.status.contains(&StatusFlag::TestData) {
        meta.insert(
            "security".into(),
            json!([{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST", "display": "test health data"}]),
        );
    }
    if !meta.is_empty() {
        o.insert("meta".into(), Json::Object(meta));
    }
    o.insert(
        "identifier".into(),
        json!([{"system": IDENTIFIER_SYSTEM, "value": r.identifier()}]),
    );
    o.insert("status".into(), json!("final"));
    let mut category = Vec::new();
    if r.metric.vital_sign_profile.is_some() {
        category.push(json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs", "display": "Vital Signs"}]}));
    }
    category.push(json!({"coding": [{"system": "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories", "code": "phd", "display": "PHD generated Observation"}]}));
    o.insert("category".into(), Json::Array(category));
    o.insert("code".into(), code(&r.metric));
    if let Some(p) = &r.patient {
        o.insert("subject".into(), subject(p));
    }
    let (when, source) = r.effective_time();
    let time_ext = time_source_extension(r, source);
    match r.duration {
        Some(d) => {
            let mut period = json!({"start": format_time(when - d), "end": format_time(when)});
            if let Some(ext) = time_ext {
                period["extension"] = json!([ext]);
            }
            o.insert("effectivePeriod".into(), period);
        }
        None => {
            o.insert("effectiveDateTime".into(), json!(format_time(when)));
            if let Some(ext) = time_ext {
                o.insert("_effectiveDateTime".into(), json!({"extension": [ext]}));
            }
        }
    }
    let flags: Vec<Json> = r
        .status
        .iter()
        .filter(|f| **f != StatusFlag::TestData)
        .map(|f| json!({"coding": [{"system": STATUS_SYSTEM, "code": canonical::status_name(*f), "display": status_display(*f)}]}))
        .collect();
    if !flags.is_empty() {
        o.insert("interpretation".into(), Json::Array(flags));
    }
    match &r.value {
        Value::Quantity(q) => put_value(&mut o, q),
        Value::Components(parts) => {
            let components: Vec<Json> = parts
                .iter()
                .map(|c| {
                    let mut m = Map::new();
                    m.insert("code".into(), code(&c.metric));
                    put_value(&mut m, &c.quantity);
                    Json::Object(m)
                })
                .collect();
            o.insert("component".into(), Json::Array(components));
        }
        Value::Samples(s) => {
            let data = s
                .data
                .iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(" ");
            o.insert(
                "valueSampledData".into(),
                json!({"origin": quantity(s.origin, &s.unit), "period": decimal(s.period_ms), "factor": decimal(s.factor), "dimensions": 1, "data": data}),
            );
        }
        Value::Coded {
            system,
            code,
            display,
        } => {
            let mut c = json!({"system": system, "code": code});
            if let Some(d) = display {
                c["display"] = json!(d);
            }
            o.insert("valueCodeableConcept".into(), json!({"coding": [c]}));
        }
    }
    o.insert("device".into(), json!({"reference": device_url}));
    o.insert(
        "extension".into(),
        json!([{"url": "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice", "valueReference": {"reference": gateway_url}}]),
    );
    Json::Object(o)
}

fn time_source_extension(r: &Reading, source: TimeSource) -> Option<Json> {
    match source {
        TimeSource::Device => None,
        TimeSource::GatewayReceive => {
            Some(json!({"url": TIME_SOURCE_EXTENSION, "valueCode": "gateway-receive"}))
        }
        TimeSource::DeviceCorrected => {
            let original = r.device_time.map(format_time).unwrap_or_default();
            Some(json!({"url": TIME_SOURCE_EXTENSION, "extension": [
                {"url": "source", "valueCode": "device-corrected"},
                {"url": "deviceTime", "valueDateTime": original},
                {"url": "offsetMs", "valueInteger": r.clock_offset.map(|d| d.whole_milliseconds() as i64).unwrap_or(0)},
            ]}))
        }
    }
}

/// The identifier (system, value) of a measuring device.
pub fn device_identifier(d: &DeviceRef) -> (String, String) {
    match &d.id {
        DeviceId::Eui64(_) => (EUI64_SYSTEM.to_owned(), d.id.key()),
        DeviceId::Bluetooth(_) => (BLUETOOTH_SYSTEM.to_owned(), d.id.key()),
        DeviceId::Serial(s) => (format!("{DEVICE_ID_SYSTEM}/serial"), s.clone()),
        DeviceId::Other(s) => (DEVICE_ID_SYSTEM.to_owned(), s.clone()),
    }
}

/// The Device resource for a measuring device.
pub fn device(d: &DeviceRef) -> DeviceIdentifier {
    let (system, value) = device_identifier(d);
    let mut res = Map::new();
    res.insert("resourceType".into(), json!("Device"));
    res.insert(
        "identifier".into(),
        json!([{"system": system, "value": value}]),
    );
    if let DeviceId::Serial(s) = &d.id {
        res.insert("serialNumber".into(), json!(s));
    }
    if let Some(m) = &d.manufacturer {
        res.insert("manufacturer".into(), json!(m));
    }
    if let Some(m) = &d.model {
        res.insert("modelNumber".into(), json!(m));
        res.insert(
            "deviceName".into(),
            json!([{"name": m, "type": "model-name"}]),
        );
    }
    res.insert("property".into(), json!([{"type": {"text": "vitalbridge device profile"}, "valueCode": [{"text": d.profile}]}]));
    DeviceIdentifier {
        full_url: urn_uuid("Device", &format!("{system}|{value}")),
        if_none_exist: if_none_exist(&system, &value),
        resource: Json::Object(res),
    }
}

/// The Device resource for this gateway (PHD: the personal health gateway).
pub fn gateway_device(g: &Gateway) -> DeviceIdentifier {
    let resource = json!({
        "resourceType": "Device",
        "identifier": [{"system": GATEWAY_SYSTEM, "value": g.id}],
        "manufacturer": "Vitalbridge",
        "deviceName": [{"name": "Vitalbridge gateway", "type": "manufacturer-name"}],
        "version": [{"value": g.version}],
        "property": [{"type": {"text": "time synchronization"}, "valueCode": [{"text": "host system clock (NTP)"}]}],
    });
    DeviceIdentifier {
        full_url: urn_uuid("Device", &format!("{GATEWAY_SYSTEM}|{}", g.id)),
        if_none_exist: if_none_exist(GATEWAY_SYSTEM, &g.id),
        resource,
    }
}
