//! The HL7 v2 source: an MLLP listener (plain TCP, TLS or mutual TLS) for monitor gateways
//! sending IHE PCD-01 ORU^R01 messages.
//!
//! Architecture invariant (acknowledge after durable): the AA for a message is written only
//! after the buffer transaction holding all its readings (and, for the OBX the gateway cannot
//! represent, the dead letter of the message) has committed. A message is atomic: AE and AR
//! store nothing of it. A message the gateway could not store (buffer full, failing, low on
//! space) is answered AR, and the sender resends it; when the gateway stops before the commit
//! answers, no ACK is sent at all. Either way a resent message gives the same reading
//! identifiers, so it is stored once.
//!
//! # Connections
//!
//! Every connection is its own task; a connection handles one message at a time (MLLP
//! senders wait for the ACK). At most `max_connections` at once; more are closed at accept
//! and audited. A connection is closed after `idle_timeout_s` without a byte, or
//! `read_timeout_s` into a message that has not ended, and on any read or write error;
//! bytes outside a frame are discarded and counted (see [`crate::hl7::mllp`]). A bad message
//! never closes its connection: it gets its AE or AR and the next message is read.
//!
//! A batch (`FHS`/`BHS` … `BTS`/`FTS` in one frame) is taken message by message, each
//! stored on its own; the answer is one frame holding a `BHS`, every message's ACK, and a
//! `BTS` with their count.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{Bindings, SourceContext};
use crate::config::Hl7SourceConfig;
use crate::hl7::pcd::{self, AckCode, ErrorInfo, Header};
use crate::hl7::{self, ack, mllp, v2, Processed, Settings};
use crate::model::Decimal;
use crate::ops::audit::{Audit, Event as AuditEvent};
use crate::ops::metrics::Metrics;
use crate::pipeline::{CommitError, Ingest, Rejected};

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Delay before accepting again after `accept` failed (e.g. out of file descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Why the source cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Hl7Error {
    /// The listen address cannot be bound.
    #[error("sources.hl7.listen {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS files cannot be used.
    #[error("sources.hl7.tls")]
    Tls(#[source] crate::tls::TlsError),
    /// `sources.hl7.time_zone` names no zone of this host's tz database.
    #[error("sources.hl7.time_zone: not a time zone of this host's tz database")]
    TimeZone(#[source] jiff::Error),
    /// A `sources.hl7.no_value` placeholder is not a decimal number.
    #[error("sources.hl7.no_value: {0:?} is not a decimal number")]
    NoValue(String),
}

/// What every connection shares.
struct Shared {
    settings: Settings,
    max_message: usize,
    idle_timeout: Duration,
    read_timeout: Duration,
    ingest: Ingest,
    bindings: Bindings,
    audit: Audit,
    metrics: Arc<Metrics>,
    /// Numbers the ACKs' own MSH-10.
    acks: AtomicU64,
    /// Bytes discarded outside frames, over all connections.
    discarded: AtomicU64,
}

/// The listener, bound and ready to run.
pub struct Hl7Source {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    settings: Settings,
    config: Hl7SourceConfig,
}

impl Hl7Source {
    /// Binds the listen address and reads the TLS files: everything that can fail at start.
    pub fn new(config: &Hl7SourceConfig) -> Result<Self, Hl7Error> {
        let zone = hl7::dtm::zone(config.time_zone.as_deref()).map_err(Hl7Error::TimeZone)?;
        let placeholders = config
            .no_value
            .iter()
            .map(|v| Decimal::parse(v.trim()).ok_or_else(|| Hl7Error::NoValue(v.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = match &config.tls {
            Some(t) => Some(TlsAcceptor::from(
                crate::tls::server_config(&t.cert, &t.key, t.client_ca.as_deref(), &t.crls)
                    .map_err(Hl7Error::Tls)?,
            )),
            None => None,
        };
        let bind = |source| Hl7Error::Bind {
            addr: config.listen,
            source,
        };
        let listener = std::net::TcpListener::bind(config.listen).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        Ok(Self {
            listener,
            addr,
            tls,
            settings: Settings { zone, placeholders },
            config: config.clone(),
        })
    }

    /// Runs until `shutdown`: accepts connections and serves each in its own task.
    pub async fn run(self, ctx: SourceContext) {
        let SourceContext {
            ingest,
            bindings,
            metrics,
            audit,
            shutdown,
        } = ctx;
        let listener = match TcpListener::from_std(self.listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "HL7 listener cannot be registered with the runtime");
                return;
            }
        };
        tracing::info!(
            listen = %self.addr,
            tls = self.tls.is_some(),
            mutual = self.config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
            "HL7 v2 MLLP listener up"
        );
        let shared = Arc::new(Shared {
            settings: self.settings,
            max_message: self.config.max_message_bytes,
            idle_timeout: Duration::from_secs(self.config.idle_timeout_s),
            read_timeout: Duration::from_secs(self.config.read_timeout_s),
            ingest,
            bindings,
            audit,
            metrics,
            acks: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
        });
        let slots = Arc::new(Semaphore::new(self.config.max_connections));
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.cancelled() => break,
            };
            while connections.try_join_next().is_some() {}
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "HL7 listener: accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(peer = %peer, max = self.config.max_connections, "HL7 connection refused: sources.hl7.max_connections reached");
                shared.audit.record(AuditEvent::ConnectionRefused {
                    endpoint: "source:hl7",
                    direction: "inbound",
                    address: Some(peer.ip()),
                    reason: "sources.hl7.max_connections reached",
                });
                drop(stream);
                continue;
            };
            let shared = shared.clone();
            let tls = self.tls.clone();
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                let _slot = slot;
                serve(stream, peer, tls, &shared, &shutdown).await;
            });
        }
        // Connections see the same shutdown and end; a commit in hand is awaited.
        while connections.join_next().await.is_some() {}
    }

    /// The bound address (port 0 in the config gives a free port).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Serves one connection until it closes, fails, times out, or the gateway stops.
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: &Shared,
    shutdown: &CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let mut io: Box<dyn Stream> = match tls {
        None => Box::new(stream),
        Some(acceptor) => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => Box::new(s),
                Ok(Err(e)) => {
                    let reason = crate::tls::explain(&e);
                    tracing::warn!(peer = %peer, reason = %reason, "HL7 TLS handshake failed");
                    let cause = crate::tls::io_cause_label(&e);
                    shared.metrics.tls_failed("source:hl7", cause);
                    shared.audit.record(AuditEvent::TlsFailure {
                        peer: "source:hl7",
                        cause,
                        reason: &reason,
                    });
                    return;
                }
                Err(_) => {
                    tracing::warn!(peer = %peer, "HL7 TLS handshake timed out");
                    return;
                }
            }
        }
    };
    tracing::debug!(peer = %peer, "HL7 connection open");
    let origin = format!("hl7:{}", peer.ip());
    let mut deframer = mllp::Deframer::new(shared.max_message);
    let mut buf = vec![0u8; 16 * 1024];
    let mut frames = Vec::new();
    let mut discarded = 0;
    loop {
        let wait = if deframer.in_frame() {
            shared.read_timeout
        } else {
            shared.idle_timeout
        };
        let read = tokio::select! {
            r = tokio::time::timeout(wait, io.read(&mut buf)) => r,
            _ = shutdown.cancelled() => break,
        };
        let n = match read {
            Err(_) => {
                tracing::info!(peer = %peer, partial = deframer.in_frame(), "HL7 connection timed out; closing");
                break;
            }
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer, error = %e, "HL7 connection read failed");
                break;
            }
        };
        deframer.feed(&buf[..n], &mut frames);
        if deframer.discarded() > discarded {
            let more = deframer.discarded() - discarded;
            discarded = deframer.discarded();
            let total = shared.discarded.fetch_add(more, Ordering::Relaxed) + more;
            tracing::warn!(peer = %peer, bytes = more, total, "HL7: bytes outside an MLLP frame discarded");
        }
        for frame in frames.drain(..) {
            let Some(reply) = answer(frame, &origin, shared).await else {
                // Shutdown before the commit answered: no ACK; the sender resends.
                return;
            };
            if let Err(e) = io.write_all(&mllp::frame(&reply)).await {
                tracing::debug!(peer = %peer, error = %e, "HL7 ACK not sent");
                return;
            }
        }
        if io.flush().await.is_err() {
            return;
        }
    }
    let _ = io.shutdown().await;
}

