//! The MQTT uplink: FHIR R4 JSON published to a broker at QoS 1 over MQTT 5, with (mutual)
//! TLS and a persistent session.
//!
//! # One connection, a window of publishes, a PUBACK per row
//!
//! ```text
//!  batcher workers ──Job (bounded: JOB_QUEUE)──► connection task ──PUBLISH pkid n──► broker
//!        ▲                                             │  ◄──────PUBACK pkid n, reason──┘
//!        └──────────── one answer per message ◄────────┘
//! ```
//!
//! The connection task owns the one long-lived connection of the destination (client id
//! stable, `Clean Start` off, a session expiry) and is the only one that talks to the broker.
//! It gives each message a packet id from a window of `max_in_flight` (lowered to the
//! broker's `Receive Maximum`) and answers a message only from the PUBACK that carries *its*
//! packet id: handing a message to the socket is not an acknowledgement. The packets are
//! encoded and decoded with rumqttc's MQTT 5 codec (`rumqttc::v5::mqttbytes`); the
//! connection, the window and the matching are here, because rumqttc's event loop assigns
//! packet ids itself and does not say which request got which.
//!
//! Architecture invariant (delete after acknowledged): a row is reported
//! [`Outcome::Delivered`] only when every message carrying it got a PUBACK with reason
//! `Success` or `No matching subscribers` from the current connection. A lost connection
//! answers every message still waiting as not delivered (the batcher retries them with its
//! backoff, and the next batch reconnects); a message the broker may already have taken is
//! then published again: QoS 1 allows duplicates, and every Observation carries its
//! identifier so consumers drop them (docs/streams.md).
//!
//! # Refusals
//! - The broker refuses the connection (CONNACK reason: bad credentials, not authorized,
//!   banned) or the TLS handshake (client certificate refused): the batch fails, the
//!   destination turns not-ready, the audit log gets `connection_refused` / `tls_failure`.
//! - A PUBACK with `Not authorized` (ACL), `Quota exceeded` or an unspecified error: the rows
//!   stay queued and are retried; the destination turns not-ready and it is audited. Fixing the
//!   ACL lets them flow with no one retrying anything by hand.
//! - A message the broker can never take (`Packet too large`, larger than the broker's
//!   `Maximum Packet Size`, `Topic name invalid`, `Payload format invalid`): its rows are
//!   dead-lettered with the reason (audited; `retry-dead-letters --destination mqtt`).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::v5::mqttbytes::v5::{
    check, ConnAck, Connect, ConnectProperties, ConnectReturnCode, Disconnect,
    DisconnectReasonCode, Packet, PingReq, Publish, PublishProperties,
};
use rumqttc::v5::mqttbytes::QoS;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::streamed::{DeviceRefs, Renderer};
use super::{Cause, Outcome, Refusal, SendError, Transport, UplinkContext};
use crate::config::{MqttUplinkConfig, StreamPayload};
use crate::fhir::Gateway;
use crate::model::Reading;
use crate::ops::audit::{Audit, Event};

/// Batches waiting for the connection task: each uplink worker has at most one outstanding.
const JOB_QUEUE: usize = 64;
/// The largest packet the gateway accepts from the broker (it receives only acks).
const MAX_INCOMING_PACKET: u32 = 64 * 1024;
/// How often the connection task checks keep-alive and overdue acknowledgements.
const TICK: Duration = Duration::from_millis(500);
/// The content type of every message.
pub const CONTENT_TYPE: &str = "application/fhir+json; fhirVersion=4.0";

/// Why the MQTT uplink cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MqttSetupError {
    /// The URL or topic template is unusable (validate() reports these first).
    #[error("uplink.mqtt: {0}")]
    Config(String),
    /// The TLS files cannot be used.
    #[error("uplink.mqtt.tls")]
    Tls(#[source] crate::tls::TlsError),
}

/// Where refusals are reported: set when the workers start.
struct Hooks {
    audit: Audit,
}

/// Publishes readings to an MQTT broker.
pub struct MqttTransport {
    /// To the connection task.
    jobs: mpsc::Sender<Job>,
    /// Topics and payloads.
    renderer: Renderer,
    /// One Observation per message, or a Bundle per batch and topic.
    payload: StreamPayload,
    /// How long a batch waits for its acknowledgements.
    timeout: Duration,
    /// Audit and metrics, shared with the connection task.
    hooks: Arc<OnceLock<Hooks>>,
}

