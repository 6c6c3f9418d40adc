//! Self-tests of the harness: if these fail, end-to-end results mean nothing.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vitalbridge_tests::client::{ClientError, HttpsClient};
use vitalbridge_tests::mosquitto::{
    publish_qos1, publish_qos1_with, ClientOptions, Mosquitto, MosquittoOptions, Subscriber,
};
use vitalbridge_tests::pki::{self, ServerIdentity, TestPki};
use vitalbridge_tests::upstream::{Fault, TransactionFailureMode, Upstream, UpstreamConfig};

const OBS_SYSTEM: &str = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation";
const DEV_SYSTEM: &str = "urn:ietf:rfc:3986";
const WAIT: Duration = Duration::from_secs(10);

fn observation(value: &str, device_ref: Option<&str>) -> Value {
    let mut o = json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "59408-5"}]},
        "identifier": [{"system": OBS_SYSTEM, "value": value}],
        "effectiveDateTime": "2024-05-01T10:00:00Z",
        "valueQuantity": {"value": 97, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
    });
    if let Some(r) = device_ref {
        o["device"] = json!({"reference": r});
    }
    o
}

fn conditional_entry(resource: Value, full_url: Option<&str>) -> Value {
    let rtype = resource["resourceType"].as_str().unwrap().to_string();
    let ident = &resource["identifier"][0];
    let cond = format!(
        "identifier={}|{}",
        ident["system"].as_str().unwrap(),
        ident["value"].as_str().unwrap()
    );
    let mut e = json!({
        "resource": resource,
        "request": {"method": "POST", "url": rtype, "ifNoneExist": cond}
    });
    if let Some(u) = full_url {
        e["fullUrl"] = json!(u);
    }
    e
}

fn bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": kind, "entry": entries})
}

fn two_observations() -> Value {
    bundle(
        "transaction",
        vec![
            conditional_entry(
                observation("obs-a", None),
                Some("urn:uuid:0000000a-0000-4000-8000-000000000000"),
            ),
            conditional_entry(
                observation("obs-b", None),
                Some("urn:uuid:0000000b-0000-4000-8000-000000000000"),
            ),
        ],
    )
}

fn statuses(answer: &Value) -> Vec<String> {
    answer["entry"]
        .as_array()
        .expect("response bundle has entries")
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap_or("").to_string())
        .collect()
}

async fn start_upstream(pki: &TestPki) -> Upstream {
    Upstream::start(UpstreamConfig::new(pki))
        .await
        .expect("upstream starts")
}

// ---------------------------------------------------------------- PKI

#[test]
fn pki_writes_pem_files_with_private_keys_readable_only_by_owner() {
    let pki = TestPki::generate();
    let mut keys = vec![
        pki.client_files().key.clone(),
        pki.rogue_client_files().key.clone(),
        pki.dir().join("ca-key.pem"),
    ];
    for id in [
        ServerIdentity::Trusted,
        ServerIdentity::RogueCa,
        ServerIdentity::WrongName,
    ] {
        keys.push(pki.server_files(id).key.clone());
        assert_eq!(
            pki::load_certs(&pki.server_files(id).cert).unwrap().len(),
            1
        );
    }
    for key in &keys {
        let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", key.display());
        pki::load_key(key).unwrap_or_else(|e| panic!("{} is not a key: {e}", key.display()));
    }
    assert_eq!(
        pki::load_certs(pki.ca_cert_path()).unwrap()[0],
        pki.ca_cert_der()
    );
    assert_ne!(
        std::fs::read(pki.ca_cert_path()).unwrap(),
        std::fs::read(pki.rogue_ca_cert_path()).unwrap()
    );
    let dir = pki.dir().to_path_buf();
    drop(pki);
    assert!(!dir.exists(), "PKI tempdir is removed on drop");
}

// ---------------------------------------------------------------- upstream TLS

