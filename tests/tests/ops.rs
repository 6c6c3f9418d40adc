//! Operations, end to end: the gateway binary's HTTP endpoints over real HTTP, the status page
//! in headless Chromium, the audit log and JSON logs, with a real mosquitto and the FHIR test
//! upstream over mutual TLS.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};
use vitalbridge_tests::fixture::{self, Rig};
use vitalbridge_tests::gateway::{run_cli, GatewayProcess};
use vitalbridge_tests::mosquitto::{
    free_port, publish_qos1, Mosquitto, MosquittoOptions, MosquittoTls,
};
use vitalbridge_tests::ops::{self as ops_http, element_text, ops_table, parse_prometheus};
use vitalbridge_tests::pki::{ServerIdentity, TestPki};
use vitalbridge_tests::upstream::Fault;

const TOPIC: &str = "vitals/ops";
/// A patient identifier that must never appear on the page, in metrics, in the audit log or
/// in the gateway's log.
const PATIENT: &str = "PATIENT-SECRET-4711";
/// A measured value (body temperature) that must never appear either.
const VALUE: &str = "36.4321";

/// `[[devices]]` binding `ops-dev-0` to [`PATIENT`].
fn binding() -> String {
    format!(
        "\n[[devices]]\nid = \"ops-dev-0\"\npatient_system = \"urn:oid:1.2.3\"\npatient_id = \"{PATIENT}\"\n"
    )
}

/// The `i`-th reading: one of three devices, a unique time, the body temperature [`VALUE`].
fn payload(i: u64) -> Vec<u8> {
    payload_with_value(i, VALUE)
}

