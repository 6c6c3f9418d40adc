//! What the buffer remembers of delivered readings, so that one sent again is not stored
//! and delivered a second time.
//!
//! # The invariant
//! A reading acknowledged by every destination within the last [`DELIVERED_MEMORY`] (and
//! among the last `buffer.capacity` of them) is not stored again when a sender resends it
//! (an HL7 sender after a lost ACK, a broker redelivering, a device replaying its queue) —
//! across a schema upgrade and a key rotation too.
//!
//! # The tables
//! - `delivered`: the reading key (`rows.rs`) of each reading deleted after delivery, with
//!   when. The writer checks it before storing a reading (`writer.rs`, its `INSERT`), and
//!   forgets by age and beyond the capacity in its housekeeping ([`forget`]).
//! - `delivered_v5`: the memory as schema 5 kept it (migration 0006): 16-byte hashes without
//!   the time, made with the same key; checked against a key's last 16 bytes until it ages
//!   out, then dropped.
//! - `delivered_rotated`: the memory as it was at the last key rotation ([`set_aside`]). Its
//!   keys were made with the **old** buffer key and cannot be made again without the
//!   readings (they are hashes), so the writer makes each new reading's key with the old
//!   key too and checks it here, as long as `buffer.previous_key_files` holds that key (its
//!   id is in `meta` as `rotated_key_id`); it ages out like the others, then is dropped.
//!
//! # Limits
//! - A start without the old key among `buffer.previous_key_files` cannot consult
//!   `delivered_rotated`: it is forgotten, with a warning (a resend of a reading delivered
//!   before the rotation may then be delivered again).
//! - A second rotation within a day forgets what the first set aside (it was made with a
//!   key two rotations old), with a warning.

use std::path::PathBuf;
use std::sync::Arc;

use sqlx::sqlite::SqliteConnection;

use super::now_ms;
use super::rows::{self, READING_KEY_LEN};
use super::seal::BufferKey;
use crate::model::Reading;

/// How long the hash of a delivered reading is remembered, so that the same reading sent
/// again (an HL7 sender resending after a lost ACK, a broker redelivering) is not stored and
/// delivered a second time. Senders resend within minutes; a day also covers a sender that
/// replays its queue after an outage of the gateway. At 30 readings a second (a ward of
/// monitors) it costs about 2.6 million rows of 30 bytes; at most `buffer.capacity` are kept
/// (the oldest are forgotten first), so a faster gateway remembers less than a day.
pub const DELIVERED_MEMORY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The memory of schema 5.
const SCHEMA_5: &str = "delivered_v5";
/// The memory set aside at the last key rotation.
const ROTATED: &str = "delivered_rotated";
/// Where the id of the key `delivered_rotated` was made with is kept (`meta`).
const ROTATED_KEY_ID: &str = "rotated_key_id";

/// A memory of delivered readings kept besides `delivered`, in another form.
#[derive(Clone)]
pub(super) enum Older {
    None,
    /// `delivered_v5`.
    Schema5,
    /// `delivered_rotated`, and the key its rows were made with.
    Rotated(Arc<BufferKey>),
}

/// What the writer's `INSERT` adds to its `WHERE` to check an older memory too, and whether
/// each row binds a fifth value (its key made with the old key, [`Older::old_key`]); one per
/// [`Older::shape`].
pub(super) const INSERT_FILTERS: [(&str, bool); 3] = [
    ("", false),
    (
        " AND substr(column1, 7) NOT IN (SELECT dedup FROM delivered_v5)",
        false,
    ),
    // The rows set aside hold 22-byte keys, and 16-byte hashes where the memory of schema 5
    // was still there at the rotation.
    (
        " AND column5 NOT IN (SELECT dedup FROM delivered_rotated) \
         AND substr(column5, 7) NOT IN (SELECT dedup FROM delivered_rotated)",
        true,
    ),
];

impl Older {
    /// This memory's index in [`INSERT_FILTERS`].
    pub(super) fn shape(&self) -> usize {
        match self {
            Older::None => 0,
            Older::Schema5 => 1,
            Older::Rotated(_) => 2,
        }
    }

    /// `r`'s key made with the key before the last rotation, for [`INSERT_FILTERS`].
    pub(super) fn old_key(&self, r: &Reading) -> Option<[u8; READING_KEY_LEN]> {
        match self {
            Older::Rotated(old) => Some(rows::reading_key(old, r)),
            _ => None,
        }
    }
}

