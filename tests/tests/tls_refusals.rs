//! TLS failures said in words, counted and shown, with real TLS and certificates made here:
//! a server refusing the gateway's client certificate (unknown CA, expired, revoked), a
//! server certificate that is not valid yet or is on the gateway's CRL (and the CRL read
//! again when it changes), and a server offering only TLS 1.0/1.1 or weak ciphers (OpenSSL's
//! `s_server`).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use time::OffsetDateTime;
use vitalbridge_tests::fixture::{tail, Rig};
use vitalbridge_tests::gateway::GatewayProcess;
use vitalbridge_tests::mosquitto::{free_port, publish_qos1};
use vitalbridge_tests::ops::{get, parse_prometheus};
use vitalbridge_tests::pki::CertFiles;
use vitalbridge_tests::scenario;

fn ops(rig: &Rig) -> SocketAddr {
    rig.ops_addr()
}

/// `vitalbridge_tls_failures_total`, and the uplink's count for `cause` in
/// `vitalbridge_tls_failures_by_cause_total`.
async fn tls_failures(rig: &Rig, cause: &str) -> (f64, f64) {
    let resp = get(ops(rig), "/metrics").await.expect("GET /metrics");
    let text = String::from_utf8(resp.body.to_vec()).expect("utf-8");
    let metrics = parse_prometheus(&text).expect("metrics parse");
    (
        metrics
            .value("vitalbridge_tls_failures_total", &[])
            .unwrap_or(0.0),
        metrics
            .value(
                "vitalbridge_tls_failures_by_cause_total",
                &[("peer", "uplink:fhir"), ("cause", cause)],
            )
            .unwrap_or(0.0),
    )
}

async fn last_error(rig: &Rig) -> Value {
    let resp = get(ops(rig), "/status.json")
        .await
        .expect("GET /status.json");
    let status: Value = resp.json().expect("JSON");
    status["uplinks"][0]["last_error"].clone()
}

