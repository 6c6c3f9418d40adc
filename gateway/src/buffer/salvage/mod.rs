//! Salvage: every readable reading of a damaged (quarantined) buffer, back into the queue.
//!
//! SQLite refuses a damaged database, so [`scan`] reads its file format directly, page by
//! page, database and WAL. Of the rows it finds, a **reading** is a record shaped like a row
//! of the `readings` table:
//! - schema 2 and later: `[id, dedup (blob: the 16-byte hash, or from schema 6 the 22-byte
//!   key of `buffer/rows.rs`), received_ms, body (blob)]` (schema 3 adds `todo`, the
//!   destinations that still needed it; a salvaged reading is owed to every destination
//!   configured now), whose sealed body
//!   opens with the buffer's key (or one given with `--key`) and whose reading hashes to the
//!   row's `dedup`. The AEAD seal is what makes a salvaged reading trustworthy: SQLite pages
//!   carry no checksum, and a damaged cell whose sizes still add up comes back with wrong
//!   bytes, which then do not open;
//! - schema 1 (before encryption at rest): `[id, identifier, device_key, received_ms, body]`
//!   whose body decodes and whose identifier matches;
//! - schema 5's `unbound` rows, `[id, dedup, device_key, device_user, received_ms, body]`,
//!   opened like the others: a reading without a patient goes back to being held, never into
//!   the delivery queue.
//!
//! Each reading is taken once (the scanner may find several versions of a row: in the
//! database, in WAL frames, on freed pages) and inserted with `INSERT OR IGNORE`, so a
//! reading already in the live buffer is not doubled, and salvaging twice is harmless.
//! A reading that was delivered before the damage may come back from a freed page and be
//! sent again: the conditional create at the destination makes that harmless too.
//! Dead letters are not salvaged (they wait for a person anyway; the quarantined file keeps
//! them).
//!
//! Memory stays bounded: the scan runs on a blocking thread and hands readings to the
//! inserter through a bounded channel; only the 16-byte hashes of readings seen are kept.

pub mod scan;

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::rows;
use super::seal::{BufferKey, DEDUP_LEN};
use super::{codec, BufferError, Writer};
use crate::model::Reading;
use scan::{FoundRecord, ScanReport, SqlValue};

/// Readings inserted per transaction.
const INSERT_BATCH: usize = 500;

