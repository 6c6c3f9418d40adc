//! The Kafka uplink: one record per Observation (FHIR R4 JSON), keyed by patient (or device),
//! produced with `acks=all` through rskafka, a pure-Rust client on our rustls (see
//! ARCHITECTURE.md, "Kafka: rskafka", for the choice).
//!
//! # Keys, partitions, order
//! A record's key is the patient's identifier (`system|value`, or the device's id for a
//! reading without a patient, or always the device with `key = "device"`). Its partition is
//! Kafka's default partitioner's: `toPositive(murmur2(key)) % partitions` ([`partition_of`]),
//! so a consumer or another producer agrees on where a key lives. Each partition's records
//! of a batch go in one produce request, in the buffer's order.
//!
//! Order per key holds because the destination runs **one** worker ([`Transport::workers`]):
//! a batch whose produce failed is retried before the next batch is leased, so a later reading
//! of a patient is never written before an earlier one. (With several workers two batches of
//! one patient could race.)
//!
//! Architecture invariant (delete after acknowledged): a row is [`Outcome::Delivered`] only
//! when the produce request holding its record was answered without error by the partition
//! leader with `acks=all` (every in-sync replica has it). rskafka has no idempotent producer:
//! a request whose answer was lost is sent again and may be written twice, as may the rows of
//! a batch in hand when the gateway is killed; every record carries the Observation
//! identifier, by which consumers drop the second copy (docs/streams.md).
//!
//! # Refusals
//! - Authentication or authorization refused (SASL, topic or cluster ACL), an unknown topic:
//!   the rows stay queued and are retried; the destination turns not-ready and it is audited.
//! - A record the broker will never take (`MESSAGE_TOO_LARGE`, `INVALID_RECORD`, …): its
//!   row is dead-lettered with the reason, and only its row (a refused multi-record request is
//!   retried record by record to find it).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::record::Record;
use rskafka::BackoffConfig;
use tokio::sync::Mutex;

use super::streamed::{patient_key, DeviceRefs, Renderer};
use super::{Cause, Outcome, Refusal, SendError, Transport, UplinkContext};
use crate::config::{KafkaKey, KafkaUplinkConfig};
use crate::fhir::Gateway;
use crate::model::Reading;
use crate::ops::audit::{Audit, Event};
use crate::secret_file::Reread;

/// Why the Kafka uplink cannot start.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// The TLS files cannot be used.
    #[error("uplink.kafka.tls")]
    Tls(#[source] crate::tls::TlsError),
    /// The SASL password file cannot be read.
    #[error("uplink.kafka.sasl.password_file {}: {problem}", .path.display())]
    Password {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        problem: String,
    },
}

/// Kafka's default partitioner's hash (murmur2, seed `0x9747b28c`), as the Java client
/// computes it, so every producer and consumer agrees on a key's partition.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of `key` among `partitions` (Kafka's `toPositive(murmur2(key)) % n`).
pub fn partition_of(key: &[u8], partitions: usize) -> usize {
    (murmur2(key) & 0x7fff_ffff) as usize % partitions.max(1)
}

/// Connection settings.
struct Options {
    bootstrap: Vec<String>,
    topic: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    sasl: Option<SaslLogin>,
    timeout: Duration,
    client_id: String,
}

/// The SASL/SCRAM login; the password is read again from its file when the broker refuses
/// the login (an operator may have put the right one there).
struct SaslLogin {
    sha256: bool,
    username: String,
    password: Reread<String>,
}

impl SaslLogin {
    fn config(&self) -> SaslConfig {
        let credentials = Credentials::new(self.username.clone(), self.password.get());
        if self.sha256 {
            SaslConfig::ScramSha256(credentials)
        } else {
            SaslConfig::ScramSha512(credentials)
        }
    }
}

