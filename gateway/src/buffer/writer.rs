//! The buffer's single writer task: group commit of everything the sources send.
//!
//! Each round takes every request already queued (up to `max_rows` readings), waits at most
//! `linger` for more when the group is small, writes them in one transaction, commits
//! (`synchronous=FULL`: the commit returns after fsync), and only then answers each request.
//! A request that would take the buffer past its capacity is answered `Full` and not written.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::QueryBuilder;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{now_ms, BufferError, Store};
use crate::model::Reading;
use crate::pipeline::{CommitError, Committed, IngestRx, Rejected, Request};

/// Group-commit tuning.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Most readings in one transaction.
    pub max_rows: usize,
    /// Longest wait for more requests when the group is small.
    pub linger: Duration,
}

/// Below this many readings a group is "small" and the writer lingers for company.
const SMALL_GROUP: usize = 64;

/// Rows per multi-row `INSERT`, largest first. Every statement text is prepared once and
/// cached by the connection, so the set of shapes must stay small: a group of any size is
/// written as chunks of these sizes (at most 3 statements of each smaller shape). Free-form
/// chunk sizes would cache one large prepared statement per distinct group size.
const INSERT_CHUNKS: [usize; 5] = [256, 64, 16, 4, 1];

/// The size of the next chunk for `remaining` rows.
fn insert_chunk_len(remaining: usize) -> usize {
    INSERT_CHUNKS
        .into_iter()
        .find(|&n| n <= remaining)
        .unwrap_or(1)
}

/// Counters the writer reports, for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriterCounts {
    /// Readings stored.
    pub inserted: u64,
    /// Readings already present (retransmissions).
    pub duplicates: u64,
    /// Requests refused because the buffer was full.
    pub refused_full: u64,
    /// Transactions committed.
    pub commits: u64,
}

type CommitReply = oneshot::Sender<Result<Committed, CommitError>>;
type RejectReply = oneshot::Sender<Result<(), CommitError>>;
type SeqReply = oneshot::Sender<Result<Option<u64>, CommitError>>;

#[derive(Default)]
struct Group {
    readings: Vec<(Vec<Reading>, CommitReply)>,
    rejects: Vec<(Rejected, RejectReply)>,
    seq_queries: Vec<(String, SeqReply)>,
    rows: usize,
}

impl Group {
    fn add(&mut self, req: Request) {
        match req {
            Request::Commit { readings, reply } => {
                self.rows += readings.len().max(1);
                self.readings.push((readings, reply));
            }
            Request::Reject { rejected, reply } => {
                self.rows += 1;
                self.rejects.push((rejected, reply));
            }
            Request::LastSequence { device_key, reply } => {
                self.seq_queries.push((device_key, reply))
            }
        }
    }
}

/// Runs until every `Ingest` handle is dropped and the queue is drained, then returns the
/// totals. Storage errors are answered to the requests of that group and the task goes on.
pub async fn run(
    store: Store,
    mut rx: IngestRx,
    config: WriterConfig,
    on_commit: impl Fn(&WriterCounts) + Send,
) -> WriterCounts {
    let mut totals = WriterCounts::default();
    while let Some(first) = rx.recv().await {
        let mut group = Group::default();
        group.add(first);
        while group.rows < config.max_rows {
            match rx.try_recv() {
                Ok(req) => group.add(req),
                Err(_) => break,
            }
        }
        if group.rows < SMALL_GROUP && !config.linger.is_zero() {
            let deadline = Instant::now() + config.linger;
            while group.rows < config.max_rows {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(req)) => group.add(req),
                    _ => break,
                }
            }
        }
        let counts = commit_group(&store, group).await;
        totals.inserted += counts.inserted;
        totals.duplicates += counts.duplicates;
        totals.refused_full += counts.refused_full;
        totals.commits += counts.commits;
        on_commit(&counts);
    }
    totals
}

