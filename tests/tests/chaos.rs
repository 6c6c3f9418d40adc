//! Chaos soak: while readings keep coming, the gateway is killed (-9) and restarted, the
//! broker restarts, the FHIR upstream answers 503, hangs past the gateway's timeout, drops
//! responses (after or before applying the request), and the data directory's file system
//! fills up once per round. At the end every reading the broker accepted arrives exactly
//! once, with the right values, and nothing else arrives.
//!
//! In CI it runs one round (10 kills, 2 broker restarts, upstream faults, one disk-full
//! episode) in random order. `tests/soak.sh` runs it longer:
//!
//! - `SOAK_SECONDS`: keep starting rounds until this many seconds have passed (default: one
//!   round). The publishing rate drops for long soaks, so that the upstream (in memory)
//!   holds at most about 200 000 readings.
//! - `SOAK_SEED`: the seed of the event order and timing (default: random; printed, and in
//!   the failure message, so a failing run can be replayed).
//!
//! Needs root (the data directory is on a tmpfs of its own, filled with a ballast file for
//! the disk-full episode).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use vitalbridge_tests::fixture::{self, Pace, Publisher, Rig};
use vitalbridge_tests::tmpfs::Tmpfs;
use vitalbridge_tests::upstream::Fault;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// `kill -9` of the gateway, restarted at once.
    KillGateway,
    /// The broker stops (saving its persistence) and starts again.
    RestartBroker,
    /// The next few requests get 503.
    Upstream503,
    /// The next request is applied only after the gateway's timeout (10 s) has passed.
    UpstreamHang,
    /// The next request is applied, then the connection closes without an answer.
    UpstreamCommitThenDrop,
    /// The next request is dropped unapplied and unanswered.
    UpstreamDropBeforeCommit,
    /// The data directory's file system fills up for a while.
    DiskFull,
}

/// One round: what CI runs.
fn round() -> Vec<Event> {
    let mut events = vec![Event::KillGateway; 10];
    events.extend([Event::RestartBroker; 2]);
    events.extend([
        Event::Upstream503,
        Event::Upstream503,
        Event::UpstreamHang,
        Event::UpstreamCommitThenDrop,
        Event::UpstreamCommitThenDrop,
        Event::UpstreamDropBeforeCommit,
        Event::DiskFull,
    ]);
    events
}

/// How long a disk-full episode may take to reach the gateway.
const FULL_WITHIN: Duration = Duration::from_secs(20);

/// How long the disk stays full once the gateway has noticed.
const FULL_HOLD: Duration = Duration::from_secs(2);

/// How long after a failed commit `/readyz` may still say ready.
const READYZ_GRACE: Duration = Duration::from_secs(2);

/// What the gateway logs when a buffer write fails (once, at the start of a failure).
const WRITE_FAILED: &str = "buffer: write failed";

