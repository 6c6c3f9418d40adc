//! Against a real FHIR engine (Medplum's fhir-router, validating, behind mutual TLS:
//! `vitalbridge_tests::engine`): readings from MQTT and the simulator arrive once each and
//! are found by the engine's own identifier search, whatever the device ids hold, across
//! `kill -9` and resends; the engine's transaction-size refusal is reproduced, learned once,
//! and configured away.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vitalbridge_tests::engine::Engine;
use vitalbridge_tests::fixture::{tail, wait_subscribed, Rig, SUBSCRIBE_TIMEOUT};
use vitalbridge_tests::gateway::wait_for_pending;
use vitalbridge_tests::mosquitto::publish_qos1;
use vitalbridge_tests::scenario;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_device_ids_arrive_once_and_are_found_by_identifier_across_kill9_and_resends() {
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
    let stats = wait_for_pending(rig.dir.path(), 0, Duration::from_secs(120));
    assert!(
        stats.contains("pending: 0\n"),
        "{stats}\n{}",
        tail(&gw.log(), 40)
    );
    assert!(stats.contains("dead_lettered: 0"), "{stats}");
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
    let (_, bundles_before, _) = engine.stats().await;
    publish_qos1(rig.broker.port(), "vitals/odd", all.clone())
        .await
        .expect("publish");
    let stats = wait_for_pending(rig.dir.path(), 0, Duration::from_secs(120));
    assert!(
        stats.contains("pending: 0\n"),
        "{stats}\n{}",
        tail(&gw.log(), 40)
    );
    let (_, bundles_after, _) = engine.stats().await;
    assert!(
        bundles_after - bundles_before >= (n / 6) as u64,
        "the resend reached the engine: {bundles_before} → {bundles_after} Bundles"
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

{uplink}max_entries = 8
"#,
        data = rig.data_dir().display(),
        uplink = scenario::fhir_uplink(&engine.url(), &rig.pki, 500),
    );
    let gw = rig.start_gateway(&cfg);
    let have = wait_for_observations(&engine, 45, Duration::from_secs(60)).await;
    assert_eq!(have, 45, "{}", tail(&gw.log(), 40));
    let stats = wait_for_pending(rig.dir.path(), 0, Duration::from_secs(30));
    assert!(stats.contains("dead_lettered: 0"), "{stats}");
    // The engine validated every resource it stored; each is found by its identifier.
    let ids = assert_exactly_once(&engine, 45, 4).await;
    assert_eq!(ids.len(), 45);
    let obs: Vec<Value> = engine.all("Observation").await;
    assert!(obs.iter().all(|o| o["status"] == "final"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engines_transaction_limit_is_learned_once_not_halved_on_every_batch() {
    let rig = Rig::start().await;
    let engine = Engine::start(&rig.pki, None).await;
    // No max_entries: the gateway meets Medplum's "too many entries" refusal and learns.
    let mut cfg = config(&rig, &engine, "");
    cfg = cfg.replace("batch_size = 500", "batch_size = 64");
    let gw = rig.start_subscribed(&cfg);
    // One device, so a Bundle of k readings has k + 2 entries.
    let one: Vec<Vec<u8>> = payloads(40).into_iter().take(40).collect();
    publish_qos1(rig.broker.port(), "vitals/one", one)
        .await
        .expect("publish");
    let stats = wait_for_pending(rig.dir.path(), 0, Duration::from_secs(60));
    assert!(
        stats.contains("pending: 0\n"),
        "{stats}\n{}",
        tail(&gw.log(), 40)
    );
    assert!(stats.contains("dead_lettered: 0"), "{stats}");
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
    let (_, _, refused_first) = engine.stats().await;
    assert!(refused_first >= 1, "the engine never refused");
    // A second burst: no refusal at all, the learned size is used at once.
    let more: Vec<Vec<u8>> = payloads(80).into_iter().skip(40).take(40).collect();
    publish_qos1(rig.broker.port(), "vitals/one", more)
        .await
        .expect("publish");
    let stats = wait_for_pending(rig.dir.path(), 0, Duration::from_secs(60));
    assert!(stats.contains("pending: 0\n"), "{stats}");
    let (_, _, refused_then) = engine.stats().await;
    assert_eq!(refused_then, refused_first, "refused again after learning");
    assert_exactly_once(&engine, 80, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_size_limit_is_configured_and_a_413_is_learned() {
    let rig = Rig::start().await;
    // The front end refuses bodies over 40 KiB with 413, as a proxy would.
    let engine = Engine::start(&rig.pki, Some(40 * 1024)).await;
    let mut cfg = config(&rig, &engine, "bundle_type = \"batch\"\n");
    cfg = cfg.replace("batch_size = 500", "batch_size = 100");
    let gw = rig.start_subscribed(&cfg);
    publish_qos1(rig.broker.port(), "vitals/big", payloads(10))
        .await
        .expect("publish");
    let stats = wait_for_pending(rig.dir.path(), 0, Duration::from_secs(60));
    assert!(
        stats.contains("pending: 0\n"),
        "{stats}\n{}",
        tail(&gw.log(), 40)
    );
    assert!(stats.contains("dead_lettered: 0"), "{stats}");
    assert!(
        gw.log().contains("per request from now on"),
        "{}",
        tail(&gw.log(), 40)
    );
    let (_, _, refused) = engine.stats().await;
    assert!(refused >= 1, "the engine never refused");
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
    publish_qos1(rig.broker.port(), "vitals/big", payloads(10))
        .await
        .expect("publish");
    let stats = wait_for_pending(rig.dir.path(), 0, Duration::from_secs(60));
    assert!(
        stats.contains("pending: 0\n"),
        "{stats}\n{}",
        tail(&gw.log(), 40)
    );
    let (_, bundles, refused) = engine.stats().await;
    assert_eq!(refused, 0, "{}", tail(&gw.log(), 40));
    assert!(bundles >= 3, "80 readings in one 40 KB request? {bundles}");
    assert_exactly_once(&engine, 80, ODD_IDS.len() + 1).await;
}
