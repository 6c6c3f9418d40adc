//! The demo, run as a new user would (the real binary, the simulator with its scenarios, the
//! NDJSON output), checked for what docs/clinical.md promises: each simulated patient keeps a
//! coherent baseline, every blood pressure has its systolic above its diastolic, a loose cuff
//! is delivered marked and preliminary, the clockless thermometer says where its time came
//! from, the impossible SpO2 is refused with a reason that names the metric and not the value,
//! the unbound device's readings are held (never written) until `devices bind` releases them
//! to the patient given, every reading is accounted for, and Device.ndjson does not repeat its
//! Devices after a restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use vitalbridge_tests::gateway::{run_cli, GatewayProcess};

/// Rounds of the five devices; each round is 7 readings (BP and its pulse, SpO2 and its
/// pulse, a temperature, a weight, a heart rate).
const ROUNDS: u64 = 30;
const PER_ROUND: u64 = 7;

fn config() -> String {
    format!(
        "[gateway]\ndata_dir = \"data\"\n[sources.sim]\ndevices = 5\ninterval_ms = 10\n\
         max_readings = {}\n",
        ROUNDS * PER_ROUND
    )
}

fn observations(dir: &Path) -> Vec<Value> {
    let out = dir.join("data/out");
    let mut all = Vec::new();
    for entry in std::fs::read_dir(&out).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("Observation-") {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            all.extend(
                text.lines()
                    .map(|l| serde_json::from_str::<Value>(l).unwrap()),
            );
        }
    }
    all
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The device key an Observation's identifier starts with (`SIM-BP-0001-…`).
fn device_of(o: &Value) -> String {
    let id = o["identifier"][0]["value"].as_str().unwrap();
    id.split('-').take(3).collect::<Vec<_>>().join("-")
}

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

/// Runs the demo until the simulator stopped and everything it stored was written out.
fn run_demo(dir: &Path, expected_out: usize) {
    let mut gw = GatewayProcess::start(dir, &config()).unwrap();
    assert!(
        gw.wait_for_log("simulator reached max_readings", Duration::from_secs(60)),
        "{}",
        gw.log()
    );
    wait_for("the output", Duration::from_secs(60), || {
        observations(dir).len() >= expected_out
    });
    gw.terminate(Duration::from_secs(20)).expect("stops");
}