/// One batch for the connection task.
struct Job {
    messages: Vec<Message>,
    /// One answer per message, in order.
    reply: oneshot::Sender<Vec<Answer>>,
}

/// One message to publish.
struct Message {
    topic: String,
    payload: Bytes,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// PUBACK `Success` or `No matching subscribers`.
    Acked,
    /// The broker refused it: for good (`permanent`) or for now.
    Refused { reason: String, permanent: bool },
    /// No PUBACK: the connection could not be made or was lost.
    Lost { reason: String, cause: Cause },
}

/// Connection settings.
#[derive(Clone)]
struct Options {
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    client_id: String,
    keep_alive: Duration,
    session_expiry_s: u32,
    max_in_flight: u16,
    timeout: Duration,
    /// MQTT 5 properties of every message (content type, expiry, schema).
    properties: PublishProperties,
}

impl MqttTransport {
    /// Reads the TLS files and starts the connection task (which connects at the first batch).
    pub fn new(config: &MqttUplinkConfig, gateway: Gateway) -> Result<Self, MqttSetupError> {
        let url =
            url::Url::parse(&config.url).map_err(|e| MqttSetupError::Config(e.to_string()))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| MqttSetupError::Config("the URL has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let secure = url.scheme() == "mqtts";
        let tls = match (&config.tls, secure) {
            (Some(t), true) => {
                let identity = t.cert.as_deref().zip(t.key.as_deref());
                Some(
                    crate::tls::client_config_with_crls(&t.ca, &t.crls, identity)
                        .map_err(MqttSetupError::Tls)?,
                )
            }
            (None, true) => {
                return Err(MqttSetupError::Config(
                    "mqtts:// needs [uplink.mqtt.tls]".into(),
                ))
            }
            (_, false) => None,
        };
        let topic = crate::config::parse_topic_template(&config.topic)
            .map_err(|e| MqttSetupError::Config(format!("topic: {e}")))?;
        let timeout = Duration::from_secs(config.timeout_s);
        let options = Options {
            port: url.port().unwrap_or(if secure { 8883 } else { 1883 }),
            host,
            tls,
            client_id: config
                .client_id
                .clone()
                .unwrap_or_else(|| format!("vitalbridge-{}-uplink", gateway.id)),
            keep_alive: Duration::from_secs(config.keep_alive_s.into()),
            session_expiry_s: config.session_expiry_s,
            max_in_flight: config.max_in_flight.max(1),
            timeout,
            properties: PublishProperties::default(),
        };
        let schema = match config.payload {
            StreamPayload::Observation => "http://hl7.org/fhir/StructureDefinition/Observation",
            StreamPayload::Bundle => "http://hl7.org/fhir/StructureDefinition/Bundle",
        };
        let mut options = options;
        options.properties = PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: config.message_expiry_s,
            content_type: Some(CONTENT_TYPE.to_owned()),
            user_properties: vec![
                ("schema".to_owned(), schema.to_owned()),
                ("gateway".to_owned(), gateway.id.clone()),
            ],
            ..Default::default()
        };
        let hooks = Arc::new(OnceLock::new());
        let (jobs, rx) = mpsc::channel(JOB_QUEUE);
        tokio::spawn(connection_task(rx, options, hooks.clone()));
        Ok(Self {
            jobs,
            renderer: Renderer::new(gateway, topic),
            payload: config.payload,
            timeout,
            hooks,
        })
    }

