//! Opening the buffer: check what is on disk, quarantine what is damaged, key, migrate.
//!
//! # Checks at open, in order
//! 1. **The file.** `buffer.db` must be empty of nothing: a 0-byte file, a file shorter than
//!    SQLite's 100-byte header or one without the `SQLite format 3` magic is damaged.
//! 2. **SQLite's own check.** The database must open and pass `PRAGMA quick_check`.
//! 3. **This directory's record** (`buffer.state`, JSON `{"db_id", "high_water"}`). A
//!    missing `buffer.db` where the record says there was one, a database with another
//!    `db_id` (replaced) or whose row ids went backwards (restored from an old copy) is
//!    reported loudly ([`OpenReport::warnings`]): readings committed since may be lost.
//!
//! A database that fails 1 or 2 is **quarantined**: `buffer.db` and its `-wal`/`-shm` are
//! moved to `quarantine/<UTC time>/` with a `README.txt` saying why and what to do, and the
//! gateway starts with a new, empty buffer. Nothing is deleted; `vitalbridge queue salvage
//! DIR` recovers every readable reading from it ([`super::salvage`]).
//!
//! # The key
//! `buffer.key_file` must exist, except at the very first start (no `buffer.db` yet), when
//! the gateway creates it (mode 0600) and says where. Its id must match the `key_id` the
//! database records; a different key stops the open before anything is read or deleted,
//! unless it is listed in `buffer.previous_key_files`, in which case every row is sealed
//! again under the new key in one transaction (key rotation).
//!
//! # Schema 1
//! A database written before encryption at rest (schema 1, plaintext) is sealed at its first
//! open: rows move into the sealed tables in one transaction, then the file is vacuumed and
//! its WAL truncated so no plaintext page survives.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqlitePoolOptions, SqliteRow};
use sqlx::{Connection, Row};
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch, Mutex};

use super::memory;
use super::rows::{self, Envelope};
use super::seal::{BufferKey, KeyError};
use super::{
    codec, space, BufferError, Destination, Health, Inner, Store, Writer, SETTLE_CHANNEL_CAPACITY,
};
use crate::error_chain::Chain;
use crate::fsmode;

/// The database file in the data directory.
pub const DB_FILE: &str = "buffer.db";
/// This directory's record of its buffer.
pub const STATE_FILE: &str = "buffer.state";
/// Where damaged databases are moved.
pub const QUARANTINE_DIR: &str = "quarantine";
/// SQLite's file magic.
const MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Rows sealed per statement batch during a schema-1 conversion or a key rotation.
const RESEAL_CHUNK: i64 = 500;

/// How to open the buffer.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Most readings held undelivered.
    pub capacity: u64,
    /// The key file (`buffer.key_file`).
    pub key_file: PathBuf,
    /// Older keys the buffer may still be sealed with (`buffer.previous_key_files`).
    pub previous_key_files: Vec<PathBuf>,
    /// The free-space floor in bytes (`buffer.min_free_mb`); `None`: the default ([`space`]).
    pub min_free_bytes: Option<u64>,
    /// The configured destinations (uplink names), at least one: every new reading is kept
    /// until each of them has it.
    pub destinations: Vec<String>,
}

/// A damaged database moved aside at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    /// The folder it was moved to.
    pub path: PathBuf,
    /// What was wrong.
    pub reason: String,
}

/// What happened at open that an operator must hear about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// A damaged database was moved aside and a new one started.
    pub quarantined: Option<Quarantine>,
    /// The key file was created (first start).
    pub key_created: Option<PathBuf>,
    /// Rows sealed again under a new key (key rotation).
    pub rotated: Option<u64>,
    /// Rows of a schema-1 (plaintext) database sealed.
    pub converted: Option<u64>,
    /// Things that look wrong but did not stop the open (replaced, emptied, older database).
    pub warnings: Vec<String>,
}

/// `buffer.state`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DirRecord {
    /// The `db_id` of the database this directory holds.
    pub db_id: String,
    /// The highest reading row id committed, as last recorded.
    pub high_water: i64,
}

