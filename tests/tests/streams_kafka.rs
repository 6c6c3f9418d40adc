//! The Kafka uplink against a real Kafka-protocol broker (tansu, see
//! `vitalbridge_tests::kafka`), read back by an independent consumer (kafka-python).
//!
//! The gateway reaches the broker over mutual TLS (its client certificate required). Through
//! `kill -9` of the gateway and a `kill -9` restart of the broker, every reading is in
//! the topic; each record's key is its patient and its partition the one Kafka's default
//! partitioner picks for that key (as kafka-python computes it); per key, the readings come
//! in order, and a reading written twice (the batch in hand when the gateway was killed) has
//! the same identifier both times.
//!
//! SASL/SCRAM inside that TLS (SASL_SSL), against tansu with SQLite storage and users of
//! both mechanisms: a wrong password is a clear log line, an audit entry and a not-ready
//! destination, with every reading kept; the right password put into the file (read again
//! without a restart; SCRAM-SHA-512), then another user with SCRAM-SHA-256, delivers every
//! reading, read back by a consumer that logs in too.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use vitalbridge_tests::fixture::{self, Pace, Publisher, Rig};
use vitalbridge_tests::gateway::{wait_for_pending, GatewayProcess};
use vitalbridge_tests::kafka::{KafkaBroker, ScramUser};

/// One record as the order check needs it: offset, measurement time, identifier.
type RecordCopy<'a> = (i64, f64, &'a str);

const TOPIC: &str = "vitalbridge.observations";
const PATIENTS: &str = "urn:oid:2.16.840.1.113883.4.1";

fn config(rig: &Rig, kafka: &KafkaBroker) -> String {
    let mut devices = String::new();
    for d in 0..fixture::DEVICES {
        devices.push_str(&format!(
            "[[devices]]\nid = \"dev-{d:03}\"\npatient_system = \"{PATIENTS}\"\npatient_id = \"P-{d:03}\"\n"
        ));
    }
    format!(
        r#"[gateway]
id = "kafka-gw"
data_dir = "{data}"

[buffer]
key_file = "{key}"

[sources.mqtt]
url = "mqtt://127.0.0.1:{port}"
client_id = "vitalbridge-kafka-{port}"
topics = ["vitals/#"]

[uplink]
batch_size = 100
in_flight = 4
retry_initial_ms = 50
retry_max_ms = 1000

[uplink.kafka]
bootstrap = ["{bootstrap}"]
topic = "{TOPIC}"
timeout_s = 5
[uplink.kafka.tls]
ca = "{ca}"
cert = "{cert}"
key = "{key_file}"

{devices}
"#,
        data = rig.dir.path().join("data").display(),
        key = rig.dir.path().join("buffer.key").display(),
        port = rig.broker.port(),
        bootstrap = kafka.bootstrap(),
        ca = rig.pki.ca_cert_path().display(),
        cert = rig.pki.client_files().cert.display(),
        key_file = rig.pki.client_files().key.display(),
    )
}

