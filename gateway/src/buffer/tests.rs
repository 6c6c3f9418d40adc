use std::time::Duration;

use sqlx::Connection;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::open::TEST_MAX_PAGES;
use super::writer::{GroupReport, OnCommit, WriterConfig, WriterCounts};
use super::*;
use crate::model::{Decimal, DeviceId, DeviceRef, Measured, PatientRef, Quantity, Value};
use crate::pipeline::{self, Ingest, Rejected};
use crate::profile::catalog;

fn reading(device: &str, seq: u64) -> Reading {
    let now = OffsetDateTime::from_unix_timestamp(1_780_000_000).unwrap();
    Reading {
        device: DeviceRef {
            id: DeviceId::Other(device.into()),
            profile: "test".into(),
            model: None,
            manufacturer: None,
        },
        patient: Some(PatientRef::identifier("urn:test", "p-1")),
        metric: catalog::SPO2,
        value: Value::Quantity(Quantity {
            value: Measured::Value(Decimal::integer(90 + (seq % 10) as i64)),
            unit: "%".into(),
        }),
        device_time: Some(now + time::Duration::seconds(seq as i64)),
        clock_offset: None,
        received_at: now,
        duration: None,
        sequence: Some(seq),
        status: vec![],
        device_user: None,
        bedside: None,
        time_sync: None,
    }
}

/// Where a test keeps its buffer (`<root>/data`) and key (`<root>/buffer.key`).
fn options(root: &Path, capacity: u64) -> OpenOptions {
    OpenOptions {
        capacity,
        key_file: root.join("buffer.key"),
        previous_key_files: Vec::new(),
        min_free_bytes: Some(0),
        destinations: vec!["test".into()],
    }
}

/// The tests' one destination.
fn dest(store: &Store) -> Destination {
    store.destination("test").expect("configured")
}

fn data(root: &Path) -> PathBuf {
    root.join("data")
}

/// A store with a running writer.
struct Running {
    store: Store,
    ingest: Ingest,
    stop: CancellationToken,
    writer: tokio::task::JoinHandle<WriterCounts>,
}

impl Running {
    async fn start(root: &Path, capacity: u64) -> Self {
        Self::start_with(root, &options(root, capacity), Box::new(|_| {})).await
    }

    async fn start_with(root: &Path, options: &OpenOptions, on_commit: OnCommit) -> Self {
        Self::lingering(root, options, Duration::from_millis(1), on_commit).await
    }

    /// A writer waiting at most `linger` for company (`buffer.commit_linger_ms`).
    async fn lingering(
        root: &Path,
        options: &OpenOptions,
        linger: Duration,
        on_commit: OnCommit,
    ) -> Self {
        let (store, writer, _) = open(&data(root), options).await.unwrap();
        let (tx, rx) = pipeline::channel();
        let config = WriterConfig {
            max_rows: 1000,
            linger,
        };
        let stop = CancellationToken::new();
        let writer = tokio::spawn(writer.run(rx, config, stop.clone(), on_commit));
        Self {
            store,
            ingest: Ingest::new(tx, "test"),
            stop,
            writer,
        }
    }

    /// Stops the writer (after what is queued) and returns its totals.
    async fn stop(self) -> (Store, WriterCounts) {
        drop(self.ingest);
        self.stop.cancel();
        let totals = self.writer.await.unwrap();
        self.store.close().await;
        (self.store, totals)
    }

    /// Kills the writer mid-flight, as `kill -9` would: nothing is closed or flushed.
    async fn crash(self) {
        self.writer.abort();
        let _ = self.writer.await;
        self.store.close().await;
    }
}

/// Every byte of every file under `dir`.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else {
            out.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn the_live_connection_is_wal_and_synchronous_full() {
    let root = tempfile::tempdir().unwrap();
    let (_store, writer, report) = open(&data(root.path()), &options(root.path(), 10))
        .await
        .unwrap();
    let mut conn = open::connect(&data(root.path()).join(open::DB_FILE))
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!((mode.as_str(), sync), ("wal", 2));
    assert_eq!(report.key_created, Some(root.path().join("buffer.key")));
    writer.close().await;
}

/// The database's page size, read on a connection of its own.
async fn page_size(root: &Path) -> i64 {
    let mut conn = open::connect(&data(root).join(open::DB_FILE))
        .await
        .unwrap();
    let size = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    size
}

#[tokio::test]
async fn a_new_buffer_is_made_with_1_kib_pages() {
    let root = tempfile::tempdir().unwrap();
    let r = Running::start(root.path(), 100).await;
    r.ingest.commit(vec![reading("a", 1)]).await.unwrap();
    r.stop().await;
    assert_eq!(page_size(root.path()).await, 1024);
}

#[tokio::test]
async fn a_buffer_made_with_4_kib_pages_keeps_them_and_its_readings() {
    let root = tempfile::tempdir().unwrap();
    let r = Running::start(root.path(), 100).await;
    r.ingest
        .commit(vec![reading("a", 1), reading("a", 2)])
        .await
        .unwrap();
    r.stop().await;
    // As the versions before 1 KiB pages made it.
    let db = data(root.path()).join(open::DB_FILE);
    let mut conn = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new().filename(&db),
    )
    .await
    .unwrap();
    for sql in [
        "PRAGMA journal_mode = DELETE",
        "PRAGMA page_size = 4096",
        "VACUUM",
        "PRAGMA journal_mode = WAL",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    conn.close().await.unwrap();
    assert_eq!(page_size(root.path()).await, 4096);

    let r = Running::start(root.path(), 100).await;
    r.ingest.commit(vec![reading("a", 3)]).await.unwrap();
    let leased = r.store.lease(&dest(&r.store), 10).await.unwrap();
    let readings: Vec<&Reading> = leased.iter().map(|l| l.reading.as_ref().unwrap()).collect();
    assert_eq!(
        readings,
        [&reading("a", 1), &reading("a", 2), &reading("a", 3)]
    );
    let ids: Vec<i64> = leased.iter().map(|l| l.id).collect();
    assert_eq!(r.store.ack(&dest(&r.store), &ids).await.unwrap(), 3);
    r.stop().await;
    assert_eq!(
        page_size(root.path()).await,
        4096,
        "the size it was made with"
    );
}

#[tokio::test]
async fn a_second_store_on_the_same_directory_is_refused_with_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let _first = open(&data(root.path()), &options(root.path(), 10))
        .await
        .unwrap();
    let err = open(&data(root.path()), &options(root.path(), 10))
        .await
        .err()
        .expect("second open must fail");
    assert!(matches!(err, BufferError::Locked(_)));
    assert!(
        err.to_string()
            .contains("another vitalbridge is already running"),
        "{err}"
    );
}

#[tokio::test]
async fn committed_readings_are_leased_acked_and_gone() {
    let root = tempfile::tempdir().unwrap();
    let r = Running::start(root.path(), 100).await;
    r.ingest
        .commit(vec![reading("a", 1), reading("a", 2)])
        .await
        .unwrap();
    assert_eq!(r.store.pending(), 2);
    let leased = r.store.lease(&dest(&r.store), 10).await.unwrap();
    assert_eq!(leased.len(), 2);
    assert_eq!(leased[0].reading.as_ref().unwrap(), &reading("a", 1));
    assert!(
        r.store.lease(&dest(&r.store), 10).await.unwrap().is_empty(),
        "leased rows are not handed out twice"
    );
    assert_eq!(
        r.store.ack(&dest(&r.store), &[leased[0].id]).await.unwrap(),
        1
    );
    let stats = r.store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.leased), (1, 1));
    assert_eq!(r.store.pending(), 1);
}

#[tokio::test]
async fn groups_of_any_size_are_stored_whole_and_acked_in_one_statement() {
    let root = tempfile::tempdir().unwrap();
    let r = Running::start(root.path(), 10_000).await;
    // 1 + 4 + 16 + 64 + 256 + 3 (every chunk shape, and a remainder) in one request.
    let sizes = [1, 347, 999];
    let mut next = 0;
    for n in sizes {
        let batch: Vec<Reading> = (next..next + n).map(|s| reading("g", s)).collect();
        next += n;
        assert_eq!(r.ingest.commit(batch).await.unwrap().readings, n as usize);
    }
    assert_eq!(r.store.stats().await.unwrap().pending, next);
    let leased = r.store.lease(&dest(&r.store), 2000).await.unwrap();
    let mut seqs: Vec<u64> = leased
        .iter()
        .map(|l| l.reading.as_ref().unwrap().sequence.unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..next).collect::<Vec<_>>(), "every reading, once");
    let ids: Vec<i64> = leased.iter().map(|l| l.id).collect();
    assert_eq!(r.store.ack(&dest(&r.store), &ids).await.unwrap(), next);
    assert_eq!(r.store.stats().await.unwrap().pending, 0);
}

#[tokio::test]
async fn a_retransmission_is_stored_once() {
    let root = tempfile::tempdir().unwrap();
    let r = Running::start(root.path(), 100).await;
    r.ingest.commit(vec![reading("a", 1)]).await.unwrap();
    r.ingest.commit(vec![reading("a", 1)]).await.unwrap();
    assert_eq!(r.store.stats().await.unwrap().pending, 1);
    assert_eq!(r.store.pending(), 1);
}

#[tokio::test]
async fn leased_but_unacked_rows_come_back_after_a_crash() {
    let root = tempfile::tempdir().unwrap();
    let r = Running::start(root.path(), 100).await;
    r.ingest
        .commit(vec![reading("a", 1), reading("a", 2), reading("a", 3)])
        .await
        .unwrap();
    let leased = r.store.lease(&dest(&r.store), 2).await.unwrap();
    r.store.ack(&dest(&r.store), &[leased[0].id]).await.unwrap();
    // "Crash": the lease of row 2 was never settled.
    r.crash().await;
    let r = Running::start(root.path(), 100).await;
    let again: Vec<u64> = r
        .store
        .lease(&dest(&r.store), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.reading.unwrap().sequence.unwrap())
        .collect();
    assert_eq!(again, vec![2, 3]);
}

#[tokio::test]
async fn released_rows_are_leased_again_in_order() {
    let root = tempfile::tempdir().unwrap();
    let r = Running::start(root.path(), 100).await;
    r.ingest
        .commit((1..=4).map(|s| reading("a", s)).collect())
        .await
        .unwrap();
    let first = r.store.lease(&dest(&r.store), 2).await.unwrap();
    let second = r.store.lease(&dest(&r.store), 2).await.unwrap();
    r.store.release(&dest(&r.store), &[first[1].id]).await;
    let third = r.store.lease(&dest(&r.store), 10).await.unwrap();
    assert_eq!(
        third.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![first[1].id]
    );
    assert_eq!(second.len(), 2);
}

#[tokio::test]
async fn a_full_buffer_refuses_new_readings_and_keeps_the_old_ones() {
    let root = tempfile::tempdir().unwrap();
    let r = Running::start(root.path(), 3).await;
    r.ingest
        .commit(vec![reading("a", 1), reading("a", 2)])
        .await
        .unwrap();
    let refused = r
        .ingest
        .commit(vec![reading("a", 3), reading("a", 4)])
        .await;
    assert_eq!(refused, Err(CommitError::Full { capacity: 3 }));
    r.ingest.commit(vec![reading("a", 3)]).await.unwrap();
    assert_eq!(r.store.stats().await.unwrap().pending, 3);
    let leased = r.store.lease(&dest(&r.store), 1).await.unwrap();
    r.store.ack(&dest(&r.store), &[leased[0].id]).await.unwrap();
    r.ingest
        .commit(vec![reading("a", 4)])
        .await
        .expect("room again after a delivery");
}

