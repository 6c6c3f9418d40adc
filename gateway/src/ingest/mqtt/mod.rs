//! The MQTT source: a rumqttc subscriber, QoS 1, persistent session, manual acks.
//!
//! Architecture invariant (acknowledge after durable): the PUBACK for a message is sent only
//! after the buffer transaction holding its readings — or, for a payload that does not decode,
//! its dead-letter row — has committed. Until then the broker keeps the message; after a crash
//! it redelivers it and the reading's identifier makes the second copy a no-op.
//!
//! # Three tasks, no cycle
//!
//! rumqttc does everything — reading publishes, writing PUBACKs, keep-alive — inside
//! `EventLoop::poll`, and a PUBACK queued with `AsyncClient::ack` waits for room in a bounded
//! request channel that only `poll` drains. So the source is split so that no task ever waits
//! on another that waits on it:
//!
//! ```text
//!  poll task ──publishes (bounded: MAX_MESSAGES_IN_PROGRESS)──► commit task ──► buffer
//!     ▲                                                             │
//!     └──── rumqttc request channel ◄── ack task ◄──acks (unbounded)┘
//! ```
//!
//! - The **poll task** owns the event loop. It waits for room in the publish channel, which
//!   is what bounds the gateway's memory: while the commit task is behind, the poll task stops
//!   reading, TCP backpressure reaches the broker and the broker keeps the messages (the
//!   broker's own in-flight limit is not relied on: mosquitto does not enforce
//!   `max_inflight_messages` on a fast subscriber's backlog).
//! - The **commit task** takes every publish waiting, decodes them and sends all their
//!   readings to the buffer in one request, at once, without waiting for the commit before:
//!   the writer's wait for company counts from when a request was sent, so a steady trickle
//!   of messages is committed `commit_linger_ms` after it came, in groups, not after the
//!   commit before it. Only while a large request (at least `pipeline::SMALL_GROUP`
//!   messages) is outstanding (full speed) does it wait for that answer, and send what
//!   gathered meanwhile as one. It hands the publishes of each committed request to the ack
//!   task, in the order they came. It never waits on the event loop.
//! - The **ack task** queues the PUBACKs ([`pubacks`]) and sends the first of a run into
//!   rumqttc, which wakes the poll task; the poll task writes the rest behind it, together.
//!   The ack task is the only one that waits for the poll task, and nothing waits for it.
//!
//! When the buffer is full the commit task holds its batches and retries; the publish channel
//! fills, the poll task stops reading, and backpressure reaches the publishers. Nothing is
//! dropped. The broker must keep an offline persistent session's queue without a limit
//! (mosquitto: `max_queued_messages 0`), see docs/mqtt.md.
//!
//! # Bad and oversized payloads never block the topic
//! A payload that does not decode is dead-lettered in the same commit as the good readings of
//! its batch, then acknowledged; the buffer keeps one row per distinct payload (by content
//! hash), so a broker redelivering it after a reconnect adds nothing. A payload larger than
//! `max_packet_bytes` is not decoded at all: its first bytes, size and SHA-256 are
//! dead-lettered. The client accepts packets up to MQTT's own limit (256 MiB), so no message
//! the broker delivers can make the connection fail and the broker resend it forever; to
//! bound the gateway's memory, make the *broker* refuse large messages at publish time
//! (mosquitto: `message_size_limit`, see docs/mqtt.md).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS, TlsConfiguration,
    Transport,
};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Bindings, SourceContext};
use crate::backoff::Backoff;
use crate::config::MqttSourceConfig;
use crate::error_chain::Chain;
use crate::limits;
use crate::ops::audit::{Audit, Event as AuditEvent};
use crate::ops::metrics::Metrics;
use crate::pipeline::{CommitError, Ingest, Rejected, SMALL_GROUP};
use crate::profile::canonical;
use crate::profile::json::{ProfileSet, SharedProfiles};
use pubacks::{AckId, Connections, PubAcks};

mod pubacks;

