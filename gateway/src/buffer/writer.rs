//! The buffer's single writer: group commit of everything that changes the database.
//!
//! Each round takes every request already queued — readings and bad payloads from the
//! sources, deletes and dead letters from the uplink — up to `max_rows` readings. While the
//! group is small (under `pipeline::SMALL_GROUP` readings) it waits for more, until the
//! soonest of its requests' deadlines: each request's linger (its source's, else `linger`)
//! after it was sent. A small group of deletes alone, while readings are arriving, first
//! waits for the next (up to twice the time between the last two groups of readings, at
//! most a second: [`settle_wait`]), to share their fsync. Then it writes them in one
//! transaction, commits (`synchronous=FULL`: the commit returns after fsync), and only then
//! answers each request.
//! A request that would take the buffer past its capacity is answered `Full`, and while the
//! file system has less free space than the floor, new readings are answered `LowSpace`;
//! neither is written. After answering, the writer hands a [`GroupReport`] to its caller
//! (metrics, audit log): that is where readings are counted per source, once, for every source.
//!
//! # When storage fails
//! A failed statement or commit (a full disk, an I/O error) is rolled back with a plain
//! `ROLLBACK`, and the connection is closed and opened afresh before the next attempt. The
//! writer never uses sqlx's transaction manager: after SQLite rolled a transaction back by
//! itself (as it may on `SQLITE_FULL`), sqlx still counted it as open, turned the next
//! `BEGIN` into a `SAVEPOINT`, a later failure into a `ROLLBACK TO` that left an outer
//! transaction open, and every later "commit" into the `RELEASE` of a nested savepoint:
//! sources were acknowledged for readings that never reached the disk. Here `BEGIN
//! IMMEDIATE`, `COMMIT` and `ROLLBACK` are plain statements on a connection that is
//! replaced after any error, so no transaction outlives a failure.
//!
//! While failing, nothing is acknowledged: every source's request of a failed group is
//! answered with the error (sources keep their data and retry), and the next attempt waits a
//! growing delay (100 ms to 5 s). Deletes and dead letters of delivered rows that failed are
//! kept and retried with every following group (their rows stay leased, so they are not sent
//! again meanwhile). The first success ends the episode ([`Transition::Recovered`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Row};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::memory::{self, Older};
use super::open::{self, DirRecord};
use super::rows::{self, Envelope, SealedReading};
use super::space;
use super::{
    id_list, now_ms, retry_delay, storage_failure, BufferError, Destination, Settle, Store,
};
use crate::error_chain::Chain;
use crate::model::{DeviceId, Reading};
use crate::pipeline::{
    CommitError, Committed, IngestRx, Rejected, Request, StorageFailure, StorageProblem,
    SMALL_GROUP,
};
pub use crate::pipeline::{GroupReport, OnCommit, Transition, WriterCounts};

/// Group-commit tuning.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Most readings in one transaction.
    pub max_rows: usize,
    /// Longest wait for more requests when the group is small.
    pub linger: Duration,
}

pub use super::memory::DELIVERED_MEMORY;

/// Readings committed this recently mean more are arriving: a group of settles alone then
/// waits ([`settle_wait`]) for some to share its commit. Otherwise (a backlog being
/// delivered, nothing new coming in) settles are committed at once.
const READINGS_ARRIVING: Duration = Duration::from_secs(1);

/// How long a group of settles alone waits for readings to share its commit, while readings
/// are arriving: twice the time between the last two groups of readings (so at a low steady
/// rate the next one nearly always comes in time, and a delivery costs no `fsync` of its
/// own), at most [`READINGS_ARRIVING`], at least `linger`; `linger` until there were two.
/// The wait holds back no reading: one that arrives ends it and is committed with the
/// settles as it would have been alone, and the uplink worker waiting for their answer is
/// free again as that reading can be leased.
fn settle_wait(readings_gap: Option<Duration>, linger: Duration) -> Duration {
    readings_gap.map_or(linger, |gap| {
        gap.saturating_mul(2).min(READINGS_ARRIVING).max(linger)
    })
}

/// Rows per multi-row `INSERT`, largest first. Every statement text is prepared once and
/// cached by the connection, so the set of shapes must stay small: a group of any size is
/// written as chunks of these sizes (at most 3 statements of 64, one of each smaller shape,
/// so a steady rate's group of 10–40 readings takes 2–4 statements). Free-form chunk sizes
/// would cache one large prepared statement per distinct group size.
const INSERT_CHUNKS: [usize; 8] = [256, 64, 32, 16, 8, 4, 2, 1];

/// How often the writer looks at kept deletes and the directory record when idle.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// How often the directory record (`buffer.state`) is brought up to date.
const RECORD_INTERVAL: Duration = Duration::from_secs(30);

