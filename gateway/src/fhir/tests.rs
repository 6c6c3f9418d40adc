use serde_json::json;
use time::macros::datetime;
use time::Duration;

use super::*;
use crate::model::{
    AbsentReason, Component, Decimal, DeviceId, Measured, PatientRef, Quantity, StatusFlag, Value,
};
use crate::profile::catalog;

fn gateway() -> Gateway {
    Gateway {
        id: "hub-1".into(),
        version: "0.1.0".into(),
        convert_units: None,
    }
}

fn bp_reading() -> Reading {
    let c = |metric, m| Component {
        metric,
        quantity: Quantity {
            value: m,
            unit: "mm[Hg]".into(),
        },
    };
    Reading {
        device: DeviceRef {
            id: DeviceId::Eui64([0xfe, 0xed, 0xab, 0xee, 0xde, 0xad, 0xbe, 0xef]),
            profile: "ble-blood-pressure".into(),
            model: Some("BP-1".into()),
            manufacturer: Some("Acme".into()),
        },
        patient: Some(PatientRef::identifier("urn:oid:1.2.3", "p42")),
        metric: catalog::BLOOD_PRESSURE,
        value: Value::Components(vec![
            c(catalog::SYSTOLIC, Measured::Value(Decimal::new(1205, -1))),
            c(catalog::DIASTOLIC, Measured::Value(Decimal::integer(80))),
            c(
                catalog::MEAN_ARTERIAL,
                Measured::Absent(AbsentReason::NotANumber),
            ),
        ]),
        device_time: Some(datetime!(2026-11-25 10:00:00 +01:00)),
        clock_offset: None,
        received_at: datetime!(2026-11-25 09:00:03 UTC),
        duration: None,
        sequence: None,
        status: vec![StatusFlag::IrregularPulse],
        device_user: None,
        bedside: None,
        time_sync: None,
    }
}