/// Messages received and not yet committed: the capacity of the channel from the poll task
/// to the commit task. When it is full the poll task stops reading from the broker. Also the
/// most messages the commit task has sent to the buffer and not had answered.
const MAX_MESSAGES_IN_PROGRESS: usize = 512;

/// Capacity of rumqttc's request channel: the subscriptions and, one at a time, the wake of
/// the PUBACK queue ([`pubacks`]) travel through it.
const REQUEST_CHANNEL_CAPACITY: usize = 4096;

/// How long shutdown waits for the acknowledgements of what was committed to go out.
const ACK_DRAIN: Duration = Duration::from_secs(3);

/// How long shutdown waits, after the DISCONNECT, for the broker to close the connection.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

/// Delay before retrying a commit the buffer refused (full or failing).
const COMMIT_RETRY: Duration = Duration::from_millis(250);

/// The ceiling of the first delay before reconnecting to the broker; it doubles per
/// consecutive failure up to [`RECONNECT_MAX`] (see [`crate::backoff`]).
const RECONNECT_INITIAL: Duration = Duration::from_millis(500);
/// The largest delay before reconnecting to the broker.
const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// The largest packet MQTT can carry (a 4-byte remaining length, plus the fixed header):
/// what the client accepts, so that no packet the broker sends can fail the connection.
const MQTT_MAX_PACKET: usize = 268_435_455 + 5;

/// Why the source could not start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The URL is not a URL.
    #[error("sources.mqtt.url is not a URL")]
    Url(#[source] url::ParseError),
    /// The URL names no host.
    #[error("sources.mqtt.url has no host")]
    NoHost,
    /// `mqtts://` without the TLS files.
    #[error("sources.mqtt.url: mqtts:// needs [sources.mqtt.tls]")]
    NoTls,
    /// The TLS files of `[sources.mqtt.tls]` cannot be used.
    #[error("sources.mqtt.tls")]
    Tls(#[source] crate::tls::TlsError),
}

/// Everything the source needs besides the config.
pub struct MqttSource {
    /// Parsed broker options.
    options: MqttOptions,
    /// What to subscribe to and take.
    subscription: Subscription,
    /// Whether a payload's `patient` is used (`trust_payload_patient`); when not, it is
    /// ignored and the bindings apply.
    trust_payload_patient: bool,
    /// The vendor JSON profiles in use (a pack reload replaces them while the source runs).
    profiles: SharedProfiles,
    /// How long a message may wait in the buffer writer for company (`commit_linger_ms`).
    commit_linger: Duration,
}

/// What the poll task subscribes to and takes.
struct Subscription {
    /// Topic filters.
    topics: Vec<String>,
    /// Payloads larger than this are dead-lettered without being decoded.
    max_payload: usize,
}

impl MqttSource {
    /// Prepares options from config (TLS files are read here; `tls` is required for
    /// `mqtts://`). The client id defaults to `vitalbridge-<gateway id>`.
    pub fn new(
        config: &MqttSourceConfig,
        gateway_id: &str,
        profiles: SharedProfiles,
    ) -> Result<Self, MqttError> {
        let tls = match &config.tls {
            Some(t) => {
                let identity = t.cert.as_deref().zip(t.key.as_deref());
                Some(
                    crate::tls::client_config_with_crls(&t.ca, &t.crls, identity)
                        .map_err(MqttError::Tls)?,
                )
            }
            None => None,
        };
        let client_id = config
            .client_id
            .clone()
            .unwrap_or_else(|| format!("vitalbridge-{gateway_id}"));
        let url = url::Url::parse(&config.url).map_err(MqttError::Url)?;
        let host = url.host_str().ok_or(MqttError::NoHost)?.to_owned();
        let secure = url.scheme() == "mqtts";
        let port = url.port().unwrap_or(if secure { 8883 } else { 1883 });
        let mut options = MqttOptions::new(client_id, host, port);
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(config.keep_alive_s))
            .set_max_packet_size(MQTT_MAX_PACKET, config.max_packet_bytes)
            .set_request_channel_capacity(REQUEST_CHANNEL_CAPACITY);
        if secure {
            let tls = tls.ok_or(MqttError::NoTls)?;
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        }
        Ok(Self {
            options,
            subscription: Subscription {
                topics: config.topics.clone(),
                max_payload: config.max_packet_bytes,
            },
            trust_payload_patient: false,
            profiles,
            commit_linger: Duration::from_millis(config.commit_linger_ms),
        })
    }

    /// The same source, trusting a payload's `patient` field or not.
    pub fn trusting_payload_patient(self, trust: bool) -> Self {
        Self {
            trust_payload_patient: trust,
            ..self
        }
    }

    /// Runs until `shutdown`: connects, reconnects with backoff, and stores every message.
    pub async fn run(self, ctx: SourceContext) {
        let SourceContext {
            ingest,
            bindings,
            metrics,
            audit,
            shutdown,
        } = ctx;
        let (client, eventloop) = AsyncClient::new(self.options, REQUEST_CHANNEL_CAPACITY);
        let (publish_tx, publish_rx) = mpsc::channel(MAX_MESSAGES_IN_PROGRESS);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let committer = tokio::spawn(commit_task(
            publish_rx,
            ack_tx,
            Patients {
                bindings,
                trust: self.trust_payload_patient,
                audit: audit.clone(),
            },
            ingest.with_linger(self.commit_linger),
            self.profiles,
            shutdown.clone(),
        ));
        let pubacks = PubAcks::default();
        let acker = tokio::spawn(ack_task(ack_rx, pubacks.clone(), client.clone()));
        let eventloop = poll_task(
            eventloop,
            &client,
            &self.subscription,
            Handoff {
                publishes: publish_tx,
                pubacks: pubacks.clone(),
            },
            &metrics,
            &audit,
            &shutdown,
        )
        .await;
        // The poll task returns on shutdown; the commit task finishes its batch and ends, and
        // the acknowledgements of everything committed go out before the DISCONNECT.
        let eventloop = drain_acks(eventloop, &pubacks, committer, acker).await;
        disconnect(eventloop).await;
    }
}

