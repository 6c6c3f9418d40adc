//! A vector of every Bluetooth SIG health characteristic the gateway decodes, decoded by
//! the real binary (`vitalbridge decode ble --fhir`), mapped to FHIR Observations, and
//! checked by the independent FHIR R4 validator (tests/validate_fhir.py).
//!
//! The vectors are the decoders' table-test vectors (gateway/src/profile/ble/tests.rs cites
//! where each comes from); several carry special values, status bits, user ids, glucose
//! context and time stamps, so those paths are validated too.

use std::process::Command;

use serde_json::Value;
use vitalbridge_tests::gateway::binary;
use vitalbridge_tests::validator::assert_valid_fhir;

/// (characteristic, value): one or more per decoder.
const VECTORS: &[(&str, &str)] = &[
    // Heart Rate Measurement: uint8 rate, energy expended, one RR-interval.
    ("2A37", "18 AA BB 01 CC 01"),
    // Blood Pressure Measurement: time stamp, NaN pulse rate, unknown user, status bits.
    (
        "2A35",
        "1E 7A 00 50 00 5A 00 E4 07 0C 19 08 1E 00 FF 07 FF 08 00",
    ),
    // Blood Pressure Measurement in kPa with user 1 and a NaN mean.
    ("2A35", "0F BD F0 0B 00 FF 07 E4 07 0C 19 08 1E 00 3C 00 01"),
    // Intermediate Cuff Pressure.
    ("2A36", "15 BD F0 0B 00 9F F0 3C 00 12 00"),
    // Temperature Measurement: 37.60 °C, finger, time stamp.
    ("2A1C", "06 B0 0E 00 FE DC 07 0C 05 0B 32 1B 04"),
    // Intermediate Temperature: NaN.
    ("2A1E", "00 FF FF 7F 00"),
    // Glucose Measurement: kg/L → mg/dL, status bits, sample location, context follows.
    ("2A18", "1B 01 00 E3 07 02 1B 0B 0A 1E FB FF 1E 00 12 05 01"),
    // Glucose Measurement: mol/L → mmol/L.
    ("2A18", "06 2A 00 E8 07 03 0F 0E 1E 2D 3F C0 F1"),
    // Glucose Measurement without a concentration (strip error).
    ("2A18", "08 05 00 E8 07 03 0F 0E 1E 2D 08 00"),
    // Glucose Measurement Context: every field.
    ("2A34", "FF 00 00 B3 03 E8 F3 04 12 3C 00 32 04 D2 F4 59 F1"),
    // PLX Spot-check: time stamp, status, PAI.
    (
        "2A5E",
        "0F AC F3 BE F5 E8 07 0B 1D 17 08 39 20 40 22 00 00 66 E3",
    ),
    // PLX Continuous: fast and slow pairs.
    (
        "2A5F",
        "1F DE F3 CA F3 CA F3 5A F5 D4 F3 B2 F2 20 01 00 00 00 7A E3",
    ),
    // Weight Measurement: imperial, BMI and height.
    ("2A9D", "0F 10 27 E8 07 01 02 03 04 05 FF E6 00 D0 02"),
    // Weight Measurement: SI, unsuccessful (no value).
    ("2A9D", "00 FF FF"),
    // Body Composition Measurement: every field.
    (
        "2A9C",
        "FE AF 12 34 E7 07 02 06 12 1C 00 2A 23 45 34 56 45 67 56 78 67 89 78 9A 89 AB 9A BC AB CD",
    ),
];

fn observations(characteristic: &str, hex: &str, patient: Option<&str>) -> Vec<Value> {
    let mut cmd = Command::new(binary());
    cmd.args(["decode", "ble", "--fhir", "--device", "A1:B2:C3:D4:E5:F6"])
        .args(["--characteristic", characteristic, hex]);
    if let Some(p) = patient {
        cmd.args(["--patient", p]);
    }
    let out = cmd.output().expect("run vitalbridge decode ble");
    assert!(
        out.status.success(),
        "{characteristic} {hex}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one Observation per line"))
        .collect()
}

#[test]
fn observations_of_every_ble_characteristic_pass_the_independent_fhir_validator() {
    let mut all = Vec::new();
    let mut characteristics = Vec::new();
    for (characteristic, hex) in VECTORS {
        let obs = observations(
            characteristic,
            hex,
            Some("urn:oid:2.16.840.1.113883.4.1|12345"),
        );
        assert!(!obs.is_empty(), "{characteristic} {hex}: no Observation");
        for o in &obs {
            assert_eq!(o["resourceType"], "Observation");
            assert_eq!(o["subject"]["identifier"]["value"], "12345");
        }
        characteristics.push(*characteristic);
        all.extend(obs);
    }
    for c in [
        "2A37", "2A35", "2A36", "2A1C", "2A1E", "2A18", "2A34", "2A5E", "2A5F", "2A9D", "2A9C",
    ] {
        assert!(characteristics.contains(&c), "no vector for {c}");
    }
    // Special values became dataAbsentReason, never numbers.
    let text = serde_json::to_string(&all).unwrap();
    assert!(text.contains("\"not-a-number\""), "{text}");
    assert_valid_fhir(&all);
}

#[test]
fn observations_without_a_bound_patient_also_pass() {
    // A shared device's unbound user: no subject, and then no vital-signs profile claimed.
    let obs = observations("2A9D", "0F 10 27 E8 07 01 02 03 04 05 FF E6 00 D0 02", None);
    assert_eq!(obs.len(), 3);
    for o in &obs {
        assert!(o.get("subject").is_none());
    }
    assert_valid_fhir(&obs);
}