/// The first line of an owner-only password file.
fn read_password(path: &std::path::Path) -> Result<String, String> {
    let mut problems = Vec::new();
    crate::config::check_private_key("password_file", path, &mut problems);
    if let Some(p) = problems.into_iter().next() {
        return Err(p.message);
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    Ok(text.lines().next().unwrap_or("").to_owned())
}

/// A connected client and the topic's partitions.
struct Connected {
    /// Kept for the connections it owns (the partition clients share them).
    _client: Client,
    partitions: Vec<PartitionClient>,
}

/// Produces readings to a Kafka topic.
pub struct KafkaTransport {
    options: Options,
    key: KafkaKey,
    renderer: Renderer,
    /// Connected at the first batch, and again after a failure that may have been the
    /// connection's or the metadata's (a leader moved, partitions added).
    connected: Mutex<Option<Arc<Connected>>>,
    hooks: OnceLock<Audit>,
}

/// What went wrong with a produce, as the batcher needs it.
enum Failure {
    /// Not this time: retry the rows (and reconnect).
    Retry(String),
    /// The broker refuses this gateway (authentication, authorization, unknown topic):
    /// retry, audited, destination not-ready.
    Refused(String),
    /// The broker will never take the record: dead-letter it.
    Permanent(String),
}

/// Whether `e` is the broker refusing the SASL login (rskafka says so only in its text).
fn is_sasl_refusal(e: &KafkaError) -> bool {
    match e {
        KafkaError::Connection(c) => {
            let text = c.to_string();
            text.contains("SASL") || text.contains("Sasl") || text.contains("authenticat")
        }
        _ => false,
    }
}

/// How long after rskafka's own retry deadline a connection attempt is given up as
/// unanswered.
const CONNECT_GRACE: Duration = Duration::from_secs(2);

/// Sorts an rskafka error into what the gateway does about it. The text never holds a
/// payload (rskafka's errors carry the request context: topic, partition, sizes).
fn classify(e: &KafkaError) -> Failure {
    match e {
        KafkaError::ServerError { protocol_error, .. } => {
            let code = format!("{protocol_error:?}");
            match protocol_error {
                ProtocolError::MessageTooLarge
                | ProtocolError::RecordListTooLarge
                | ProtocolError::InvalidRecord
                | ProtocolError::CorruptMessage => {
                    Failure::Permanent(format!("the broker refused the record: {code}"))
                }
                ProtocolError::TopicAuthorizationFailed
                | ProtocolError::ClusterAuthorizationFailed
                | ProtocolError::SaslAuthenticationFailed
                | ProtocolError::IllegalSaslState
                | ProtocolError::UnsupportedSaslMechanism
                | ProtocolError::UnknownTopicOrPartition
                | ProtocolError::InvalidTopicException => {
                    Failure::Refused(format!("the broker refused the gateway: {code}"))
                }
                _ => Failure::Retry(format!("the broker answered {code}")),
            }
        }
        KafkaError::Connection(c) => {
            let text = c.to_string();
            if is_sasl_refusal(e) {
                Failure::Refused(format!(
                    "the SASL login failed: check uplink.kafka.sasl's username, mechanism and \
                     password_file against the broker's user ({text})"
                ))
            } else {
                Failure::Retry(format!("connection: {text}"))
            }
        }
        other => Failure::Retry(other.to_string()),
    }
}

impl KafkaTransport {
    /// Reads the TLS files and the SASL password; connects at the first batch.
    pub fn new(config: &KafkaUplinkConfig, gateway: Gateway) -> Result<Self, KafkaSetupError> {
        let tls = match &config.tls {
            Some(t) => {
                let identity = t.cert.as_deref().zip(t.key.as_deref());
                Some(
                    crate::tls::client_config_with_crls(&t.ca, &t.crls, identity)
                        .map_err(KafkaSetupError::Tls)?,
                )
            }
            None => None,
        };
        let sasl = match &config.sasl {
            Some(s) => {
                let password = read_password(&s.password_file).map_err(|problem| {
                    KafkaSetupError::Password {
                        path: s.password_file.clone(),
                        problem,
                    }
                })?;
                Some(SaslLogin {
                    sha256: s.mechanism == "SCRAM-SHA-256",
                    username: s.username.clone(),
                    password: Reread::new(&s.password_file, password),
                })
            }
            None => None,
        };
        Ok(Self {
            options: Options {
                bootstrap: config.bootstrap.clone(),
                topic: config.topic.clone(),
                tls,
                sasl,
                timeout: Duration::from_secs(config.timeout_s),
                client_id: format!("vitalbridge-{}", gateway.id),
            },
            key: config.key,
            renderer: Renderer::new(gateway, Vec::new()),
            connected: Mutex::new(None),
            hooks: OnceLock::new(),
        })
    }

    /// The connected client, connecting (and reading the topic's partitions) if needed.
    async fn connect(&self) -> Result<Arc<Connected>, Failure> {
        let mut slot = self.connected.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let o = &self.options;
        // rskafka retries a failed connection (a refused SASL login included) until the
        // pauses between its attempts add up to this deadline (the attempts' own time is not
        // counted), then returns the last error; the outer timeout only catches a broker
        // that never answers. With the deadline as long as the timeout, the timeout won the
        // race and a wrong password was reported as "no answer" and never audited.
        let backoff = BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
            deadline: Some(o.timeout / 4),
        };
        let mut builder = ClientBuilder::new(o.bootstrap.clone())
            .client_id(o.client_id.as_str())
            .backoff_config(backoff);
        if let Some(tls) = &o.tls {
            builder = builder.tls_config(tls.clone());
        }
        if let Some(sasl) = &o.sasl {
            builder = builder.sasl_config(sasl.config());
        }
        let client = tokio::time::timeout(o.timeout + CONNECT_GRACE, builder.build())
            .await
            .map_err(|_| Failure::Retry("no answer from the Kafka brokers in time".into()))?
            .map_err(|e| {
                if is_sasl_refusal(&e)
                    && o.sasl
                        .as_ref()
                        .is_some_and(|s| s.password.reread(read_password))
                {
                    tracing::info!(
                        uplink = "kafka",
                        "uplink.kafka.sasl.password_file changed; logging in with the new password"
                    );
                    return Failure::Retry(
                        "the SASL login failed; the password file changed, trying it".into(),
                    );
                }
                classify(&e)
            })?;
        let topics = client.list_topics().await.map_err(|e| classify(&e))?;
        let count = topics
            .iter()
            .find(|t| t.name == o.topic)
            .map(|t| t.partitions.len())
            .unwrap_or(0);
        if count == 0 {
            return Err(Failure::Refused(format!(
                "topic {} does not exist on the brokers (create it; the gateway does not)",
                o.topic
            )));
        }
        let mut partitions = Vec::with_capacity(count);
        for p in 0..count {
            let pc = client
                .partition_client(o.topic.clone(), p as i32, UnknownTopicHandling::Error)
                .await
                .map_err(|e| classify(&e))?;
            partitions.push(pc);
        }
        tracing::info!(
            uplink = "kafka",
            partitions = count,
            "connected to the Kafka brokers"
        );
        let connected = Arc::new(Connected {
            _client: client,
            partitions,
        });
        *slot = Some(connected.clone());
        Ok(connected)
    }

    async fn forget_connection(&self) {
        *self.connected.lock().await = None;
    }

    fn key_of(&self, r: &Reading) -> String {
        match (self.key, &r.patient) {
            (KafkaKey::Patient, Some(p)) => patient_key(p),
            _ => r.device.id.key(),
        }
    }

    fn record(&self, r: &Reading, key: String, devices: &mut DeviceRefs) -> Record {
        let mut headers = BTreeMap::new();
        headers.insert(
            "content-type".to_owned(),
            super::mqtt::CONTENT_TYPE.as_bytes().to_vec(),
        );
        headers.insert(
            "schema".to_owned(),
            b"http://hl7.org/fhir/StructureDefinition/Observation".to_vec(),
        );
        headers.insert(
            "gateway".to_owned(),
            self.renderer.gateway().id.as_bytes().to_vec(),
        );
        Record {
            key: Some(key.into_bytes()),
            value: Some(self.renderer.observation(r, devices)),
            headers,
            timestamp: rskafka::chrono::DateTime::from_timestamp_millis(
                (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64,
            )
            .unwrap_or_default(),
        }
    }

    fn audit(&self, reason: &str) {
        tracing::error!(
            uplink = "kafka",
            "the Kafka broker refused the gateway: {reason}"
        );
        if let Some(audit) = self.hooks.get() {
            audit.record(Event::ConnectionRefused {
                endpoint: "uplink:kafka",
                direction: "outbound",
                address: None,
                reason,
            });
        }
    }

    /// Produces one partition's records; on a permanent refusal of a request of several, one
    /// by one, so only the refused record's row is dead-lettered.
    async fn produce(
        &self,
        client: &PartitionClient,
        records: Vec<Record>,
    ) -> Vec<Result<(), Failure>> {
        let n = records.len();
        let timeout = self.options.timeout;
        let once = |records: Vec<Record>| async move {
            match tokio::time::timeout(timeout, client.produce(records, Compression::NoCompression))
                .await
            {
                Ok(Ok(_offsets)) => Ok(()),
                Ok(Err(e)) => Err(classify(&e)),
                Err(_) => Err(Failure::Retry(
                    "no answer to the produce request in time (uplink.kafka.timeout_s)".into(),
                )),
            }
        };
        if n == 1 {
            return vec![once(records).await];
        }
        match once(records.clone()).await {
            Ok(()) => (0..n).map(|_| Ok(())).collect(),
            Err(Failure::Permanent(_)) => {
                let mut out = Vec::with_capacity(n);
                for r in records {
                    out.push(once(vec![r]).await);
                }
                out
            }
            Err(Failure::Retry(reason)) => (0..n)
                .map(|_| Err(Failure::Retry(reason.clone())))
                .collect(),
            Err(Failure::Refused(reason)) => (0..n)
                .map(|_| Err(Failure::Refused(reason.clone())))
                .collect(),
        }
    }
}

impl Transport for KafkaTransport {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn attach(&self, ctx: &UplinkContext) {
        let _ = self.hooks.set(ctx.audit.clone());
    }

    fn workers(&self, _configured: usize) -> usize {
        1
    }

    async fn send(&self, rows: &[(i64, &Reading)]) -> Result<Vec<Outcome>, SendError> {
        let connected = match self.connect().await {
            Ok(c) => c,
            Err(Failure::Refused(reason)) => {
                self.audit(&reason);
                return Err(transient(reason));
            }
            Err(Failure::Retry(reason) | Failure::Permanent(reason)) => {
                return Err(transient(reason))
            }
        };
        let n = connected.partitions.len();
        // Rows by partition, in buffer order.
        let mut by_partition: Vec<(Vec<usize>, Vec<Record>)> =
            (0..n).map(|_| (Vec::new(), Vec::new())).collect();
        let mut devices = DeviceRefs::default();
        for (i, (_, r)) in rows.iter().enumerate() {
            let key = self.key_of(r);
            let p = partition_of(key.as_bytes(), n);
            by_partition[p].0.push(i);
            by_partition[p].1.push(self.record(r, key, &mut devices));
        }
        let produced = join_all(
            by_partition
                .into_iter()
                .enumerate()
                .filter(|(_, (rows, _))| !rows.is_empty())
                .map(|(p, (rows, records))| {
                    let client = &connected.partitions[p];
                    async move { (rows, self.produce(client, records).await) }
                }),
        )
        .await;
        let mut out = vec![Outcome::Delivered; rows.len()];
        let mut delivered_any = false;
        let mut refused = None;
        let mut retry = None;
        for (indexes, results) in produced {
            for (i, result) in indexes.into_iter().zip(results) {
                out[i] = match result {
                    Ok(()) => {
                        delivered_any = true;
                        Outcome::Delivered
                    }
                    Err(Failure::Permanent(reason)) => {
                        Outcome::Rejected(Refusal::new(None, reason))
                    }
                    Err(Failure::Refused(reason)) => {
                        refused.get_or_insert(reason.clone());
                        Outcome::Retry(reason)
                    }
                    Err(Failure::Retry(reason)) => {
                        retry.get_or_insert(reason.clone());
                        Outcome::Retry(reason)
                    }
                };
            }
        }
        if let Some(reason) = &refused {
            self.audit(reason);
        }
        if refused.is_some() || retry.is_some() {
            // Metadata may be stale (a leader moved, a broker restarted): look again next time.
            self.forget_connection().await;
        }
        if !delivered_any && out.iter().all(|o| matches!(o, Outcome::Retry(_))) {
            if let Some(reason) = refused.or(retry) {
                return Err(transient(reason));
            }
        }
        Ok(out)
    }
}

fn transient(reason: String) -> SendError {
    SendError::Transient {
        reason,
        retry_after: None,
        cause: Cause::Other,
    }
}

/// Runs the futures concurrently and returns their outputs in order.
async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    use std::future::poll_fn;
    use std::task::Poll;
    let mut futures: Vec<_> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_is_kafkas_so_keys_land_where_java_clients_put_them() {
        // The Java client's own test vectors (Utils.murmur2).
        for (data, hash) in [
            (&b"21"[..], -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ] {
            assert_eq!(murmur2(data), hash, "{}", String::from_utf8_lossy(data));
        }
        assert!(partition_of(b"urn:oid:1|P-1", 6) < 6);
        assert_eq!(partition_of(b"anything", 1), 0);
    }
}