fn next_ack_id(shared: &Shared) -> String {
    let n = shared.acks.fetch_add(1, Ordering::Relaxed);
    format!("VBACK{n}")
}

/// The reply to one frame; `None` when no ACK may be sent (the gateway is stopping).
async fn answer(frame: mllp::Frame, origin: &str, shared: &Shared) -> Option<Vec<u8>> {
    let received = OffsetDateTime::now_utc();
    match frame {
        mllp::Frame::Oversized { head, size } => {
            let header_line = head
                .split(|&b| b == b'\r' || b == b'\n')
                .next()
                .unwrap_or(&[]);
            let (header, charset) = match v2::Message::parse(header_line) {
                Ok(m) => (pcd::header(&m), m.charset),
                Err(_) => (Header::default(), v2::Charset::Default),
            };
            tracing::warn!(control_id = %header.control_id, bytes = size, max = shared.max_message, "HL7 message larger than sources.hl7.max_message_bytes: AR");
            let error = ErrorInfo {
                segment: String::new(),
                sequence: 0,
                field: 0,
                code: pcd::err_code::INTERNAL,
                text: format!(
                    "message of {size} bytes is larger than this gateway's limit of {} bytes",
                    shared.max_message
                ),
            };
            Some(ack::build(
                &header,
                charset,
                AckCode::Reject,
                Some(&error),
                received,
                &next_ack_id(shared),
            ))
        }
        mllp::Frame::Message(bytes) => {
            if v2::is_batch(&bytes) {
                let mut reply = b"BHS|^~\\&|VITALBRIDGE\r".to_vec();
                let parts = v2::split_batch(&bytes);
                let count = parts.len();
                for part in parts {
                    let mut one = handle(part, origin, shared, received).await?;
                    if !one.ends_with(b"\r") {
                        one.push(b'\r');
                    }
                    reply.extend(one);
                }
                reply.extend(format!("BTS|{count}\r").into_bytes());
                Some(reply)
            } else {
                handle(&bytes, origin, shared, received).await
            }
        }
    }
}