#[tokio::test]
async fn below_the_free_space_floor_new_readings_are_refused_but_deliveries_are_recorded() {
    let root = tempfile::tempdir().unwrap();
    let r = Running::start(root.path(), 100).await;
    r.ingest.commit(vec![reading("a", 1)]).await.unwrap();
    let (store, _) = r.stop().await;
    drop(store);
    let mut opts = options(root.path(), 100);
    opts.min_free_bytes = Some(u64::MAX);
    let r = Running::start_with(root.path(), &opts, Box::new(|_| {})).await;
    let refused = r.ingest.commit(vec![reading("a", 2)]).await;
    assert!(
        matches!(
            refused,
            Err(CommitError::LowSpace {
                floor_bytes: u64::MAX,
                ..
            })
        ),
        "{refused:?}"
    );
    let refused = r.ingest.reject("t:x".into(), "bad".into(), b"x").await;
    assert!(
        matches!(refused, Err(CommitError::LowSpace { .. })),
        "{refused:?}"
    );
    let health = r.store.health();
    assert!(
        health.low_space && health.free_bytes.is_some(),
        "{health:?}"
    );
    let leased = r.store.lease(&dest(&r.store), 10).await.unwrap();
    assert_eq!(
        r.store.ack(&dest(&r.store), &[leased[0].id]).await.unwrap(),
        1,
        "a delivery is recorded below the floor"
    );
    assert_eq!(r.store.stats().await.unwrap().pending, 0);
}

/// The regression behind this module's error handling: after SQLite failed a commit with
/// `SQLITE_FULL`, later "commits" were acknowledged but never reached the disk.
#[tokio::test]
async fn a_full_disk_is_never_acknowledged_and_the_writer_recovers_by_itself() {
    let root = tempfile::tempdir().unwrap();
    let db = data(root.path()).join(open::DB_FILE);
    // Room for the schema and a few hundred readings.
    lock(&TEST_MAX_PAGES).push((db.clone(), 40));
    let transitions: Arc<StdMutex<Vec<writer::Transition>>> = Default::default();
    let seen = transitions.clone();
    let on_commit: OnCommit = Box::new(move |report: &GroupReport<'_>| {
        seen.lock()
            .unwrap()
            .extend(report.transitions.iter().cloned());
    });
    let r = Running::start_with(root.path(), &options(root.path(), 1_000_000), on_commit).await;
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for batch in 0..200u64 {
        let readings: Vec<Reading> = (0..10).map(|i| reading("f", batch * 10 + i)).collect();
        match r.ingest.commit(readings).await {
            Ok(_) => acknowledged.extend((0..10).map(|i| batch * 10 + i)),
            Err(CommitError::Storage(f)) => {
                assert_eq!(f.kind, pipeline::StorageKind::DiskFull, "{f}");
                refused += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
        if refused >= 5 {
            break;
        }
    }
    assert!(refused >= 5, "the small database never filled");
    assert!(!acknowledged.is_empty());
    let health = r.store.health();
    let failing = health.failing.expect("the buffer reports itself failing");
    assert_eq!(failing.during, "commit");
    // Space comes back: the next commit succeeds and is durable.
    lock(&TEST_MAX_PAGES).retain(|(p, _)| p != &db);
    r.ingest.commit(vec![reading("f", 99_999)]).await.unwrap();
    acknowledged.push(99_999);
    assert!(r.store.health().failing.is_none());
    {
        let t = transitions.lock().unwrap();
        assert!(
            matches!(t.first(), Some(writer::Transition::Failed(_))),
            "{t:?}"
        );
        assert!(
            matches!(t.last(), Some(writer::Transition::Recovered { .. })),
            "{t:?}"
        );
        assert_eq!(t.len(), 2, "one episode, reported once: {t:?}");
    }
    r.crash().await;
    // After a crash, exactly what was acknowledged is there.
    let r = Running::start(root.path(), 1_000_000).await;
    let mut stored: Vec<u64> = r
        .store
        .lease(&dest(&r.store), 100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.reading.unwrap().sequence.unwrap())
        .collect();
    stored.sort_unstable();
    acknowledged.sort_unstable();
    assert_eq!(stored, acknowledged);
}

#[tokio::test]
async fn the_same_bad_payload_is_one_dead_letter_however_often_it_arrives() {
    let root = tempfile::tempdir().unwrap();
    let r = Running::start(root.path(), 100).await;
    for _ in 0..3 {
        r.ingest
            .reject("mqtt:t".into(), "not JSON".into(), b"\x00garbage")
            .await
            .unwrap();
    }
    r.ingest
        .reject("mqtt:t".into(), "not JSON".into(), b"other garbage")
        .await
        .unwrap();
    let letters = r.store.dead_letters(10, None).await.unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[1].seen, 3);
    assert_eq!(letters[0].seen, 1);
    assert_eq!(letters[1].source, "mqtt");
    assert_eq!(letters[1].details.as_ref().unwrap().origin, "mqtt:t");
}

#[tokio::test]
async fn an_oversized_payload_keeps_a_bounded_prefix_its_size_and_hash() {
    let root = tempfile::tempdir().unwrap();
    let r = Running::start(root.path(), 100).await;
    let huge = vec![b'x'; 10 * 1024 * 1024];
    let rejected = Rejected::new("mqtt:big".into(), "too large".into(), &huge);
    assert_eq!(rejected.payload.len(), pipeline::MAX_KEPT_PAYLOAD);
    r.ingest
        .store(vec![reading("a", 1)], vec![rejected.clone()])
        .await
        .unwrap();
    let letter = r.store.dead_letters(1, None).await.unwrap().remove(0);
    let details = letter.details.unwrap();
    assert_eq!(details.size, huge.len() as u64);
    assert_eq!(details.sha256, rejected.sha256);
    assert_eq!(details.content.len(), pipeline::MAX_KEPT_PAYLOAD);
    assert_eq!(
        r.store.pending(),
        1,
        "the good reading of the same commit is stored"
    );
}

#[tokio::test]
async fn dead_letters_keep_their_reason_and_can_be_retried() {
    let root = tempfile::tempdir().unwrap();
    let r = Running::start(root.path(), 100).await;
    r.ingest.commit(vec![reading("a", 1)]).await.unwrap();
    r.ingest
        .reject("mqtt:t".into(), "field `metric`: unknown".into(), b"{}")
        .await
        .unwrap();
    let leased = r.store.lease(&dest(&r.store), 1).await.unwrap();
    r.store
        .dead_letter(
            &dest(&r.store),
            "uplink:fhir",
            &[(leased[0].id, "422: bad unit".into())],
        )
        .await
        .unwrap();
    let stats = r.store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead_letters), (0, 2));
    assert_eq!(r.store.pending(), 0);
    let letters = r.store.dead_letters(10, None).await.unwrap();
    let refused = letters[0].details.as_ref().unwrap();
    assert_eq!(refused.reason, "422: bad unit");
    assert_eq!(refused.identifier, Some(reading("a", 1).identifier()));
    assert_eq!(letters[0].source, "uplink:fhir");
    assert_eq!(letters[1].kind, "payload");
    let (_, _) = r.stop().await;
    let (_store, mut writer, _) = open(&data(root.path()), &options(root.path(), 100))
        .await
        .unwrap();
    assert_eq!(writer.retry_dead_letters(None).await.unwrap(), 1);
    let back = writer
        .store()
        .lease(&dest(writer.store()), 10)
        .await
        .unwrap();
    assert_eq!(back[0].reading.as_ref().unwrap(), &reading("a", 1));
    assert_eq!(
        writer.store().stats().await.unwrap().dead_letters,
        1,
        "undecodable payloads stay dead-lettered"
    );
    writer.close().await;
}

#[tokio::test]
async fn the_last_sequence_survives_delivery() {
    let root = tempfile::tempdir().unwrap();
    let r = Running::start(root.path(), 100).await;
    r.ingest
        .commit(vec![reading("a", 7), reading("a", 5), reading("b", 1)])
        .await
        .unwrap();
    let ids: Vec<i64> = r
        .store
        .lease(&dest(&r.store), 10)
        .await
        .unwrap()
        .iter()
        .map(|l| l.id)
        .collect();
    r.store.ack(&dest(&r.store), &ids).await.unwrap();
    assert_eq!(r.ingest.last_sequence("a").await.unwrap(), Some(7));
    assert_eq!(r.ingest.last_sequence("c").await.unwrap(), None);
    // A lower number later never lowers it; a group of many devices (one statement for all
    // of them, past the few-readings path) keeps each device's highest.
    r.ingest.commit(vec![reading("a", 3)]).await.unwrap();
    assert_eq!(r.ingest.last_sequence("a").await.unwrap(), Some(7));
    let many: Vec<Reading> = (0..40)
        .map(|i| reading(&format!("d{}", i % 7), 100 + i))
        .chain([reading("a", 9), reading("b", 0)])
        .collect();
    r.ingest.commit(many).await.unwrap();
    assert_eq!(r.ingest.last_sequence("a").await.unwrap(), Some(9));
    assert_eq!(r.ingest.last_sequence("b").await.unwrap(), Some(1));
    for d in 0..7u64 {
        let highest = (0..40).filter(|i| i % 7 == d).max().unwrap() + 100;
        assert_eq!(
            r.ingest.last_sequence(&format!("d{d}")).await.unwrap(),
            Some(highest)
        );
    }
    // Ids of two kinds with the same text share one key: in one group, the higher number
    // is kept whichever comes first (several times, so no map order can hide a lost max).
    for round in 0..8u64 {
        let (low, high) = (1000 + 2 * round, 1001 + 2 * round);
        let mut serial = reading("s", low);
        serial.device.id = DeviceId::Serial("s".into());
        let other = reading("s", high);
        let group = if round % 2 == 0 {
            vec![serial, other]
        } else {
            vec![other, serial]
        };
        r.ingest.commit(group).await.unwrap();
        assert_eq!(r.ingest.last_sequence("s").await.unwrap(), Some(high));
    }
}