    /// The messages of a batch, and for each the indexes of the rows it carries.
    fn messages(&self, rows: &[(i64, &Reading)]) -> (Vec<Message>, Vec<Vec<usize>>) {
        let mut messages = Vec::new();
        let mut carried = Vec::new();
        match self.payload {
            StreamPayload::Observation => {
                let mut devices = DeviceRefs::default();
                for (i, (_, r)) in rows.iter().enumerate() {
                    messages.push(Message {
                        topic: self.renderer.topic(r),
                        payload: self.renderer.observation(r, &mut devices).into(),
                    });
                    carried.push(vec![i]);
                }
            }
            StreamPayload::Bundle => {
                let mut topics: Vec<(String, Vec<usize>)> = Vec::new();
                for (i, (_, r)) in rows.iter().enumerate() {
                    let topic = self.renderer.topic(r);
                    match topics.iter_mut().find(|(t, _)| *t == topic) {
                        Some((_, rows)) => rows.push(i),
                        None => topics.push((topic, vec![i])),
                    }
                }
                for (topic, indexes) in topics {
                    let group: Vec<(i64, &Reading)> = indexes.iter().map(|&i| rows[i]).collect();
                    messages.push(Message {
                        topic,
                        payload: self.renderer.bundle(&group).into(),
                    });
                    carried.push(indexes);
                }
            }
        }
        (messages, carried)
    }

    fn hooks(&self) -> Option<&Hooks> {
        self.hooks.get()
    }
}

/// Per-row outcomes from per-message answers; a row carried by a refused or lost message is
/// not delivered.
fn outcomes(
    rows: usize,
    carried: &[Vec<usize>],
    answers: &[Answer],
) -> Result<Vec<Outcome>, SendError> {
    let delivered_any = answers.contains(&Answer::Acked);
    if !delivered_any {
        // Nothing went through: a failure of the destination (not-ready, backoff).
        let refused_for_now = answers.iter().find_map(|a| match a {
            Answer::Refused {
                reason,
                permanent: false,
            } => Some(reason.clone()),
            _ => None,
        });
        let lost = answers.iter().find_map(|a| match a {
            Answer::Lost { reason, cause } => Some((reason.clone(), *cause)),
            _ => None,
        });
        if let Some((reason, cause)) = refused_for_now.map(|r| (r, Cause::Other)).or(lost) {
            return Err(SendError::Transient {
                reason,
                retry_after: None,
                cause,
            });
        }
    }
    let mut out = vec![Outcome::Delivered; rows];
    for (indexes, answer) in carried.iter().zip(answers) {
        let outcome = match answer {
            Answer::Acked => continue,
            Answer::Refused {
                reason,
                permanent: true,
            } => Outcome::Rejected(Refusal::new(None, reason.clone())),
            Answer::Refused { reason, .. } | Answer::Lost { reason, .. } => {
                Outcome::Retry(reason.clone())
            }
        };
        for &i in indexes {
            // A row in two messages (never today) keeps its first non-delivery.
            if out[i] == Outcome::Delivered {
                out[i] = outcome.clone();
            }
        }
    }
    Ok(out)
}

impl Transport for MqttTransport {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn attach(&self, ctx: &UplinkContext) {
        let _ = self.hooks.set(Hooks {
            audit: ctx.audit.clone(),
        });
    }

    async fn send(&self, rows: &[(i64, &Reading)]) -> Result<Vec<Outcome>, SendError> {
        let (messages, carried) = self.messages(rows);
        let (reply, answer) = oneshot::channel();
        let lost = |reason: &str| SendError::Transient {
            reason: reason.to_owned(),
            retry_after: None,
            cause: Cause::Other,
        };
        self.jobs
            .send(Job { messages, reply })
            .await
            .map_err(|_| lost("the MQTT connection task has ended"))?;
        let answers = match tokio::time::timeout(self.timeout * 2, answer).await {
            Ok(Ok(answers)) => answers,
            Ok(Err(_)) => return Err(lost("the MQTT connection task has ended")),
            Err(_) => {
                return Err(lost(
                    "no PUBACK from the MQTT broker in time (uplink.mqtt.timeout_s)",
                ))
            }
        };
        if let Some(hooks) = self.hooks() {
            report_refusals(&answers, hooks);
        }
        outcomes(rows.len(), &carried, &answers)
    }
}

/// Audits refusals of the broker (never the topic or payload: a topic may hold a patient id).
fn report_refusals(answers: &[Answer], hooks: &Hooks) {
    let mut seen: Vec<&str> = Vec::new();
    for a in answers {
        if let Answer::Refused { reason, .. } = a {
            if !seen.contains(&reason.as_str()) {
                seen.push(reason);
                tracing::error!(
                    uplink = "mqtt",
                    "the MQTT broker refused publishes: {reason}"
                );
                hooks.audit.record(Event::ConnectionRefused {
                    endpoint: "uplink:mqtt",
                    direction: "outbound",
                    address: None,
                    reason,
                });
            }
        }
    }
}