/// The `INSERT` of a chunk of `n` rows (one of [`INSERT_CHUNKS`]), built once: the same text
/// every time, so the connection's cached prepared statement is found without building the
/// query again. A reading delivered a short while ago is not stored again (see
/// [`DELIVERED_MEMORY`]), nor one an older memory holds ([`memory::INSERT_FILTERS`]).
/// `None` for a size not in [`INSERT_CHUNKS`] (never asked for: see [`insert_chunk_len`]).
fn insert_sql(n: usize, older: &Older) -> Option<&'static str> {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    // One statement per chunk size and older memory, in that order.
    let all = SQL.get_or_init(|| {
        INSERT_CHUNKS
            .into_iter()
            .flat_map(|n| memory::INSERT_FILTERS.map(|f| (n, f)))
            .map(|(n, (filter, old_key))| {
                let mut sql = String::from(
                    "INSERT OR IGNORE INTO readings (dedup, received_ms, body, todo) \
                     SELECT column1, column2, column3, column4 FROM (VALUES ",
                );
                let row = if old_key {
                    "(?, ?, ?, ?, ?)"
                } else {
                    "(?, ?, ?, ?)"
                };
                for i in 0..n {
                    if i > 0 {
                        sql.push_str(", ");
                    }
                    sql.push_str(row);
                }
                sql.push_str(") WHERE column1 NOT IN (SELECT dedup FROM delivered)");
                sql.push_str(filter);
                sql
            })
            .collect()
    });
    let size = INSERT_CHUNKS.iter().position(|&c| c == n)?;
    Some(all[size * memory::INSERT_FILTERS.len() + older.shape()].as_str())
}

/// The size of the next chunk for `remaining` rows.
fn insert_chunk_len(remaining: usize) -> usize {
    INSERT_CHUNKS
        .into_iter()
        .find(|&n| n <= remaining)
        .unwrap_or(1)
}

type CommitReply = oneshot::Sender<Result<Committed, CommitError>>;
type SeqReply = oneshot::Sender<Result<Option<u64>, CommitError>>;
type SettleReply = oneshot::Sender<Result<u64, CommitError>>;

/// A source's request: its readings and bad payloads, stored together.
struct CommitRequest {
    source: Arc<str>,
    readings: Vec<Reading>,
    rejected: Vec<Rejected>,
    sent: Instant,
    linger: Option<Duration>,
    reply: CommitReply,
}

/// Rows a destination has now.
type AckRows = (Destination, Vec<i64>);

/// Rows a destination gave up on, with the origin and their reasons.
type DeadRows = (Destination, String, Vec<(i64, String)>);

#[derive(Default)]
struct Group {
    commits: Vec<CommitRequest>,
    seq_queries: Vec<(String, SeqReply)>,
    acks: Vec<(AckRows, SettleReply)>,
    dead: Vec<(DeadRows, SettleReply)>,
    rows: usize,
}

impl Group {
    fn add(&mut self, req: Request) {
        match req {
            Request::Commit {
                source,
                readings,
                rejected,
                sent,
                linger,
                reply,
            } => {
                self.rows += (readings.len() + rejected.len()).max(1);
                self.commits.push(CommitRequest {
                    source,
                    readings,
                    rejected,
                    sent,
                    linger,
                    reply,
                });
            }
            Request::LastSequence { device_key, reply } => {
                self.seq_queries.push((device_key, reply))
            }
        }
    }

    fn settle(&mut self, s: Settle) {
        match s {
            Settle::Ack {
                destination,
                ids,
                reply,
            } => {
                self.rows += 1;
                self.acks.push(((destination, ids), reply));
            }
            Settle::DeadLetter {
                destination,
                origin,
                rows,
                reply,
            } => {
                self.rows += 1;
                self.dead.push(((destination, origin, rows), reply));
            }
        }
    }

    /// When the group must be committed, waiting for company until then: the soonest of its
    /// requests' deadlines (each request's linger, or `linger`, after it was sent). `None`
    /// without readings.
    fn deadline(&self, linger: Duration) -> Option<Instant> {
        self.commits
            .iter()
            .map(|c| c.sent + c.linger.unwrap_or(linger))
            .min()
    }

    /// Whether it records deliveries or dead letters.
    fn has_settles(&self) -> bool {
        !self.acks.is_empty() || !self.dead.is_empty()
    }

    /// How many rows its deliveries and dead letters settle.
    fn settled_rows(&self) -> usize {
        let acked: usize = self.acks.iter().map(|((_, ids), _)| ids.len()).sum();
        let dead: usize = self.dead.iter().map(|((_, _, rows), _)| rows.len()).sum();
        acked + dead
    }

    fn is_empty(&self) -> bool {
        self.commits.is_empty()
            && self.seq_queries.is_empty()
            && self.acks.is_empty()
            && self.dead.is_empty()
    }
}

