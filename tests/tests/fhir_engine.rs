//! Against a real FHIR engine (Medplum's fhir-router, validating, behind mutual TLS:
//! `vitalbridge_tests::engine`): readings from MQTT and the simulator arrive once each and
//! are found by the engine's own identifier search, whatever the device ids hold, across
//! `kill -9` and resends; the engine's transaction-size refusal is reproduced, learned once,
//! and configured away. BLE devices' recorded characteristic values, read by the BLE source
//! in-process (this machine has no radio) into the buffer, are delivered by the binary and
//! found once each, likewise. The engine's identifier index is checked against its full scan.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vitalbridge_tests::engine::Engine;
use vitalbridge_tests::fixture::{tail, wait_subscribed, Rig, SUBSCRIBE_TIMEOUT};
use vitalbridge_tests::gateway::wait_for_pending;
use vitalbridge_tests::mosquitto::publish_qos1;
use vitalbridge_tests::scenario;

/// One engine test at a time: each runs a Node engine, a broker and a gateway, and on two
/// cores six of them at once starve each other past any sensible timeout.
async fn turn() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::OnceLock<tokio::sync::Mutex<()>> = std::sync::OnceLock::new();
    TURN.get_or_init(|| tokio::sync::Mutex::new(()))
        .lock()
        .await
}

const OBSERVATION_SYSTEM: &str =
    "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation";

/// Device ids holding every character FHIR search gives a meaning to, spaces, `%` and
/// non-ASCII text.
const ODD_IDS: [&str; 8] = [
    "cuff,1",
    "scale|2",
    r"back\slash",
    "dollar$3",
    "with space",
    "naïve 日本 ✓",
    "100%",
    r"all,|\$ of them",
];

/// `per_device` SpO2 readings for each id, each with its own device time.
fn payloads(per_device: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (d, id) in ODD_IDS.iter().enumerate() {
        for i in 0..per_device {
            let secs = 1_780_000_000 + (d * 1000 + i) as i64;
            let t = time::OffsetDateTime::from_unix_timestamp(secs)
                .expect("time")
                .format(&time::format_description::well_known::Rfc3339)
                .expect("format");
            let reading = json!({"device": {"id": id, "id_type": "other"}, "time": t,
                "metric": "spo2", "value": 90 + (i % 10), "seq": i});
            out.push(serde_json::to_vec(&reading).expect("json"));
        }
    }
    out
}

fn config(rig: &Rig, engine: &Engine, extra: &str) -> String {
    scenario::mqtt_to_fhir(
        &rig.data_dir(),
        rig.broker.port(),
        &engine.url(),
        &rig.pki,
        extra,
    )
}

