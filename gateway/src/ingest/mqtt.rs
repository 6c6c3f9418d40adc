//! The MQTT source: a rumqttc subscriber, QoS 1, persistent session, manual acks.
//!
//! Architecture invariant (acknowledge after durable): the PUBACK for a message is sent only
//! after the buffer transaction holding its readings — or, for a payload that does not decode,
//! its dead-letter row — has committed. Until then the broker keeps the message; after a crash
//! it redelivers it and the reading's identifier makes the second copy a no-op.
//!
//! When the buffer is full the message is held (not acked) and retried; the broker's
//! in-flight window (`max_inflight_messages`) then stops further deliveries, so backpressure
//! reaches the publishers and nothing is dropped. The broker must keep an offline persistent
//! session's queue without a limit (mosquitto: `max_queued_messages 0`), see README.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, TlsConfiguration, Transport,
};
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Bindings;
use crate::config::MqttSourceConfig;
use crate::ops::audit::{Audit, Event as AuditEvent};
use crate::ops::metrics::Metrics;
use crate::pipeline::{CommitError, Ingest};
use crate::profile::canonical;

/// Messages being decoded/committed at once. The broker's in-flight window is the real bound;
/// this only caps memory if a broker is configured with a huge window.
const MAX_MESSAGES_IN_PROGRESS: usize = 2048;

/// Capacity of rumqttc's request channel (acks and subscribes travel through it).
const REQUEST_CHANNEL_CAPACITY: usize = 4096;

/// Delay before retrying a commit the buffer refused (full or failing).
const COMMIT_RETRY: Duration = Duration::from_millis(250);

/// Why the source could not start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The URL is unusable.
    #[error("sources.mqtt.url: {0}")]
    Url(String),
}

/// Everything the source needs besides the config.
pub struct MqttSource {
    /// Parsed broker options.
    options: MqttOptions,
    /// Topic filters.
    topics: Vec<String>,
}

impl MqttSource {
    /// Prepares options from config. `tls` is required for `mqtts://`.
    pub fn new(
        config: &MqttSourceConfig,
        client_id: String,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, MqttError> {
        let url = url::Url::parse(&config.url).map_err(|e| MqttError::Url(e.to_string()))?;
        let host = url
            .host_str()
            .ok_or_else(|| MqttError::Url("no host".into()))?
            .to_owned();
        let secure = url.scheme() == "mqtts";
        let port = url.port().unwrap_or(if secure { 8883 } else { 1883 });
        let mut options = MqttOptions::new(client_id, host, port);
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(config.keep_alive_s))
            .set_max_packet_size(config.max_packet_bytes, config.max_packet_bytes)
            .set_request_channel_capacity(REQUEST_CHANNEL_CAPACITY);
        if secure {
            let tls =
                tls.ok_or_else(|| MqttError::Url("mqtts:// needs [sources.mqtt.tls]".into()))?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        }
        Ok(Self {
            options,
            topics: config.topics.clone(),
        })
    }