/// The byte stream to the broker: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The live connection and its window of packet ids.
struct Conn {
    reader: ReadHalf<Pin<Box<dyn Io>>>,
    writer: WriteHalf<Pin<Box<dyn Io>>>,
    /// Bytes read and not yet framed.
    read_buf: BytesMut,
    /// Encoded packets to write.
    write_buf: BytesMut,
    /// Packet ids free to use.
    free: Vec<u16>,
    /// Packet id → (job, message) waiting for its PUBACK, and when it was sent.
    in_flight: HashMap<u16, (u64, usize, Instant)>,
    /// The broker's Maximum Packet Size, if it sent one.
    max_packet: Option<u32>,
    /// When the last packet was written (keep-alive).
    last_write: Instant,
    /// When the last packet was read.
    last_read: Instant,
    /// Whether a PINGREQ is waiting for its PINGRESP.
    ping_sent: bool,
}

/// Why a connection failed.
struct ConnError {
    reason: String,
    cause: Cause,
    /// The broker refused this gateway (CONNACK reason): audited.
    refused: bool,
}

impl ConnError {
    fn io(context: &str, e: &std::io::Error) -> Self {
        let tls = e
            .get_ref()
            .is_some_and(|i| i.downcast_ref::<rustls::Error>().is_some());
        Self {
            reason: if tls {
                crate::tls::explain(e)
            } else {
                format!("{context}: {e}")
            },
            cause: if tls {
                Cause::Tls(crate::tls::io_cause_label(e))
            } else {
                Cause::Other
            },
            refused: false,
        }
    }

    fn protocol(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            cause: Cause::Other,
            refused: false,
        }
    }
}

/// A job whose messages are being published.
struct Active {
    answers: Vec<Option<Answer>>,
    left: usize,
    reply: oneshot::Sender<Vec<Answer>>,
}

/// The state of the connection task between events.
struct Publisher {
    options: Options,
    active: HashMap<u64, Active>,
    messages: HashMap<(u64, usize), Message>,
    /// Messages waiting for a packet id, in order.
    queue: VecDeque<(u64, usize)>,
    next_job: u64,
    conn: Option<Conn>,
}

impl Publisher {
    fn add(&mut self, job: Job) {
        let id = self.next_job;
        self.next_job += 1;
        let n = job.messages.len();
        for (i, m) in job.messages.into_iter().enumerate() {
            self.messages.insert((id, i), m);
            self.queue.push_back((id, i));
        }
        let active = Active {
            answers: vec![None; n],
            left: n,
            reply: job.reply,
        };
        if n == 0 {
            let _ = active.reply.send(Vec::new());
        } else {
            self.active.insert(id, active);
        }
    }

    fn answer(&mut self, job: u64, index: usize, answer: Answer) {
        self.messages.remove(&(job, index));
        let done = match self.active.get_mut(&job) {
            Some(a) if a.answers[index].is_none() => {
                a.answers[index] = Some(answer);
                a.left -= 1;
                a.left == 0
            }
            _ => false,
        };
        if done {
            if let Some(a) = self.active.remove(&job) {
                let answers = a.answers.into_iter().flatten().collect();
                let _ = a.reply.send(answers);
            }
        }
    }

    /// Answers every message not yet answered with `Lost`, and drops the connection.
    fn lose_all(&mut self, e: &ConnError) {
        self.conn = None;
        let mut waiting: Vec<(u64, usize)> = self.queue.drain(..).collect();
        waiting.extend(self.messages.keys().copied());
        waiting.sort_unstable();
        waiting.dedup();
        for (job, i) in waiting {
            self.answer(
                job,
                i,
                Answer::Lost {
                    reason: e.reason.clone(),
                    cause: e.cause,
                },
            );
        }
    }

