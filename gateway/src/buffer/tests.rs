use std::time::Duration;

use time::OffsetDateTime;

use super::writer::{self, WriterConfig};
use super::*;
use crate::model::{Decimal, DeviceId, DeviceRef, Measured, Quantity, Value};
use crate::pipeline::{self, Ingest};
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
        patient: None,
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
    }
}

/// A store with a running writer; drop the `Ingest` and await the handle to stop it.
async fn start(
    dir: &Path,
    capacity: u64,
) -> (Store, Ingest, tokio::task::JoinHandle<writer::WriterCounts>) {
    let store = Store::open(dir, capacity).await.unwrap();
    let (tx, rx) = pipeline::channel();
    let config = WriterConfig {
        max_rows: 1000,
        linger: Duration::from_millis(1),
    };
    let handle = tokio::spawn(writer::run(store.clone(), rx, config, |_| {}));
    (store, Ingest::new(tx, "test"), handle)
}

#[tokio::test]
async fn the_live_connection_is_wal_and_synchronous_full() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 10).await.unwrap();
    assert_eq!(store.durability().await.unwrap(), ("wal".to_owned(), 2));
}

#[tokio::test]
async fn a_second_store_on_the_same_directory_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path(), 10).await.unwrap();
    let err = Store::open(dir.path(), 10)
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
    let dir = tempfile::tempdir().unwrap();
    let (store, ingest, _w) = start(dir.path(), 100).await;
    ingest
        .commit(vec![reading("a", 1), reading("a", 2)])
        .await
        .unwrap();
    assert_eq!(store.pending(), 2);
    let leased = store.lease(10).await.unwrap();
    assert_eq!(leased.len(), 2);
    assert_eq!(leased[0].reading.as_ref().unwrap(), &reading("a", 1));
    assert!(
        store.lease(10).await.unwrap().is_empty(),
        "leased rows are not handed out twice"
    );
    store.ack(&[leased[0].id]).await.unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.leased), (1, 1));
}

#[tokio::test]
async fn groups_of_any_size_are_stored_whole_and_acked_in_one_statement() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ingest, _w) = start(dir.path(), 10_000).await;
    // 1 + 4 + 16 + 64 + 256 + 3 (every chunk shape, and a remainder) in one request.
    let sizes = [1, 347, 999];
    let mut next = 0;
    for n in sizes {
        let batch: Vec<Reading> = (next..next + n).map(|s| reading("g", s)).collect();
        next += n;
        assert_eq!(ingest.commit(batch).await.unwrap().readings, n as usize);
    }
    assert_eq!(store.stats().await.unwrap().pending, next);
    let leased = store.lease(2000).await.unwrap();
    let mut seqs: Vec<u64> = leased
        .iter()
        .map(|l| l.reading.as_ref().unwrap().sequence.unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..next).collect::<Vec<_>>(), "every reading, once");
    let ids: Vec<i64> = leased.iter().map(|l| l.id).collect();
    assert_eq!(store.ack(&ids).await.unwrap(), next);
    assert_eq!(store.stats().await.unwrap().pending, 0);
}

#[tokio::test]
async fn a_retransmission_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ingest, _w) = start(dir.path(), 100).await;
    ingest.commit(vec![reading("a", 1)]).await.unwrap();
    ingest.commit(vec![reading("a", 1)]).await.unwrap();
    assert_eq!(store.stats().await.unwrap().pending, 1);
}

#[tokio::test]
async fn leased_but_unacked_rows_come_back_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, ingest, w) = start(dir.path(), 100).await;
        ingest
            .commit(vec![reading("a", 1), reading("a", 2), reading("a", 3)])
            .await
            .unwrap();
        let leased = store.lease(2).await.unwrap();
        store.ack(&[leased[0].id]).await.unwrap();
        drop(ingest);
        w.await.unwrap();
        store.close().await;
        // "Crash": the lease of row 2 was never settled.
    }
    let store = Store::open(dir.path(), 100).await.unwrap();
    let again: Vec<u64> = store
        .lease(10)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.reading.unwrap().sequence.unwrap())
        .collect();
    assert_eq!(again, vec![2, 3]);
}

#[tokio::test]
async fn released_rows_are_leased_again_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ingest, _w) = start(dir.path(), 100).await;
    ingest
        .commit((1..=4).map(|s| reading("a", s)).collect())
        .await
        .unwrap();
    let first = store.lease(2).await.unwrap();
    let second = store.lease(2).await.unwrap();
    store.release(&[first[1].id]).await;
    let third = store.lease(10).await.unwrap();
    assert_eq!(
        third.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![first[1].id]
    );
    assert_eq!(second.len(), 2);
}

