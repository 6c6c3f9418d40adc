//! The durable store-and-forward buffer (SQLite through sqlx).
//!
//! # On disk (`data_dir`)
//! - `buffer.db` (+ `-wal`, `-shm`): schema in `gateway/migrations/` (tables `readings`,
//!   `dead_letters`, `device_state`, `meta`, and `unbound`: readings that belong to no
//!   patient yet, held and never delivered until released, see [`unbound`]). Reading bodies and dead letters are sealed
//!   ([`seal`], [`rows`]); reading bodies are [`codec`] bytes inside.
//! - `buffer.state`: this directory's own record of its buffer (`db_id`, and the highest row
//!   id it committed), so a database that was replaced, emptied or went back in time is
//!   noticed at open ([`open`](mod@open)).
//! - `quarantine/<UTC time>/`: damaged databases moved aside at open, with a `README.txt`
//!   saying why; `vitalbridge queue salvage DIR` brings their readings back ([`salvage`]).
//! - `vitalbridge.lock`: held (advisory `flock`) by the one process that may write.
//!
//! # Guarantees
//! - **Durable before acknowledged.** The writer's connection runs `journal_mode=WAL` and
//!   `synchronous=FULL`, checked on the live connection at open (and at every reconnect). The
//!   writer answers a source only after its transaction committed.
//! - **A storage error stops acknowledgements.** A failed statement or commit rolls the
//!   transaction back and the writer drops its connection and opens a fresh one, so no
//!   transaction survives a failure half-open (see [`writer`]); nothing of the group is
//!   acknowledged; the buffer reports itself failing ([`Store::health`]) until a commit
//!   succeeds again.
//! - **Headroom.** Below a free-space floor ([`space`]) new readings are refused, so that
//!   deliveries can still be recorded on a nearly full disk.
//! - **One writer.** Only the writer task ([`Writer`]) writes: inserts, dead letters, and the
//!   deletes of delivered rows ([`Store::ack`], [`Store::dead_letter`] send it requests),
//!   each group in one transaction. A second process on the same data directory fails at
//!   open with [`BufferError::Locked`].
//! - **Every destination gets every reading.** Each row carries a bit per configured
//!   destination that still needs it (`readings.todo`, bits in table `destinations`); each
//!   destination leases, acknowledges and dead-letters on its own ([`Destination`]), so a
//!   slow or dead one never blocks or duplicates delivery to the others.
//! - **Delete after acknowledged.** A row leaves `readings` only when every destination
//!   acknowledged it or moved it (with a reason) to `dead_letters`, in the same transaction.
//! - **Leases are memory only.** [`Store::lease`] hands rows to the uplink without writing;
//!   after a crash every undelivered row is simply there again.
//! - **Bounded.** At `capacity` pending readings new commits are refused with
//!   [`CommitError::Full`]; nothing stored is ever deleted to make room.
//! - **Sealed at rest.** No patient identifier or value is written in clear ([`seal`]).
//! - **Damage is quarantined, never silently replaced** ([`open`](mod@open)).

pub mod codec;
mod memory;
mod open;
pub mod rows;
pub mod salvage;
pub mod seal;
pub mod space;
pub mod unbound;
pub mod writer;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use sqlx::{Row, SqlitePool};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch, Mutex};

use crate::model::Reading;
pub use crate::pipeline::CommitError;
pub use crate::pipeline::StorageProblem;
use crate::pipeline::{StorageFailure, StorageKind};
pub use open::{open, open_read_only, OpenOptions, OpenReport, Quarantine};
use seal::BufferKey;
pub use writer::Writer;