impl DirRecord {
    fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join(STATE_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Replaces the record atomically and durably.
    pub(super) fn write(&self, dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string(self).map_err(std::io::Error::other)?;
        fsmode::replace_private_file(&dir.join(STATE_FILE), text.as_bytes())
    }
}

/// Tests make a database "full" at a given size (`PRAGMA max_page_count`): SQLite then
/// fails writes with `SQLITE_FULL` exactly as on a full disk, without needing one.
#[cfg(test)]
pub(super) static TEST_MAX_PAGES: StdMutex<Vec<(PathBuf, u64)>> = StdMutex::new(Vec::new());

/// The connection settings of every buffer connection.
pub(super) fn connect_options(path: &Path, read_only: bool) -> SqliteConnectOptions {
    pragmas(path)
        .into_iter()
        .fold(bare_options(path, read_only), |options, (name, value)| {
            options.pragma(name, value)
        })
}

/// The file, its flags and timeouts, without the pragmas: opening with these reads nothing of
/// the database (sqlx's own `foreign_keys = ON` sets a flag).
fn bare_options(path: &Path, read_only: bool) -> SqliteConnectOptions {
    SqliteConnectOptions::from_str("sqlite://")
        .unwrap_or_default()
        .filename(path)
        .create_if_missing(!read_only)
        .read_only(read_only)
        .busy_timeout(Duration::from_secs(10))
        // Rows a query may run ahead of its reader (sqlx's default is 50): a lease reads a
        // whole batch (500 by default) and collects it anyway; with room for it the SQLite
        // thread does not park and wake every 50 rows.
        .row_buffer_size(1024)
}

/// The pragmas of every buffer connection, in the order they run.
fn pragmas(path: &Path) -> Vec<(&'static str, String)> {
    let pragmas = vec![
        // 1 KiB pages for a new buffer (before `journal_mode`: a WAL database keeps the size
        // it was made with, so a buffer from before this keeps its 4 KiB pages and works as
        // before). A commit writes each page it changed to the WAL in full, and a small
        // commit changes a few bytes each of a dozen pages: 1 KiB pages write 58 % fewer bytes
        // to the disk per reading at 20 readings/s and about 45 % fewer at 1,000/s (an SD
        // card's wear), at the same CPU (docs/benchmark.md).
        ("page_size", "1024".to_owned()),
        ("journal_mode", "WAL".to_owned()),
        ("synchronous", "FULL".to_owned()),
        // 256 KiB page cache per connection: the queue is read in id order from the WAL's
        // recent pages, and reading keys begin with their time (schema 6), so what a commit
        // touches is a few neighbouring pages of each index; a larger cache bought nothing
        // measurable (1 MiB: the same CPU, 1.8 MiB more peak memory at a steady rate).
        ("cache_size", "-256".to_owned()),
        // Give the disk back after a checkpoint: the WAL is truncated to this size, so a
        // burst (or a disk-full episode) does not keep its peak size forever.
        ("journal_size_limit", "8388608".to_owned()),
        // Zero deleted content where it costs no extra I/O.
        ("secure_delete", "FAST".to_owned()),
    ];
    #[cfg(test)]
    let pragmas = {
        let mut pragmas = pragmas;
        if let Some((_, pages)) = super::lock(&TEST_MAX_PAGES).iter().find(|(p, _)| p == path) {
            pragmas.push(("max_page_count", pages.to_string()));
        }
        pragmas
    };
    #[cfg(not(test))]
    let _ = path;
    pragmas
}

/// Opens a connection and checks that it is durable (WAL, synchronous=FULL).
///
/// A connection that fails is closed before this returns (as every connection the checks
/// give up on is). A dropped one would close later, on its sqlx worker thread, and that close
/// checkpoints and unlinks `buffer.db-wal` *by name*: after a quarantine moved the damaged
/// files, that name may be the fresh database's WAL. sqlx's `connect_with` drops its
/// connection when one of the options' pragmas fails, and on a damaged database the first
/// pragma that reads the schema does (`malformed database schema`, seen in the tests: the
/// `-wal` was there when `connect_with` returned and gone 5 ms later). So the connection is
/// opened without the pragmas and they run here, on a connection this function owns.
pub(super) async fn connect(path: &Path) -> Result<SqliteConnection, BufferError> {
    let mut conn = SqliteConnection::connect_with(&bare_options(path, false)).await?;
    match durable(&mut conn, path).await {
        Ok(()) => Ok(conn),
        Err(e) => {
            let _ = conn.close().await;
            Err(e)
        }
    }
}

async fn durable(conn: &mut SqliteConnection, path: &Path) -> Result<(), BufferError> {
    for (name, value) in pragmas(path) {
        let sql = format!("PRAGMA {name} = {value}");
        sqlx::query(&sql)
            .persistent(false)
            .execute(&mut *conn)
            .await?;
    }
    verify_durable(conn).await
}

async fn verify_durable(conn: &mut SqliteConnection) -> Result<(), BufferError> {
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await?;
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&mut *conn)
        .await?;
    if !mode.eq_ignore_ascii_case("wal") || synchronous != 2 {
        return Err(BufferError::NotDurable { mode, synchronous });
    }
    Ok(())
}

/// What the file itself says, before SQLite reads it.
enum FileState {
    Missing,
    Damaged(String),
    Present,
}

fn file_state(db: &Path) -> Result<FileState, BufferError> {
    let mut file = match File::open(db) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileState::Missing),
        Err(source) => {
            return Err(BufferError::Dir {
                path: db.into(),
                source,
            })
        }
    };
    let len = file
        .metadata()
        .map_err(|source| BufferError::Dir {
            path: db.into(),
            source,
        })?
        .len();
    if len == 0 {
        return Ok(FileState::Damaged(
            "the database file is empty (0 bytes)".into(),
        ));
    }
    let mut header = [0u8; 16];
    use std::io::Read as _;
    if len < 100 || file.read_exact(&mut header).is_err() {
        return Ok(FileState::Damaged(format!(
            "the database file is truncated ({len} bytes, shorter than its header)"
        )));
    }
    if &header != MAGIC {
        return Ok(FileState::Damaged(
            "the database file does not start with the SQLite header".into(),
        ));
    }
    Ok(FileState::Present)
}

