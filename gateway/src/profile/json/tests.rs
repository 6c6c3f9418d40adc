//! Vendor JSON profiles: the shipped ones against their examples and by hand, the
//! malformed-profile corpus, decoding errors, and never panicking.

use proptest::prelude::*;
use time::OffsetDateTime;

use super::registry::{load, ProfileSet, BUILT_IN};
use super::*;
use crate::model::PatientRef;

fn set() -> ProfileSet {
    ProfileSet::built_in().unwrap()
}

fn decode(topic: &str, payload: &str) -> Option<Result<Vec<Reading>, DecodeError>> {
    let bound =
        |key: &str, _: Option<u8>| Some(PatientRef::identifier("urn:mrn", format!("p-{key}")));
    set().decode(
        topic,
        payload.as_bytes(),
        OffsetDateTime::UNIX_EPOCH,
        &bound,
    )
}

#[test]
fn every_shipped_profile_loads_and_its_examples_decode() {
    let set = set();
    assert_eq!(set.profiles().len(), BUILT_IN.len());
    assert!(BUILT_IN.len() >= 3);
    for p in set.profiles() {
        assert!(!p.examples.is_empty(), "{} has an example", p.id);
        assert!(
            p.documentation.contains("https://"),
            "{} cites its document",
            p.id
        );
        for e in &p.examples {
            let readings = decode(&e.topic, &e.payload).unwrap().unwrap();
            assert_eq!(readings.len(), e.readings.len(), "{}", p.id);
            for r in &readings {
                assert_eq!(r.device.profile, format!("{}@{}", p.id, p.version));
            }
        }
    }
}

#[test]
fn the_builtin_profiles_are_exactly_the_json_files() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../device-profiles");
    let mut on_disk: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            (name.starts_with("json-") && name.ends_with(".toml")).then(|| {
                (
                    name.clone(),
                    std::fs::read_to_string(dir.join(&name)).unwrap(),
                )
            })
        })
        .collect();
    on_disk.sort();
    let built: Vec<(String, String)> = BUILT_IN
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    assert_eq!(on_disk, built);
}

#[test]
fn withings_values_are_scaled_exactly_and_timed_by_the_group_date() {
    let payload = r#"{"status":0,"body":{"measuregrps":[
        {"grpid":7,"date":1700000000,"deviceid":"abc","measures":[{"value":3655,"type":71,"unit":-2},{"value":97,"type":54,"unit":0}]}]}}"#;
    let readings = decode("withings/x/getmeas", payload).unwrap().unwrap();
    let said: Vec<String> = readings.iter().map(describe).collect();
    assert_eq!(
        said,
        ["MDC_PULS_OXIM_SAT_O2 97 %", "MDC_TEMP_BODY 36.55 Cel"]
    );
    let r = &readings[0];
    assert_eq!(r.device_time.unwrap().unix_timestamp(), 1_700_000_000);
    assert_eq!(r.sequence, Some(7));
    assert_eq!(r.device.id, crate::model::DeviceId::Other("abc".into()));
    assert_eq!(r.device.manufacturer.as_deref(), Some("Withings"));
    assert_eq!(
        r.patient,
        Some(PatientRef::identifier("urn:mrn", "p-abc")),
        "bound by the config's device binding"
    );
    // A status other than 0 is an error response: no Withings profile matches it.
    let refused = decode("withings/x/getmeas", r#"{"status":401,"error":"x"}"#).unwrap();
    assert!(
        matches!(refused, Err(DecodeError::NoProfile(_))),
        "{refused:?}"
    );
}