/// Processes, stores and acknowledges one message.
async fn handle(
    bytes: &[u8],
    origin: &str,
    shared: &Shared,
    received: OffsetDateTime,
) -> Option<Vec<u8>> {
    let bindings = &shared.bindings;
    let Processed {
        header,
        charset,
        outcome,
    } = hl7::process(bytes, &shared.settings, received, &|key| {
        bindings.patient(key)
    });
    let ack = |code: AckCode, error: Option<&ErrorInfo>| {
        Some(ack::build(
            &header,
            charset,
            code,
            error,
            OffsetDateTime::now_utc(),
            &next_ack_id(shared),
        ))
    };
    let mapped = match outcome {
        Ok(m) => m,
        Err(refusal) => {
            // The text names segments and fields only, never values.
            tracing::warn!(control_id = %clip(&header.control_id), ack = refusal.ack.as_str(), error = %refusal, "HL7 message refused; nothing of it stored");
            return ack(refusal.ack, Some(&refusal.error));
        }
    };
    let readings = mapped.readings.len();
    let rejected: Vec<Rejected> = if mapped.unmapped.is_empty() {
        Vec::new()
    } else {
        vec![Rejected::new(
            origin.to_owned(),
            mapped.unmapped.join("; "),
            bytes,
        )]
    };
    let unmapped = mapped.unmapped.len();
    if readings == 0 && rejected.is_empty() {
        return ack(AckCode::Accept, None);
    }
    match shared.ingest.store(mapped.readings, rejected).await {
        Ok(_) => {
            tracing::debug!(control_id = %clip(&header.control_id), readings, unmapped, "HL7 message stored: AA");
            if unmapped > 0 {
                tracing::warn!(control_id = %clip(&header.control_id), observations = unmapped, "HL7 observations the gateway cannot represent were kept as a dead letter");
            }
            ack(AckCode::Accept, None)
        }
        Err(CommitError::Closed) => None,
        Err(e) => {
            tracing::warn!(control_id = %clip(&header.control_id), error = %e, "HL7 message not stored: AR (the sender resends)");
            let error = ErrorInfo {
                segment: String::new(),
                sequence: 0,
                field: 0,
                code: pcd::err_code::INTERNAL,
                text: format!(
                    "the gateway cannot store the message now ({e}); send it again later"
                ),
            };
            ack(AckCode::Reject, Some(&error))
        }
    }
}

/// A control id for a log line: at most 64 printable characters.
fn clip(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(64).collect()
}
