//! A damaged buffer database, with the real binary: truncated, scribbled, zeroed header,
//! random bytes, 0 bytes. Each is quarantined at start (the gateway runs on with a new
//! buffer and says so), `vitalbridge queue salvage` recovers every readable reading, and
//! those are delivered to the FHIR server exactly once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vitalbridge_tests::fixture::Rig;
use vitalbridge_tests::gateway::{run_cli, wait_for_pending, GatewayProcess};
use vitalbridge_tests::mosquitto::publish_qos1;
use vitalbridge_tests::scenario::{self, Expected};
use vitalbridge_tests::upstream::Fault;

const READINGS: u64 = 600;

/// How a test damages `buffer.db`, and how much of it must come back.
enum Expect {
    /// Every reading.
    All,
    /// At least this many (the damage took the rest).
    AtLeast(u64),
    /// Nothing is left to read.
    Nothing,
}

fn the_quarantine_folder(data: &Path) -> PathBuf {
    let folders: Vec<PathBuf> = std::fs::read_dir(data.join("quarantine"))
        .expect("a quarantine folder")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(folders.len(), 1, "{folders:?}");
    folders.into_iter().next().unwrap()
}

/// The number after `label` in the salvage command's output.
fn figure(out: &str, label: &str) -> u64 {
    out.split(label)
        .next()
        .and_then(|before| before.split_whitespace().last())
        .map(|n| n.trim_start_matches('('))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{label}` figure in {out:?}"))
}

async fn damaged_case(damage: impl FnOnce(&Path), expect: Expect) {
    let rig = Rig::start().await;
    let (broker, upstream, dir, data) = (&rig.broker, &rig.upstream, &rig.dir, rig.data_dir());
    // Down until the salvage: everything stays in the buffer.
    upstream
        .faults()
        .push_n(Fault::ServiceUnavailable, 1_000_000);
    let mut gw = rig.start_subscribed(&rig.mqtt_to_fhir(""));
    let (payloads, expected): (Vec<Vec<u8>>, Vec<Expected>) =
        (0..READINGS).map(|i| scenario::reading(i, 10)).unzip();
    publish_qos1(broker.port(), "vitals/d", payloads)
        .await
        .unwrap();
    let stats = wait_for_pending(dir.path(), READINGS, Duration::from_secs(30));
    assert!(stats.contains(&format!("pending: {READINGS}")), "{stats}");
    assert!(gw.terminate(Duration::from_secs(20)).unwrap().success());

    damage(&data.join("buffer.db"));

    gw.restart().unwrap();
    assert!(
        running_again(&gw, 2),
        "a damaged buffer does not stop the gateway: {}",
        gw.log()
    );
    assert!(
        gw.log().contains("moved to quarantine"),
        "it says so: {}",
        gw.log()
    );
    let (_, stats, _) = run_cli(dir.path(), &["queue", "stats", "-c", "gateway.toml"]);
    assert!(stats.contains("quarantined: 1"), "{stats}");
    assert!(gw.terminate(Duration::from_secs(20)).unwrap().success());
    let audit = std::fs::read_to_string(data.join("audit.log")).unwrap();
    assert!(audit.contains("\"kind\":\"buffer_quarantined\""), "{audit}");

    let folder = the_quarantine_folder(&data);
    let (code, out, err) = run_cli(
        dir.path(),
        &[
            "queue",
            "salvage",
            "-c",
            "gateway.toml",
            folder.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let found = figure(&out, "readings found");
    match expect {
        Expect::All => assert_eq!(found, READINGS, "{out}"),
        Expect::AtLeast(n) => assert!((n..=READINGS).contains(&found), "{out}"),
        Expect::Nothing => assert_eq!(found, 0, "{out}"),
    }
    // A reading the broker redelivered after the restart (its PUBACK had not gone out) is in
    // the new buffer already: salvage does not queue it twice.
    assert_eq!(
        figure(&out, "queued") + figure(&out, "already in the buffer"),
        found,
        "{out}"
    );

    upstream.faults().clear();
    gw.restart().unwrap();
    assert!(running_again(&gw, 3), "{}", gw.log());
    if found > 0 {
        assert!(
            upstream
                .wait_for_observations(found as usize, Duration::from_secs(60))
                .await,
            "{} of {found} arrived",
            upstream.observation_count()
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    upstream.assert_no_duplicate_identifiers();
    let observations = upstream.observations();
    // The salvaged readings, and any the broker redelivered because their PUBACK had not
    // gone out when the gateway stopped (those are stored again after the quarantine).
    assert!(
        observations.len() as u64 >= found,
        "{} < {found}",
        observations.len()
    );
    // What arrived is what was sent: every Observation matches one published reading.
    for o in &observations {
        let seen = scenario::observed(o);
        assert!(
            expected.contains(&seen),
            "not a published reading: {seen:?}"
        );
    }
    assert!(gw.terminate(Duration::from_secs(20)).unwrap().success());
}

/// Whether the gateway's log says it is running for the `starts`-th time (within 20 s).
fn running_again(gw: &GatewayProcess, starts: usize) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if gw.log().matches("gateway running").count() >= starts {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

fn rewrite(db: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(db).unwrap();
    f(&mut bytes);
    std::fs::write(db, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zeroed_header_is_quarantined_and_every_reading_salvaged_and_delivered_once() {
    damaged_case(|db| rewrite(db, |b| b[..100].fill(0)), Expect::All).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_buffer_is_quarantined_and_what_remains_salvaged_and_delivered_once() {
    damaged_case(
        // The rows of the pages that remain: about half of them.
        |db| rewrite(db, |b| b.truncate(b.len() * 6 / 10)),
        Expect::AtLeast(READINGS / 3),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scribbled_buffer_is_quarantined_and_what_remains_salvaged_and_delivered_once() {
    damaged_case(
        |db| {
            rewrite(db, |b| {
                let (mid, len) = (b.len() / 2, b.len());
                for x in &mut b[mid..(mid + 6000).min(len)] {
                    *x = rand::random();
                }
                // And the schema page: SQLite refuses it, the scanner does not need it.
                for x in &mut b[100..1000] {
                    *x = rand::random();
                }
            })
        },
        // 6 KB of noise costs a page or two of rows.
        Expect::AtLeast(READINGS * 3 / 4),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_are_quarantined_and_nothing_false_is_delivered() {
    damaged_case(
        |db| rewrite(db, |b| b.iter_mut().for_each(|x| *x = rand::random())),
        Expect::Nothing,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_buffer_file_is_quarantined_not_taken_as_an_empty_buffer() {
    damaged_case(|db| std::fs::write(db, b"").unwrap(), Expect::Nothing).await;
}