    /// Writes as many queued messages as the window allows.
    async fn pump(&mut self) -> Result<(), ConnError> {
        let mut wrote = false;
        while self.conn.as_ref().is_some_and(|c| !c.free.is_empty()) {
            let Some((job, i)) = self.queue.pop_front() else {
                break;
            };
            let Some(m) = self.messages.get(&(job, i)) else {
                continue;
            };
            let mut publish = Publish::new(
                m.topic.as_str(),
                QoS::AtLeastOnce,
                m.payload.clone(),
                Some(self.options.properties.clone()),
            );
            let max = self.conn.as_ref().and_then(|c| c.max_packet);
            if let Some(max) = max.filter(|max| publish.size() > *max as usize) {
                let reason = format!(
                    "packet too large: {} bytes, the broker takes at most {max}",
                    publish.size()
                );
                self.answer(
                    job,
                    i,
                    Answer::Refused {
                        reason,
                        permanent: true,
                    },
                );
                continue;
            }
            let Some(conn) = self.conn.as_mut() else {
                break;
            };
            let Some(pkid) = conn.free.pop() else {
                self.queue.push_front((job, i));
                break;
            };
            publish.pkid = pkid;
            Packet::Publish(publish)
                .write(&mut conn.write_buf, None)
                .map_err(|e| ConnError::protocol(format!("cannot encode PUBLISH: {e}")))?;
            conn.in_flight.insert(pkid, (job, i, Instant::now()));
            wrote = true;
        }
        if wrote {
            if let Some(conn) = self.conn.as_mut() {
                conn.flush().await?;
            }
        }
        Ok(())
    }

    /// Handles one packet from the broker.
    fn incoming(&mut self, packet: Incoming) -> Result<(), ConnError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        conn.last_read = Instant::now();
        match packet {
            Incoming::PubAck { pkid, reason } => {
                let Some((job, i, _)) = conn.in_flight.remove(&pkid) else {
                    return Err(ConnError::protocol(format!(
                        "the broker acknowledged packet id {pkid}, which is not in flight"
                    )));
                };
                conn.free.push(pkid);
                self.answer(job, i, puback_answer(reason));
            }
            Incoming::PingResp => conn.ping_sent = false,
            Incoming::Disconnect(reason) => {
                return Err(ConnError::protocol(format!(
                    "the broker closed the connection: {reason:?}"
                )))
            }
            Incoming::Other => {}
        }
        Ok(())
    }

    /// Keep-alive and overdue acknowledgements.
    async fn tick(&mut self) -> Result<(), ConnError> {
        let keep_alive = self.options.keep_alive;
        let timeout = self.options.timeout;
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let now = Instant::now();
        if conn
            .in_flight
            .values()
            .any(|(_, _, sent)| now.duration_since(*sent) > timeout)
        {
            return Err(ConnError::protocol(
                "no PUBACK from the broker within uplink.mqtt.timeout_s; reconnecting",
            ));
        }
        if now.duration_since(conn.last_read) > keep_alive + keep_alive / 2 {
            return Err(ConnError::protocol(
                "the broker sent nothing for 1.5 × keep_alive_s; reconnecting",
            ));
        }
        if now.duration_since(conn.last_write) >= keep_alive && !conn.ping_sent {
            Packet::PingReq(PingReq)
                .write(&mut conn.write_buf, None)
                .map_err(|e| ConnError::protocol(e.to_string()))?;
            conn.ping_sent = true;
            conn.flush().await?;
        }
        Ok(())
    }
}

/// What the broker said in a PUBACK (reason code, decoded here so that any code, also one
/// MQTT does not define for PUBACK, is an answer rather than a broken connection).
fn puback_answer(reason: u8) -> Answer {
    let refused = |reason: &str, permanent| Answer::Refused {
        reason: reason.to_owned(),
        permanent,
    };
    match reason {
        0x00 | 0x10 => Answer::Acked,
        0x87 => refused(
            "not authorized (PUBACK 0x87): the broker's ACL does not let this client publish to the topic",
            false,
        ),
        0x97 => refused("quota exceeded (PUBACK 0x97)", false),
        0x90 => refused("topic name invalid (PUBACK 0x90)", true),
        0x95 => refused("packet too large (0x95): the broker's message size limit", true),
        0x99 => refused("payload format invalid (PUBACK 0x99)", true),
        0x80 => refused("unspecified error (PUBACK 0x80)", false),
        0x83 => refused("implementation-specific error (PUBACK 0x83)", false),
        0x91 => refused("packet identifier in use (PUBACK 0x91)", false),
        other => Answer::Refused {
            reason: format!("refused with reason code 0x{other:02X}"),
            permanent: false,
        },
    }
}

