//! End to end: real mosquitto → gateway binary → real SQLite → FHIR test upstream over mTLS.

use std::time::Duration;

use vitalbridge_tests::fixture::{self, Rig};
use vitalbridge_tests::gateway::{run_cli, wait_for_pending, GatewayProcess};
use vitalbridge_tests::mosquitto::{publish_qos1, MosquittoOptions};
use vitalbridge_tests::pki::{ServerIdentity, TestPki};
use vitalbridge_tests::scenario::{self, Expected};
use vitalbridge_tests::upstream::{Fault, Upstream, UpstreamConfig};
use vitalbridge_tests::validator;

const TOPIC: &str = "vitals/e2e";

fn stream(range: std::ops::Range<u64>) -> (Vec<Vec<u8>>, Vec<Expected>) {
    range.map(|i| scenario::reading(i, 25)).unzip()
}

fn assert_delivered_exactly(upstream: &Upstream, expected: &[Expected], gw: &GatewayProcess) {
    upstream.assert_no_duplicate_identifiers();
    let problems = scenario::compare(&upstream.observations(), expected);
    assert!(
        problems.is_empty(),
        "{}\n--- gateway log (tail) ---\n{}",
        problems.join("\n"),
        tail(&gw.log())
    );
}

fn tail(log: &str) -> String {
    fixture::tail(log, 40)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mqtt_readings_arrive_exactly_once_with_the_right_value_unit_and_code() {
    let rig = Rig::start().await;
    let (broker, upstream) = (&rig.broker, &rig.upstream);
    let mut gw = rig.start_subscribed(&rig.mqtt_to_fhir(
        "[[devices]]\nid = \"dev-007\"\npatient_system = \"urn:oid:1.2.3\"\npatient_id = \"p-7\"\n",
    ));

    let (payloads, expected) = stream(0..10_000);
    let acked = publish_qos1(broker.port(), TOPIC, payloads).await.unwrap();
    assert_eq!(acked, 10_000);
    assert!(
        upstream
            .wait_for_observations(10_000, Duration::from_secs(180))
            .await,
        "only {} of 10000 arrived\n{}",
        upstream.observation_count(),
        tail(&gw.log())
    );
    // Give a would-be duplicate time to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_delivered_exactly(upstream, &expected, &gw);

    // The device → patient binding from config becomes the subject; devices resolve.
    let observations = upstream.observations();
    let bound = observations
        .iter()
        .find(|o| {
            o["identifier"][0]["value"]
                .as_str()
                .unwrap_or_default()
                .starts_with("dev-007-")
        })
        .expect("an Observation from dev-007");
    assert_eq!(bound["subject"]["identifier"]["value"], "p-7");
    let device_ref = bound["device"]["reference"].as_str().unwrap();
    let device_id = device_ref
        .strip_prefix("Device/")
        .expect("Device/ID reference");
    let device = upstream
        .get("Device", device_id)
        .expect("the referenced Device is stored");
    assert_eq!(device["identifier"][0]["value"], "dev-007");
    assert_eq!(
        upstream.devices().len(),
        26,
        "25 devices and the gateway, each created once"
    );

    let status = gw
        .terminate(Duration::from_secs(20))
        .expect("exits on SIGTERM");
    assert!(
        status.success(),
        "clean shutdown exits 0: {status:?}\n{}",
        tail(&gw.log())
    );
    let (_, stats, _) = run_cli(rig.dir.path(), &["queue", "stats", "-c", "gateway.toml"]);
    assert!(stats.contains("pending: 0"), "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_gateway_repeatedly_loses_and_duplicates_nothing() {
    let rig = Rig::start().await;
    let upstream = &rig.upstream;
    let mut gw = rig.start_subscribed(&rig.mqtt_to_fhir(""));

    // Publish 6000 readings in 30 slices while the gateway is killed at random moments.
    let (payloads, expected) = stream(0..6_000);
    let port = rig.broker.port();
    let publisher = tokio::spawn(async move {
        for chunk in payloads.chunks(200) {
            publish_qos1(port, TOPIC, chunk.to_vec()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    let mut kills = 0;
    while kills < 12 {
        let wait = rand::random::<u64>() % 500 + 150;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        gw.kill9();
        kills += 1;
        gw.restart().unwrap();
    }
    publisher.await.unwrap();
    assert!(upstream.observation_count() < 6_000 || kills >= 10);
    assert!(
        upstream
            .wait_for_observations(6_000, Duration::from_secs(180))
            .await,
        "only {} of 6000 arrived after {kills} kills\n{}",
        upstream.observation_count(),
        tail(&gw.log())
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_delivered_exactly(upstream, &expected, &gw);
    assert_eq!(gw.starts, 13);
    let resends = upstream.log().iter().map(|e| e.existed).sum::<usize>();
    eprintln!("{kills} kills; the upstream answered 'already exists' {resends} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_503s_429s_and_lost_responses_cause_retries_not_loss_or_duplicates() {
    let rig = Rig::start().await;
    let (broker, upstream) = (&rig.broker, &rig.upstream);
    let faults = upstream.faults();
    faults.push_n(Fault::ServiceUnavailable, 2);
    faults.push(Fault::TooManyRequests {
        retry_after_secs: 1,
    });
    faults.push(Fault::CommitThenDrop);
    faults.push(Fault::ServiceUnavailable);
    faults.push(Fault::CommitThenDrop);
    faults.push(Fault::TooManyRequests {
        retry_after_secs: 1,
    });
    // One batch in flight, so the request after a 429 is that batch's retry.
    let gw = rig.start_subscribed(
        &rig.mqtt_to_fhir("")
            .replace("in_flight = 2", "in_flight = 1"),
    );

    let (payloads, expected) = stream(0..2_000);
    publish_qos1(broker.port(), TOPIC, payloads).await.unwrap();
    assert!(
        upstream
            .wait_for_observations(2_000, Duration::from_secs(120))
            .await,
        "only {} arrived\n{}",
        upstream.observation_count(),
        tail(&gw.log())
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_delivered_exactly(upstream, &expected, &gw);
    assert!(faults.is_empty(), "every fault was hit");

    let log = upstream.log();
    let statuses: Vec<Option<u16>> = log.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == Some(503)).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == Some(429)).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| s.is_none()).count(),
        2,
        "{statuses:?}"
    );
    // A 429 asked for 1 s: the next request came no sooner.
    for (i, e) in log.iter().enumerate() {
        if e.status == Some(429) {
            if let Some(next) = log.get(i + 1) {
                assert!(
                    next.since_start >= e.since_start + Duration::from_millis(950),
                    "Retry-After not honoured"
                );
            }
        }
    }
    // The resends after committed-but-lost responses found their resources.
    assert!(
        log.iter().any(|e| e.existed > 0),
        "no conditional-create hit after a lost response"
    );
    assert!(
        gw.log().contains("send failed"),
        "retries are visible in the gateway log too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_foreign_ca_or_the_wrong_name_gets_nothing_and_the_log_says_why() {
    for (identity, why) in [
        (ServerIdentity::RogueCa, "not signed by the configured CA"),
        (ServerIdentity::WrongName, "not valid for the host name"),
    ] {
        let rig = Rig::builder()
            .upstream(move |config, pki| config.identity(pki, identity))
            .start()
            .await;
        let upstream = &rig.upstream;
        let gw = rig.start_subscribed(&rig.mqtt_to_fhir(""));
        let (payloads, _) = stream(0..20);
        publish_qos1(rig.broker.port(), TOPIC, payloads)
            .await
            .unwrap();
        assert!(
            gw.wait_for_log(why, Duration::from_secs(20)),
            "{identity:?}: log should say {why:?}:\n{}",
            tail(&gw.log())
        );
        assert_eq!(upstream.observation_count(), 0, "{identity:?}");
        assert_eq!(
            upstream.request_count(),
            0,
            "{identity:?}: no request got through"
        );
        // The readings are kept, not dropped (committed a moment after the broker has them).
        let stats = wait_for_pending(rig.dir.path(), 20, Duration::from_secs(20));
        assert!(stats.contains("pending: 20"), "{identity:?}: {stats}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_simulated_metric_passes_an_independent_fhir_r4_validator() {
    let pki = TestPki::generate();
    let upstream = Upstream::start(UpstreamConfig::new(&pki)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = pki.client_files();
    let config = format!(
        "[gateway]\ndata_dir = \"data\"\n[sources.sim]\ndevices = 5\ninterval_ms = 20\nmax_readings = 70\n\
         [uplink]\nretry_initial_ms = 50\n[uplink.fhir]\nbase_url = \"{}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        upstream.url(),
        pki.ca_cert_path().display(),
        client.cert.display(),
        client.key.display()
    );
    let gw = GatewayProcess::start(dir.path(), &config).unwrap();
    // 10 rounds of 7 readings; the demo's unbound heart-rate strap (SIM-HR-0005) keeps its
    // 10 readings held, so 60 arrive.
    assert!(
        upstream
            .wait_for_observations(60, Duration::from_secs(60))
            .await,
        "{}",
        tail(&gw.log())
    );
    let observations = upstream.observations();
    assert_eq!(observations.len(), 60);
    // The demo's scenarios, validated like the rest: the 10th blood pressure's loose cuff
    // (preliminary), the clockless thermometer's receive time, SpO2's second LOINC code.
    assert!(observations.iter().any(|o| o["status"] == "preliminary"
        && o["interpretation"][0]["coding"][0]["code"] == "cuff-loose"));
    assert!(observations
        .iter()
        .any(
            |o| o["_effectiveDateTime"]["extension"][0]["extension"][0]["valueCode"]
                == "gateway-receive"
        ));
    assert!(observations
        .iter()
        .any(|o| o["code"]["coding"][1]["code"] == "59408-5"));
    let mut codes: Vec<String> = observations
        .iter()
        .map(|o| {
            o["code"]["coding"][0]["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    codes.sort();
    codes.dedup();
    // BP panel, pulse rate (BP and oximeter share 8867-4), SpO2, temperature, weight, heart rate.
    assert_eq!(
        codes,
        ["2708-6", "29463-7", "8310-5", "85354-9", "8867-4"],
        "every simulated metric appeared"
    );
    validator::assert_valid_fhir(&observations);
    validator::assert_valid_fhir(&upstream.devices());
    assert!(
        observations
            .iter()
            .all(|o| o["meta"]["security"][0]["code"] == "HTEST"),
        "simulated data is labelled test data"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_payload_is_acked_dead_lettered_and_does_not_block_the_topic() {
    let rig = Rig::start().await;
    let (broker, upstream, dir) = (&rig.broker, &rig.upstream, &rig.dir);
    let gw = rig.start_subscribed(&rig.mqtt_to_fhir(""));
    let (good, expected) = stream(0..10);
    // The bug report: a 100,000-character model became a 250 KB line of Device.ndjson.
    let huge_model = format!(
        r#"{{"device":{{"id":"x","model":"{}"}},"metric":"spo2","value":97}}"#,
        "M".repeat(100_000)
    );
    let mut payloads = vec![
        b"not json".to_vec(),
        br#"{"device":"x","metric":"nope","value":1}"#.to_vec(),
        huge_model.into_bytes(),
    ];
    payloads.extend(good);
    publish_qos1(broker.port(), TOPIC, payloads).await.unwrap();
    assert!(
        upstream
            .wait_for_observations(10, Duration::from_secs(30))
            .await,
        "{}",
        tail(&gw.log())
    );
    assert_delivered_exactly(upstream, &expected, &gw);
    let (_, stats, _) = run_cli(dir.path(), &["queue", "stats", "-c", "gateway.toml"]);
    assert!(stats.contains("dead_lettered: 3"), "{stats}");
    let (_, letters, _) = run_cli(dir.path(), &["queue", "dead-letters", "-c", "gateway.toml"]);
    assert!(letters.contains("unknown metric"), "{letters}");
    assert!(letters.contains("syntax error"), "{letters}");
    assert!(
        letters.contains("field `device.model`: longer than 128 bytes"),
        "{letters}"
    );
    for device in upstream.devices() {
        assert!(device.to_string().len() < 2000, "{device}");
    }
    assert!(
        !gw.log().contains("nope"),
        "logs must not echo payload contents"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_stops_acknowledging_and_the_broker_keeps_the_rest() {
    // A broker window wider than what the source holds in progress (512 + 512), so the
    // source's own queue fills and it has to wait for room while staying connected.
    let rig = Rig::builder()
        .broker(|_| MosquittoOptions {
            max_inflight_messages: 2000,
            ..MosquittoOptions::default()
        })
        .start()
        .await;
    let (broker, upstream, dir) = (&rig.broker, &rig.upstream, &rig.dir);
    let faults = upstream.faults();
    faults.push_n(Fault::ServiceUnavailable, 10_000);
    let config = rig
        .mqtt_to_fhir("")
        .replace("[uplink]\n", "[buffer]\ncapacity = 100\n\n[uplink]\n")
        // A short keep-alive, so that a source which stopped talking to the broker while it
        // waits for room would be disconnected (and sent everything again) within the test.
        .replace(
            "topics = [\"vitals/#\"]\n",
            "topics = [\"vitals/#\"]\nkeep_alive_s = 5\n",
        );
    let gw = rig.start_subscribed(&config);
    // More than the broker's in-flight window and the source's own queue together.
    let (payloads, expected) = stream(0..2000);
    publish_qos1(broker.port(), TOPIC, payloads).await.unwrap();
    wait_for_pending(dir.path(), 100, Duration::from_secs(20));
    // Full for longer than 1.5 keep-alive periods: the broker would drop a silent client.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (_, stats, _) = run_cli(dir.path(), &["queue", "stats", "-c", "gateway.toml"]);
    assert!(
        stats.contains("pending: 100\n"),
        "the buffer holds exactly its capacity: {stats}"
    );
    assert_eq!(upstream.observation_count(), 0);
    assert_eq!(
        gw.log().matches("connected to MQTT broker").count(),
        1,
        "a full buffer must not cost the broker connection\n{}",
        tail(&gw.log())
    );
    assert_eq!(
        gw.log()
            .matches("buffer full: sources stop acknowledging")
            .count(),
        1,
        "the log says so, once\n{}",
        tail(&gw.log())
    );
    // The server recovers: everything, including what waited at the broker, arrives once.
    faults.clear();
    assert!(
        upstream
            .wait_for_observations(2000, Duration::from_secs(120))
            .await,
        "only {}\n{}",
        upstream.observation_count(),
        tail(&gw.log())
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_delivered_exactly(upstream, &expected, &gw);
    assert!(
        gw.log().contains("buffer has room again"),
        "{}",
        tail(&gw.log())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_over_mutual_tls_to_the_broker_arrive() {
    let rig = Rig::builder()
        .broker(|pki| MosquittoOptions::default().with_tls(pki))
        .start()
        .await;
    let (pki, broker, upstream) = (&rig.pki, &rig.broker, &rig.upstream);
    let client = pki.client_files();
    let tls = format!(
        "[sources.mqtt.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        pki.ca_cert_path().display(),
        client.cert.display(),
        client.key.display()
    );
    let config = rig
        .mqtt_to_fhir("")
        .replace(
            &format!("mqtt://127.0.0.1:{}", broker.port()),
            &format!("mqtts://localhost:{}", broker.tls_port().unwrap()),
        )
        .replace("[uplink]\n", &format!("{tls}\n[uplink]\n"));
    let gw = rig.start_subscribed(&config);
    let (payloads, expected) = stream(0..50);
    publish_qos1(broker.port(), TOPIC, payloads).await.unwrap();
    assert!(
        upstream
            .wait_for_observations(50, Duration::from_secs(30))
            .await,
        "{}",
        tail(&gw.log())
    );
    assert_delivered_exactly(upstream, &expected, &gw);
}

#[test]
fn a_second_gateway_on_the_same_data_directory_exits_at_once_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[gateway]\ndata_dir = \"data\"\n[sources.sim]\ninterval_ms = 1000\n";
    let first = GatewayProcess::start(dir.path(), config).unwrap();
    assert!(
        first.wait_for_log("gateway running", Duration::from_secs(20)),
        "{}",
        first.log()
    );
    let started = std::time::Instant::now();
    let (code, _, stderr) = run_cli(dir.path(), &["run", "-c", "gateway.toml"]);
    assert_ne!(code, 0);
    assert!(started.elapsed() < Duration::from_secs(5), "exits at once");
    assert!(
        stderr.contains("another vitalbridge is already running on data directory"),
        "{stderr}"
    );
}
