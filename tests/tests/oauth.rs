//! OAuth 2.0 / SMART Backend Services against a real authorization server (`oidc-provider`)
//! and a FHIR front end that checks every token against the provider's JWKS
//! ([`vitalbridge_tests::oauth`]), in front of the project's test upstream.
//!
//! Every case publishes readings over MQTT and reconciles what the upstream stored exactly
//! (each reading once, right value), so "nothing lost, nothing doubled" is checked, not
//! assumed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vitalbridge_tests::fixture::{reconcile, tail, Rig, DEVICES, TOPIC};
use vitalbridge_tests::gateway::{run_cli, wait_for_pending, GatewayProcess};
use vitalbridge_tests::mosquitto::publish_qos1;
use vitalbridge_tests::oauth::AuthServer;
use vitalbridge_tests::scenario;

const SCOPE: &str = "system/Observation.c system/Device.c system/Patient.rs";
const WAIT: Duration = Duration::from_secs(30);
const CLIENT_SECRET: &str = "Zq8-client-secret-of-forty-characters-xx";
const STATIC_TOKEN: &str = "static-bearer-token-7f3a9c";

/// A private key made with openssl, owner-only, as the docs tell an operator to.
fn openssl_key(dir: &Path, name: &str, algorithm: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let out = Command::new("openssl")
        .args(["genpkey", "-out"])
        .arg(&path)
        .args(algorithm)
        .output()
        .expect("run openssl (tests/setup.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn rsa_key(dir: &Path) -> PathBuf {
    openssl_key(
        dir,
        "smart-rsa.pem",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    )
}

fn ec_key(dir: &Path) -> PathBuf {
    openssl_key(
        dir,
        "smart-ec.pem",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
    )
}

fn secret_file(dir: &Path, name: &str, value: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The gateway config: MQTT in, the front end's FHIR base out with `auth` as the
/// `[uplink.fhir.auth]` table, `/readyz` turning not-ready after one second of failure.
fn config(rig: &Rig, auth: &AuthServer, table: &str) -> String {
    let ops = vitalbridge_tests::ops::ops_table(rig.ops_port, "ready_staleness_s = 1");
    scenario::mqtt_to_fhir(
        &rig.data_dir(),
        rig.broker.port(),
        &auth.fhir,
        &rig.pki,
        &format!("\n[uplink.fhir.auth]\n{table}{ops}"),
    )
}

fn write_config(rig: &Rig, config: &str) {
    std::fs::write(rig.dir.path().join("gateway.toml"), config).unwrap();
}

/// `vitalbridge uplink jwks` for the config in the rig's directory: the client's key set.
fn jwks(rig: &Rig, config: &str) -> Value {
    write_config(rig, config);
    let (code, out, err) = run_cli(rig.dir.path(), &["uplink", "jwks", "-c", "gateway.toml"]);
    assert_eq!(code, 0, "{out}{err}");
    let jwks: Value = serde_json::from_str(&out).unwrap();
    assert!(jwks["keys"][0].get("d").is_none(), "a private part: {jwks}");
    jwks
}

/// Publishes readings `from..to` of the shared scenario.
async fn publish(rig: &Rig, from: u64, to: u64) {
    let payloads: Vec<Vec<u8>> = (from..to)
        .map(|i| scenario::reading(i, DEVICES).0)
        .collect();
    publish_qos1(rig.broker.port(), TOPIC, payloads)
        .await
        .unwrap();
}

async fn delivered(rig: &Rig, n: usize, gw: &GatewayProcess, auth: &AuthServer) {
    assert!(
        rig.upstream.wait_for_observations(n, WAIT).await,
        "{} of {n} Observations arrived; auth server: {}\n{}",
        rig.upstream.observations().len(),
        auth.stats(),
        tail(&gw.log(), 30)
    );
}

/// Waits until `/readyz` answers 503 with `needle` in its body; returns the body.
async fn not_ready_because(rig: &Rig, needle: &str, gw: &GatewayProcess) -> String {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        last = rig.readyz().await;
        if let Some((503, body)) = &last {
            if body.contains(needle) {
                return body.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "/readyz never said {needle:?}; last {last:?}\n{}",
        tail(&gw.log(), 30)
    );
}

/// The failure is counted under `cause` in `vitalbridge_uplink_auth_failures_total` and
/// written to the audit log as an `auth_failure` with that cause (and no secret).
async fn auth_failure_recorded(rig: &Rig, cause: &str, secrets: &[&str]) {
    let deadline = Instant::now() + WAIT;
    let mut count = 0.0;
    while Instant::now() < deadline {
        let resp = vitalbridge_tests::ops::get(rig.ops_addr(), "/metrics")
            .await
            .expect("GET /metrics");
        let text = String::from_utf8(resp.body.to_vec()).expect("utf-8");
        count = vitalbridge_tests::ops::parse_prometheus(&text)
            .expect("metrics parse")
            .value(
                "vitalbridge_uplink_auth_failures_total",
                &[("uplink", "fhir"), ("cause", cause)],
            )
            .unwrap_or(0.0);
        if count >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(count >= 1.0, "auth failures with cause {cause}: {count}");
    let audit = std::fs::read_to_string(rig.data_dir().join("audit.log")).unwrap_or_default();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"kind\":\"auth_failure\"")
                && l.contains("\"uplink\":\"fhir\"")
                && l.contains(&format!("\"cause\":\"{cause}\""))),
        "no auth_failure with cause {cause} in the audit log:\n{audit}"
    );
    assert_no_secrets(&[&audit], secrets);
}

/// Nothing secret in what the gateway wrote or printed.
fn assert_no_secrets(texts: &[&str], secrets: &[&str]) {
    for text in texts {
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "a secret reached the output:\n{text}"
            );
        }
        assert!(!text.contains("eyJ"), "a JWT reached the output:\n{text}");
    }
}

