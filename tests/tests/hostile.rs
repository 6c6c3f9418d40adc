//! Hostile input on the MQTT source: an oversized message and a flood of bad payloads must
//! never block the topic, cause redelivery storms or be dead-lettered more than once.
//! Real mosquitto → the gateway binary → real SQLite → the FHIR test upstream over mTLS.

use std::time::Duration;

use vitalbridge_tests::fixture::{self, Rig};
use vitalbridge_tests::gateway::{run_cli, GatewayProcess};
use vitalbridge_tests::mosquitto::publish_qos1;
use vitalbridge_tests::scenario::{self, Expected};

const TOPIC: &str = "vitals/hostile";

fn tail(log: &str) -> String {
    fixture::tail(log, 40)
}

/// The gateway's `queue stats` figure `name`.
fn stat(dir: &std::path::Path, name: &str) -> u64 {
    let (_, out, err) = run_cli(dir, &["queue", "stats", "-c", "gateway.toml"]);
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {out}{err}"))
}

/// The rig and its gateway, subscribed.
struct Setup {
    rig: Rig,
    gw: GatewayProcess,
}

async fn start() -> Setup {
    let rig = Rig::start().await;
    let gw = rig.start_subscribed(&rig.mqtt_to_fhir(""));
    Setup { rig, gw }
}

