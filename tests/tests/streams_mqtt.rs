//! The MQTT uplink against a real mosquitto that takes only client certificates (anonymous
//! refused, an ACL per certificate), read by an independent paho-mqtt subscriber that
//! validates every message as FHIR R4 JSON (`tests/stream_subscriber.py`).
//!
//! - Through `kill -9` of the gateway and a restart of the sink broker, every published
//!   reading reaches the subscriber, and a reading that arrives twice has the same
//!   identifier both times.
//! - A broker whose ACL refuses the gateway's topic: a clear log line, an audit entry, a
//!   not-ready `/readyz`, and nothing leaves the buffer until the ACL is fixed; then all of it
//!   arrives.
//! - FHIR and MQTT at once with the FHIR server down for a while: MQTT keeps flowing, the FHIR
//!   backlog drains afterwards, each exactly once at the FHIR server and all at the subscriber.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use vitalbridge_tests::fixture::{self, Pace, Publisher, Rig};
use vitalbridge_tests::gateway::GatewayProcess;
use vitalbridge_tests::streams::{self, StreamSubscriber};

/// Gateway config: MQTT source on the rig's broker, every device bound to one patient (a home
/// hub), `uplinks` as given, operations server.
fn config(rig: &Rig, data: &Path, uplinks: &str, ops_extra: &str) -> String {
    format!(
        r#"[gateway]
id = "stream-gw"
data_dir = "{data}"

[buffer]
key_file = "{key}"

[sources.mqtt]
url = "mqtt://127.0.0.1:{port}"
client_id = "vitalbridge-streams-{port}"
topics = ["vitals/#"]

[default_patient]
system = "{patient_system}"
id = "{patient_id}"

[uplink]
batch_size = 100
in_flight = 2
retry_initial_ms = 50
retry_max_ms = 1000
{uplinks}
{ops}
"#,
        data = data.display(),
        key = rig.dir.path().join("buffer.key").display(),
        port = rig.broker.port(),
        patient_system = vitalbridge_tests::scenario::PATIENT_SYSTEM,
        patient_id = vitalbridge_tests::scenario::PATIENT_ID,
        ops = vitalbridge_tests::ops::ops_table(rig.ops_port, ops_extra),
    )
}

/// Every reading `0..n` arrived, every message is valid FHIR with the FHIR content type, and
/// a reading that arrived more than once carried the same identifier each time. Returns the
/// number of duplicates.
fn check_arrivals(messages: &[Value], n: u64) -> Result<usize, String> {
    let mut problems = Vec::new();
    for m in messages {
        if m["valid"] != true {
            problems.push(format!("invalid FHIR: {}", m["error"]));
        }
        if !m["content_type"]
            .as_str()
            .unwrap_or("")
            .starts_with("application/fhir+json")
        {
            problems.push(format!("content type {}", m["content_type"]));
        }
    }
    let seen = streams::arrivals(messages);
    let want = fixture::expected(n);
    let missing: Vec<usize> = (0..want.len())
        .filter(|i| !seen.contains_key(&want[*i].time))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} of {n} readings missing (first: {:?})",
            missing.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    let mut duplicates = 0;
    for (time, (count, ids)) in &seen {
        duplicates += count - 1;
        if ids.len() != 1 {
            problems.push(format!(
                "reading at {time} arrived with identifiers {ids:?}"
            ));
        }
    }
    if seen.len() as u64 > n {
        problems.push(format!(
            "{} readings never published",
            seen.len() as u64 - n
        ));
    }
    problems.truncate(20);
    if problems.is_empty() {
        Ok(duplicates)
    } else {
        Err(problems.join("\n"))
    }
}

