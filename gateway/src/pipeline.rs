//! The seam between sources and the buffer.
//!
//! Sources never see the buffer; they hold an [`Ingest`] handle and `await` its answers. The
//! buffer's writer task holds the other end ([`IngestRx`]). Both sides depend only on this
//! module and on the model, so stages stay apart (see ARCHITECTURE.md).
//!
//! Architecture invariant (acknowledge after durable): [`Ingest::commit`] and
//! [`Ingest::reject`] resolve `Ok` only after the SQLite transaction holding the data has
//! committed with `synchronous=FULL`. A source acknowledges upstream of itself (MQTT PUBACK,
//! firmware ACK, MLLP ACK) only after that `Ok`.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::model::Reading;

/// Capacity of the channel from all sources to the buffer writer. Each request may carry many
/// readings; a full channel makes sources wait, which is the first stage of backpressure.
pub const INGEST_CHANNEL_CAPACITY: usize = 1024;

/// A payload a source could not decode: kept in the dead-letter table with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Where it came from (source name and, where useful, topic/port), e.g. `mqtt:vitals/abc`.
    pub origin: String,
    /// Why it was rejected; must not contain patient values.
    pub reason: String,
    /// The raw bytes, kept for a technician to inspect (encrypted at rest like all PHI).
    pub payload: Vec<u8>,
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
    /// The gateway is shutting down.
    #[error("buffer closed")]
    Closed,
    /// The database failed; the data was not stored.
    #[error("buffer storage error: {0}")]
    Storage(String),
}

/// A request to the buffer writer.
#[derive(Debug)]
pub enum Request {
    /// Store these readings durably.
    Commit {
        /// Name of the source that sent them (for per-source metrics).
        source: Arc<str>,
        /// The readings, all from one source frame or message.
        readings: Vec<Reading>,
        /// Answered after the transaction committed (or failed).
        reply: oneshot::Sender<Result<Committed, CommitError>>,
    },
    /// Store an undecodable payload in the dead-letter table.
    Reject {
        /// Name of the source that sent it (for per-source metrics and the audit log).
        source: Arc<str>,
        /// The payload and its reason.
        rejected: Rejected,
        /// Answered after the transaction committed (or failed).
        reply: oneshot::Sender<Result<(), CommitError>>,
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
        }
    }

    /// The name of the source holding this handle.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Stores `readings` durably; resolves after the commit.
    pub async fn commit(&self, readings: Vec<Reading>) -> Result<Committed, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Commit {
                source: self.source.clone(),
                readings,
                reply,
            })
            .await
            .map_err(|_| CommitError::Closed)?;
        answer.await.map_err(|_| CommitError::Closed)?
    }

    /// Dead-letters an undecodable payload durably; resolves after the commit.
    pub async fn reject(
        &self,
        origin: String,
        reason: String,
        payload: Vec<u8>,
    ) -> Result<(), CommitError> {
        let (reply, answer) = oneshot::channel();
        let rejected = Rejected {
            origin,
            reason,
            payload,
        };
        self.tx
            .send(Request::Reject {
                source: self.source.clone(),
                rejected,
                reply,
            })
            .await
            .map_err(|_| CommitError::Closed)?;
        answer.await.map_err(|_| CommitError::Closed)?
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