async fn assert_all_arrive_once(s: &Setup, expected: &[Expected]) {
    assert!(
        s.rig
            .upstream
            .wait_for_observations(expected.len(), Duration::from_secs(120))
            .await,
        "only {} of {} arrived\n{}",
        s.rig.upstream.observation_count(),
        expected.len(),
        tail(&s.gw.log())
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.rig.upstream.assert_no_duplicate_identifiers();
    let problems = scenario::compare(&s.rig.upstream.observations(), expected);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_megabyte_message_is_dead_lettered_once_and_the_readings_behind_it_arrive() {
    let mut s = start().await;
    let huge = vec![b'{'; 10 * 1024 * 1024];
    let (payloads, expected): (Vec<Vec<u8>>, Vec<Expected>) =
        (0..5_000).map(|i| scenario::reading(i, 20)).unzip();
    let mut all = vec![huge];
    all.extend(payloads);
    let acked = publish_qos1(s.rig.broker.port(), TOPIC, all).await.unwrap();
    assert_eq!(acked, 5_001);
    assert_all_arrive_once(&s, &expected).await;

    let log = s.gw.log();
    assert_eq!(
        log.matches("connected to MQTT broker").count(),
        1,
        "the connection never failed: {}",
        tail(&log)
    );
    assert!(
        log.contains("larger than sources.mqtt.max_packet_bytes"),
        "{}",
        tail(&log)
    );
    assert_eq!(stat(s.rig.dir.path(), "dead_lettered"), 1);
    let (_, letters, _) = run_cli(
        s.rig.dir.path(),
        &["queue", "dead-letters", "-c", "gateway.toml"],
    );
    assert!(letters.contains("10485760 bytes"), "{letters}");
    assert!(letters.contains("mqtt:vitals/hostile"), "{letters}");
    // The row keeps a bounded prefix, not 10 MB.
    let db = std::fs::metadata(s.rig.dir.path().join("data/buffer.db"))
        .unwrap()
        .len();
    let wal = std::fs::metadata(s.rig.dir.path().join("data/buffer.db-wal"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(
        db + wal < 8 * 1024 * 1024,
        "buffer.db {db} + wal {wal} bytes"
    );
    assert!(s.gw.terminate(Duration::from_secs(20)).unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_payloads_is_dead_lettered_once_each_without_a_reconnect() {
    let mut s = start().await;
    let (good, expected): (Vec<Vec<u8>>, Vec<Expected>) =
        (0..5_000).map(|i| scenario::reading(i, 25)).unzip();
    // Good and bad interleaved; every bad payload distinct, some of them JSON that is not a
    // reading, some not JSON at all.
    let mut all = Vec::with_capacity(10_000);
    for (i, g) in good.into_iter().enumerate() {
        all.push(g);
        all.push(match i % 3 {
            0 => format!("{{\"metric\": \"spo2\", \"value\": \"bad-{i}\"}}").into_bytes(),
            1 => format!("not json {i}").into_bytes(),
            _ => format!("[{i}, {{\"device\": 7}}]").into_bytes(),
        });
    }
    let acked = publish_qos1(s.rig.broker.port(), TOPIC, all).await.unwrap();
    assert_eq!(acked, 10_000);
    assert_all_arrive_once(&s, &expected).await;
    // Every bad payload acknowledged and kept once.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while stat(s.rig.dir.path(), "dead_lettered") < 5_000 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stat(s.rig.dir.path(), "dead_lettered"), 5_000);
    let log = s.gw.log();
    assert_eq!(
        log.matches("connected to MQTT broker").count(),
        1,
        "no keep-alive starved, no redelivery storm: {}",
        tail(&log)
    );
    assert!(!log.contains("pingreq"), "{}", tail(&log));
    // The same bad payload published again is counted, not stored again.
    let again = publish_qos1(
        s.rig.broker.port(),
        TOPIC,
        vec![b"not json 1".to_vec(), b"not json 1".to_vec()],
    )
    .await
    .unwrap();
    assert_eq!(again, 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stat(s.rig.dir.path(), "dead_lettered"), 5_000);
    let (_, letters, _) = run_cli(
        s.rig.dir.path(),
        &[
            "queue",
            "dead-letters",
            "--limit",
            "10000",
            "-c",
            "gateway.toml",
        ],
    );
    assert!(
        letters.lines().any(|l| l.contains("\t3\t")),
        "one payload seen three times: {}",
        &letters[..letters.len().min(2000)]
    );
    assert!(s.gw.terminate(Duration::from_secs(20)).unwrap().success());
}

/// A counter from the gateway's `/metrics` (0 when absent).
async fn counter(port: u16, name: &str) -> f64 {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let body = vitalbridge_tests::ops::get(addr, "/metrics")
        .await
        .unwrap()
        .body;
    let text = String::from_utf8(body.to_vec()).unwrap();
    let parsed = vitalbridge_tests::ops::parse_prometheus(&text).unwrap();
    parsed.value(name, &[]).unwrap_or(0.0)
}

/// Stopped while messages keep coming: what was committed is acknowledged before the
/// disconnect, so after a restart the broker redelivers only what was never stored. A
/// committed one coming back would be counted as a duplicate (the upstream is down, so
/// everything stays in the buffer, where a retransmission is recognised).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_acknowledges_what_it_committed_so_nothing_stored_comes_back() {
    let rig = Rig::start().await;
    rig.upstream.faults().push_n(
        vitalbridge_tests::upstream::Fault::ServiceUnavailable,
        1_000_000,
    );
    let port = rig.ops_port;
    let mut gw =
        rig.start_subscribed(&rig.mqtt_to_fhir(&vitalbridge_tests::ops::ops_table(port, "")));
    let (payloads, _): (Vec<Vec<u8>>, Vec<Expected>) =
        (0..20_000).map(|i| scenario::reading(i, 20)).unzip();
    let publisher = tokio::spawn(publish_qos1(rig.broker.port(), TOPIC, payloads));
    // Stop in the middle of the stream, with commits and acknowledgements under way.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while counter(port, "vitalbridge_readings_in_total").await < 5_000.0 {
        assert!(std::time::Instant::now() < deadline, "{}", gw.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gw.terminate(Duration::from_secs(20)).unwrap().success());
    publisher.await.unwrap().unwrap();
    gw.restart().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while wait_pending(&rig.dir) < 20_000 {
        assert!(std::time::Instant::now() < deadline, "{}", gw.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dup = counter(port, "vitalbridge_readings_duplicate_total").await;
    assert_eq!(
        dup,
        0.0,
        "the broker redelivered messages whose readings were committed before the stop\n{}",
        gw.log()
    );
}

fn wait_pending(dir: &tempfile::TempDir) -> u64 {
    stat(dir.path(), "pending")
}