#[test]
fn the_demo_shows_what_the_gateway_does_with_each_kind_of_reading() {
    let dir = tempfile::tempdir().unwrap();
    let held = ROUNDS; // the heart-rate strap, bound to nobody
    let refused = ROUNDS / 15; // every 15th SpO2 is above 100 %
    let delivered = (ROUNDS * PER_ROUND - held - refused) as usize;
    run_demo(dir.path(), delivered);
    let obs = observations(dir.path());
    assert_eq!(obs.len(), delivered, "every stored reading accounted for");

    let mut by_device: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for o in &obs {
        by_device.entry(device_of(o)).or_default().push(o);
    }
    assert_eq!(
        by_device.keys().collect::<Vec<_>>(),
        ["SIM-BP-0001", "SIM-OX-0002", "SIM-SC-0004", "SIM-TH-0003"],
        "nothing of the unbound SIM-HR-0005 is written"
    );
    // A coherent patient: a weight stays within a few hundred grams of itself.
    let weights: Vec<f64> = by_device["SIM-SC-0004"]
        .iter()
        .map(|o| number(&o["valueQuantity"]["value"]))
        .collect();
    let (lo, hi) = weights
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), w| (a.min(*w), b.max(*w)));
    assert!(hi - lo < 3.0, "weights {lo}..{hi}");
    // Systolic above diastolic, always; every 10th with a loose cuff, preliminary.
    let panels: Vec<&&Value> = by_device["SIM-BP-0001"]
        .iter()
        .filter(|o| o["code"]["coding"][0]["code"] == "85354-9")
        .collect();
    assert_eq!(panels.len() as u64, ROUNDS);
    for p in &panels {
        let (sys, dia) = (
            number(&p["component"][0]["valueQuantity"]["value"]),
            number(&p["component"][1]["valueQuantity"]["value"]),
        );
        assert!(sys > dia, "{sys}/{dia}");
    }
    let loose: Vec<&&&Value> = panels
        .iter()
        .filter(|p| p["interpretation"][0]["coding"][0]["code"] == "cuff-loose")
        .collect();
    assert_eq!(loose.len() as u64, ROUNDS / 10);
    assert!(loose.iter().all(|p| p["status"] == "preliminary"));
    assert!(panels
        .iter()
        .filter(|p| p.get("interpretation").is_none())
        .all(|p| p["status"] == "final"));
    // Every Observation says where its time came from; the thermometer has no clock.
    for o in &obs {
        let source = &o["_effectiveDateTime"]["extension"][0]["extension"][0]["valueCode"];
        let want = if device_of(o) == "SIM-TH-0003" {
            "gateway-receive"
        } else {
            "device"
        };
        assert_eq!(source, want, "{o}");
    }
    // SpO2 carries both LOINC codes, and none above 100 % got through.
    for o in by_device["SIM-OX-0002"]
        .iter()
        .filter(|o| o["code"]["coding"][0]["code"] == "2708-6")
    {
        assert_eq!(o["code"]["coding"][1]["code"], "59408-5");
        assert!(number(&o["valueQuantity"]["value"]) <= 100.0);
    }
    // The refused ones are dead letters with their reason, never their value.
    let (_, letters, _) = run_cli(dir.path(), &["queue", "dead-letters", "-c", "gateway.toml"]);
    let refusals: Vec<&str> = letters
        .lines()
        .filter(|l| l.contains("refused by the plausibility check"))
        .collect();
    assert_eq!(refusals.len() as u64, refused, "{letters}");
    for l in &refusals {
        assert!(
            l.contains("MDC_PULS_OXIM_SAT_O2") && l.contains("0 to 100 %"),
            "{l}"
        );
    }
    let audit = std::fs::read_to_string(dir.path().join("data/audit.log")).unwrap();
    assert!(audit.contains(r#""kind":"readings_refused""#), "{audit}");
    // The unbound device's readings are held, listed, and released to the patient given.
    let (_, listed, _) = run_cli(dir.path(), &["devices", "unbound", "-c", "gateway.toml"]);
    assert!(
        listed.contains(&format!("SIM-HR-0005\t-\t{held}\t")),
        "{listed}"
    );
    let devices_before =
        std::fs::read_to_string(dir.path().join("data/out/Device.ndjson")).unwrap();
    let (code, out, err) = run_cli(
        dir.path(),
        &[
            "devices",
            "bind",
            "SIM-HR-0005",
            "--patient",
            "urn:oid:1.2.3|strap-wearer",
            "-c",
            "gateway.toml",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!("released {held} readings")),
        "{out}"
    );
    let audit = std::fs::read_to_string(dir.path().join("data/audit.log")).unwrap();
    assert!(audit.contains(r#""kind":"unbound_released""#), "{audit}");
    assert!(
        !audit.contains("strap-wearer"),
        "the audit log names no patient"
    );

    // Run again: the released readings go out with their patient, the strap's new ones are
    // held again, and Device.ndjson gains only the strap's Device.
    run_demo(dir.path(), 2 * delivered + held as usize);
    let obs = observations(dir.path());
    let strap: Vec<&Value> = obs
        .iter()
        .filter(|o| device_of(o) == "SIM-HR-0005")
        .collect();
    assert_eq!(strap.len() as u64, held);
    for o in &strap {
        assert_eq!(o["subject"]["identifier"]["value"], "strap-wearer");
        assert!(o["identifier"][0]["value"]
            .as_str()
            .unwrap()
            .contains("-strap-wearer-urn:oid:1.2.3-"));
    }
    let devices_after = std::fs::read_to_string(dir.path().join("data/out/Device.ndjson")).unwrap();
    assert_eq!(
        devices_after.lines().count(),
        devices_before.lines().count() + 1,
        "a restart does not repeat the Devices:\n{devices_after}"
    );
    let (_, listed, _) = run_cli(dir.path(), &["devices", "unbound", "-c", "gateway.toml"]);
    assert!(
        listed.contains(&format!("SIM-HR-0005\t-\t{held}\t")),
        "{listed}"
    );
}

/// MQTT payloads in the units devices really send, through the real broker and the gateway
/// to the FHIR test upstream with `clinical.units = "canonical"`: commensurable units are
/// converted with the value as sent kept beside it, and every Observation passes the
/// independent validator; a unit of the wrong dimension (the bug report's SpO2 in `kg`) and an
/// impossible value are dead letters with their reasons; a payload's patient is ignored on a
/// hub that binds its devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_are_checked_and_converted_and_payload_patients_not_trusted_over_mqtt() {
    use vitalbridge_tests::fixture::Rig;
    use vitalbridge_tests::mosquitto::publish_qos1;
    use vitalbridge_tests::scenario::PATIENT_ID;
    use vitalbridge_tests::validator;

    let rig = Rig::start().await;
    let gw = rig.start_subscribed(&rig.mqtt_to_fhir("[clinical]\nunits = \"canonical\"\n"));
    let t = |i: u32| format!("2026-11-25T08:{i:02}:00Z");
    let payloads: Vec<Vec<u8>> = [
        format!(r#"{{"device":"scale","time":"{}","metric":"body-weight","value":154.3,"unit":"[lb_av]"}}"#, t(1)),
        format!(r#"{{"device":"thermo","time":"{}","metric":"body-temperature","value":98.6,"unit":"[degF]"}}"#, t(2)),
        format!(r#"{{"device":"cuff","time":"{}","metric":"blood-pressure","components":[
            {{"metric":"systolic","value":16.0,"unit":"kPa"}},{{"metric":"diastolic","value":10.7,"unit":"kPa"}}]}}"#, t(3)),
        format!(r#"{{"device":"meter","time":"{}","metric":"glucose","value":5.4,"unit":"mmol/L"}}"#, t(4)),
        format!(r#"{{"device":"ox","time":"{}","metric":"spo2","value":0.97,"unit":"1","patient":{{"reference":"Patient/someone-else"}}}}"#, t(5)),
        // The bug report, and an impossible value: dead letters.
        format!(r#"{{"device":"ox","time":"{}","metric":"spo2","value":970,"unit":"kg"}}"#, t(6)),
        format!(r#"{{"device":"ox","time":"{}","metric":"spo2","value":103,"unit":"%"}}"#, t(7)),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    publish_qos1(rig.broker.port(), "vitals/units", payloads)
        .await
        .unwrap();
    assert!(
        rig.upstream
            .wait_for_observations(5, Duration::from_secs(30))
            .await,
        "{}",
        gw.log()
    );
    let obs = rig.upstream.observations();
    validator::assert_valid_fhir(&obs);
    let by = |device: &str| {
        obs.iter()
            .find(|o| {
                o["identifier"][0]["value"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{device}-"))
            })
            .unwrap_or_else(|| panic!("no Observation of {device}"))
    };
    let q = |o: &Value| {
        (
            o["valueQuantity"]["value"].to_string(),
            o["valueQuantity"]["code"].as_str().unwrap().to_owned(),
            o["valueQuantity"]["extension"][0]["valueQuantity"]["value"].to_string(),
            o["valueQuantity"]["extension"][0]["valueQuantity"]["code"]
                .as_str()
                .unwrap_or("-")
                .to_owned(),
        )
    };
    let s = |v: &str| v.to_owned();
    assert_eq!(
        q(by("scale")),
        (s("69.99"), s("kg"), s("154.3"), s("[lb_av]"))
    );
    assert_eq!(
        q(by("thermo")),
        (s("37.0"), s("Cel"), s("98.6"), s("[degF]"))
    );
    assert_eq!(q(by("ox")), (s("97"), s("%"), s("0.97"), s("1")));
    // Converted, the weight claims the body-weight profile; glucose by substance keeps its
    // unit and has the molar LOINC code.
    assert!(by("scale")["meta"]["profile"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(
            "http://hl7.org/fhir/StructureDefinition/bodyweight"
        )));
    let cuff = by("cuff");
    assert_eq!(cuff["component"][0]["valueQuantity"]["code"], "mm[Hg]");
    assert_eq!(
        cuff["component"][0]["valueQuantity"]["value"].to_string(),
        "120"
    );
    let meter = by("meter");
    assert_eq!(meter["code"]["coding"][0]["code"], "14743-9");
    assert_eq!(meter["valueQuantity"]["code"], "mmol/L");
    // The payload named another patient: ignored, the hub's binding applies.
    assert_eq!(by("ox")["subject"]["identifier"]["value"], PATIENT_ID);
    let dir = rig.dir.path();
    let (_, letters, _) = run_cli(dir, &["queue", "dead-letters", "-c", "gateway.toml"]);
    assert!(letters.contains("`kg` is a mass"), "{letters}");
    assert!(
        letters.contains("refused by the plausibility check"),
        "{letters}"
    );
    assert!(!letters.contains("970"), "{letters}");
    let audit = std::fs::read_to_string(dir.join("data/audit.log")).unwrap_or_default();
    assert!(!audit.contains("payload_patient_trusted"), "{audit}");
    assert!(!audit.contains("someone-else"), "{audit}");
}

/// A binding change never re-labels readings taken under the old binding: readings buffered
/// while the FHIR server was unreachable keep the patient they were received with when the
/// device is bound to someone else before they are delivered; later readings get the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_change_never_relabels_readings_already_taken() {
    use vitalbridge_tests::gateway::wait_for_pending;
    use vitalbridge_tests::pki::TestPki;
    use vitalbridge_tests::upstream::{Upstream, UpstreamConfig};

    let pki = TestPki::generate();
    let upstream = Upstream::start(UpstreamConfig::new(&pki)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = pki.client_files();
    let config = |base_url: &str, patient: &str| {
        format!(
            "[gateway]\ndata_dir = \"data\"\n[sources.sim]\ndevices = 1\ninterval_ms = 10\n\
             max_readings = 20\nscenarios = false\n\
             [[devices]]\nid = \"SIM-BP-0001\"\npatient_system = \"urn:oid:1.2.3\"\npatient_id = \"{patient}\"\n\
             [uplink]\nretry_initial_ms = 50\nretry_max_ms = 200\n\
             [uplink.fhir]\nbase_url = \"{base_url}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.ca_cert_path().display(),
            client.cert.display(),
            client.key.display()
        )
    };
    // Nothing listens on port 9 of loopback: the readings stay buffered.
    let mut gw =
        GatewayProcess::start(dir.path(), &config("https://127.0.0.1:9/fhir", "before")).unwrap();
    assert!(gw.wait_for_log("simulator reached max_readings", Duration::from_secs(30)));
    gw.terminate(Duration::from_secs(30)).expect("stops");
    let stats = wait_for_pending(dir.path(), 20, Duration::from_secs(5));
    assert!(stats.contains("pending: 20"), "{stats}");

    // Bound to another patient, and the server reachable.
    let gw = GatewayProcess::start(dir.path(), &config(&upstream.url(), "after")).unwrap();
    assert!(
        upstream
            .wait_for_observations(40, Duration::from_secs(60))
            .await,
        "{}",
        gw.log()
    );
    let mut by_seq: Vec<(u64, String)> = upstream
        .observations()
        .iter()
        .map(|o| {
            let id = o["identifier"][0]["value"].as_str().unwrap();
            let seq = id.rsplit("-seq").next().unwrap().parse().unwrap();
            (
                seq,
                o["subject"]["identifier"]["value"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    by_seq.sort();
    for (seq, patient) in &by_seq {
        let want = if *seq <= 20 { "before" } else { "after" };
        assert_eq!(patient, want, "reading {seq}");
    }
}
