//! Disk full: the gateway's data directory on a small tmpfs, the FHIR upstream down, and more
//! readings published than fit. While the disk is full the gateway must say so on `/readyz`
//! (503) and must not acknowledge to the broker what it could not store; once the tmpfs
//! grows and the upstream is back, every reading the broker accepted arrives exactly once.
//!
//! "Acknowledged but not stored" cannot be seen directly from outside: a reading the gateway
//! PUBACKed is gone from the broker, so if it never reached the buffer it is missing at the
//! end. The exact reconciliation is what proves nothing was acknowledged without being
//! stored.
//!
//! Needs root (mounts a tmpfs; the guard unmounts it even when the test fails).

use std::time::{Duration, Instant};

use vitalbridge_tests::fixture::{self, Pace, Publisher, Rig};
use vitalbridge_tests::gateway::run_cli;
use vitalbridge_tests::tmpfs::Tmpfs;

/// The tmpfs the data directory starts on: a few thousand readings' worth.
const SMALL: u64 = 6 << 20;
/// What it grows to once the test has seen it full.
const LARGE: u64 = 256 << 20;
/// Readings published: several times what fits in `SMALL`.
const READINGS: u64 = 40_000;
/// Free space below which the tmpfs counts as full (SQLite needs more than this for a
/// group commit).
const FULL_BELOW: u64 = 256 << 10;

/// With the default free-space floor the gateway refuses readings before SQLite runs out
/// of room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_readings_says_not_ready_and_loses_nothing() {
    disk_full("", "low_space").await;
}

/// With no floor the disk really fills: SQLite's commits fail with SQLITE_FULL, and the
/// gateway must neither acknowledge nor lose a reading, and recover by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_floor_failed_commits_are_never_acknowledged_and_the_gateway_recovers() {
    disk_full("[buffer]\nmin_free_mb = 0\n", "storage_failed").await;
}

/// The run: `extra` config, and the audit kind the full disk must leave.
async fn disk_full(extra: &str, audit_kind: &str) {
    let started = Instant::now();
    let mut rig = Rig::start().await;
    // The upstream is down from the start: everything has to stay in the buffer.
    rig.upstream.stop().await;
    let mut tmpfs = Tmpfs::mount(SMALL).expect("mount the small tmpfs");
    let data_dir = tmpfs.path().join("data");
    let config = rig.config(&data_dir, extra);
    let mut gw = rig.start_gateway(&config);
    assert!(
        fixture::wait_subscribed(&gw, 1, Duration::from_secs(20)),
        "the gateway did not subscribe\n{}",
        fixture::tail(&gw.log(), 40)
    );

    let publisher = Publisher::start(
        rig.broker.port(),
        Pace {
            chunk: 1_000,
            pause: Duration::ZERO,
            max: READINGS,
        },
    );

    // Wait for the disk to fill: little free space left, or nothing written for a while
    // (a gateway that refuses early, at a free-space floor, stops writing before the end).
    let mut problems: Vec<String> = Vec::new();
    let fill_deadline = Instant::now() + Duration::from_secs(120);
    let mut last_free = (tmpfs.free_bytes().unwrap(), Instant::now());
    let full = loop {
        let free = tmpfs.free_bytes().unwrap();
        if free < FULL_BELOW {
            break true;
        }
        if free != last_free.0 {
            last_free = (free, Instant::now());
        } else if publisher.is_finished() && last_free.1.elapsed() > Duration::from_secs(5) {
            break true;
        }
        if Instant::now() > fill_deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let free_when_full = tmpfs.free_bytes().unwrap();
    assert!(
        full,
        "the {SMALL}-byte tmpfs never filled ({free_when_full} bytes free, {} readings \
         accepted by the broker): the test proves nothing\n{}",
        publisher.accepted(),
        fixture::tail(&gw.log(), 40)
    );
    // Let the commits that were under way run into the wall.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // While full: not ready, every time we ask.
    let mut answers = Vec::new();
    for _ in 0..10 {
        answers.push(rig.readyz().await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let ready_while_full: Vec<String> = answers
        .iter()
        .filter(|a| !matches!(a, Some((503, _))))
        .map(|a| format!("{a:?}"))
        .collect();
    if !ready_while_full.is_empty() {
        problems.push(format!(
            "/readyz while the data directory was full ({free_when_full} bytes free) did not \
             answer 503 in {} of {} requests: {}",
            ready_while_full.len(),
            answers.len(),
            ready_while_full[0]
        ));
    }
    if let Some(status) = gw.try_wait() {
        problems.push(format!(
            "the gateway exited while the disk was full: {status}"
        ));
    }

    // Let the publisher finish: the broker takes everything, whether the gateway does or not.
    // (`stop` would end it after the chunk in progress, short of READINGS on a slow machine.)
    let publish_deadline = Instant::now() + Duration::from_secs(120);
    while !publisher.is_finished() && Instant::now() < publish_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let published = publisher.stop().await;
    assert_eq!(
        published.accepted, READINGS,
        "the broker accepted every reading"
    );

    // The disk grows and the upstream comes back: everything must arrive, once.
    tmpfs.resize(LARGE).expect("grow the tmpfs");
    rig.upstream.restart().await.expect("restart the upstream");
    let delivered = fixture::wait_for_delivery(
        &rig.upstream,
        READINGS as usize,
        Duration::from_secs(20),
        Duration::from_secs(240),
    )
    .await;
    // Give a would-be duplicate time to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // And it says it is ready again.
    let mut ready_again = None;
    for _ in 0..50 {
        ready_again = rig.readyz().await;
        if matches!(ready_again, Some((200, _))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !matches!(ready_again, Some((200, _))) {
        problems.push(format!(
            "/readyz after the disk grew and everything was delivered: {ready_again:?}"
        ));
    }
    if let Err(e) = fixture::reconcile(&rig.upstream, READINGS, "") {
        problems.push(e);
    }
    let audit = std::fs::read_to_string(data_dir.join("audit.log")).unwrap_or_default();
    if !audit.contains(&format!("\"kind\":\"{audit_kind}\"")) {
        problems.push(format!("the audit log has no {audit_kind} event"));
    }
    let (_, stats, stats_err) = run_cli(rig.dir.path(), &["queue", "stats", "-c", "gateway.toml"]);
    let log = gw.log();
    let status = gw.terminate(Duration::from_secs(20));
    eprintln!(
        "disk full: {READINGS} readings, {delivered} delivered, {} s; /readyz while full: {:?}",
        started.elapsed().as_secs(),
        answers.first()
    );
    assert!(
        problems.is_empty(),
        "{}\n--- queue stats at the end ---\n{stats}{stats_err}\n--- gateway log (tail) ---\n{}\n\
         (exit on SIGTERM: {status:?})\n--- broker log (tail) ---\n{}",
        problems.join("\n\n"),
        fixture::tail(&log, 60),
        fixture::tail(&rig.broker.log_contents(), 15)
    );
}