#[tokio::test]
async fn a_client_with_the_test_client_cert_completes_the_handshake() {
    let pki = TestPki::generate();
    let upstream = start_upstream(&pki).await;
    let client = HttpsClient::new(pki.client_config());
    let resp = client
        .get(&format!("{}/metadata", upstream.url()))
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json().unwrap()["fhirVersion"], "4.0.1");
    // The localhost URL works too (only 127.0.0.1 is bound; the client falls back from ::1).
    let resp = client
        .get(&format!("{}/metadata", upstream.url_localhost()))
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(upstream.handshakes(), 2);
    assert_eq!(upstream.tls_failures(), 0);
}

#[tokio::test]
async fn a_client_without_a_cert_is_refused_and_counted_as_a_tls_failure() {
    let pki = TestPki::generate();
    let upstream = start_upstream(&pki).await;
    let client = HttpsClient::new(pki.client_config_without_cert());
    let result = client.post_json(&upstream.url(), &two_observations()).await;
    assert!(result.is_err(), "anonymous client got {result:?}");
    assert!(upstream.wait_for_tls_failures(1, WAIT).await);
    assert_eq!(upstream.handshakes(), 0);
    assert_eq!(upstream.observation_count(), 0);
    assert_eq!(upstream.request_count(), 0);
    let reasons = upstream.tls_failure_reasons().join("\n");
    assert!(reasons.to_lowercase().contains("certificate"), "{reasons}");
}

#[tokio::test]
async fn a_client_cert_from_another_ca_is_refused() {
    let pki = TestPki::generate();
    let upstream = start_upstream(&pki).await;
    let client = HttpsClient::new(pki.client_config_with_rogue_cert());
    assert!(client
        .get(&format!("{}/metadata", upstream.url()))
        .await
        .is_err());
    assert!(upstream.wait_for_tls_failures(1, WAIT).await);
    assert_eq!(upstream.handshakes(), 0);
}

#[tokio::test]
async fn a_client_trusting_the_test_ca_rejects_the_rogue_and_wrong_name_servers() {
    let pki = TestPki::generate();
    for identity in [ServerIdentity::RogueCa, ServerIdentity::WrongName] {
        let upstream = Upstream::start(UpstreamConfig::new(&pki).identity(&pki, identity))
            .await
            .unwrap();
        let client = HttpsClient::new(pki.client_config());
        let err = client
            .post_json(&upstream.url(), &two_observations())
            .await
            .expect_err("server certificate must be rejected");
        assert!(matches!(err, ClientError::Tls(_)), "{identity:?}: {err}");
        assert!(
            upstream.wait_for_tls_failures(1, WAIT).await,
            "{identity:?}"
        );
        assert_eq!(upstream.observation_count(), 0);
    }
}

// ---------------------------------------------------------------- FHIR semantics

#[tokio::test]
async fn conditional_creates_answer_201_then_200_and_store_each_identifier_once() {
    let pki = TestPki::generate();
    let upstream = start_upstream(&pki).await;
    let client = HttpsClient::new(pki.client_config());

    let first = client
        .post_json(&upstream.url(), &two_observations())
        .await
        .unwrap();
    assert_eq!(first.status, 200);
    assert!(first
        .header("content-type")
        .unwrap()
        .starts_with("application/fhir+json"));
    let answer = first.json().unwrap();
    assert_eq!(answer["type"], "transaction-response");
    assert_eq!(statuses(&answer), ["201 Created", "201 Created"]);
    let loc = answer["entry"][0]["response"]["location"].as_str().unwrap();
    assert!(
        loc.starts_with("Observation/") && loc.ends_with("/_history/1"),
        "{loc}"
    );

    let again = client
        .post_json(&upstream.url(), &two_observations())
        .await
        .unwrap();
    let answer2 = again.json().unwrap();
    assert_eq!(statuses(&answer2), ["200 OK", "200 OK"]);
    assert_eq!(
        answer2["entry"][0]["response"]["location"],
        answer["entry"][0]["response"]["location"]
    );

    assert_eq!(upstream.observation_count(), 2);
    assert_eq!(
        upstream.count_by_identifier("Observation", OBS_SYSTEM, "obs-a"),
        1
    );
    upstream.assert_no_duplicate_identifiers();
    let log = upstream.log();
    assert_eq!(log.len(), 2);
    assert_eq!((log[0].created, log[0].existed, log[0].entries), (2, 0, 2));
    assert_eq!((log[1].created, log[1].existed), (0, 2));
    assert_eq!(log[1].status, Some(200));
    assert_eq!(
        log[0].content_type.as_deref(),
        Some("application/fhir+json")
    );

    let stored = &upstream.observations()[0];
    assert!(stored["id"].is_string());
    assert_eq!(stored["meta"]["versionId"], "1");
}