/// A packet from the broker, as far as a publisher cares.
#[derive(Debug, PartialEq, Eq)]
enum Incoming {
    PubAck { pkid: u16, reason: u8 },
    PingResp,
    Disconnect(DisconnectReasonCode),
    Other,
}

/// One packet from the broker: a PUBACK read here (see [`puback_answer`]), or any other
/// packet as rumqttc's codec reads it.
enum Frame {
    PubAck { pkid: u16, reason: u8 },
    Packet(Box<Packet>),
}

/// Takes one packet off the front of `buf`, if a whole one is there.
fn frame(buf: &mut BytesMut) -> Result<Option<Frame>, ConnError> {
    match check(buf.iter(), Some(MAX_INCOMING_PACKET)) {
        Ok(header) => {
            if buf[0] >> 4 == 4 {
                // PUBACK: packet id, then an optional reason code (and properties).
                let packet = buf.split_to(header.frame_length());
                // The fixed header: the type byte and a variable-length remaining length.
                let header_len = 1 + packet[1..].iter().take_while(|b| *b & 0x80 != 0).count() + 1;
                let body = packet.get(header_len..).unwrap_or_default();
                if body.len() < 2 {
                    return Err(ConnError::protocol("malformed PUBACK from the broker"));
                }
                return Ok(Some(Frame::PubAck {
                    pkid: u16::from_be_bytes([body[0], body[1]]),
                    reason: body.get(2).copied().unwrap_or(0),
                }));
            }
            Packet::read(buf, Some(MAX_INCOMING_PACKET))
                .map(|p| Some(Frame::Packet(Box::new(p))))
                .map_err(|e| ConnError::protocol(format!("malformed packet from the broker: {e}")))
        }
        Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
        Err(e) => Err(ConnError::protocol(format!(
            "malformed packet from the broker: {e}"
        ))),
    }
}

impl Conn {
    async fn flush(&mut self) -> Result<(), ConnError> {
        let buf = self.write_buf.split();
        self.writer
            .write_all(&buf)
            .await
            .map_err(|e| ConnError::io("write", &e))?;
        self.writer
            .flush()
            .await
            .map_err(|e| ConnError::io("write", &e))?;
        self.last_write = Instant::now();
        Ok(())
    }

    /// Reads until one packet is there (cancel-safe: what was read stays in `read_buf`).
    async fn read(&mut self) -> Result<Incoming, ConnError> {
        loop {
            if let Some(frame) = frame(&mut self.read_buf)? {
                return Ok(match frame {
                    Frame::PubAck { pkid, reason } => Incoming::PubAck { pkid, reason },
                    Frame::Packet(packet) => match *packet {
                        Packet::PingResp(_) => Incoming::PingResp,
                        Packet::Disconnect(d) => Incoming::Disconnect(d.reason_code),
                        _ => Incoming::Other,
                    },
                });
            }
            let n = self
                .reader
                .read_buf(&mut self.read_buf)
                .await
                .map_err(|e| ConnError::io("read", &e))?;
            if n == 0 {
                return Err(ConnError::protocol("the broker closed the connection"));
            }
        }
    }
}