/// Owns the event loop: connects, reconnects with backoff, subscribes, hands every
/// publish to the commit task, and writes the PUBACKs queued behind each wake ([`pubacks`]).
/// Returns the event loop on shutdown.
async fn poll_task(
    mut eventloop: EventLoop,
    client: &AsyncClient,
    subscription: &Subscription,
    handoff: Handoff,
    metrics: &Metrics,
    audit: &Audit,
    shutdown: &CancellationToken,
) -> EventLoop {
    let Handoff {
        publishes: publish_tx,
        pubacks,
    } = handoff;
    let mut backoff = Backoff::new(RECONNECT_INITIAL, RECONNECT_MAX);
    let mut connections = Connections::new(pubacks.clone());
    loop {
        let connecting = eventloop.network.is_none();
        // Only shutdown may cancel `poll()`: rumqttc's poll is not cancel-safe (an ack
        // taken from its queue could be lost), and after shutdown that no longer matters.
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = shutdown.cancelled() => return eventloop,
        };
        // Outside the select, so that shutdown cannot cut a write of PUBACKs short (it is
        // bounded by the network timeout).
        let event = match event.as_ref().map(ack_written) {
            Ok(Some(pkid)) => pubacks.write_behind(pkid, &mut eventloop).await.and(event),
            _ => event,
        };
        let event = event.map(|e| (connections.came_on(connecting), e));
        match event {
            Ok((_, Event::Incoming(Packet::ConnAck(ack)))) => {
                backoff.reset();
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to MQTT broker"
                );
                for topic in &subscription.topics {
                    if let Err(e) = client.try_subscribe(topic.clone(), QoS::AtLeastOnce) {
                        tracing::error!(error = %Chain(&e), "cannot queue MQTT subscribe");
                    }
                }
            }
            Ok((_, Event::Incoming(Packet::SubAck(ack)))) => {
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
                    tracing::info!(
                        topics = subscription.topics.len(),
                        "subscribed to MQTT topics"
                    );
                }
            }
            Ok((came_on, Event::Incoming(Packet::Publish(publish)))) => {
                let message = Message::of(publish, subscription.max_payload, came_on);
                // Waits while the commit task is MAX_MESSAGES_IN_PROGRESS behind: this is
                // the backpressure. The commit task never waits on this loop, so this ends.
                tokio::select! {
                    sent = publish_tx.send(message) => {
                        if sent.is_err() {
                            return eventloop;
                        }
                    }
                    _ = shutdown.cancelled() => return eventloop,
                }
            }
            Ok(_) => {}
            Err(e) => {
                connections.lost(&mut eventloop);
                match &e {
                    rumqttc::ConnectionError::Tls(tls) => {
                        let (cause, reason) = match tls {
                            rumqttc::TlsError::Io(io) => {
                                (crate::tls::io_cause_label(io), crate::tls::explain(io))
                            }
                            other => ("other", other.to_string()),
                        };
                        metrics.tls_failed("source:mqtt", cause);
                        audit.record(AuditEvent::TlsFailure {
                            peer: "source:mqtt",
                            cause,
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
                let delay = backoff.next_delay();
                tracing::warn!(error = %Chain(&e), retry_in_ms = delay.as_millis() as u64, "MQTT connection failed; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return eventloop,
                }
            }
        }
    }
}

/// Where the poll task hands its work on: publishes to the commit task, and the PUBACKs
/// queued behind each wake to the connection.
struct Handoff {
    publishes: mpsc::Sender<Message>,
    pubacks: PubAcks,
}

/// The packet id of an acknowledgement rumqttc reports written: perhaps a wake, whose
/// queue the poll task writes next ([`PubAcks::write_behind`]).
fn ack_written(event: &Event) -> Option<u16> {
    match event {
        Event::Outgoing(Outgoing::PubAck(pkid) | Outgoing::PubRec(pkid)) => Some(*pkid),
        _ => None,
    }
}

/// Queues the PUBACKs of publishes whose readings are durable, and sends the first of each
/// run into rumqttc ([`pubacks`]). The only task that waits for the poll task (or, at
/// shutdown, [`drain_acks`]); nothing waits for it. It ends when the commit task has ended and
/// every PUBACK is queued.
async fn ack_task(
    mut acks: mpsc::UnboundedReceiver<Vec<AckId>>,
    pubacks: PubAcks,
    client: AsyncClient,
) {
    while let Some(done) = acks.recv().await {
        let try_send = |wake: AckId| client.try_ack(&ack_of(wake)).is_ok();
        let Some(wake) = pubacks.push(done, try_send) else {
            continue;
        };
        // rumqttc's channel was full (or closed): wait for room.
        if let Err(e) = client.ack(&ack_of(wake)).await {
            // The event loop is gone (shutdown took longer than ACK_DRAIN).
            tracing::debug!(error = %Chain(&e), "PUBACK not sent (connection closed); the broker will redeliver");
            return;
        }
    }
}

/// What rumqttc needs to build a PUBACK: the packet id and QoS, in a publish.
fn ack_of(wake: AckId) -> Publish {
    let mut publish = Publish::new(String::new(), wake.qos, Vec::new());
    publish.pkid = wake.pkid;
    publish
}

/// At shutdown: keeps the event loop turning until the commit task has finished its batch
/// and every PUBACK of what it committed is sent (at most [`ACK_DRAIN`]), so the broker
/// redelivers only what was never stored. Publishes arriving meanwhile are not taken: they
/// are not acknowledged, and the broker keeps them for the next session.
async fn drain_acks(
    mut eventloop: EventLoop,
    pubacks: &PubAcks,
    committer: tokio::task::JoinHandle<()>,
    mut acker: tokio::task::JoinHandle<()>,
) -> EventLoop {
    let deadline = tokio::time::sleep(ACK_DRAIN);
    tokio::pin!(deadline);
    let cut_short = || {
        tracing::warn!("MQTT: not every acknowledgement went out before the stop; the broker redelivers those (stored once)")
    };
    let mut queued = false;
    // Until every PUBACK is queued (the ack task has ended) and written (no wake outstanding).
    while !(queued && pubacks.idle()) {
        let event = tokio::select! {
            _ = &mut acker, if !queued => {
                queued = true;
                continue;
            }
            _ = &mut deadline => {
                cut_short();
                break;
            }
            event = eventloop.poll() => event,
        };
        // Outside the select, so that the ack task ending cannot cut the write short.
        let written = match event.map(|e| ack_written(&e)) {
            Ok(Some(pkid)) => tokio::select! {
                written = pubacks.write_behind(pkid, &mut eventloop) => written,
                _ = &mut deadline => {
                    cut_short();
                    break;
                }
            },
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if written.is_err() {
            break;
        }
    }
    drop(committer);
    eventloop
}

/// Sends every publish waiting to the buffer at once (see [`commit_batch`]), without waiting
/// for the batches before it to be answered — except while one of at least [`SMALL_GROUP`]
/// messages is outstanding: then it waits for that answer and sends what gathered meanwhile
/// as one batch. It hands the ack task each batch's publishes once they are durable, in the
/// order they came (MQTT wants PUBACKs in that order). The messages sent and not yet
/// answered, with those waiting in the publish channel, are at most twice
/// [`MAX_MESSAGES_IN_PROGRESS`].
async fn commit_task(
    mut publishes: mpsc::Receiver<Message>,
    acks: mpsc::UnboundedSender<Vec<AckId>>,
    patients: Patients,
    ingest: Ingest,
    profiles: SharedProfiles,
    shutdown: CancellationToken,
) {
    let mut outstanding = FuturesOrdered::new();
    let mut in_progress = 0;
    // Outstanding requests of at least SMALL_GROUP messages.
    let mut large_outstanding = 0;
    let mut batch = Vec::new();
    // Only fails once the ack task has ended (shutdown): the broker redelivers.
    let send_acks = |done: Vec<AckId>| _ = acks.send(done);
    loop {
        let room = MAX_MESSAGES_IN_PROGRESS - in_progress;
        // Small requests go at once, to join the group the writer is gathering. While one
        // large enough to be committed without waiting is outstanding (a burst, full speed),
        // the writer is busy with it: what gathers meanwhile goes as one request after it.
        let eager = large_outstanding == 0;
        tokio::select! {
            received = publishes.recv_many(&mut batch, room), if room > 0 && eager => {
                if received == 0 {
                    break; // the poll task ended
                }
                in_progress += received;
                if received >= SMALL_GROUP {
                    large_outstanding += 1;
                }
                // The profile set is taken once per batch and kept across its retries: every
                // message is decoded by one set, even when a reload swaps the set meanwhile.
                let source = Source {
                    ingest: &ingest,
                    patients: &patients,
                    profiles: profiles.current(),
                    shutdown: &shutdown,
                };
                outstanding.push_back(commit_batch(std::mem::take(&mut batch), source));
            }
            Some(done) = outstanding.next() => {
                let Some(done) = done else {
                    return; // shutdown or the buffer closed: the rest is not acked
                };
                in_progress -= done.len();
                if done.len() >= SMALL_GROUP {
                    large_outstanding -= 1;
                }
                send_acks(done);
            }
            _ = shutdown.cancelled() => break,
        }
    }
    // What was sent is answered (or given up at shutdown) before the acks are drained.
    while let Some(Some(done)) = outstanding.next().await {
        send_acks(done);
    }
}

/// A received message, as the commit task needs it.
struct Message {
    /// What its PUBACK needs.
    ack: AckId,
    /// Its topic, bounded ([`bounded_topic`]); `mqtt:<topic>` is its dead-letter origin,
    /// written only for a dead letter.
    topic: String,
    /// The payload, or for one over the limit, what is kept of it.
    payload: Payload,
}

enum Payload {
    /// A payload to decode.
    Bytes(Bytes),
    /// A payload over `max_packet_bytes`, already made a dead letter.
    Oversized(Rejected),
}

impl Message {
    /// `publish`, received on `connection` ([`PubAcks::connection`]).
    fn of(publish: Publish, max_payload: usize, connection: u64) -> Self {
        let topic = bounded_topic(publish.topic);
        let ack = AckId {
            qos: publish.qos,
            pkid: publish.pkid,
            connection,
        };
        let payload = if publish.payload.len() > max_payload {
            tracing::warn!(
                bytes = publish.payload.len(),
                max_packet_bytes = max_payload,
                "MQTT payload larger than sources.mqtt.max_packet_bytes: dead-lettered without decoding"
            );
            Payload::Oversized(Rejected::new(
                origin(&topic),
                format!(
                    "payload of {} bytes is larger than sources.mqtt.max_packet_bytes ({max_payload}); \
                     kept: its first bytes, size and SHA-256",
                    publish.payload.len()
                ),
                &publish.payload,
            ))
        } else {
            // The payload is a slice of rumqttc's read buffer, and keeps that whole buffer
            // allocated while it waits: copy it out so a backlog costs only its own bytes.
            Payload::Bytes(Bytes::copy_from_slice(&publish.payload))
        };
        Self {
            ack,
            topic,
            payload,
        }
    }
}

/// Whose readings are whose: the bindings, and whether a payload's patient is trusted.
struct Patients {
    bindings: Bindings,
    trust: bool,
    /// Where each use of a payload's patient is recorded.
    audit: Audit,
}

/// What the commit task works with, for one batch.
struct Source<'a> {
    ingest: &'a Ingest,
    patients: &'a Patients,
    profiles: Arc<ProfileSet>,
    shutdown: &'a CancellationToken,
}

/// Stores a batch of messages and hands each to `acks` once what it carried is durable: the
/// readings of the good ones and the dead letters of the bad ones go in one commit. When the
/// buffer refuses a group as full, the group is halved (down to one message) so that what
/// fits goes in, and a single message that does not fit waits and retries: backpressure,
/// never a drop. Returns what the batch's PUBACKs need, or `None` if shutdown or a closed
/// buffer came first.
async fn commit_batch(messages: Vec<Message>, source: Source<'_>) -> Option<Vec<AckId>> {
    // One receive time for the batch, kept across retries: a reading without a device clock
    // is identified by it, so a retry must not change it.
    let received = OffsetDateTime::now_utc();
    let source = &source;
    let mut bad = 0;
    let mut start = 0;
    let mut group = messages.len();
    while start < messages.len() {
        let end = (start + group).min(messages.len());
        // Decoded afresh for each attempt, rather than keeping a copy of every batch for the
        // rare retry.
        let mut readings = Vec::new();
        let mut rejected = Vec::new();
        let mut trusted = 0;
        for m in &messages[start..end] {
            match decode(m, received, source) {
                Ok(d) => {
                    trusted += d.payload_patients;
                    readings.extend(d.readings);
                }
                Err(r) => rejected.push(r),
            }
        }
        let n_rejected = rejected.len();
        match source.ingest.store(readings, rejected).await {
            Ok(_) => {
                bad += n_rejected;
                if trusted > 0 {
                    source
                        .patients
                        .audit
                        .record(AuditEvent::PayloadPatientTrusted {
                            source: source.ingest.source(),
                            readings: trusted,
                        });
                }
                start = end;
                group = messages.len() - start;
            }
            Err(CommitError::Closed) => return None,
            Err(CommitError::Full { .. }) if end - start > 1 => group = (end - start) / 2,
            Err(_) => {
                if !pause(source.shutdown).await {
                    return None;
                }
            }
        }
    }
    if bad > 0 {
        // The reasons name fields only; the topic may name a device, not a patient.
        tracing::warn!(payloads = bad, "MQTT payloads rejected and dead-lettered");
    }
    Some(messages.iter().map(|m| m.ack).collect())
}

/// The readings of a message, or the dead letter it becomes.
fn decode(
    m: &Message,
    received: OffsetDateTime,
    source: &Source<'_>,
) -> Result<canonical::Decoded, Rejected> {
    let patients = source.patients;
    let binding = |key: &str, user| patients.bindings.patient_for(key, user);
    match &m.payload {
        Payload::Bytes(bytes) => {
            // A vendor profile whose topics match takes the message; else the canonical format.
            match source.profiles.decode(&m.topic, bytes, received, &binding) {
                Some(decoded) => decoded
                    .map(|readings| canonical::Decoded {
                        readings,
                        payload_patients: 0,
                    })
                    .map_err(|e| e.to_string()),
                None => canonical::decode_with(bytes, received, &binding, patients.trust)
                    .map_err(|e| e.to_string()),
            }
            .map_err(|reason| Rejected::new(origin(&m.topic), reason, bytes))
        }
        Payload::Oversized(r) => Err(r.clone()),
    }
}

/// A topic as a dead-letter origin: at most [`limits::MAX_TOPIC_LEN`] bytes (a publisher
/// chooses it; MQTT allows 64 KiB), cut at a character boundary and marked when cut.
fn bounded_topic(topic: String) -> String {
    if topic.len() <= limits::MAX_TOPIC_LEN {
        return topic;
    }
    let mut end = limits::MAX_TOPIC_LEN;
    while !topic.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &topic[..end])
}