#[tokio::test]
async fn the_writer_reports_what_each_source_committed_and_dead_lettered() {
    type Seen = (Vec<(String, usize)>, Vec<(String, String)>, u64, bool);
    let root = tempfile::tempdir().unwrap();
    let seen: Arc<StdMutex<Vec<Seen>>> = Default::default();
    let record = seen.clone();
    let on_commit: OnCommit = Box::new(move |report| {
        if report.committed_at.is_none() && report.counts.refused_full == 0 {
            return; // housekeeping rounds
        }
        record.lock().unwrap().push((
            report
                .readings
                .iter()
                .map(|(source, r)| (source.to_string(), r.len()))
                .collect(),
            report
                .rejected
                .iter()
                .map(|(source, r)| (source.to_string(), r.origin.clone()))
                .collect(),
            report.counts.refused_full,
            report.committed_at.is_some() && report.error.is_none(),
        ));
    });
    let r = Running::start_with(root.path(), &options(root.path(), 3), on_commit).await;
    let (serial, ble) = (r.ingest.for_source("serial"), r.ingest.for_source("ble"));
    serial
        .commit(vec![reading("s", 1), reading("s", 2)])
        .await
        .unwrap();
    ble.reject("ble:AABBCC".into(), "bad frame".into(), &[1, 2])
        .await
        .unwrap();
    let full = ble.commit(vec![reading("b", 1), reading("b", 2)]).await;
    assert_eq!(full, Err(CommitError::Full { capacity: 3 }));
    drop((serial, ble));
    let (_, totals) = r.stop().await;
    assert_eq!(
        (totals.inserted, totals.refused_full, totals.failed),
        (2, 1, 0)
    );
    let seen = seen.lock().unwrap();
    assert_eq!(
        *seen,
        vec![
            (vec![("serial".to_owned(), 2)], vec![], 0, true),
            (
                vec![("ble".to_owned(), 0)],
                vec![("ble".to_owned(), "ble:AABBCC".to_owned())],
                0,
                true
            ),
            (vec![], vec![], 1, false),
        ]
    );
}

#[tokio::test]
async fn live_stats_agree_with_the_full_scan() {
    let root = tempfile::tempdir().unwrap();
    let r = Running::start(root.path(), 100).await;
    let empty = r.store.live_stats().await.unwrap();
    assert_eq!((empty.pending, empty.oldest_age_ms), (0, None));
    r.ingest
        .commit((0..5).map(|i| reading("l", i)).collect())
        .await
        .unwrap();
    r.ingest
        .reject("test:x".into(), "bad".into(), &[0])
        .await
        .unwrap();
    let _leased = r.store.lease(&dest(&r.store), 2).await.unwrap();
    let live = r.store.live_stats().await.unwrap();
    let full = r.store.stats().await.unwrap();
    assert_eq!(
        (live.pending, live.leased, live.dead_letters),
        (full.pending, full.leased, full.dead_letters)
    );
    assert_eq!((live.pending, live.leased, live.dead_letters), (5, 2, 1));
    // Every reading here has the same receive time, so the head is also the oldest.
    let (a, b) = (live.oldest_age_ms.unwrap(), full.oldest_age_ms.unwrap());
    assert!((a - b).abs() < 1000, "{a} vs {b}");
}