#[test]
fn blood_pressure_is_one_observation_with_components_and_no_value() {
    let o = observation(&bp_reading(), "urn:uuid:dev", "urn:uuid:gw");
    assert_eq!(
        o["code"]["coding"][0],
        json!({"system": LOINC, "code": "85354-9", "display": catalog::BLOOD_PRESSURE.display})
    );
    assert_eq!(o["code"]["coding"][1]["code"], json!("150020"));
    assert!(o.get("valueQuantity").is_none());
    let comps = o["component"].as_array().unwrap();
    assert_eq!(comps.len(), 3);
    assert_eq!(comps[0]["code"]["coding"][0]["code"], json!("8480-6"));
    assert_eq!(
        comps[0]["valueQuantity"],
        json!({"value": 120.5, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"})
    );
    assert_eq!(comps[1]["code"]["coding"][1]["code"], json!("150022"));
    assert_eq!(
        comps[2]["dataAbsentReason"]["coding"][0]["code"],
        json!("not-a-number")
    );
    assert!(comps[2].get("valueQuantity").is_none());
    assert_eq!(o["effectiveDateTime"], json!("2026-11-25T10:00:00+01:00"));
    assert_eq!(
        o["subject"],
        json!({"identifier": {"system": "urn:oid:1.2.3", "value": "p42"}})
    );
    assert_eq!(
        o["interpretation"][0]["coding"][0]["code"],
        json!("irregular-pulse")
    );
    let profiles = o["meta"]["profile"].as_array().unwrap();
    assert!(profiles.contains(&json!("http://hl7.org/fhir/StructureDefinition/bp")));
    let categories: Vec<_> = o["category"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["coding"][0]["code"].clone())
        .collect();
    assert_eq!(categories, vec![json!("vital-signs"), json!("phd")]);
    assert_eq!(o["device"]["reference"], json!("urn:uuid:dev"));
    assert_eq!(
        o["extension"][0]["valueReference"]["reference"],
        json!("urn:uuid:gw")
    );
}

#[test]
fn decimals_keep_the_precision_the_device_sent() {
    let r = Reading {
        metric: catalog::BODY_WEIGHT,
        value: Value::Quantity(Quantity {
            value: Measured::Value(Decimal::new(7250, -2)),
            unit: "kg".into(),
        }),
        ..bp_reading()
    };
    let text = serde_json::to_string(&observation(&r, "d", "g")).unwrap();
    assert!(text.contains(r#""value":72.50"#), "{text}");
}

#[test]
fn test_data_is_labelled_htest_and_a_corrected_time_keeps_the_original() {
    let r = Reading {
        status: vec![StatusFlag::TestData],
        clock_offset: Some(Duration::seconds(90)),
        ..bp_reading()
    };
    let o = observation(&r, "d", "g");
    assert_eq!(o["meta"]["security"][0]["code"], json!("HTEST"));
    assert!(o.get("interpretation").is_none());
    assert_eq!(o["effectiveDateTime"], json!("2026-11-25T10:01:30+01:00"));
    let ext = &o["_effectiveDateTime"]["extension"][0];
    assert_eq!(
        ext["extension"][1]["valueDateTime"],
        json!("2026-11-25T10:00:00+01:00")
    );
    assert_eq!(
        o["identifier"][0]["value"],
        json!(bp_reading().identifier())
    );
}

#[test]
fn a_reading_without_a_patient_claims_no_profile_and_has_no_subject() {
    let r = Reading {
        patient: None,
        ..bp_reading()
    };
    let o = observation(&r, "d", "g");
    assert!(o.get("subject").is_none());
    assert!(o["meta"].get("profile").is_none());
    // The decoding profile is tagged whatever the claim.
    assert_eq!(
        o["meta"]["tag"],
        serde_json::json!([{"system": "https://vitalbridge.dev/fhir/CodeSystem/device-profile", "code": "ble-blood-pressure"}])
    );
}

#[test]
fn bundle_is_conditional_creates_with_stable_urls_and_roles() {
    let a = bp_reading();
    let b = Reading {
        device_time: Some(datetime!(2026-11-25 11:00:00 +01:00)),
        ..bp_reading()
    };
    let mapped = bundle(
        &gateway(),
        &[(7, &a), (8, &b)],
        BundleType::Transaction,
        PatientMode::Identifier,
    );
    let json: serde_json::Value = serde_json::from_slice(&mapped.body).unwrap();
    assert_eq!(json["type"], json!("transaction"));
    assert_eq!(
        mapped.roles,
        vec![
            EntryRole::Device,
            EntryRole::Device,
            EntryRole::Observation(7),
            EntryRole::Observation(8)
        ]
    );
    let entries = json["entry"].as_array().unwrap();
    assert_eq!(
        entries[1]["request"]["ifNoneExist"],
        json!("identifier=urn%3Aoid%3A1.2.840.10004.1.1.1.0.0.1.0.0.1.2680%7CFEEDABEEDEADBEEF")
    );
    let obs = &entries[2];
    assert_eq!(obs["request"]["method"], json!("POST"));
    assert_eq!(
        obs["resource"]["device"]["reference"],
        entries[1]["fullUrl"]
    );
    assert_eq!(
        obs["resource"]["extension"][0]["valueReference"]["reference"],
        entries[0]["fullUrl"]
    );
    let again = bundle(
        &gateway(),
        &[(7, &a), (8, &b)],
        BundleType::Transaction,
        PatientMode::Identifier,
    );
    assert_eq!(again.body, mapped.body, "mapping is deterministic");
    assert!(
        obs["request"]["ifNoneExist"]
            .as_str()
            .unwrap()
            .contains("%2B01%3A00"),
        "'+' in the offset is percent-encoded"
    );
}

#[test]
fn a_unit_the_vital_signs_profile_does_not_allow_drops_the_claim_but_keeps_the_unit() {
    let kpa = |r: Reading| -> Reading {
        let Value::Components(parts) = r.value else {
            unreachable!("blood pressure has components")
        };
        Reading {
            value: Value::Components(
                parts
                    .into_iter()
                    .map(|mut c| {
                        c.quantity.unit = "kPa".into();
                        c
                    })
                    .collect(),
            ),
            ..r
        }
    };
    let o = observation(&kpa(bp_reading()), "urn:uuid:dev", "urn:uuid:gw");
    let profiles = o["meta"]["profile"].as_array().unwrap();
    assert_eq!(
        profiles,
        &vec![json!(
            "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation"
        )],
        "kPa is not the bp profile's mm[Hg]"
    );
    assert_eq!(o["component"][0]["valueQuantity"]["code"], json!("kPa"));
    assert_eq!(o["category"][0]["coding"][0]["code"], json!("vital-signs"));

    let height = |unit: &str| Reading {
        metric: catalog::BODY_HEIGHT,
        value: Value::Quantity(Quantity {
            value: Measured::Value(Decimal::new(1825, -3)),
            unit: unit.into(),
        }),
        ..bp_reading()
    };
    let claims = |r: &Reading| {
        observation(r, "urn:uuid:dev", "urn:uuid:gw")["meta"]["profile"]
            .as_array()
            .unwrap()
            .contains(&json!("http://hl7.org/fhir/StructureDefinition/bodyheight"))
    };
    assert!(
        !claims(&height("m")),
        "bodyheight allows cm and [in_i] only"
    );
    assert!(claims(&height("cm")));
    assert!(claims(&height("[in_i]")));
}

fn quantity(metric: crate::model::Metric, value: i64, unit: &str) -> Reading {
    Reading {
        metric,
        value: Value::Quantity(Quantity {
            value: Measured::Value(Decimal::integer(value)),
            unit: unit.into(),
        }),
        status: vec![],
        ..bp_reading()
    }
}

fn categories(o: &serde_json::Value) -> Vec<serde_json::Value> {
    o["category"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["coding"][0]["code"].clone())
        .collect()
}

#[test]
fn a_systolic_or_diastolic_pressure_on_its_own_is_still_a_vital_sign() {
    for metric in [
        catalog::SYSTOLIC,
        catalog::DIASTOLIC,
        catalog::MEAN_ARTERIAL,
    ] {
        let o = observation(&quantity(metric, 120, "mm[Hg]"), "d", "g");
        assert_eq!(categories(&o), [json!("vital-signs"), json!("phd")]);
        // Only the panel claims the bp profile.
        let profiles = o["meta"]["profile"].as_array().unwrap();
        assert!(!profiles.contains(&json!("http://hl7.org/fhir/StructureDefinition/bp")));
    }
    let o = observation(&quantity(catalog::RR_INTERVAL, 800, "ms"), "d", "g");
    assert_eq!(categories(&o), [json!("phd")]);
}

#[test]
fn spo2_from_a_pulse_oximeter_carries_59408_5_beside_2708_6() {
    let o = observation(&quantity(catalog::SPO2, 97, "%"), "d", "g");
    let codes: Vec<_> = o["code"]["coding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["system"].clone(), c["code"].clone()))
        .collect();
    assert_eq!(
        codes,
        [
            (json!(LOINC), json!("2708-6")),
            (json!(LOINC), json!("59408-5")),
            (json!(MDC), json!("150456")),
        ]
    );
    let hr = observation(&quantity(catalog::HEART_RATE, 60, "/min"), "d", "g");
    assert_eq!(hr["code"]["coding"].as_array().unwrap().len(), 2);
}

#[test]
fn a_flag_that_doubts_the_value_makes_the_observation_preliminary() {
    for (flag, status) in [
        (None, "final"),
        (Some(StatusFlag::IrregularPulse), "final"),
        (Some(StatusFlag::TestData), "final"),
        (Some(StatusFlag::CuffLoose), "preliminary"),
        (Some(StatusFlag::Questionable), "preliminary"),
        (Some(StatusFlag::SensorFault), "preliminary"),
        (Some(StatusFlag::Calibrating), "preliminary"),
        (Some(StatusFlag::Implausible), "preliminary"),
        (Some(StatusFlag::TimeInFuture), "preliminary"),
    ] {
        let r = Reading {
            status: flag.into_iter().collect(),
            ..bp_reading()
        };
        let o = observation(&r, "d", "g");
        assert_eq!(o["status"], json!(status), "{flag:?}");
        if let Some(f) = flag.filter(|f| *f != StatusFlag::TestData) {
            assert_eq!(
                o["interpretation"][0]["coding"][0]["code"],
                json!(f.as_str())
            );
            assert_eq!(
                o["interpretation"][0]["coding"][0]["system"],
                json!(STATUS_SYSTEM)
            );
        }
    }
}

/// Every Observation says where its time came from, for each kind of device clock.
#[test]
fn time_provenance_is_on_every_observation_for_each_kind_of_clock() {
    use crate::model::TimeSync;
    let ext = |r: &Reading| {
        let o = observation(r, "d", "g");
        let e = o["_effectiveDateTime"]["extension"][0].clone();
        assert_eq!(e["url"], json!(TIME_SOURCE_EXTENSION));
        let parts: Vec<(String, serde_json::Value)> = e["extension"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let url = p["url"].as_str().unwrap().to_owned();
                let value = p
                    .as_object()
                    .unwrap()
                    .iter()
                    .find(|(k, _)| k.starts_with("value"))
                    .map(|(_, v)| v.clone())
                    .unwrap();
                (url, value)
            })
            .collect();
        (o["effectiveDateTime"].clone(), parts)
    };
    let part = |url: &str, v: serde_json::Value| (url.to_owned(), v);
    // The device's clock as reported.
    let (when, parts) = ext(&bp_reading());
    assert_eq!(when, json!("2026-11-25T10:00:00+01:00"));
    assert_eq!(parts, [part("source", json!("device"))]);
    // Checked against the gateway (BLE Current Time), no correction needed.
    let checked = Reading {
        clock_offset: Some(Duration::ZERO),
        time_sync: Some(TimeSync::BleCurrentTime),
        ..bp_reading()
    };
    let (_, parts) = ext(&checked);
    assert_eq!(
        parts,
        [
            part("source", json!("device")),
            part("synchronization", json!("ble-current-time"))
        ]
    );
    // Corrected by the firmware's time sync: the corrected time, the device's own, the offset.
    let corrected = Reading {
        clock_offset: Some(Duration::seconds(-90)),
        time_sync: Some(TimeSync::FirmwareTimeSync),
        ..bp_reading()
    };
    let (when, parts) = ext(&corrected);
    assert_eq!(when, json!("2026-11-25T09:58:30+01:00"));
    assert_eq!(
        parts,
        [
            part("source", json!("device-corrected")),
            part("deviceTime", json!("2026-11-25T10:00:00+01:00")),
            part("offsetMs", json!(-90_000)),
            part("synchronization", json!("firmware-time-sync")),
        ]
    );
    // A line device whose clock keeps a configured zone.
    let zoned = Reading {
        time_sync: Some(TimeSync::ConfiguredZone),
        ..bp_reading()
    };
    assert_eq!(
        ext(&zoned).1[1],
        part("synchronization", json!("configured-zone"))
    );
    // No clock: the receive time, and it says so.
    let clockless = Reading {
        device_time: None,
        time_sync: Some(TimeSync::BleCurrentTime),
        ..bp_reading()
    };
    let (when, parts) = ext(&clockless);
    assert_eq!(when, json!("2026-11-25T09:00:03Z"));
    assert_eq!(parts, [part("source", json!("gateway-receive"))]);
    // A measurement with a duration has a Period, carrying the same extension.
    for r in [bp_reading(), checked, corrected, zoned, clockless] {
        let instant = observation(&r, "d", "g");
        let timed = Reading {
            duration: Some(Duration::minutes(5)),
            ..r
        };
        let o = observation(&timed, "d", "g");
        assert_eq!(o["effectivePeriod"]["end"], instant["effectiveDateTime"]);
        assert_eq!(
            o["effectivePeriod"]["extension"],
            instant["_effectiveDateTime"]["extension"]
        );
        assert!(o.get("_effectiveDateTime").is_none(), "{o}");
    }
}

/// With `clinical.units = "canonical"` a value in another commensurable unit is converted,
/// the value as sent kept in the PQ-translation extension, and the profile claimed; without,
/// it is kept as sent and claims only what its unit allows.
#[test]
fn converted_units_keep_the_original_and_claim_the_profile() {
    let convert: UnitConverter = crate::profile::units::convert;
    let r = Reading {
        value: Value::Components(vec![
            Component {
                metric: catalog::SYSTOLIC,
                quantity: Quantity {
                    value: Measured::Value(Decimal::new(160, -1)),
                    unit: "kPa".into(),
                },
            },
            Component {
                metric: catalog::DIASTOLIC,
                quantity: Quantity {
                    value: Measured::Value(Decimal::new(107, -1)),
                    unit: "kPa".into(),
                },
            },
        ]),
        ..bp_reading()
    };
    let id = r.identifier();
    let kept = serde_json::to_value(Observation::new(&r, &id, "d", "g")).unwrap();
    assert_eq!(kept["component"][0]["valueQuantity"]["code"], json!("kPa"));
    assert!(!kept["meta"]["profile"]
        .as_array()
        .unwrap()
        .contains(&json!("http://hl7.org/fhir/StructureDefinition/bp")));
    let converted = serde_json::to_value(Observation::new_with(
        &r,
        &id,
        "d",
        "g",
        None,
        Some(convert),
    ))
    .unwrap();
    let sys = &converted["component"][0]["valueQuantity"];
    assert_eq!(sys["value"], json!(120));
    assert_eq!(sys["code"], json!("mm[Hg]"));
    assert_eq!(sys["extension"][0]["url"], json!(PQ_TRANSLATION_EXTENSION));
    assert_eq!(
        sys["extension"][0]["valueQuantity"],
        json!({"value": 16.0, "unit": "kPa", "system": UCUM, "code": "kPa"})
    );
    assert!(converted["meta"]["profile"]
        .as_array()
        .unwrap()
        .contains(&json!("http://hl7.org/fhir/StructureDefinition/bp")));
    // Already canonical: untouched, no extension.
    let plain = serde_json::to_value(Observation::new_with(
        &bp_reading(),
        &id,
        "d",
        "g",
        None,
        Some(convert),
    ))
    .unwrap();
    assert!(plain["component"][0]["valueQuantity"]
        .get("extension")
        .is_none());
}

#[test]
fn if_none_exist_escapes_the_search_syntax_then_percent_encodes() {
    // FHIR R4 search escaping: `\\` before `\\ , | $`; then every byte outside RFC 3986's
    // unreserved set as %XX (UTF-8 for non-ASCII), the system/value separator as %7C.
    assert_eq!(
        crate::fhir::if_none_exist("urn:x", r"a,b|c\d$e f-é"),
        "identifier=urn%3Ax%7Ca%5C%2Cb%5C%7Cc%5C%5Cd%5C%24e%20f-%C3%A9"
    );
    assert_eq!(
        crate::fhir::if_none_exist("https://h/s", "AZaz09-._~"),
        "identifier=https%3A%2F%2Fh%2Fs%7CAZaz09-._~"
    );
}

proptest::proptest! {
    /// Any text is written as a byte-by-byte encoder writes it: the search escapes, then
    /// every byte outside the unreserved set as `%XX` (non-ASCII text included).
    #[test]
    fn search_params_are_encoded_byte_by_byte_whatever_the_text(text in "\\PC{0,24}") {
        let mut want = String::new();
        for b in text.bytes() {
            let mut pct = |b: u8| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    want.push(char::from(b));
                } else {
                    want.push_str(&format!("%{b:02X}"));
                }
            };
            if b"\\,|$".contains(&b) {
                pct(b'\\');
            }
            pct(b);
        }
        let mut got = String::new();
        crate::fhir::write_search_param(&mut got, &text).unwrap();
        proptest::prop_assert_eq!(got, want);
    }

    /// The full URLs are the name-based UUIDs the uuid crate makes of `kind/key`: the same
    /// resource keeps the URL earlier gateways gave it.
    #[test]
    fn urn_uuids_are_version_5_uuids_of_kind_and_key(kind in "[A-Za-z]{0,12}", key in "\\PC{0,40}") {
        let want = uuid::Uuid::new_v5(&UUID_NAMESPACE, format!("{kind}/{key}").as_bytes());
        proptest::prop_assert_eq!(urn_uuid(&kind, &key), format!("urn:uuid:{want}"));
    }
}

#[test]
fn a_urn_uuid_is_the_one_earlier_gateways_gave() {
    assert_eq!(
        urn_uuid(
            "Observation",
            "FEEDABEEDEADBEEF-150456-2026-01-02T03:04:05.678Z"
        ),
        // Python's uuid.uuid5 of the same namespace and name.
        "urn:uuid:063baf45-3e6b-5956-94d9-57db0a1dff0c"
    );
}

#[test]
fn a_device_id_with_search_characters_gets_a_search_safe_identifier_everywhere() {
    let mut r = bp_reading();
    r.device.id = DeviceId::Other(r"cuff,1|a\b$ 2%é".into());
    let id = r.identifier();
    assert!(id.starts_with("cuff%2C1%7Ca%5Cb%24 2%25é-"), "{id}");
    assert!(!id.contains([',', '|', '\\', '$']), "{id}");
    let mapped = bundle(
        &gateway(),
        &[(1, &r)],
        BundleType::Transaction,
        PatientMode::Identifier,
    );
    let json: serde_json::Value = serde_json::from_slice(&mapped.body).unwrap();
    let device = &json["entry"][1];
    assert_eq!(
        device["resource"]["identifier"][0]["value"],
        json!("cuff%2C1%7Ca%5Cb%24 2%25é")
    );
    let obs = &json["entry"][2];
    assert_eq!(obs["resource"]["identifier"][0]["value"], json!(id));
    // Nothing left for the FHIR escapes to do: no `\\` (%5C) goes out.
    let query = obs["request"]["ifNoneExist"].as_str().unwrap();
    assert!(
        query.starts_with("identifier=http%3A%2F%2Fhl7.org%2Ffhir%2Fuv%2Fphd%2FStructureDefinition%2FPhdBaseObservation%7Ccuff%252C1%257Ca%255Cb%2524%202%2525%C3%A9-p42-urn%3Aoid%3A1.2.3-150020-"),
        "{query}"
    );
    assert!(!query.contains("%5C"), "{query}");
}

#[test]
fn rows_within_entries_counts_the_gateway_and_each_new_device() {
    let a = bp_reading();
    let mut b = bp_reading();
    b.device.id = DeviceId::Other("other".into());
    let rows = [(1, &a), (2, &a), (3, &b), (4, &b), (5, &a)];
    // gateway + device a + 2 observations = 4; b needs 2 more.
    assert_eq!(rows_within_entries_id(&rows, 4), 2);
    assert_eq!(rows_within_entries_id(&rows, 5), 2);
    assert_eq!(rows_within_entries_id(&rows, 6), 3);
    assert_eq!(rows_within_entries_id(&rows, 8), 5);
    assert_eq!(rows_within_entries_id(&rows, 100), 5);
    // Never nothing: one reading too large alone is sent and refused alone.
    assert_eq!(rows_within_entries_id(&rows, 1), 1);
    let mapped = bundle(
        &gateway(),
        &rows[..3],
        BundleType::Transaction,
        PatientMode::Identifier,
    );
    assert_eq!(mapped.roles.len(), 6);
}

fn rows_within_entries_id(rows: &[(i64, &Reading)], max: usize) -> usize {
    rows_within_entries(rows, max, PatientMode::Identifier)
}

#[test]
fn patients_by_identifier_conditional_reference_or_conditional_create() {
    let a = bp_reading();
    let mut b = bp_reading();
    b.patient = Some(PatientRef::identifier("urn:oid:1.2.3", "p,43|x"));
    let mut c = bp_reading();
    c.patient = Some(PatientRef::Reference("Patient/9".into()));
    let rows = [(1, &a), (2, &b), (3, &a), (4, &c)];
    let json = |mode| -> serde_json::Value {
        serde_json::from_slice(&bundle(&gateway(), &rows, BundleType::Transaction, mode).body)
            .unwrap()
    };
    // Identifier only (the default): no Patient entries, subject.identifier alone.
    let plain = json(PatientMode::Identifier);
    assert_eq!(plain["entry"].as_array().unwrap().len(), 6);
    assert_eq!(
        plain["entry"][2]["resource"]["subject"],
        json!({"identifier": {"system": "urn:oid:1.2.3", "value": "p42"}})
    );
    // Conditional: the server resolves the reference; the identifier stays beside it.
    let cond = json(PatientMode::Conditional);
    assert_eq!(cond["entry"].as_array().unwrap().len(), 6);
    assert_eq!(
        cond["entry"][3]["resource"]["subject"],
        json!({"reference": "Patient?identifier=urn%3Aoid%3A1.2.3%7Cp%5C%2C43%5C%7Cx",
               "identifier": {"system": "urn:oid:1.2.3", "value": "p,43|x"}})
    );
    assert_eq!(
        cond["entry"][5]["resource"]["subject"],
        json!({"reference": "Patient/9"})
    );
    // Create: one Patient entry per patient, conditional on its identifier, referenced.
    let create = json(PatientMode::Create);
    let entries = create["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 8);
    let patient = &entries[2];
    assert_eq!(patient["request"]["url"], json!("Patient"));
    assert_eq!(
        patient["request"]["ifNoneExist"],
        json!("identifier=urn%3Aoid%3A1.2.3%7Cp42")
    );
    assert_eq!(
        patient["resource"],
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.3", "value": "p42"}]})
    );
    assert_eq!(
        entries[4]["resource"]["subject"]["reference"],
        patient["fullUrl"]
    );
    assert_eq!(
        entries[6]["resource"]["subject"]["reference"],
        patient["fullUrl"]
    );
    assert_eq!(
        entries[5]["resource"]["subject"]["reference"],
        entries[3]["fullUrl"]
    );
    let roles = bundle(
        &gateway(),
        &rows,
        BundleType::Transaction,
        PatientMode::Create,
    )
    .roles;
    assert_eq!(roles[2], EntryRole::Patient);
    // The entry count a limit sees includes the Patients.
    assert_eq!(rows_within_entries(&rows, 8, PatientMode::Create), 4);
    assert_eq!(rows_within_entries(&rows, 7, PatientMode::Create), 3);
    assert_eq!(rows_within_entries(&rows, 7, PatientMode::Identifier), 4);
}

/// The Device resource as it was built before it was written from a struct: a JSON tree.
fn device_json_as_built_before(d: &DeviceRef) -> serde_json::Value {
    let (system, value) = observation::device_identifier(d);
    let mut res = serde_json::Map::new();
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
    serde_json::Value::Object(res)
}

proptest::proptest! {
    /// Every kind of device, with or without a model and a manufacturer, any text in them:
    /// its entry in a Bundle holds the same Device JSON, byte for byte, as the tree did, and
    /// so does `device()`.
    #[test]
    fn device_resources_are_written_as_the_json_tree_was(
        kind in 0usize..4,
        bytes in proptest::array::uniform8(proptest::num::u8::ANY),
        text in "[a-zA-Z0-9 ,|$\\\\é\"<>]{1,16}",
        model in proptest::option::of("[a-zA-Z0-9 \"\\\\é]{0,12}"),
        manufacturer in proptest::option::of("[a-zA-Z0-9 \"\\\\é]{0,12}"),
    ) {
        let id = match kind {
            0 => DeviceId::Eui64(bytes),
            1 => DeviceId::Bluetooth(bytes[..6].try_into().unwrap()),
            2 => DeviceId::Serial(text.clone()),
            _ => DeviceId::Other(text.clone()),
        };
        let d = DeviceRef { id, profile: format!("profile {text}"), model, manufacturer };
        let want = serde_json::to_string(&device_json_as_built_before(&d)).unwrap();
        let (system, value) = observation::device_identifier(&d);
        let written =
            serde_json::to_string(&observation::DeviceResource::new(&d, &system, &value)).unwrap();
        proptest::prop_assert_eq!(&written, &want);
        proptest::prop_assert_eq!(serde_json::to_string(&device(&d).resource).unwrap(), want);
    }
}