/// A message's dead-letter origin: `mqtt:<topic>`.
fn origin(topic: &str) -> String {
    format!("mqtt:{topic}")
}

/// Waits [`COMMIT_RETRY`]; `false` if shutdown came first.
async fn pause(shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(COMMIT_RETRY) => true,
        _ = shutdown.cancelled() => false,
    }
}

/// Ends the session cleanly, so the broker does not wait for a keep-alive timeout, and
/// without a TCP reset. The broker keeps sending publishes until it reads the DISCONNECT,
/// and a socket closed with unread bytes sends a reset, on which a broker may drop what it
/// has not read yet — mosquitto does: the last PUBACKs, written just before, would be lost
/// and their messages sent again. So the DISCONNECT is written straight to the connection
/// (through rumqttc's channel it would wait behind every publish already read), and what
/// comes after it is read and dropped until the broker closes the connection, at most
/// [`DISCONNECT_WAIT`].
async fn disconnect(mut eventloop: EventLoop) {
    let Some(network) = eventloop.network.as_mut() else {
        return; // no connection
    };
    let closing = async {
        network.write(Packet::Disconnect).await?;
        network.flush().await?;
        loop {
            // Fails once the broker has closed the connection.
            network.read().await?;
        }
    };
    let ended: Result<Result<std::convert::Infallible, rumqttc::StateError>, _> =
        tokio::time::timeout(DISCONNECT_WAIT, closing).await;
    if ended.is_err() {
        tracing::debug!("the MQTT broker did not close the connection after DISCONNECT");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Committed, Request};

    fn message(pkid: u16) -> Message {
        let payload = format!(
            r#"{{"device": {{"id": "A1B2C3D4E5F6", "id_type": "bluetooth"}},
                "time": "2026-11-25T08:30:00Z", "metric": "spo2", "value": 97, "unit": "%", "seq": {pkid}}}"#
        );
        let mut publish = Publish::new("vitals/a", QoS::AtLeastOnce, payload.into_bytes());
        publish.pkid = pkid;
        Message::of(publish, 1 << 16, 0)
    }

    /// The commit task over `publishes`, sending to the buffer over `buffer`.
    fn spawn_commit_task(
        publishes: mpsc::Receiver<Message>,
        acks: mpsc::UnboundedSender<Vec<AckId>>,
        buffer: mpsc::Sender<Request>,
        shutdown: &CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let patients = Patients {
            bindings: Bindings::default(),
            trust: true,
            audit: Audit::default(),
        };
        let ingest = Ingest::new(buffer, "mqtt");
        let profiles = SharedProfiles::default();
        tokio::spawn(commit_task(
            publishes,
            acks,
            patients,
            ingest,
            profiles,
            shutdown.clone(),
        ))
    }

    /// The next commit request the buffer gets: its number of readings, and its reply.
    async fn next_commit(
        buffer: &mut crate::pipeline::IngestRx,
    ) -> (
        usize,
        tokio::sync::oneshot::Sender<Result<Committed, CommitError>>,
    ) {
        match tokio::time::timeout(Duration::from_secs(10), buffer.recv()).await {
            Ok(Some(Request::Commit {
                readings, reply, ..
            })) => (readings.len(), reply),
            _ => panic!("no commit request"),
        }
    }

    /// The packet ids of the next `n` publishes the commit task hands over as durable, in
    /// the order it hands them over (in runs of any length).
    async fn acked(acks: &mut mpsc::UnboundedReceiver<Vec<AckId>>, n: usize) -> Vec<u16> {
        let mut acked = Vec::new();
        while acked.len() < n {
            acked.extend(acks.recv().await.unwrap().into_iter().map(|a| a.pkid));
        }
        acked
    }

    #[tokio::test]
    async fn batches_go_to_the_buffer_at_once_and_are_acknowledged_in_the_order_they_came() {
        let (tx, mut buffer) = crate::pipeline::channel();
        let (publish_tx, publish_rx) = mpsc::channel(MAX_MESSAGES_IN_PROGRESS);
        let (ack_tx, mut acks) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let task = spawn_commit_task(publish_rx, ack_tx, tx, &shutdown);
        let mut replies = Vec::new();
        for pkid in [1, 2, 3] {
            publish_tx.send(message(pkid)).await.unwrap();
            // Each is sent to the buffer while those before it are still unanswered.
            let (n, reply) = next_commit(&mut buffer).await;
            assert_eq!(n, 1);
            replies.push(reply);
        }
        // The buffer answers the last first: nothing may be acknowledged before the first.
        let first = replies.remove(0);
        for reply in replies {
            reply.send(Ok(Committed { readings: 1 })).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            acks.try_recv().is_err(),
            "acknowledged ahead of an earlier message"
        );
        first.send(Ok(Committed { readings: 1 })).unwrap();
        assert_eq!(acked(&mut acks, 3).await, [1, 2, 3]);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_burst_waits_for_its_answer_and_what_came_meanwhile_goes_as_one_request() {
        let (tx, mut buffer) = crate::pipeline::channel();
        let (publish_tx, publish_rx) = mpsc::channel(MAX_MESSAGES_IN_PROGRESS);
        let (ack_tx, mut acks) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        for pkid in 1..=SMALL_GROUP as u16 {
            publish_tx.send(message(pkid)).await.unwrap();
        }
        let task = spawn_commit_task(publish_rx, ack_tx, tx, &shutdown);
        let (n, reply) = next_commit(&mut buffer).await;
        assert_eq!(n, SMALL_GROUP);
        for pkid in [100, 101] {
            publish_tx.send(message(pkid)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            buffer.try_recv().is_err(),
            "sent more while a group's worth was outstanding"
        );
        reply.send(Ok(Committed { readings: n })).unwrap();
        let (n, reply) = next_commit(&mut buffer).await;
        assert_eq!(n, 2, "what came meanwhile, as one request");
        reply.send(Ok(Committed { readings: n })).unwrap();
        acked(&mut acks, SMALL_GROUP + 2).await;
        shutdown.cancel();
        task.await.unwrap();
    }

    #[test]
    fn a_long_topic_is_cut_to_the_limit_at_a_character_boundary() {
        assert_eq!(bounded_topic("vitals/a".into()), "vitals/a");
        let long = "é".repeat(limits::MAX_TOPIC_LEN);
        let cut = bounded_topic(long);
        assert!(cut.ends_with('…'));
        assert!(cut.len() <= limits::MAX_TOPIC_LEN + '…'.len_utf8());
        assert!(cut.trim_end_matches('…').chars().all(|c| c == 'é'));
    }
}
