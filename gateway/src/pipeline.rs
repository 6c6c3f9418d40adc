//! The seams around the buffer.
//!
//! - **Sources → buffer.** Sources never see the buffer; they hold an [`Ingest`] handle and
//!   `await` its answers. The buffer's writer task holds the other end ([`IngestRx`]).
//! - **Buffer → operations.** After each group commit the writer hands a [`GroupReport`] to
//!   whoever the wiring gave it (`ops::BufferReporter`: metrics and the audit log).
//!
//! Both sides depend only on this module and on the model, so stages stay apart (see
//! ARCHITECTURE.md).
//!
//! Architecture invariant (acknowledge after durable): [`Ingest::commit`] and
//! [`Ingest::reject`] resolve `Ok` only after the SQLite transaction holding the data has
//! committed with `synchronous=FULL`. A source acknowledges upstream of itself (MQTT PUBACK,
//! firmware ACK, MLLP ACK) only after that `Ok`.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::model::Reading;

/// Capacity of the channel from all sources to the buffer writer. Each request may carry many
/// readings; a full channel makes sources wait, which is the first stage of backpressure.
pub const INGEST_CHANNEL_CAPACITY: usize = 1024;

/// The most bytes of an undecodable payload kept in the dead-letter table; the rest is
/// represented by the whole payload's size and SHA-256, so an oversized or hostile payload
/// costs the buffer a bounded row however large it was.
pub const MAX_KEPT_PAYLOAD: usize = 16 * 1024;

/// Below this many readings a group is small: the buffer writer waits for company (each
/// request's linger). At or above it the writer commits, so a source (MQTT) holds back
/// behind a request this large: more sent meanwhile would only make more, smaller requests
/// for the next group.
pub const SMALL_GROUP: usize = 64;

/// A payload a source could not decode, or a reading the admission check refused: kept in
/// the dead-letter table with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Where it came from (source name and, where useful, topic/port), e.g. `mqtt:vitals/abc`.
    pub origin: String,
    /// Why it was rejected; must not contain patient values.
    pub reason: String,
    /// The payload's first [`MAX_KEPT_PAYLOAD`] bytes, kept for a technician to inspect
    /// (sealed at rest like all PHI, see `buffer::seal`).
    pub payload: Vec<u8>,
    /// The size of the whole payload, in bytes.
    pub size: u64,
    /// The SHA-256 of the whole payload: what identifies it (the same payload redelivered
    /// is dead-lettered once) and lets a technician match it to the sender's copy.
    pub sha256: [u8; 32],
    /// Set when this is a decoded reading the admission check refused (a unit that does
    /// not fit, an implausible value), not an undecodable payload: audited and counted as
    /// such.
    pub refused: Option<Box<Refusal>>,
}

/// What refused a reading, for the audit log and metrics (no value, no patient).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `DeviceId::key()` of the device that measured it.
    pub device: String,
    /// Which check: `unit` or `plausibility`.
    pub check: &'static str,
}

/// The check every reading passes on its way to the buffer, whatever its source (units,
/// plausibility, time; `profile::admission` implements it). The wiring gives it to the
/// [`Ingest`] handles, so every source, present and future, is checked the same way.
pub trait Admit: Send + Sync + std::fmt::Debug {
    /// Checks `readings` from `source`: those to store stay in `readings` (marked where a
    /// check says so), the refused ones come back as dead letters with their reasons.
    fn admit(&self, source: &str, readings: &mut Vec<Reading>) -> Vec<Rejected>;
}

impl Rejected {
    /// A rejected payload, keeping at most [`MAX_KEPT_PAYLOAD`] of its bytes.
    pub fn new(origin: String, reason: String, payload: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, payload);
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest.as_ref());
        Self {
            origin,
            reason,
            payload: payload[..payload.len().min(MAX_KEPT_PAYLOAD)].to_vec(),
            size: payload.len() as u64,
            sha256,
            refused: None,
        }
    }
}

/// What a successful commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Committed {
    /// Readings now durably held: newly stored, or already in the buffer under the same
    /// identifier (a retransmission, stored once).
    pub readings: usize,
}

/// Why a commit did not happen. The source must not acknowledge upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The buffer is at its configured capacity: apply backpressure and retry later.
    #[error("buffer full ({capacity} readings pending)")]
    Full {
        /// The configured capacity.
        capacity: u64,
    },
    /// The file system holding the buffer has less free space than `buffer.min_free_mb`:
    /// new readings are refused (backpressure) so that deliveries can still be recorded.
    #[error(
        "buffer refuses new readings: {free_bytes} bytes free, below the floor of {floor_bytes}"
    )]
    LowSpace {
        /// Free bytes on the buffer's file system.
        free_bytes: u64,
        /// The configured floor.
        floor_bytes: u64,
    },
    /// The gateway is shutting down.
    #[error("buffer closed")]
    Closed,
    /// The database failed; the data was not stored.
    #[error("buffer storage error: {0}")]
    Storage(StorageFailure),
}

