//! The buffer's single writer task: group commit of everything the sources send.
//!
//! Each round takes every request already queued (up to `max_rows` readings), waits at most
//! `linger` for more when the group is small, writes them in one transaction, commits
//! (`synchronous=FULL`: the commit returns after fsync), and only then answers each request.
//! A request that would take the buffer past its capacity is answered `Full` and not written.
//! After answering, the writer hands a [`GroupReport`] to its caller (metrics, audit log):
//! that is where readings are counted per source, once, for every source.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sqlx::QueryBuilder;
use time::OffsetDateTime;
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
    /// Transactions that failed (nothing of their group was stored or acknowledged).
    pub failed: u64,
}

/// What one group did; the writer's callback gets it after every request was answered.
#[derive(Debug)]
pub struct GroupReport<'a> {
    /// This group's counts.
    pub counts: WriterCounts,
    /// When the transaction committed; `None` when it failed.
    pub committed_at: Option<OffsetDateTime>,
    /// The readings now durably held (newly stored or already there), each request with the
    /// name of the source that sent it. Empty when the transaction failed.
    pub readings: &'a [(Arc<str>, Vec<Reading>)],
    /// Undecodable payloads now in the dead-letter table, with their source. Empty when the
    /// transaction failed.
    pub rejected: &'a [(Arc<str>, Rejected)],
    /// Why the transaction failed, if it did.
    pub error: Option<&'a BufferError>,
}

type CommitReply = oneshot::Sender<Result<Committed, CommitError>>;
type RejectReply = oneshot::Sender<Result<(), CommitError>>;
type SeqReply = oneshot::Sender<Result<Option<u64>, CommitError>>;

#[derive(Default)]
struct Group {
    readings: Vec<(Arc<str>, Vec<Reading>, CommitReply)>,
    rejects: Vec<(Arc<str>, Rejected, RejectReply)>,
    seq_queries: Vec<(String, SeqReply)>,
    rows: usize,
}

impl Group {
    fn add(&mut self, req: Request) {
        match req {
            Request::Commit {
                source,
                readings,
                reply,
            } => {
                self.rows += readings.len().max(1);
                self.readings.push((source, readings, reply));
            }
            Request::Reject {
                source,
                rejected,
                reply,
            } => {
                self.rows += 1;
                self.rejects.push((source, rejected, reply));
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
    on_commit: impl Fn(&GroupReport<'_>) + Send,
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
        let counts = commit_group(&store, group, &on_commit).await;
        totals.inserted += counts.inserted;
        totals.duplicates += counts.duplicates;
        totals.refused_full += counts.refused_full;
        totals.commits += counts.commits;
        totals.failed += counts.failed;
    }
    totals
}

async fn commit_group(
    store: &Store,
    group: Group,
    on_commit: &impl Fn(&GroupReport<'_>),
) -> WriterCounts {
    let mut counts = WriterCounts::default();
    // Capacity: admit requests in arrival order while they fit.
    let capacity = store.inner.capacity;
    let mut room = capacity.saturating_sub(store.pending());
    let mut admitted = Vec::new();
    let mut replies = Vec::new();
    for (source, readings, reply) in group.readings {
        let n = readings.len() as u64;
        if n <= room {
            room -= n;
            admitted.push((source, readings));
            replies.push(reply);
        } else {
            counts.refused_full += 1;
            let _ = reply.send(Err(CommitError::Full { capacity }));
        }
    }
    let seq_queries = group.seq_queries;
    let (rejects, reject_replies): (Vec<_>, Vec<_>) = group
        .rejects
        .into_iter()
        .map(|(source, rejected, reply)| ((source, rejected), reply))
        .unzip();
    let result = write(store, &admitted, &rejects).await;
    let committed_at = OffsetDateTime::now_utc();
    match &result {
        Ok(inserted) => {
            let inserted = *inserted;
            let total: u64 = admitted.iter().map(|(_, r)| r.len() as u64).sum();
            counts.inserted = inserted;
            counts.duplicates = total - inserted.min(total);
            counts.commits = 1;
            store.inner.pending.fetch_add(inserted, Ordering::Relaxed);
            if inserted > 0 {
                store.inner.committed.send_modify(|n| *n += 1);
            }
            for ((_, readings), reply) in admitted.iter().zip(replies) {
                let _ = reply.send(Ok(Committed {
                    readings: readings.len(),
                }));
            }
            for reply in reject_replies {
                let _ = reply.send(Ok(()));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "buffer commit failed; the readings were not stored and not acknowledged");
            counts.failed = 1;
            let text = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(CommitError::Storage(text.clone())));
            }
            for reply in reject_replies {
                let _ = reply.send(Err(CommitError::Storage(text.clone())));
            }
        }
    }
    let report = match &result {
        Ok(_) => GroupReport {
            counts,
            committed_at: Some(committed_at),
            readings: &admitted,
            rejected: &rejects,
            error: None,
        },
        Err(e) => GroupReport {
            counts,
            committed_at: None,
            readings: &[],
            rejected: &[],
            error: Some(e),
        },
    };
    on_commit(&report);
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
    admitted: &[(Arc<str>, Vec<Reading>)],
    rejects: &[(Arc<str>, Rejected)],
) -> Result<u64, BufferError> {
    let mut tx = store.inner.writer.begin().await?;
    let mut inserted = 0;
    let rows: Vec<&Reading> = admitted.iter().flat_map(|(_, r)| r.iter()).collect();
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
    for (_, r) in rejects {
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