    /// Runs until `shutdown`: connects, reconnects with backoff, and stores every message.
    /// Readings are counted centrally (by the buffer writer); this source reports TLS failures
    /// and refused connections (counted, and recorded in the audit log).
    pub async fn run(
        self,
        ingest: Ingest,
        bindings: Bindings,
        metrics: Arc<Metrics>,
        audit: Audit,
        shutdown: CancellationToken,
    ) {
        let (client, mut eventloop) = AsyncClient::new(self.options, REQUEST_CHANNEL_CAPACITY);
        let permits = Arc::new(Semaphore::new(MAX_MESSAGES_IN_PROGRESS));
        let mut failures: u32 = 0;
        loop {
            // Only shutdown may cancel `poll()`: rumqttc's poll is not cancel-safe (an ack
            // taken from its queue could be lost), and after shutdown that no longer matters.
            let event = tokio::select! {
                e = eventloop.poll() => e,
                _ = shutdown.cancelled() => break,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    failures = 0;
                    tracing::info!(
                        session_present = ack.session_present,
                        "connected to MQTT broker"
                    );
                    for topic in &self.topics {
                        if let Err(e) = client.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                            tracing::error!(error = %e, "cannot queue MQTT subscribe");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let refused = ack
                        .return_codes
                        .iter()
                        .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                        .count();
                    if refused > 0 {
                        tracing::error!(
                            refused,
                            "the MQTT broker refused a subscription; check its ACLs"
                        );
                    } else {
                        // Only from here on does the broker route (and, for this persistent
                        // session, queue) messages for the gateway.
                        tracing::info!(topics = self.topics.len(), "subscribed to MQTT topics");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    // The permit is taken inside the task, never here: this loop must keep
                    // polling, because only `poll()` drains the acks the tasks queue. Waiting
                    // here for a task to finish would deadlock once rumqttc's request
                    // channel is full. Messages waiting for a permit are bounded by the
                    // broker's in-flight window.
                    let (ingest, client, bindings, permits) = (
                        ingest.clone(),
                        client.clone(),
                        bindings.clone(),
                        permits.clone(),
                    );
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        let Ok(_permit) = permits.acquire_owned().await else {
                            return;
                        };
                        handle(publish, &ingest, &client, &bindings, &shutdown).await;
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    failures = failures.saturating_add(1);
                    match &e {
                        rumqttc::ConnectionError::Tls(tls) => {
                            Metrics::add(&metrics.tls_failures, 1);
                            let reason = match tls {
                                rumqttc::TlsError::Io(io) => crate::tls::explain(io),
                                other => other.to_string(),
                            };
                            audit.record(AuditEvent::TlsFailure {
                                peer: "source:mqtt",
                                reason: &reason,
                            });
                        }
                        rumqttc::ConnectionError::ConnectionRefused(code) => {
                            audit.record(AuditEvent::ConnectionRefused {
                                endpoint: "source:mqtt",
                                direction: "outbound",
                                address: None,
                                reason: &format!("the broker refused the connection: {code:?}"),
                            });
                        }
                        _ => {}
                    }
                    let delay = Duration::from_millis(250u64.saturating_mul(1 << failures.min(7)))
                        .min(Duration::from_secs(30));
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "MQTT connection failed; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
        disconnect(client, eventloop).await;
    }
}

/// Best-effort clean disconnect, so the broker does not wait for a keep-alive timeout.
async fn disconnect(client: AsyncClient, mut eventloop: EventLoop) {
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Ok(event) = eventloop.poll().await {
                if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// Decodes, commits and — only then — acks one message.
async fn handle(
    publish: Publish,
    ingest: &Ingest,
    client: &AsyncClient,
    bindings: &Bindings,
    shutdown: &CancellationToken,
) {
    let received = OffsetDateTime::now_utc();
    let decoded = canonical::decode(&publish.payload, received, &|key| bindings.patient(key));
    loop {
        let result = match &decoded {
            Ok(readings) => ingest.commit(readings.clone()).await.map(|_| ()),
            Err(e) => ingest
                .reject(
                    format!("mqtt:{}", publish.topic),
                    e.to_string(),
                    publish.payload.to_vec(),
                )
                .await
                .map(|()| {
                    // The reason names fields only; the topic may name a device, not a patient.
                    tracing::warn!(
                        kind = error_kind(e),
                        "MQTT payload rejected and dead-lettered"
                    );
                }),
        };
        match result {
            Ok(()) => break,
            Err(CommitError::Closed) => return,
            Err(CommitError::Full { .. }) | Err(CommitError::Storage(_)) => {
                tokio::select! {
                    _ = tokio::time::sleep(COMMIT_RETRY) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
    if shutdown.is_cancelled() {
        // Stop acking once shutdown starts: the broker redelivers, the identifier dedupes.
        return;
    }
    if let Err(e) = client.ack(&publish).await {
        tracing::debug!(error = %e, "PUBACK not sent (connection closing); the broker will redeliver");
    }
}

fn error_kind(e: &canonical::DecodeError) -> &'static str {
    match e {
        canonical::DecodeError::Json(_) => "json",
        canonical::DecodeError::Field { .. } => "field",
    }
}