#[tokio::test]
async fn unconditional_creates_are_stored_twice_and_reported_as_duplicates() {
    let pki = TestPki::generate();
    let upstream = start_upstream(&pki).await;
    let client = HttpsClient::new(pki.client_config());
    let plain = bundle(
        "transaction",
        vec![
            json!({"resource": observation("dup", None), "request": {"method": "POST", "url": "Observation"}}),
        ],
    );
    for _ in 0..2 {
        let r = client.post_json(&upstream.url(), &plain).await.unwrap();
        assert_eq!(statuses(&r.json().unwrap()), ["201 Created"]);
    }
    let dups = upstream.duplicate_identifiers();
    assert_eq!(dups.len(), 1);
    assert_eq!(dups[0].value, "dup");
    assert_eq!(dups[0].ids.len(), 2);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        upstream.assert_no_duplicate_identifiers()
    }));
    assert!(caught.is_err());
}

#[tokio::test]
async fn urn_uuid_references_are_resolved_to_the_stored_device() {
    let pki = TestPki::generate();
    let upstream = start_upstream(&pki).await;
    let client = HttpsClient::new(pki.client_config());
    let dev_url = "urn:uuid:11111111-1111-4111-8111-111111111111";
    let device = json!({
        "resourceType": "Device",
        "identifier": [{"system": DEV_SYSTEM, "value": "urn:oid:1.2.3"}],
    });
    let mut obs = observation("with-device", Some(dev_url));
    obs["extension"] = json!([{
        "url": "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice",
        "valueReference": {"reference": dev_url}
    }]);
    // Observation first: references must resolve regardless of entry order.
    let b = bundle(
        "transaction",
        vec![
            conditional_entry(obs, None),
            conditional_entry(device.clone(), Some(dev_url)),
        ],
    );
    let r = client.post_json(&upstream.url(), &b).await.unwrap();
    assert_eq!(statuses(&r.json().unwrap()), ["201 Created", "201 Created"]);
    let dev_id = upstream.devices()[0]["id"].as_str().unwrap().to_string();
    let stored = &upstream.observations()[0];
    assert_eq!(stored["device"]["reference"], format!("Device/{dev_id}"));
    assert_eq!(
        stored["extension"][0]["valueReference"]["reference"],
        format!("Device/{dev_id}")
    );

    // Second bundle: the Device already exists (200), the new Observation points at it.
    let b2 = bundle(
        "transaction",
        vec![
            conditional_entry(device, Some(dev_url)),
            conditional_entry(observation("second", Some(dev_url)), None),
        ],
    );
    let r2 = client.post_json(&upstream.url(), &b2).await.unwrap();
    assert_eq!(statuses(&r2.json().unwrap()), ["200 OK", "201 Created"]);
    assert_eq!(upstream.devices().len(), 1);
    assert_eq!(
        upstream.observations()[1]["device"]["reference"],
        format!("Device/{dev_id}")
    );

    // A urn:uuid no entry declares fails the transaction.
    let b3 = bundle(
        "transaction",
        vec![conditional_entry(
            observation(
                "dangling",
                Some("urn:uuid:22222222-2222-4222-8222-222222222222"),
            ),
            None,
        )],
    );
    let r3 = client.post_json(&upstream.url(), &b3).await.unwrap();
    assert_eq!(r3.status, 400);
    assert_eq!(upstream.observation_count(), 2);
}