/// Connects, sends CONNECT and waits for the CONNACK.
async fn connect(options: &Options) -> Result<Conn, ConnError> {
    let tcp = tokio::net::TcpStream::connect((options.host.as_str(), options.port))
        .await
        .map_err(|e| ConnError::io("connect", &e))?;
    let _ = tcp.set_nodelay(true);
    let io: Pin<Box<dyn Io>> = match &options.tls {
        Some(config) => {
            let name = rustls_pki_types::ServerName::try_from(options.host.clone())
                .map_err(|e| ConnError::protocol(format!("broker host name: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| ConnError::io("TLS", &e))?;
            Box::pin(stream)
        }
        None => Box::pin(tcp),
    };
    let (reader, writer) = tokio::io::split(io);
    let now = Instant::now();
    let mut conn = Conn {
        reader,
        writer,
        read_buf: BytesMut::with_capacity(4096),
        write_buf: BytesMut::with_capacity(64 * 1024),
        free: Vec::new(),
        in_flight: HashMap::new(),
        max_packet: None,
        last_write: now,
        last_read: now,
        ping_sent: false,
    };
    let properties = ConnectProperties {
        session_expiry_interval: Some(options.session_expiry_s),
        max_packet_size: Some(MAX_INCOMING_PACKET),
        ..ConnectProperties::new()
    };
    let connect = Connect {
        keep_alive: options.keep_alive.as_secs().min(u16::MAX.into()) as u16,
        client_id: options.client_id.clone(),
        clean_start: false,
        properties: Some(properties),
    };
    Packet::Connect(connect, None, None)
        .write(&mut conn.write_buf, None)
        .map_err(|e| ConnError::protocol(format!("cannot encode CONNECT: {e}")))?;
    conn.flush().await?;
    let connack = loop {
        let packet = match frame(&mut conn.read_buf)? {
            Some(p) => p,
            None => {
                let n = conn
                    .reader
                    .read_buf(&mut conn.read_buf)
                    .await
                    .map_err(|e| ConnError::io("read", &e))?;
                if n == 0 {
                    return Err(ConnError::protocol(
                        "the broker closed the connection before its CONNACK (does it speak MQTT 5, and accept this client certificate?)",
                    ));
                }
                continue;
            }
        };
        let Frame::Packet(packet) = packet else {
            return Err(ConnError::protocol("expected CONNACK from the broker"));
        };
        match *packet {
            Packet::ConnAck(ack) => break ack,
            Packet::Disconnect(d) => {
                return Err(ConnError {
                    reason: format!("the broker refused the connection: {:?}", d.reason_code),
                    cause: Cause::Other,
                    refused: true,
                })
            }
            _ => return Err(ConnError::protocol("expected CONNACK from the broker")),
        }
    };
    accept(&mut conn, connack, options)?;
    Ok(conn)
}

/// Takes the CONNACK: refused, or the window and size limits for this connection.
fn accept(conn: &mut Conn, ack: ConnAck, options: &Options) -> Result<(), ConnError> {
    if ack.code != ConnectReturnCode::Success {
        return Err(ConnError {
            reason: format!("the broker refused the connection: {:?}", ack.code),
            cause: Cause::Other,
            refused: true,
        });
    }
    let receive_max = ack
        .properties
        .as_ref()
        .and_then(|p| p.receive_max)
        .unwrap_or(u16::MAX);
    let window = options.max_in_flight.min(receive_max).max(1);
    conn.free = (1..=window).rev().collect();
    conn.max_packet = ack.properties.as_ref().and_then(|p| p.max_packet_size);
    tracing::info!(
        uplink = "mqtt",
        session_present = ack.session_present,
        window,
        "connected to the MQTT broker"
    );
    Ok(())
}

/// Owns the connection: takes jobs, publishes within the window, matches PUBACKs, keeps the
/// connection alive, and ends (with a DISCONNECT) when every transport handle is gone.
async fn connection_task(
    mut jobs: mpsc::Receiver<Job>,
    options: Options,
    hooks: Arc<OnceLock<Hooks>>,
) {
    let mut p = Publisher {
        options: options.clone(),
        active: HashMap::new(),
        messages: HashMap::new(),
        queue: VecDeque::new(),
        next_job: 0,
        conn: None,
    };
    let mut ticks = tokio::time::interval(TICK);
    loop {
        if p.conn.is_none() && !p.queue.is_empty() {
            match tokio::time::timeout(options.timeout, connect(&options)).await {
                Ok(Ok(conn)) => p.conn = Some(conn),
                Ok(Err(e)) => {
                    report_connect_failure(&e, hooks.get());
                    p.lose_all(&e);
                }
                Err(_) => p.lose_all(&ConnError::protocol(
                    "no CONNACK from the MQTT broker within uplink.mqtt.timeout_s",
                )),
            }
        }
        let result = tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => { p.add(job); Ok(()) }
                None => break,
            },
            packet = async {
                match p.conn.as_mut() {
                    Some(c) => c.read().await,
                    None => std::future::pending().await,
                }
            } => packet.and_then(|packet| p.incoming(packet)),
            _ = ticks.tick() => p.tick().await,
        };
        let result = match result {
            Ok(()) => p.pump().await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(uplink = "mqtt", "MQTT connection lost: {}", e.reason);
            p.lose_all(&e);
        }
    }
    if let Some(mut conn) = p.conn.take() {
        let _ = Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection))
            .write(&mut conn.write_buf, None);
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.flush()).await;
    }
}