/// Errors of the buffer layer.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// Another process holds the data directory.
    #[error(
        "another vitalbridge is already running on data directory {0} (lock held on {0}/vitalbridge.lock); \
         stop it first, or give this one its own data_dir"
    )]
    Locked(PathBuf),
    /// The data directory or a file in it could not be used.
    #[error("cannot use {}", .path.display())]
    Dir {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// There is no buffer in the data directory (read-only commands).
    #[error("there is no buffer in {}: no buffer.db (has the gateway run with this data_dir?)", .0.display())]
    NoBuffer(PathBuf),
    /// The buffer file is damaged or empty (read-only commands; the gateway itself
    /// quarantines it at start).
    #[error("the buffer {} cannot be read: {reason}; start the gateway to quarantine it, then `vitalbridge queue salvage`", .path.display())]
    Damaged {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// SQLite refused.
    #[error("buffer database error")]
    Sql(#[from] sqlx::Error),
    /// A migration failed.
    #[error("buffer migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A newer gateway changed the buffer's format (a downgrade): its readings are untouched.
    #[error(
        "the buffer {} was upgraded by a newer vitalbridge (buffer schema {found} or later; this version \
         knows up to {known}); start the newer version again (its readings are still there), \
         or give this one another data_dir",
        .path.display()
    )]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// The newest schema version the buffer has.
        found: i64,
        /// The newest this gateway knows.
        known: i64,
    },
    /// The live connection does not have the durability settings we require.
    #[error("buffer database is not durable: journal_mode={mode}, synchronous={synchronous} (need wal, 2=FULL)")]
    NotDurable {
        /// The journal mode SQLite reports.
        mode: String,
        /// The synchronous level SQLite reports.
        synchronous: i64,
    },
    /// The key could not be loaded or created.
    #[error(transparent)]
    Key(#[from] seal::KeyError),
    /// The key file is gone, but the buffer is sealed with a key.
    #[error(
        "buffer.key_file {} does not exist, but the buffer in {} is sealed with a key: restore \
         the key file (nothing was read or deleted)",
        .file.display(), .dir.display()
    )]
    KeyMissing {
        /// The configured key file.
        file: PathBuf,
        /// The data directory.
        dir: PathBuf,
    },
    /// The key is not the one the buffer's rows are sealed with.
    #[error(
        "buffer.key_file {} (key id {given}) is not the key this buffer is sealed with (key id {expected}); \
         nothing was read or deleted. Configure the right key, or list the old one in \
         buffer.previous_key_files to rotate to the new one",
        .file.display()
    )]
    WrongKey {
        /// The configured key file.
        file: PathBuf,
        /// The id of the key the rows are sealed with.
        expected: String,
        /// The id of the configured key.
        given: String,
    },
    /// A storage failure the writer met (it is also reported through [`Store::health`]).
    #[error(transparent)]
    Storage(#[from] StorageFailure),
    /// The writer has stopped.
    #[error("the buffer writer has stopped")]
    Closed,
}

impl From<CommitError> for BufferError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Storage(f) => BufferError::Storage(f),
            _ => BufferError::Closed,
        }
    }
}

/// Classifies a database error for operators and metrics.
pub(crate) fn storage_failure(e: &sqlx::Error) -> StorageFailure {
    let kind = match e {
        sqlx::Error::Database(db) => {
            // SQLite primary result codes (the low byte of an extended code).
            let code = db
                .code()
                .and_then(|c| c.parse::<i64>().ok())
                .map(|c| c & 0xff);
            match code {
                Some(13) => StorageKind::DiskFull,
                Some(10) => StorageKind::Io,
                Some(11) | Some(26) => StorageKind::Corrupt,
                _ => StorageKind::Other,
            }
        }
        sqlx::Error::Io(_) => StorageKind::Io,
        _ => StorageKind::Other,
    };
    StorageFailure {
        kind,
        message: e.to_string().into(),
    }
}

/// A leased row: its id and the decoded reading (or why it cannot be decoded).
#[derive(Debug)]
pub struct Leased {
    /// Row id, for ack / dead-letter / release.
    pub id: i64,
    /// The reading, or a codec error (a row that must be dead-lettered).
    pub reading: Result<Reading, codec::CodecError>,
}

/// A dead-letter row, for the CLI.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Row id.
    pub id: i64,
    /// For `reading` rows, the destination that gave up on it.
    pub destination: Option<String>,
    /// When it was first dead-lettered.
    pub created: OffsetDateTime,
    /// `payload` or `reading`.
    pub kind: String,
    /// The source or uplink that gave up on it.
    pub source: String,
    /// How many times the same payload arrived.
    pub seen: u64,
    /// The sealed details, or why they cannot be opened.
    pub details: Result<rows::Envelope, codec::CodecError>,
}

/// Queue figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Readings waiting for delivery (including leased ones).
    pub pending: u64,
    /// Readings handed to the uplink and not yet acknowledged (this process only).
    pub leased: u64,
    /// Rows in the dead-letter table.
    pub dead_letters: u64,
    /// Age of the oldest pending reading, in ms (by receive time).
    pub oldest_age_ms: Option<i64>,
}