/// Every problem with what the consumer read, for readings `0..n`.
fn check(records: &[Value], n: u64) -> Vec<String> {
    let mut problems = Vec::new();
    let want = fixture::expected(n);
    let mut by_time: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in records {
        if r["valid"] != true {
            problems.push(format!("invalid FHIR Observation: {}", r["error"]));
            continue;
        }
        if r["partition"] != r["expected_partition"] {
            problems.push(format!(
                "key {} in partition {}, Kafka's partitioner says {}",
                r["key"], r["partition"], r["expected_partition"]
            ));
        }
        if !r["content_type"]
            .as_str()
            .unwrap_or("")
            .starts_with("application/fhir+json")
        {
            problems.push(format!("content type {}", r["content_type"]));
        }
        let ids = by_time.entry(r["time"].as_str().unwrap_or("")).or_default();
        let id = r["identifier"].as_str().unwrap_or("");
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    for (i, e) in want.iter().enumerate() {
        match by_time.get(e.time.as_str()) {
            None => problems.push(format!("reading {i} missing")),
            Some(ids) if ids.len() > 1 => {
                problems.push(format!("reading {i} written with identifiers {ids:?}"))
            }
            Some(_) => {}
        }
    }
    // The key is the reading's patient: device dev-NNN is bound to P-NNN.
    for (i, e) in want.iter().enumerate() {
        let key = format!("{PATIENTS}|P-{:03}", i as u64 % fixture::DEVICES);
        let found = records
            .iter()
            .find(|r| r["time"].as_str() == Some(e.time.as_str()));
        if let Some(r) = found {
            if r["key"].as_str() != Some(key.as_str()) {
                problems.push(format!("reading {i} has key {}, not its patient", r["key"]));
            }
        }
    }
    // Per key, in offset order, the first copy of each reading comes in measurement order.
    let mut per_key: HashMap<(&str, i64), Vec<RecordCopy<'_>>> = HashMap::new();
    for r in records.iter().filter(|r| r["valid"] == true) {
        per_key
            .entry((
                r["key"].as_str().unwrap_or(""),
                r["partition"].as_i64().unwrap_or(-1),
            ))
            .or_default()
            .push((
                r["offset"].as_i64().unwrap_or(0),
                r["epoch"].as_f64().unwrap_or(0.0),
                r["identifier"].as_str().unwrap_or(""),
            ));
    }
    let mut keys_in_partitions: HashMap<&str, usize> = HashMap::new();
    for ((key, _), list) in &mut per_key {
        *keys_in_partitions.entry(key).or_default() += 1;
        list.sort_by_key(|(offset, _, _)| *offset);
        let mut seen = std::collections::HashSet::new();
        let mut last = f64::MIN;
        for (offset, epoch, id) in list.iter() {
            if !seen.insert(*id) {
                continue; // a second copy: consumers drop it by identifier
            }
            if *epoch <= last {
                problems.push(format!(
                    "key {key}: offset {offset} is older than the one before"
                ));
            }
            last = *epoch;
        }
    }
    for (key, n) in keys_in_partitions {
        if n > 1 {
            problems.push(format!("key {key} is in {n} partitions"));
        }
    }
    problems.truncate(20);
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_arrives_keyed_by_patient_in_order_through_kill_9_and_a_broker_restart() {
    let rig = Rig::start().await;
    let mut kafka = tokio::task::block_in_place(|| KafkaBroker::start_tls(&rig.pki));
    kafka.create_topic(TOPIC, 4);
    let mut gw =
        GatewayProcess::start(rig.dir.path(), &config(&rig, &kafka)).expect("start the gateway");
    assert!(fixture::wait_subscribed(&gw, 1, Duration::from_secs(20)));

    let publisher = Publisher::start(
        rig.broker.port(),
        Pace {
            chunk: 100,
            pause: Duration::from_millis(30),
            max: 2000,
        },
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gw.kill9();
    gw.restart().expect("restart the gateway");
    assert!(fixture::wait_subscribed(&gw, 2, Duration::from_secs(20)));
    tokio::time::sleep(Duration::from_millis(800)).await;
    tokio::task::block_in_place(|| kafka.restart());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gw.kill9();
    gw.restart().expect("restart the gateway again");
    while !publisher.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = publisher.stop().await.accepted;
    assert_eq!(n, 2000);
    let stats = tokio::task::block_in_place(|| {
        wait_for_pending(rig.dir.path(), 0, Duration::from_secs(90))
    });
    assert!(
        stats.contains("pending: 0"),
        "{stats}\n--- gateway log ---\n{}",
        fixture::tail(&gw.log(), 60)
    );
    let records = tokio::task::block_in_place(|| kafka.consume(TOPIC, Duration::from_secs(3)));
    let problems = check(&records, n);
    assert!(
        problems.is_empty(),
        "{} records for {n} readings:\n{}\n--- gateway log ---\n{}\n--- broker log ---\n{}",
        records.len(),
        problems.join("\n"),
        fixture::tail(&gw.log(), 40),
        fixture::tail(&kafka.log(), 20)
    );
    eprintln!(
        "{} records for {n} readings ({} second copies, each with its reading's identifier)",
        records.len(),
        records.len() as u64 - n
    );
}

const SCRAM_512: ScramUser = ScramUser {
    name: "gw-hub-512",
    password: "p4ss-of-the-512-user",
    mechanism: "SCRAM-SHA-512",
};
const SCRAM_256: ScramUser = ScramUser {
    name: "gw-hub-256",
    password: "p4ss-of-the-256-user",
    mechanism: "SCRAM-SHA-256",
};

/// [`config`] with SASL/SCRAM as `user` with the password in `password_file`, and the
/// operations server (`/readyz` not ready after one second of failure).
fn scram_config(
    rig: &Rig,
    kafka: &KafkaBroker,
    user: &ScramUser,
    password_file: &std::path::Path,
) -> String {
    let sasl = format!(
        "[uplink.kafka.sasl]\nmechanism = \"{}\"\nusername = \"{}\"\npassword_file = \"{}\"\n[uplink.kafka.tls]",
        user.mechanism,
        user.name,
        password_file.display()
    );
    config(rig, kafka).replace("[uplink.kafka.tls]", &sasl)
        + &vitalbridge_tests::ops::ops_table(rig.ops_port, "ready_staleness_s = 1")
}

fn password_file(rig: &Rig, password: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = rig.dir.path().join("kafka-password");
    std::fs::write(&path, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

async fn publish(rig: &Rig, n: u64) {
    let publisher = Publisher::start(
        rig.broker.port(),
        Pace {
            chunk: 50,
            pause: Duration::from_millis(20),
            max: n,
        },
    );
    while !publisher.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(publisher.stop().await.accepted, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_over_mutual_tls_a_wrong_password_keeps_every_reading_the_right_one_delivers() {
    let rig = Rig::start().await;
    let kafka = tokio::task::block_in_place(|| {
        KafkaBroker::start_scram(&rig.pki, &[SCRAM_512, SCRAM_256], &[(TOPIC, 4)])
    });
    let data = rig.dir.path().join("data");

    // A wrong password: refused, said, audited, not ready; nothing lost, nothing dead-lettered.
    let wrong = password_file(&rig, "not-the-password");
    let gw = GatewayProcess::start(
        rig.dir.path(),
        &scram_config(&rig, &kafka, &SCRAM_512, &wrong),
    )
    .expect("start the gateway");
    assert!(fixture::wait_subscribed(&gw, 1, Duration::from_secs(20)));
    publish(&rig, 300).await;
    assert!(
        gw.wait_for_log(
            "the Kafka broker refused the gateway",
            Duration::from_secs(30)
        ),
        "{}\n--- broker log ---\n{}",
        fixture::tail(&gw.log(), 40),
        fixture::tail(&kafka.log(), 20)
    );
    let mut ready = None;
    for _ in 0..100 {
        ready = rig.readyz().await;
        if ready
            .as_ref()
            .is_some_and(|(s, body)| *s == 503 && body.contains("kafka"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        matches!(&ready, Some((503, body)) if body.contains("kafka")),
        "{ready:?}"
    );
    let audit = std::fs::read_to_string(data.join("audit.log")).unwrap_or_default();
    assert!(
        audit.lines().any(|l| l.contains("connection_refused")
            && l.contains("uplink:kafka")
            && l.contains("the SASL login failed")),
        "{audit}"
    );
    assert!(!audit.contains("not-the-password") && !gw.log().contains("not-the-password"));
    let (code, stats, _) = vitalbridge_tests::gateway::run_cli(
        rig.dir.path(),
        &["queue", "stats", "-c", "gateway.toml"],
    );
    assert_eq!(code, 0, "{stats}");
    assert!(
        stats.contains("pending[kafka]: 300") && stats.contains("dead_lettered: 0"),
        "{stats}"
    );

    // The technician puts the right password into the file; no restart: the gateway reads
    // it again at the next refused login, and every reading arrives.
    password_file(&rig, SCRAM_512.password);
    let stats = tokio::task::block_in_place(|| {
        wait_for_pending(rig.dir.path(), 0, Duration::from_secs(60))
    });
    assert!(
        stats.contains("pending: 0"),
        "{stats}\n--- gateway log ---\n{}",
        fixture::tail(&gw.log(), 40)
    );
    assert!(gw.log().contains("password_file changed"));
    drop(gw);

    // Another user, SCRAM-SHA-256: more readings, the same topic.
    let right = password_file(&rig, SCRAM_256.password);
    std::fs::write(
        rig.dir.path().join("gateway.toml"),
        scram_config(&rig, &kafka, &SCRAM_256, &right),
    )
    .unwrap();
    let gw = GatewayProcess::start(
        rig.dir.path(),
        &scram_config(&rig, &kafka, &SCRAM_256, &right),
    )
    .expect("start the gateway");
    assert!(fixture::wait_subscribed(&gw, 2, Duration::from_secs(20)));
    // Readings 0..600: the first 300 again (each stored once) and 300 new ones.
    let n = 600;
    publish(&rig, n).await;
    let stats = tokio::task::block_in_place(|| {
        wait_for_pending(rig.dir.path(), 0, Duration::from_secs(60))
    });
    assert!(stats.contains("pending: 0"), "{stats}");
    let records = tokio::task::block_in_place(|| kafka.consume(TOPIC, Duration::from_secs(3)));
    let problems = check(&records, n);
    assert!(
        problems.is_empty(),
        "{} records for {n} readings:\n{}\n--- gateway log ---\n{}",
        records.len(),
        problems.join("\n"),
        fixture::tail(&gw.log(), 40)
    );
}
