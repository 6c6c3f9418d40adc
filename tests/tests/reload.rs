//! Hot reload of vendor profiles under MQTT load: while readings stream in, a newer signed
//! pack is installed (the gateway switches to it without a restart), then a pack the gateway
//! cannot verify is activated (it keeps the previous profiles and says why). Every reading
//! arrives exactly once; each carries the profile version that decoded it, and the switch
//! happens once, between two messages, never back.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use vitalbridge_tests::fixture::{tail, Rig};
use vitalbridge_tests::gateway::run_cli;
use vitalbridge_tests::mosquitto::publish_qos1;
use vitalbridge_tests::scenario;

const VENDOR_TOPIC: &str = "vitals/acme/ACME-1";
const CANONICAL_TOPIC: &str = "vitals/reload";
/// Messages of each kind per phase; three phases.
const PER_PHASE: u64 = 800;

/// A vendor profile for `vitals/acme/<device>` payloads `{"n", "t", "spo2"}`, at `version`.
fn acme_profile(version: &str) -> String {
    format!(
        r#"id = "json-acme"
version = "{version}"
name = "Acme test oximeter"
documentation = "this test"
topics = ["vitals/acme/+"]
sequence = "/n"

[device]
id = "topic:2"

[time]
path = "/t"
format = "rfc3339"

[[metrics]]
metric = "spo2"
value = "/spo2"
"#
    )
}