/// Moves `buffer.db` and its companions to `quarantine/<now>/` with a README.
fn quarantine(dir: &Path, reason: &str) -> Result<Quarantine, BufferError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BufferError::Dir { path, source }
    };
    let stamp = OffsetDateTime::now_utc();
    let name = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
        stamp.year(),
        u8::from(stamp.month()),
        stamp.day(),
        stamp.hour(),
        stamp.minute(),
        stamp.second(),
        stamp.millisecond()
    );
    let target = dir.join(QUARANTINE_DIR).join(name);
    fsmode::create_private_dir_all(&target).map_err(io(&target))?;
    for suffix in ["", "-wal", "-shm"] {
        let from = dir.join(format!("{DB_FILE}{suffix}"));
        match std::fs::rename(&from, target.join(format!("{DB_FILE}{suffix}"))) {
            Ok(()) => {}
            // None, or SQLite removed a companion meanwhile, as `make_private` allows too.
            // (A connection that failed on this database used to close later on its sqlx
            // thread and delete `-wal`: seen once in CI; `connect` now closes it first.)
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&from)(e)),
        }
    }
    let readme = format!(
        "This buffer database was moved here by the gateway at start because it could not be used:\n\
         \n    {reason}\n\n\
         The gateway started with a new, empty buffer. The readings in this copy are not lost:\n\
         stop the gateway, run\n\n    vitalbridge queue salvage -c <your config> {}\n\n\
         and start it again; every readable reading is put back in the queue and delivered\n\
         (a reading that was already delivered is recognised by its identifier, not duplicated).\n",
        target.display()
    );
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target.join("README.txt"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, readme.as_bytes()))
        .map_err(io(&target))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    tracing::error!(
        reason,
        moved_to = %target.display(),
        "the buffer database is damaged: moved to quarantine, starting with a new, empty buffer; \
         recover its readings with `vitalbridge queue salvage`"
    );
    Ok(Quarantine {
        path: target,
        reason: reason.to_owned(),
    })
}

/// Quarantine folders present in the data directory.
pub(super) fn quarantined_count(dir: &Path) -> u32 {
    std::fs::read_dir(dir.join(QUARANTINE_DIR))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().join("README.txt").exists())
                .count() as u32
        })
        .unwrap_or(0)
}

/// Whether an error means the database file is damaged (quarantine) rather than the
/// environment failing (report and stop).
fn is_damage(e: &BufferError) -> bool {
    match e {
        BufferError::Sql(sql) => {
            super::storage_failure(sql).kind == crate::pipeline::StorageKind::Corrupt
        }
        BufferError::Migrate(sqlx::migrate::MigrateError::Execute(sql)) => {
            super::storage_failure(sql).kind == crate::pipeline::StorageKind::Corrupt
        }
        _ => false,
    }
}

fn lock_dir(dir: &Path) -> Result<File, BufferError> {
    let io = |source| BufferError::Dir {
        path: dir.into(),
        source,
    };
    fsmode::create_private_dir_all(dir).map_err(io)?;
    let lock_path = dir.join("vitalbridge.lock");
    let lock = fsmode::private_file_options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io)?;
    fsmode::restrict(&lock, &lock_path).map_err(io)?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(BufferError::Locked(dir.into())),
        Err(std::fs::TryLockError::Error(source)) => Err(io(source)),
    }
}

/// Makes `buffer.db` and its companions owner-only before SQLite opens them: a new
/// `buffer.db` is created empty with mode 0600 (SQLite gives `-wal` and `-shm` the mode of
/// the main file), existing ones an older version left open are restricted.
fn make_private(db: &Path) -> Result<(), BufferError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BufferError::Dir { path, source }
    };
    fsmode::precreate_private_file(db).map_err(io(db))?;
    for suffix in ["-wal", "-shm"] {
        let companion = PathBuf::from(format!("{}{suffix}", db.display()));
        match fsmode::restrict_path(&companion) {
            Ok(_) => {}
            // None, or SQLite removed it meanwhile (a connection closing checkpoints it away).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&companion)(e)),
        }
    }
    Ok(())
}

/// Why [`open_checked`] failed.
enum Checked {
    /// The database is damaged: quarantine it.
    Damaged(String),
    /// Something else failed (permissions, a full disk at open…): report and stop.
    Failed(BufferError),
}

impl Checked {
    fn of(e: BufferError) -> Self {
        if is_damage(&e) {
            Checked::Damaged(Chain(&e).to_string())
        } else {
            Checked::Failed(e)
        }
    }
}

/// Opens the database, checks it (`quick_check`) and brings its schema up to date.
async fn open_checked(db: &Path) -> Result<SqliteConnection, Checked> {
    let mut conn = connect(db).await.map_err(Checked::of)?;
    match check_and_migrate(&mut conn, db).await {
        Ok(()) => Ok(conn),
        Err(e) => {
            // Closed here, not dropped: see `connect`.
            let _ = conn.close().await;
            Err(e)
        }
    }
}

/// The buffer's schema: every migration this gateway knows (`gateway/migrations`).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