fn payload_with_value(i: u64, value: &str) -> Vec<u8> {
    let time = time::OffsetDateTime::from_unix_timestamp(1_790_000_000 + i as i64)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let value: serde_json::Number = value.parse().unwrap();
    serde_json::to_vec(&json!({
        "device": format!("ops-dev-{}", i % 3), "time": time, "metric": "body-temperature",
        "value": value, "unit": "Cel", "seq": i
    }))
    .unwrap()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn tail(log: &str) -> String {
    fixture::tail(log, 40)
}

fn audit_lines(data_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(data_dir.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
        .collect()
}

fn audit_of_kind(data_dir: &Path, kind: &str) -> Vec<Value> {
    audit_lines(data_dir)
        .into_iter()
        .filter(|l| l["kind"] == kind)
        .collect()
}

async fn wait_until(timeout: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn metrics(port: u16) -> vitalbridge_tests::ops::Exposition {
    let resp = ops_http::get(addr(port), "/metrics")
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status, 200);
    let text = String::from_utf8(resp.body.to_vec()).unwrap();
    parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

async fn status_json(port: u16) -> Value {
    let resp = ops_http::get(addr(port), "/status.json")
        .await
        .expect("GET /status.json");
    assert_eq!(resp.status, 200);
    resp.json().expect("status.json is JSON")
}

fn assert_no_patient_data(what: &str, text: &str) {
    assert!(!text.contains(PATIENT), "{what} shows a patient identifier");
    assert!(!text.contains(VALUE), "{what} shows a measured value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_answer_real_http_requests() {
    let rig = Rig::start().await;
    let (broker, upstream, port) = (&rig.broker, &rig.upstream, rig.ops_port);
    let mut gw =
        rig.start_subscribed(&rig.mqtt_to_fhir(&format!("{}{}", binding(), ops_table(port, ""))));

    let health = ops_http::get(addr(port), "/healthz").await.unwrap();
    assert_eq!(
        (health.status.as_u16(), &health.body[..]),
        (200, &b"ok\n"[..])
    );

    let mut payloads: Vec<Vec<u8>> = (0..30).map(payload).collect();
    payloads.push(b"not json".to_vec());
    payloads.push(br#"{"device":"x","metric":"nope","value":1}"#.to_vec());
    publish_qos1(broker.port(), TOPIC, payloads).await.unwrap();
    assert!(
        upstream
            .wait_for_observations(30, Duration::from_secs(30))
            .await,
        "{}",
        tail(&gw.log())
    );
    let delivered = wait_until(Duration::from_secs(10), async || {
        metrics(port)
            .await
            .value("vitalbridge_readings_out_total", &[("uplink", "fhir")])
            == Some(30.0)
    })
    .await;
    assert!(delivered, "readings_out_total reaches 30");

    let resp = ops_http::get(addr(port), "/metrics").await.unwrap();
    assert!(
        resp.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        resp.headers
    );
    let text = String::from_utf8(resp.body.to_vec()).unwrap();
    assert_no_patient_data("/metrics", &text);
    let m = parse_prometheus(&text).unwrap();
    let v = |name: &str, labels: &[(&str, &str)]| {
        m.value(name, labels)
            .unwrap_or_else(|| panic!("{name} {labels:?} missing:\n{text}"))
    };
    assert_eq!(
        v(
            "vitalbridge_readings_in_total",
            &[("source", "mqtt"), ("profile", "canonical-json-v1")]
        ),
        30.0
    );
    assert_eq!(
        v(
            "vitalbridge_payloads_dead_lettered_total",
            &[("source", "mqtt")]
        ),
        2.0
    );
    assert_eq!(v("vitalbridge_buffer_dead_letters", &[]), 2.0);
    assert_eq!(v("vitalbridge_buffer_pending_readings", &[]), 0.0);
    assert_eq!(v("vitalbridge_buffer_oldest_age_seconds", &[]), 0.0);
    assert_eq!(
        v("vitalbridge_uplink_retries_total", &[("uplink", "fhir")]),
        0.0
    );
    assert_eq!(
        v("vitalbridge_uplink_failing_seconds", &[("uplink", "fhir")]),
        0.0
    );
    assert_eq!(v("vitalbridge_ingest_to_commit_seconds_count", &[]), 30.0);
    assert_eq!(v("vitalbridge_ingest_to_ack_seconds_count", &[]), 30.0);
    assert_eq!(
        v(
            "vitalbridge_ingest_to_ack_seconds_bucket",
            &[("le", "+Inf")]
        ),
        30.0
    );
    assert!(v("vitalbridge_ingest_to_ack_seconds_sum", &[]) > 0.0);
    assert_eq!(v("vitalbridge_ready", &[]), 1.0);
    assert_eq!(v("vitalbridge_tls_failures_total", &[]), 0.0);
    assert_eq!(m.kind("vitalbridge_readings_in"), Some("counter"));
    assert_eq!(
        m.kind("vitalbridge_ingest_to_ack_seconds"),
        Some("histogram")
    );
    assert_eq!(m.kind("vitalbridge_buffer_pending_readings"), Some("gauge"));
    let expiry = v(
        "vitalbridge_certificate_expiry_timestamp_seconds",
        &[("use", "uplink.fhir.cert")],
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    assert!(
        expiry > now + 300.0 * 86400.0,
        "the test client cert is valid for a year"
    );

    let ready = ops_http::get(addr(port), "/readyz").await.unwrap();
    assert_eq!(
        (ready.status.as_u16(), &ready.body[..]),
        (200, &b"ready\n"[..])
    );

    let status = status_json(port).await;
    assert_no_patient_data("/status.json", &status.to_string());
    let devices = status["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 3, "{status}");
    assert_eq!(devices[0]["id"], "ops-dev-0");
    assert_eq!(devices[0]["profile"], "canonical-json-v1");
    assert_eq!(devices[0]["source"], "mqtt");
    assert_eq!(devices[0]["readings"], 10);
    assert_eq!(status["queue"]["dead_letters"], 2);
    assert_eq!(status["uplinks"][0]["delivered"], 30);
    let cert = status["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["usage"] == "uplink.fhir.cert")
        .expect("the client certificate is listed");
    assert!(cert["subject"]
        .as_str()
        .unwrap()
        .contains("vitalbridge-gateway-test"));
    assert_eq!(cert["problem"], Value::Null);

    // Read-only: other methods and paths are refused; HEAD answers without a body.
    let post = ops_http::request(None, addr(port), Method::POST, "/metrics")
        .await
        .unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let missing = ops_http::get(addr(port), "/admin").await.unwrap();
    assert_eq!(missing.status, 404);
    let head = ops_http::request(None, addr(port), Method::HEAD, "/healthz")
        .await
        .unwrap();
    assert_eq!((head.status.as_u16(), head.body.len()), (200, 0));

    let exit = gw
        .terminate(Duration::from_secs(20))
        .expect("exits on SIGTERM");
    assert!(exit.success(), "{}", tail(&gw.log()));
    assert!(
        ops_http::get(addr(port), "/healthz").await.is_err(),
        "the server stops with the gateway"
    );
    // The whole run, including two rejected payloads, logged ids and counts only.
    assert_no_patient_data("the gateway's log", &gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_a_full_buffer_and_a_stalled_uplink_then_recovers() {
    let rig = Rig::start().await;
    let (broker, upstream, port) = (&rig.broker, &rig.upstream, rig.ops_port);
    let faults = upstream.faults();
    faults.push_n(Fault::ServiceUnavailable, 100_000);
    let config = rig
        .mqtt_to_fhir(&ops_table(port, "ready_staleness_s = 1"))
        .replace("[uplink]\n", "[buffer]\ncapacity = 50\n\n[uplink]\n");
    let gw = rig.start_subscribed(&config);
    publish_qos1(broker.port(), TOPIC, (0..80).map(payload))
        .await
        .unwrap();

    let mut last = String::new();
    let stalled = wait_until(Duration::from_secs(30), async || {
        let r = ops_http::get(addr(port), "/readyz").await.unwrap();
        last = String::from_utf8_lossy(&r.body).into_owned();
        r.status == 503
            && last.contains("buffer: full (50 of 50 readings)")
            && last.contains("uplink fhir: failing for")
            && last.contains("HTTP 503")
    })
    .await;
    assert!(stalled, "readyz said:\n{last}\n{}", tail(&gw.log()));
    assert!(last.starts_with("not ready\n"), "{last}");

    let m = metrics(port).await;
    assert_eq!(m.value("vitalbridge_ready", &[]), Some(0.0));
    assert_eq!(
        m.value("vitalbridge_buffer_pending_readings", &[]),
        Some(50.0)
    );
    assert!(
        m.value("vitalbridge_uplink_failing_seconds", &[("uplink", "fhir")])
            .unwrap()
            > 1.0
    );
    assert!(
        m.value("vitalbridge_uplink_retries_total", &[("uplink", "fhir")])
            .unwrap()
            > 0.0
    );
    assert!(
        m.value("vitalbridge_buffer_full_refusals_total", &[])
            .unwrap()
            > 0.0
    );
    assert!(
        m.value("vitalbridge_buffer_oldest_age_seconds", &[])
            .unwrap()
            > 0.0
    );
    let status = status_json(port).await;
    assert_eq!(status["uplinks"][0]["last_error"]["kind"], "transient");

    faults.clear();
    let recovered = wait_until(Duration::from_secs(60), async || {
        ops_http::get(addr(port), "/readyz").await.unwrap().status == 200
            && upstream.observation_count() == 80
    })
    .await;
    assert!(recovered, "{}", tail(&gw.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_in_headless_chromium_with_the_live_queue_depth() {
    let rig = Rig::start().await;
    let (broker, upstream, port) = (&rig.broker, &rig.upstream, rig.ops_port);
    let faults = upstream.faults();
    faults.push_n(Fault::ServiceUnavailable, 100_000);
    let config = rig
        .mqtt_to_fhir(&format!("{}{}", binding(), ops_table(port, "")))
        .replace("[uplink]\n", "[buffer]\ncapacity = 40\n\n[uplink]\n");
    let gw = rig.start_subscribed(&config);
    publish_qos1(broker.port(), TOPIC, (0..60).map(payload))
        .await
        .unwrap();
    let full = wait_until(Duration::from_secs(30), async || {
        status_json(port).await["queue"]["pending"] == 40
    })
    .await;
    assert!(full, "{}", tail(&gw.log()));

    // The server sends a static page: the figures come from the page's own requests.
    let raw = ops_http::get(addr(port), "/").await.unwrap();
    assert_eq!(raw.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(raw
        .header("content-security-policy")
        .unwrap()
        .contains("script-src 'self'"));
    let raw = String::from_utf8(raw.body.to_vec()).unwrap();
    assert_eq!(element_text(&raw, "queue-pending").as_deref(), Some("–"));

    let url = format!("http://127.0.0.1:{port}/");
    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || ops_http::dump_dom(&url, 3000)
    })
    .await
    .unwrap()
    .expect("chromium renders the page");
    assert_eq!(
        element_text(&dom, "queue-pending").as_deref(),
        Some("40"),
        "{dom}"
    );
    assert_eq!(element_text(&dom, "queue-capacity").as_deref(), Some("40"));
    assert_eq!(element_text(&dom, "buffer-storage").as_deref(), Some("ok"));
    assert_eq!(
        element_text(&dom, "buffer-quarantined").as_deref(),
        Some("none")
    );
    assert!(
        element_text(&dom, "buffer-free").is_some_and(|t| t.contains("MiB (floor ")),
        "{dom}"
    );
    assert_eq!(
        element_text(&dom, "readiness").as_deref(),
        Some("Not ready")
    );
    assert!(dom.contains("buffer: full (40 of 40 readings)"), "{dom}");
    assert!(
        dom.contains("<td>ops-dev-0</td>"),
        "devices are listed: {dom}"
    );
    assert!(
        dom.contains("server answered HTTP 503"),
        "the uplink's last error"
    );
    assert!(dom.contains("uplink.fhir.cert"), "certificates are listed");
    assert_no_patient_data("the status page", &dom);

    // The uplink recovers; the same page, loaded again, shows the queue drained.
    faults.clear();
    let drained = wait_until(Duration::from_secs(60), async || {
        upstream.observation_count() == 60 && status_json(port).await["queue"]["pending"] == 0
    })
    .await;
    assert!(drained, "{}", tail(&gw.log()));
    let dom = tokio::task::spawn_blocking(move || ops_http::dump_dom(&url, 3000))
        .await
        .unwrap()
        .expect("chromium renders the page");
    assert_eq!(
        element_text(&dom, "queue-pending").as_deref(),
        Some("0"),
        "{dom}"
    );
    assert_eq!(element_text(&dom, "readiness").as_deref(), Some("Ready"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_outside_allow_from_is_disconnected_counted_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let config = format!(
        "[gateway]\ndata_dir = \"data\"\n[sources.sim]\ndevices = 1\ninterval_ms = 1000\n{}",
        ops_table(port, "allow_from = [\"127.0.0.2/32\"]")
    );
    let mut gw = GatewayProcess::start(dir.path(), &config).unwrap();
    assert!(
        gw.wait_for_log("gateway running", Duration::from_secs(20)),
        "{}",
        gw.log()
    );
    let allowed: IpAddr = "127.0.0.2".parse().unwrap();

    for _ in 0..3 {
        let refused = ops_http::get(addr(port), "/healthz").await;
        assert!(refused.is_err(), "127.0.0.1 is not allowed: {refused:?}");
    }
    let ok = ops_http::request(Some(allowed), addr(port), Method::GET, "/healthz")
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    let text = ops_http::request(Some(allowed), addr(port), Method::GET, "/metrics")
        .await
        .unwrap();
    let m = parse_prometheus(&String::from_utf8_lossy(&text.body)).unwrap();
    assert_eq!(
        m.value("vitalbridge_ops_connections_refused_total", &[]),
        Some(3.0)
    );

    let exit = gw.terminate(Duration::from_secs(20)).unwrap();
    assert!(exit.success());
    let refusals = audit_of_kind(&dir.path().join("data"), "connection_refused");
    assert_eq!(
        refusals.len(),
        2,
        "the first at once, the repeats summarised: {refusals:?}"
    );
    for r in &refusals {
        assert_eq!(r["endpoint"], "ops");
        assert_eq!(r["direction"], "inbound");
        assert_eq!(r["address"], "127.0.0.1");
    }
    assert_eq!(refusals[0]["count"], 1);
    assert_eq!(refusals[1]["count"], 2);
}

#[test]
fn listening_beyond_loopback_must_be_explicit_and_a_taken_port_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let check = |ops: &str| {
        std::fs::write(
            dir.path().join("c.toml"),
            format!("[gateway]\ndata_dir = \"data\"\n{ops}"),
        )
        .unwrap();
        run_cli(dir.path(), &["check-config", "-c", "c.toml"])
    };
    let (code, _, err) = check("[ops.http]\nlisten = \"0.0.0.0:8642\"\n");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("ops.http.listen: 0.0.0.0 is not a loopback address"),
        "{err}"
    );
    // Networks named, but no HTTPS and no client check: refused.
    let wide =
        "[ops.http]\nlisten = \"0.0.0.0:8642\"\nallow_from = [\"127.0.0.0/8\", \"10.20.0.0/16\"]\n";
    let (code, _, err) = check(wide);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("ops.http.tls: serving beyond loopback needs HTTPS"),
        "{err}"
    );
    // With a certificate, its key and a token file (the check reads them, it does not parse).
    for f in ["ops.pem", "ops.key", "ops-token"] {
        let p = dir.path().join(f);
        std::fs::write(&p, "x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let (code, _, err) = check(&format!(
        "{wide}token_file = \"ops-token\"\n[ops.http.tls]\ncert = \"ops.pem\"\nkey = \"ops.key\"\n"
    ));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = check("[ops.http]\nallow_from = [\"10.20.1.0/16\"]\n");
    assert_eq!(code, 2);
    assert!(err.contains("ops.http.allow_from"), "{err}");
    assert!(err.contains("did you mean 10.20.0.0/16"), "{err}");
    let (code, _, err) = check("[ops.http]\nlisten = \"localhost\"\n");
    assert_eq!(code, 2);
    assert!(err.contains("ops.http.listen"), "{err}");
    let (code, _, err) = check("[ops.http]\nready_staleness_s = 0\n");
    assert_eq!(code, 2);
    assert!(err.contains("ops.http.ready_staleness_s"), "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = format!(
        "[gateway]\ndata_dir = \"data\"\n[sources.sim]\n{}",
        ops_table(port, "")
    );
    let mut gw = GatewayProcess::start(dir.path(), &config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = gw.try_wait() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway must not run without its ops port"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    assert!(
        gw.log().contains(&format!(
            "ops.http.listen: cannot listen on 127.0.0.1:{port}"
        )),
        "{}",
        gw.log()
    );
    assert!(
        gw.log().contains("set [ops.http] listen to a free one"),
        "{}",
        gw.log()
    );
}

#[test]
fn a_configuration_change_is_audited_once_with_the_tables_that_changed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let a = "[gateway]\ndata_dir = \"data\"\n[sources.sim]\ninterval_ms = 1000\n[uplink]\nbatch_size = 500\n";
    let b = a.replace("batch_size = 500", "batch_size = 100");
    for config in [a, a, b.as_str()] {
        let mut gw = GatewayProcess::start(dir.path(), config).unwrap();
        assert!(
            gw.wait_for_log("gateway running", Duration::from_secs(20)),
            "{}",
            gw.log()
        );
        assert!(gw.terminate(Duration::from_secs(20)).unwrap().success());
        std::fs::remove_file(dir.path().join("gateway.log")).unwrap();
    }
    let lines = audit_lines(&data);
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "gateway_started",
            "config_changed",
            "buffer_key_created",
            "gateway_stopped",
            "gateway_started",
            "gateway_stopped",
            "gateway_started",
            "config_changed",
            "gateway_stopped"
        ]
    );
    let (first, second) = (&lines[1], &lines[7]);
    assert_eq!(first["previous_sha256"], Value::Null);
    assert_eq!(second["previous_sha256"], first["sha256"]);
    assert_ne!(second["sha256"], first["sha256"]);
    assert_eq!(second["sections"], json!(["uplink"]));
    assert_eq!(lines[6]["config_sha256"], second["sha256"]);
    assert!(lines.iter().all(|l| l["gateway"] == lines[0]["gateway"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_of_the_uplink_and_of_the_broker_are_counted_and_audited() {
    let rig = Rig::builder()
        .broker(|pki| MosquittoOptions {
            tls: Some(MosquittoTls::from_pki(pki, ServerIdentity::WrongName)),
            ..MosquittoOptions::default()
        })
        .upstream(|config, pki| config.identity(pki, ServerIdentity::RogueCa))
        .start()
        .await;
    let (pki, broker, upstream, port) = (&rig.pki, &rig.broker, &rig.upstream, rig.ops_port);
    let data = rig.data_dir();
    let client = pki.client_files();
    let config = format!(
        r#"[gateway]
data_dir = "data"
[sources.sim]
devices = 1
interval_ms = 200
[sources.mqtt]
url = "mqtts://localhost:{tls_port}"
topics = ["vitals/#"]
[sources.mqtt.tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
[uplink]
retry_initial_ms = 50
retry_max_ms = 500
[uplink.fhir]
base_url = "{url}"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
{ops}"#,
        tls_port = broker.tls_port().unwrap(),
        ca = pki.ca_cert_path().display(),
        cert = client.cert.display(),
        key = client.key.display(),
        url = upstream.url(),
        ops = ops_table(port, ""),
    );
    let mut gw = rig.start_gateway(&config);
    let both = wait_until(Duration::from_secs(30), async || {
        let failures = audit_of_kind(&data, "tls_failure");
        failures.iter().any(|f| f["peer"] == "uplink:fhir")
            && failures.iter().any(|f| f["peer"] == "source:mqtt")
    })
    .await;
    assert!(both, "{:?}\n{}", audit_lines(&data), tail(&gw.log()));
    let failures = audit_of_kind(&data, "tls_failure");
    let reason = |peer: &str| {
        failures
            .iter()
            .find(|f| f["peer"] == peer)
            .and_then(|f| f["reason"].as_str())
            .unwrap()
            .to_owned()
    };
    assert!(
        reason("uplink:fhir").contains("not signed by the configured CA"),
        "{failures:?}"
    );
    assert!(
        reason("source:mqtt").contains("not valid for the host name"),
        "{failures:?}"
    );
    let cause = |peer: &str| {
        failures
            .iter()
            .find(|f| f["peer"] == peer)
            .map(|f| f["cause"].clone())
            .unwrap()
    };
    assert_eq!(cause("uplink:fhir"), "peer_unknown_issuer", "{failures:?}");
    assert_eq!(cause("source:mqtt"), "peer_name_mismatch", "{failures:?}");
    // Retries every few hundred ms, but one line per peer per minute.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = metrics(port).await;
    assert!(m.value("vitalbridge_tls_failures_total", &[]).unwrap() >= 3.0);
    for (peer, cause) in [
        ("uplink:fhir", "peer_unknown_issuer"),
        ("source:mqtt", "peer_name_mismatch"),
    ] {
        let n = m
            .value(
                "vitalbridge_tls_failures_by_cause_total",
                &[("peer", peer), ("cause", cause)],
            )
            .unwrap_or(0.0);
        assert!(n >= 1.0, "{peer} {cause}: {n}");
    }
    let status = status_json(port).await;
    assert!(
        status["tls_failures_by_cause"]
            .as_array()
            .is_some_and(|a| a.iter().any(|t| t["cause"] == "peer_name_mismatch")),
        "{status}"
    );
    assert_eq!(audit_of_kind(&data, "tls_failure").len(), 2);
    let status = status_json(port).await;
    assert_eq!(status["uplinks"][0]["last_error"]["kind"], "tls");
    assert!(gw.terminate(Duration::from_secs(20)).unwrap().success());
    let after = audit_of_kind(&data, "tls_failure");
    assert!(
        after.len() > 2 && after[2..].iter().all(|f| f["count"].as_u64().unwrap() >= 1),
        "the repeats are summarised at shutdown: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_refusing_the_gateway_is_audited() {
    let broker = Mosquitto::start(MosquittoOptions {
        extra_config: vec!["allow_anonymous false".into()],
        ..MosquittoOptions::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = format!(
        "[gateway]\ndata_dir = \"data\"\n[sources.mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\ntopics = [\"vitals/#\"]\n",
        broker.port()
    );
    let gw = GatewayProcess::start(dir.path(), &config).unwrap();
    let refused = wait_until(Duration::from_secs(20), async || {
        !audit_of_kind(&data, "connection_refused").is_empty()
    })
    .await;
    assert!(refused, "{:?}\n{}", audit_lines(&data), tail(&gw.log()));
    let line = &audit_of_kind(&data, "connection_refused")[0];
    assert_eq!(line["endpoint"], "source:mqtt");
    assert_eq!(line["direction"], "outbound");
    assert_eq!(line["address"], Value::Null);
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("the broker refused the connection: NotAuthorized"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lettered_payloads_and_refused_readings_are_audited_without_patient_data() {
    const REFUSED_VALUE: &str = "41.9876";
    let rig = Rig::builder()
        .upstream(|config, _| config.reject_marker(REFUSED_VALUE, 422))
        .start()
        .await;
    let (broker, upstream, port, data) = (&rig.broker, &rig.upstream, rig.ops_port, rig.data_dir());
    let gw =
        rig.start_subscribed(&rig.mqtt_to_fhir(&format!("{}{}", binding(), ops_table(port, ""))));
    let mut payloads: Vec<Vec<u8>> = (0..9).map(payload).collect();
    payloads.push(payload_with_value(9, REFUSED_VALUE));
    payloads.push(b"{\"device\": \"ops-dev-0\", \"metric\": \"spo2\"".to_vec());
    publish_qos1(broker.port(), TOPIC, payloads).await.unwrap();
    assert!(
        upstream
            .wait_for_observations(9, Duration::from_secs(30))
            .await
    );
    let settled = wait_until(Duration::from_secs(20), async || {
        !audit_of_kind(&data, "readings_dead_lettered").is_empty()
            && !audit_of_kind(&data, "payload_dead_lettered").is_empty()
    })
    .await;
    assert!(settled, "{:?}\n{}", audit_lines(&data), tail(&gw.log()));

    let readings = audit_of_kind(&data, "readings_dead_lettered");
    assert_eq!(readings.len(), 1, "{readings:?}");
    assert_eq!(readings[0]["uplink"], "uplink:fhir");
    assert_eq!(readings[0]["count"], 1);
    assert_eq!(readings[0]["cause"], "http_422");
    let payloads = audit_of_kind(&data, "payload_dead_lettered");
    assert_eq!(payloads.len(), 1, "{payloads:?}");
    assert_eq!(payloads[0]["source"], "mqtt");
    assert_eq!(payloads[0]["origin"], format!("mqtt:{TOPIC}"));
    assert_eq!(payloads[0]["count"], 1);
    assert_eq!(payloads[0]["bytes"], 40);

    let m = metrics(port).await;
    assert_eq!(
        m.value(
            "vitalbridge_readings_dead_lettered_total",
            &[("uplink", "fhir")]
        ),
        Some(1.0)
    );
    let audit = std::fs::read_to_string(data.join("audit.log")).unwrap();
    assert_no_patient_data("the audit log", &audit);
    assert!(
        !audit.contains(REFUSED_VALUE),
        "the refused value is not in the audit log"
    );
    assert!(
        !audit.contains("ops-dev-0-"),
        "no reading identifier in the audit log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_close_to_expiry_is_shown_measured_and_audited() {
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A client certificate with ten days left.
    let not_after = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let mut params = rcgen::CertificateParams::new(vec!["hub-soon".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hub-soon");
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(355);
    params.not_after = not_after;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("soon.pem"), dir.path().join("soon-key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();

    let port = free_port().unwrap();
    let config = format!(
        "[gateway]\ndata_dir = \"data\"\n[sources.sim]\ndevices = 1\ninterval_ms = 1000\n\
         [uplink.fhir]\nbase_url = \"https://127.0.0.1:9/fhir\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n{}",
        pki.ca_cert_path().display(),
        cert_path.display(),
        key_path.display(),
        ops_table(port, "")
    );
    let gw = GatewayProcess::start(dir.path(), &config).unwrap();
    assert!(
        gw.wait_for_log("gateway running", Duration::from_secs(20)),
        "{}",
        gw.log()
    );

    let status = status_json(port).await;
    let certs = status["certificates"].as_array().unwrap();
    let soon = certs
        .iter()
        .find(|c| c["usage"] == "uplink.fhir.cert")
        .expect("listed");
    assert_eq!(soon["subject"], "CN=hub-soon");
    assert_eq!(soon["problem"], "expires_soon");
    assert!(matches!(soon["days_left"].as_i64(), Some(9 | 10)), "{soon}");
    let ca = certs
        .iter()
        .find(|c| c["usage"] == "uplink.fhir.ca")
        .unwrap();
    assert_eq!(ca["problem"], Value::Null);

    let m = metrics(port).await;
    let expiry = m
        .value(
            "vitalbridge_certificate_expiry_timestamp_seconds",
            &[("use", "uplink.fhir.cert"), ("subject", "CN=hub-soon")],
        )
        .unwrap();
    assert!((expiry - not_after.unix_timestamp() as f64).abs() < 2.0);

    let problems = audit_of_kind(&data, "certificate_problem");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0]["usage"], "uplink.fhir.cert");
    assert_eq!(problems[0]["problem"], "expires_soon");
    assert_eq!(problems[0]["subject"], "CN=hub-soon");
}

#[test]
fn json_logs_are_one_object_per_line_and_the_command_line_overrides_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[gateway]\ndata_dir = \"data\"\n[sources.sim]\ninterval_ms = 100\n[ops]\nlog_format = \"json\"\n";
    let mut gw = GatewayProcess::start(dir.path(), config).unwrap();
    assert!(
        gw.wait_for_log("gateway running", Duration::from_secs(20)),
        "{}",
        gw.log()
    );
    assert!(gw.terminate(Duration::from_secs(20)).unwrap().success());
    let log = gw.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 4, "{log}");
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["timestamp"].is_string()));
    let running = lines
        .iter()
        .find(|l| l["fields"]["message"] == "gateway running")
        .expect("the start line");
    assert_eq!(running["level"], "INFO");
    let stopped = lines
        .iter()
        .find(|l| l["fields"]["message"] == "stopped cleanly")
        .expect("the stop line");
    assert!(
        stopped["fields"]["stored"].as_u64().is_some(),
        "fields stay typed: {stopped}"
    );

    let other = tempfile::tempdir().unwrap();
    let mut gw =
        GatewayProcess::start_with_args(other.path(), config, &["--log-format", "text"]).unwrap();
    assert!(
        gw.wait_for_log("gateway running", Duration::from_secs(20)),
        "{}",
        gw.log()
    );
    assert!(gw.terminate(Duration::from_secs(20)).unwrap().success());
    assert!(
        gw.log().lines().all(|l| !l.starts_with('{')),
        "{}",
        gw.log()
    );
}
