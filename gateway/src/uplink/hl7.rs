//! The HL7 v2 uplink: readings as IHE PCD-01 ORU^R01 (v2.6, [`crate::hl7::oru`]) over MLLP,
//! plain or over (mutual) TLS, to an interface engine (Mirth/NextGen Connect, Rhapsody,
//! Cloverleaf, Epic Bridges…).
//!
//! # Protocol
//!
//! - Readings of one device, patient, effective time and point of care go in one message;
//!   a batch of leased rows becomes a few messages, sent one after the other.
//! - One message in flight per connection, as MLLP senders do: send the frame, wait for the
//!   ACK frame, then the next. At most `connections` connections at once (a semaphore);
//!   idle ones are kept and reused, a connection that failed is dropped.
//! - MSH-10 is derived from the readings' identifiers (`VB` + 18 hex digits of their
//!   SHA-256), so a message sent again after a lost ACK carries the same control id and an
//!   engine that de-duplicates on it sees a duplicate; the readings' identifiers do not
//!   change either.
//!
//! # Settling rows (delete after acknowledged)
//!
//! | the engine answers | rows of that message |
//! | --- | --- |
//! | MSA-1 `AA` or `CA`, MSA-2 = our MSH-10 | delivered (deleted) |
//! | `AE` or `CE` | dead-lettered, with the engine's ERR/MSA-3 text |
//! | `AR` or `CR` | retried with backoff |
//! | nothing within `timeout_s`, a dropped connection, an unreadable answer, another MSA-2 | retried with backoff; the connection is dropped |
//!
//! A reading the message format cannot carry (sampled data, a coded value) is dead-lettered
//! with that reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

use super::{Cause, Outcome, Refusal, SendError, Transport};
use crate::hl7::{ack, mllp, oru};
use crate::model::{PatientRef, Reading};

/// Largest ACK read from an engine, in bytes.
const MAX_ACK_BYTES: usize = 1024 * 1024;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One connection to the engine and the bytes read past the last ACK.
struct Conn {
    io: Box<dyn Stream>,
    deframer: mllp::Deframer,
}

/// Why the transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `uplink.hl7.address` is not host:port.
    #[error("uplink.hl7.address: must be host:port")]
    Address,
    /// The host is not a TLS server name.
    #[error("uplink.hl7.address: the host is not a TLS server name: {0}")]
    ServerName(String),
}

/// Sends ORU^R01 messages over MLLP.
pub struct Hl7Transport {
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    parties: oru::Parties,
    timeout: Duration,
    permits: Semaphore,
    idle: Mutex<Vec<Conn>>,
}

fn transient(reason: String, cause: Cause) -> SendError {
    SendError::Transient {
        reason,
        retry_after: None,
        cause,
    }
}

impl Hl7Transport {
    /// A transport to `address` (`host:port`), over TLS when `tls` is given.
    pub fn new(
        address: &str,
        tls: Option<Arc<ClientConfig>>,
        parties: oru::Parties,
        connections: usize,
        timeout: Duration,
    ) -> Result<Self, SetupError> {
        let (host, port) = crate::config::split_address(address).ok_or(SetupError::Address)?;
        let tls = match tls {
            Some(config) => {
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| SetupError::ServerName(e.to_string()))?;
                Some((TlsConnector::from(config), name))
            }
            None => None,
        };
        Ok(Self {
            host,
            port,
            tls,
            parties,
            timeout,
            permits: Semaphore::new(connections.max(1)),
            idle: Mutex::new(Vec::new()),
        })
    }

    async fn connect(&self) -> Result<Conn, SendError> {
        let target = format!("{}:{}", self.host, self.port);
        let tcp = tokio::time::timeout(
            self.timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| transient(format!("connect to {target} timed out"), Cause::Other))?
        .map_err(|e| transient(format!("cannot connect to {target}: {e}"), Cause::Other))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Stream> = match &self.tls {
            None => Box::new(tcp),
            Some((connector, name)) => Box::new(
                tokio::time::timeout(self.timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| {
                        transient("TLS handshake timed out".into(), Cause::Tls("timeout"))
                    })?
                    .map_err(|e| {
                        let cause = Cause::Tls(crate::tls::io_cause_label(&e));
                        transient(crate::tls::explain(&e), cause)
                    })?,
            ),
        };
        Ok(Conn {
            io,
            deframer: mllp::Deframer::new(MAX_ACK_BYTES),
        })
    }

    /// Sends one message and reads its ACK.
    async fn exchange(&self, conn: &mut Conn, message: &[u8]) -> Result<ack::Answer, String> {
        let framed = mllp::frame(message);
        let io = async {
            conn.io
                .write_all(&framed)
                .await
                .map_err(|e| format!("sending failed: {e}"))?;
            conn.io
                .flush()
                .await
                .map_err(|e| format!("sending failed: {e}"))?;
            let mut buf = [0u8; 8192];
            let mut frames = Vec::new();
            loop {
                let n = conn
                    .io
                    .read(&mut buf)
                    .await
                    .map_err(|e| format!("reading the ACK failed: {e}"))?;
                if n == 0 {
                    return Err("the engine closed the connection before its ACK".to_owned());
                }
                conn.deframer.feed(&buf[..n], &mut frames);
                if let Some(frame) = frames.pop() {
                    return match frame {
                        mllp::Frame::Message(bytes) => {
                            ack::parse(&bytes).map_err(|e| format!("unreadable ACK: {e}"))
                        }
                        mllp::Frame::Oversized { size, .. } => {
                            Err(format!("an ACK of {size} bytes is too large"))
                        }
                    };
                }
            }
        };
        tokio::time::timeout(self.timeout, io).await.map_err(|_| {
            format!(
                "no ACK within {}s (resending is safe)",
                self.timeout.as_secs()
            )
        })?
    }
}