#[tokio::test]
async fn rejected_entries_fail_a_transaction_whole_but_only_themselves_in_a_batch() {
    let pki = TestPki::generate();
    let cfg = UpstreamConfig::new(&pki).reject_marker("POISON", 422);
    let upstream = Upstream::start(cfg).await.unwrap();
    let client = HttpsClient::new(pki.client_config());
    let entries = || {
        vec![
            conditional_entry(observation("good-1", None), None),
            conditional_entry(observation("POISON-1", None), None),
            conditional_entry(observation("good-2", None), None),
        ]
    };

    let tx = client
        .post_json(&upstream.url(), &bundle("transaction", entries()))
        .await
        .unwrap();
    assert_eq!(tx.status, 422);
    let oo = tx.json().unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(oo["issue"][0]["expression"][0], "Bundle.entry[1]");
    assert_eq!(upstream.observation_count(), 0, "all-or-nothing");

    let batch = client
        .post_json(&upstream.url(), &bundle("batch", entries()))
        .await
        .unwrap();
    assert_eq!(batch.status, 200);
    let answer = batch.json().unwrap();
    assert_eq!(answer["type"], "batch-response");
    assert_eq!(
        statuses(&answer),
        ["201 Created", "422 Unprocessable Entity", "201 Created"]
    );
    assert_eq!(
        answer["entry"][1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(upstream.observation_count(), 2);
    let last = upstream.log().pop().unwrap();
    assert_eq!(
        (last.created, last.rejected, last.bundle_type.as_deref()),
        (2, 1, Some("batch"))
    );
}

#[tokio::test]
async fn per_entry_transaction_mode_and_required_elements() {
    let pki = TestPki::generate();
    let cfg = UpstreamConfig::new(&pki).transaction_failure(TransactionFailureMode::PerEntry);
    let upstream = Upstream::start(cfg).await.unwrap();
    let client = HttpsClient::new(pki.client_config());
    let mut no_code = observation("no-code", None);
    no_code.as_object_mut().unwrap().remove("code");
    let b = bundle(
        "transaction",
        vec![
            conditional_entry(no_code, None),
            conditional_entry(observation("fine", None), None),
        ],
    );
    let r = client.post_json(&upstream.url(), &b).await.unwrap();
    let answer = r.json().unwrap();
    assert_eq!(answer["type"], "transaction-response");
    assert_eq!(
        statuses(&answer),
        ["422 Unprocessable Entity", "201 Created"]
    );
    assert_eq!(upstream.observation_count(), 1);
}

#[tokio::test]
async fn malformed_requests_get_400_with_an_operation_outcome() {
    let pki = TestPki::generate();
    let upstream = start_upstream(&pki).await;
    let client = HttpsClient::new(pki.client_config());
    let bad_bodies: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        serde_json::to_vec(&observation("x", None)).unwrap(),
        serde_json::to_vec(&bundle("collection", vec![])).unwrap(),
        serde_json::to_vec(&bundle(
            "transaction",
            vec![json!({"resource": observation("x", None)})],
        ))
        .unwrap(),
    ];
    for body in bad_bodies {
        let r = client
            .request(http::Method::POST, &upstream.url(), Some(body.clone()))
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&body));
        assert_eq!(r.json().unwrap()["resourceType"], "OperationOutcome");
    }
    assert_eq!(upstream.observation_count(), 0);
}

