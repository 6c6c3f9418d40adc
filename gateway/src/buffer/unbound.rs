//! Readings that belong to no patient yet: the `unbound` table (migration 0005).
//!
//! # Why
//! A reading is only ever sent as a patient's. One whose device has no binding (or a shared
//! device's reading of a user index with none, or of no user) would otherwise go out without
//! a subject, or under a guess; the writer holds it here instead, kept, counted (status page,
//! `vitalbridge_unbound_readings`) and sealed at rest like every reading ([`rows`]).
//!
//! # Release
//! [`Writer::release_unbound`] (the `vitalbridge devices bind DEVICE --patient …` command)
//! moves the held readings of one device (and one user index, or none) into the delivery
//! queue, bound to the patient given, in one transaction, and the command audits it. It
//! needs the writer, so it takes the buffer's one-writer lock: **the gateway must be
//! stopped** (a running gateway holds the lock and the command says so). That keeps "the
//! writer is the only writer" without a second request path into a running writer, and a
//! release is a rare, deliberate act of a person.
//!
//! # Identifiers
//! The patient is part of [`Reading::identifier`], so a released reading gets the identifier
//! it would have had had the device been bound when it measured: the same measurement relayed
//! by another hub where the device was bound, or resent by the device after the binding was
//! configured, is the same Observation (conditional create), not a second one. A reading held
//! here is de-duplicated by its identifier without a patient. The flip side: a release to the
//! wrong patient cannot be undone here (its Observation carries that patient's identifier);
//! it is corrected at the FHIR server like any wrong entry. Readings are released only by an
//! explicit command, never by a configuration change: a binding added later applies to
//! readings measured from then on ("a binding change never re-labels readings").

use sqlx::sqlite::SqliteConnection;
use sqlx::Row;
use time::OffsetDateTime;

use super::seal::BufferKey;
use super::writer::Writer;
use super::{open, rows, time_of_ms, BufferError, Store};
use crate::model::{PatientRef, Reading};

/// Held readings of one device and user index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnboundDevice {
    /// `DeviceId::key()`.
    pub device_key: String,
    /// The user index the device reported, if any.
    pub user: Option<u8>,
    /// Readings held.
    pub readings: u64,
    /// Receive times of the first and the last.
    pub first_received: OffsetDateTime,
    /// See `first_received`.
    pub last_received: OffsetDateTime,
}

/// Which held readings to release, and to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// `DeviceId::key()` of the device (a Bluetooth address in key form).
    pub device_key: String,
    /// The user index: `Some(n)` releases the readings that reported user `n`, `None` those
    /// that reported no user (a shared device's readings of other users stay held).
    pub user: Option<u8>,
    /// Only readings measured at or after this time (effective time), if given.
    pub since: Option<OffsetDateTime>,
    /// Only readings measured before this time, if given.
    pub until: Option<OffsetDateTime>,
    /// The patient they belong to.
    pub patient: PatientRef,
}

/// What a release did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Released {
    /// Readings moved into the delivery queue (or already there under the same identifier).
    pub released: u64,
    /// Held readings of the device and user left where they are (outside the time window).
    pub kept: u64,
    /// Held readings of the device and user that cannot be opened (another key): left.
    pub unreadable: u64,
}

/// Holds readings (inside the writer's transaction); returns how many were new.
pub(super) async fn hold(
    conn: &mut SqliteConnection,
    held: &[(rows::SealedReading, i64, &Reading)],
) -> Result<u64, sqlx::Error> {
    let mut n = 0;
    for (sealed, received, r) in held {
        n += sqlx::query(
            "INSERT OR IGNORE INTO unbound (dedup, device_key, device_user, received_ms, body) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&sealed.dedup[..])
        .bind(r.device.id.key())
        .bind(r.device_user.map(i64::from))
        .bind(*received)
        .bind(&sealed.body)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    Ok(n)
}

/// Readings held.
pub(super) async fn count(conn: &mut SqliteConnection) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM unbound")
        .fetch_one(&mut *conn)
        .await?;
    Ok(n.max(0) as u64)
}

impl Store {
    /// Readings held for want of a patient (exact for this process).
    pub fn unbound(&self) -> u64 {
        self.inner
            .unbound
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The held readings per device and user index (no key needed: nothing sealed is read).
    pub async fn unbound_devices(&self) -> Result<Vec<UnboundDevice>, BufferError> {
        let rows = sqlx::query(
            "SELECT device_key, device_user, COUNT(*), MIN(received_ms), MAX(received_ms) \
             FROM unbound GROUP BY device_key, device_user ORDER BY device_key, device_user",
        )
        .fetch_all(&self.inner.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| UnboundDevice {
                device_key: r.get(0),
                user: r
                    .get::<Option<i64>, _>(1)
                    .and_then(|u| u8::try_from(u).ok()),
                readings: r.get::<i64, _>(2).max(0) as u64,
                first_received: time_of_ms(r.get(3)),
                last_received: time_of_ms(r.get(4)),
            })
            .collect())
    }
}

impl Writer {
    /// Releases held readings to a patient (see the module docs), in one transaction.
    pub async fn release_unbound(&mut self, release: &Release) -> Result<Released, BufferError> {
        let store = self.store().clone();
        let key = store.inner.key.clone();
        let todo = store.inner.all_destinations;
        let conn = self.connection().await?;
        open::begin(conn).await?;
        let body = move_rows(conn, &key, todo, release).await;
        let (done, inserted) = match body {
            Ok(n) => {
                open::commit_or_rollback(conn, Ok(())).await?;
                n
            }
            Err(e) => {
                open::commit_or_rollback(conn, Err(e)).await?;
                (Released::default(), 0)
            }
        };
        use std::sync::atomic::Ordering::Relaxed;
        store.inner.pending.fetch_add(inserted, Relaxed);
        let left = count(self.connection().await?).await?;
        store.inner.unbound.store(left, Relaxed);
        Ok(done)
    }
}

/// [`Writer::release_unbound`]'s statements: returns what it did and the rows new to the
/// delivery queue.
async fn move_rows(
    conn: &mut SqliteConnection,
    key: &BufferKey,
    todo: i64,
    release: &Release,
) -> Result<(Released, u64), sqlx::Error> {
    let rows: Vec<(i64, Vec<u8>, Vec<u8>, i64)> = sqlx::query_as(
        "SELECT id, dedup, body, received_ms FROM unbound \
         WHERE device_key = ? AND device_user IS ? ORDER BY id",
    )
    .bind(&release.device_key)
    .bind(release.user.map(i64::from))
    .fetch_all(&mut *conn)
    .await?;
    let mut done = Released::default();
    let mut inserted = 0;
    for (id, dedup, body, received) in rows {
        let Ok(mut reading) = rows::open_reading(key, &dedup, &body) else {
            done.unreadable += 1;
            continue;
        };
        let (when, _) = reading.effective_time();
        if release.since.is_some_and(|t| when < t) || release.until.is_some_and(|t| when >= t) {
            done.kept += 1;
            continue;
        }
        reading.patient = Some(release.patient.clone());
        let sealed = rows::seal_reading(key, &reading);
        inserted += sqlx::query(
            "INSERT OR IGNORE INTO readings (dedup, received_ms, body, todo) VALUES (?, ?, ?, ?)",
        )
        .bind(&sealed.dedup[..])
        .bind(received)
        .bind(&sealed.body)
        .bind(todo)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM unbound WHERE id = ?")
            .bind(id)
            .execute(&mut *conn)
            .await?;
        done.released += 1;
    }
    Ok((done, inserted))
}