/// The one task that writes to the buffer (see the module docs).
pub struct Writer {
    store: Store,
    db: PathBuf,
    /// The write connection; `None` after a failure, until reopened.
    conn: Option<SqliteConnection>,
    settle_rx: mpsc::Receiver<Settle>,
    /// The free-space floor, in bytes.
    floor: u64,
    /// The directory record, and when it was last written.
    record: DirRecord,
    record_written: Instant,
    /// Acknowledgements whose transaction failed: retried with every group until they succeed.
    unsettled_acks: Vec<AckRows>,
    /// Dead letters whose transaction failed: retried likewise.
    unsettled_dead: Vec<DeadRows>,
    /// Consecutive failed attempts, and when the next may start.
    failures: u32,
    retry_at: Option<Instant>,
    /// Whether new readings are refused for lack of space.
    low_space: bool,
    /// A memory of delivered readings in an older form, consulted before a reading is
    /// stored until it is forgotten ([`memory`]).
    older: Older,
}

/// What a group writes, prepared (sealed) before the transaction starts.
struct Prepared<'a> {
    readings: Vec<(SealedReading, i64, &'a Reading)>,
    /// Readings with no patient: held in `unbound`, never delivered ([`super::unbound`]).
    held: Vec<(SealedReading, i64, &'a Reading)>,
    /// What a new reading is owed to: every configured destination's bit.
    todo: i64,
    acks: Vec<AckRows>,
    dead: Vec<DeadRows>,
}

/// What a committed group did.
#[derive(Default)]
struct Written {
    inserted: u64,
    /// Readings newly held for want of a patient.
    held: u64,
    /// Per acknowledgement: rows its destination still needed.
    acked: Vec<u64>,
    /// Rows no destination needs any more, deleted.
    removed: u64,
    dead_lettered: u64,
}

impl Writer {
    pub(super) fn new(
        store: Store,
        db: PathBuf,
        conn: SqliteConnection,
        settle_rx: mpsc::Receiver<Settle>,
        floor: u64,
        record: DirRecord,
        older: Older,
    ) -> Self {
        Self {
            store,
            db,
            conn: Some(conn),
            settle_rx,
            floor,
            record,
            record_written: Instant::now(),
            unsettled_acks: Vec::new(),
            unsettled_dead: Vec::new(),
            failures: 0,
            retry_at: None,
            low_space: false,
            older,
        }
    }

    /// The read side of the buffer this writer writes.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs until `stop` is cancelled and every `Ingest` handle is dropped (the queue
    /// drained), then returns the totals. Until then it also serves the uplink's deletes and
    /// dead letters, so stop it after the uplink. Storage errors are answered to the requests
    /// of their group and the task goes on (see the module docs).
    pub async fn run(
        mut self,
        mut ingest: IngestRx,
        config: WriterConfig,
        stop: CancellationToken,
        on_commit: OnCommit,
    ) -> WriterCounts {
        let mut totals = WriterCounts::default();
        let mut ingest_open = true;
        // When a group last had readings to commit, and the time between the last two such.
        let mut last_readings: Option<Instant> = None;
        let mut readings_gap: Option<Duration> = None;
        loop {
            let mut group = Group::default();
            tokio::select! {
                req = ingest.recv(), if ingest_open => match req {
                    Some(r) => group.add(r),
                    None => ingest_open = false,
                },
                Some(s) = self.settle_rx.recv() => group.settle(s),
                _ = stop.cancelled(), if !ingest_open => {
                    while let Ok(s) = self.settle_rx.try_recv() {
                        group.settle(s);
                    }
                    let counts = self.commit_group(group, &on_commit).await;
                    totals.add(&counts);
                    break;
                }
                _ = tokio::time::sleep(HOUSEKEEPING) => {}
            }
            while group.rows < config.max_rows {
                if let Ok(s) = self.settle_rx.try_recv() {
                    group.settle(s);
                } else if let Ok(req) = ingest.try_recv() {
                    group.add(req);
                } else {
                    break;
                }
            }
            if group.rows < SMALL_GROUP {
                if group.commits.is_empty()
                    && group.has_settles()
                    && group.settled_rows() < SMALL_GROUP
                    && !config.linger.is_zero()
                    && ingest_open
                    && last_readings.is_some_and(|t| t.elapsed() < READINGS_ARRIVING)
                {
                    // Settles while readings are arriving: wait for the next, to share one
                    // commit (one fsync) with them. Not settles of a whole group of rows or
                    // more (a backlog being delivered): their fsync is shared enough, and
                    // waiting would slow the backlog to one batch per arriving reading.
                    let deadline = Instant::now() + settle_wait(readings_gap, config.linger);
                    if let Ok(Some(req)) = tokio::time::timeout_at(deadline, ingest.recv()).await {
                        group.add(req);
                    }
                }
                // The wait counts from when each request was sent: a source with several
                // requests outstanding has its readings committed its linger after they came,
                // not after the commit before theirs. It ends when the group is no longer
                // small: a source bounds what it has outstanding, so waiting for a full group
                // could wait out the whole linger at every commit.
                if let Some(deadline) = group.deadline(config.linger) {
                    while group.rows < SMALL_GROUP {
                        match tokio::time::timeout_at(deadline, ingest.recv()).await {
                            Ok(Some(req)) => group.add(req),
                            _ => break,
                        }
                    }
                }
                while group.rows < config.max_rows {
                    match ingest.try_recv() {
                        Ok(req) => group.add(req),
                        Err(_) => break,
                    }
                }
            }
            if !group.commits.is_empty() {
                let now = Instant::now();
                readings_gap = last_readings.map(|t| now - t);
                last_readings = Some(now);
            }
            if group.is_empty() && !self.has_unsettled() {
                self.keep_record().await;
                continue;
            }
            let counts = self.commit_group(group, &on_commit).await;
            totals.add(&counts);
            self.keep_record().await;
        }
        self.close().await;
        totals
    }

    fn has_unsettled(&self) -> bool {
        !self.unsettled_acks.is_empty() || !self.unsettled_dead.is_empty()
    }

    /// Brings `buffer.state` up to date every [`RECORD_INTERVAL`].
    async fn keep_record(&mut self) {
        if self.record_written.elapsed() < RECORD_INTERVAL || self.failures > 0 {
            return;
        }
        self.write_record().await;
    }

    async fn write_record(&mut self) {
        self.record_written = Instant::now();
        let capacity = self.store.capacity();
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if let Err(e) = memory::forget(conn, capacity, &mut self.older).await {
            tracing::debug!(error = %e, "cannot trim the memory of delivered readings; next time");
        }
        let Ok(high) = open::high_water(conn).await else {
            return;
        };
        if high != self.record.high_water {
            self.record.high_water = high;
            // Two fsyncs (the file, its directory): off the runtime's worker, which every
            // other stage shares (`gateway.worker_threads` is 1 by default).
            let (record, dir) = (self.record.clone(), self.store.dir().to_path_buf());
            let written = tokio::task::spawn_blocking(move || record.write(&dir))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            if let Err(e) = written {
                tracing::warn!(error = %Chain(&e), "cannot update buffer.state");
            }
        }
    }

    /// Writes the directory record and closes the connection.
    pub async fn close(mut self) {
        self.write_record().await;
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }

    /// The write connection, reopened after a failure.
    pub(super) async fn connection(&mut self) -> Result<&mut SqliteConnection, StorageFailure> {
        if self.conn.is_none() {
            let conn = open::connect(&self.db).await.map_err(|e| match e {
                BufferError::Sql(sql) => storage_failure(&sql),
                other => StorageFailure {
                    kind: crate::pipeline::StorageKind::Other,
                    message: other.to_string().into(),
                },
            })?;
            self.conn = Some(conn);
            // Exact again after whatever happened.
            if let Some(conn) = self.conn.as_mut() {
                if let Ok(n) = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM readings")
                    .fetch_one(&mut *conn)
                    .await
                {
                    self.store
                        .inner
                        .pending
                        .store(n.max(0) as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        Ok(self.conn.as_mut().expect("connection just opened"))
    }

    /// Whether new readings must be refused for lack of space (and the health change).
    fn check_space(&mut self, transitions: &mut Vec<Transition>) -> Option<CommitError> {
        let free = match space::space(self.store.dir()) {
            Ok(s) => s.free,
            // Cannot tell: let SQLite decide.
            Err(_) => return None,
        };
        let low = free < self.floor;
        self.store.update_health(|h| {
            h.free_bytes = Some(free);
            h.low_space = low;
        });
        if low != self.low_space {
            self.low_space = low;
            if low {
                tracing::warn!(
                    free_bytes = free,
                    floor_bytes = self.floor,
                    "buffer: free space below buffer.min_free_mb; new readings are refused (sources hold them) until space is freed"
                );
                transitions.push(Transition::LowSpace {
                    free_bytes: free,
                    floor_bytes: self.floor,
                });
            } else {
                tracing::info!(
                    free_bytes = free,
                    "buffer: free space above the floor again; new readings are accepted"
                );
                transitions.push(Transition::SpaceOk { free_bytes: free });
            }
        }
        low.then_some(CommitError::LowSpace {
            free_bytes: free,
            floor_bytes: self.floor,
        })
    }

    async fn commit_group(&mut self, group: Group, on_commit: &OnCommit) -> WriterCounts {
        if let Some(at) = self.retry_at {
            tokio::time::sleep_until(at).await;
        }
        let mut counts = WriterCounts::default();
        let mut transitions = Vec::new();

        // Admission: space first, then capacity, in arrival order.
        let needs_space = group
            .commits
            .iter()
            .any(|c| !c.readings.is_empty() || !c.rejected.is_empty());
        let refusal = if needs_space {
            self.check_space(&mut transitions)
        } else {
            None
        };
        let capacity = self.store.capacity();
        // Held (unbound) readings take room like pending ones: both are on this disk.
        let mut room = capacity.saturating_sub(self.store.pending() + self.store.unbound());
        let mut admitted: Vec<(Arc<str>, Vec<Reading>)> = Vec::new();
        let mut rejected: Vec<(Arc<str>, Rejected)> = Vec::new();
        let mut replies = Vec::new();
        for CommitRequest {
            source,
            readings,
            rejected: rejects,
            reply,
            ..
        } in group.commits
        {
            if let Some(e) = &refusal {
                counts.refused_space += 1;
                let _ = reply.send(Err(e.clone()));
                continue;
            }
            let n = readings.len() as u64;
            if n > room {
                counts.refused_full += 1;
                let _ = reply.send(Err(CommitError::Full { capacity }));
                continue;
            }
            room -= n;
            replies.push((reply, readings.len()));
            rejected.extend(rejects.into_iter().map(|r| (source.clone(), r)));
            admitted.push((source, readings));
        }

        // Settles: those kept from failed groups, then this group's.
        let mut acks = std::mem::take(&mut self.unsettled_acks);
        let mut ack_replies = Vec::new();
        for (ack, reply) in group.acks {
            acks.push(ack);
            ack_replies.push(reply);
        }
        let mut dead = std::mem::take(&mut self.unsettled_dead);
        let mut dead_replies = Vec::new();
        for (rows, reply) in group.dead {
            dead.push(rows);
            dead_replies.push(reply);
        }

        let key = self.store.inner.key.clone();
        let (readings, held) = seal_all(&key, admitted.iter().flat_map(|(_, r)| r.iter()));
        let mut prepared = Prepared {
            readings,
            held,
            todo: self.store.inner.all_destinations,
            acks,
            dead,
        };
        let has_writes = !prepared.readings.is_empty()
            || !prepared.held.is_empty()
            || !rejected.is_empty()
            || !prepared.acks.is_empty()
            || !prepared.dead.is_empty()
            || !replies.is_empty();
        let during = if replies.is_empty() {
            "delete"
        } else {
            "commit"
        };
        let result = if has_writes {
            self.transaction(&mut prepared, &rejected).await
        } else {
            Ok(Written::default())
        };
        let committed_at = OffsetDateTime::now_utc();
        let error = match result {
            Ok(written) => {
                let total: u64 = admitted.iter().map(|(_, r)| r.len() as u64).sum();
                counts.inserted = written.inserted + written.held;
                counts.duplicates = total - written.inserted.min(total);
                counts.commits = u64::from(has_writes);
                counts.deleted = written.removed;
                counts.dead_lettered = written.dead_lettered;
                let pending = &self.store.inner.pending;
                let gone = written.removed;
                let now = self.store.pending() + written.inserted;
                pending.store(
                    now.saturating_sub(gone),
                    std::sync::atomic::Ordering::Relaxed,
                );
                self.store
                    .inner
                    .unbound
                    .fetch_add(written.held, std::sync::atomic::Ordering::Relaxed);
                if written.inserted > 0 {
                    self.store.inner.committed.send_modify(|n| *n += 1);
                }
                for (destination, ids) in &prepared.acks {
                    self.store.settled(destination, ids.iter().copied()).await;
                }
                for (destination, _, rows) in &prepared.dead {
                    self.store
                        .settled(destination, rows.iter().map(|(id, _)| *id))
                        .await;
                }
                for (reply, n) in replies {
                    let _ = reply.send(Ok(Committed { readings: n }));
                }
                // The kept deletes come first; answer this group's requests with theirs.
                let skip = written.acked.len() - ack_replies.len();
                for (reply, n) in ack_replies.into_iter().zip(&written.acked[skip..]) {
                    let _ = reply.send(Ok(*n));
                }
                for reply in dead_replies {
                    let _ = reply.send(Ok(0));
                }
                if self.failures > 0 {
                    let since = self.store.health().failing.map(|p| p.since);
                    let after = since
                        .map(|s| (committed_at - s).unsigned_abs())
                        .unwrap_or_default();
                    tracing::info!(
                        failed_attempts = self.failures,
                        after_s = after.as_secs(),
                        "buffer: writes succeed again; sources are acknowledged again"
                    );
                    transitions.push(Transition::Recovered { after });
                }
                self.failures = 0;
                self.retry_at = None;
                self.store.update_health(|h| h.failing = None);
                None
            }
            Err(failure) => {
                counts.failed = 1;
                self.failures = self.failures.saturating_add(1);
                self.retry_at = Some(Instant::now() + retry_delay(self.failures));
                let previous = self.store.health().failing;
                let problem = StorageProblem {
                    since: previous.as_ref().map_or(committed_at, |p| p.since),
                    during,
                    failure: failure.clone(),
                };
                self.store
                    .update_health(|h| h.failing = Some(problem.clone()));
                if previous.is_none() {
                    tracing::error!(
                        error = %failure,
                        kind = failure.kind.as_str(),
                        during,
                        "buffer: write failed; nothing of it was stored, sources are not acknowledged, \
                         delivered rows stay queued until writes succeed again"
                    );
                    transitions.push(Transition::Failed(problem));
                } else {
                    tracing::debug!(error = %failure, attempts = self.failures, "buffer: write failed again");
                }
                for (reply, _) in replies {
                    let _ = reply.send(Err(CommitError::Storage(failure.clone())));
                }
                for reply in ack_replies.into_iter().chain(dead_replies) {
                    let _ = reply.send(Err(CommitError::Storage(failure.clone())));
                }
                self.unsettled_acks = prepared.acks;
                self.unsettled_dead = prepared.dead;
                Some(failure)
            }
        };
        let ok = error.is_none();
        on_commit(&GroupReport {
            counts,
            committed_at: (ok && has_writes).then_some(committed_at),
            readings: if ok { &admitted } else { &[] },
            rejected: if ok { &rejected } else { &[] },
            error: error.as_ref(),
            transitions: &transitions,
            pending: self.store.pending(),
            capacity,
        });
        for (key, reply) in group.seq_queries {
            let answer = self.store.last_sequence(&key).await.map_err(|e| match e {
                BufferError::Sql(sql) => CommitError::Storage(storage_failure(&sql)),
                _ => CommitError::Closed,
            });
            let _ = reply.send(answer);
        }
        counts
    }

    /// Writes one group in one transaction. On any error the transaction is rolled back and
    /// the connection dropped (see the module docs).
    async fn transaction(
        &mut self,
        prepared: &mut Prepared<'_>,
        rejected: &[(Arc<str>, Rejected)],
    ) -> Result<Written, StorageFailure> {
        let key = self.store.inner.key.clone();
        let older = self.older.clone();
        let conn = self.connection().await?;
        let mut written = Written::default();
        let result = match open::begin(conn).await {
            Ok(()) => {
                let body = write(conn, &key, prepared, rejected, &older, &mut written).await;
                open::commit_or_rollback(conn, body).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => Ok(written),
            Err(e) => {
                let failure = storage_failure(&e);
                if let Some(conn) = self.conn.take() {
                    let _ = conn.close().await;
                }
                Err(failure)
            }
        }
    }

    /// Puts `reading` dead letters back in the queue (after the cause was fixed), each for the
    /// destination that gave up on it (all destinations for rows from before there were
    /// several); with `only`, just those of that destination. Payload rows stay (there is no
    /// reading to retry). Returns how many were queued again.
    pub async fn retry_dead_letters(
        &mut self,
        only: Option<&Destination>,
    ) -> Result<u64, BufferError> {
        let key = self.store.inner.key.clone();
        let destinations = self.store.inner.destinations.clone();
        let all = self.store.inner.all_destinations;
        let conn = self.connection().await?;
        open::begin(conn).await?;
        let body = requeue(conn, &key, &destinations, all, only).await;
        let (moved, inserted) = match body {
            Ok(n) => {
                open::commit_or_rollback(conn, Ok(())).await?;
                n
            }
            Err(e) => {
                open::commit_or_rollback(conn, Err(e)).await?;
                (0, 0)
            }
        };
        self.store
            .inner
            .pending
            .fetch_add(inserted, std::sync::atomic::Ordering::Relaxed);
        Ok(moved)
    }

    /// Inserts salvaged readings in one transaction (those already in the buffer are
    /// ignored); returns how many were new.
    pub(crate) async fn insert_salvaged(
        &mut self,
        readings: &[Reading],
    ) -> Result<u64, BufferError> {
        let key = self.store.inner.key.clone();
        let (bound, held) = seal_all(&key, readings.iter());
        let mut prepared = Prepared {
            readings: bound,
            held,
            todo: self.store.inner.all_destinations,
            acks: Vec::new(),
            dead: Vec::new(),
        };
        let written = self.transaction(&mut prepared, &[]).await?;
        self.store
            .inner
            .pending
            .fetch_add(written.inserted, std::sync::atomic::Ordering::Relaxed);
        self.store
            .inner
            .unbound
            .fetch_add(written.held, std::sync::atomic::Ordering::Relaxed);
        Ok(written.inserted + written.held)
    }
}

/// A reading sealed for its row, with its receive time in Unix ms.
type SealedRow<'a> = (SealedReading, i64, &'a Reading);

/// Seals readings for the `readings` table, and those with no patient for `unbound`.
fn seal_all<'a>(
    key: &super::seal::BufferKey,
    readings: impl Iterator<Item = &'a Reading>,
) -> (Vec<SealedRow<'a>>, Vec<SealedRow<'a>>) {
    let (mut bound, mut held) = (Vec::new(), Vec::new());
    for r in readings {
        let received = (r.received_at.unix_timestamp_nanos() / 1_000_000) as i64;
        let row = (rows::seal_reading(key, r), received, r);
        if r.patient.is_some() {
            bound.push(row);
        } else {
            held.push(row);
        }
    }
    (bound, held)
}

/// Deletes the rows among `ids` (a JSON list) whose `todo` is `finished` (what is left of it
/// once they need nothing more: 0, or the bit of the destination that has them now), and
/// remembers them as delivered (see [`DELIVERED_MEMORY`]). Returns how many it deleted.
async fn delete_settled(
    conn: &mut SqliteConnection,
    ids: &str,
    finished: i64,
    now: i64,
) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "INSERT OR IGNORE INTO delivered (dedup, at_ms) \
         SELECT dedup, ? FROM readings WHERE id IN (SELECT value FROM json_each(?)) AND todo = ?",
    )
    .bind(now)
    .bind(ids)
    .bind(finished)
    .execute(&mut *conn)
    .await?;
    Ok(sqlx::query(
        "DELETE FROM readings WHERE id IN (SELECT value FROM json_each(?)) AND todo = ?",
    )
    .bind(ids)
    .bind(finished)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// `destination` (its bit: `mask`) has the rows among `ids` (a JSON list). The rows it was the
/// last to need are remembered as delivered and deleted, without first being rewritten to
/// clear its bit; the others (owed to another destination too) only lose its bit, and with
/// one destination (`all == mask`) there are none to look for. Returns (deleted, passed on):
/// together, the rows it had still needed.
async fn settle_acked(
    conn: &mut SqliteConnection,
    ids: &str,
    mask: i64,
    all: i64,
    now: i64,
) -> Result<(u64, u64), sqlx::Error> {
    let finished = delete_settled(conn, ids, mask, now).await?;
    if all & !mask == 0 {
        return Ok((finished, 0));
    }
    let passed_on = sqlx::query(
        "UPDATE readings SET todo = todo & ? WHERE id IN (SELECT value FROM json_each(?)) AND todo & ? != 0",
    )
    .bind(!mask)
    .bind(ids)
    .bind(mask)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok((finished, passed_on))
}

/// [`Writer::retry_dead_letters`]: returns (queued again, newly inserted rows).
async fn requeue(
    conn: &mut SqliteConnection,
    key: &super::seal::BufferKey,
    destinations: &[Destination],
    all: i64,
    only: Option<&Destination>,
) -> Result<(u64, u64), sqlx::Error> {
    let rows: Vec<(i64, Vec<u8>, Option<String>)> = sqlx::query_as(
        "SELECT id, body, destination FROM dead_letters WHERE kind = 'reading' AND (? IS NULL OR destination = ?)",
    )
    .bind(only.map(Destination::name))
    .bind(only.map(Destination::name))
    .fetch_all(&mut *conn)
    .await?;
    let (mut moved, mut inserted) = (0, 0);
    for (id, body, destination) in rows {
        let Ok(envelope) = Envelope::open(key, &body) else {
            continue;
        };
        let Ok(reading) = super::codec::decode(&envelope.content) else {
            continue;
        };
        // For the destination that gave up on it if it is still configured, else for all.
        let mask = destination
            .and_then(|name| destinations.iter().find(|d| d.name() == name))
            .map_or(all, Destination::mask);
        let sealed = rows::seal_reading(key, &reading);
        let new = sqlx::query(
            "INSERT OR IGNORE INTO readings (dedup, received_ms, body, todo) VALUES (?, ?, ?, ?)",
        )
        .bind(&sealed.dedup[..])
        .bind(now_ms())
        .bind(&sealed.body)
        .bind(mask)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if new == 0 {
            // Still buffered for other destinations: owe it to this one again too.
            sqlx::query("UPDATE readings SET todo = todo | ? WHERE dedup = ?")
                .bind(mask)
                .bind(&sealed.dedup[..])
                .execute(&mut *conn)
                .await?;
        }
        inserted += new;
        moved += 1;
        sqlx::query("DELETE FROM dead_letters WHERE id = ?")
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    Ok((moved, inserted))
}

/// Keeps the highest sequence number per device after delivery (one statement for every
/// device of a group: a JSON object of device key -> sequence, expanded by `json_each`).
const DEVICE_STATE_SQL: &str = "INSERT INTO device_state (device_key, last_sequence) \
     SELECT key, value FROM json_each(?) WHERE true \
     ON CONFLICT(device_key) DO UPDATE SET last_sequence = max(last_sequence, excluded.last_sequence)";

/// The highest sequence number of each device in a group, as a JSON object for
/// [`DEVICE_STATE_SQL`]; `None` when no reading has one.
fn device_state_json(prepared: &Prepared<'_>) -> Option<String> {
    // Keyed by the device id itself: its text is made once per device, not once per reading.
    let mut max_seq: HashMap<&DeviceId, i64> = HashMap::new();
    for (_, _, r) in prepared.readings.iter().chain(&prepared.held) {
        if let Some(seq) = r.sequence {
            let seq = i64::try_from(seq).unwrap_or(i64::MAX);
            let e = max_seq.entry(&r.device.id).or_insert(seq);
            *e = (*e).max(seq);
        }
    }
    // Ids of two kinds may share a key (a serial number and another id of the same text).
    let mut by_key: HashMap<String, i64> = HashMap::with_capacity(max_seq.len());
    for (id, seq) in max_seq {
        let e = by_key.entry(id.key()).or_insert(seq);
        *e = (*e).max(seq);
    }
    // A map of strings to integers always serializes.
    (!by_key.is_empty()).then(|| serde_json::to_string(&by_key).unwrap_or_default())
}

/// The statements of one group, inside its transaction.
async fn write(
    conn: &mut SqliteConnection,
    key: &super::seal::BufferKey,
    prepared: &mut Prepared<'_>,
    rejected: &[(Arc<str>, Rejected)],
    older: &Older,
    written: &mut Written,
) -> Result<(), sqlx::Error> {
    let todo = prepared.todo;
    let mut rest = prepared.readings.as_mut_slice();
    while !rest.is_empty() {
        let n = insert_chunk_len(rest.len());
        let (chunk, tail) = std::mem::take(&mut rest).split_at_mut(n);
        rest = tail;
        // A failed group is answered with its error, never acknowledged.
        let sql = insert_sql(n, older)
            .ok_or_else(|| sqlx::Error::Protocol(format!("no INSERT of {n} rows")))?;
        let mut q = sqlx::query(sql);
        for (sealed, received, r) in chunk {
            q = q
                .bind(&sealed.dedup[..])
                .bind(*received)
                // Moved into the statement, not copied: a group is written once (a failed
                // one is answered with its error, never written again).
                .bind(std::mem::take(&mut sealed.body))
                .bind(todo);
            if let Some(old_key) = older.old_key(r) {
                q = q.bind(old_key.to_vec());
            }
        }
        written.inserted += q.execute(&mut *conn).await?.rows_affected();
    }
    written.held += super::unbound::hold(conn, &prepared.held).await?;
    // The highest sequence number per device, kept after delivery: one statement for every
    // device of the group, not one per device.
    if let Some(json) = device_state_json(prepared) {
        sqlx::query(DEVICE_STATE_SQL)
            .bind(json)
            .execute(&mut *conn)
            .await?;
    }
    let now = now_ms();
    for (_, r) in rejected {
        open::insert_dead_letter(conn, key, now, "payload", None, &Envelope::of_payload(r)).await?;
    }
    for (destination, ids) in &prepared.acks {
        let (finished, passed_on) =
            settle_acked(conn, &id_list(ids), destination.mask(), prepared.todo, now).await?;
        written.acked.push(finished + passed_on);
        written.removed += finished;
    }
    for (destination, origin, rows) in &prepared.dead {
        let ids = id_list(&rows.iter().map(|(id, _)| *id).collect::<Vec<_>>());
        let reasons: HashMap<i64, String> = rows.iter().map(|(id, r)| (*id, r.clone())).collect();
        let found = sqlx::query(
            "SELECT id, dedup, body FROM readings WHERE id IN (SELECT value FROM json_each(?)) AND todo & ? != 0",
        )
        .bind(&ids)
        .bind(destination.mask())
        .fetch_all(&mut *conn)
        .await?;
        for row in found {
            let (id, dedup, body): (i64, Vec<u8>, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
            let reason = reasons.get(&id).map(String::as_str).unwrap_or_default();
            // A row that cannot be opened keeps its sealed bytes, for a person to look at.
            let envelope = match rows::open_reading_bytes(key, &dedup, &body) {
                Ok(plain) => {
                    let identifier = super::codec::decode(&plain).ok().map(|r| r.identifier());
                    Envelope::of_reading(origin, reason, identifier, plain)
                }
                Err(_) => Envelope::of_reading(origin, reason, None, body),
            };
            open::insert_dead_letter(
                conn,
                key,
                now,
                "reading",
                Some(destination.name()),
                &envelope,
            )
            .await?;
            written.dead_lettered += 1;
        }
        sqlx::query(
            "UPDATE readings SET todo = todo & ? WHERE id IN (SELECT value FROM json_each(?))",
        )
        .bind(!destination.mask())
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
        written.removed += delete_settled(conn, &ids, 0, now).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_waits_twice_the_time_between_groups_of_readings_within_bounds() {
        let ms = Duration::from_millis;
        let linger = ms(2);
        assert_eq!(settle_wait(None, linger), linger, "no rate known yet");
        assert_eq!(settle_wait(Some(ms(50)), linger), ms(100));
        assert_eq!(settle_wait(Some(ms(900)), linger), READINGS_ARRIVING);
        assert_eq!(settle_wait(Some(Duration::ZERO), linger), linger);
        // A writer configured to wait longer keeps its own wait.
        assert_eq!(
            settle_wait(Some(ms(10)), Duration::from_secs(30)),
            Duration::from_secs(30)
        );
    }

    /// Every chunk size has its `INSERT` for each memory it may consult, with a value for
    /// every column bound; any other size has none (the group fails instead of being written
    /// short).
    #[test]
    fn every_chunk_size_has_an_insert_of_its_shape() {
        let old = Older::Rotated(Arc::new(super::super::seal::BufferKey::from_bytes(
            &[7; 32],
        )));
        for older in [Older::None, Older::Schema5, old] {
            let (filter, old_key) = memory::INSERT_FILTERS[older.shape()];
            let columns = if old_key { 5 } else { 4 };
            for n in INSERT_CHUNKS {
                let sql = insert_sql(n, &older).unwrap();
                assert_eq!(sql.matches('?').count(), n * columns, "{n} rows");
                assert!(sql.ends_with(filter), "{sql}");
            }
            assert_eq!(insert_sql(3, &older), None);
            assert_eq!(insert_chunk_len(3), 2);
        }
    }
}
