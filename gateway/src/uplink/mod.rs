//! The uplink: leases batches from the buffer, hands them to a transport, and settles every
//! row by the destination's answer.
//!
//! # Adding a destination
//! A destination is one transport module implementing [`Transport`], one variant of
//! [`AnyTransport`] (and its arm in [`prepare`]), and its config table under `[uplink]`.
//! [`start`] runs `in_flight` batcher workers over it.
//!
//! Architecture invariant (delete after acknowledged): a row is acked (deleted) only for an
//! entry the destination accepted, and dead-lettered only for a permanent refusal, with the
//! destination's reason. Everything else is retried with exponential backoff and full jitter,
//! honouring `Retry-After`. A whole batch refused permanently (a transaction's 4xx) is split
//! in halves and resent until the refused reading is isolated, so one bad reading never
//! blocks or dead-letters its neighbours. When both halves of a refused batch pass, the
//! refusal was the request's size, not a reading: the workers remember the size that passed
//! ([`batcher::LearnedLimit`]) and send no larger request again, instead of halving every
//! batch. Limits configured for a destination ([`Transport::fit`]) apply from the start.

pub mod auth;
pub mod batcher;
pub mod file;
pub mod hl7;
pub mod https;
pub mod kafka;
pub mod mqtt;
pub mod probe;
mod retry;
pub mod streamed;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::buffer::Store;
use crate::config::{BundleType, Destination, PatientReference, UplinkConfig};
use crate::fhir::{self, Gateway};
use crate::model::Reading;
use crate::ops::audit::Audit;
use crate::ops::metrics::Metrics;

pub use retry::parse_retry_after;

/// What the destination said about one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored (or already there): delete the row.
    Delivered,
    /// Refused for good (a 4xx for this entry): dead-letter the row.
    Rejected(Refusal),
    /// Not stored this time (a 5xx, 429 for this entry): retry the row.
    Retry(String),
}

/// A destination's permanent refusal of a row or a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    /// The status the destination answered with, where its protocol has one (HTTP).
    pub status: Option<u16>,
    /// The destination's reason, kept with the dead letter (it may quote a value, so it goes
    /// to the dead-letter table only, never to a log line or the audit log).
    pub reason: String,
}

impl Refusal {
    /// A refusal with `status` (if any) and the destination's `reason`.
    pub fn new(status: Option<u16>, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }

    /// The cause recorded in the audit log: `http_NNN` for an HTTP status, else `refused`.
    /// Taken from the status alone, never from the reason text.
    pub fn cause(&self) -> String {
        match self.status {
            Some(status @ 100..=599) => format!("http_{status}"),
            _ => "refused".to_owned(),
        }
    }
}

/// What kind of transient failure a [`SendError::Transient`] is, for the counters, the
/// status page and the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The network, a timeout, a server's 408/429/5xx, a broker's answer to retry.
    Other,
    /// The TLS handshake failed; the label is [`crate::tls::cause_label`]'s.
    Tls(&'static str),
    /// No access token could be had, or the server refused it ([`auth::AuthError::label`],
    /// `server_401`, `server_403`).
    Auth(&'static str),
}

impl Cause {
    /// `tls`, `auth` or `transient`: the kind of the uplink's last error on the status page.
    pub fn kind(self) -> &'static str {
        match self {
            Cause::Other => "transient",
            Cause::Tls(_) => "tls",
            Cause::Auth(_) => "auth",
        }
    }
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
        /// What kind of failure (TLS and authorization failures are counted by cause).
        cause: Cause,
    },
    /// The destination refused the batch as a whole, permanently (e.g. a transaction 400).
    #[error("refused: {0}")]
    Refused(Refusal),
}

/// A destination for batches of readings.
pub trait Transport: Send + Sync + 'static {
    /// A short name for logs, metrics and dead-letter origins (`file`, `fhir`).
    fn name(&self) -> &'static str;

    /// How many of `rows`, from the start, fit one request by the destination's configured
    /// limits (at least 1: a reading too large alone is sent and refused on its own). The
    /// batcher sends the rest in further requests.
    fn fit(&self, rows: &[(i64, &Reading)]) -> usize {
        rows.len()
    }

    /// Sends `rows` (buffer row id, reading); on success returns one outcome per row, in order.
    fn send(
        &self,
        rows: &[(i64, &Reading)],
    ) -> impl Future<Output = Result<Vec<Outcome>, SendError>> + Send;

    /// Called once before the workers start, with what they share (a transport that reports
    /// refusals to the audit log keeps a handle). Nothing by default.
    fn attach(&self, _ctx: &UplinkContext) {}

    /// How many workers to run, given `uplink.in_flight`: that many by default; one where
    /// the destination's order matters (Kafka: a key's records in order).
    fn workers(&self, configured: usize) -> usize {
        configured
    }
}