/// Why salvage could not run.
#[derive(Debug, thiserror::Error)]
pub enum SalvageError {
    /// The path holds no database file.
    #[error("no buffer database at {}: give the quarantine folder or its buffer.db", .0.display())]
    NotFound(PathBuf),
    /// The file could not be read.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The live buffer refused the readings.
    #[error(transparent)]
    Buffer(#[from] BufferError),
}

/// What a salvage found and did.
#[derive(Debug, Clone, PartialEq)]
pub struct SalvageReport {
    /// The database file read.
    pub database: PathBuf,
    /// Its WAL, if there was one.
    pub wal: Option<PathBuf>,
    /// Distinct readings recovered.
    pub found: u64,
    /// Of them, put in the queue (the others were there already).
    pub queued: u64,
    /// Records shaped like readings that did not open or decode (damaged, or sealed with
    /// a key that was not given).
    pub unreadable: u64,
    /// What the scanner saw.
    pub scan: ScanReport,
}

/// The database file of `path`: `path` itself, or `buffer.db` in it when it is a folder.
fn database_of(path: &Path) -> Result<PathBuf, SalvageError> {
    let db = if path.is_dir() {
        path.join(super::open::DB_FILE)
    } else {
        path.to_path_buf()
    };
    if db.is_file() {
        Ok(db)
    } else {
        Err(SalvageError::NotFound(path.into()))
    }
}

/// A record shaped like a `readings` row, turned into a reading if it is authentic.
enum Candidate {
    Reading(Box<Reading>, [u8; DEDUP_LEN]),
    Unreadable,
    Other,
}

fn candidate(record: &FoundRecord, keys: &[Arc<BufferKey>], live: &BufferKey) -> Candidate {
    match record.values.as_slice() {
        [SqlValue::Null, SqlValue::Blob(dedup), SqlValue::Integer(_), SqlValue::Blob(body)]
        | [SqlValue::Null, SqlValue::Blob(dedup), SqlValue::Integer(_), SqlValue::Blob(body), SqlValue::Integer(_)]
        // An `unbound` row (schema 5): held for want of a patient, and held again.
        | [SqlValue::Null, SqlValue::Blob(dedup), SqlValue::Text(_), SqlValue::Integer(_) | SqlValue::Null, SqlValue::Integer(_), SqlValue::Blob(body)]
            if dedup.len() == rows::READING_KEY_LEN || dedup.len() == DEDUP_LEN =>
        {
            for key in keys {
                if let Ok(reading) = rows::open_reading(key, dedup, body) {
                    let hash = rows::reading_dedup(live, &reading.identifier());
                    return Candidate::Reading(Box::new(reading), hash);
                }
            }
            Candidate::Unreadable
        }
        [SqlValue::Null, SqlValue::Text(identifier), SqlValue::Text(_), SqlValue::Integer(_), SqlValue::Blob(body)] =>
        {
            match codec::decode(body) {
                Ok(reading) if reading.identifier().as_bytes() == identifier.as_slice() => {
                    let hash = rows::reading_dedup(live, &reading.identifier());
                    Candidate::Reading(Box::new(reading), hash)
                }
                // A schema-1 `dead_letters` or `sqlite_schema` row has this shape too.
                _ => Candidate::Other,
            }
        }
        _ => Candidate::Other,
    }
}

/// Recovers every readable reading from the damaged database at `path` (a quarantine folder
/// or a `buffer.db`, with its `-wal` beside it if there is one) into the buffer `writer`
/// writes. `extra_keys` are tried after the buffer's own key (a key in use before a rotation).
pub async fn salvage(
    writer: &mut Writer,
    path: &Path,
    extra_keys: Vec<BufferKey>,
) -> Result<SalvageReport, SalvageError> {
    salvage_with_progress(writer, path, extra_keys, &mut |_| {}).await
}

/// [`salvage`], calling `progress` with the number of readings found so far after each
/// group it queues (a large quarantined buffer takes a while).
pub async fn salvage_with_progress(
    writer: &mut Writer,
    path: &Path,
    extra_keys: Vec<BufferKey>,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<SalvageReport, SalvageError> {
    let database = database_of(path)?;
    let wal_path = PathBuf::from(format!("{}-wal", database.display()));
    let wal = wal_path.is_file().then_some(wal_path);
    let live = writer.store().inner.key.clone();
    let mut keys = vec![live.clone()];
    keys.extend(extra_keys.into_iter().map(Arc::new));

    let (tx, mut rx) = mpsc::channel::<Result<(Box<Reading>, [u8; DEDUP_LEN]), ()>>(INSERT_BATCH);
    let (db_path, wal_for_scan) = (database.clone(), wal.clone());
    let scanner = tokio::task::spawn_blocking(move || -> Result<ScanReport, SalvageError> {
        let open = |p: &Path| {
            File::open(p).map_err(|source| SalvageError::Read {
                path: p.into(),
                source,
            })
        };
        let mut db = open(&db_path)?;
        let mut wal_file = wal_for_scan.as_deref().map(open).transpose()?;
        scan::scan(&mut db, wal_file.as_mut(), |record| {
            let sent = match candidate(&record, &keys, &live) {
                Candidate::Reading(r, hash) => tx.blocking_send(Ok((r, hash))),
                Candidate::Unreadable => tx.blocking_send(Err(())),
                Candidate::Other => Ok(()),
            };
            // The receiver only goes away on an error it already reports.
            let _ = sent;
        })
        .map_err(|source| SalvageError::Read {
            path: db_path.clone(),
            source,
        })
    });

    let mut seen: HashSet<[u8; DEDUP_LEN]> = HashSet::new();
    let (mut found, mut queued, mut unreadable) = (0u64, 0u64, 0u64);
    let mut batch: Vec<Reading> = Vec::with_capacity(INSERT_BATCH);
    while let Some(item) = rx.recv().await {
        match item {
            Ok((reading, hash)) => {
                if seen.insert(hash) {
                    found += 1;
                    batch.push(*reading);
                }
            }
            Err(()) => unreadable += 1,
        }
        if batch.len() >= INSERT_BATCH {
            queued += writer.insert_salvaged(&batch).await?;
            batch.clear();
            progress(found);
        }
    }
    if !batch.is_empty() {
        queued += writer.insert_salvaged(&batch).await?;
    }
    progress(found);
    let scan = scanner.await.map_err(|e| SalvageError::Read {
        path: database.clone(),
        source: std::io::Error::other(e),
    })??;
    Ok(SalvageReport {
        database,
        wal,
        found,
        queued,
        unreadable,
        scan,
    })
}
