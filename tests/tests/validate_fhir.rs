//! The independent FHIR R4 validator (tests/validate_fhir.py) accepts good resources and
//! rejects bad ones. Needs `pip install -r tests/requirements.txt`; fails (not skips)
//! without it.

use std::path::PathBuf;

use serde_json::json;
use vitalbridge_tests::validator::{
    assert_valid_fhir, validate_file, validate_resources, validate_stdin,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

#[test]
fn the_valid_observation_fixture_passes() {
    let run = validate_file(&fixture("observation-valid.json"));
    assert_eq!(
        (run.code, run.passed, run.failed),
        (Some(0), 1, 0),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("1 passed, 0 failed"));
}

#[test]
fn the_invalid_observation_fixture_fails_on_each_vital_signs_essential() {
    let run = validate_file(&fixture("observation-invalid.json"));
    assert_eq!(
        (run.code, run.passed, run.failed),
        (Some(1), 0, 1),
        "{}",
        run.stdout
    );
    let report = run.failures().join("\n");
    for expected in [
        "status 'done' is not in the required value set",
        "valueQuantity.system",
        "category lacks vital-signs",
        "no LOINC coding",
        "effectiveDateTime or effectivePeriod missing",
    ] {
        assert!(
            report.contains(expected),
            "missing {expected:?} in:\n{report}"
        );
    }
}

#[test]
fn ndjson_lines_are_validated_one_by_one() {
    let run = validate_file(&fixture("observations-valid.ndjson"));
    assert_eq!(
        (run.code, run.passed, run.failed),
        (Some(0), 3, 0),
        "{}",
        run.stdout
    );
}

#[test]
fn a_bundle_on_stdin_is_validated_entry_by_entry_with_the_r4_models() {
    let good: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("observation-valid.json")).unwrap()).unwrap();
    let mut unknown_element = good.clone();
    unknown_element["valueQuantityy"] = json!({"value": 1});
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:3a1b0c4e-0000-4000-8000-000000000001", "resource": good,
             "request": {"method": "POST", "url": "Observation"}},
            {"fullUrl": "urn:uuid:3a1b0c4e-0000-4000-8000-000000000002", "resource": unknown_element,
             "request": {"method": "POST", "url": "Observation"}}
        ]
    });
    let run = validate_stdin(&serde_json::to_vec(&bundle).unwrap());
    // The Bundle shell and the good entry pass; the entry with an unknown element fails.
    assert_eq!(
        (run.code, run.passed, run.failed),
        (Some(1), 2, 1),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("entry[1]"), "{}", run.stdout);
    assert!(
        run.stdout.contains("extra fields not permitted"),
        "{}",
        run.stdout
    );
}

#[test]
fn r4_only_structures_are_checked_against_r4() {
    // Observation.instantiates[x] exists only from R5 on: R4 models must reject it (an R5
    // install of fhir.resources would accept it).
    let r5_only = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
        "instantiatesCanonical": "http://example.org/ObservationDefinition/x"
    });
    let run = validate_resources(&[r5_only]);
    assert_eq!(run.failed, 1, "{}", run.stdout);
}

#[test]
fn empty_input_is_a_failure_not_a_pass() {
    let run = validate_stdin(b"");
    assert_eq!((run.code, run.passed), (Some(1), 0), "{}", run.stdout);
}

#[test]
fn assert_valid_fhir_panics_on_a_bad_resource() {
    let good: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("observation-valid.json")).unwrap()).unwrap();
    assert_valid_fhir(std::slice::from_ref(&good));
    let bad = json!({"resourceType": "Observation", "code": {"text": "no status"}});
    let caught = std::panic::catch_unwind(|| assert_valid_fhir(&[bad]));
    assert!(caught.is_err());
}