#[tokio::test]
async fn search_by_identifier_returns_a_searchset() {
    let pki = TestPki::generate();
    let upstream = start_upstream(&pki).await;
    let client = HttpsClient::new(pki.client_config());
    client
        .post_json(&upstream.url(), &two_observations())
        .await
        .unwrap();
    let url = format!(
        "{}/Observation?identifier={}%7Cobs-b",
        upstream.url(),
        OBS_SYSTEM
    );
    let found = client.get(&url).await.unwrap().json().unwrap();
    assert_eq!(found["type"], "searchset");
    assert_eq!(found["total"], 1);
    assert_eq!(
        found["entry"][0]["resource"]["identifier"][0]["value"],
        "obs-b"
    );
    let id = found["entry"][0]["resource"]["id"].as_str().unwrap();
    let read = client
        .get(&format!("{}/Observation/{id}", upstream.url()))
        .await
        .unwrap();
    assert_eq!(read.status, 200);
    let none = client
        .get(&format!("{}/Observation?identifier=nope", upstream.url()))
        .await
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(none["total"], 0);
}

// ---------------------------------------------------------------- faults

#[tokio::test]
async fn fault_503_applies_to_the_next_n_posts_only() {
    let pki = TestPki::generate();
    let upstream = start_upstream(&pki).await;
    let client = HttpsClient::new(pki.client_config());
    upstream.faults().push_n(Fault::ServiceUnavailable, 2);
    for _ in 0..2 {
        let r = client
            .post_json(&upstream.url(), &two_observations())
            .await
            .unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.json().unwrap()["resourceType"], "OperationOutcome");
    }
    assert_eq!(upstream.observation_count(), 0);
    assert!(upstream.faults().is_empty());
    let r = client
        .post_json(&upstream.url(), &two_observations())
        .await
        .unwrap();
    assert_eq!(statuses(&r.json().unwrap()), ["201 Created", "201 Created"]);
    let log = upstream.log();
    assert_eq!(log[0].fault, Some(Fault::ServiceUnavailable));
    assert_eq!(log[0].status, Some(503));
    assert_eq!(log[2].fault, None);
}

#[tokio::test]
async fn fault_429_sends_retry_after() {
    let pki = TestPki::generate();
    let upstream = start_upstream(&pki).await;
    let client = HttpsClient::new(pki.client_config());
    // GETs do not consume faults.
    upstream.faults().push(Fault::TooManyRequests {
        retry_after_secs: 7,
    });
    let meta = client
        .get(&format!("{}/metadata", upstream.url()))
        .await
        .unwrap();
    assert_eq!(meta.status, 200);
    let r = client
        .post_json(&upstream.url(), &two_observations())
        .await
        .unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(upstream.observation_count(), 0);
}

#[tokio::test]
async fn fault_commit_then_drop_stores_but_the_client_sees_a_connection_error() {
    let pki = TestPki::generate();
    let upstream = start_upstream(&pki).await;
    let client = HttpsClient::new(pki.client_config());
    upstream.faults().push(Fault::CommitThenDrop);
    let err = client
        .post_json(&upstream.url(), &two_observations())
        .await
        .expect_err("no response after commit-then-drop");
    assert!(matches!(err, ClientError::Http(_)), "{err}");
    assert_eq!(upstream.observation_count(), 2);
    let entry = upstream.log().pop().unwrap();
    assert_eq!((entry.status, entry.created), (None, 2));
    assert_eq!(entry.fault, Some(Fault::CommitThenDrop));

    // The retry finds both and creates nothing.
    let retry = client
        .post_json(&upstream.url(), &two_observations())
        .await
        .unwrap();
    assert_eq!(statuses(&retry.json().unwrap()), ["200 OK", "200 OK"]);
    assert_eq!(upstream.observation_count(), 2);
    upstream.assert_no_duplicate_identifiers();
}

#[tokio::test]
async fn fault_drop_before_commit_stores_nothing() {
    let pki = TestPki::generate();
    let upstream = start_upstream(&pki).await;
    let client = HttpsClient::new(pki.client_config());
    upstream.faults().push(Fault::DropBeforeCommit);
    assert!(client
        .post_json(&upstream.url(), &two_observations())
        .await
        .is_err());
    assert_eq!(upstream.observation_count(), 0);
}