impl CommitError {
    /// Whether the source should hold its data and try again later (backpressure), as
    /// opposed to stopping (`Closed`).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, CommitError::Closed)
    }
}

/// What kind of storage failure happened, for metrics and the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    /// The disk (or its quota) is full.
    DiskFull,
    /// The operating system reported an I/O error.
    Io,
    /// The database file is damaged.
    Corrupt,
    /// Anything else SQLite refused.
    Other,
}

impl StorageKind {
    /// A short name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageKind::DiskFull => "disk_full",
            StorageKind::Io => "io",
            StorageKind::Corrupt => "corrupt",
            StorageKind::Other => "other",
        }
    }
}

/// A storage failure, cheap to clone to every request of a failed group. Its message is the
/// database's error text (no patient data: SQLite reports no values).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StorageFailure {
    /// The kind.
    pub kind: StorageKind,
    /// What the database said.
    pub message: Arc<str>,
}

/// A request to the buffer writer.
#[derive(Debug)]
pub enum Request {
    /// Store these readings, and dead-letter these undecodable payloads, durably and
    /// together: all of it is committed, or none.
    Commit {
        /// Name of the source that sent them (for per-source metrics).
        source: Arc<str>,
        /// The readings.
        readings: Vec<Reading>,
        /// Payloads that did not decode, with their reasons.
        rejected: Vec<Rejected>,
        /// When it was sent: the writer's wait for company counts from here, not from when
        /// the writer got to it.
        sent: Instant,
        /// The longest that wait may be; `None`: the writer's (`buffer.commit_linger_ms`).
        linger: Option<Duration>,
        /// Answered after the transaction committed (or failed).
        reply: oneshot::Sender<Result<Committed, CommitError>>,
    },
    /// The highest device sequence number ever committed for a device (survives delivery), so
    /// a source can ask a device only for newer records (BLE glucose RACP, firmware outbox).
    LastSequence {
        /// `DeviceId::key()` of the device.
        device_key: String,
        /// Answered from the buffer's device state.
        reply: oneshot::Sender<Result<Option<u64>, CommitError>>,
    },
}

/// The buffer writer's end of the seam.
pub type IngestRx = mpsc::Receiver<Request>;

/// A source's handle to the buffer. Cheap to clone; one per source task.
#[derive(Debug, Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Request>,
    /// Name of the source holding this handle; every request carries it, so readings are
    /// counted per source centrally (by the buffer writer's report), not by each source.
    source: Arc<str>,
    /// The admission check readings pass before they are sent to the writer; `None` in
    /// tests of the buffer alone.
    admit: Option<Arc<dyn Admit>>,
    /// How long this source's requests may wait in the writer for company; `None`: the
    /// writer's own (`buffer.commit_linger_ms`).
    linger: Option<Duration>,
}

/// Creates the seam: the handle factory for sources and the receiver for the buffer writer.
pub fn channel() -> (mpsc::Sender<Request>, IngestRx) {
    mpsc::channel(INGEST_CHANNEL_CAPACITY)
}

impl Ingest {
    /// A handle for the source called `source`, sending into `tx`.
    pub fn new(tx: mpsc::Sender<Request>, source: impl Into<Arc<str>>) -> Self {
        Self {
            tx,
            source: source.into(),
            admit: None,
            linger: None,
        }
    }

    /// The same handle, checking every reading with `admit` before it is stored.
    pub fn with_admission(self, admit: Arc<dyn Admit>) -> Self {
        Self {
            admit: Some(admit),
            ..self
        }
    }

    /// The same handle, its requests waiting at most `linger` in the writer for company. For
    /// a source that does not wait for one commit before sending the next (MQTT), a longer
    /// wait costs only latency and makes larger, cheaper groups.
    pub fn with_linger(self, linger: Duration) -> Self {
        Self {
            linger: Some(linger),
            ..self
        }
    }

    /// The name of the source holding this handle.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A handle to the same buffer for another source.
    pub fn for_source(&self, source: impl Into<Arc<str>>) -> Self {
        Self {
            tx: self.tx.clone(),
            source: source.into(),
            admit: self.admit.clone(),
            linger: self.linger,
        }
    }