/// The buffer's health, for `/readyz`, the status page and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Health {
    /// Set while writes fail; cleared by the next successful commit.
    pub failing: Option<StorageProblem>,
    /// Free bytes on the buffer's file system at the last check.
    pub free_bytes: Option<u64>,
    /// The free-space floor.
    pub floor_bytes: u64,
    /// Whether new readings are refused for lack of space.
    pub low_space: bool,
    /// Damaged databases waiting in `quarantine/` (counted at open).
    pub quarantined: u32,
}

/// A destination the buffer keeps readings for (an uplink: `file`, `fhir`, …): its name and
/// its bit in `readings.todo`. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    name: Arc<str>,
    bit: u8,
}

impl Destination {
    /// Its name (the uplink's).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn mask(&self) -> i64 {
        1 << self.bit
    }
}

#[derive(Default)]
struct LeaseState {
    /// Highest row id handed out (or skipped); rows above it have not been seen.
    cursor: i64,
    /// Row ids handed out and not yet acked, dead-lettered or released.
    leased: HashSet<i64>,
}

/// A request from the uplink side to the writer.
pub(crate) enum Settle {
    /// These rows were delivered to `destination`: clear its bit, delete what no one needs.
    Ack {
        destination: Destination,
        ids: Vec<i64>,
        reply: oneshot::Sender<Result<u64, CommitError>>,
    },
    /// `destination` gave up on these rows: dead-letter them with their reasons for it.
    DeadLetter {
        destination: Destination,
        origin: String,
        rows: Vec<(i64, String)>,
        reply: oneshot::Sender<Result<u64, CommitError>>,
    },
}

/// Capacity of the channel from the uplink workers to the writer.
const SETTLE_CHANNEL_CAPACITY: usize = 64;

struct Inner {
    dir: PathBuf,
    reader: SqlitePool,
    key: Arc<BufferKey>,
    capacity: u64,
    pending: AtomicU64,
    /// Readings held for want of a patient (`unbound`), exact for this process.
    unbound: AtomicU64,
    /// The configured destinations.
    destinations: Vec<Destination>,
    /// Their bits together: what a new reading is owed to.
    all_destinations: i64,
    /// Each destination's leases, by bit.
    lease: Mutex<std::collections::HashMap<u8, LeaseState>>,
    /// Bumped after every commit that stored readings; the uplink waits on it when idle.
    committed: watch::Sender<u64>,
    health: StdMutex<Health>,
    /// Requests to the writer (acks and dead letters); `None` for a read-only store.
    settle: Option<mpsc::Sender<Settle>>,
    /// Held for the life of the store: the one-writer lock.
    _lock: Option<File>,
}