#[tokio::test]
async fn a_full_buffer_refuses_new_readings_and_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ingest, _w) = start(dir.path(), 3).await;
    ingest
        .commit(vec![reading("a", 1), reading("a", 2)])
        .await
        .unwrap();
    let refused = ingest.commit(vec![reading("a", 3), reading("a", 4)]).await;
    assert_eq!(refused, Err(CommitError::Full { capacity: 3 }));
    ingest.commit(vec![reading("a", 3)]).await.unwrap();
    assert_eq!(store.stats().await.unwrap().pending, 3);
    let leased = store.lease(1).await.unwrap();
    store.ack(&[leased[0].id]).await.unwrap();
    ingest
        .commit(vec![reading("a", 4)])
        .await
        .expect("room again after a delivery");
}

#[tokio::test]
async fn dead_letters_keep_their_reason_and_can_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ingest, w) = start(dir.path(), 100).await;
    ingest.commit(vec![reading("a", 1)]).await.unwrap();
    ingest
        .reject(
            "mqtt:t".into(),
            "field `metric`: unknown".into(),
            b"{}".to_vec(),
        )
        .await
        .unwrap();
    let leased = store.lease(1).await.unwrap();
    store
        .dead_letter("uplink:fhir", &[(leased[0].id, "422: bad unit".into())])
        .await
        .unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead_letters), (0, 2));
    let letters = store.dead_letters(10).await.unwrap();
    assert_eq!(letters[0].reason, "422: bad unit");
    assert_eq!(letters[1].kind, "payload");
    drop(ingest);
    w.await.unwrap();
    assert_eq!(store.retry_dead_letters().await.unwrap(), 1);
    let back = store.lease(10).await.unwrap();
    assert_eq!(back[0].reading.as_ref().unwrap(), &reading("a", 1));
    assert_eq!(
        store.stats().await.unwrap().dead_letters,
        1,
        "undecodable payloads stay dead-lettered"
    );
}

#[tokio::test]
async fn the_last_sequence_survives_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ingest, _w) = start(dir.path(), 100).await;
    ingest
        .commit(vec![reading("a", 7), reading("a", 5), reading("b", 1)])
        .await
        .unwrap();
    let ids: Vec<i64> = store
        .lease(10)
        .await
        .unwrap()
        .iter()
        .map(|l| l.id)
        .collect();
    store.ack(&ids).await.unwrap();
    assert_eq!(ingest.last_sequence("a").await.unwrap(), Some(7));
    assert_eq!(ingest.last_sequence("c").await.unwrap(), None);
}

#[tokio::test]
async fn the_writer_reports_what_each_source_committed_and_dead_lettered() {
    type Seen = (Vec<(String, usize)>, Vec<(String, String)>, u64, bool);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 3).await.unwrap();
    let (tx, rx) = pipeline::channel();
    let config = WriterConfig {
        max_rows: 1000,
        linger: Duration::ZERO,
    };
    let seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>> = Default::default();
    let record = seen.clone();
    let w = tokio::spawn(writer::run(store.clone(), rx, config, move |report| {
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
    }));
    let serial = Ingest::new(tx.clone(), "serial");
    let ble = Ingest::new(tx, "ble");
    serial
        .commit(vec![reading("s", 1), reading("s", 2)])
        .await
        .unwrap();
    ble.reject("ble:AABBCC".into(), "bad frame".into(), vec![1, 2])
        .await
        .unwrap();
    let full = ble.commit(vec![reading("b", 1), reading("b", 2)]).await;
    assert_eq!(full, Err(CommitError::Full { capacity: 3 }));
    drop((serial, ble));
    let totals = w.await.unwrap();
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
                vec![],
                vec![("ble".to_owned(), "ble:AABBCC".to_owned())],
                0,
                true
            ),
            (vec![], vec![], 1, true),
        ]
    );
}

#[tokio::test]
async fn live_stats_agree_with_the_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ingest, w) = start(dir.path(), 100).await;
    let empty = store.live_stats().await.unwrap();
    assert_eq!((empty.pending, empty.oldest_age_ms), (0, None));
    ingest
        .commit((0..5).map(|i| reading("l", i)).collect())
        .await
        .unwrap();
    ingest
        .reject("test:x".into(), "bad".into(), vec![0])
        .await
        .unwrap();
    let _leased = store.lease(2).await.unwrap();
    let live = store.live_stats().await.unwrap();
    let full = store.stats().await.unwrap();
    assert_eq!(
        (live.pending, live.leased, live.dead_letters),
        (full.pending, full.leased, full.dead_letters)
    );
    assert_eq!((live.pending, live.leased, live.dead_letters), (5, 2, 1));
    // Every reading here has the same receive time, so the head is also the oldest.
    let (a, b) = (live.oldest_age_ms.unwrap(), full.oldest_age_ms.unwrap());
    assert!((a - b).abs() < 1000, "{a} vs {b}");
    drop(ingest);
    w.await.unwrap();
}