    /// Stores `readings` durably; resolves after the commit.
    pub async fn commit(&self, readings: Vec<Reading>) -> Result<Committed, CommitError> {
        self.store(readings, Vec::new()).await
    }

    /// Stores `readings` and dead-letters `rejected` in one transaction; resolves after the
    /// commit. A batch of messages with some bad ones among them costs one commit. Readings
    /// pass the admission check first: a refused one is dead-lettered in the same
    /// transaction (and counts in [`Committed::readings`], as it is durably held).
    pub async fn store(
        &self,
        mut readings: Vec<Reading>,
        mut rejected: Vec<Rejected>,
    ) -> Result<Committed, CommitError> {
        let mut refused = 0;
        if let Some(admit) = &self.admit {
            let mut out = admit.admit(&self.source, &mut readings);
            refused = out.len();
            rejected.append(&mut out);
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Commit {
                source: self.source.clone(),
                readings,
                rejected,
                sent: Instant::now(),
                linger: self.linger,
                reply,
            })
            .await
            .map_err(|_| CommitError::Closed)?;
        answer
            .await
            .map_err(|_| CommitError::Closed)?
            .map(|c| Committed {
                readings: c.readings + refused,
            })
    }

    /// Dead-letters an undecodable payload durably; resolves after the commit.
    pub async fn reject(
        &self,
        origin: String,
        reason: String,
        payload: &[u8],
    ) -> Result<(), CommitError> {
        let rejected = Rejected::new(origin, reason, payload);
        self.store(Vec::new(), vec![rejected]).await.map(|_| ())
    }

    /// The highest sequence number ever committed for the device with key `device_key`.
    pub async fn last_sequence(&self, device_key: &str) -> Result<Option<u64>, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::LastSequence {
                device_key: device_key.to_owned(),
                reply,
            })
            .await
            .map_err(|_| CommitError::Closed)?;
        answer.await.map_err(|_| CommitError::Closed)?
    }
}

/// What went wrong with storage, while it lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageProblem {
    /// Since when (the first failure of this episode).
    pub since: OffsetDateTime,
    /// What the writer was doing: `commit`, `delete`, `lease`, `reopen`.
    pub during: &'static str,
    /// The last failure.
    pub failure: StorageFailure,
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
    /// Requests refused because free space was below the floor.
    pub refused_space: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Transactions that failed (nothing of their group was stored or acknowledged).
    pub failed: u64,
    /// Delivered rows deleted.
    pub deleted: u64,
    /// Rows moved to the dead-letter table by the uplink.
    pub dead_lettered: u64,
}

impl WriterCounts {
    /// Adds another group's counts.
    pub fn add(&mut self, o: &WriterCounts) {
        self.inserted += o.inserted;
        self.duplicates += o.duplicates;
        self.refused_full += o.refused_full;
        self.refused_space += o.refused_space;
        self.commits += o.commits;
        self.failed += o.failed;
        self.deleted += o.deleted;
        self.dead_lettered += o.dead_lettered;
    }
}

/// A change in the buffer's health, reported once when it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Writes started failing.
    Failed(StorageProblem),
    /// A commit succeeded after failures.
    Recovered {
        /// How long the episode lasted.
        after: Duration,
    },
    /// Free space fell below the floor: new readings are refused.
    LowSpace {
        /// Free bytes.
        free_bytes: u64,
        /// The floor.
        floor_bytes: u64,
    },
    /// Free space is above the floor again.
    SpaceOk {
        /// Free bytes.
        free_bytes: u64,
    },
}

/// What one group did; the writer's callback gets it after every request was answered.
#[derive(Debug)]
pub struct GroupReport<'a> {
    /// This group's counts.
    pub counts: WriterCounts,
    /// When the transaction committed; `None` when it failed or there was nothing to write.
    pub committed_at: Option<OffsetDateTime>,
    /// The readings now durably held (newly stored or already there), each request with the
    /// name of the source that sent it. Empty when the transaction failed.
    pub readings: &'a [(Arc<str>, Vec<Reading>)],
    /// Undecodable payloads now in the dead-letter table, with their source. Empty when the
    /// transaction failed.
    pub rejected: &'a [(Arc<str>, Rejected)],
    /// Why the transaction failed, if it did.
    pub error: Option<&'a StorageFailure>,
    /// Health changes this group brought.
    pub transitions: &'a [Transition],
    /// Readings pending after this group, and the buffer's capacity.
    pub pending: u64,
    /// `buffer.capacity`.
    pub capacity: u64,
}

/// What the writer calls after each group (metrics, audit log).
pub type OnCommit = Box<dyn Fn(&GroupReport<'_>) + Send + Sync>;