/// The buffer's read side and the uplink's handle to the writer. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Row ids as a JSON array, bound as one parameter and expanded with `json_each`, so a
/// statement over any number of rows is one cached prepared statement.
fn id_list(ids: &[i64]) -> String {
    let mut s = String::with_capacity(ids.len() * 8 + 2);
    s.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&id.to_string());
    }
    s.push(']');
    s
}

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn time_of_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl Store {
    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Configured capacity.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// Readings pending delivery (kept in memory, exact for this process).
    pub fn pending(&self) -> u64 {
        self.inner.pending.load(Ordering::Relaxed)
    }

    /// The buffer's health.
    pub fn health(&self) -> Health {
        lock(&self.inner.health).clone()
    }

    fn update_health(&self, f: impl FnOnce(&mut Health)) {
        f(&mut lock(&self.inner.health));
    }

    /// A receiver that changes after every commit that stored readings.
    pub fn subscribe_commits(&self) -> watch::Receiver<u64> {
        self.inner.committed.subscribe()
    }

    /// The destinations this buffer keeps readings for.
    pub fn destinations(&self) -> &[Destination] {
        &self.inner.destinations
    }

    /// The destination called `name`, if it is configured.
    pub fn destination(&self, name: &str) -> Option<Destination> {
        self.inner
            .destinations
            .iter()
            .find(|d| &*d.name == name)
            .cloned()
    }

    /// Leases up to `max` readings `destination` still needs, oldest first, that it does not
    /// hold already.
    pub async fn lease(
        &self,
        destination: &Destination,
        max: usize,
    ) -> Result<Vec<Leased>, BufferError> {
        let mut leases = self.inner.lease.lock().await;
        let state = leases.entry(destination.bit).or_default();
        let mut out = Vec::with_capacity(max);
        loop {
            let want = max - out.len();
            let rows = sqlx::query(
                "SELECT id, dedup, body FROM readings WHERE id > ? AND todo & ? != 0 ORDER BY id LIMIT ?",
            )
            .bind(state.cursor)
            .bind(destination.mask())
            .bind(want as i64)
            .fetch_all(&self.inner.reader)
            .await?;
            let exhausted = rows.len() < want;
            for row in rows {
                let id: i64 = row.get(0);
                state.cursor = state.cursor.max(id);
                if state.leased.insert(id) {
                    let dedup: &[u8] = row.get(1);
                    let body: &[u8] = row.get(2);
                    out.push(Leased {
                        id,
                        reading: rows::open_reading(&self.inner.key, dedup, body),
                    });
                }
            }
            if exhausted || out.len() >= max {
                return Ok(out);
            }
        }
    }

    /// Gives leased rows back without delivering them (they will be leased again).
    pub async fn release(&self, destination: &Destination, ids: &[i64]) {
        let mut leases = self.inner.lease.lock().await;
        let state = leases.entry(destination.bit).or_default();
        for id in ids {
            if state.leased.remove(id) {
                state.cursor = state.cursor.min(id - 1);
            }
        }
    }

    /// Forgets `destination`'s leases of rows the writer settled for it.
    async fn settled(&self, destination: &Destination, ids: impl Iterator<Item = i64>) {
        let mut leases = self.inner.lease.lock().await;
        let state = leases.entry(destination.bit).or_default();
        for id in ids {
            state.leased.remove(&id);
        }
    }

    async fn settle(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<u64, CommitError>>) -> Settle,
    ) -> Result<u64, BufferError> {
        let tx = self.inner.settle.as_ref().ok_or(BufferError::Closed)?;
        let (reply, answer) = oneshot::channel();
        tx.send(make(reply))
            .await
            .map_err(|_| BufferError::Closed)?;
        Ok(answer.await.map_err(|_| BufferError::Closed)??)
    }

    /// Records that `destination` has these rows, in the writer's next transaction; a row no
    /// destination needs any more is deleted. Returns how many rows it had still needed. On
    /// a storage error the rows stay leased (not sent again) and the writer keeps trying;
    /// after a restart they would be sent again, which conditional creates make harmless.
    pub async fn ack(&self, destination: &Destination, ids: &[i64]) -> Result<u64, BufferError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let (destination, ids) = (destination.clone(), ids.to_vec());
        self.settle(|reply| Settle::Ack {
            destination,
            ids,
            reply,
        })
        .await
    }

    /// `destination` gave up on these rows: they are dead-lettered for it with their reasons,
    /// in the writer's next transaction (kept and retried like [`Store::ack`] on a storage
    /// error). Other destinations still get them.
    pub async fn dead_letter(
        &self,
        destination: &Destination,
        origin: &str,
        rows: &[(i64, String)],
    ) -> Result<(), BufferError> {
        if rows.is_empty() {
            return Ok(());
        }
        let (destination, origin, rows) = (destination.clone(), origin.to_owned(), rows.to_vec());
        self.settle(|reply| Settle::DeadLetter {
            destination,
            origin,
            rows,
            reply,
        })
        .await
        .map(|_| ())
    }

    /// Readings `destination` still needs (a scan: for the CLI and the status page).
    pub async fn pending_for(&self, destination: &Destination) -> Result<u64, BufferError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM readings WHERE todo & ? != 0")
            .bind(destination.mask())
            .fetch_one(&self.inner.reader)
            .await?;
        Ok(n.max(0) as u64)
    }

    /// Queue figures from the database (and this process's leases).
    pub async fn stats(&self) -> Result<QueueStats, BufferError> {
        let pool = &self.inner.reader;
        let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM readings")
            .fetch_one(pool)
            .await?;
        let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters")
            .fetch_one(pool)
            .await?;
        let oldest: Option<i64> = sqlx::query_scalar("SELECT MIN(received_ms) FROM readings")
            .fetch_one(pool)
            .await?;
        let leased = self.leased().await;
        Ok(QueueStats {
            pending: pending as u64,
            leased,
            dead_letters: dead as u64,
            oldest_age_ms: oldest.map(|t| (now_ms() - t).max(0)),
        })
    }

    /// Queue figures cheap enough to read every few seconds while the gateway runs (the
    /// operations endpoints): `pending` from this process's exact in-memory count instead of a
    /// scan, and the oldest age from the head of the queue (the lowest row id, the next row the
    /// uplink sends) instead of a scan for the minimum receive time.
    pub async fn live_stats(&self) -> Result<QueueStats, BufferError> {
        let pool = &self.inner.reader;
        let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters")
            .fetch_one(pool)
            .await?;
        let head: Option<i64> =
            sqlx::query_scalar("SELECT received_ms FROM readings ORDER BY id LIMIT 1")
                .fetch_optional(pool)
                .await?;
        let leased = self.leased().await;
        Ok(QueueStats {
            pending: self.pending(),
            leased,
            dead_letters: dead as u64,
            oldest_age_ms: head.map(|t| (now_ms() - t).max(0)),
        })
    }

    /// Rows leased by any destination (a row two destinations hold counts once).
    async fn leased(&self) -> u64 {
        let leases = self.inner.lease.lock().await;
        let all: HashSet<i64> = leases
            .values()
            .flat_map(|s| s.leased.iter().copied())
            .collect();
        all.len() as u64
    }

    /// Dead letters, newest first, at most `limit`, with their sealed details opened; with
    /// `destination`, only the readings that destination gave up on.
    pub async fn dead_letters(
        &self,
        limit: u32,
        destination: Option<&str>,
    ) -> Result<Vec<DeadLetter>, BufferError> {
        let rows = sqlx::query(
            "SELECT id, created_ms, kind, source, seen, body, destination FROM dead_letters \
             WHERE ? IS NULL OR destination = ? ORDER BY id DESC LIMIT ?",
        )
        .bind(destination)
        .bind(destination)
        .bind(i64::from(limit))
        .fetch_all(&self.inner.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| DeadLetter {
                id: r.get(0),
                created: time_of_ms(r.get(1)),
                kind: r.get(2),
                source: r.get(3),
                seen: r.get::<i64, _>(4).max(0) as u64,
                details: rows::Envelope::open(&self.inner.key, r.get(5)),
                destination: r.get(6),
            })
            .collect())
    }

    /// The highest sequence number ever committed for the device with key `key`.
    pub(crate) async fn last_sequence(&self, key: &str) -> Result<Option<u64>, BufferError> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT last_sequence FROM device_state WHERE device_key = ?")
                .bind(key)
                .fetch_optional(&self.inner.reader)
                .await?;
        Ok(seq.map(|s| s as u64))
    }

    /// Closes the read side.
    pub async fn close(&self) {
        self.inner.reader.close().await;
    }
}