/// The disk is full: waits until the gateway notices. `Ok` once `/readyz` answers 503 twice
/// in a row; `Err` when a commit failed and `/readyz` still answers 200 after
/// [`READYZ_GRACE`], or when nothing happened within [`FULL_WITHIN`].
async fn disk_full_episode(
    rig: &Rig,
    gw: &vitalbridge_tests::gateway::GatewayProcess,
) -> Result<String, String> {
    let failed_before = gw.log().matches(WRITE_FAILED).count();
    let started = Instant::now();
    let mut first_failure: Option<Instant> = None;
    let mut answers: Vec<Option<u16>> = Vec::new();
    while started.elapsed() < FULL_WITHIN {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let answer = rig.readyz().await.map(|(code, _)| code);
        answers.push(answer);
        if answers.len() >= 2 && answers[answers.len() - 2..] == [Some(503), Some(503)] {
            let noticed = started.elapsed();
            // Stay full a while longer: sources keep retrying against it.
            tokio::time::sleep(FULL_HOLD).await;
            return Ok(format!(
                "/readyz 503 after {:.1} s, full for {:.1} s",
                noticed.as_secs_f64(),
                started.elapsed().as_secs_f64()
            ));
        }
        if first_failure.is_none() && gw.log().matches(WRITE_FAILED).count() > failed_before {
            first_failure = Some(Instant::now());
        }
        if first_failure.is_some_and(|t| t.elapsed() > READYZ_GRACE) {
            return Err(format!(
                "commits fail (the gateway log says so) but /readyz still answers {answer:?} \
                 {} s later; answers every 250 ms: {answers:?}",
                READYZ_GRACE.as_secs()
            ));
        }
    }
    Err(format!(
        "neither a failed commit nor /readyz 503 within {} s of the disk filling: the \
         episode did not reach the gateway; answers: {answers:?}",
        FULL_WITHIN.as_secs()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_broker_restarts_upstream_faults_and_a_full_disk_lose_and_duplicate_nothing() {
    let soak = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();

    let mut rig = Rig::start().await;
    let tmpfs = Tmpfs::mount(128 << 20).expect("mount the tmpfs");
    let config = rig.config(&tmpfs.path().join("data"), "");
    let mut gw = rig.start_gateway(&config);
    assert!(
        fixture::wait_subscribed(&gw, 1, Duration::from_secs(20)),
        "the gateway did not subscribe\n{}",
        fixture::tail(&gw.log(), 40)
    );

    // About 300 readings a second; long soaks slow down to stay near 200 000 readings.
    let pause = match soak {
        Some(d) => Duration::from_millis(150).max(d * 50 / 200_000),
        None => Duration::from_millis(150),
    };
    let publisher = Publisher::start(
        rig.broker.port(),
        Pace {
            chunk: 50,
            pause,
            max: u64::MAX,
        },
    );
    let faults = rig.upstream.faults();
    let mut journal = String::new();
    let mut problems: Vec<String> = Vec::new();
    let mut counts = std::collections::BTreeMap::new();
    let mut rounds = 0;
    loop {
        let mut events = round();
        events.shuffle(&mut rng);
        for event in events {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1200))).await;
            let _ = writeln!(
                journal,
                "{:>7.1} s  {event:?}",
                started.elapsed().as_secs_f64()
            );
            *counts.entry(format!("{event:?}")).or_insert(0u32) += 1;
            match event {
                Event::KillGateway => {
                    gw.kill9();
                    gw.restart().expect("restart the gateway");
                }
                Event::RestartBroker => rig.broker.restart().expect("restart the broker"),
                Event::Upstream503 => faults.push_n(Fault::ServiceUnavailable, 3),
                Event::UpstreamHang => faults.push(Fault::Delay(Duration::from_secs(12))),
                Event::UpstreamCommitThenDrop => faults.push(Fault::CommitThenDrop),
                Event::UpstreamDropBeforeCommit => faults.push(Fault::DropBeforeCommit),
                Event::DiskFull => {
                    // The upstream goes away too, so the backlog has to grow on disk (a WAL
                    // that was larger before has room in it, and delivered rows free pages).
                    rig.upstream.stop().await;
                    let (ballast, size) = tmpfs.fill("ballast").expect("fill the tmpfs");
                    let outcome = disk_full_episode(&rig, &gw).await;
                    let _ = writeln!(
                        journal,
                        "{:>7.1} s  ({size} bytes of ballast) {outcome:?}",
                        started.elapsed().as_secs_f64()
                    );
                    if let Err(e) = outcome {
                        problems.push(format!(
                            "disk full at {:.1} s: {e}",
                            started.elapsed().as_secs_f64()
                        ));
                    }
                    std::fs::remove_file(&ballast).expect("remove the ballast");
                    rig.upstream.restart().await.expect("restart the upstream");
                    let _ = writeln!(
                        journal,
                        "{:>7.1} s  disk has room again, upstream back",
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            if let Some(status) = gw.try_wait() {
                problems.push(format!(
                    "the gateway exited by itself ({status}) after {event:?}; restarted"
                ));
                gw.restart().expect("restart the gateway");
            }
        }
        rounds += 1;
        if soak.is_none_or(|d| started.elapsed() >= d) {
            break;
        }
    }

    let published = publisher.stop().await;
    faults.clear();
    let delivered = fixture::wait_for_delivery(
        &rig.upstream,
        published.accepted as usize,
        Duration::from_secs(30),
        Duration::from_secs(300),
    )
    .await;
    // Give a would-be duplicate time to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let summary = format!(
        "seed {seed}: {rounds} round(s) in {} s {counts:?}; {} readings accepted by the broker \
         ({} chunks published again), {delivered} delivered",
        started.elapsed().as_secs(),
        published.accepted,
        published.retries
    );
    eprintln!("{summary}");
    if let Err(e) = fixture::reconcile(&rig.upstream, published.accepted, &gw.log()) {
        problems.push(e);
    }
    assert!(
        problems.is_empty(),
        "{summary}\n{}\n--- what happened when ---\n{journal}",
        problems.join("\n\n")
    );
}