fn vendor_payload(n: u64) -> Vec<u8> {
    let t = time::OffsetDateTime::from_unix_timestamp(1_790_000_000 + n as i64)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    format!(r#"{{"n": {n}, "t": "{t}", "spo2": {}}}"#, 94 + n % 5).into_bytes()
}

fn cli(dir: &Path, args: &[&str]) -> String {
    let (code, out, err) = run_cli(dir, args);
    assert_eq!(code, 0, "{args:?}: {err}");
    out
}

/// Makes pack `name` at `version` holding the acme profile at `profile_version`, signed
/// with `key` under `key_id`.
fn make_pack(
    dir: &Path,
    pack: &str,
    version: &str,
    profile_version: &str,
    key: &str,
    key_id: &str,
) {
    let src = dir.join(format!("{pack}-src"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("json-acme.toml"), acme_profile(profile_version)).unwrap();
    cli(
        dir,
        &[
            "profiles",
            "pack",
            src.to_str().unwrap(),
            "--out",
            pack,
            "--name",
            "site-a",
            "--pack-version",
            version,
            "--key-id",
            key_id,
        ],
    );
    cli(dir, &["profiles", "sign", pack, "--key", key]);
}

async fn publish_phase(port: u16, phase: u64) {
    let range = phase * PER_PHASE..(phase + 1) * PER_PHASE;
    let chunks: Vec<u64> = range.clone().step_by(50).collect();
    for start in chunks {
        let end = (start + 50).min(range.end);
        let vendor: Vec<Vec<u8>> = (start..end).map(vendor_payload).collect();
        let canonical: Vec<Vec<u8>> = (start..end).map(|i| scenario::reading(i, 10).0).collect();
        let (a, b) = tokio::join!(
            publish_qos1(port, VENDOR_TOPIC, vendor),
            publish_qos1(port, CANONICAL_TOPIC, canonical)
        );
        assert_eq!(a.unwrap() + b.unwrap(), ((end - start) * 2) as usize);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn audit_kinds(data: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(data.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_installed_under_load_switches_profiles_between_messages_and_loses_nothing() {
    let rig = Rig::start().await;
    let dir = rig.dir.path();
    let k1 = cli(dir, &["profiles", "keygen", "k1.pk8"])
        .trim()
        .to_owned();
    let k2 = cli(dir, &["profiles", "keygen", "k2.pk8"])
        .trim()
        .to_owned();
    let trusted = |keys: &[(&str, &str)]| {
        let mut t = String::from("[profiles]\nreload_check_s = 1\n");
        for (id, public) in keys {
            t.push_str(&format!(
                "[[profiles.trusted_keys]]\nid = \"{id}\"\ned25519 = \"{public}\"\n"
            ));
        }
        t
    };
    // The gateway trusts k1 only; the technician's CLI config (cli.toml) trusts k2 as well,
    // so it can activate a pack the gateway will refuse to load.
    let data = rig.data_dir();
    std::fs::write(
        dir.join("cli.toml"),
        format!(
            "[gateway]\nid = \"e2e-gateway\"\ndata_dir = \"{}\"\n{}",
            data.display(),
            trusted(&[("k1", &k1), ("k2", &k2)])
        ),
    )
    .unwrap();
    make_pack(dir, "pack-1", "1.0", "1", "k1.pk8", "k1");
    make_pack(dir, "pack-2", "2.0", "2", "k1.pk8", "k1");
    make_pack(dir, "pack-3", "3.0", "3", "k2.pk8", "k2");
    cli(dir, &["profiles", "-c", "cli.toml", "install", "pack-1"]);

    let gw = rig.start_subscribed(&rig.mqtt_to_fhir(&trusted(&[("k1", &k1)])));
    assert!(
        gw.log().contains("vendor JSON profiles loaded"),
        "{}",
        tail(&gw.log(), 20)
    );
    let port = rig.broker.port();

    publish_phase(port, 0).await;
    // Phase 0 decoded (and delivered) before anything is installed: all of it by version 1.
    assert!(
        rig.upstream
            .wait_for_observations((2 * PER_PHASE) as usize, Duration::from_secs(120))
            .await,
        "phase 0 not delivered\n{}",
        tail(&gw.log(), 30)
    );
    // Phase 1: pack 2.0 is installed while readings stream in.
    let (_, installed) = tokio::join!(publish_phase(port, 1), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let out = cli(dir, &["profiles", "-c", "cli.toml", "install", "pack-2"]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !audit_kinds(&data)
            .iter()
            .any(|l| l["kind"] == "profiles_reloaded" && l["pack"] == "site-a 2.0")
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no reload\n{}",
                tail(&gw.log(), 30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        out
    });
    assert!(installed.contains("site-a 2.0"), "{installed}");
    // Phase 2: a pack signed with a key the gateway does not trust becomes `current`.
    tokio::join!(publish_phase(port, 2), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cli(dir, &["profiles", "-c", "cli.toml", "install", "pack-3"]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !audit_kinds(&data)
            .iter()
            .any(|l| l["kind"] == "profiles_reload_failed")
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no failed reload\n{}",
                tail(&gw.log(), 30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let failed = audit_kinds(&data)
        .into_iter()
        .find(|l| l["kind"] == "profiles_reload_failed")
        .unwrap();
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("does not trust"),
        "{failed}"
    );
    assert!(gw.log().contains("previous profiles stay in use"));

    let total = (3 * PER_PHASE * 2) as usize;
    assert!(
        rig.upstream
            .wait_for_observations(total, Duration::from_secs(180))
            .await,
        "only {} of {total} arrived\n{}",
        rig.upstream.observation_count(),
        tail(&gw.log(), 40)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let observations = rig.upstream.observations();
    assert_eq!(observations.len(), total, "each reading once");
    assert!(rig.upstream.duplicate_identifiers().is_empty());

    // Vendor readings by device time: the profile version switches once, from 1 to 2.
    let mut vendor: Vec<(String, String)> = Vec::new();
    let mut tags: HashMap<String, usize> = HashMap::new();
    for o in &observations {
        let tag = o["meta"]["tag"][0]["code"]
            .as_str()
            .unwrap_or("none")
            .to_owned();
        *tags.entry(tag.clone()).or_default() += 1;
        if tag.starts_with("json-acme@") {
            vendor.push((o["effectiveDateTime"].as_str().unwrap().to_owned(), tag));
        }
    }
    assert_eq!(vendor.len(), (3 * PER_PHASE) as usize, "{tags:?}");
    assert_eq!(
        tags.get("canonical-json-v1"),
        Some(&((3 * PER_PHASE) as usize)),
        "{tags:?}"
    );
    assert!(
        !tags.contains_key("json-acme@3"),
        "the untrusted pack decoded nothing: {tags:?}"
    );
    vendor.sort();
    let switches = vendor.windows(2).filter(|w| w[0].1 != w[1].1).count();
    assert_eq!(switches, 1, "one switch, never back: {tags:?}");
    assert_eq!(vendor.first().unwrap().1, "json-acme@1");
    assert_eq!(vendor.last().unwrap().1, "json-acme@2");
    let ones = vendor.iter().filter(|v| v.1 == "json-acme@1").count() as u64;
    assert!(
        (PER_PHASE..=2 * PER_PHASE).contains(&ones),
        "the switch happened during phase 1: {ones} decoded by version 1"
    );
}