#[test]
fn decoding_errors_name_profile_record_key_and_path_never_values() {
    let cases = [
        // Half a blood pressure.
        (
            "withings/x/getmeas",
            r#"{"status":0,"body":{"measuregrps":[{"grpid":1,"date":1,"deviceid":"d","measures":[{"value":123456,"type":10,"unit":0}]}]}}"#,
            "json-withings-getmeas@1: record 0: `metrics[1]` (components): has only some of its components",
        ),
        // No device id.
        (
            "withings/x/getmeas",
            r#"{"status":0,"body":{"measuregrps":[{"grpid":1,"date":1,"measures":[{"value":123456,"type":1,"unit":0}]}]}}"#,
            "`device.id` (/deviceid): is absent",
        ),
        // A value that is not a number.
        (
            "dexcom/r/egvs",
            r#"{"recordType":"egv","records":[{"systemTime":"2026-01-01T00:00:00","transmitterId":"T","value":"123456x","unit":"mg/dL"}]}"#,
            "record 0: `metrics[0].value` (/value): is not a number",
        ),
        // A unit the table does not list.
        (
            "dexcom/r/egvs",
            r#"{"recordType":"egv","records":[{"systemTime":"2026-01-01T00:00:00","transmitterId":"T","value":123456,"unit":"mmol/L"}]}"#,
            "`metrics[0].unit_from` (/unit): is a unit the profile's `units` table does not list",
        ),
        // A bad time.
        (
            "omh/D1/data-points",
            r#"{"header":{"schema_id":{"namespace":"omh","name":"blood-pressure"}},"body":{"systolic_blood_pressure":{"value":123456,"unit":"mmHg"},"diastolic_blood_pressure":{"value":80,"unit":"mmHg"},"effective_time_frame":{"date_time":"yesterday 123456"}}}"#,
            "`time.path` (/body/effective_time_frame/date_time): is not an RFC 3339 time",
        ),
        // Records that are not an array.
        ("dexcom/r/egvs", r#"{"recordType":"egv","records":{"a":123456}}"#, "`records` (/records): is not an array"),
        // Nothing the profile knows.
        (
            "withings/x/getmeas",
            r#"{"status":0,"body":{"measuregrps":[{"grpid":1,"date":1,"deviceid":"d","measures":[{"value":123456,"type":6,"unit":-1}]}]}}"#,
            "no reading in the message",
        ),
        ("dexcom/r/egvs", "{123456", "invalid JSON: syntax error at line 1"),
    ];
    for (topic, payload, want) in cases {
        let e = decode(topic, payload).unwrap().unwrap_err().to_string();
        assert!(e.contains(want), "{e}\n wanted: {want}");
        assert!(!e.contains("123456"), "a value leaked: {e}");
    }
}

#[test]
fn a_topic_no_profile_claims_is_left_to_the_canonical_format() {
    assert!(decode("vitals/hub-1", "{}").is_none());
    assert!(!set().claims("withings/a/b/getmeas"));
}

/// A file a test varies: the smallest valid profile.
const MINIMAL: &str = r#"id = "json-minimal"
version = "1"
name = "Minimal"
documentation = "ours"
topics = ["m/+"]

[device]
id = "/d"

[[metrics]]
metric = "spo2"
value = "/v"
"#;

#[test]
fn the_malformed_profile_corpus_is_refused_with_file_line_and_key() {
    assert!(load(MINIMAL, "json-minimal.toml").is_ok());
    // (change, the error's start, what it says)
    let cases: &[(&str, &str, &str, &str)] = &[
        ("id = \"json-minimal\"", "id = \"minimal\"", "json-minimal.toml:1: `id` ", "must be `json-`"),
        ("version = \"1\"", "version = \"1 beta\"", "json-minimal.toml:2: `version` ", "letters, digits"),
        ("version = \"1\"\n", "", "json-minimal.toml", "missing field `version`"),
        ("topics = [\"m/+\"]", "topics = [\"m/#/x\"]", "json-minimal.toml:5: `topics[0]` ", "not a valid MQTT topic filter"),
        ("topics = [\"m/+\"]", "topics = []", "json-minimal.toml:5: `topics` ", "at least one"),
        ("id = \"/d\"", "id = \"d\"", "json-minimal.toml:8: `device.id` ", "JSON pointer"),
        ("id = \"/d\"", "id = \"/d\"\nserial = 1", "json-minimal.toml:9: `device.serial` ", "unknown field"),
        ("metric = \"spo2\"", "metric = \"sp02\"", "json-minimal.toml:11: `metrics[0].metric` ", "not in the metric catalog"),
        ("value = \"/v\"", "value = \"/v\"\nunit = \"per cent\"", "json-minimal.toml:13: `metrics[0].unit` ", "UCUM"),
        ("value = \"/v\"", "value = \"/v\"\nscale = \"x\"", "json-minimal.toml:13: `metrics[0].scale` ", "decimal"),
        ("value = \"/v\"", "value = \"/v[a\"", "json-minimal.toml:12: `metrics[0].value` ", "closing `]`"),
        ("value = \"/v\"", "value = \"/v\"\nunit_from = \"/u\"", "json-minimal.toml:10: `metrics[0].units` ", "must map each vendor unit"),
        ("value = \"/v\"", "value = 7", "json-minimal.toml:12: `metrics[0].value` ", "invalid type"),
        ("name = \"Minimal\"", "name = \"Minimal\"\nrecords = \"topic:1\"", "json-minimal.toml:4: `records` ", "not a topic level"),
        ("name = \"Minimal\"", "name = \"Minimal\nx", "json-minimal.toml:3", ""),
        ("[device]", "[time]\npath = \"/t\"\nformat = \"QQ\"\n[device]", "json-minimal.toml:9: `time.format` ", "not rfc3339"),
        ("metric = \"spo2\"\nvalue = \"/v\"", "metric = \"blood-pressure\"\nvalue = \"/v\"\n[[metrics.components]]\nmetric = \"systolic\"\nvalue = \"/s\"", "json-minimal.toml:12: `metrics[0].value` ", "belongs on each component"),
        ("metric = \"spo2\"\nvalue = \"/v\"", "metric = \"spo2\"", "json-minimal.toml:10: `metrics[0].value` ", "is required"),
        (
            "value = \"/v\"\n",
            "value = \"/v\"\n[[examples]]\nsource = \"s\"\ntopic = \"m/1\"\npayload = '{\"d\": \"x\", \"v\": 97}'\ndevice = \"x\"\nreadings = [\"MDC_PULS_OXIM_SAT_O2 98 %\"]\n",
            "json-minimal.toml:13: `examples[0]` ",
            "decodes to [\"MDC_PULS_OXIM_SAT_O2 97 %\"], the example says",
        ),
        (
            "value = \"/v\"\n",
            "value = \"/v\"\n[[examples]]\nsource = \"s\"\ntopic = \"other/1\"\npayload = '{}'\ndevice = \"x\"\nreadings = []\n",
            "json-minimal.toml:13: `examples[0]` ",
            "topic is not one of the profile's",
        ),
    ];
    for (from, to, start, says) in cases {
        assert!(MINIMAL.contains(from), "{from}");
        let text = MINIMAL.replacen(from, to, 1);
        let e = load(&text, "json-minimal.toml").unwrap_err().to_string();
        assert!(
            e.starts_with(start),
            "{e}\n wanted it to start with: {start}"
        );
        assert!(e.contains(says), "{e}\n wanted: {says}");
    }
    let long = MINIMAL.replace(
        "name = \"Minimal\"",
        &format!("name = \"{}\"", "n".repeat(200)),
    );
    let e = load(&long, "f").unwrap_err().to_string();
    assert!(e.contains("`name` longer than 128 bytes"), "{e}");
}

#[test]
fn a_directory_profile_replaces_a_shipped_one_and_must_be_named_after_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let text = BUILT_IN
        .iter()
        .find(|(n, _)| *n == "json-dexcom-egv.toml")
        .unwrap()
        .1
        .replace("version = \"1\"", "version = \"2\"");
    std::fs::write(dir.path().join("json-dexcom-egv.toml"), &text).unwrap();
    std::fs::write(dir.path().join("json-minimal.toml"), MINIMAL).unwrap();
    std::fs::write(dir.path().join("README"), "not a profile").unwrap();
    let set = ProfileSet::load(Some(dir.path())).unwrap();
    assert_eq!(set.get("json-dexcom-egv").unwrap().version, "2");
    assert!(set.get("json-minimal").is_some());
    assert_eq!(set.profiles().len(), BUILT_IN.len() + 1);

    std::fs::write(dir.path().join("json-other.toml"), MINIMAL).unwrap();
    let e = ProfileSet::load(Some(dir.path())).unwrap_err().to_string();
    assert!(
        e.contains(
            "json-other.toml:1: `id` is \"json-minimal\" but the file is named json-other.toml"
        ),
        "{e}"
    );
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for topic in ["withings/a/getmeas", "dexcom/a/egvs", "omh/a/data-points"] {
            let _ = decode(topic, &String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn loading_arbitrary_text_never_panics(text in "[ -~\n]{0,400}") {
        let _ = load(&text, "f");
        let _ = load(&format!("{MINIMAL}{text}"), "f");
    }

    #[test]
    fn decoding_mutated_examples_never_panics(cut in 0usize..2000, byte in any::<u8>()) {
        let set = set();
        for p in set.profiles() {
            for e in &p.examples {
                let mut bytes = e.payload.clone().into_bytes();
                if !bytes.is_empty() {
                    let at = cut % bytes.len();
                    bytes[at] = byte;
                }
                let _ = set.decode(&e.topic, &bytes, OffsetDateTime::UNIX_EPOCH, &|_, _| None);
            }
        }
    }
}