#[tokio::test]
async fn many_concurrent_requests_are_grouped_into_few_commits() {
    let root = tempfile::tempdir().unwrap();
    let (store, writer, _) = open(&data(root.path()), &options(root.path(), 100_000))
        .await
        .unwrap();
    let (tx, rx) = pipeline::channel();
    let config = WriterConfig {
        max_rows: 4096,
        linger: Duration::from_millis(2),
    };
    let stop = CancellationToken::new();
    stop.cancel();
    let w = tokio::spawn(writer.run(rx, config, stop, Box::new(|_| {})));
    let ingest = Ingest::new(tx, "test");
    let tasks: Vec<_> = (0..2000)
        .map(|i| {
            let ingest = ingest.clone();
            tokio::spawn(async move { ingest.commit(vec![reading("g", i)]).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    drop(ingest);
    let totals = w.await.unwrap();
    assert_eq!(totals.inserted, 2000);
    assert!(
        totals.commits < 200,
        "2000 readings took {} commits",
        totals.commits
    );
    drop(store);
}

/// What each committed group held: (readings inserted, rows deleted after delivery).
type GroupLog = Arc<StdMutex<Vec<(u64, u64)>>>;

/// A [`GroupLog`] and the writer's callback that fills it.
fn group_log() -> (GroupLog, OnCommit) {
    let log = Arc::new(StdMutex::new(Vec::new()));
    let record = log.clone();
    let on_commit: OnCommit = Box::new(move |r: &GroupReport<'_>| {
        if r.committed_at.is_some() {
            let c = &r.counts;
            record.lock().unwrap().push((c.inserted, c.deleted));
        }
    });
    (log, on_commit)
}

#[tokio::test]
async fn a_sources_own_wait_for_company_replaces_the_writers() {
    // The writer would commit at once; this source's requests wait up to a second for
    // company, so two sent 50 ms apart share one commit.
    let root = tempfile::tempdir().unwrap();
    let (log, on_commit) = group_log();
    let r = Running::lingering(
        root.path(),
        &options(root.path(), 100),
        Duration::ZERO,
        on_commit,
    )
    .await;
    let patient = r.ingest.clone().with_linger(Duration::from_secs(1));
    let first = {
        let patient = patient.clone();
        tokio::spawn(async move { patient.commit(vec![reading("a", 1)]).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !first.is_finished(),
        "committed without waiting for company"
    );
    patient.commit(vec![reading("a", 2)]).await.unwrap();
    first.await.unwrap().unwrap();
    assert_eq!(*log.lock().unwrap(), [(2, 0)]);

    // And the reverse: a writer that waits long, a source that does not.
    drop(patient);
    let (store, _) = r.stop().await;
    drop(store);
    let (log, on_commit) = group_log();
    let r = Running::lingering(
        root.path(),
        &options(root.path(), 100),
        Duration::from_secs(30),
        on_commit,
    )
    .await;
    let hasty = r.ingest.clone().with_linger(Duration::ZERO);
    tokio::time::timeout(Duration::from_secs(10), hasty.commit(vec![reading("a", 3)]))
        .await
        .expect("committed without the writer's 30 s wait")
        .unwrap();
    assert_eq!(*log.lock().unwrap(), [(1, 0)]);
}

/// Acknowledges `ids` for the tests' destination in a task of its own (the writer may hold
/// the answer back until readings arrive).
fn spawn_ack(store: &Store, ids: Vec<i64>) -> tokio::task::JoinHandle<Result<u64, BufferError>> {
    let store = store.clone();
    tokio::spawn(async move { store.ack(&dest(&store), &ids).await })
}

#[tokio::test]
async fn a_delivery_shares_its_commit_with_readings_that_are_arriving() {
    let root = tempfile::tempdir().unwrap();
    let (log, on_commit) = group_log();
    let r = Running::lingering(
        root.path(),
        &options(root.path(), 100),
        Duration::from_millis(500),
        on_commit,
    )
    .await;
    let hasty = r.ingest.clone().with_linger(Duration::ZERO);
    hasty.commit(vec![reading("a", 1)]).await.unwrap();
    let leased = r.store.lease(&dest(&r.store), 10).await.unwrap();
    // Readings are arriving: the acknowledgement waits for the next one.
    let ack = spawn_ack(&r.store, vec![leased[0].id]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    hasty.commit(vec![reading("a", 2)]).await.unwrap();
    assert_eq!(ack.await.unwrap().unwrap(), 1);
    assert_eq!(*log.lock().unwrap(), [(1, 0), (1, 1)], "one fsync for both");

    // Nothing arrived for a while (a backlog being delivered): an acknowledgement is
    // committed at once, not after the writer's wait.
    let leased = r.store.lease(&dest(&r.store), 10).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let started = std::time::Instant::now();
    r.store.ack(&dest(&r.store), &[leased[0].id]).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "the acknowledgement waited {:?} for readings that were not coming",
        started.elapsed()
    );
    assert_eq!(*log.lock().unwrap(), [(1, 0), (1, 1), (0, 1)]);
}

#[tokio::test]
async fn at_a_low_steady_rate_a_delivery_waits_for_the_next_reading_to_share_its_commit() {
    // The writer's own wait is the default's 2 ms; readings come every 100 ms (a hub with a
    // few devices). A delivery waits for the next reading all the same, so each reading
    // costs one commit, not one to store it and one to record its delivery.
    let root = tempfile::tempdir().unwrap();
    let (log, on_commit) = group_log();
    let r = Running::lingering(
        root.path(),
        &options(root.path(), 100),
        Duration::from_millis(2),
        on_commit,
    )
    .await;
    let hasty = r.ingest.clone().with_linger(Duration::ZERO);
    for seq in 1..=3 {
        hasty.commit(vec![reading("a", seq)]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leased = r.store.lease(&dest(&r.store), 10).await.unwrap();
    let ack = spawn_ack(&r.store, leased.iter().map(|l| l.id).collect());
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(!ack.is_finished(), "committed alone, without waiting");
    hasty.commit(vec![reading("a", 4)]).await.unwrap();
    assert_eq!(ack.await.unwrap().unwrap(), 3);
    assert_eq!(
        *log.lock().unwrap(),
        [(1, 0), (1, 0), (1, 0), (1, 3)],
        "the delivery shared the fourth reading's commit"
    );

    // A backlog being delivered while readings still trickle in: a whole group's delivery is
    // recorded at once, not after waiting for the next reading (which would slow the backlog
    // to one batch per reading that comes).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let backlog: Vec<Reading> = (5..5 + pipeline::SMALL_GROUP as u64)
        .map(|seq| reading("a", seq))
        .collect();
    hasty.commit(backlog).await.unwrap();
    let leased = r.store.lease(&dest(&r.store), 1000).await.unwrap();
    let ids: Vec<i64> = leased.iter().map(|l| l.id).collect();
    let ack = tokio::time::timeout(
        Duration::from_millis(300),
        r.store.ack(&dest(&r.store), &ids),
    )
    .await
    .expect("a whole group's delivery waited for readings");
    assert_eq!(ack.unwrap(), 1 + pipeline::SMALL_GROUP as u64);
}

mod destinations {
    //! Several destinations at once: each gets every reading, on its own.

    use super::*;

    fn two(root: &Path) -> OpenOptions {
        OpenOptions {
            destinations: vec!["fhir".into(), "mqtt".into()],
            ..options(root, 1000)
        }
    }

    fn seqs(leased: &[Leased]) -> Vec<u64> {
        leased
            .iter()
            .map(|l| l.reading.as_ref().unwrap().sequence.unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_reading_leaves_the_buffer_only_when_every_destination_has_it() {
        let root = tempfile::tempdir().unwrap();
        let r = Running::start_with(root.path(), &two(root.path()), Box::new(|_| {})).await;
        let (fhir, mqtt) = (
            r.store.destination("fhir").unwrap(),
            r.store.destination("mqtt").unwrap(),
        );
        r.ingest
            .commit((1..=4).map(|i| reading("d", i)).collect())
            .await
            .unwrap();
        // Each destination leases everything, independently.
        let to_fhir = r.store.lease(&fhir, 10).await.unwrap();
        let to_mqtt = r.store.lease(&mqtt, 2).await.unwrap();
        assert_eq!(seqs(&to_fhir), [1, 2, 3, 4]);
        assert_eq!(seqs(&to_mqtt), [1, 2]);
        let ids = |l: &[Leased]| l.iter().map(|l| l.id).collect::<Vec<_>>();
        assert_eq!(r.store.ack(&fhir, &ids(&to_fhir)).await.unwrap(), 4);
        assert_eq!(
            r.store.stats().await.unwrap().pending,
            4,
            "mqtt still needs them"
        );
        assert_eq!(r.store.pending_for(&fhir).await.unwrap(), 0);
        assert_eq!(r.store.pending_for(&mqtt).await.unwrap(), 4);
        assert_eq!(r.store.ack(&mqtt, &ids(&to_mqtt)).await.unwrap(), 2);
        assert_eq!(r.store.stats().await.unwrap().pending, 2);
        assert_eq!(r.store.pending(), 2);
        // An acknowledgement repeated (after a resend) changes nothing.
        assert_eq!(r.store.ack(&fhir, &ids(&to_fhir)).await.unwrap(), 0);
        let rest = r.store.lease(&mqtt, 10).await.unwrap();
        assert_eq!(seqs(&rest), [3, 4]);
        r.store.ack(&mqtt, &ids(&rest)).await.unwrap();
        assert_eq!(r.store.stats().await.unwrap().pending, 0);
        assert_eq!(r.store.pending(), 0);
    }

    #[tokio::test]
    async fn a_dead_letter_of_one_destination_does_not_keep_it_from_the_others() {
        let root = tempfile::tempdir().unwrap();
        let r = Running::start_with(root.path(), &two(root.path()), Box::new(|_| {})).await;
        let (fhir, mqtt) = (
            r.store.destination("fhir").unwrap(),
            r.store.destination("mqtt").unwrap(),
        );
        r.ingest.commit(vec![reading("d", 1)]).await.unwrap();
        let leased = r.store.lease(&fhir, 10).await.unwrap();
        r.store
            .dead_letter(&fhir, "uplink:fhir", &[(leased[0].id, "422".into())])
            .await
            .unwrap();
        assert_eq!(r.store.pending_for(&fhir).await.unwrap(), 0);
        assert_eq!(r.store.pending_for(&mqtt).await.unwrap(), 1);
        let letters = r.store.dead_letters(10, Some("fhir")).await.unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].destination.as_deref(), Some("fhir"));
        assert!(r
            .store
            .dead_letters(10, Some("mqtt"))
            .await
            .unwrap()
            .is_empty());
        r.stop().await;
        // Retried for fhir: owed to it again, still owed to mqtt, stored once.
        let (store, mut writer, _) = open(&data(root.path()), &two(root.path())).await.unwrap();
        let fhir = store.destination("fhir").unwrap();
        assert_eq!(writer.retry_dead_letters(Some(&fhir)).await.unwrap(), 1);
        assert_eq!(store.stats().await.unwrap().pending, 1);
        assert_eq!(store.pending_for(&fhir).await.unwrap(), 1);
        writer.close().await;
    }

    #[tokio::test]
    async fn a_destination_taken_out_of_the_configuration_gets_its_readings_dead_lettered() {
        let root = tempfile::tempdir().unwrap();
        let r = Running::start_with(root.path(), &two(root.path()), Box::new(|_| {})).await;
        let fhir = r.store.destination("fhir").unwrap();
        r.ingest
            .commit((1..=3).map(|i| reading("d", i)).collect())
            .await
            .unwrap();
        // fhir has 1 and 2; mqtt has none.
        let leased = r.store.lease(&fhir, 2).await.unwrap();
        let ids: Vec<i64> = leased.iter().map(|l| l.id).collect();
        r.store.ack(&fhir, &ids).await.unwrap();
        r.stop().await;
        // mqtt is removed: 1 and 2 (only it still needed them) become its dead letters; 3 stays
        // for fhir only.
        let only_fhir = OpenOptions {
            destinations: vec!["fhir".into()],
            ..options(root.path(), 1000)
        };
        let (store, writer, report) = open(&data(root.path()), &only_fhir).await.unwrap();
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("destination mqtt was taken out")),
            "{report:?}"
        );
        assert_eq!(store.stats().await.unwrap().pending, 1);
        let letters = store.dead_letters(10, Some("mqtt")).await.unwrap();
        assert_eq!(letters.len(), 2);
        writer.close().await;
        drop(store);
        // A new destination gets what comes from now on, not what was taken before it.
        let with_file = OpenOptions {
            destinations: vec!["fhir".into(), "file".into()],
            ..options(root.path(), 1000)
        };
        let r = Running::start_with(root.path(), &with_file, Box::new(|_| {})).await;
        let file = r.store.destination("file").unwrap();
        assert_eq!(r.store.pending_for(&file).await.unwrap(), 0);
        r.ingest.commit(vec![reading("d", 9)]).await.unwrap();
        assert_eq!(seqs(&r.store.lease(&file, 10).await.unwrap()), [9]);
    }
}

mod at_rest {
    //! Encryption at rest, keys, quarantine, the schema-1 conversion.

    use super::*;

    fn patient_reading(seq: u64) -> Reading {
        let mut r = reading("DEV-SECRET-1", seq);
        r.patient = Some(PatientRef::identifier("urn:oid:1.2.3.4.5", "PATIENT-4711"));
        r.value = Value::Quantity(Quantity {
            value: Measured::Value(Decimal::new(98_765, -3)),
            unit: "%".into(),
        });
        r
    }

    #[tokio::test]
    async fn no_patient_identifier_or_value_is_in_clear_anywhere_under_data_dir() {
        let root = tempfile::tempdir().unwrap();
        let r = Running::start(root.path(), 1000).await;
        r.ingest
            .commit((0..50).map(patient_reading).collect())
            .await
            .unwrap();
        r.ingest
            .reject(
                "mqtt:ward/PATIENT-4711".into(),
                "value 98.765 out of range".into(),
                b"{\"patient\":\"PATIENT-4711\",\"value\":98.765}",
            )
            .await
            .unwrap();
        // A delivered row and one the server refused: both leave plaintext nowhere.
        let leased = r.store.lease(&dest(&r.store), 2).await.unwrap();
        r.store.ack(&dest(&r.store), &[leased[0].id]).await.unwrap();
        r.store
            .dead_letter(
                &dest(&r.store),
                "uplink:fhir",
                &[(leased[1].id, "PATIENT-4711 98.765".into())],
            )
            .await
            .unwrap();
        // Checked while running (WAL not yet checkpointed) and after a crash.
        for when in ["running", "after a crash"] {
            let bytes = all_bytes(&data(root.path()));
            for secret in ["PATIENT-4711", "98.765", "1.2.3.4.5", "ward/"] {
                assert!(
                    !contains(&bytes, secret.as_bytes()),
                    "{secret:?} found in clear under data_dir ({when})"
                );
            }
            if when == "running" {
                assert!(contains(&bytes, b"SQLite format 3"), "the files were read");
            }
        }
        r.crash().await;
        let bytes = all_bytes(&data(root.path()));
        assert!(!contains(&bytes, b"PATIENT-4711"));
    }

    #[tokio::test]
    async fn a_wrong_or_missing_key_stops_the_open_and_deletes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let r = Running::start(root.path(), 100).await;
        r.ingest.commit(vec![reading("a", 1)]).await.unwrap();
        r.stop().await;
        let before = std::fs::read(data(root.path()).join(open::DB_FILE)).unwrap();

        let mut wrong = options(root.path(), 100);
        wrong.key_file = root.path().join("other.key");
        seal::BufferKey::create(&wrong.key_file).unwrap();
        let e = open(&data(root.path()), &wrong).await.err().unwrap();
        assert!(matches!(e, BufferError::WrongKey { .. }), "{e}");
        assert!(e.to_string().contains("nothing was read or deleted"), "{e}");

        let mut missing = options(root.path(), 100);
        missing.key_file = root.path().join("gone.key");
        let e = open(&data(root.path()), &missing).await.err().unwrap();
        assert!(matches!(e, BufferError::KeyMissing { .. }), "{e}");
        assert!(
            !missing.key_file.exists(),
            "no key is made up for a sealed buffer"
        );

        assert_eq!(
            std::fs::read(data(root.path()).join(open::DB_FILE)).unwrap(),
            before
        );
        let r = Running::start(root.path(), 100).await;
        assert_eq!(r.store.stats().await.unwrap().pending, 1);
    }

    #[tokio::test]
    async fn rotating_the_key_keeps_every_buffered_reading_and_dead_letter() {
        let root = tempfile::tempdir().unwrap();
        // More than two of the rotation's chunks of 500 rows, and a remainder.
        const N: u64 = 1_001;
        let r = Running::start(root.path(), 2_000).await;
        r.ingest
            .commit((0..N).map(patient_reading).collect())
            .await
            .unwrap();
        r.ingest
            .reject("mqtt:t".into(), "bad".into(), b"payload")
            .await
            .unwrap();
        r.stop().await;
        let old = root.path().join("buffer.key");
        let new = root.path().join("new.key");
        seal::BufferKey::create(&new).unwrap();
        let rotated = OpenOptions {
            key_file: new.clone(),
            previous_key_files: vec![old.clone()],
            ..options(root.path(), 2_000)
        };
        let (store, writer, report) = open(&data(root.path()), &rotated).await.unwrap();
        assert_eq!(report.rotated, Some(N + 1));
        let leased = store.lease(&dest(&store), 2_000).await.unwrap();
        assert_eq!(leased.len() as u64, N);
        assert!(leased.iter().all(|l| l.reading.is_ok()));
        assert_eq!(
            store.dead_letters(10, None).await.unwrap()[0]
                .details
                .as_ref()
                .unwrap()
                .content,
            b"payload"
        );
        writer.close().await;
        drop(store);
        // The old key alone no longer opens it.
        let e = open(&data(root.path()), &options(root.path(), 2_000))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, BufferError::WrongKey { .. }), "{e}");
        let (store, _w, report) = open(
            &data(root.path()),
            &OpenOptions {
                key_file: new,
                ..options(root.path(), 2_000)
            },
        )
        .await
        .unwrap();
        assert_eq!(report.rotated, None);
        assert_eq!(store.stats().await.unwrap().pending, N);
    }

    async fn with_pending(root: &Path, n: u64) {
        let r = Running::start(root, 1000).await;
        r.ingest
            .commit((0..n).map(|i| reading("q", i)).collect())
            .await
            .unwrap();
        r.stop().await;
    }

    /// Damages `buffer.db` one way, opens, and checks the quarantine.
    async fn quarantined_after(kind: &str, damage: impl FnOnce(&Path)) -> Quarantine {
        let root = tempfile::tempdir().unwrap();
        with_pending(root.path(), 20).await;
        let db = data(root.path()).join(open::DB_FILE);
        damage(&db);
        let (store, writer, report) = open(&data(root.path()), &options(root.path(), 1000))
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e:?}"));
        let q = report
            .quarantined
            .clone()
            .unwrap_or_else(|| panic!("{kind}: not quarantined: {report:?}"));
        assert!(q.path.join("buffer.db").exists(), "{kind}");
        assert!(
            std::fs::read_to_string(q.path.join("README.txt"))
                .unwrap()
                .contains("vitalbridge queue salvage"),
            "{kind}"
        );
        assert_eq!(
            store.stats().await.unwrap().pending,
            0,
            "{kind}: a fresh buffer"
        );
        assert_eq!(store.health().quarantined, 1, "{kind}");
        writer.close().await;
        q
    }

    /// Scribbles over every page after the first: the header and page 1 survive, the rest do
    /// not (SQLite then says `malformed database schema` when it first reads the database).
    fn scribble_btree_pages(db: &Path) {
        let mut bytes = std::fs::read(db).unwrap();
        let (page, len) = (4096, bytes.len());
        for p in (page..len).step_by(page) {
            bytes[p + 8..(p + 200).min(len)].fill(0xA5);
        }
        std::fs::write(db, bytes).unwrap();
    }

    /// A connection that fails on a damaged database is closed before `connect` returns: a
    /// connection left to close later on its worker thread unlinks `buffer.db-wal` by name,
    /// which after a quarantine may be the fresh database's WAL. With sqlx running the
    /// pragmas inside `connect_with`, the `-wal` was still there when the error came back and
    /// gone a few milliseconds later.
    #[tokio::test]
    async fn a_connection_that_fails_on_a_damaged_database_is_closed_before_the_error_returns() {
        let root = tempfile::tempdir().unwrap();
        with_pending(root.path(), 20).await;
        let db = data(root.path()).join(open::DB_FILE);
        let wal = data(root.path()).join(format!("{}-wal", open::DB_FILE));
        assert!(!wal.exists(), "a clean stop removes the WAL");
        scribble_btree_pages(&db);
        let e = open::connect(&db)
            .await
            .expect_err("a damaged schema fails");
        assert!(format!("{e:?}").contains("malformed"), "{e:?}");
        assert!(
            !wal.exists(),
            "the failed connection is still open: its WAL is there after the error"
        );
    }

    #[tokio::test]
    async fn every_kind_of_damaged_database_is_quarantined_and_a_fresh_one_started() {
        let q = quarantined_after("0 bytes", |db| {
            std::fs::write(db, b"").unwrap();
        })
        .await;
        assert!(q.reason.contains("empty"), "{}", q.reason);
        quarantined_after("truncated header", |db| {
            let bytes = std::fs::read(db).unwrap();
            std::fs::write(db, &bytes[..50]).unwrap();
        })
        .await;
        quarantined_after("zeroed header", |db| {
            let mut bytes = std::fs::read(db).unwrap();
            bytes[..100].fill(0);
            std::fs::write(db, bytes).unwrap();
        })
        .await;
        quarantined_after("random", |db| {
            let len = std::fs::metadata(db).unwrap().len() as usize;
            let noise: Vec<u8> = (0..len).map(|_| rand::random()).collect();
            std::fs::write(db, noise).unwrap();
        })
        .await;
        let q = quarantined_after("scribbled b-tree pages", scribble_btree_pages).await;
        assert!(!q.reason.is_empty());
    }

    #[tokio::test]
    async fn salvage_brings_back_every_reading_of_a_quarantined_database_once() {
        let root = tempfile::tempdir().unwrap();
        // Half checkpointed into buffer.db by a clean stop, half only in the WAL: the files as
        // a crash leaves them (copied while running; a closing connection checkpoints).
        with_pending(root.path(), 150).await;
        let r = Running::start(root.path(), 1000).await;
        r.ingest
            .commit((150..300).map(|i| reading("q", i)).collect())
            .await
            .unwrap();
        let db = data(root.path()).join(open::DB_FILE);
        let wal = data(root.path()).join("buffer.db-wal");
        let (db_bytes, wal_bytes) = (std::fs::read(&db).unwrap(), std::fs::read(&wal).unwrap());
        r.stop().await;
        std::fs::write(&db, db_bytes).unwrap();
        std::fs::write(&wal, wal_bytes).unwrap();
        let _ = std::fs::remove_file(data(root.path()).join("buffer.db-shm"));
        let mut bytes = std::fs::read(&db).unwrap();
        bytes[..100].fill(0);
        std::fs::write(&db, bytes).unwrap();

        let (store, mut writer, report) = open(&data(root.path()), &options(root.path(), 1000))
            .await
            .unwrap();
        let q = report.quarantined.expect("quarantined");
        assert!(
            q.path.join("buffer.db-wal").exists(),
            "the WAL went with it"
        );
        assert_eq!(store.stats().await.unwrap().pending, 0);
        let mut counts = Vec::new();
        let salvaged =
            salvage::salvage_with_progress(&mut writer, &q.path, vec![], &mut |n| counts.push(n))
                .await
                .unwrap();
        assert_eq!(
            (salvaged.found, salvaged.queued),
            (300, 300),
            "{salvaged:?}"
        );
        assert!(salvaged.wal.is_some());
        // Progress as it goes (a running count, never going back), ending at what it found.
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
        assert_eq!(counts.last(), Some(&300), "{counts:?}");
        let mut seqs: Vec<u64> = store
            .lease(&dest(&store), 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.reading.unwrap().sequence.unwrap())
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (0..300).collect::<Vec<_>>());
        // Twice is harmless.
        let again = salvage::salvage(&mut writer, &q.path, vec![])
            .await
            .unwrap();
        assert_eq!((again.found, again.queued), (300, 0));
        assert_eq!(store.stats().await.unwrap().pending, 300);
        writer.close().await;
    }

    #[tokio::test]
    async fn salvage_needs_the_key_the_readings_were_sealed_with() {
        let root = tempfile::tempdir().unwrap();
        with_pending(root.path(), 20).await;
        let db = data(root.path()).join(open::DB_FILE);
        std::fs::write(&db, b"").unwrap();
        // Another data directory, with another key, does the salvaging.
        let other = tempfile::tempdir().unwrap();
        let (_store, mut writer, _) = open(&data(other.path()), &options(other.path(), 1000))
            .await
            .unwrap();
        let quarantined = {
            let (_s, w, report) = open(&data(root.path()), &options(root.path(), 1000))
                .await
                .unwrap();
            w.close().await;
            report.quarantined
        };
        // The damaged file was quarantined with 0 bytes: nothing to find, no error.
        let q = quarantined.expect("quarantined");
        let none = salvage::salvage(&mut writer, &q.path, vec![])
            .await
            .unwrap();
        assert_eq!((none.found, none.unreadable), (0, 0));

        // A readable file sealed with another key: unreadable until the key is given.
        let sealed_elsewhere = root.path().join("elsewhere");
        with_pending(&sealed_elsewhere, 25).await;
        let file = data(&sealed_elsewhere).join(open::DB_FILE);
        let without = salvage::salvage(&mut writer, &file, vec![]).await.unwrap();
        assert_eq!(without.found, 0);
        assert!(without.unreadable >= 25, "{without:?}");
        let key = seal::BufferKey::load(&sealed_elsewhere.join("buffer.key")).unwrap();
        let with = salvage::salvage(&mut writer, &file, vec![key])
            .await
            .unwrap();
        assert_eq!((with.found, with.queued), (25, 25));
        writer.close().await;
    }

    #[tokio::test]
    async fn a_missing_or_replaced_database_is_reported_not_silently_accepted() {
        let root = tempfile::tempdir().unwrap();
        with_pending(root.path(), 5).await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(data(root.path()).join(format!("buffer.db{suffix}")));
        }
        let (_store, writer, report) = open(&data(root.path()), &options(root.path(), 1000))
            .await
            .unwrap();
        assert!(
            report.warnings.iter().any(|w| w.contains("is missing")),
            "{report:?}"
        );
        writer.close().await;
    }

    #[tokio::test]
    async fn a_schema_1_buffer_is_sealed_at_its_first_open_and_its_plaintext_is_gone() {
        // More than two of the conversion's chunks of 500 rows, and a remainder.
        const N: u64 = 1_001;
        let root = tempfile::tempdir().unwrap();
        let dir = data(root.path());
        std::fs::create_dir_all(&dir).unwrap();
        {
            let mut conn = old_schema(root.path(), "0002").await;
            for i in 0..N {
                let r = patient_reading(i);
                sqlx::query("INSERT INTO readings (identifier, device_key, received_ms, body) VALUES (?, ?, ?, ?)")
                    .bind(r.identifier())
                    .bind(r.device.id.key())
                    .bind(1_780_000_000_000i64)
                    .bind(codec::encode(&r))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            sqlx::query("INSERT INTO dead_letters (created_ms, kind, origin, reason, identifier, body) VALUES (1, 'payload', 'mqtt:x', 'bad', NULL, ?)")
                .bind(b"PATIENT-4711 garbage".to_vec())
                .execute(&mut conn)
                .await
                .unwrap();
            sqlx::Connection::close(conn).await.unwrap();
        }
        assert!(contains(&all_bytes(&dir), b"PATIENT-4711"));
        let (store, writer, report) = open(&dir, &options(root.path(), 2_000)).await.unwrap();
        assert_eq!(report.converted, Some(N + 1));
        let leased = store.lease(&dest(&store), 2_000).await.unwrap();
        let mut seqs: Vec<u64> = leased
            .into_iter()
            .map(|l| l.reading.unwrap().sequence.unwrap())
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (0..N).collect::<Vec<_>>());
        let letter = store.dead_letters(1, None).await.unwrap().remove(0);
        assert_eq!(letter.details.unwrap().content, b"PATIENT-4711 garbage");
        writer.close().await;
        store.close().await;
        assert!(
            !contains(&all_bytes(&dir), b"PATIENT-4711"),
            "no plaintext page survives the conversion"
        );
    }
}

