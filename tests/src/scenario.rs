//! Shared pieces of end-to-end scenarios: gateway configs and canonical JSON readings with
//! known expected values, used by the tests and the benchmark.

use std::path::Path;

use serde_json::{json, Value};

use crate::pki::TestPki;

/// The identifier system of the patient the scenarios' devices are bound to.
pub const PATIENT_SYSTEM: &str = "urn:oid:2.16.840.1.113883.19.5";
/// The identifier value of that patient.
pub const PATIENT_ID: &str = "e2e-patient";

/// Gateway config: MQTT source on `mqtt_port` (plain), FHIR uplink to `upstream_url` with the
/// test PKI's client certificate, every device bound to one patient ([`PATIENT_ID`], as on a
/// home hub: readings without a patient are held, not sent). `extra` is appended verbatim
/// (more tables or keys).
pub fn mqtt_to_fhir(
    data_dir: &Path,
    mqtt_port: u16,
    upstream_url: &str,
    pki: &TestPki,
    extra: &str,
) -> String {
    format!(
        r#"[gateway]
id = "e2e-gateway"
data_dir = "{data}"

[sources.mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"
client_id = "vitalbridge-e2e-{mqtt_port}"
topics = ["vitals/#"]

[default_patient]
system = "{PATIENT_SYSTEM}"
id = "{PATIENT_ID}"

{uplink}{extra}
"#,
        data = data_dir.display(),
        uplink = fhir_uplink(upstream_url, pki, 500),
    )
}

/// The `[uplink]` and `[uplink.fhir]` tables of the test configs: `batch_size` readings per
/// Bundle, two in flight, quick retries, the test PKI's client certificate.
pub fn fhir_uplink(upstream_url: &str, pki: &TestPki, batch_size: usize) -> String {
    let client = pki.client_files();
    format!(
        r#"[uplink]
batch_size = {batch_size}
in_flight = 2
retry_initial_ms = 50
retry_max_ms = 2000

[uplink.fhir]
base_url = "{upstream_url}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
timeout_s = 10
"#,
        ca = pki.ca_cert_path().display(),
        cert = client.cert.display(),
        key = client.key.display(),
    )
}

/// What a published reading must become at the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// `effectiveDateTime` as the gateway must send it (unique per reading in a scenario).
    pub time: String,
    /// MDC code of the Observation.
    pub mdc: String,
    /// LOINC code of the Observation.
    pub loinc: String,
    /// The value's exact decimal text (or the components' values joined by `/` for BP).
    pub value: String,
    /// UCUM unit.
    pub unit: String,
}

/// The `i`-th reading of a deterministic stream over `devices` devices: its MQTT payload and
/// what the upstream must store. Every reading has a unique device time; a third of them
/// carry a `+02:00` offset (so `+` must survive the conditional-create query), and values
/// carry trailing zeros (precision must survive).
pub fn reading(i: u64, devices: u64) -> (Vec<u8>, Expected) {
    let device = format!("dev-{:03}", i % devices);
    let secs = 1_780_000_000 + i as i64;
    let offset_h = if i.is_multiple_of(3) { 2 } else { 0 };
    let t = time::OffsetDateTime::from_unix_timestamp(secs)
        .expect("time")
        .to_offset(time::UtcOffset::from_hms(offset_h, 0, 0).expect("offset"));
    let text = t
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    let (payload, expected) = match i % 4 {
        0 => {
            let v = format!("{}.{}0", 35 + i % 3, i % 10);
            (
                json!({"device": device, "time": text, "metric": "body-temperature", "value": number(&v), "unit": "Cel", "seq": i}),
                Expected {
                    time: text.clone(),
                    mdc: "150364".into(),
                    loinc: "8310-5".into(),
                    value: v,
                    unit: "Cel".into(),
                },
            )
        }
        1 => {
            let v = format!("{}", 90 + i % 10);
            (
                json!({"device": device, "time": text, "metric": "spo2", "value": number(&v), "seq": i}),
                Expected {
                    time: text.clone(),
                    mdc: "150456".into(),
                    loinc: "2708-6".into(),
                    value: v,
                    unit: "%".into(),
                },
            )
        }
        2 => {
            let (s, d) = (100 + i % 50, 60 + i % 30);
            (
                json!({"device": device, "time": text, "metric": "blood-pressure", "seq": i, "components": [
                    {"metric": "systolic", "value": s, "unit": "mm[Hg]"},
                    {"metric": "diastolic", "value": d, "unit": "mm[Hg]"}]}),
                Expected {
                    time: text.clone(),
                    mdc: "150020".into(),
                    loinc: "85354-9".into(),
                    value: format!("{s}/{d}"),
                    unit: "mm[Hg]".into(),
                },
            )
        }
        _ => {
            let v = format!("{}.{:03}", 60 + i % 40, (i * 5) % 1000);
            (
                json!({"device": device, "time": text, "metric": "body-weight", "value": number(&v), "unit": "kg", "seq": i}),
                Expected {
                    time: text.clone(),
                    mdc: "188736".into(),
                    loinc: "29463-7".into(),
                    value: v,
                    unit: "kg".into(),
                },
            )
        }
    };
    (serde_json::to_vec(&payload).expect("json"), expected)
}

fn number(text: &str) -> Value {
    Value::Number(text.parse().expect("decimal literal"))
}

/// What an Observation stored at the upstream says, in [`Expected`]'s terms.
pub fn observed(o: &Value) -> Expected {
    let coding = |system: &str| {
        o["code"]["coding"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["system"] == system))
            .and_then(|c| c["code"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let (value, unit) = if let Some(components) = o["component"].as_array() {
        let values: Vec<String> = components
            .iter()
            .map(|c| c["valueQuantity"]["value"].to_string())
            .collect();
        (
            values.join("/"),
            components[0]["valueQuantity"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    } else {
        (
            o["valueQuantity"]["value"].to_string(),
            o["valueQuantity"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    Expected {
        time: o["effectiveDateTime"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        mdc: coding("urn:iso:std:iso:11073:10101"),
        loinc: coding("http://loinc.org"),
        value,
        unit,
    }
}

/// Checks that the upstream holds exactly the expected readings, each once; returns a
/// description of every difference (empty when all is well).
pub fn compare(observations: &[Value], expected: &[Expected]) -> Vec<String> {
    use std::collections::HashMap;
    let mut problems = Vec::new();
    let mut seen: HashMap<String, Expected> = HashMap::new();
    for o in observations {
        let got = observed(o);
        if seen.insert(got.time.clone(), got.clone()).is_some() {
            problems.push(format!("two Observations for time {}", got.time));
        }
    }
    for e in expected {
        match seen.get(&e.time) {
            None => problems.push(format!("missing reading at {}", e.time)),
            Some(got) if got != e => {
                problems.push(format!("wrong Observation: expected {e:?}, got {got:?}"))
            }
            Some(_) => {}
        }
    }
    if observations.len() != expected.len() {
        problems.push(format!(
            "{} Observations stored for {} readings published",
            observations.len(),
            expected.len()
        ));
    }
    problems.truncate(20);
    problems
}