/// Starts the gateway with `config`, publishes a few readings, and checks that the uplink's
/// failure is said with `words` in the log, on the status page (kind `tls`), counted in
/// `tls_failures_total` and under `cause` in `tls_failures_by_cause_total`, audited with
/// that cause, and that the readings stay buffered.
async fn assert_refusal(rig: &Rig, config: &str, words: &str, cause: &str) -> GatewayProcess {
    let gw = rig.start_subscribed(config);
    let payloads: Vec<Vec<u8>> = (0..5).map(|i| scenario::reading(i, 1).0).collect();
    publish_qos1(rig.broker.port(), "vitals/tls", payloads)
        .await
        .expect("publish");
    assert!(
        gw.wait_for_log(words, Duration::from_secs(30)),
        "the log should say {words:?}\n{}",
        tail(&gw.log(), 30)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut error = Value::Null;
    while Instant::now() < deadline {
        error = last_error(rig).await;
        if error["kind"] == "tls" && tls_failures(rig, cause).await.1 >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(error["kind"], "tls", "{error}");
    assert!(
        error["message"].as_str().unwrap_or("").contains(words),
        "{error}"
    );
    let (total, by_cause) = tls_failures(rig, cause).await;
    assert!(
        total >= 1.0 && by_cause >= 1.0,
        "counted: {total}, {cause}: {by_cause}"
    );
    let audit = std::fs::read_to_string(rig.data_dir().join("audit.log")).unwrap_or_default();
    assert!(
        audit.lines().any(|l| l.contains("\"kind\":\"tls_failure\"")
            && l.contains(&format!("\"cause\":\"{cause}\""))),
        "audited with cause {cause}:\n{audit}"
    );
    assert!(
        !gw.log().contains("Context"),
        "no debug dump\n{}",
        tail(&gw.log(), 30)
    );
    assert_eq!(rig.upstream.observation_count(), 0);
    gw
}

fn config(rig: &Rig, extra: &str) -> String {
    rig.config(&rig.data_dir(), extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_trust_the_gateways_ca_is_named_counted_and_shown() {
    // The server takes client certificates from the rogue CA only: it answers unknown_ca.
    let rig = Rig::builder()
        .upstream(|config, pki| {
            let server = pki.server_files(vitalbridge_tests::pki::ServerIdentity::Trusted);
            config.tls_config(pki.server_config_with(&server.clone(), true, None))
        })
        .start()
        .await;
    assert_refusal(
        &rig,
        &config(&rig, ""),
        "the server does not trust the CA that signed this gateway's client certificate (alert unknown_ca)",
        "unknown_ca",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_or_revoked_client_certificate_is_named() {
    let rig = Rig::start().await;
    let now = OffsetDateTime::now_utc();
    let expired = rig.pki.issue_leaf(
        "expired-client",
        false,
        7001,
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    );
    let cfg = swap_client_cert(&config(&rig, ""), &rig, &expired);
    let gw = assert_refusal(
        &rig,
        &cfg,
        "alert certificate_expired",
        "certificate_expired",
    )
    .await;
    drop(gw);

    // A server with a CRL revoking the gateway's certificate answers certificate_revoked.
    let rig = Rig::builder()
        .upstream(|config, pki| {
            let crl = pki.write_crl("server-side-crl", 1, &[7002]);
            let server = pki
                .server_files(vitalbridge_tests::pki::ServerIdentity::Trusted)
                .clone();
            config.tls_config(pki.server_config_with(&server, false, Some(&crl)))
        })
        .start()
        .await;
    let revoked = rig.pki.issue_leaf(
        "revoked-client",
        false,
        7002,
        now - time::Duration::days(1),
        now + time::Duration::days(30),
    );
    let cfg = swap_client_cert(&config(&rig, ""), &rig, &revoked);
    assert_refusal(
        &rig,
        &cfg,
        "alert certificate_revoked",
        "certificate_revoked",
    )
    .await;
}

fn swap_client_cert(config: &str, rig: &Rig, to: &CertFiles) -> String {
    let client = rig.pki.client_files();
    config
        .replace(
            &format!("cert = \"{}\"", client.cert.display()),
            &format!("cert = \"{}\"", to.cert.display()),
        )
        .replace(
            &format!("key = \"{}\"", client.key.display()),
            &format!("key = \"{}\"", to.key.display()),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_not_yet_valid_is_said_in_words() {
    let rig = Rig::builder()
        .upstream(|config, pki| {
            let now = OffsetDateTime::now_utc();
            let future = pki.issue_leaf(
                "future-server",
                true,
                7101,
                now + time::Duration::days(2),
                now + time::Duration::days(60),
            );
            config.tls_config(pki.server_config_with(&future, false, None))
        })
        .start()
        .await;
    assert_refusal(
        &rig,
        &config(&rig, ""),
        "the server's certificate is not valid until",
        "peer_not_yet_valid",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_on_the_crl_is_refused_until_the_crl_changes() {
    let rig = Rig::builder()
        .upstream(|config, pki| {
            let now = OffsetDateTime::now_utc();
            let server = pki.issue_leaf(
                "listed-server",
                true,
                7201,
                now - time::Duration::days(1),
                now + time::Duration::days(60),
            );
            config.tls_config(pki.server_config_with(&server, false, None))
        })
        .start()
        .await;
    let crl = rig.pki.write_crl("gateway-crl", 1, &[7201, 7202]);
    let cfg = config(&rig, "").replace(
        "timeout_s = 10\n",
        &format!("timeout_s = 10\ncrls = [\"{}\"]\n", crl.display()),
    );
    let gw = assert_refusal(
        &rig,
        &cfg,
        "the server's certificate is revoked (it is on a configured CRL)",
        "peer_revoked",
    )
    .await;
    // The CA lifts the revocation: the gateway reads the new list before its next
    // handshake, without a restart, and delivers.
    rig.pki.write_crl("gateway-crl", 2, &[7202]);
    assert!(
        rig.upstream
            .wait_for_observations(5, Duration::from_secs(30))
            .await,
        "{}",
        tail(&gw.log(), 30)
    );
    assert!(gw.log().contains("CRL files changed: read again"));
}

/// OpenSSL's test server on a free port with `args` (and the test PKI's server
/// certificate), killed on drop.
struct OpenSsl(Child);

impl Drop for OpenSsl {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl_server(rig: &Rig, port: u16, args: &[&str]) -> OpenSsl {
    let server = rig
        .pki
        .server_files(vitalbridge_tests::pki::ServerIdentity::Trusted);
    let child = Command::new("openssl")
        .arg("s_server")
        .arg("-accept")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&server.cert)
        .arg("-key")
        .arg(&server.key)
        .args(args)
        .arg("-www")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server (package openssl: tests/setup.sh)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    OpenSsl(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_offering_only_old_tls_or_weak_ciphers_is_said_so() {
    for (args, words, cause) in [
        (
            &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"][..],
            "TLS 1.0 or 1.1",
            "protocol_version",
        ),
        (
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"][..],
            "weak",
            "handshake_failure",
        ),
    ] {
        let rig = Rig::start().await;
        let port = free_port().expect("port");
        let _server = openssl_server(&rig, port, args);
        let cfg = config(&rig, "").replace(
            &rig.upstream.url(),
            &format!("https://localhost:{port}/fhir"),
        );
        assert_refusal(&rig, &cfg, words, cause).await;
    }
}
