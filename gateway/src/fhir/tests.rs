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
    assert!(o.get("meta").is_none());
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
