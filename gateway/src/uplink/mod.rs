//! The uplink: leases batches from the buffer, hands them to a transport, and settles every
//! row by the destination's answer.
//!
//! Architecture invariant (delete after acknowledged): a row is acked (deleted) only for an
//! entry the destination accepted, and dead-lettered only for a permanent refusal, with the
//! destination's reason. Everything else is retried with exponential backoff and full jitter,
//! honouring `Retry-After`. A whole batch refused permanently (a transaction's 4xx) is split
//! in halves and resent until the refused reading is isolated, so one bad reading never
//! blocks or dead-letters its neighbours.

pub mod batcher;
pub mod file;
pub mod https;
mod retry;

use std::future::Future;
use std::time::Duration;

use crate::model::Reading;

pub use retry::{parse_retry_after, Backoff};

/// What the destination said about one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored (or already there): delete the row.
    Delivered,
    /// Refused for good (a 4xx for this entry): dead-letter the row with this reason.
    Rejected(String),
    /// Not stored this time (a 5xx, 429 for this entry): retry the row.
    Retry(String),
}

/// Why a whole send failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Try again later: connection or TLS failure, timeout, 408/429/5xx.
    #[error("{reason}")]
    Transient {
        /// What happened (no patient data).
        reason: String,
        /// The server's Retry-After, if it sent one.
        retry_after: Option<Duration>,
        /// Whether this was a TLS handshake failure (counted separately).
        tls: bool,
    },
    /// The destination refused the batch as a whole, permanently (e.g. a transaction 400).
    #[error("refused: {0}")]
    Refused(String),
}

/// A destination for batches of readings.
pub trait Transport: Send + Sync + 'static {
    /// A short name for logs, metrics and dead-letter origins (`file`, `fhir`).
    fn name(&self) -> &'static str;

    /// Sends `rows` (buffer row id, reading); on success returns one outcome per row, in order.
    fn send(
        &self,
        rows: &[(i64, &Reading)],
    ) -> impl Future<Output = Result<Vec<Outcome>, SendError>> + Send;
}