fn all_arrived(n: u64) -> impl Fn(&[Value]) -> bool {
    let want: Vec<String> = fixture::expected(n).into_iter().map(|e| e.time).collect();
    move |messages| {
        let seen = streams::arrivals(messages);
        want.iter().all(|t| seen.contains_key(t))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_observation_reaches_an_independent_subscriber_through_kill_9_and_a_broker_restart() {
    let rig = Rig::start().await;
    let mut sink = streams::sink_broker(&rig.pki, "vitalbridge/#");
    let subscriber = StreamSubscriber::start(&sink, &rig.pki, "vitalbridge/#");
    let data = rig.dir.path().join("data");
    let uplink = streams::mqtt_uplink(&sink, &rig.pki, "");
    let mut gw = GatewayProcess::start(rig.dir.path(), &config(&rig, &data, &uplink, ""))
        .expect("start the gateway");
    assert!(fixture::wait_subscribed(&gw, 1, Duration::from_secs(20)));

    let publisher = Publisher::start(
        rig.broker.port(),
        Pace {
            chunk: 100,
            pause: Duration::from_millis(30),
            max: 3000,
        },
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gw.kill9();
    gw.restart().expect("restart the gateway");
    assert!(fixture::wait_subscribed(&gw, 2, Duration::from_secs(20)));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    sink.restart().expect("restart the sink broker");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gw.kill9();
    gw.restart().expect("restart the gateway again");
    while !publisher.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let published = publisher.stop().await;
    assert_eq!(published.accepted, 3000);

    let messages = tokio::task::block_in_place(|| {
        subscriber.wait_for(Duration::from_secs(90), all_arrived(published.accepted))
    });
    match check_arrivals(&messages, published.accepted) {
        Ok(duplicates) => eprintln!(
            "{} messages for {} readings; {duplicates} duplicates, each with its reading's identifier",
            messages.len(),
            published.accepted
        ),
        Err(e) => panic!(
            "{e}\n--- gateway log (tail) ---\n{}",
            fixture::tail(&gw.log(), 60)
        ),
    }
    // The broker refused nobody, and no patient value reached the log.
    let log = gw.log();
    assert!(!log.contains("refused"), "{}", fixture::tail(&log, 40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_acl_refusing_the_gateway_is_audited_and_not_ready_and_loses_nothing() {
    let rig = Rig::start().await;
    // The gateway may write only under vitalbridge/elsewhere/: its topic is denied.
    let sink = streams::sink_broker(&rig.pki, "vitalbridge/elsewhere/#");
    let subscriber = StreamSubscriber::start(&sink, &rig.pki, "vitalbridge/#");
    let data = rig.dir.path().join("data");
    let uplink = streams::mqtt_uplink(&sink, &rig.pki, "");
    let gw = GatewayProcess::start(
        rig.dir.path(),
        &config(&rig, &data, &uplink, "ready_staleness_s = 1"),
    )
    .expect("start the gateway");
    assert!(fixture::wait_subscribed(&gw, 1, Duration::from_secs(20)));
    let published = Publisher::start(
        rig.broker.port(),
        Pace {
            chunk: 20,
            pause: Duration::from_millis(0),
            max: 20,
        },
    );
    while !published.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(published.stop().await.accepted, 20);

    // A clear log line, an audit entry, not ready.
    assert!(
        gw.wait_for_log("not authorized", Duration::from_secs(20)),
        "{}",
        fixture::tail(&gw.log(), 40)
    );
    let ready = {
        let mut last = None;
        for _ in 0..50 {
            last = rig.readyz().await;
            if last.as_ref().is_some_and(|(s, _)| *s == 503) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        last
    };
    assert!(
        matches!(&ready, Some((503, body)) if body.contains("mqtt")),
        "{ready:?}"
    );
    let audit = std::fs::read_to_string(data.join("audit.log")).unwrap();
    assert!(
        audit.contains("connection_refused") && audit.contains("uplink:mqtt"),
        "{audit}"
    );
    // Nothing delivered, nothing dead-lettered: the readings wait in the buffer.
    assert!(subscriber.messages().is_empty());
    let (code, stats, _) = vitalbridge_tests::gateway::run_cli(
        rig.dir.path(),
        &["queue", "stats", "-c", "gateway.toml"],
    );
    assert_eq!(code, 0, "{stats}");
    assert!(
        stats.contains("pending[mqtt]: 20") && stats.contains("dead_lettered: 0"),
        "{stats}"
    );

    // The ACL fixed (mosquitto reloads it on SIGHUP): everything arrives, nothing by hand.
    streams::allow_gateway(&sink, &rig.pki, "vitalbridge/#");
    let messages = tokio::task::block_in_place(|| {
        subscriber.wait_for(Duration::from_secs(30), all_arrived(20))
    });
    if let Err(e) = check_arrivals(&messages, 20) {
        panic!("{e}\n{}", fixture::tail(&gw.log(), 40));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_and_mqtt_at_once_a_fhir_server_down_for_a_while_never_holds_up_mqtt_or_doubles_either(
) {
    let mut rig = Rig::start().await;
    let sink = streams::sink_broker(&rig.pki, "vitalbridge/#");
    let subscriber = StreamSubscriber::start(&sink, &rig.pki, "vitalbridge/#");
    let data = rig.dir.path().join("data");
    let client = rig.pki.client_files();
    let uplinks = format!(
        r#"{mqtt}
[uplink.fhir]
base_url = "{url}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
timeout_s = 5
"#,
        mqtt = streams::mqtt_uplink(&sink, &rig.pki, ""),
        url = rig.upstream.url(),
        ca = rig.pki.ca_cert_path().display(),
        cert = client.cert.display(),
        key = client.key.display(),
    );
    let gw = GatewayProcess::start(rig.dir.path(), &config(&rig, &data, &uplinks, ""))
        .expect("start the gateway");
    assert!(fixture::wait_subscribed(&gw, 1, Duration::from_secs(20)));

    // The FHIR server goes away; readings keep coming.
    rig.upstream.stop().await;
    let publisher = Publisher::start(
        rig.broker.port(),
        Pace {
            chunk: 100,
            pause: Duration::from_millis(20),
            max: 1500,
        },
    );
    while !publisher.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = publisher.stop().await.accepted;
    // MQTT has everything while the FHIR server is still down.
    let messages = tokio::task::block_in_place(|| {
        subscriber.wait_for(Duration::from_secs(60), all_arrived(n))
    });
    if let Err(e) = check_arrivals(&messages, n) {
        panic!(
            "MQTT held up by FHIR: {e}\n{}",
            fixture::tail(&gw.log(), 40)
        );
    }
    assert_eq!(rig.upstream.observation_count(), 0);
    let (_, stats, _) = vitalbridge_tests::gateway::run_cli(
        rig.dir.path(),
        &["queue", "stats", "-c", "gateway.toml"],
    );
    assert!(
        stats.contains(&format!("pending[fhir]: {n}")) && stats.contains("pending[mqtt]: 0"),
        "{stats}"
    );
    // Each destination on /metrics and the status document: FHIR behind and failing, MQTT
    // done and fine.
    let metrics = vitalbridge_tests::ops::get(rig.ops_addr(), "/metrics")
        .await
        .expect("/metrics");
    let m = vitalbridge_tests::ops::parse_prometheus(&String::from_utf8_lossy(&metrics.body))
        .expect("an independent parser reads /metrics");
    let pending = |uplink| m.value("vitalbridge_uplink_pending_readings", &[("uplink", uplink)]);
    assert_eq!(pending("fhir"), Some(n as f64));
    assert_eq!(pending("mqtt"), Some(0.0));
    let status = vitalbridge_tests::ops::get(rig.ops_addr(), "/status.json")
        .await
        .expect("/status.json");
    let status: Value = serde_json::from_slice(&status.body).expect("JSON");
    let uplink = |name: &str| {
        status["uplinks"]
            .as_array()
            .and_then(|u| u.iter().find(|u| u["name"] == name).cloned())
            .unwrap_or_default()
    };
    assert_eq!(uplink("fhir")["state"], "failing", "{status}");
    assert_eq!(uplink("fhir")["pending"], n, "{status}");
    assert_eq!(uplink("mqtt")["state"], "ok", "{status}");
    assert_eq!(uplink("mqtt")["pending"], 0, "{status}");

    // The FHIR server is back: its backlog drains, each reading once.
    rig.upstream.restart().await.expect("restart the upstream");
    fixture::wait_for_delivery(
        &rig.upstream,
        n as usize,
        Duration::from_secs(20),
        Duration::from_secs(90),
    )
    .await;
    if let Err(e) = fixture::reconcile(&rig.upstream, n, &gw.log()) {
        panic!("{e}");
    }
    // Nothing more came over MQTT for the FHIR backlog: the MQTT destination was done.
    let after = subscriber.messages();
    assert_eq!(
        streams::arrivals(&after).len() as u64,
        n,
        "MQTT got readings it already had"
    );
}

#[test]
fn check_config_names_a_bad_broker_url_an_unknown_topic_field_and_an_open_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let pki = vitalbridge_tests::pki::TestPki::generate();
    let client = pki.client_files();
    let open_key = dir.path().join("open.key");
    std::fs::copy(&client.key, &open_key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        format!(
            r#"[uplink.mqtt]
url = "mqtts//broker.example.org:8883"
topic = "rpm/{{gateway}}/{{mrn}}"
[uplink.mqtt.tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
[uplink.kafka]
bootstrap = ["kafka-1.example.org"]
topic = "observations"
[uplink.kafka.tls]
ca = "{ca}"
"#,
            ca = pki.ca_cert_path().display(),
            cert = client.cert.display(),
            key = open_key.display(),
        ),
    )
    .unwrap();
    let (code, out, err) =
        vitalbridge_tests::gateway::run_cli(dir.path(), &["check-config", "-c", "gateway.toml"]);
    let text = format!("{out}{err}");
    assert_eq!(code, 2, "{text}");
    for key in [
        "uplink.mqtt.url",
        "uplink.mqtt.topic",
        "{mrn}",
        "uplink.mqtt.tls.key",
        "uplink.kafka.bootstrap[0]",
    ] {
        assert!(text.contains(key), "{key} not named:\n{text}");
    }
}
