//! The durable store-and-forward buffer (SQLite through sqlx).
//!
//! # On disk
//! `<data_dir>/buffer.db` (+ `-wal`, `-shm`), schema in `gateway/migrations/` (tables
//! `readings`, `dead_letters`, `device_state`), row bodies as in [`codec`].
//! `<data_dir>/vitalbridge.lock` is held (advisory `flock`) by the one process that may write.
//!
//! # Guarantees
//! - **Durable before acknowledged.** Every connection runs `journal_mode=WAL` and
//!   `synchronous=FULL`, checked on the live connection at open ([`Store::open`] fails
//!   otherwise). The writer answers a source only after its transaction committed.
//! - **Group commit.** One writer task ([`writer::run`]) takes every queued request, up to
//!   `commit_max_rows` readings, into one transaction; when the queue is nearly empty it waits
//!   at most `commit_linger_ms` for company.
//! - **Delete after acknowledged.** Rows leave `readings` only through [`Store::ack`] (the
//!   destination acknowledged them) or [`Store::dead_letter`] (moved, with a reason, in the
//!   same transaction).
//! - **Leases are memory only.** [`Store::lease`] hands rows to the uplink without writing;
//!   after a crash every undelivered row is simply there again.
//! - **Bounded.** At `capacity` pending readings new commits are refused with
//!   [`CommitError::Full`]; nothing stored is ever deleted to make room.
//! - **One writer.** A second process on the same data directory fails at open with
//!   [`BufferError::Locked`].

pub mod codec;
pub mod salvage;
pub mod writer;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use time::OffsetDateTime;
use tokio::sync::{watch, Mutex};

use crate::model::Reading;
pub use crate::pipeline::CommitError;

/// Errors of the buffer layer.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// Another process holds the data directory.
    #[error(
        "another vitalbridge is already running on data directory {0} (lock held on {0}/vitalbridge.lock); \
         stop it first, or give this one its own data_dir"
    )]
    Locked(PathBuf),
    /// The data directory or lock file could not be used.
    #[error("cannot use data directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// SQLite refused.
    #[error("buffer database error: {0}")]
    Sql(#[from] sqlx::Error),
    /// A migration failed.
    #[error("buffer migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The live connection does not have the durability settings we require.
    #[error("buffer database is not durable: {0}")]
    NotDurable(String),
}

/// A leased row: its id, identifier and the decoded reading (or why it cannot be decoded).
#[derive(Debug)]
pub struct Leased {
    /// Row id, for ack / dead-letter / release.
    pub id: i64,
    /// The reading's identifier.
    pub identifier: String,
    /// The reading, or a codec error (a row that must be dead-lettered).
    pub reading: Result<Reading, codec::CodecError>,
}

/// A dead-letter row, for the CLI.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Row id.
    pub id: i64,
    /// When, Unix ms.
    pub created_ms: i64,
    /// `payload` or `reading`.
    pub kind: String,
    /// Who gave up on it.
    pub origin: String,
    /// Why.
    pub reason: String,
    /// The reading identifier, for `reading` rows.
    pub identifier: Option<String>,
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

struct LeaseState {
    /// Highest row id handed out (or skipped); rows above it have not been seen.
    cursor: i64,
    /// Row ids handed out and not yet acked, dead-lettered or released.
    leased: HashSet<i64>,
}

struct Inner {
    dir: PathBuf,
    writer: SqlitePool,
    reader: SqlitePool,
    capacity: u64,
    pending: AtomicU64,
    lease: Mutex<LeaseState>,
    /// Bumped after every commit that stored readings; the uplink waits on it when idle.
    committed: watch::Sender<u64>,
    /// Held for the life of the store: the one-writer lock.
    _lock: Option<File>,
}

/// The buffer. Cheap to clone.
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

fn options(path: &Path, read_only: bool) -> SqliteConnectOptions {
    SqliteConnectOptions::from_str("sqlite://")
        .unwrap_or_default()
        .filename(path)
        .create_if_missing(!read_only)
        .read_only(read_only)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        // 1 MiB page cache per connection: the queue is read in id order from the WAL's
        // recent pages, so a larger cache buys little and costs a small hub's memory.
        .pragma("cache_size", "-1024")
}