#[tokio::test]
async fn fault_delay_holds_the_response_then_applies_it() {
    let pki = TestPki::generate();
    let upstream = start_upstream(&pki).await;
    let client = HttpsClient::new(pki.client_config());
    upstream
        .faults()
        .push(Fault::Delay(Duration::from_millis(400)));
    let t = Instant::now();
    let r = client
        .post_json(&upstream.url(), &two_observations())
        .await
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(statuses(&r.json().unwrap()), ["201 Created", "201 Created"]);

    // A client that gives up early: the delayed request still commits.
    upstream
        .faults()
        .push(Fault::Delay(Duration::from_millis(300)));
    let impatient = HttpsClient::new(pki.client_config()).with_timeout(Duration::from_millis(50));
    let b = bundle(
        "transaction",
        vec![conditional_entry(observation("late", None), None)],
    );
    assert!(matches!(
        impatient.post_json(&upstream.url(), &b).await,
        Err(ClientError::Timeout)
    ));
    assert!(upstream.wait_for_observations(3, WAIT).await);
}

#[tokio::test]
async fn upstream_stop_refuses_connections_and_restart_keeps_state() {
    let pki = TestPki::generate();
    let mut upstream = start_upstream(&pki).await;
    let client = HttpsClient::new(pki.client_config());
    client
        .post_json(&upstream.url(), &two_observations())
        .await
        .unwrap();
    upstream.stop().await;
    let err = client
        .post_json(&upstream.url(), &two_observations())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect(_)), "{err}");
    upstream.restart().await.unwrap();
    let r = client
        .post_json(&upstream.url(), &two_observations())
        .await
        .unwrap();
    assert_eq!(statuses(&r.json().unwrap()), ["200 OK", "200 OK"]);
}

// ---------------------------------------------------------------- mosquitto

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn mosquitto_round_trips_qos1_messages_and_dies_on_drop() {
    let broker = Mosquitto::start(MosquittoOptions::default()).expect("mosquitto starts");
    let pid = broker.pid().unwrap();
    let config = broker.config_text();
    for line in [
        "max_queued_messages 0",
        "max_queued_bytes 0",
        "max_inflight_messages 1000",
        "persistence true",
    ] {
        assert!(config.contains(line), "config lacks {line}:\n{config}");
    }
    let mut sub = Subscriber::connect(broker.port(), "vb/test/#")
        .await
        .unwrap();
    let n = 2_000;
    let acked = publish_qos1(
        broker.port(),
        "vb/test/a",
        (0..n).map(|i| i.to_string().into_bytes()),
    )
    .await
    .unwrap_or_else(|e| panic!("publish failed: {e}\n{}", broker.log_contents()));
    assert_eq!(acked, n);
    let got = sub.collect(n, WAIT).await;
    assert_eq!(got.len(), n);
    assert_eq!(got[0].payload.as_ref(), b"0");
    assert_eq!(got[n - 1].payload.as_ref(), (n - 1).to_string().as_bytes());
    assert!(got.iter().all(|p| p.qos == rumqttc::QoS::AtLeastOnce));
    assert!(
        broker.log_contents().contains("running"),
        "log file is written"
    );

    drop(sub);
    drop(broker);
    assert!(
        !process_alive(pid),
        "mosquitto {pid} still alive after drop"
    );
}

#[tokio::test]
async fn publishing_to_a_dead_broker_fails_instead_of_hanging() {
    let port = vitalbridge_tests::mosquitto::free_port().unwrap();
    let mut opts = ClientOptions::new(port);
    opts.timeout = Duration::from_secs(10);
    let r = publish_qos1_with(&opts, "t", std::iter::once(b"x".to_vec())).await;
    assert!(r.is_err());
}