mod model {
    //! Model-based test: random commits, leases, acks, releases, dead letters, crashes and a
    //! disk that fills and frees, against a plain in-memory model of what must be pending.

    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Commit(Vec<u64>),
        Lease(usize),
        AckFirst(usize),
        ReleaseFirst(usize),
        DeadLetterFirst,
        Crash,
        DiskFull,
        DiskFreed,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => proptest::collection::vec(0u64..60, 1..8).prop_map(Op::Commit),
            3 => (1usize..6).prop_map(Op::Lease),
            3 => (1usize..6).prop_map(Op::AckFirst),
            1 => (1usize..4).prop_map(Op::ReleaseFirst),
            1 => Just(Op::DeadLetterFirst),
            1 => Just(Op::Crash),
            1 => Just(Op::DiskFull),
            1 => Just(Op::DiskFreed),
        ]
    }

    const CAPACITY: u64 = 20;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn the_buffer_never_loses_duplicates_or_acknowledges_what_it_did_not_store(
            ops in proptest::collection::vec(op(), 1..40)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let root = tempfile::tempdir().unwrap();
                let db = data(root.path()).join(open::DB_FILE);
                let mut r = Running::start(root.path(), CAPACITY).await;
                let mut pending: BTreeSet<u64> = BTreeSet::new();
                // Acks the writer could not record yet (it retries them): still on disk.
                let mut settling: BTreeSet<u64> = BTreeSet::new();
                // Delivered, or dead-lettered (kept among the dead letters): settled, so a
                // retransmission is not stored again.
                let mut delivered: BTreeSet<u64> = BTreeSet::new();
                let mut dead: u64 = 0;
                let mut held: Vec<(i64, u64)> = Vec::new();
                let mut full = false;
                // The writer's open connection keeps the old limit until a write fails once
                // and it reconnects (a real disk frees at once; this is the test's stand-in).
                let mut stale_limit = false;
                for op in ops {
                    match op {
                        Op::Commit(seqs) => {
                            let result = r.ingest.commit(seqs.iter().map(|s| reading("m", *s)).collect()).await;
                            let on_disk = pending.len() as u64 + settling.len() as u64;
                            match result {
                                Ok(_) => {
                                    prop_assert!(on_disk + seqs.len() as u64 <= CAPACITY, "over capacity");
                                    // A retransmission of one still buffered is stored once.
                                    pending.extend(seqs.iter().filter(|s| !settling.contains(s) && !delivered.contains(s)));
                                }
                                Err(CommitError::Full { .. }) => {
                                    prop_assert!(on_disk + seqs.len() as u64 > CAPACITY);
                                }
                                Err(CommitError::Storage(f)) => {
                                    prop_assert!(full || stale_limit, "a storage error without a full disk: {}", f);
                                    // The writer reconnects after a failure: the old limit is gone.
                                    stale_limit = false;
                                }
                                Err(e) => prop_assert!(false, "unexpected {}", e),
                            }
                        }
                        Op::Lease(n) => {
                            for l in r.store.lease(&dest(&r.store), n).await.unwrap() {
                                let seq = l.reading.unwrap().sequence.unwrap();
                                prop_assert!(pending.contains(&seq));
                                prop_assert!(!held.iter().any(|(_, s)| *s == seq), "leased twice");
                                held.push((l.id, seq));
                            }
                        }
                        Op::AckFirst(n) => {
                            let acked: Vec<(i64, u64)> = held.drain(..n.min(held.len())).collect();
                            let ids: Vec<i64> = acked.iter().map(|(id, _)| *id).collect();
                            let ok = r.store.ack(&dest(&r.store), &ids).await.is_ok();
                            for (_, s) in acked {
                                pending.remove(&s);
                                if ok {
                                    delivered.insert(s);
                                } else {
                                    settling.insert(s);
                                }
                            }
                        }
                        Op::ReleaseFirst(n) => {
                            let released: Vec<(i64, u64)> = held.drain(..n.min(held.len())).collect();
                            r.store.release(&dest(&r.store), &released.iter().map(|(id, _)| *id).collect::<Vec<_>>()).await;
                        }
                        Op::DeadLetterFirst => {
                            if !held.is_empty() && !full {
                                let (id, s) = held.remove(0);
                                r.store.dead_letter(&dest(&r.store), "test", &[(id, "why".into())]).await.unwrap();
                                pending.remove(&s);
                                delivered.insert(s);
                                dead += 1;
                            }
                        }
                        Op::Crash => {
                            r.crash().await;
                            held.clear();
                            // Deletes that never happened: those rows are there again.
                            pending.append(&mut settling);
                            r = Running::start(root.path(), CAPACITY).await;
                        }
                        Op::DiskFull => {
                            if !full {
                                let pages: u64 = sqlx::query_scalar::<_, i64>("PRAGMA page_count")
                                    .fetch_one(&r.store.inner.reader).await.unwrap() as u64;
                                lock(&TEST_MAX_PAGES).push((db.clone(), pages));
                                // The writer's connection takes the limit when it reconnects.
                                r.crash().await;
                                held.clear();
                                pending.append(&mut settling);
                                r = Running::start(root.path(), CAPACITY).await;
                                full = true;
                            }
                        }
                        Op::DiskFreed => {
                            lock(&TEST_MAX_PAGES).retain(|(p, _)| p != &db);
                            stale_limit |= full;
                            full = false;
                        }
                    }
                    let stats = r.store.stats().await.unwrap();
                    let on_disk = pending.len() as u64 + settling.len() as u64;
                    // Kept deletes may have been recorded since: between the two.
                    prop_assert!(
                        stats.pending >= pending.len() as u64 && stats.pending <= on_disk,
                        "{} on disk, model {}..={}", stats.pending, pending.len(), on_disk
                    );
                    prop_assert_eq!(stats.dead_letters, dead);
                }
                lock(&TEST_MAX_PAGES).retain(|(p, _)| p != &db);
                // Everything pending can still be leased, exactly once.
                let mut all: BTreeSet<u64> = held.iter().map(|(_, s)| *s).collect();
                for l in r.store.lease(&dest(&r.store), 1000).await.unwrap() {
                    let seq = l.reading.unwrap().sequence.unwrap();
                    prop_assert!(all.insert(seq) || settling.contains(&seq));
                }
                all.retain(|s| !settling.contains(s));
                prop_assert_eq!(all, pending);
                Ok(())
            })?;
        }
    }
}

