//! Patient data at rest: after a run with readings pending (the FHIR server down) and a
//! `kill -9` (so the WAL is not checkpointed), no file under `data_dir` holds a patient's
//! identifier or a measured value in clear. And the key: a missing or wrong key stops the
//! gateway with a clear error and deletes nothing.

use std::path::Path;
use std::time::Duration;

use vitalbridge_tests::fixture::Rig;
use vitalbridge_tests::gateway::{run_cli, wait_for_pending, GatewayProcess};
use vitalbridge_tests::mosquitto::publish_qos1;

const PATIENT_SYSTEM: &str = "urn:oid:2.16.840.1.113883.19.5.99999";
const PATIENT_ID: &str = "MRN-778899001";

/// Every byte of every file under `dir`, with the file it came from.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_patient_identity_or_value_is_in_clear_under_data_dir_with_readings_pending() {
    let mut rig = Rig::start().await;
    // The FHIR server is down for the whole run (nothing listens): everything stays pending.
    rig.upstream.stop().await;
    let (broker, dir, data) = (&rig.broker, &rig.dir, rig.data_dir());
    let bindings = format!(
        "[[devices]]\nid = \"dev-000\"\npatient_system = \"{PATIENT_SYSTEM}\"\npatient_id = \"{PATIENT_ID}\"\n"
    );
    let mut gw = rig.start_subscribed(&rig.mqtt_to_fhir(&bindings));
    // Distinctive values: 4 decimals appear nowhere else.
    let payloads: Vec<Vec<u8>> = (0..400)
        .map(|i| {
            format!(
                "{{\"device\": \"dev-{:03}\", \"time\": \"2026-11-30T08:{:02}:{:02}Z\", \"metric\": \"body-weight\", \
                 \"value\": 8{}.4321, \"unit\": \"kg\", \"seq\": {i}}}",
                i % 2,
                i / 60,
                i % 60,
                i % 10
            )
            .into_bytes()
        })
        .chain(std::iter::once(
            format!("{{\"patient\": \"{PATIENT_ID}\", \"value\": \"garbage 12.4321\"}}").into_bytes(),
        ))
        .collect();
    assert_eq!(
        publish_qos1(broker.port(), "vitals/x", payloads)
            .await
            .unwrap(),
        401
    );
    let stats = wait_for_pending(dir.path(), 400, Duration::from_secs(30));
    assert!(stats.contains("pending: 400"), "{stats}");
    gw.kill9();

    let all = files(&data);
    assert!(
        all.iter().any(|(p, _)| p.ends_with("buffer.db-wal")),
        "the WAL was kept"
    );
    for (path, bytes) in &all {
        for secret in [PATIENT_ID, PATIENT_SYSTEM, ".4321", "garbage"] {
            assert!(
                !find(bytes, secret.as_bytes()),
                "{secret:?} in clear in {path}"
            );
        }
    }
    // The key is outside data_dir, private.
    let key = dir.path().join("vitalbridge-buffer.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // With the key, everything is still there and readable.
    gw.restart().unwrap();
    assert!(
        gw.wait_for_log("buffer open", Duration::from_secs(20)),
        "{}",
        gw.log()
    );
    let (_, letters, _) = run_cli(dir.path(), &["queue", "dead-letters", "-c", "gateway.toml"]);
    assert!(letters.contains("mqtt:vitals/x"), "{letters}");
}

#[test]
fn a_missing_or_wrong_key_stops_the_gateway_with_a_clear_error_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[gateway]\ndata_dir = \"data\"\n[sources.sim]\ndevices = 2\ninterval_ms = 20\nmax_readings = 50\n\
                  [uplink.file]\ndir = \"out\"\nrotate_bytes = 4096\n[buffer]\nkey_file = \"keys/buffer.key\"\n";
    let mut gw = GatewayProcess::start(dir.path(), config).unwrap();
    assert!(gw.wait_for_log("simulator reached max_readings", Duration::from_secs(30)));
    assert!(gw.terminate(Duration::from_secs(20)).unwrap().success());
    let db = dir.path().join("data/buffer.db");
    let before = std::fs::read(&db).unwrap();

    std::fs::rename(
        dir.path().join("keys/buffer.key"),
        dir.path().join("saved.key"),
    )
    .unwrap();
    let (code, _, err) = run_cli(dir.path(), &["run", "-c", "gateway.toml"]);
    assert_ne!(code, 0);
    assert!(err.contains("does not exist, but the buffer"), "{err}");
    assert!(err.contains("nothing was read or deleted"), "{err}");
    assert!(
        !dir.path().join("keys/buffer.key").exists(),
        "no key made up"
    );

    let (code, _, _) = run_cli(dir.path(), &["buffer-key", "new", "keys/buffer.key"]);
    assert_eq!(code, 0);
    let (code, _, err) = run_cli(dir.path(), &["run", "-c", "gateway.toml"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("is not the key this buffer is sealed with"),
        "{err}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), before, "nothing touched");
}