/// The operations endpoints read queue figures from the buffer through this.
impl crate::ops::QueueProbe for Store {
    async fn gauges(&self) -> Result<crate::ops::QueueGauges, crate::ops::ProbeError> {
        let s = self
            .live_stats()
            .await
            .map_err(|e| crate::ops::ProbeError(Box::new(e)))?;
        let h = self.health();
        // One destination: its pending is the queue's. Several: one count each (a scan of
        // the table per destination and scrape).
        let mut pending_by_destination = Vec::with_capacity(self.destinations().len());
        for d in self.destinations() {
            let n = if self.destinations().len() == 1 {
                s.pending
            } else {
                self.pending_for(d)
                    .await
                    .map_err(|e| crate::ops::ProbeError(Box::new(e)))?
            };
            pending_by_destination.push((d.name().to_owned(), n));
        }
        Ok(crate::ops::QueueGauges {
            pending_by_destination,
            pending: s.pending,
            capacity: self.capacity(),
            leased: s.leased,
            dead_letters: s.dead_letters,
            unbound: self.unbound(),
            oldest_age: s
                .oldest_age_ms
                .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
            storage: crate::ops::StorageGauges {
                failing: h.failing.map(|p| crate::ops::StorageFailing {
                    since: p.since,
                    during: p.during,
                    kind: p.failure.kind.as_str(),
                    message: p.failure.message.to_string(),
                }),
                free_bytes: h.free_bytes,
                floor_bytes: h.floor_bytes,
                low_space: h.low_space,
                quarantined: h.quarantined,
            },
        })
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long to wait before a writer that failed tries again, after `attempts` failures.
fn retry_delay(attempts: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempts.min(6))).min(Duration::from_secs(5))
}