#[tokio::test]
async fn an_offline_persistent_session_keeps_more_than_1000_messages_across_a_restart() {
    let mut broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let mut opts = ClientOptions::new(broker.port());
    opts.client_id = "vb-persistent-subscriber".to_string();
    opts.clean_session = false;
    let sub = Subscriber::connect_with(&opts, "vb/offline").await.unwrap();
    drop(sub); // offline, session kept by the broker
    tokio::time::sleep(Duration::from_millis(200)).await;

    let n = 1_500; // above mosquitto's default max_queued_messages (1000)
    let acked = publish_qos1(
        broker.port(),
        "vb/offline",
        (0..n).map(|i| format!("m{i}").into_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(acked, n);
    broker
        .restart()
        .unwrap_or_else(|e| panic!("restart: {e}\n{}", broker.log_contents()));
    assert_eq!(opts.port, broker.port(), "restart keeps the port");

    let mut sub = Subscriber::connect_with(&opts, "vb/offline").await.unwrap();
    let got = sub.collect(n, Duration::from_secs(20)).await;
    assert_eq!(
        got.len(),
        n,
        "queued messages lost; broker log:\n{}",
        broker.log_contents()
    );
}

#[tokio::test]
async fn mosquitto_tls_listener_requires_a_client_certificate() {
    let pki = TestPki::generate();
    let broker = Mosquitto::start(MosquittoOptions::default().with_tls(&pki))
        .unwrap_or_else(|e| panic!("{e}"));
    let tls_port = broker.tls_port().unwrap();

    let mut good = ClientOptions::new(tls_port);
    good.tls = Some(pki.client_config());
    let acked = publish_qos1_with(&good, "vb/tls", (0..10).map(|i| vec![i]))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", broker.log_contents()));
    assert_eq!(acked, 10);

    let mut anon = ClientOptions::new(tls_port);
    anon.tls = Some(pki.client_config_without_cert());
    anon.timeout = Duration::from_secs(10);
    assert!(publish_qos1_with(&anon, "vb/tls", std::iter::once(vec![1]))
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_helper_is_fast_enough_for_benchmarks() {
    let broker = Mosquitto::start(MosquittoOptions::default()).unwrap();
    let n = 20_000;
    let t = Instant::now();
    let acked = publish_qos1(
        broker.port(),
        "vb/bench",
        (0..n).map(|i| format!("{{\"seq\":{i}}}").into_bytes()),
    )
    .await
    .unwrap();
    let rate = n as f64 / t.elapsed().as_secs_f64();
    eprintln!(
        "published {n} QoS 1 messages in {:?} ({rate:.0}/s)",
        t.elapsed()
    );
    assert_eq!(acked, n);
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "too slow: {rate:.0}/s"
    );
}

#[tokio::test]
async fn posting_to_the_base_with_a_trailing_slash_and_a_status_fault() {
    let pki = TestPki::generate();
    let upstream = start_upstream(&pki).await;
    let client = HttpsClient::new(pki.client_config());
    upstream.faults().push(Fault::Status(500));
    let url = format!("{}/", upstream.url());
    let r = client.post_json(&url, &two_observations()).await.unwrap();
    assert_eq!(r.status, 500);
    let r = client.post_json(&url, &two_observations()).await.unwrap();
    assert_eq!(statuses(&r.json().unwrap()), ["201 Created", "201 Created"]);
    let wrong = client
        .post_json(
            &format!("{}/Observation", upstream.url()),
            &observation("x", None),
        )
        .await
        .unwrap();
    assert_eq!(wrong.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_keeps_up_with_benchmark_sized_loads() {
    let pki = TestPki::generate();
    let upstream = start_upstream(&pki).await;
    let client = HttpsClient::new(pki.client_config());
    let t = Instant::now();
    let (bundles, per_bundle) = (100, 100);
    for b in 0..bundles {
        let entries = (0..per_bundle)
            .map(|i| conditional_entry(observation(&format!("load-{b}-{i}"), None), None))
            .collect();
        let r = client
            .post_json(&upstream.url(), &bundle("transaction", entries))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    eprintln!(
        "{} observations via {bundles} bundles in {:?}",
        bundles * per_bundle,
        t.elapsed()
    );
    assert_eq!(upstream.observation_count(), bundles * per_bundle);
    upstream.assert_no_duplicate_identifiers();
    assert!(t.elapsed() < Duration::from_secs(60));
}