async fn commit_group(store: &Store, group: Group) -> WriterCounts {
    let mut counts = WriterCounts::default();
    // Capacity: admit requests in arrival order while they fit.
    let capacity = store.inner.capacity;
    let mut room = capacity.saturating_sub(store.pending());
    let mut admitted = Vec::new();
    for (readings, reply) in group.readings {
        let n = readings.len() as u64;
        if n <= room {
            room -= n;
            admitted.push((readings, reply));
        } else {
            counts.refused_full += 1;
            let _ = reply.send(Err(CommitError::Full { capacity }));
        }
    }
    let seq_queries = group.seq_queries;
    let rejects = group.rejects;
    let result = write(store, &admitted, &rejects).await;
    match result {
        Ok(inserted) => {
            let total: u64 = admitted.iter().map(|(r, _)| r.len() as u64).sum();
            counts.inserted = inserted;
            counts.duplicates = total - inserted.min(total);
            counts.commits = 1;
            store.inner.pending.fetch_add(inserted, Ordering::Relaxed);
            if inserted > 0 {
                store.inner.committed.send_modify(|n| *n += 1);
            }
            for (readings, reply) in admitted {
                let _ = reply.send(Ok(Committed {
                    readings: readings.len(),
                }));
            }
            for (_, reply) in rejects {
                let _ = reply.send(Ok(()));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "buffer commit failed; the readings were not stored and not acknowledged");
            let text = e.to_string();
            for (_, reply) in admitted {
                let _ = reply.send(Err(CommitError::Storage(text.clone())));
            }
            for (_, reply) in rejects {
                let _ = reply.send(Err(CommitError::Storage(text.clone())));
            }
        }
    }
    for (key, reply) in seq_queries {
        let answer = last_sequence(store, &key)
            .await
            .map_err(|e| CommitError::Storage(e.to_string()));
        let _ = reply.send(answer);
    }
    counts
}

/// Writes one group in one transaction; returns how many readings were newly inserted.
async fn write(
    store: &Store,
    admitted: &[(Vec<Reading>, CommitReply)],
    rejects: &[(Rejected, RejectReply)],
) -> Result<u64, BufferError> {
    let mut tx = store.inner.writer.begin().await?;
    let mut inserted = 0;
    let rows: Vec<&Reading> = admitted.iter().flat_map(|(r, _)| r.iter()).collect();
    let received = now_ms();
    let mut rest = rows.as_slice();
    while !rest.is_empty() {
        let n = insert_chunk_len(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let mut q = QueryBuilder::new(
            "INSERT OR IGNORE INTO readings (identifier, device_key, received_ms, body) ",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.identifier())
                .push_bind(r.device.id.key())
                .push_bind((r.received_at.unix_timestamp_nanos() / 1_000_000) as i64)
                .push_bind(super::codec::encode(r));
        });
        inserted += q.build().execute(&mut *tx).await?.rows_affected();
    }
    // The highest sequence number per device, kept after delivery.
    let mut max_seq: HashMap<String, u64> = HashMap::new();
    for r in &rows {
        if let Some(seq) = r.sequence {
            let e = max_seq.entry(r.device.id.key()).or_insert(seq);
            *e = (*e).max(seq);
        }
    }
    for (key, seq) in max_seq {
        sqlx::query(
            "INSERT INTO device_state (device_key, last_sequence) VALUES (?, ?) \
             ON CONFLICT(device_key) DO UPDATE SET last_sequence = max(last_sequence, excluded.last_sequence)",
        )
        .bind(key)
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
    }
    for (r, _) in rejects {
        sqlx::query(
            "INSERT INTO dead_letters (created_ms, kind, origin, reason, identifier, body) VALUES (?, 'payload', ?, ?, NULL, ?)",
        )
        .bind(received)
        .bind(&r.origin)
        .bind(&r.reason)
        .bind(&r.payload)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(inserted)
}

async fn last_sequence(store: &Store, key: &str) -> Result<Option<u64>, BufferError> {
    let seq: Option<i64> =
        sqlx::query_scalar("SELECT last_sequence FROM device_state WHERE device_key = ?")
            .bind(key)
            .fetch_optional(&store.inner.reader)
            .await?;
    Ok(seq.map(|s| s as u64))
}