/// At a key rotation (inside its transaction): moves the memory of delivered readings,
/// made with `old`, to `delivered_rotated` (and what the memory of schema 5 still holds),
/// leaving `delivered` empty for keys made with the new key (an empty memory set aside is
/// dropped at open). Returns how many rows set aside at an earlier rotation were forgotten
/// (see the module's limits).
pub(super) async fn set_aside(
    conn: &mut SqliteConnection,
    old: &BufferKey,
) -> Result<u64, sqlx::Error> {
    let mut forgotten = 0;
    if exists(conn, ROTATED).await? {
        forgotten = count(conn, ROTATED).await?;
        sqlx::query("DROP TABLE delivered_rotated")
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(
        "CREATE TABLE delivered_rotated (dedup BLOB PRIMARY KEY, at_ms INTEGER NOT NULL) \
         WITHOUT ROWID",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query("CREATE INDEX delivered_rotated_at_ms ON delivered_rotated (at_ms)")
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO delivered_rotated SELECT dedup, at_ms FROM delivered")
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM delivered")
        .execute(&mut *conn)
        .await?;
    if exists(conn, SCHEMA_5).await? {
        sqlx::query(
            "INSERT OR IGNORE INTO delivered_rotated SELECT dedup, at_ms FROM delivered_v5",
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query("DROP TABLE delivered_v5")
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)")
        .bind(ROTATED_KEY_ID)
        .bind(old.id().to_string())
        .execute(&mut *conn)
        .await?;
    Ok(forgotten)
}

/// At open (after any rotation): which older memory the writer is to consult. The memory
/// set aside at a rotation needs its key among `previous_key_files`; without it, it is
/// forgotten and `warnings` says so. Empty memories are dropped.
pub(super) async fn older_at_open(
    conn: &mut SqliteConnection,
    previous_key_files: &[PathBuf],
    warnings: &mut Vec<String>,
) -> Result<Older, sqlx::Error> {
    if left(conn, ROTATED).await? {
        let id: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE name = ?")
            .bind(ROTATED_KEY_ID)
            .fetch_optional(&mut *conn)
            .await?;
        let mut unreadable = Vec::new();
        for path in previous_key_files {
            match BufferKey::load(path) {
                Ok(key) if id.as_deref() == Some(key.id().to_string().as_str()) => {
                    return Ok(Older::Rotated(Arc::new(key)))
                }
                Ok(_) => {}
                Err(e) => unreadable.push(format!("{e}")),
            }
        }
        let n = count(conn, ROTATED).await?;
        let mut warning = format!(
            "the buffer remembers {n} readings delivered in the day before its key was \
             rotated, made with the previous key (key id {}), which is not in \
             buffer.previous_key_files: forgotten now, so a device or broker that sends one \
             of them again has it stored and delivered again. Keep the previous key listed \
             for a day after a rotation",
            id.as_deref().unwrap_or("unknown"),
        );
        for e in unreadable {
            warning.push_str(&format!(" ({e})"));
        }
        warnings.push(warning);
        drop_rotated(conn).await;
        return Ok(Older::None);
    }
    Ok(if left(conn, SCHEMA_5).await? {
        Older::Schema5
    } else {
        Older::None
    })
}

/// Forgets the delivered readings older than [`DELIVERED_MEMORY`], and the oldest beyond
/// `capacity` of them, so the memory's size is bounded at any rate. Run by the writer's
/// housekeeping (every `RECORD_INTERVAL`), not with every commit: a statement less per
/// commit, and old rows leave the memory's index in large batches. An older memory is
/// forgotten by age, and dropped once empty.
pub(super) async fn forget(
    conn: &mut SqliteConnection,
    capacity: u64,
    older: &mut Older,
) -> Result<(), sqlx::Error> {
    let oldest = now_ms() - DELIVERED_MEMORY.as_millis() as i64;
    sqlx::query("DELETE FROM delivered WHERE at_ms < ?")
        .bind(oldest)
        .execute(&mut *conn)
        .await?;
    let table = match older {
        Older::None => None,
        Older::Schema5 => Some(SCHEMA_5),
        Older::Rotated(_) => Some(ROTATED),
    };
    if let Some(table) = table {
        sqlx::query(&format!("DELETE FROM {table} WHERE at_ms < ?"))
            .bind(oldest)
            .execute(&mut *conn)
            .await?;
        if !left(conn, table).await? {
            *older = Older::None;
        }
    }
    sqlx::query(
        "DELETE FROM delivered WHERE at_ms <= \
         (SELECT at_ms FROM delivered ORDER BY at_ms DESC LIMIT 1 OFFSET ?)",
    )
    .bind(i64::try_from(capacity).unwrap_or(i64::MAX))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Whether the older memory `table` is still there and remembers something; dropped here
/// once empty (a drop that fails, on a full disk, leaves it for another time).
async fn left(conn: &mut SqliteConnection, table: &'static str) -> Result<bool, sqlx::Error> {
    if !exists(conn, table).await? {
        return Ok(false);
    }
    let remembers: bool = sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {table})"))
        .fetch_one(&mut *conn)
        .await?;
    if remembers {
        return Ok(true);
    }
    if table == ROTATED {
        return Ok(!drop_rotated(conn).await);
    }
    Ok(sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&mut *conn)
        .await
        .is_err())
}

/// Drops `delivered_rotated` and its key's id; whether it is gone.
async fn drop_rotated(conn: &mut SqliteConnection) -> bool {
    let dropped = sqlx::query("DROP TABLE delivered_rotated")
        .execute(&mut *conn)
        .await
        .is_ok();
    if dropped {
        let _ = sqlx::query("DELETE FROM meta WHERE name = ?")
            .bind(ROTATED_KEY_ID)
            .execute(&mut *conn)
            .await;
    }
    dropped
}

async fn exists(conn: &mut SqliteConnection, table: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?)",
    )
    .bind(table)
    .fetch_one(&mut *conn)
    .await
}

async fn count(conn: &mut SqliteConnection, table: &str) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&mut *conn)
        .await?;
    Ok(n as u64)
}