fn report_connect_failure(e: &ConnError, hooks: Option<&Hooks>) {
    tracing::warn!(
        uplink = "mqtt",
        "cannot connect to the MQTT broker: {}",
        e.reason
    );
    let Some(hooks) = hooks else { return };
    if e.refused {
        hooks.audit.record(Event::ConnectionRefused {
            endpoint: "uplink:mqtt",
            direction: "outbound",
            address: None,
            reason: &e.reason,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost() -> Answer {
        Answer::Lost {
            reason: "connection reset".into(),
            cause: Cause::Other,
        }
    }

    #[test]
    fn a_row_is_delivered_only_when_every_message_carrying_it_was_acknowledged() {
        let refused = |permanent| Answer::Refused {
            reason: "r".into(),
            permanent,
        };
        // Observation per message: row i in message i.
        let carried = vec![vec![0], vec![1], vec![2], vec![3]];
        let out = outcomes(
            4,
            &carried,
            &[Answer::Acked, lost(), refused(true), refused(false)],
        )
        .unwrap();
        assert_eq!(
            out,
            [
                Outcome::Delivered,
                Outcome::Retry("connection reset".into()),
                Outcome::Rejected(Refusal::new(None, "r")),
                Outcome::Retry("r".into()),
            ]
        );
        // A Bundle per topic: both rows of an unacknowledged Bundle are retried.
        let out = outcomes(3, &[vec![0, 2], vec![1]], &[lost(), Answer::Acked]).unwrap();
        assert_eq!(out[0], Outcome::Retry("connection reset".into()));
        assert_eq!(out[1], Outcome::Delivered);
        assert_eq!(out[2], Outcome::Retry("connection reset".into()));
        // Nothing acknowledged: the destination failed (backoff, not-ready), not "answered".
        assert!(matches!(
            outcomes(2, &[vec![0], vec![1]], &[lost(), refused(false)]),
            Err(SendError::Transient { .. })
        ));
        // Everything refused for good is an answer: dead letters.
        assert_eq!(
            outcomes(1, &[vec![0]], &[refused(true)]).unwrap(),
            [Outcome::Rejected(Refusal::new(None, "r"))]
        );
    }

    #[test]
    fn any_puback_reason_code_is_an_answer_about_its_message() {
        assert_eq!(puback_answer(0x00), Answer::Acked);
        assert_eq!(
            puback_answer(0x10),
            Answer::Acked,
            "no matching subscribers"
        );
        for (code, permanent) in [(0x87, false), (0x97, false), (0x95, true), (0x99, true)] {
            assert!(
                matches!(puback_answer(code), Answer::Refused { permanent: p, .. } if p == permanent),
                "0x{code:02X}"
            );
        }
        assert!(matches!(
            puback_answer(0xEE),
            Answer::Refused {
                permanent: false,
                ..
            }
        ));
    }

    #[test]
    fn pubacks_are_framed_with_or_without_a_reason_code_and_half_packets_wait() {
        // PUBACK pkid 7, no reason (success); PUBACK pkid 8, reason 0x95 and empty properties;
        // then half of a third.
        let mut buf = BytesMut::from(&[0x40, 2, 0, 7, 0x40, 4, 0, 8, 0x95, 0, 0x40, 2, 0][..]);
        assert!(matches!(
            frame(&mut buf),
            Ok(Some(Frame::PubAck { pkid: 7, reason: 0 }))
        ));
        assert!(matches!(
            frame(&mut buf),
            Ok(Some(Frame::PubAck {
                pkid: 8,
                reason: 0x95
            }))
        ));
        assert!(matches!(frame(&mut buf), Ok(None)));
        assert_eq!(&buf[..], &[0x40, 2, 0]);
        // PINGRESP goes through rumqttc's codec.
        let mut buf = BytesMut::from(&[0xD0, 0][..]);
        assert!(matches!(
            frame(&mut buf),
            Ok(Some(Frame::Packet(p))) if matches!(*p, Packet::PingResp(_))
        ));
    }
}