/// The writer keeps the directory record's high water up to date (at its close here, off the
/// runtime's worker): a database later replaced by a copy from before its last commits is
/// reported at the next open.
#[tokio::test]
async fn the_writer_records_its_high_water_so_an_older_copy_is_reported() {
    let root = tempfile::tempdir().unwrap();
    let db = data(root.path()).join(open::DB_FILE);
    let r = Running::start(root.path(), 100).await;
    r.ingest.commit(vec![reading("h", 1)]).await.unwrap();
    r.stop().await;
    let copy = root.path().join("copy.db");
    std::fs::copy(&db, &copy).unwrap();

    let r = Running::start(root.path(), 100).await;
    r.ingest
        .commit((2..=4).map(|i| reading("h", i)).collect())
        .await
        .unwrap();
    r.stop().await;
    std::fs::copy(&copy, &db).unwrap();
    let (_store, writer, report) = open(&data(root.path()), &options(root.path(), 100))
        .await
        .unwrap();
    writer.close().await;
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("restored from an older copy")),
        "{report:?}"
    );
}

/// Commits readings 1 and 2 of device "m" (the same readings every time: a sender's resend).
async fn send_m1_and_m2(r: &Running) {
    r.ingest
        .commit(vec![reading("m", 1), reading("m", 2)])
        .await
        .unwrap();
}

/// Leases what is queued and returns the readings' sequence numbers.
async fn lease_sequences(r: &Running) -> Vec<u64> {
    let leased = r.store.lease(&dest(&r.store), 10).await.unwrap();
    leased
        .iter()
        .map(|l| l.reading.as_ref().unwrap().sequence.unwrap())
        .collect()
}

#[tokio::test]
async fn a_reading_sent_again_after_its_delivery_is_not_stored_a_second_time() {
    let root = tempfile::tempdir().unwrap();
    let r = Running::start(root.path(), 100).await;
    r.ingest.commit(vec![reading("m", 1)]).await.unwrap();
    let leased = r.store.lease(&dest(&r.store), 10).await.unwrap();
    assert_eq!(leased.len(), 1);
    r.store.ack(&dest(&r.store), &[leased[0].id]).await.unwrap();
    assert_eq!(r.store.stats().await.unwrap().pending, 0);
    // The sender lost its acknowledgement and sends the same reading again: acknowledged
    // (it is durable: it was delivered), but not queued for a second delivery.
    send_m1_and_m2(&r).await;
    assert_eq!(lease_sequences(&r).await, [2]);
}

/// The memory of delivered readings forgets what is older than `DELIVERED_MEMORY` in the
/// writer's housekeeping (here: at its close), without a delivery to trigger it: such a
/// reading sent again is stored again, one delivered recently still is not.
#[tokio::test]
async fn a_delivered_reading_older_than_the_memory_is_forgotten_by_housekeeping() {
    use super::memory::DELIVERED_MEMORY;
    let root = tempfile::tempdir().unwrap();
    let r = Running::start(root.path(), 100).await;
    send_m1_and_m2(&r).await;
    let leased = r.store.lease(&dest(&r.store), 10).await.unwrap();
    let ids: Vec<i64> = leased.iter().map(|l| l.id).collect();
    r.store.ack(&dest(&r.store), &ids).await.unwrap();
    let (store, _) = r.stop().await;

    // Reading 1 was delivered a day and a minute ago.
    let dedup = rows::seal_reading(&store.inner.key, &reading("m", 1)).dedup;
    drop(store);
    let db = data(root.path()).join(open::DB_FILE);
    let mut conn = open::connect(&db).await.unwrap();
    let long_ago = now_ms() - DELIVERED_MEMORY.as_millis() as i64 - 60_000;
    let aged = sqlx::query("UPDATE delivered SET at_ms = ? WHERE dedup = ?")
        .bind(long_ago)
        .bind(&dedup[..])
        .execute(&mut conn)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(aged, 1);
    conn.close().await.unwrap();

    // A writer that commits nothing: its housekeeping forgets reading 1.
    Running::start(root.path(), 100).await.stop().await;
    let r = Running::start(root.path(), 100).await;
    send_m1_and_m2(&r).await;
    assert_eq!(lease_sequences(&r).await, [1]);
}

/// A connection to a new buffer in `<root>/data` of an older schema: the migrations whose
/// file names sort before `before` (`"0002"`: schema 1).
async fn old_schema(root: &Path, before: &str) -> sqlx::SqliteConnection {
    let dir = data(root);
    std::fs::create_dir_all(&dir).unwrap();
    let migrations = root.join(format!("migrations-before-{before}"));
    std::fs::create_dir_all(&migrations).unwrap();
    let all = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for entry in std::fs::read_dir(&all).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.as_str() < before {
            std::fs::copy(all.join(&name), migrations.join(&name)).unwrap();
        }
    }
    let mut conn = open::connect(&dir.join(open::DB_FILE)).await.unwrap();
    sqlx::migrate::Migrator::new(migrations.as_path())
        .await
        .unwrap()
        .run(&mut conn)
        .await
        .unwrap();
    conn
}

/// A buffer as schema 5 wrote it (reading keys without the time) in `<root>/data`: readings
/// `waiting` of device "m" queued, `delivered` ones in its memory of delivered readings.
async fn schema_5_buffer(root: &Path, waiting: std::ops::RangeInclusive<u64>, delivered: &[u64]) {
    old_buffer(root, "0006", waiting, delivered).await;
}