/// Why the configured destination cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The output directory of `[uplink.file]` cannot be used.
    #[error("uplink.file.dir {}", .dir.display())]
    FileDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `[uplink.fhir]` is unusable.
    #[error(transparent)]
    Fhir(#[from] https::SetupError),
    /// The TLS files of `[uplink.fhir]` cannot be used.
    #[error("uplink.fhir")]
    Tls(#[source] crate::tls::TlsError),
    /// The files of `[uplink.fhir.auth]` cannot be used.
    #[error(transparent)]
    Auth(#[from] auth::LoadError),
    /// `[uplink.hl7]` is unusable.
    #[error(transparent)]
    Hl7(#[from] hl7::SetupError),
    /// The TLS files of `[uplink.hl7]` cannot be used.
    #[error("uplink.hl7.tls")]
    Hl7Tls(#[source] crate::tls::TlsError),
    /// `[uplink.mqtt]` is unusable.
    #[error(transparent)]
    Mqtt(#[from] mqtt::MqttSetupError),
    /// `[uplink.kafka]` is unusable.
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaSetupError),
}

/// The transport of one destination, whatever its kind.
pub enum AnyTransport {
    /// FHIR NDJSON files.
    File(file::FileTransport),
    /// A FHIR server over HTTPS.
    Fhir(https::FhirTransport),
    /// An interface engine, HL7 v2 over MLLP.
    Hl7(hl7::Hl7Transport),
    /// An MQTT broker.
    Mqtt(mqtt::MqttTransport),
    /// A Kafka topic.
    Kafka(kafka::KafkaTransport),
}

impl Transport for AnyTransport {
    fn name(&self) -> &'static str {
        match self {
            AnyTransport::File(t) => t.name(),
            AnyTransport::Fhir(t) => t.name(),
            AnyTransport::Hl7(t) => t.name(),
            AnyTransport::Mqtt(t) => t.name(),
            AnyTransport::Kafka(t) => t.name(),
        }
    }

    fn attach(&self, ctx: &UplinkContext) {
        match self {
            AnyTransport::Mqtt(t) => t.attach(ctx),
            AnyTransport::Kafka(t) => t.attach(ctx),
            _ => {}
        }
    }

    fn workers(&self, configured: usize) -> usize {
        match self {
            AnyTransport::Kafka(t) => t.workers(configured),
            _ => configured,
        }
    }

    fn fit(&self, rows: &[(i64, &Reading)]) -> usize {
        match self {
            AnyTransport::File(t) => t.fit(rows),
            AnyTransport::Fhir(t) => t.fit(rows),
            AnyTransport::Hl7(t) => t.fit(rows),
            AnyTransport::Mqtt(t) => t.fit(rows),
            AnyTransport::Kafka(t) => t.fit(rows),
        }
    }

    async fn send(&self, rows: &[(i64, &Reading)]) -> Result<Vec<Outcome>, SendError> {
        match self {
            AnyTransport::File(t) => t.send(rows).await,
            AnyTransport::Fhir(t) => t.send(rows).await,
            AnyTransport::Hl7(t) => t.send(rows).await,
            AnyTransport::Mqtt(t) => t.send(rows).await,
            AnyTransport::Kafka(t) => t.send(rows).await,
        }
    }
}

/// A configured destination's transport, ready (output directory made, TLS files read).
pub fn prepare(
    destination: &Destination,
    data_dir: &Path,
    gateway: Gateway,
) -> Result<AnyTransport, UplinkError> {
    match destination {
        Destination::File(file) => {
            let dir = file.dir.clone().unwrap_or_else(|| data_dir.join("out"));
            let transport =
                file::FileTransport::new(&dir, file.rotate_bytes, gateway).map_err(|source| {
                    UplinkError::FileDir {
                        dir: dir.clone(),
                        source,
                    }
                })?;
            tracing::info!(dir = %dir.display(), "uplink: FHIR NDJSON files");
            Ok(AnyTransport::File(transport))
        }
        Destination::Fhir(f) => {
            let tls = crate::tls::client_config_with_crls(&f.ca, &f.crls, f.client_identity())
                .map_err(UplinkError::Tls)?;
            let kind = match f.bundle_type {
                BundleType::Transaction => fhir::BundleType::Transaction,
                BundleType::Batch => fhir::BundleType::Batch,
            };
            let timeout = Duration::from_secs(f.timeout_s);
            let limits = https::Limits {
                entries: f.max_entries,
                bytes: f.max_request_bytes,
            };
            let patients = match f.patient_reference {
                PatientReference::Identifier => fhir::PatientMode::Identifier,
                PatientReference::Conditional => fhir::PatientMode::Conditional,
                PatientReference::Create => fhir::PatientMode::Create,
            };
            let authorizer = auth::Authorizer::from_config(f, tls.clone())?;
            let method = authorizer.as_ref().map(|a| a.method().as_str());
            let transport = https::FhirTransport::new(
                &f.base_url,
                tls,
                timeout,
                (kind, patients),
                limits,
                gateway,
            )?
            .with_auth(authorizer);
            let mtls = f.cert.is_some();
            tracing::info!(base_url = %f.base_url, mutual_tls = mtls, auth = method.unwrap_or("none"), "uplink: FHIR server over HTTPS");
            Ok(AnyTransport::Fhir(transport))
        }
        Destination::Hl7(h) => {
            let tls = match &h.tls {
                Some(t) => {
                    let identity = t.cert.as_deref().zip(t.key.as_deref());
                    Some(
                        crate::tls::client_config_with_crls(&t.ca, &t.crls, identity)
                            .map_err(UplinkError::Hl7Tls)?,
                    )
                }
                None => None,
            };
            let secure = tls.is_some();
            let parties = crate::hl7::oru::Parties {
                sending_application: h.sending_application.clone(),
                sending_facility: h.sending_facility.clone(),
                receiving_application: h.receiving_application.clone(),
                receiving_facility: h.receiving_facility.clone(),
            };
            let transport = hl7::Hl7Transport::new(
                &h.address,
                tls,
                parties,
                h.connections,
                Duration::from_secs(h.timeout_s),
            )?;
            tracing::info!(address = %h.address, tls = secure, "uplink: HL7 v2 ORU^R01 over MLLP to an interface engine");
            Ok(AnyTransport::Hl7(transport))
        }
        Destination::Mqtt(m) => {
            let transport = mqtt::MqttTransport::new(m, gateway)?;
            tracing::info!(url = %m.url, "uplink: MQTT broker (QoS 1, MQTT 5)");
            Ok(AnyTransport::Mqtt(transport))
        }
        Destination::Kafka(k) => {
            let transport = kafka::KafkaTransport::new(k, gateway)?;
            tracing::info!(topic = %k.topic, "uplink: Kafka");
            Ok(AnyTransport::Kafka(transport))
        }
    }
}

/// What every uplink worker gets from the wiring.
#[derive(Clone)]
pub struct UplinkContext {
    /// The buffer: leases, acknowledgements, dead letters.
    pub store: Store,
    /// Counters and health for `/metrics` and the status page.
    pub metrics: Arc<Metrics>,
    /// The audit log (TLS failures, dead-lettered readings).
    pub audit: Audit,
    /// Cancelled when the gateway stops: finish the batch in hand and return.
    pub shutdown: CancellationToken,
}

/// Starts `config.in_flight` workers (or as many as the transport allows) sending through
/// `transport`.
pub fn start<T: Transport>(
    transport: T,
    config: &UplinkConfig,
    ctx: &UplinkContext,
) -> Vec<JoinHandle<()>> {
    let batcher = batcher::BatcherConfig {
        batch_size: config.batch_size,
        linger: Duration::from_millis(config.batch_linger_ms),
        retry_initial: Duration::from_millis(config.retry_initial_ms),
        retry_max: Duration::from_millis(config.retry_max_ms),
    };
    ctx.metrics.uplink_registered(transport.name());
    transport.attach(ctx);
    let workers = transport.workers(config.in_flight);
    let destination = ctx
        .store
        .destination(transport.name())
        .expect("the buffer was opened with every configured destination");
    let transport = Arc::new(transport);
    let collecting = Arc::new(tokio::sync::Mutex::new(()));
    let learned = Arc::new(batcher::LearnedLimit::default());
    (0..workers)
        .map(|_| {
            tokio::spawn(batcher::run(batcher::Worker {
                store: ctx.store.clone(),
                destination: destination.clone(),
                transport: transport.clone(),
                config: batcher,
                metrics: ctx.metrics.clone(),
                audit: ctx.audit.clone(),
                collecting: collecting.clone(),
                learned: learned.clone(),
                shutdown: ctx.shutdown.clone(),
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Refusal;

    #[test]
    fn the_audit_cause_is_the_http_status_value_never_the_reason_text() {
        let cause = |status, reason: &str| Refusal::new(status, reason).cause();
        assert_eq!(
            cause(Some(422), "422 Unprocessable Entity: error: bad unit"),
            "http_422"
        );
        assert_eq!(
            cause(Some(400), "HTTP 400 Bad Request: error: x"),
            "http_400"
        );
        // The reason may start like a status: only the value counts.
        assert_eq!(cause(None, "404 error: value 120 refused"), "refused");
        assert_eq!(cause(None, "no status here"), "refused");
        assert_eq!(cause(Some(4220), "4220: heart rate 180"), "refused");
        assert_eq!(cause(Some(42), "42: value 37.5 too high"), "refused");
    }

    #[test]
    fn a_refusal_reads_as_the_destination_reason() {
        let refusal = Refusal::new(Some(400), "HTTP 400 Bad Request: error: x");
        assert_eq!(refusal.to_string(), "HTTP 400 Bad Request: error: x");
        assert_eq!(
            super::SendError::Refused(refusal).to_string(),
            "refused: HTTP 400 Bad Request: error: x"
        );
    }
}