/// The MSH-10 of a message holding these readings.
fn control_id(readings: &[&Reading]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for r in readings {
        ctx.update(r.identifier().as_bytes());
        ctx.update(b"\n");
    }
    let digest = ctx.finish();
    format!("VB{}", &crate::model::hex_upper(digest.as_ref())[..18])
}

/// The grouping key of a reading: one message per device, patient, time and location.
fn group_key(r: &Reading) -> (String, Option<PatientRef>, OffsetDateTime, Option<String>) {
    (
        r.device.id.key(),
        r.patient.clone(),
        r.effective_time().0,
        r.bedside.as_ref().and_then(|b| b.location.clone()),
    )
}

impl Transport for Hl7Transport {
    fn name(&self) -> &'static str {
        "hl7"
    }

    async fn send(&self, rows: &[(i64, &Reading)]) -> Result<Vec<Outcome>, SendError> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; rows.len()];
        // Groups of row indexes, in first-seen order.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut by_key: HashMap<_, usize> = HashMap::new();
        for (i, (_, r)) in rows.iter().enumerate() {
            if let Err(e) = oru::check(r) {
                outcomes[i] = Some(Outcome::Rejected(Refusal::new(None, e.to_string())));
                continue;
            }
            let g = *by_key.entry(group_key(r)).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i);
        }
        if !groups.is_empty() {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| transient("uplink closing".into(), Cause::Other))?;
            let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
            let mut conn = match idle {
                Some(c) => c,
                None => self.connect().await?,
            };
            let mut answered = 0;
            let mut broken: Option<String> = None;
            for group in &groups {
                if let Some(why) = &broken {
                    for &i in group {
                        outcomes[i] = Some(Outcome::Retry(why.clone()));
                    }
                    continue;
                }
                let readings: Vec<&Reading> = group.iter().map(|&i| rows[i].1).collect();
                let id = control_id(&readings);
                let message = oru::write(&readings, &self.parties, &id, OffsetDateTime::now_utc());
                let outcome = match self.exchange(&mut conn, message.as_bytes()).await {
                    Err(why) => {
                        broken = Some(why.clone());
                        Outcome::Retry(why)
                    }
                    Ok(a) if a.control_id != id => {
                        let why = "the ACK acknowledges another message (MSA-2)".to_owned();
                        broken = Some(why.clone());
                        Outcome::Retry(why)
                    }
                    Ok(a) => {
                        answered += 1;
                        match a.code.as_str() {
                            "AA" | "CA" => Outcome::Delivered,
                            "AE" | "CE" => Outcome::Rejected(Refusal::new(
                                None,
                                format!("{}: {}", a.code, a.text),
                            )),
                            _ => Outcome::Retry(format!("{}: {}", a.code, a.text)),
                        }
                    }
                };
                for &i in group {
                    outcomes[i] = Some(outcome.clone());
                }
            }
            match broken {
                None => {
                    if let Ok(mut idle) = self.idle.lock() {
                        idle.push(conn);
                    }
                }
                Some(why) if answered == 0 => return Err(transient(why, Cause::Other)),
                Some(_) => {}
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Retry("not sent".into())))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::v2::Message;
    use crate::model::{Decimal, DeviceId, DeviceRef, Measured, Quantity, Value};
    use crate::profile::catalog;
    use tokio::net::TcpListener;

    fn reading(minute: u8) -> Reading {
        Reading {
            device: DeviceRef {
                id: DeviceId::Eui64([0, 0x12, 0x21, 0x18, 0x39, 0, 0, 1]),
                profile: "hl7-pcd01".into(),
                model: None,
                manufacturer: None,
            },
            patient: None,
            metric: catalog::SPO2,
            value: Value::Quantity(Quantity {
                value: Measured::Value(Decimal::integer(97)),
                unit: "%".into(),
            }),
            device_time: Some(
                time::macros::datetime!(2026-01-05 10:00 UTC)
                    + time::Duration::minutes(minute.into()),
            ),
            clock_offset: None,
            received_at: time::macros::datetime!(2026-01-05 11:00 UTC),
            duration: None,
            sequence: None,
            status: vec![],
            device_user: None,
            time_sync: None,
            bedside: None,
        }
    }

    /// An engine answering each message with the next of `answers` (`MSA-1`, or `wrong-id`).
    async fn engine(answers: Vec<&'static str>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut d = mllp::Deframer::new(1 << 20);
            let mut frames = Vec::new();
            let mut buf = [0u8; 4096];
            let mut answers = answers.into_iter();
            loop {
                let n = s.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                d.feed(&buf[..n], &mut frames);
                for f in frames.drain(..) {
                    let mllp::Frame::Message(bytes) = f else {
                        return;
                    };
                    let m = Message::parse(&bytes).unwrap();
                    let id = m.value(m.msh(), 10, 0, 0).unwrap();
                    let (code, id) = match answers.next() {
                        Some("wrong-id") => ("AA", "other".to_owned()),
                        Some(code) => (code, id),
                        None => return,
                    };
                    let ack = format!("MSH|^~\\&|E||||2026||ACK|1|P|2.6\rMSA|{code}|{id}\rERR|||207^engine says no^HL70357|E\r");
                    s.write_all(&mllp::frame(ack.as_bytes())).await.unwrap();
                }
            }
        });
        port
    }

    fn transport(port: u16) -> Hl7Transport {
        Hl7Transport::new(
            &format!("127.0.0.1:{port}"),
            None,
            oru::Parties::default(),
            1,
            Duration::from_secs(2),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn each_message_is_settled_by_its_ack_aa_ae_ar() {
        let port = engine(vec!["AA", "AE", "AR"]).await;
        let t = transport(port);
        let rs = [reading(1), reading(2), reading(3)];
        let rows: Vec<(i64, &Reading)> =
            rs.iter().enumerate().map(|(i, r)| (i as i64, r)).collect();
        let out = t.send(&rows).await.unwrap();
        assert_eq!(out[0], Outcome::Delivered);
        assert_eq!(
            out[1],
            Outcome::Rejected(Refusal::new(None, "AE: engine says no"))
        );
        assert!(
            matches!(&out[2], Outcome::Retry(why) if why.starts_with("AR")),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn an_ack_for_another_message_or_none_at_all_is_a_retry() {
        let port = engine(vec!["wrong-id"]).await;
        let t = transport(port);
        let r = reading(1);
        assert!(matches!(
            t.send(&[(1, &r)]).await,
            Err(SendError::Transient { .. })
        ));
        let port = engine(vec![]).await;
        let t = transport(port);
        let started = std::time::Instant::now();
        assert!(matches!(
            t.send(&[(1, &r)]).await,
            Err(SendError::Transient { .. })
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn the_control_id_is_the_same_for_the_same_readings() {
        let (a, b) = (reading(1), reading(2));
        assert_eq!(control_id(&[&a, &b]), control_id(&[&a, &b]));
        assert_ne!(control_id(&[&a]), control_id(&[&b]));
        assert_eq!(control_id(&[&a]).len(), 20);
    }
}