/// A buffer as the schema before migration `before` wrote it, with body format 1 (JSON):
/// readings `waiting` of device "m" queued, `delivered` ones in its memory of delivered
/// readings; keys without the time before schema 6.
async fn old_buffer(
    root: &Path,
    before: &str,
    waiting: std::ops::RangeInclusive<u64>,
    delivered: &[u64],
) {
    let mut conn = old_schema(root, before).await;
    let key = seal::BufferKey::create(&options(root, 100).key_file).unwrap();
    sqlx::query("INSERT INTO meta (name, value) VALUES ('key_id', ?)")
        .bind(key.id().to_string())
        .execute(&mut conn)
        .await
        .unwrap();
    let row_key = |r: &Reading| match before {
        "0006" => rows::reading_dedup(&key, &r.identifier()).to_vec(),
        _ => rows::reading_key(&key, r).to_vec(),
    };
    for seq in waiting {
        let r = reading("m", seq);
        let dedup = row_key(&r);
        sqlx::query("INSERT INTO readings (dedup, received_ms, body) VALUES (?, ?, ?)")
            .bind(&dedup)
            .bind(now_ms())
            .bind(key.seal(&dedup, &codec::encode_v1(&r)))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    for seq in delivered {
        sqlx::query("INSERT INTO delivered (dedup, at_ms) VALUES (?, ?)")
            .bind(row_key(&reading("m", *seq)))
            .bind(now_ms())
            .execute(&mut conn)
            .await
            .unwrap();
    }
    conn.close().await.unwrap();
}

/// The first bytes of the plain bodies of the rows in `readings`, in order.
async fn body_formats(root: &Path) -> Vec<u8> {
    let key = seal::BufferKey::load(&options(root, 100).key_file).unwrap();
    let mut conn = open::connect(&data(root).join(open::DB_FILE))
        .await
        .unwrap();
    let rows: Vec<(Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT dedup, body FROM readings ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    conn.close().await.unwrap();
    rows.iter()
        .map(|(dedup, body)| rows::open_reading_bytes(&key, dedup, body).unwrap()[0])
        .collect()
}

/// A buffer written by schema 6 (bodies in format 1, JSON): at the first open of schema 7 its
/// waiting readings are read and delivered as before, new readings are written in format 2,
/// and its memory of delivered readings still keeps a resent one out.
#[tokio::test]
async fn a_schema_6_buffer_keeps_its_json_bodies_readable_beside_new_binary_ones() {
    let root = tempfile::tempdir().unwrap();
    old_buffer(root.path(), "0007", 1..=2, &[3]).await;
    assert_eq!(body_formats(root.path()).await, [b'{', b'{']);

    let r = Running::start(root.path(), 100).await;
    r.ingest
        .commit((1..=4).map(|i| reading("m", i)).collect())
        .await
        .unwrap();
    let leased = r.store.lease(&dest(&r.store), 10).await.unwrap();
    let readings: Vec<Reading> = leased.into_iter().map(|l| l.reading.unwrap()).collect();
    assert_eq!(
        readings,
        [reading("m", 1), reading("m", 2), reading("m", 4)]
    );
    let (store, _) = r.stop().await;
    drop(store);
    assert_eq!(
        body_formats(root.path()).await,
        [b'{', b'{', codec::FORMAT_VERSION]
    );
}

/// The times (seconds) that begin the keys of the rows in `readings`, each checked to be a
/// schema-6 key; `None` for a row with a schema-5 key.
async fn key_times(root: &Path) -> Vec<Option<u64>> {
    let db = data(root).join(open::DB_FILE);
    let mut conn = open::connect(&db).await.unwrap();
    let keys: Vec<Vec<u8>> = sqlx::query_scalar("SELECT dedup FROM readings ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    keys.iter()
        .map(|k| {
            (k.len() == rows::READING_KEY_LEN)
                .then(|| k[..6].iter().fold(0, |t, b| t << 8 | u64::from(*b)))
        })
        .collect()
}

/// A buffer written by schema 5: at the first open of schema 6 its waiting readings get the
/// time-ordered key and are delivered as before, a reading its memory holds as delivered is
/// still not stored again, and that memory is dropped once it has forgotten everything.
#[tokio::test]
async fn a_schema_5_buffer_keeps_its_waiting_readings_and_its_memory_of_delivered_ones() {
    let root = tempfile::tempdir().unwrap();
    schema_5_buffer(root.path(), 1..=2, &[3]).await;

    let r = Running::start(root.path(), 100).await;
    // All four sent (again): 1 and 2 are waiting, 3 was delivered, 4 is new.
    r.ingest
        .commit((1..=4).map(|i| reading("m", i)).collect())
        .await
        .unwrap();
    assert_eq!(lease_sequences(&r).await, [1, 2, 4]);
    let (store, _) = r.stop().await;
    drop(store);
    let t = 1_780_000_000;
    assert_eq!(
        key_times(root.path()).await,
        [Some(t + 1), Some(t + 2), Some(t + 4)]
    );

    // A day later the old memory has forgotten reading 3: the writer's housekeeping drops it.
    let db = data(root.path()).join(open::DB_FILE);
    let mut conn = open::connect(&db).await.unwrap();
    let long_ago = now_ms() - memory::DELIVERED_MEMORY.as_millis() as i64 - 60_000;
    sqlx::query("UPDATE delivered_v5 SET at_ms = ?")
        .bind(long_ago)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    Running::start(root.path(), 100).await.stop().await;
    let mut conn = open::connect(&db).await.unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_schema WHERE name LIKE 'delivered%'")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(tables, ["delivered", "delivered_at_ms"]);
    conn.close().await.unwrap();
}

/// Giving the waiting readings their new key rewrites them; on a full disk that fails, and
/// the gateway starts all the same with every reading deliverable, and re-keys at a later
/// start with room.
#[tokio::test]
async fn a_schema_5_buffer_on_a_full_disk_still_opens_and_is_re_keyed_later() {
    let root = tempfile::tempdir().unwrap();
    schema_5_buffer(root.path(), 1..=3000, &[]).await;
    let db = data(root.path()).join(open::DB_FILE);
    let mut conn = open::connect(&db).await.unwrap();
    // 8 KiB more: migration 0006 and the open's own records fit; rewriting 3,000 rows does
    // not.
    let pages: u64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let page_size: u64 = sqlx::query_scalar("PRAGMA page_size")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    lock(&TEST_MAX_PAGES).push((db.clone(), pages + 8192 / page_size));

    let (store, writer, _) = open(&data(root.path()), &options(root.path(), 1000))
        .await
        .unwrap();
    assert_eq!(store.lease(&dest(&store), 5000).await.unwrap().len(), 3000);
    writer.close().await;
    store.close().await;
    drop(store);
    lock(&TEST_MAX_PAGES).retain(|(p, _)| p != &db);
    let times = key_times(root.path()).await;
    assert!(
        times.iter().any(Option::is_none),
        "not re-keyed on a full disk"
    );

    Running::start(root.path(), 1000).await.stop().await;
    let times = key_times(root.path()).await;
    assert_eq!(times.len(), 3000);
    assert!(times.iter().all(Option::is_some), "re-keyed with room");
}

mod unbound {
    use super::*;
    use crate::buffer::unbound::Release;

    fn unbound(device: &str, seq: u64, user: Option<u8>) -> Reading {
        Reading {
            patient: None,
            device_user: user,
            ..reading(device, seq)
        }
    }

    /// Under load from several sources at once, readings without a patient are held (never
    /// leased), readings with one are queued, and a release moves exactly the held readings
    /// of one device and user into the queue, bound to the patient: every reading is
    /// accounted for, in the queue or held, none twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unbound_readings_are_held_under_load_and_released_to_the_right_patient() {
        let root = tempfile::tempdir().unwrap();
        let r = Running::start(root.path(), 1_000_000).await;
        const TASKS: u64 = 8;
        const PER_TASK: u64 = 300;
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let ingest = r.ingest.clone();
            tasks.push(tokio::spawn(async move {
                for chunk in 0..PER_TASK / 10 {
                    let batch: Vec<Reading> = (0..10)
                        .map(|i| {
                            let seq = t * 1_000_000 + chunk * 10 + i;
                            match seq % 3 {
                                0 => reading(&format!("bound-{t}"), seq),
                                1 => unbound("cuff", seq, None),
                                _ => unbound("scale", seq, Some((seq % 2) as u8 + 1)),
                            }
                        })
                        .collect();
                    ingest.commit(batch.clone()).await.unwrap();
                    // A redelivery of the same batch is stored once, held or not.
                    ingest.commit(batch).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let all: Vec<u64> = (0..TASKS)
            .flat_map(|t| (0..PER_TASK).map(move |i| t * 1_000_000 + i))
            .collect();
        let bound = all.iter().filter(|s| *s % 3 == 0).count() as u64;
        let cuff = all.iter().filter(|s| *s % 3 == 1).count() as u64;
        let scale_user = |u: u64| {
            all.iter()
                .filter(|s| *s % 3 == 2 && *s % 2 + 1 == u)
                .count() as u64
        };
        assert_eq!(r.store.pending(), bound);
        assert_eq!(r.store.unbound(), cuff + scale_user(1) + scale_user(2));
        // Nothing held is ever leased.
        let leased = r.store.lease(&dest(&r.store), 100_000).await.unwrap();
        assert_eq!(leased.len() as u64, bound);
        assert!(leased
            .iter()
            .all(|l| l.reading.as_ref().unwrap().patient.is_some()));
        r.store
            .release(
                &dest(&r.store),
                &leased.iter().map(|l| l.id).collect::<Vec<_>>(),
            )
            .await;
        let listed = r.store.unbound_devices().await.unwrap();
        let counts: Vec<(String, Option<u8>, u64)> = listed
            .iter()
            .map(|d| (d.device_key.clone(), d.user, d.readings))
            .collect();
        assert_eq!(
            counts,
            [
                ("cuff".to_owned(), None, cuff),
                ("scale".to_owned(), Some(1), scale_user(1)),
                ("scale".to_owned(), Some(2), scale_user(2)),
            ]
        );
        r.stop().await;

        // The release (the gateway stopped: it needs the writer's lock).
        let (store, mut writer, _) = open(&data(root.path()), &options(root.path(), 1_000_000))
            .await
            .unwrap();
        let alice = PatientRef::identifier("urn:test", "alice");
        let release = |device: &str, user: Option<u8>| Release {
            device_key: device.into(),
            user,
            since: None,
            until: None,
            patient: alice.clone(),
        };
        let done = writer
            .release_unbound(&release("scale", Some(1)))
            .await
            .unwrap();
        assert_eq!(done.released, scale_user(1));
        assert_eq!(store.pending(), bound + scale_user(1));
        assert_eq!(store.unbound(), cuff + scale_user(2));
        // Released again: nothing left to release, nothing doubled.
        let again = writer
            .release_unbound(&release("scale", Some(1)))
            .await
            .unwrap();
        assert_eq!(again.released, 0);
        // Without --user, only the readings that reported none (the cuff's): the scale's
        // user 2 stays held.
        let none = writer
            .release_unbound(&release("scale", None))
            .await
            .unwrap();
        assert_eq!(none.released, 0);
        let leased = store.lease(&dest(&store), 100_000).await.unwrap();
        assert_eq!(leased.len() as u64, bound + scale_user(1));
        let released: Vec<Reading> = leased
            .into_iter()
            .map(|l| l.reading.unwrap())
            .filter(|r| r.device.id.key() == "scale")
            .collect();
        assert_eq!(released.len() as u64, scale_user(1));
        for r in &released {
            assert_eq!(r.patient.as_ref(), Some(&alice));
            assert_eq!(r.device_user, Some(1));
            // The identifier it would have had, bound when it was measured.
            assert!(
                r.identifier().contains("-alice-urn:test-"),
                "{}",
                r.identifier()
            );
        }
        writer.close().await;
    }

    /// A damaged buffer's held readings are salvaged back to being held, not queued.
    #[tokio::test]
    async fn salvage_brings_held_readings_back_held() {
        let root = tempfile::tempdir().unwrap();
        let r = Running::start(root.path(), 1000).await;
        r.ingest
            .commit((0..50).map(|s| unbound("cuff", s, Some(3))).collect())
            .await
            .unwrap();
        r.ingest.commit(vec![reading("bound", 1)]).await.unwrap();
        let db = data(root.path()).join(open::DB_FILE);
        let wal = data(root.path()).join("buffer.db-wal");
        let (db_bytes, wal_bytes) = (std::fs::read(&db).unwrap(), std::fs::read(&wal).unwrap());
        r.stop().await;
        std::fs::write(&db, db_bytes).unwrap();
        std::fs::write(&wal, wal_bytes).unwrap();
        let _ = std::fs::remove_file(data(root.path()).join("buffer.db-shm"));
        let mut bytes = std::fs::read(&db).unwrap();
        bytes[..100].fill(0);
        std::fs::write(&db, bytes).unwrap();
        let (store, mut writer, report) = open(&data(root.path()), &options(root.path(), 1000))
            .await
            .unwrap();
        let q = report.quarantined.expect("quarantined");
        let salvaged = salvage::salvage(&mut writer, &q.path, vec![])
            .await
            .unwrap();
        assert_eq!((salvaged.found, salvaged.queued), (51, 51), "{salvaged:?}");
        assert_eq!((store.pending(), store.unbound()), (1, 50));
        let held = store.unbound_devices().await.unwrap();
        assert_eq!(
            (held[0].device_key.as_str(), held[0].user, held[0].readings),
            ("cuff", Some(3), 50)
        );
        writer.close().await;
    }

    /// A time window releases only what was measured in it: a device that went from one
    /// patient to the next while unbound.
    #[tokio::test]
    async fn a_release_can_be_limited_to_a_time_window() {
        let root = tempfile::tempdir().unwrap();
        let r = Running::start(root.path(), 1000).await;
        let held: Vec<Reading> = (0..10).map(|s| unbound("cuff", s, None)).collect();
        r.ingest.commit(held.clone()).await.unwrap();
        r.stop().await;
        let (store, mut writer, _) = open(&data(root.path()), &options(root.path(), 1000))
            .await
            .unwrap();
        let split = held[6].device_time.unwrap();
        let done = writer
            .release_unbound(&Release {
                device_key: "cuff".into(),
                user: None,
                since: None,
                until: Some(split),
                patient: PatientRef::Reference("Patient/1".into()),
            })
            .await
            .unwrap();
        assert_eq!((done.released, done.kept), (6, 4));
        assert_eq!((store.pending(), store.unbound()), (6, 4));
        writer.close().await;
    }

    /// Held readings are sealed at rest like every other: no patient is in them yet, but the
    /// value and the device's time are not readable in the file.
    #[tokio::test]
    async fn held_readings_are_sealed_and_survive_a_key_rotation() {
        let root = tempfile::tempdir().unwrap();
        let r = Running::start(root.path(), 1000).await;
        let mut marked = unbound("cuff", 1, None);
        marked.device.model = Some("MODEL-SENTINEL-77".into());
        r.ingest.commit(vec![marked]).await.unwrap();
        r.stop().await;
        assert!(!contains(
            &all_bytes(&data(root.path())),
            b"MODEL-SENTINEL-77"
        ));
        // Rotate: the new key in key_file, the old one in previous_key_files.
        let old = root.path().join("old.key");
        std::fs::rename(root.path().join("buffer.key"), &old).unwrap();
        seal::BufferKey::create(&root.path().join("buffer.key")).unwrap();
        let mut rotated = options(root.path(), 1000);
        rotated.previous_key_files = vec![old];
        let (first, writer, report) = open(&data(root.path()), &rotated).await.unwrap();
        assert!(report.rotated.is_some());
        writer.close().await;
        first.close().await;
        drop(first);
        let (store, mut writer, _) = open(&data(root.path()), &options(root.path(), 1000))
            .await
            .unwrap();
        let done = writer
            .release_unbound(&Release {
                device_key: "cuff".into(),
                user: None,
                since: None,
                until: None,
                patient: PatientRef::Reference("Patient/1".into()),
            })
            .await
            .unwrap();
        assert_eq!((done.released, done.unreadable), (1, 0));
        let leased = store.lease(&dest(&store), 10).await.unwrap();
        let r = leased[0].reading.as_ref().unwrap();
        assert_eq!(r.device.model.as_deref(), Some("MODEL-SENTINEL-77"));
        writer.close().await;
    }
}

/// What a key rotation keeps of the memory of delivered readings (`memory.rs`).
mod rotation {
    use super::*;
    use sqlx::Connection;

    /// Rotates the key of the buffer under `root`: the current key moves to `<name>.key`,
    /// a new one takes its place; returns the options that list the old one.
    fn rotate(root: &Path, name: &str) -> OpenOptions {
        let old = root.join(format!("{name}.key"));
        std::fs::rename(root.join("buffer.key"), &old).unwrap();
        seal::BufferKey::create(&root.join("buffer.key")).unwrap();
        OpenOptions {
            previous_key_files: vec![old],
            ..options(root, 100)
        }
    }

    async fn start(root: &Path, options: &OpenOptions) -> Running {
        Running::start_with(root, options, Box::new(|_| {})).await
    }

    /// Delivers (leases and acknowledges) everything queued; returns the sequence numbers.
    async fn deliver_all(r: &Running) -> Vec<u64> {
        let leased = r.store.lease(&dest(&r.store), 10).await.unwrap();
        let ids: Vec<i64> = leased.iter().map(|l| l.id).collect();
        r.store.ack(&dest(&r.store), &ids).await.unwrap();
        leased
            .iter()
            .map(|l| l.reading.as_ref().unwrap().sequence.unwrap())
            .collect()
    }

    /// Reading 1 of device "m", stored and delivered.
    async fn deliver_m1(root: &Path) {
        let r = Running::start(root, 100).await;
        r.ingest.commit(vec![reading("m", 1)]).await.unwrap();
        deliver_all(&r).await;
        r.stop().await;
    }

    /// Opens and closes the buffer; returns what the open warned of, a line each.
    async fn open_warnings(root: &Path, options: &OpenOptions) -> String {
        let (store, writer, report) = open(&data(root), options).await.unwrap();
        writer.close().await;
        store.close().await;
        report.warnings.join("\n")
    }

    /// The tables of the memory of delivered readings, and `meta`'s `rotated_key_id`.
    async fn memory_tables(root: &Path) -> (Vec<String>, Option<String>) {
        let mut conn = open::connect(&data(root).join(open::DB_FILE))
            .await
            .unwrap();
        let tables = sqlx::query_scalar(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name LIKE 'delivered%' \
             ORDER BY name",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let id = sqlx::query_scalar("SELECT value FROM meta WHERE name = 'rotated_key_id'")
            .fetch_optional(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        (tables, id)
    }

    #[tokio::test]
    async fn a_reading_delivered_before_a_rotation_is_not_stored_again_for_a_day() {
        let root = tempfile::tempdir().unwrap();
        deliver_m1(root.path()).await;

        let rotated = rotate(root.path(), "old");
        let r = start(root.path(), &rotated).await;
        send_m1_and_m2(&r).await;
        assert_eq!(
            deliver_all(&r).await,
            [2],
            "1 was delivered before the rotation"
        );
        r.stop().await;
        // Another start, the old key still listed: both remembered, each under its key.
        let r = start(root.path(), &rotated).await;
        send_m1_and_m2(&r).await;
        assert_eq!(lease_sequences(&r).await, Vec::<u64>::new());
        r.stop().await;
        let (tables, id) = memory_tables(root.path()).await;
        assert_eq!(tables, ["delivered", "delivered_rotated"]);
        let old = seal::BufferKey::load(&root.path().join("old.key")).unwrap();
        assert_eq!(id, Some(old.id().to_string()));

        // A day later the memory set aside has forgotten reading 1, and is dropped.
        let mut conn = open::connect(&data(root.path()).join(open::DB_FILE))
            .await
            .unwrap();
        let long_ago = now_ms() - memory::DELIVERED_MEMORY.as_millis() as i64 - 60_000;
        sqlx::query("UPDATE delivered_rotated SET at_ms = ?")
            .bind(long_ago)
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        start(root.path(), &rotated).await.stop().await;
        assert_eq!(
            memory_tables(root.path()).await,
            (vec!["delivered".to_string()], None)
        );
        let r = start(root.path(), &options(root.path(), 100)).await;
        send_m1_and_m2(&r).await;
        assert_eq!(lease_sequences(&r).await, [1]);
    }

    /// Without the old key the memory set aside cannot be consulted: it is forgotten, and
    /// the start says so and what it means.
    #[tokio::test]
    async fn a_memory_whose_key_is_no_longer_listed_is_forgotten_with_a_warning() {
        let root = tempfile::tempdir().unwrap();
        deliver_m1(root.path()).await;
        let rotated = rotate(root.path(), "old");
        assert_eq!(open_warnings(root.path(), &rotated).await, "");
        let warning = open_warnings(root.path(), &options(root.path(), 100)).await;
        assert!(
            warning
                .contains("remembers 1 readings delivered in the day before its key was rotated")
                && warning.contains("not in buffer.previous_key_files")
                && warning.contains("Keep the previous key listed for a day after a rotation"),
            "{warning}"
        );
        assert_eq!(
            memory_tables(root.path()).await,
            (vec!["delivered".to_string()], None)
        );
        let r = Running::start(root.path(), 100).await;
        send_m1_and_m2(&r).await;
        assert_eq!(lease_sequences(&r).await, [1, 2]);
    }

    /// The memory of schema 5 (hashes made with the old key) is set aside with the rest.
    #[tokio::test]
    async fn a_schema_5_memory_is_kept_across_a_rotation_at_the_upgrade() {
        let root = tempfile::tempdir().unwrap();
        schema_5_buffer(root.path(), 1..=2, &[3]).await;
        let rotated = rotate(root.path(), "old");
        let r = start(root.path(), &rotated).await;
        r.ingest
            .commit((1..=4).map(|i| reading("m", i)).collect())
            .await
            .unwrap();
        assert_eq!(lease_sequences(&r).await, [1, 2, 4]);
        r.stop().await;
        assert_eq!(
            memory_tables(root.path()).await.0,
            ["delivered", "delivered_rotated"]
        );
    }

    /// A second rotation within a day keeps what was delivered under the key it replaces,
    /// and forgets (saying so) what the first set aside.
    #[tokio::test]
    async fn a_second_rotation_within_a_day_keeps_the_last_keys_memory() {
        let root = tempfile::tempdir().unwrap();
        deliver_m1(root.path()).await;
        let first = rotate(root.path(), "first");
        let r = start(root.path(), &first).await;
        r.ingest.commit(vec![reading("m", 2)]).await.unwrap();
        deliver_all(&r).await;
        r.stop().await;

        let second = rotate(root.path(), "second");
        let warning = open_warnings(root.path(), &second).await;
        assert!(
            warning.contains("a second buffer key rotation within a day")
                && warning.contains("memory of 1 readings"),
            "{warning}"
        );
        let r = start(root.path(), &second).await;
        send_m1_and_m2(&r).await;
        assert_eq!(lease_sequences(&r).await, [1]);
    }
}

/// A buffer a newer gateway has migrated (a downgrade) is refused with what happened and what
/// to do, and is left as it is: not quarantined, its readings still there for the newer one.
#[tokio::test]
async fn a_buffer_migrated_by_a_newer_gateway_is_refused_and_left_alone() {
    let root = tempfile::tempdir().unwrap();
    let r = Running::start(root.path(), 100).await;
    r.ingest.commit(vec![reading("m", 1)]).await.unwrap();
    r.stop().await;
    let db = data(root.path()).join(open::DB_FILE);
    let mut conn = open::connect(&db).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (42, 'from the future', 1, x'00', 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();

    let err = open(&data(root.path()), &options(root.path(), 100))
        .await
        .err()
        .expect("a newer buffer must be refused");
    let text = err.to_string();
    assert!(
        matches!(err, BufferError::NewerSchema { found: 42, .. }),
        "{text}"
    );
    assert!(
        text.contains("newer vitalbridge (buffer schema 42 or later; this version knows up to 7)"),
        "{text}"
    );
    assert!(!data(root.path()).join(open::QUARANTINE_DIR).exists());

    // Without the future migration (as if the newer version took it back) all is there.
    let mut conn = open::connect(&db).await.unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 42")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let r = Running::start(root.path(), 100).await;
    assert_eq!(lease_sequences(&r).await, [1]);
}