/// Waits until the engine holds `n` Observations (or the timeout).
async fn wait_for_observations(engine: &Engine, n: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let have = engine.all("Observation").await.len();
        if have >= n || Instant::now() >= deadline {
            return have;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the engine answered `entries` more Observation entries than `before` and the
/// gateway's queue is empty with `dead` dead letters (publishing returns at the broker's
/// PUBACK, before the gateway has the readings). Returns the last queue stats.
async fn settle(rig: &Rig, engine: &Engine, before: u64, entries: u64, dead: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    let want = format!("dead_lettered: {dead}\n");
    loop {
        let stats = wait_for_pending(rig.dir.path(), 0, Duration::from_millis(1));
        let have = engine.stats().await.observation_entries - before;
        if (have >= entries && stats.contains("pending: 0\n") && stats.contains(&want))
            || Instant::now() >= deadline
        {
            return format!("{stats}observation entries answered: {have}\n");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The answered entries [`settle`] counted.
fn answered(stats: &str) -> u64 {
    stats
        .split("observation entries answered: ")
        .nth(1)
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// Every Observation is there once: each identifier value once among all, and the engine's
/// search by that identifier (escaped and encoded as a client must) finds exactly it. Every
/// Device once, likewise. Returns the identifier values.
async fn assert_exactly_once(engine: &Engine, observations: usize, devices: usize) -> Vec<String> {
    let all = engine.all("Observation").await;
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for o in &all {
        let value = o["identifier"][0]["value"]
            .as_str()
            .expect("an identifier value")
            .to_owned();
        *ids.entry(value).or_default() += 1;
    }
    let doubled: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "duplicate Observations: {doubled:?}");
    assert_eq!(all.len(), observations, "Observations stored");
    for id in ids.keys() {
        let found = engine
            .by_identifier("Observation", OBSERVATION_SYSTEM, id)
            .await;
        assert_eq!(found.len(), 1, "search by identifier {id:?}");
        assert_eq!(found[0]["identifier"][0]["value"], json!(id));
    }
    let all_devices = engine.all("Device").await;
    assert_eq!(
        all_devices.len(),
        devices,
        "Devices stored: {:?}",
        all_devices
            .iter()
            .map(|d| d["identifier"][0]["value"].clone())
            .collect::<Vec<_>>()
    );
    for d in &all_devices {
        let system = d["identifier"][0]["system"].as_str().expect("system");
        let value = d["identifier"][0]["value"].as_str().expect("value");
        let found = engine.by_identifier("Device", system, value).await;
        assert_eq!(found.len(), 1, "search Device by identifier {value:?}");
    }
    ids.into_keys().collect()
}

/// The engine's index of identifier values (`tests/fhir-engine/repository.mjs`, which lets it
/// take the benchmark's steady rate) finds what Medplum's full scan finds, for every kind of
/// identifier search: its own check (`index-check.mjs`) stores the same resources in both and
/// compares the searches.
#[test]
fn the_engines_identifier_index_finds_what_its_full_scan_finds() {
    let out = vitalbridge_tests::engine::node("index-check.mjs")
        .output()
        .expect("run node index-check.mjs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "index-check.mjs: {}\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(", 0 differ,"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_device_ids_arrive_once_and_are_found_by_identifier_across_kill9_and_resends() {
    let _turn = turn().await;
    let rig = Rig::start().await;
    let engine = Engine::start(&rig.pki, None).await;
    let per_device = 12;
    let all = payloads(per_device);
    let n = all.len();
    // Medplum refuses transactions with conditional creates above 8 entries.
    let cfg = config(&rig, &engine, "max_entries = 8\n");
    let mut gw = rig.start_subscribed(&cfg);

    // Half, then kill -9 while the uplink is at work.
    publish_qos1(rig.broker.port(), "vitals/odd", all[..n / 2].to_vec())
        .await
        .expect("publish");
    let seen = wait_for_observations(&engine, 8, Duration::from_secs(60)).await;
    assert!(seen >= 8, "nothing arrived\n{}", tail(&gw.log(), 40));
    gw.kill9();
    gw.restart().expect("restart");
    assert!(
        wait_subscribed(&gw, 2, SUBSCRIBE_TIMEOUT),
        "{}",
        tail(&gw.log(), 40)
    );
    // Everything, the first half again included (a publisher resending).
    publish_qos1(rig.broker.port(), "vitals/odd", all.clone())
        .await
        .expect("publish");
    let have = wait_for_observations(&engine, n, Duration::from_secs(120)).await;
    let stats = settle(&rig, &engine, 0, n as u64, 0).await;
    assert!(
        have == n && stats.contains("pending: 0\n") && stats.contains("dead_lettered: 0\n"),
        "{have} Observations\n{stats}\n{}",
        tail(&gw.log(), 40)
    );
    let first = assert_exactly_once(&engine, n, ODD_IDS.len() + 1).await;

    // A gateway that lost its buffer (or a second hub in the same home) sends it all again:
    // every entry is a conditional create the engine must match.
    gw.terminate(Duration::from_secs(20));
    std::fs::remove_dir_all(rig.data_dir()).expect("remove the data directory");
    gw.restart().expect("restart");
    assert!(
        wait_subscribed(&gw, 3, SUBSCRIBE_TIMEOUT),
        "{}",
        tail(&gw.log(), 40)
    );
    let before = engine.stats().await.observation_entries;
    publish_qos1(rig.broker.port(), "vitals/odd", all.clone())
        .await
        .expect("publish");
    // Every reading reaches the engine again and is answered (200: matched).
    let stats = settle(&rig, &engine, before, n as u64, 0).await;
    assert!(
        answered(&stats) >= n as u64 && stats.contains("pending: 0\n"),
        "{stats}\n{}",
        tail(&gw.log(), 40)
    );
    let second = assert_exactly_once(&engine, n, ODD_IDS.len() + 1).await;
    assert_eq!(first, second);
    // The learned or configured limit kept every Bundle within the engine's 8 entries.
    assert!(
        !gw.log().contains("too many entries"),
        "{}",
        tail(&gw.log(), 40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_readings_arrive_once_valid_and_searchable() {
    let _turn = turn().await;
    let rig = Rig::start().await;
    let engine = Engine::start(&rig.pki, None).await;
    let cfg = format!(
        r#"[gateway]
id = "engine-sim"
data_dir = "{data}"

[sources.sim]
devices = 3
interval_ms = 20
max_readings = 45
# The plain demo: no held, refused or doubted readings (docs/clinical.md, the demo).
scenarios = false

{uplink}max_entries = 8
"#,
        data = rig.data_dir().display(),
        uplink = scenario::fhir_uplink(&engine.url(), &rig.pki, 500),
    );
    let gw = rig.start_gateway(&cfg);
    let have = wait_for_observations(&engine, 45, Duration::from_secs(60)).await;
    assert_eq!(have, 45, "{}", tail(&gw.log(), 40));
    let stats = settle(&rig, &engine, 0, 45, 0).await;
    assert!(stats.contains("dead_lettered: 0\n"), "{stats}");
    // The engine validated every resource it stored; each is found by its identifier.
    let ids = assert_exactly_once(&engine, 45, 4).await;
    assert_eq!(ids.len(), 45);
    let obs: Vec<Value> = engine.all("Observation").await;
    assert!(obs.iter().all(|o| o["status"] == "final"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engines_transaction_limit_is_learned_once_not_halved_on_every_batch() {
    let _turn = turn().await;
    let rig = Rig::start().await;
    let engine = Engine::start(&rig.pki, None).await;
    // No max_entries: the gateway meets Medplum's "too many entries" refusal and learns.
    let mut cfg = config(&rig, &engine, "");
    cfg = cfg.replace("batch_size = 500", "batch_size = 64");
    let gw = rig.start_subscribed(&cfg);
    // One device, so a Bundle of k readings has k + 2 entries.
    // One MQTT message of 40 readings: committed together, leased as one batch.
    let one: Vec<Vec<u8>> = payloads(40).into_iter().take(40).collect();
    publish_qos1(rig.broker.port(), "vitals/one", [one_message(&one)])
        .await
        .expect("publish");
    let stats = settle(&rig, &engine, 0, 40, 0).await;
    assert!(
        answered(&stats) >= 40 && stats.contains("pending: 0\n"),
        "{stats}\n{}",
        tail(&gw.log(), 40)
    );
    assert!(
        gw.wait_for_log("per request from now on", Duration::from_secs(5)),
        "the limit was not learned\n{}",
        tail(&gw.log(), 40)
    );
    // One Bundle holds the gateway's Device, the cuff's and k Observations: k <= 6 passes.
    let log = gw.log();
    let learned: Vec<usize> = log
        .match_indices("sending at most ")
        .filter_map(|(i, m)| log[i + m.len()..].split(' ').next()?.parse().ok())
        .collect();
    assert!(
        !learned.is_empty() && learned.iter().all(|k| (1..=6).contains(k)),
        "learned {learned:?}"
    );
    let refused_first = engine.stats().await.refused;
    assert!(refused_first >= 1, "the engine never refused");
    // A second burst: no refusal at all, the learned size is used at once.
    let more: Vec<Vec<u8>> = payloads(80).into_iter().skip(40).take(40).collect();
    publish_qos1(rig.broker.port(), "vitals/one", [one_message(&more)])
        .await
        .expect("publish");
    let stats = settle(&rig, &engine, 40, 40, 0).await;
    assert!(answered(&stats) >= 40, "{stats}");
    assert_eq!(
        engine.stats().await.refused,
        refused_first,
        "refused again after learning"
    );
    assert_exactly_once(&engine, 80, 2).await;
}

/// Readings as one MQTT message (a JSON array: all committed in one transaction).
fn one_message(readings: &[Vec<u8>]) -> Vec<u8> {
    let all: Vec<Value> = readings
        .iter()
        .map(|r| serde_json::from_slice(r).expect("json"))
        .collect();
    serde_json::to_vec(&all).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_size_limit_is_configured_and_a_413_is_learned() {
    let _turn = turn().await;
    let rig = Rig::start().await;
    // The front end refuses bodies over 40 KiB with 413, as a proxy would.
    let engine = Engine::start(&rig.pki, Some(40 * 1024)).await;
    let mut cfg = config(&rig, &engine, "bundle_type = \"batch\"\n");
    cfg = cfg.replace("batch_size = 500", "batch_size = 100");
    let gw = rig.start_subscribed(&cfg);
    publish_qos1(
        rig.broker.port(),
        "vitals/big",
        [one_message(&payloads(10))],
    )
    .await
    .expect("publish");
    let stats = settle(&rig, &engine, 0, 80, 0).await;
    assert!(
        answered(&stats) >= 80 && stats.contains("pending: 0\n"),
        "{stats}\n{}",
        tail(&gw.log(), 40)
    );
    assert!(
        gw.log().contains("per request from now on"),
        "{}",
        tail(&gw.log(), 40)
    );
    assert!(
        engine.stats().await.refused >= 1,
        "the engine never refused"
    );
    assert_exactly_once(&engine, 80, ODD_IDS.len() + 1).await;
    drop(gw);

    // Configured: max_request_bytes keeps every request under the limit from the start.
    let rig = Rig::start().await;
    let engine = Engine::start(&rig.pki, Some(40 * 1024)).await;
    let mut cfg = config(
        &rig,
        &engine,
        "bundle_type = \"batch\"\nmax_request_bytes = 40000\n",
    );
    cfg = cfg.replace("batch_size = 500", "batch_size = 100");
    let gw = rig.start_subscribed(&cfg);
    publish_qos1(
        rig.broker.port(),
        "vitals/big",
        [one_message(&payloads(10))],
    )
    .await
    .expect("publish");
    let stats = settle(&rig, &engine, 0, 80, 0).await;
    assert!(
        answered(&stats) >= 80 && stats.contains("pending: 0\n"),
        "{stats}\n{}",
        tail(&gw.log(), 40)
    );
    let counted = engine.stats().await;
    assert_eq!(counted.refused, 0, "{}", tail(&gw.log(), 40));
    assert!(
        counted.bundles >= 3,
        "80 readings in one 40 KB request? {counted:?}"
    );
    assert_exactly_once(&engine, 80, ODD_IDS.len() + 1).await;
}

/// `n` SpO2 readings from `device`, with times from `start` seconds on.
fn readings_of(device: &str, start: i64, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let t = time::OffsetDateTime::from_unix_timestamp(1_790_000_000 + start + i as i64)
                .expect("time")
                .format(&time::format_description::well_known::Rfc3339)
                .expect("format");
            serde_json::to_vec(&json!({"device": device, "time": t, "metric": "spo2", "value": 95}))
                .expect("json")
        })
        .collect()
}

const MRN: &str = "urn:oid:2.16.840.1.113883.4.1";

fn bindings() -> String {
    format!(
        r#"
[[devices]]
id = "cuff-a"
patient_system = "{MRN}"
patient_id = "mrn-1"

[[devices]]
id = "cuff-b"
patient_system = "{MRN}"
patient_id = "mrn,2 é"

[[devices]]
id = "cuff-c"
patient_system = "{MRN}"
patient_id = "mrn-unknown"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_create_mode_makes_each_patient_once_and_observations_find_it() {
    let _turn = turn().await;
    let rig = Rig::start().await;
    let engine = Engine::start(&rig.pki, None).await;
    let cfg = config(
        &rig,
        &engine,
        &format!(
            "max_entries = 8\npatient_reference = \"create\"\n{}",
            bindings()
        ),
    );
    let mut gw = rig.start_subscribed(&cfg);
    let mut all = readings_of("cuff-a", 0, 10);
    all.extend(readings_of("cuff-b", 100, 10));
    for round in 0..2u64 {
        publish_qos1(rig.broker.port(), "vitals/p", all.clone())
            .await
            .expect("publish");
        let stats = settle(&rig, &engine, 20 * round, 20, 0).await;
        assert!(
            answered(&stats) >= 20 && stats.contains("pending: 0\n"),
            "{stats}\n{}",
            tail(&gw.log(), 40)
        );
        if round == 0 {
            // The same readings again from a gateway that lost its buffer.
            gw.terminate(Duration::from_secs(20));
            std::fs::remove_dir_all(rig.data_dir()).expect("remove the data directory");
            gw.restart().expect("restart");
            assert!(
                wait_subscribed(&gw, 2, SUBSCRIBE_TIMEOUT),
                "{}",
                tail(&gw.log(), 40)
            );
        }
    }
    assert_eq!(
        engine.all("Patient").await.len(),
        2,
        "one Patient per patient"
    );
    for mrn in ["mrn-1", "mrn,2 é"] {
        let patients = engine.by_identifier("Patient", MRN, mrn).await;
        assert_eq!(patients.len(), 1, "{mrn}");
        let id = patients[0]["id"].as_str().expect("id");
        let obs = engine
            .search("Observation", &format!("patient=Patient/{id}"))
            .await;
        assert_eq!(obs.len(), 10, "Observations of {mrn}");
        assert_eq!(obs[0]["subject"]["identifier"]["value"], json!(mrn));
    }
    assert_exactly_once(&engine, 20, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_conditional_references_resolve_to_the_servers_patient_or_are_refused() {
    let _turn = turn().await;
    let rig = Rig::start().await;
    let engine = Engine::start(&rig.pki, None).await;
    // The program registered two patients; the third binding names one it does not know.
    let client = vitalbridge_tests::client::HttpsClient::new(rig.pki.client_config());
    let mut known = Vec::new();
    for mrn in ["mrn-1", "mrn,2 é"] {
        let patient = json!({"resourceType": "Patient", "identifier": [{"system": MRN, "value": mrn}],
            "name": [{"family": "Test"}]});
        let resp = client
            .post_json(&format!("{}/Patient", engine.url()), &patient)
            .await
            .expect("create Patient");
        assert_eq!(resp.status, 201, "{:?}", resp.json());
        known.push(
            resp.json().expect("json")["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    let cfg = config(
        &rig,
        &engine,
        &format!(
            "max_entries = 8\npatient_reference = \"conditional\"\n{}",
            bindings()
        ),
    );
    let gw = rig.start_subscribed(&cfg);
    let mut all = readings_of("cuff-a", 0, 5);
    all.extend(readings_of("cuff-b", 100, 5));
    all.extend(readings_of("cuff-c", 200, 2));
    publish_qos1(rig.broker.port(), "vitals/p", all)
        .await
        .expect("publish");
    let stats = settle(&rig, &engine, 0, 10, 2).await;
    assert!(
        answered(&stats) >= 10 && stats.contains("pending: 0\n"),
        "{stats}\n{}",
        tail(&gw.log(), 40)
    );
    // The unknown patient's readings are refused by the server (412) and kept as dead
    // letters with its reason; nobody else's readings are held back.
    assert!(
        stats.contains("dead_lettered: 2"),
        "{stats}\n{}\n{:?}",
        tail(&gw.log(), 40),
        engine
            .all("Observation")
            .await
            .iter()
            .map(|o| o["subject"].clone())
            .collect::<Vec<_>>()
    );
    let (_, letters, _) = vitalbridge_tests::gateway::run_cli(
        rig.dir.path(),
        &["queue", "dead-letters", "-c", "gateway.toml"],
    );
    assert!(letters.contains("412"), "{letters}");
    assert_eq!(engine.all("Patient").await.len(), 2, "no Patient created");
    for id in &known {
        let obs = engine
            .search("Observation", &format!("patient=Patient/{id}"))
            .await;
        assert_eq!(obs.len(), 5, "Observations of Patient/{id}");
        assert_eq!(
            obs[0]["subject"]["reference"],
            json!(format!("Patient/{id}"))
        );
    }
    assert_exactly_once(&engine, 10, 3).await;
}

/// A Bluetooth LE central over recorded devices: each advertises its service and, once its
/// health characteristic is subscribed, indicates its recorded values and hangs up, as a
/// cuff, a thermometer or a scale does after a measurement. Everything above the radio (the
/// BLE source's sessions, decoding, binding, the buffer) is the gateway's own code.
mod replay {
    use std::sync::{Arc, Mutex};

    use tokio::sync::mpsc;
    use vitalbridge::ingest::ble::{
        Address, Advertisement, BleError, Central, CentralEvent, GattCharacteristic, Link,
        Notification, Properties,
    };

    /// One recorded device.
    #[derive(Clone)]
    pub struct Recorded {
        pub address: Address,
        pub service: u16,
        pub characteristic: u16,
        pub values: Vec<Vec<u8>>,
    }

    #[derive(Clone, Default)]
    pub struct ReplayCentral {
        devices: Arc<Vec<Recorded>>,
        events: Arc<Mutex<Option<mpsc::Sender<CentralEvent>>>>,
        /// Sessions over (the device hung up after its values), per device index.
        done: Arc<Mutex<Vec<usize>>>,
    }

    impl ReplayCentral {
        pub fn new(devices: Vec<Recorded>) -> Self {
            Self {
                done: Arc::new(Mutex::new(vec![0; devices.len()])),
                devices: Arc::new(devices),
                ..Self::default()
            }
        }

        /// Every device that has not delivered yet advertises once.
        pub async fn advertise(&self) {
            let tx = self.events.lock().unwrap().clone();
            let Some(tx) = tx else { return };
            let done = self.done.lock().unwrap().clone();
            for (d, n) in self.devices.iter().zip(done) {
                if n == 0 {
                    let _ = tx
                        .send(CentralEvent::Advertisement(Advertisement {
                            address: d.address,
                            name: Some("recorded".into()),
                            services: vec![d.service],
                            rssi: Some(-60),
                        }))
                        .await;
                }
            }
        }

        /// Whether every device has delivered its values once.
        pub fn all_delivered(&self) -> bool {
            self.done.lock().unwrap().iter().all(|n| *n > 0)
        }
    }

    impl Central for ReplayCentral {
        type Link = ReplayLink;

        async fn scan(&self) -> Result<mpsc::Receiver<CentralEvent>, BleError> {
            let (tx, rx) = mpsc::channel(16);
            *self.events.lock().unwrap() = Some(tx);
            Ok(rx)
        }

        async fn connect(&self, address: Address) -> Result<ReplayLink, BleError> {
            let index = self
                .devices
                .iter()
                .position(|d| d.address == address)
                .ok_or_else(|| BleError::NotFound("not recorded".into()))?;
            Ok(ReplayLink {
                index,
                central: self.clone(),
                tx: Mutex::new(None),
            })
        }
    }

    pub struct ReplayLink {
        index: usize,
        central: ReplayCentral,
        tx: Mutex<Option<mpsc::Sender<Notification>>>,
    }

    impl Link for ReplayLink {
        async fn discover(&self) -> Result<Vec<GattCharacteristic>, BleError> {
            let d = &self.central.devices[self.index];
            Ok(vec![GattCharacteristic {
                service: d.service,
                uuid: d.characteristic,
                properties: Properties {
                    indicate: true,
                    ..Properties::default()
                },
            }])
        }

        async fn notifications(&self) -> Result<mpsc::Receiver<Notification>, BleError> {
            let (tx, rx) = mpsc::channel(64);
            *self.tx.lock().unwrap() = Some(tx);
            Ok(rx)
        }

        async fn subscribe(&self, characteristic: u16) -> Result<(), BleError> {
            let d = &self.central.devices[self.index];
            let tx = self.tx.lock().unwrap().take();
            let (Some(tx), true) = (tx, characteristic == d.characteristic) else {
                return Ok(());
            };
            // Everything at once, before the subscription call returns: the values are
            // queued for the source, then the device hangs up and the adapter says so, as
            // a cuff does when BlueZ has confirmed its indications. The source must still
            // take every value queued before it learns the device is gone.
            for value in d.values.clone() {
                tx.try_send(Notification {
                    characteristic,
                    value,
                })
                .expect("room for the recorded values");
            }
            drop(tx);
            self.central.done.lock().unwrap()[self.index] += 1;
            let events = self.central.events.lock().unwrap().clone();
            if let Some(events) = events {
                let _ = events.try_send(CentralEvent::Disconnected(d.address));
            }
            Ok(())
        }

        async fn read(&self, _characteristic: u16) -> Result<Vec<u8>, BleError> {
            Err(BleError::operation("read", "not recorded"))
        }

        async fn write(&self, _characteristic: u16, _value: Vec<u8>) -> Result<(), BleError> {
            Ok(())
        }

        async fn disconnect(&self) -> Result<(), BleError> {
            Ok(())
        }
    }
}

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect()
}

/// Recorded values (GATT Specification Supplement layouts; the decoders' table-test vectors
/// with their time stamps' minutes varied so that each is a reading of its own).
fn recorded_devices() -> Vec<replay::Recorded> {
    let minute = |v: &str, at: usize, m: u8| {
        let mut v = hex(v);
        v[at] = m;
        v
    };
    vec![
        // A cuff: three Blood Pressure Measurements (time stamp, pulse, user 1).
        replay::Recorded {
            address: [0xC0, 0xFF, 0xEE, 0x00, 0x00, 0x02],
            service: 0x1810,
            characteristic: 0x2A35,
            values: (0..3)
                .map(|m| {
                    minute(
                        "1E 7A 00 50 00 5A 00 EA 07 01 0F 07 00 00 48 00 01 00 00",
                        12,
                        10 + m,
                    )
                })
                .collect(),
        },
        // A thermometer: two Temperature Measurements (37.60 °C, finger, time stamp).
        replay::Recorded {
            address: [0xC0, 0xFF, 0xEE, 0x00, 0x00, 0x03],
            service: 0x1809,
            characteristic: 0x2A1C,
            values: (0..2)
                .map(|m| minute("06 B0 0E 00 FE DC 07 0C 05 0B 32 1B 04", 10, 20 + m))
                .collect(),
        },
        // A scale: one Weight Measurement (imperial, BMI and height).
        replay::Recorded {
            address: [0xC0, 0xFF, 0xEE, 0x00, 0x00, 0x04],
            service: 0x181D,
            characteristic: 0x2A9D,
            values: vec![hex("0F 10 27 E8 07 01 02 03 04 05 FF E6 00 D0 02")],
        },
        // A pulse oximeter: one PLX Spot-check (time stamp, status, PAI).
        replay::Recorded {
            address: [0xC0, 0xFF, 0xEE, 0x00, 0x00, 0x05],
            service: 0x1822,
            characteristic: 0x2A5E,
            values: vec![hex(
                "0F AC F3 BE F5 E8 07 0B 1D 17 08 39 20 40 22 00 00 66 E3",
            )],
        },
    ]
}

const BLE_TOML: &str = r#"
[sources.ble]
[[sources.ble.devices]]
address = "C0:FF:EE:00:00:02"
[[sources.ble.devices]]
address = "C0:FF:EE:00:00:03"
[[sources.ble.devices]]
address = "C0:FF:EE:00:00:04"
[[sources.ble.devices]]
address = "C0:FF:EE:00:00:05"

[[devices]]
id = "C0:FF:EE:00:00:02"
patient_system = "urn:oid:2.16.840.1.113883.4.1"
patient_id = "P-ble-1"
[[devices]]
id = "C0:FF:EE:00:00:03"
patient_system = "urn:oid:2.16.840.1.113883.4.1"
patient_id = "P-ble-1"
[[devices]]
id = "C0:FF:EE:00:00:04"
patient_system = "urn:oid:2.16.840.1.113883.4.1"
patient_id = "P-ble-2"
[[devices]]
id = "C0:FF:EE:00:00:05"
patient_system = "urn:oid:2.16.840.1.113883.4.1"
patient_id = "P-ble-2"
"#;

/// Runs the BLE source over `central` into the buffer in `data_dir` (sealed with
/// `key_file`, the FHIR uplink's destination) until every device has delivered and
/// `expected` readings are buffered (or 30 s passed); returns how many are.
async fn read_recorded_devices(
    central: replay::ReplayCentral,
    data_dir: &std::path::Path,
    key_file: &std::path::Path,
    expected: u64,
) -> u64 {
    use std::sync::Arc;
    use vitalbridge::buffer::writer::WriterConfig;
    use vitalbridge::ingest::ble::{BleSource, Timing};
    use vitalbridge::ingest::{Bindings, SourceContext};
    use vitalbridge::pipeline::{self, Ingest};

    let options = vitalbridge::buffer::OpenOptions {
        capacity: 10_000,
        key_file: key_file.to_owned(),
        previous_key_files: Vec::new(),
        min_free_bytes: Some(0),
        destinations: vec!["fhir".into()],
    };
    let (store, writer, _) = vitalbridge::buffer::open(data_dir, &options)
        .await
        .expect("open the buffer");
    let (tx, rx) = pipeline::channel();
    let stop = tokio_util::sync::CancellationToken::new();
    stop.cancel(); // the writer ends once the source drops its handle
    let writer = tokio::spawn(writer.run(
        rx,
        WriterConfig {
            max_rows: 1000,
            linger: Duration::from_millis(1),
        },
        stop,
        Box::new(|_| {}),
    ));
    let config = vitalbridge::config::Config::from_toml(BLE_TOML).expect("config parses");
    vitalbridge::validate_config(&config).expect("config validates");
    let source = BleSource::new(config.sources.ble.as_ref().expect("[sources.ble]"))
        .expect("BLE source")
        .with_timing(Timing {
            connect_timeout: Duration::from_secs(5),
            reconnect_initial: Duration::from_millis(10),
            reconnect_max: Duration::from_millis(100),
            clock_settle: Duration::from_millis(100),
            commit_retry: Duration::from_millis(10),
        });
    let shutdown = tokio_util::sync::CancellationToken::new();
    let ctx = SourceContext {
        ingest: Ingest::new(tx, "ble"),
        bindings: Bindings::from_config(&config.devices),
        metrics: Arc::new(vitalbridge::ops::metrics::Metrics::default()),
        audit: vitalbridge::ops::audit::Audit::default(),
        shutdown: shutdown.clone(),
    };
    let task = tokio::spawn(source.run(central.clone(), ctx));
    let fhir = store.destination("fhir").expect("destination");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pending = 0;
    while Instant::now() < deadline {
        pending = store.pending_for(&fhir).await.expect("count");
        if central.all_delivered() && pending >= expected {
            break;
        }
        central.advertise().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    task.await.expect("the BLE source");
    writer.await.expect("the writer");
    store.close().await;
    pending
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ble_recorded_readings_arrive_once_valid_and_searchable_across_kill9() {
    let _turn = turn().await;
    let rig = Rig::start().await;
    let engine = Engine::start(&rig.pki, None).await;
    let key_file = rig.dir.path().join("buffer.key");
    // 3 blood pressures with their pulse rates (6 readings), 2 temperatures, a weight with
    // BMI and height (3), an SpO2 with pulse rate and perfusion index (3).
    let n = 14;
    let buffered = read_recorded_devices(
        replay::ReplayCentral::new(recorded_devices()),
        &rig.data_dir(),
        &key_file,
        n,
    )
    .await;
    assert_eq!(buffered, n, "readings the BLE source buffered");
    let cfg = format!(
        "{}\n[buffer]\nkey_file = \"{}\"\n",
        config(&rig, &engine, "max_entries = 8\n"),
        key_file.display()
    );
    let mut gw = rig.start_gateway(&cfg);
    // Killed as soon as the engine has some, and started again: resends, answered 200.
    wait_for_observations(&engine, 1, Duration::from_secs(60)).await;
    gw.kill9();
    gw.restart().expect("restart the gateway");
    let stats = settle(&rig, &engine, 0, n, 0).await;
    assert!(
        stats.contains("pending: 0\n") && stats.contains("dead_lettered: 0\n"),
        "{stats}\n{}",
        tail(&gw.log(), 40)
    );
    // Each Observation once, found by its identifier; the gateway and four BLE devices once.
    let ids = assert_exactly_once(&engine, n as usize, 5).await;
    assert_eq!(ids.len() as u64, n);
    let obs = engine.all("Observation").await;
    for address in [
        "C0FFEE000002",
        "C0FFEE000003",
        "C0FFEE000004",
        "C0FFEE000005",
    ] {
        assert!(
            ids.iter().any(|id| id.contains(address)),
            "no Observation of device {address}: {ids:?}"
        );
    }
    assert!(
        obs.iter().all(|o| o["subject"].is_object()),
        "every one bound"
    );
}