async fn check_and_migrate(conn: &mut SqliteConnection, db: &Path) -> Result<(), Checked> {
    let check: Vec<String> = sqlx::query_scalar("PRAGMA quick_check")
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| Checked::of(e.into()))?;
    if check.first().map(String::as_str) != Some("ok") {
        let first = check.first().cloned().unwrap_or_default();
        return Err(Checked::Damaged(format!(
            "SQLite's integrity check failed ({} problems; the first: {first})",
            check.len()
        )));
    }
    MIGRATOR.run(&mut *conn).await.map_err(|e| match e {
        // Applied, but not one of ours: a newer gateway's (never damage: quarantining would
        // set its readings aside).
        sqlx::migrate::MigrateError::VersionMissing(found) => {
            Checked::Failed(BufferError::NewerSchema {
                path: db.into(),
                found,
                known: MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0),
            })
        }
        e => Checked::of(e.into()),
    })?;
    Ok(())
}

async fn meta(conn: &mut SqliteConnection, name: &str) -> Result<Option<String>, BufferError> {
    Ok(sqlx::query_scalar("SELECT value FROM meta WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?)
}

async fn set_meta(conn: &mut SqliteConnection, name: &str, value: &str) -> Result<(), BufferError> {
    sqlx::query("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value")
        .bind(name)
        .bind(value)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The buffer's key: the configured key file, checked against the `key_id` the database
/// records (rotating from a previous key if needed). The key file is created only for a
/// database that has never been sealed (new, or written before encryption at rest).
async fn key_for(
    conn: &mut SqliteConnection,
    dir: &Path,
    options: &OpenOptions,
    report: &mut OpenReport,
) -> Result<BufferKey, BufferError> {
    let expected = meta(conn, "key_id").await?;
    let key = match BufferKey::load(&options.key_file) {
        Ok(key) => key,
        Err(KeyError::Missing(path)) if expected.is_none() => {
            let key = BufferKey::create(&path)?;
            tracing::warn!(
                key_file = %path.display(),
                "created a new buffer key: buffered readings are sealed with it; keep it, and a \
                 copy somewhere safe: without it they cannot be read"
            );
            report.key_created = Some(path);
            key
        }
        Err(KeyError::Missing(path)) => {
            return Err(BufferError::KeyMissing {
                file: path,
                dir: dir.into(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    let given = key.id().to_string();
    let Some(expected) = expected else {
        set_meta(conn, "key_id", &given).await?;
        return Ok(key);
    };
    if expected == given {
        return Ok(key);
    }
    for path in &options.previous_key_files {
        let old = BufferKey::load(path)?;
        if old.id().to_string() == expected {
            let (n, forgotten) = reseal(conn, &old, &key).await?;
            if forgotten > 0 {
                report.warnings.push(format!(
                    "a second buffer key rotation within a day: the buffer's memory of {forgotten} \
                     readings delivered before the first one is forgotten, so a device or broker \
                     that sends one of them again has it stored and delivered again"
                ));
            }
            tracing::warn!(
                rows = n,
                "buffer key rotated: every buffered row is sealed with the new key"
            );
            report.rotated = Some(n);
            return Ok(key);
        }
    }
    Err(BufferError::WrongKey {
        file: options.key_file.clone(),
        expected,
        given,
    })
}

/// Begins an immediate transaction with a plain statement (never sqlx's transaction
/// manager: see `writer.rs` for why).
pub(super) async fn begin(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .map(|_| ())
}

/// Commits; on error, rolls back (ignoring a second error) so no transaction stays open.
pub(super) async fn commit_or_rollback(
    conn: &mut SqliteConnection,
    result: Result<(), sqlx::Error>,
) -> Result<(), sqlx::Error> {
    let result = match result {
        Ok(()) => sqlx::query("COMMIT").execute(&mut *conn).await.map(|_| ()),
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
    }
    result
}

/// Removes freed pages (which may hold what was just replaced) and truncates the WAL.
async fn compact(conn: &mut SqliteConnection) -> Result<(), BufferError> {
    sqlx::query("VACUUM").execute(&mut *conn).await?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Seals every row again under `new` (it was sealed under `old`), and sets the memory of
/// delivered readings aside ([`memory::set_aside`]), in one transaction. Returns the rows
/// sealed again, and those of an earlier rotation's memory forgotten.
async fn reseal(
    conn: &mut SqliteConnection,
    old: &BufferKey,
    new: &BufferKey,
) -> Result<(u64, u64), BufferError> {
    begin(conn).await?;
    let result = reseal_rows(conn, old, new).await;
    let n = match result {
        Ok(n) => n,
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            return Err(e);
        }
    };
    let set_aside = match set_meta_sql(conn, "key_id", &new.id().to_string()).await {
        Ok(()) => memory::set_aside(conn, old).await,
        Err(e) => Err(e),
    };
    let forgotten = set_aside.as_ref().map_or(0, |n| *n);
    commit_or_rollback(conn, set_aside.map(|_| ())).await?;
    compact(conn).await?;
    Ok((n, forgotten))
}

async fn set_meta_sql(
    conn: &mut SqliteConnection,
    name: &str,
    value: &str,
) -> Result<(), sqlx::Error> {
    match set_meta(conn, name, value).await {
        Ok(()) => Ok(()),
        Err(BufferError::Sql(e)) => Err(e),
        Err(e) => Err(sqlx::Error::Protocol(e.to_string())),
    }
}

/// The next chunk of a keyset-paged scan, or `None` when no row is left: `select` takes the
/// last id seen and a limit (`… WHERE id > ? … ORDER BY id LIMIT ?`) and returns the row's id
/// first; `after` moves on to the chunk's last id. Paging by id, not by offset, keeps each
/// chunk's cost the same however far the scan has come.
async fn next_chunk(
    conn: &mut SqliteConnection,
    select: &str,
    after: &mut i64,
) -> Result<Option<Vec<SqliteRow>>, sqlx::Error> {
    let batch = sqlx::query(select)
        .bind(*after)
        .bind(RESEAL_CHUNK)
        .fetch_all(&mut *conn)
        .await?;
    let Some(last) = batch.last() else {
        return Ok(None);
    };
    *after = last.get(0);
    Ok(Some(batch))
}

async fn reseal_rows(
    conn: &mut SqliteConnection,
    old: &BufferKey,
    new: &BufferKey,
) -> Result<u64, BufferError> {
    let mut n = 0;
    for table in ["readings", "unbound"] {
        n += reseal_readings(conn, table, old, new, "", false).await?;
    }
    let mut after = 0i64;
    while let Some(batch) = next_chunk(
        conn,
        "SELECT id, kind, body FROM dead_letters WHERE id > ? ORDER BY id LIMIT ?",
        &mut after,
    )
    .await?
    {
        for row in &batch {
            let (id, kind, body): (i64, String, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
            let Ok(envelope) = Envelope::open(old, &body) else {
                continue;
            };
            let dedup = envelope_dedup(new, &kind, &envelope);
            sqlx::query("UPDATE OR IGNORE dead_letters SET dedup = ?, body = ? WHERE id = ?")
                .bind(&dedup[..])
                .bind(envelope.seal(new))
                .bind(id)
                .execute(&mut *conn)
                .await?;
            n += 1;
        }
    }
    Ok(n)
}

/// Seals the readings of `table` (`readings` or `unbound`: id, dedup, body) again under `new`,
/// with their reading key (`rows.rs`), a chunk at a time; `only` narrows the rows (an SQL
/// condition after `AND`, or empty). With `chunked`, each chunk is its own transaction (else
/// the caller's transaction holds them all). A row the old key cannot open stays as it is: it
/// is dead-lettered as undecodable when leased (or released), its bytes kept for a person to
/// look at.
async fn reseal_readings(
    conn: &mut SqliteConnection,
    table: &'static str,
    old: &BufferKey,
    new: &BufferKey,
    only: &'static str,
    chunked: bool,
) -> Result<u64, sqlx::Error> {
    let (select, update) = (
        format!("SELECT id, dedup, body FROM {table} WHERE id > ? {only} ORDER BY id LIMIT ?"),
        format!("UPDATE {table} SET dedup = ?, body = ? WHERE id = ?"),
    );
    let mut n = 0;
    let mut after = 0i64;
    while let Some(batch) = next_chunk(conn, &select, &mut after).await? {
        if chunked {
            begin(conn).await?;
        }
        let mut chunk = async {
            let mut n = 0;
            for row in &batch {
                let (id, dedup, body): (i64, Vec<u8>, Vec<u8>) =
                    (row.get(0), row.get(1), row.get(2));
                let Ok(reading) = rows::open_reading(old, &dedup, &body) else {
                    continue;
                };
                let sealed = rows::seal_reading(new, &reading);
                sqlx::query(&update)
                    .bind(&sealed.dedup[..])
                    .bind(&sealed.body)
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
                n += 1;
            }
            Ok::<_, sqlx::Error>(n)
        }
        .await;
        if chunked {
            match &chunk {
                Ok(_) => {
                    if let Err(e) = commit_or_rollback(conn, Ok(())).await {
                        chunk = Err(e);
                    }
                }
                Err(_) => {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                }
            }
        }
        n += chunk?;
    }
    Ok(n)
}

/// Gives the rows of `readings` and `unbound` written before schema 6 (the 16-byte hash as
/// their `dedup`) their reading key (`rows.rs`), a chunk per transaction, while migration
/// 0006's marker (`meta` `rekey`) says it is to be done; then removes the marker.
///
/// A failure to re-key (a full disk: each chunk rewrites its rows) is reported and the
/// gateway starts all the same, its buffer intact; the next start tries again. Until then a
/// reading still waiting under its old key that a sender sends again is stored twice.
async fn rekey_readings(conn: &mut SqliteConnection, key: &BufferKey) -> Result<(), BufferError> {
    if meta(conn, "rekey").await?.is_some() {
        let mut rekeyed = Ok(0);
        for table in ["readings", "unbound"] {
            if let Ok(n) = rekeyed {
                rekeyed = reseal_readings(conn, table, key, key, "AND length(dedup) = 16", true)
                    .await
                    .map(|m| n + m);
            }
        }
        let done = match rekeyed {
            Ok(n) => sqlx::query("DELETE FROM meta WHERE name = 'rekey'")
                .execute(&mut *conn)
                .await
                .map(|_| n),
            Err(e) => Err(e),
        };
        match done {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                rows = n,
                "buffered readings given their time-ordered key (buffer schema 6)"
            ),
            Err(e) => tracing::warn!(
                error = %Chain(&e),
                "cannot give every buffered reading its time-ordered key (buffer schema 6) \
                 now; the next start tries again"
            ),
        }
    }
    Ok(())
}

/// The dedup hash of a dead letter from its envelope.
pub(super) fn envelope_dedup(
    key: &BufferKey,
    kind: &str,
    e: &Envelope,
) -> [u8; super::seal::DEDUP_LEN] {
    match (kind, &e.identifier) {
        ("reading", Some(identifier)) => rows::reading_dedup(key, identifier),
        _ => rows::payload_dedup(
            key,
            &crate::pipeline::Rejected {
                origin: e.origin.clone(),
                reason: String::new(),
                payload: Vec::new(),
                size: e.size,
                sha256: e.sha256,
                refused: None,
            },
        ),
    }
}

/// The source name of an origin (`mqtt:topic/x` → `mqtt`; `uplink:fhir` stays whole).
pub(super) fn source_of(origin: &str) -> &str {
    match origin.split_once(':') {
        Some(("uplink", _)) | Some(("serial", _)) => origin,
        Some((source, _)) => source,
        None => origin,
    }
}

/// Seals the rows of a schema-1 (plaintext) database, if there are any; returns how many.
async fn convert_schema1(
    conn: &mut SqliteConnection,
    key: &BufferKey,
) -> Result<Option<u64>, BufferError> {
    let old: Option<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'readings_v1'",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if old.is_none() {
        return Ok(None);
    }
    begin(conn).await?;
    let result = convert_rows(conn, key).await;
    let n = match result {
        Ok(n) => n,
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            return Err(e);
        }
    };
    let drop = async {
        sqlx::query("DROP TABLE readings_v1")
            .execute(&mut *conn)
            .await?;
        sqlx::query("DROP TABLE dead_letters_v1")
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
    .await;
    commit_or_rollback(conn, drop).await?;
    compact(conn).await?;
    tracing::info!(
        rows = n,
        "buffer converted: every row written before encryption at rest is sealed now"
    );
    Ok(Some(n))
}

async fn convert_rows(conn: &mut SqliteConnection, key: &BufferKey) -> Result<u64, BufferError> {
    let mut n = 0;
    let mut after = 0i64;
    while let Some(batch) = next_chunk(
        conn,
        "SELECT id, identifier, received_ms, body FROM readings_v1 WHERE id > ? ORDER BY id LIMIT ?",
        &mut after,
    )
    .await?
    {
        for row in &batch {
            let (identifier, received, body): (String, i64, Vec<u8>) =
                (row.get(1), row.get(2), row.get(3));
            match codec::decode(&body) {
                Ok(reading) => {
                    let sealed = rows::seal_reading(key, &reading);
                    sqlx::query("INSERT OR IGNORE INTO readings (dedup, received_ms, body) VALUES (?, ?, ?)")
                        .bind(&sealed.dedup[..])
                        .bind(received)
                        .bind(&sealed.body)
                        .execute(&mut *conn)
                        .await?;
                }
                Err(e) => {
                    let envelope = Envelope::of_reading(
                        "buffer:schema1",
                        &e.to_string(),
                        Some(identifier),
                        body,
                    );
                    insert_dead_letter(conn, key, received, "reading", None, &envelope).await?;
                }
            }
            n += 1;
        }
    }
    let mut after = 0i64;
    while let Some(batch) = next_chunk(
        conn,
        "SELECT id, created_ms, kind, origin, reason, identifier, body FROM dead_letters_v1 WHERE id > ? ORDER BY id LIMIT ?",
        &mut after,
    )
    .await?
    {
        for row in &batch {
            let (created, kind, origin, reason): (i64, String, String, String) =
                (row.get(1), row.get(2), row.get(3), row.get(4));
            let identifier: Option<String> = row.get(5);
            let body: Vec<u8> = row.get(6);
            let envelope = if kind == "payload" {
                Envelope::of_payload(&crate::pipeline::Rejected::new(origin, reason, &body))
            } else {
                Envelope::of_reading(&origin, &reason, identifier, body)
            };
            insert_dead_letter(conn, key, created, &kind, None, &envelope).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// The configured destinations with their bits (see migration 0003): known ones keep theirs,
/// one taken out of the configuration is settled (the readings only it still needed are
/// dead-lettered for it, with a reason, and its bit is freed), new ones get the lowest free
/// bits. Readings of schema 2, owed to the one destination there was, carry bit 0, which goes
/// to the first configured destination.
async fn assign_destinations(
    conn: &mut SqliteConnection,
    key: &BufferKey,
    names: &[String],
    report: &mut OpenReport,
) -> Result<Vec<Destination>, BufferError> {
    let known: Vec<(i64, String)> =
        sqlx::query_as("SELECT bit, name FROM destinations ORDER BY bit")
            .fetch_all(&mut *conn)
            .await?;
    for (bit, name) in known.iter().filter(|(_, n)| !names.contains(n)) {
        let mask = 1i64 << bit;
        begin(conn).await?;
        let settled = settle_removed(conn, key, name, mask).await;
        let moved = match settled {
            Ok(n) => {
                commit_or_rollback(conn, Ok(())).await?;
                n
            }
            Err(e) => {
                let _ = commit_or_rollback(conn, Err(e)).await;
                return Err(BufferError::Sql(sqlx::Error::Protocol(format!(
                    "cannot settle the removed destination {name}"
                ))));
            }
        };
        report.warnings.push(format!(
            "destination {name} was taken out of the configuration: {moved} readings only it still \
             needed were dead-lettered for it (`vitalbridge queue retry-dead-letters --destination {name}` \
             puts them back if it returns)"
        ));
    }
    let mut out = Vec::new();
    for name in names {
        let bit = match known.iter().find(|(_, n)| n == name) {
            Some((bit, _)) => *bit as u8,
            None => {
                let taken: Vec<u8> = known
                    .iter()
                    .filter(|(_, n)| names.contains(n))
                    .map(|(b, _)| *b as u8)
                    .chain(out.iter().map(|d: &Destination| d.bit))
                    .collect();
                let bit = (0u8..63).find(|b| !taken.contains(b)).ok_or_else(|| {
                    BufferError::Sql(sqlx::Error::Protocol("more than 63 destinations".into()))
                })?;
                sqlx::query("INSERT INTO destinations (bit, name) VALUES (?, ?)")
                    .bind(i64::from(bit))
                    .bind(name)
                    .execute(&mut *conn)
                    .await?;
                bit
            }
        };
        out.push(Destination {
            name: name.as_str().into(),
            bit,
        });
    }
    Ok(out)
}

/// Dead-letters the readings only `mask`'s destination still needed, clears its bit from the
/// others, and forgets the destination. Returns how many were dead-lettered.
async fn settle_removed(
    conn: &mut SqliteConnection,
    key: &BufferKey,
    name: &str,
    mask: i64,
) -> Result<u64, sqlx::Error> {
    let origin = format!("uplink:{name}");
    let reason = format!("the destination {name} was taken out of the configuration");
    let only: Vec<(i64, Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT id, dedup, body FROM readings WHERE todo = ?")
            .bind(mask)
            .fetch_all(&mut *conn)
            .await?;
    let now = super::now_ms();
    for (_, dedup, body) in &only {
        let envelope = match rows::open_reading_bytes(key, dedup, body) {
            Ok(plain) => {
                let identifier = codec::decode(&plain).ok().map(|r| r.identifier());
                Envelope::of_reading(&origin, &reason, identifier, plain)
            }
            Err(_) => Envelope::of_reading(&origin, &reason, None, body.clone()),
        };
        insert_dead_letter(conn, key, now, "reading", Some(name), &envelope).await?;
    }
    sqlx::query("DELETE FROM readings WHERE todo = ?")
        .bind(mask)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE readings SET todo = todo & ? WHERE todo & ? != 0")
        .bind(!mask)
        .bind(mask)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM destinations WHERE name = ?")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    Ok(only.len() as u64)
}

/// Inserts a dead letter (a payload seen before only counts up).
pub(super) async fn insert_dead_letter(
    conn: &mut SqliteConnection,
    key: &BufferKey,
    created_ms: i64,
    kind: &str,
    destination: Option<&str>,
    envelope: &Envelope,
) -> Result<(), sqlx::Error> {
    let dedup = envelope_dedup(key, kind, envelope);
    sqlx::query(
        "INSERT INTO dead_letters (created_ms, kind, source, dedup, body, destination) VALUES (?, ?, ?, ?, ?, ?) \
         ON CONFLICT(dedup) WHERE kind = 'payload' DO UPDATE SET seen = seen + 1",
    )
    .bind(created_ms)
    .bind(kind)
    .bind(source_of(&envelope.origin))
    .bind(&dedup[..])
    .bind(envelope.seal(key))
    .bind(destination)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The highest reading id this database ever used.
pub(super) async fn high_water(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    let seq: Option<i64> =
        sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'readings'")
            .fetch_optional(&mut *conn)
            .await?;
    Ok(seq.unwrap_or(0))
}

/// Checks the database against this directory's record and updates the record.
async fn check_identity(
    conn: &mut SqliteConnection,
    dir: &Path,
    record: Option<DirRecord>,
    report: &mut OpenReport,
) -> Result<DirRecord, BufferError> {
    let db_id = match meta(conn, "db_id").await? {
        Some(id) => id,
        None => {
            let id = format!("{:032x}", rand::random::<u128>());
            set_meta(conn, "db_id", &id).await?;
            id
        }
    };
    let seq = high_water(conn).await?;
    if let Some(r) = &record {
        if r.db_id != db_id && report.quarantined.is_none() && report.warnings.is_empty() {
            report.warnings.push(format!(
                "the buffer database is not the one this data directory held (db_id {} instead of {}): \
                 it was replaced; readings that were waiting in the other one are not here",
                db_id, r.db_id
            ));
        } else if r.db_id == db_id && seq < r.high_water {
            report.warnings.push(format!(
                "the buffer database went back in time (its newest row is {seq}, this directory \
                 recorded {}): it was restored from an older copy; readings committed since may be lost",
                r.high_water
            ));
        }
    }
    let record = DirRecord {
        db_id,
        high_water: seq,
    };
    record.write(dir).map_err(|source| BufferError::Dir {
        path: dir.join(STATE_FILE),
        source,
    })?;
    Ok(record)
}

/// Opens an existing buffer for reading only (the `queue` commands while the gateway runs).
/// `key` opens dead letters' details; without it they show as sealed.
pub async fn open_read_only(dir: &Path, key: Option<BufferKey>) -> Result<Store, BufferError> {
    let db = dir.join(DB_FILE);
    match file_state(&db)? {
        FileState::Missing => return Err(BufferError::NoBuffer(dir.into())),
        FileState::Damaged(reason) => return Err(BufferError::Damaged { path: db, reason }),
        FileState::Present => {}
    }
    let reader = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(connect_options(&db, true))
        .await?;
    let (committed, _) = watch::channel(0);
    let key = key.unwrap_or_else(|| BufferKey::from_bytes(&rand::random()));
    // A buffer of schema 2 has no destinations table yet: nothing to list per destination.
    let destinations: Vec<Destination> =
        sqlx::query_as::<_, (i64, String)>("SELECT bit, name FROM destinations ORDER BY bit")
            .fetch_all(&reader)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|(bit, name)| Destination {
                name: name.into(),
                bit: bit as u8,
            })
            .collect();
    Ok(Store {
        inner: Arc::new(Inner {
            dir: dir.into(),
            reader,
            key: Arc::new(key),
            capacity: 0,
            pending: AtomicU64::new(0),
            // A read-only store answers from the table (`unbound_devices`), not this count.
            unbound: AtomicU64::new(0),
            all_destinations: destinations.iter().fold(0, |m, d| m | d.mask()),
            destinations,
            lease: Mutex::new(Default::default()),
            committed,
            health: StdMutex::new(Health {
                quarantined: quarantined_count(dir),
                ..Health::default()
            }),
            settle: None,
            _lock: None,
        }),
    })
}

/// Opens (creating if needed) the buffer in `dir` for writing, taking the one-writer lock.
/// Returns the read side, the writer (which the caller runs, see [`Writer::run`]) and what
/// an operator must hear about.
pub async fn open(
    dir: &Path,
    options: &OpenOptions,
) -> Result<(Store, Writer, OpenReport), BufferError> {
    let lock = lock_dir(dir)?;
    let db = dir.join(DB_FILE);
    let record = DirRecord::read(dir);
    let mut report = OpenReport::default();
    let mut retried = false;
    let mut conn = loop {
        match file_state(&db)? {
            FileState::Present => {}
            FileState::Missing => {
                if let Some(r) = record.as_ref().filter(|_| report.quarantined.is_none()) {
                    report.warnings.push(format!(
                        "{} is missing, but this data directory held a buffer (db_id {}): \
                         readings that were waiting in it are not here",
                        db.display(),
                        r.db_id
                    ));
                }
            }
            FileState::Damaged(reason) => {
                report.quarantined = Some(quarantine(dir, &reason)?);
            }
        }
        make_private(&db)?;
        match open_checked(&db).await {
            Ok(conn) => break conn,
            Err(Checked::Damaged(reason)) if !retried => {
                retried = true;
                report.quarantined = Some(quarantine(dir, &reason)?);
            }
            Err(Checked::Damaged(reason)) => return Err(BufferError::Damaged { path: db, reason }),
            Err(Checked::Failed(e)) => return Err(e),
        }
    };
    let key = Arc::new(key_for(&mut conn, dir, options, &mut report).await?);
    report.converted = convert_schema1(&mut conn, &key).await?;
    rekey_readings(&mut conn, &key).await?;
    let older =
        memory::older_at_open(&mut conn, &options.previous_key_files, &mut report.warnings).await?;
    let destinations =
        assign_destinations(&mut conn, &key, &options.destinations, &mut report).await?;
    let record = check_identity(&mut conn, dir, record, &mut report).await?;
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM readings")
        .fetch_one(&mut conn)
        .await?;
    let unbound = super::unbound::count(&mut conn).await?;
    let reader = SqlitePoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        // No ping before every acquire (a round trip to the connection's thread per lease):
        // a local file connection does not go stale, and a dead one fails the query itself.
        .test_before_acquire(false)
        .connect_with(connect_options(&db, false))
        .await?;
    let total = space::space(dir).map(|s| s.total).unwrap_or(0);
    let floor = space::floor(options.min_free_bytes, total);
    let (settle_tx, settle_rx) = mpsc::channel(SETTLE_CHANNEL_CAPACITY);
    let (committed, _) = watch::channel(0);
    let store = Store {
        inner: Arc::new(Inner {
            dir: dir.into(),
            reader,
            key,
            capacity: options.capacity,
            pending: AtomicU64::new(pending as u64),
            unbound: AtomicU64::new(unbound),
            all_destinations: destinations.iter().fold(0, |m, d| m | d.mask()),
            destinations,
            lease: Mutex::new(Default::default()),
            committed,
            health: StdMutex::new(Health {
                floor_bytes: floor,
                quarantined: quarantined_count(dir),
                ..Health::default()
            }),
            settle: Some(settle_tx),
            _lock: Some(lock),
        }),
    };
    let writer = Writer::new(store.clone(), db, conn, settle_rx, floor, record, older);
    Ok((store, writer, report))
}