#[tokio::test]
async fn many_concurrent_requests_are_grouped_into_few_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 100_000).await.unwrap();
    let (tx, rx) = pipeline::channel();
    let config = WriterConfig {
        max_rows: 4096,
        linger: Duration::from_millis(2),
    };
    let w = tokio::spawn(writer::run(store.clone(), rx, config, |_| {}));
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
}

mod model {
    //! Model-based test: random commits, leases, acks, releases, dead-letters and crashes
    //! against a plain in-memory model of what must be pending.

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
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => proptest::collection::vec(0u64..40, 1..5).prop_map(Op::Commit),
            3 => (1usize..6).prop_map(Op::Lease),
            3 => (1usize..6).prop_map(Op::AckFirst),
            1 => (1usize..4).prop_map(Op::ReleaseFirst),
            1 => Just(Op::DeadLetterFirst),
            1 => Just(Op::Crash),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn the_buffer_never_loses_or_duplicates(ops in proptest::collection::vec(op(), 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let dir = tempfile::tempdir().unwrap();
                let (mut store, mut ingest, mut w) = start(dir.path(), 20).await;
                let mut pending: BTreeSet<u64> = BTreeSet::new();
                // A retransmission of a dead-lettered reading can be stored and dead-lettered again:
                // every dead-lettering is its own row.
                let mut dead: Vec<u64> = Vec::new();
                let mut held: Vec<(i64, u64)> = Vec::new();
                for op in ops {
                    match op {
                        Op::Commit(seqs) => {
                            // A retransmission of a delivered or dead-lettered reading is stored again (the
                            // destination de-duplicates by identifier); one still pending is not.
                            let fresh: BTreeSet<u64> = seqs.iter().copied().filter(|s| !pending.contains(s)).collect();
                            let result = ingest.commit(seqs.iter().map(|s| reading("m", *s)).collect()).await;
                            if pending.len() as u64 + seqs.len() as u64 <= 20 {
                                prop_assert!(result.is_ok());
                                pending.extend(fresh);
                            } else {
                                prop_assert_eq!(result, Err(CommitError::Full { capacity: 20 }));
                            }
                        }
                        Op::Lease(n) => {
                            for l in store.lease(n).await.unwrap() {
                                let seq = l.reading.unwrap().sequence.unwrap();
                                prop_assert!(pending.contains(&seq));
                                prop_assert!(!held.iter().any(|(_, s)| *s == seq), "leased twice");
                                held.push((l.id, seq));
                            }
                        }
                        Op::AckFirst(n) => {
                            let acked: Vec<(i64, u64)> = held.drain(..n.min(held.len())).collect();
                            store.ack(&acked.iter().map(|(id, _)| *id).collect::<Vec<_>>()).await.unwrap();
                            for (_, s) in acked { pending.remove(&s); }
                        }
                        Op::ReleaseFirst(n) => {
                            let released: Vec<(i64, u64)> = held.drain(..n.min(held.len())).collect();
                            store.release(&released.iter().map(|(id, _)| *id).collect::<Vec<_>>()).await;
                        }
                        Op::DeadLetterFirst => {
                            if !held.is_empty() {
                                let (id, s) = held.remove(0);
                                store.dead_letter("test", &[(id, "why".into())]).await.unwrap();
                                pending.remove(&s);
                                dead.push(s);
                            }
                        }
                        Op::Crash => {
                            drop(ingest);
                            w.await.unwrap();
                            store.close().await;
                            drop(store);
                            held.clear();
                            (store, ingest, w) = start(dir.path(), 20).await;
                        }
                    }
                    let stats = store.stats().await.unwrap();
                    prop_assert_eq!(stats.pending, pending.len() as u64);
                    prop_assert_eq!(stats.dead_letters, dead.len() as u64);
                    prop_assert_eq!(store.pending(), pending.len() as u64);
                }
                // Everything pending can still be leased, exactly once.
                let mut all: BTreeSet<u64> = held.iter().map(|(_, s)| *s).collect();
                for l in store.lease(1000).await.unwrap() {
                    prop_assert!(all.insert(l.reading.unwrap().sequence.unwrap()));
                }
                prop_assert_eq!(all, pending);
                Ok(())
            })?;
        }
    }
}