struct Case {
    name: &'static str,
    table: String,
    client: Option<Value>,
    secrets: Vec<String>,
    /// Whether the token endpoint must have been discovered (`None`: no token endpoint).
    discovered: Option<bool>,
    /// Whether the gateway presents its client certificate too.
    mutual_tls: bool,
}

/// `config` without `[uplink.fhir]`'s client certificate and key: the token alone.
fn without_client_certificate(config: &str, rig: &Rig) -> String {
    let client = rig.pki.client_files();
    let cert = format!("cert = \"{}\"", client.cert.display());
    let key = format!("key = \"{}\"", client.key.display());
    let kept: Vec<&str> = config.lines().filter(|l| *l != cert && *l != key).collect();
    kept.join("\n")
}

async fn happy_path(case: impl FnOnce(&Rig, &AuthServer) -> Case) {
    let rig = Rig::start().await;
    let auth = AuthServer::start(&rig.pki, &rig.upstream.url(), &[STATIC_TOKEN]);
    let case = case(&rig, &auth);
    let mut config = config(&rig, &auth, &case.table);
    if !case.mutual_tls {
        config = without_client_certificate(&config, &rig);
        assert!(!config.contains(&rig.pki.client_files().key.display().to_string()));
    }
    let mut hosted = false;
    if let Some(mut client) = case.client {
        if client.get("jwks").is_some() {
            client["jwks"] = jwks(&rig, &config);
        }
        if let Some(name) = client["jwks_uri"]
            .as_str()
            .and_then(|u| u.rsplit('/').next())
        {
            auth.command(json!({"cmd": "host_jwks", "name": name, "jwks": jwks(&rig, &config)}));
            hosted = true;
        }
        auth.add_client(client);
    }
    write_config(&rig, &config);
    let (code, out, err) = run_cli(rig.dir.path(), &["uplink", "test", "-c", "gateway.toml"]);
    assert_eq!(code, 0, "{}: uplink test\n{out}{err}", case.name);
    assert!(out.contains("ok: ready"), "{out}");
    assert!(
        out.contains("ok: CapabilityStatement read: FHIR 4.0"),
        "{out}"
    );
    let gw = rig.start_subscribed(&config);
    publish(&rig, 0, 60).await;
    delivered(&rig, 60, &gw, &auth).await;
    reconcile(&rig.upstream, 60, &gw.log()).unwrap();
    let secrets: Vec<&str> = case.secrets.iter().map(String::as_str).collect();
    assert_no_secrets(&[&gw.log(), &out, &err], &secrets);
    let stats = auth.stats();
    assert_eq!(stats["fhir_401"], 0, "{}: {stats}", case.name);
    assert_eq!(stats["token_refused"], 0, "{}: {stats}", case.name);
    if hosted {
        assert!(
            stats["jwks_fetches"].as_u64().unwrap() >= 1,
            "{}: the provider never fetched the key set at the jku: {stats}",
            case.name
        );
    }
    if let Some(discovered) = case.discovered {
        assert_eq!(
            stats["discovery"].as_u64().unwrap() > 0,
            discovered,
            "{}: {stats}",
            case.name
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn private_key_jwt_rs384_with_jku_and_a_configured_token_endpoint() {
    happy_path(|rig, auth| {
        let key = rsa_key(rig.dir.path());
        Case {
            name: "RS384",
            table: format!(
                "method = \"private_key_jwt\"\nclient_id = \"gw-rs384\"\nkey = \"{}\"\nalgorithm = \"RS384\"\n\
                 jku = \"{jku}\"\ntoken_endpoint = \"{}\"\nscope = \"{SCOPE}\"\n",
                key.display(),
                auth.token_endpoint,
                jku = auth.jwks_url("gw-rs384"),
            ),
            // Registered by its jku: the provider fetches the key set from there.
            client: Some(json!({"client_id": "gw-rs384", "token_endpoint_auth_method": "private_key_jwt",
                "token_endpoint_auth_signing_alg": "RS384", "jwks_uri": auth.jwks_url("gw-rs384")})),
            secrets: vec![],
            discovered: Some(false),
            mutual_tls: true,
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn private_key_jwt_es384_with_the_token_endpoint_discovered() {
    happy_path(|rig, _| {
        let key = ec_key(rig.dir.path());
        Case {
            name: "ES384",
            table: format!(
                "method = \"private_key_jwt\"\nclient_id = \"gw-es384\"\nkey = \"{}\"\nscope = \"{SCOPE}\"\n",
                key.display()
            ),
            client: Some(json!({"client_id": "gw-es384", "token_endpoint_auth_method": "private_key_jwt",
                "token_endpoint_auth_signing_alg": "ES384", "jwks": {}})),
            secrets: vec![],
            discovered: Some(true),
            mutual_tls: true,
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_secret_basic_and_post() {
    for method in ["client_secret_basic", "client_secret_post"] {
        happy_path(|rig, _| {
            let secret = secret_file(rig.dir.path(), "client-secret", CLIENT_SECRET);
            Case {
                name: method,
                table: format!(
                    "method = \"{method}\"\nclient_id = \"gw-{method}\"\nsecret_file = \"{}\"\nscope = \"{SCOPE}\"\n",
                    secret.display()
                ),
                client: Some(json!({"client_id": format!("gw-{method}"), "client_secret": CLIENT_SECRET,
                    "token_endpoint_auth_method": method})),
                secrets: vec![CLIENT_SECRET.into()],
                discovered: Some(true),
                mutual_tls: true,
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_static_token_from_a_file_without_mutual_tls() {
    happy_path(|rig, _| {
        let token = secret_file(rig.dir.path(), "fhir-token", STATIC_TOKEN);
        Case {
            name: "static",
            table: format!(
                "method = \"static_token\"\ntoken_file = \"{}\"\n",
                token.display()
            ),
            client: None,
            secrets: vec![STATIC_TOKEN.into()],
            discovered: None,
            mutual_tls: false,
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_static_token_file_is_read_again_when_the_server_refuses_the_old_token() {
    const NEW_TOKEN: &str = "static-bearer-token-rotated-4b21e0";
    let rig = Rig::start().await;
    let auth = AuthServer::start(&rig.pki, &rig.upstream.url(), &[STATIC_TOKEN]);
    let token = secret_file(rig.dir.path(), "fhir-token", STATIC_TOKEN);
    let config = without_client_certificate(
        &config(
            &rig,
            &auth,
            &format!(
                "method = \"static_token\"\ntoken_file = \"{}\"\n",
                token.display()
            ),
        ),
        &rig,
    );
    let gw = rig.start_subscribed(&config);
    publish(&rig, 0, 20).await;
    delivered(&rig, 20, &gw, &auth).await;
    // The server now takes only the new token; the file still holds the old one.
    auth.command(json!({"cmd": "static_tokens", "tokens": [NEW_TOKEN]}));
    publish(&rig, 20, 40).await;
    let body = not_ready_because(&rig, "replace the token file", &gw).await;
    assert!(body.contains("fhir-token"), "{body}");
    auth_failure_recorded(&rig, "static_token_refused", &[STATIC_TOKEN, NEW_TOKEN]).await;
    let stats = wait_for_pending(rig.dir.path(), 20, WAIT);
    assert!(stats.contains("pending: 20\n"), "{stats}");
    // The operator replaces the file (owner-only, as before); no restart.
    std::fs::write(&token, format!("{NEW_TOKEN}\n")).unwrap();
    delivered(&rig, 40, &gw, &auth).await;
    reconcile(&rig.upstream, 40, &gw.log()).unwrap();
    assert!(
        gw.log().contains("the static token file changed"),
        "{}",
        tail(&gw.log(), 20)
    );
    assert_no_secrets(&[&gw.log()], &[STATIC_TOKEN, NEW_TOKEN]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_secret_changed_at_the_server_and_then_in_its_file_needs_no_restart() {
    const NEW_SECRET: &str = "Zq8-the-rotated-client-secret-of-40-chars";
    let rig = Rig::start().await;
    let auth = AuthServer::start(&rig.pki, &rig.upstream.url(), &[]);
    let secret = secret_file(rig.dir.path(), "client-secret", CLIENT_SECRET);
    let config = config(
        &rig,
        &auth,
        &format!(
            "method = \"client_secret_post\"\nclient_id = \"gw-rotating\"\nsecret_file = \"{}\"\n\
             scope = \"{SCOPE}\"\n",
            secret.display()
        ),
    );
    let client = |secret: &str| {
        json!({"client_id": "gw-rotating", "client_secret": secret,
            "token_endpoint_auth_method": "client_secret_post"})
    };
    auth.add_client(client(CLIENT_SECRET));
    auth.command(json!({"cmd": "ttl", "seconds": 2}));
    let gw = rig.start_subscribed(&config);
    publish(&rig, 0, 20).await;
    delivered(&rig, 20, &gw, &auth).await;
    // The server's operator issues a new secret; the file still holds the old one.
    auth.add_client(client(NEW_SECRET));
    auth.command(json!({"cmd": "invalidate_tokens"}));
    publish(&rig, 20, 40).await;
    not_ready_because(&rig, "invalid_client", &gw).await;
    auth_failure_recorded(&rig, "token_refused", &[CLIENT_SECRET, NEW_SECRET]).await;
    let stats = wait_for_pending(rig.dir.path(), 20, WAIT);
    assert!(stats.contains("pending: 20\n"), "{stats}");
    // The technician writes the new secret into the file; no restart.
    std::fs::write(&secret, format!("{NEW_SECRET}\n")).unwrap();
    delivered(&rig, 40, &gw, &auth).await;
    reconcile(&rig.upstream, 40, &gw.log()).unwrap();
    assert!(
        gw.log().contains("the client secret file changed"),
        "{}",
        tail(&gw.log(), 20)
    );
    assert_no_secrets(&[&gw.log()], &[CLIENT_SECRET, NEW_SECRET]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_rotation_published_with_uplink_jwks_keep_loses_nothing() {
    let rig = Rig::start().await;
    let auth = AuthServer::start(&rig.pki, &rig.upstream.url(), &[]);
    let jku = auth.jwks_url("gw-rot");
    let curve = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"];
    let old_key = openssl_key(rig.dir.path(), "smart-old.pem", &curve);
    let new_key = openssl_key(rig.dir.path(), "smart-new.pem", &curve);
    let with_key = |key: &Path| {
        config(
            &rig,
            &auth,
            &format!(
                "method = \"private_key_jwt\"\nclient_id = \"gw-rot\"\nkey = \"{}\"\n\
                 algorithm = \"ES384\"\njku = \"{jku}\"\nscope = \"{SCOPE}\"\n",
                key.display()
            ),
        )
    };
    let (old_config, new_config) = (with_key(&old_key), with_key(&new_key));
    let client = json!({"client_id": "gw-rot", "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "ES384", "jwks_uri": jku});

    // Before: the old key alone is published.
    let old_set = jwks(&rig, &old_config);
    auth.command(json!({"cmd": "host_jwks", "name": "gw-rot", "jwks": old_set}));
    auth.add_client(client.clone());
    let mut gw = rig.start_subscribed(&old_config);
    publish(&rig, 0, 20).await;
    delivered(&rig, 20, &gw, &auth).await;

    // The technician publishes the new key beside the old one, as the docs say.
    let published = rig.dir.path().join("published-jwks.json");
    std::fs::write(&published, old_set.to_string()).unwrap();
    write_config(&rig, &new_config);
    let keep = || {
        run_cli(
            rig.dir.path(),
            &[
                "uplink",
                "jwks",
                "-c",
                "gateway.toml",
                "--keep",
                "published-jwks.json",
            ],
        )
    };
    let (code, out, err) = keep();
    assert_eq!(code, 0, "{out}{err}");
    let both: Value = serde_json::from_str(&out).unwrap();
    let kids: Vec<&str> = both["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    let new_kid = jwks(&rig, &new_config)["keys"][0]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let old_kid = old_set["keys"][0]["kid"].as_str().unwrap();
    assert_eq!(kids, [new_kid.as_str(), old_kid], "{both}");
    auth.command(json!({"cmd": "host_jwks", "name": "gw-rot", "jwks": both}));
    // The server's cache of the client's key set runs out (oidc-provider keeps one at least
    // 60 s; emulated here by a changed registration, for which it fetches the set anew),
    // then the gateway switches keys.
    let mut renewed = client.clone();
    renewed["client_name"] = json!("hub after key rotation");
    auth.add_client(renewed);
    gw.kill9();
    write_config(&rig, &new_config);
    gw.restart().expect("restart with the new key");
    publish(&rig, 20, 40).await;
    delivered(&rig, 40, &gw, &auth).await;
    reconcile(&rig.upstream, 40, &gw.log()).unwrap();
    let stats = auth.stats();
    assert_eq!(stats["token_refused"], 0, "{stats}");
    assert!(stats["jwks_fetches"].as_u64().unwrap() >= 2, "{stats}");

    // A key set holding a private key is refused, and nothing is printed.
    std::fs::write(
        &published,
        json!({"keys": [{"kty": "EC", "kid": "x", "crv": "P-384", "x": "a", "y": "b", "d": "c"}]})
            .to_string(),
    )
    .unwrap();
    let (code, out, err) = keep();
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty() && err.contains("private"), "{err}");
}

/// A rig, the auth servers and a running gateway with an ES384 client (`gw-1`), discovery.
async fn running(
    before_start: impl FnOnce(&AuthServer),
) -> (Rig, AuthServer, GatewayProcess, Value) {
    let rig = Rig::start().await;
    let auth = AuthServer::start(&rig.pki, &rig.upstream.url(), &[]);
    let key = ec_key(rig.dir.path());
    let config = config(
        &rig,
        &auth,
        &format!(
            "method = \"private_key_jwt\"\nclient_id = \"gw-1\"\nkey = \"{}\"\nscope = \"{SCOPE}\"\n",
            key.display()
        ),
    );
    let client = json!({"client_id": "gw-1", "token_endpoint_auth_method": "private_key_jwt",
        "jwks": jwks(&rig, &config)});
    auth.add_client(client.clone());
    before_start(&auth);
    let gw = rig.start_subscribed(&config);
    (rig, auth, gw, client)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_revoked_mid_run_is_renewed_once_and_nothing_is_lost_or_doubled() {
    let (rig, auth, gw, _) = running(|_| {}).await;
    publish(&rig, 0, 100).await;
    delivered(&rig, 100, &gw, &auth).await;
    assert_eq!(auth.count("token_requests"), 1);
    auth.command(json!({"cmd": "invalidate_tokens"}));
    publish(&rig, 100, 200).await;
    delivered(&rig, 200, &gw, &auth).await;
    reconcile(&rig.upstream, 200, &gw.log()).unwrap();
    let stats = auth.stats();
    // Both workers may have sent with the revoked token; one new token serves both.
    assert!(
        (1..=2).contains(&stats["fhir_401"].as_u64().unwrap()),
        "{stats}"
    );
    assert_eq!(stats["token_requests"], 2, "{stats}");
    assert!(
        gw.log().contains("renewing the token once"),
        "{}",
        tail(&gw.log(), 20)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn short_lived_tokens_are_renewed_before_they_expire() {
    let (rig, auth, gw, _) = running(|auth| {
        auth.command(json!({"cmd": "ttl", "seconds": 4}));
    })
    .await;
    for round in 0..8u64 {
        publish(&rig, round * 10, round * 10 + 10).await;
        delivered(&rig, (round as usize + 1) * 10, &gw, &auth).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    reconcile(&rig.upstream, 80, &gw.log()).unwrap();
    let stats = auth.stats();
    assert_eq!(
        stats["fhir_401"], 0,
        "a token was used after it expired: {stats}"
    );
    assert!(stats["token_requests"].as_u64().unwrap() >= 3, "{stats}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_client_keeps_its_rows_buffered_and_readyz_says_why() {
    let (rig, auth, gw, client) = running(|_| {}).await;
    publish(&rig, 0, 20).await;
    delivered(&rig, 20, &gw, &auth).await;
    auth.command(json!({"cmd": "revoke_client", "client_id": "gw-1"}));
    publish(&rig, 20, 50).await;
    let body = not_ready_because(&rig, "invalid_client", &gw).await;
    assert!(body.contains("check client_id"), "{body}");
    auth_failure_recorded(&rig, "token_refused", &[]).await;
    // The status page's document names the cause too.
    let status = vitalbridge_tests::ops::get(rig.ops_addr(), "/status.json")
        .await
        .unwrap();
    let status: Value = serde_json::from_slice(&status.body).unwrap();
    let message = status["uplinks"][0]["last_error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("invalid_client") && message.contains("check client_id"),
        "{status}"
    );
    assert_no_secrets(&[&status.to_string(), &gw.log()], &[]);
    let stats = wait_for_pending(rig.dir.path(), 30, WAIT);
    assert!(stats.contains("pending: 30\n"), "{stats}");
    assert_eq!(rig.upstream.observations().len(), 20);
    auth.command(
        json!({"cmd": "restore_client", "client": vitalbridge_tests::oauth::with_defaults(client)}),
    );
    delivered(&rig, 50, &gw, &auth).await;
    reconcile(&rig.upstream, 50, &gw.log()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_for_another_audience_is_refused_and_nothing_is_deleted() {
    let (rig, auth, gw, _) = running(|auth| {
        auth.command(json!({"cmd": "audience", "value": "https://other.example/fhir"}));
    })
    .await;
    publish(&rig, 0, 30).await;
    let body = not_ready_because(&rig, "refused the access token (HTTP 401", &gw).await;
    assert!(body.contains("audience"), "{body}");
    auth_failure_recorded(&rig, "server_401", &[]).await;
    let (code, out, _) = run_cli(rig.dir.path(), &["uplink", "test", "-c", "gateway.toml"]);
    assert_eq!(code, 5, "{out}");
    assert!(
        out.contains("FAIL: GET metadata answered HTTP 401"),
        "{out}"
    );
    assert!(rig.upstream.observations().is_empty());
    let stats = wait_for_pending(rig.dir.path(), 30, WAIT);
    assert!(stats.contains("pending: 30\n"), "{stats}");
    auth.command(json!({"cmd": "audience"}));
    delivered(&rig, 30, &gw, &auth).await;
    reconcile(&rig.upstream, 30, &gw.log()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn clock_skew_within_the_assertions_life_works_and_beyond_it_is_named() {
    // The authorization server's (and front end's) clock two minutes ahead: the gateway's
    // assertion is still valid there, and token lifetimes count from expires_in.
    let (rig, auth, gw, _) = running(|auth| {
        auth.command(json!({"cmd": "clock", "offset_s": 120}));
    })
    .await;
    publish(&rig, 0, 30).await;
    delivered(&rig, 30, &gw, &auth).await;
    // Ten minutes ahead: the five-minute assertion has expired on arrival.
    auth.command(json!({"cmd": "clock", "offset_s": 600}));
    auth.command(json!({"cmd": "invalidate_tokens"}));
    publish(&rig, 30, 60).await;
    let body = not_ready_because(&rig, "invalid_client", &gw).await;
    assert!(body.contains("clock"), "{body}");
    let (code, out, _) = run_cli(rig.dir.path(), &["uplink", "test", "-c", "gateway.toml"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("invalid_client"), "{out}");
    auth.command(json!({"cmd": "clock", "offset_s": 0}));
    delivered(&rig, 60, &gw, &auth).await;
    reconcile(&rig.upstream, 60, &gw.log()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_endpoint_that_is_down_keeps_rows_buffered_until_it_returns() {
    let (rig, auth, gw, _) = running(|auth| {
        auth.command(json!({"cmd": "token_endpoint", "up": false}));
    })
    .await;
    publish(&rig, 0, 40).await;
    let body = not_ready_because(&rig, "unreachable", &gw).await;
    assert!(body.contains("token endpoint"), "{body}");
    auth_failure_recorded(&rig, "token_endpoint_unreachable", &[]).await;
    let stats = wait_for_pending(rig.dir.path(), 40, WAIT);
    assert!(stats.contains("pending: 40\n"), "{stats}");
    assert!(rig.upstream.observations().is_empty());
    auth.command(json!({"cmd": "token_endpoint", "up": true}));
    delivered(&rig, 40, &gw, &auth).await;
    reconcile(&rig.upstream, 40, &gw.log()).unwrap();
    let deadline = Instant::now() + WAIT;
    while rig.readyz().await.map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "/readyz stayed not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_without_the_scope_to_create_observations_is_named() {
    let rig = Rig::start().await;
    let auth = AuthServer::start(&rig.pki, &rig.upstream.url(), &[]);
    let secret = secret_file(rig.dir.path(), "client-secret", CLIENT_SECRET);
    let config = config(
        &rig,
        &auth,
        &format!(
            "method = \"client_secret_basic\"\nclient_id = \"gw-narrow\"\nsecret_file = \"{}\"\n\
             scope = \"system/Device.c\"\n",
            secret.display()
        ),
    );
    auth.add_client(
        json!({"client_id": "gw-narrow", "client_secret": CLIENT_SECRET,
        "token_endpoint_auth_method": "client_secret_basic"}),
    );
    let gw = rig.start_subscribed(&config);
    publish(&rig, 0, 20).await;
    let body = not_ready_because(&rig, "HTTP 403", &gw).await;
    assert!(
        body.contains("insufficient_scope") && body.contains("uplink.fhir.auth.scope"),
        "{body}"
    );
    auth_failure_recorded(&rig, "server_403", &[CLIENT_SECRET]).await;
    let stats = wait_for_pending(rig.dir.path(), 20, WAIT);
    assert!(stats.contains("pending: 20\n"), "{stats}");
    assert!(rig.upstream.observations().is_empty());
    assert_no_secrets(&[&gw.log()], &[CLIENT_SECRET]);
}

#[test]
fn uplink_test_says_when_the_server_cannot_be_reached() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = vitalbridge_tests::pki::TestPki::generate();
    let token = secret_file(d, "token", STATIC_TOKEN);
    let port = vitalbridge_tests::mosquitto::free_port().unwrap();
    let config = scenario::mqtt_to_fhir(
        &d.join("data"),
        1883,
        &format!("https://127.0.0.1:{port}/fhir"),
        &pki,
        &format!(
            "\n[uplink.fhir.auth]\nmethod = \"static_token\"\ntoken_file = \"{}\"\n",
            token.display()
        ),
    );
    std::fs::write(d.join("gateway.toml"), config).unwrap();
    let (code, out, err) = run_cli(d, &["uplink", "test", "-c", "gateway.toml"]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(
        out.contains("FAIL: cannot read https://127.0.0.1:"),
        "{out}"
    );
    assert_no_secrets(&[&out, &err], &[STATIC_TOKEN]);
}

#[test]
fn check_config_names_every_bad_auth_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = vitalbridge_tests::pki::TestPki::generate();
    let open_key = rsa_key(d);
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let p256 = openssl_key(
        d,
        "p256.pem",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let empty = secret_file(d, "empty", "");
    let write = |table: &str| {
        let config = scenario::mqtt_to_fhir(
            &d.join("data"),
            1883,
            "https://127.0.0.1:1/fhir",
            &pki,
            &format!("\n[uplink.fhir.auth]\n{table}"),
        );
        std::fs::write(d.join("gateway.toml"), config).unwrap();
        let (code, out, err) = run_cli(d, &["check-config", "-c", "gateway.toml"]);
        assert_eq!(code, 2, "{out}{err}");
        err
    };
    let err = write(&format!(
        "method = \"private_key_jwt\"\nkey = \"{}\"\ntoken_endpoint = \"http://auth.example/token\"\nsecret_file = \"x\"\n",
        open_key.display()
    ));
    assert!(
        err.contains("uplink.fhir.auth.client_id: is required with method = \"private_key_jwt\""),
        "{err}"
    );
    assert!(
        err.contains("uplink.fhir.auth.key: private key") && err.contains("chmod 600"),
        "{err}"
    );
    assert!(
        err.contains("uplink.fhir.auth.token_endpoint: scheme \"http\" is not https"),
        "{err}"
    );
    assert!(
        err.contains("uplink.fhir.auth.secret_file: is not used with method"),
        "{err}"
    );
    let err = write(&format!(
        "method = \"private_key_jwt\"\nclient_id = \"c\"\nkey = \"{}\"\n",
        p256.display()
    ));
    assert!(
        err.contains("uplink.fhir.auth.key") && err.contains("P-384"),
        "{err}"
    );
    let err = write(&format!(
        "method = \"private_key_jwt\"\nclient_id = \"c\"\nkey = \"{}\"\nalgorithm = \"RS384\"\n",
        ec_key(d).display()
    ));
    assert!(err.contains("algorithm RS384 needs an RSA key"), "{err}");
    let err = write(&format!(
        "method = \"static_token\"\ntoken_file = \"{}\"\n",
        empty.display()
    ));
    assert!(
        err.contains("uplink.fhir.auth.token_file") && err.contains("is empty"),
        "{err}"
    );
    let err = write("method = \"password\"\n");
    assert!(err.contains("uplink.fhir.auth.method"), "{err}");
    // Neither a client certificate nor a token: refused.
    let config =
        scenario::mqtt_to_fhir(&d.join("data"), 1883, "https://127.0.0.1:1/fhir", &pki, "");
    let config: Vec<&str> = config
        .lines()
        .filter(|l| !l.starts_with("cert = ") && !l.starts_with("key = "))
        .collect();
    std::fs::write(d.join("gateway.toml"), config.join("\n")).unwrap();
    let (code, out, err) = run_cli(d, &["check-config", "-c", "gateway.toml"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("uplink.fhir: give cert and key (mutual TLS), or an [uplink.fhir.auth] table"),
        "{err}"
    );
}