impl Store {
    /// Opens (creating if needed) the buffer in `dir` for writing, taking the one-writer lock.
    pub async fn open(dir: &Path, capacity: u64) -> Result<Self, BufferError> {
        std::fs::create_dir_all(dir).map_err(|source| BufferError::Dir {
            path: dir.into(),
            source,
        })?;
        let lock_path = dir.join("vitalbridge.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| BufferError::Dir {
                path: dir.into(),
                source,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(BufferError::Locked(dir.into())),
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(BufferError::Dir {
                    path: dir.into(),
                    source,
                })
            }
        }
        let db = dir.join("buffer.db");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options(&db, false))
            .await?;
        sqlx::migrate!("./migrations").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options(&db, false))
            .await?;
        verify_durable(&writer).await?;
        verify_durable(&reader).await?;
        let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM readings")
            .fetch_one(&reader)
            .await?;
        let (committed, _) = watch::channel(0);
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.into(),
                writer,
                reader,
                capacity,
                pending: AtomicU64::new(pending as u64),
                lease: Mutex::new(LeaseState {
                    cursor: 0,
                    leased: HashSet::new(),
                }),
                committed,
                _lock: Some(lock),
            }),
        })
    }

    /// Opens an existing buffer for reading only (the `queue` CLI while the gateway runs).
    pub async fn open_read_only(dir: &Path) -> Result<Self, BufferError> {
        let db = dir.join("buffer.db");
        if !db.exists() {
            return Err(BufferError::Dir {
                path: dir.into(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no buffer.db here"),
            });
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options(&db, true))
            .await?;
        let (committed, _) = watch::channel(0);
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.into(),
                writer: pool.clone(),
                reader: pool,
                capacity: 0,
                pending: AtomicU64::new(0),
                lease: Mutex::new(LeaseState {
                    cursor: 0,
                    leased: HashSet::new(),
                }),
                committed,
                _lock: None,
            }),
        })
    }

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

    /// A receiver that changes after every commit that stored readings.
    pub fn subscribe_commits(&self) -> watch::Receiver<u64> {
        self.inner.committed.subscribe()
    }

    /// Leases up to `max` undelivered readings, oldest first, that no one else holds.
    pub async fn lease(&self, max: usize) -> Result<Vec<Leased>, BufferError> {
        let mut state = self.inner.lease.lock().await;
        let mut out = Vec::with_capacity(max);
        loop {
            let want = max - out.len();
            let rows = sqlx::query(
                "SELECT id, identifier, body FROM readings WHERE id > ? ORDER BY id LIMIT ?",
            )
            .bind(state.cursor)
            .bind(want as i64)
            .fetch_all(&self.inner.reader)
            .await?;
            let exhausted = rows.len() < want;
            for row in rows {
                let id: i64 = row.get(0);
                state.cursor = state.cursor.max(id);
                if state.leased.insert(id) {
                    let body: Vec<u8> = row.get(2);
                    out.push(Leased {
                        id,
                        identifier: row.get(1),
                        reading: codec::decode(&body),
                    });
                }
            }
            if exhausted || out.len() >= max {
                return Ok(out);
            }
        }
    }

    /// Gives leased rows back without delivering them (they will be leased again).
    pub async fn release(&self, ids: &[i64]) {
        let mut state = self.inner.lease.lock().await;
        for id in ids {
            if state.leased.remove(id) {
                state.cursor = state.cursor.min(id - 1);
            }
        }
    }

    /// Deletes rows the destination acknowledged. Returns how many were deleted.
    pub async fn ack(&self, ids: &[i64]) -> Result<u64, BufferError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let deleted =
            sqlx::query("DELETE FROM readings WHERE id IN (SELECT value FROM json_each(?))")
                .bind(id_list(ids))
                .execute(&self.inner.writer)
                .await?
                .rows_affected();
        self.inner
            .pending
            .fetch_sub(deleted.min(self.pending()), Ordering::Relaxed);
        let mut state = self.inner.lease.lock().await;
        for id in ids {
            state.leased.remove(id);
        }
        Ok(deleted)
    }

    /// Moves rows to the dead-letter table with their reasons, in one transaction.
    pub async fn dead_letter(
        &self,
        origin: &str,
        rows: &[(i64, String)],
    ) -> Result<(), BufferError> {
        if rows.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        // One statement shape for any number of rows: `[[id, reason], …]` as a JSON parameter.
        let list = serde_json::Value::Array(
            rows.iter()
                .map(|(id, reason)| serde_json::json!([id, reason]))
                .collect(),
        )
        .to_string();
        let mut tx = self.inner.writer.begin().await?;
        sqlx::query(
            "INSERT INTO dead_letters (created_ms, kind, origin, reason, identifier, body) \
             SELECT ?, 'reading', ?, j.value->>1, r.identifier, r.body \
             FROM json_each(?) AS j JOIN readings AS r ON r.id = j.value->>0",
        )
        .bind(now)
        .bind(origin)
        .bind(&list)
        .execute(&mut *tx)
        .await?;
        let moved =
            sqlx::query("DELETE FROM readings WHERE id IN (SELECT value->>0 FROM json_each(?))")
                .bind(&list)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        tx.commit().await?;
        self.inner
            .pending
            .fetch_sub(moved.min(self.pending()), Ordering::Relaxed);
        let mut state = self.inner.lease.lock().await;
        for (id, _) in rows {
            state.leased.remove(id);
        }
        Ok(())
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
        let leased = self.inner.lease.lock().await.leased.len() as u64;
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
        let leased = self.inner.lease.lock().await.leased.len() as u64;
        Ok(QueueStats {
            pending: self.pending(),
            leased,
            dead_letters: dead as u64,
            oldest_age_ms: head.map(|t| (now_ms() - t).max(0)),
        })
    }

    /// Dead letters, newest first, at most `limit`.
    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, BufferError> {
        let rows = sqlx::query(
            "SELECT id, created_ms, kind, origin, reason, identifier FROM dead_letters ORDER BY id DESC LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.inner.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| DeadLetter {
                id: r.get(0),
                created_ms: r.get(1),
                kind: r.get(2),
                origin: r.get(3),
                reason: r.get(4),
                identifier: r.get(5),
            })
            .collect())
    }

    /// Moves `reading` dead letters back into the queue (after the cause was fixed).
    /// Undecodable `payload` rows stay: there is no reading to retry. Returns how many moved.
    pub async fn retry_dead_letters(&self) -> Result<u64, BufferError> {
        let now = now_ms();
        let mut tx = self.inner.writer.begin().await?;
        let moved = sqlx::query(
            "INSERT OR IGNORE INTO readings (identifier, device_key, received_ms, body) \
             SELECT identifier, '', ?, body FROM dead_letters WHERE kind = 'reading' AND identifier IS NOT NULL",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM dead_letters WHERE kind = 'reading' AND identifier IS NOT NULL")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.inner.pending.fetch_add(moved, Ordering::Relaxed);
        self.inner.committed.send_modify(|n| *n += 1);
        Ok(moved)
    }

    /// The `(journal_mode, synchronous)` of the live writer connection, for tests and
    /// diagnostics. `synchronous` 2 is FULL.
    pub async fn durability(&self) -> Result<(String, i64), BufferError> {
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&self.inner.writer)
            .await?;
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&self.inner.writer)
            .await?;
        Ok((mode, sync))
    }

    /// Closes the pools (checkpointing the WAL).
    pub async fn close(&self) {
        self.inner.reader.close().await;
        self.inner.writer.close().await;
    }
}

async fn verify_durable(pool: &SqlitePool) -> Result<(), BufferError> {
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(pool)
        .await?;
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(pool)
        .await?;
    if !mode.eq_ignore_ascii_case("wal") || sync != 2 {
        return Err(BufferError::NotDurable(format!(
            "journal_mode={mode}, synchronous={sync} (need wal, 2=FULL)"
        )));
    }
    Ok(())
}
