//! The firmware-protocol session: the gateway's side of `firmware/README.md`, as a pure
//! state machine. Bytes and commit results go in; [`Action`]s come out. No I/O, no clock
//! (the caller passes the time), so every rule below is unit-tested without a port.
//!
//! Rules:
//!
//! - **Identify first.** `Readings` before a `Hello` on this connection are refused with
//!   `Nack(Unidentified)`; the device then sends `Hello` and retries. A new connection
//!   ([`Session::reconnected`]) forgets the `Hello`, since another device may be on the
//!   cable now. The device id is its EUI-64 system id when it has one, else its serial number.
//! - **Acknowledge after durable.** New readings become [`Action::Commit`]; only when the
//!   buffer answers `Ok` ([`Session::committed`]) does the session emit the `Ack`. A full
//!   buffer or a storage error answers `Nack(BufferFull)`: the device keeps the readings and
//!   retries after its back-off. A closed buffer (shutdown) answers nothing.
//! - **Dedupe by (device, sequence number, device time).** A retransmission after a lost
//!   `Ack` of a reading committed on this run is acknowledged again without a second
//!   commit; one whose commit is still in flight is left to that commit's `Ack`. After a
//!   gateway restart the buffer's identifier (which holds the same three parts) makes the
//!   recommit a no-op, and the upstream's conditional create does the same.
//!   A reading without a clock (`NoClock`) is identified by its receive time, so only this
//!   in-memory dedupe protects it: a gateway crash between its commit and its `Ack` can
//!   store it twice. Devices should ask for the time before measuring.
//! - **A frame that decodes but cannot be mapped** (an MDC code not in the catalog, a unit
//!   that is not UCUM text, a time out of range) is dead-lettered as a whole with its reason
//!   ([`Action::Reject`]) and acknowledged once that is durable, so the device stops sending
//!   it and the data is kept for a technician.
//! - **Time.** `TimeRequest` is answered at once with the gateway's clock. The device
//!   clock's offset (gateway − device) is measured from every `TimeRequest` and `Heartbeat`
//!   that carries the device time; offsets within [`CLOCK_TOLERANCE`] are transport delay
//!   and recorded as zero. Readings keep the raw device time (it is part of the identifier)
//!   and carry the offset in `clock_offset`, so the FHIR time is corrected and says so.
//! - **Bad frames** are counted by kind and never answered: the device's retransmission
//!   covers them.
//! - **Device strings** of a `Hello` are bounded by the firmware crate's `heapless` types
//!   (32 bytes for ids and names, 16 for units), within the gateway's own
//!   [`crate::limits`] (checked at compile time below). A name or profile with control
//!   characters is treated as absent.

use std::collections::{HashMap, HashSet, VecDeque};

use time::{Duration, OffsetDateTime};
use vitalbridge_firmware::frame::FrameError;
use vitalbridge_firmware::gateway::{encode_to_vec, StreamDecoder};
use vitalbridge_firmware::message::{
    self as fw, DeviceTime, Hello, Message, Nack, NackReason, Readings, SeqList,
};

use super::{Action, BatchId, CommitOutcome};
use crate::ingest::Bindings;
use crate::model::{
    AbsentReason, Component, Decimal, DeviceId, DeviceRef, Measured, Quantity, Reading, StatusFlag,
    TimeSync, Value,
};
use crate::profile::catalog;

// The firmware's bounded strings fit the gateway's limits for the same kinds of text.
const _: () = assert!(fw::MAX_ID_LEN <= crate::limits::MAX_ID_LEN);
const _: () = assert!(fw::MAX_ID_LEN <= crate::limits::MAX_NAME_LEN);
const _: () = assert!(fw::MAX_ID_LEN <= crate::limits::MAX_CODE_LEN);
const _: () = assert!(fw::MAX_UNIT_LEN <= crate::limits::MAX_UNIT_LEN);

/// Profile id recorded for firmware devices whose `Hello` names none.
pub const DEFAULT_PROFILE: &str = "vitalbridge-firmware-v1";

/// Device clock offsets smaller than this are transport delay, not clock error.
pub const CLOCK_TOLERANCE: Duration = Duration::seconds(1);

/// Committed (sequence number, time) pairs remembered per device for dedupe. A device
/// retransmits only what its outbox holds, so this is far more than enough.
const DEDUPE_MEMORY: usize = 4096;

/// Counts for logs and metrics. Never values.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionStats {
    /// Frames that decoded.
    pub frames: u64,
    /// Frames that did not decode, all kinds.
    pub bad_frames: u64,
    /// … of which larger than the receive buffer.
    pub oversize: u64,
    /// … of which not valid COBS.
    pub cobs: u64,
    /// … of which shorter than version + CRC.
    pub too_short: u64,
    /// … of which with a wrong CRC.
    pub bad_crc: u64,
    /// … of which of a protocol version this gateway does not speak.
    pub unsupported_version: u64,
    /// … of which with an undecodable payload.
    pub decode: u64,
    /// Readings sent for commit.
    pub readings: u64,
    /// Retransmitted readings acknowledged again without a commit.
    pub retransmissions: u64,
    /// Frames dead-lettered because they could not be mapped.
    pub rejected: u64,
    /// `Readings` refused because no `Hello` came first.
    pub unidentified: u64,
    /// `Nack`s for a full or failing buffer.
    pub refused: u64,
    /// Time requests answered.
    pub time_requests: u64,
}

impl SessionStats {
    fn count_bad(&mut self, error: FrameError) {
        self.bad_frames += 1;
        let kind = match error {
            FrameError::Oversize => &mut self.oversize,
            FrameError::Cobs => &mut self.cobs,
            FrameError::TooShort => &mut self.too_short,
            FrameError::BadCrc => &mut self.bad_crc,
            FrameError::UnsupportedVersion(_) => &mut self.unsupported_version,
            FrameError::Decode => &mut self.decode,
        };
        *kind += 1;
    }
}

/// A reading's identity for dedupe: sequence number and raw device time (ms, or none).
type SeqKey = (u32, Option<u64>);

fn seq_key(r: &fw::Reading) -> SeqKey {
    let time = match r.time {
        DeviceTime::NoClock => None,
        DeviceTime::UnixMillis(ms) => Some(ms),
    };
    (r.seq, time)
}

/// Recently committed readings of one device, oldest first.
#[derive(Debug, Default)]
struct Recent {
    order: VecDeque<SeqKey>,
    set: HashSet<SeqKey>,
}

impl Recent {
    fn insert(&mut self, key: SeqKey) {
        if self.set.insert(key) {
            self.order.push_back(key);
            if self.order.len() > DEDUPE_MEMORY {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// A commit or dead-letter the session waits for.
#[derive(Debug)]
struct Pending {
    device_key: String,
    keys: Vec<SeqKey>,
}

/// The gateway side of one serial port speaking the firmware protocol.
#[derive(Debug)]
pub struct Session {
    /// Turns the byte stream into frames.
    decoder: StreamDecoder,
    /// Device → patient bindings.
    bindings: Bindings,
    /// The device that said `Hello` on this connection.
    device: Option<DeviceRef>,
    /// Its clock offset, as last measured on this connection.
    clock_offset: Option<Duration>,
    /// Commits in flight.
    pending: HashMap<BatchId, Pending>,
    /// Next batch id.
    next_batch: BatchId,
    /// Per device key: readings committed on this run.
    committed: HashMap<String, Recent>,
    /// Counters.
    stats: SessionStats,
    /// The most recent bad frame, for the log.
    last_error: Option<FrameError>,
}

impl Session {
    /// A session with no device identified yet.
    pub fn new(bindings: Bindings) -> Self {
        Self {
            decoder: StreamDecoder::new(),
            bindings,
            device: None,
            clock_offset: None,
            pending: HashMap::new(),
            next_batch: 0,
            committed: HashMap::new(),
            stats: SessionStats::default(),
            last_error: None,
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// The kind of the most recent bad frame, if any (and forgets it).
    pub fn take_last_error(&mut self) -> Option<&'static str> {
        self.last_error.take().map(|e| e.kind())
    }

    /// The device identified on this connection, if any.
    #[cfg(test)]
    pub fn device(&self) -> Option<&DeviceRef> {
        self.device.as_ref()
    }

    /// Commits still waiting for the buffer's answer.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The port was (re)opened: forget the partial frame, the identity and the clock offset
    /// (another device may be on the cable now). Commits in flight still get their answers.
    pub fn reconnected(&mut self) {
        self.decoder.reset();
        self.device = None;
        self.clock_offset = None;
    }

    /// Bytes arrived at `now`.
    pub fn receive(&mut self, bytes: &[u8], now: OffsetDateTime) -> Vec<Action> {
        let mut actions = Vec::new();
        for frame in self.decoder.decode(bytes) {
            actions.extend(self.frame(frame, now));
        }
        actions
    }

    /// One frame (or bad frame) arrived at `now`.
    pub fn frame(
        &mut self,
        frame: Result<Message, FrameError>,
        now: OffsetDateTime,
    ) -> Vec<Action> {
        let message = match frame {
            Ok(m) => m,
            Err(e) => {
                self.stats.count_bad(e);
                self.last_error = Some(e);
                return Vec::new();
            }
        };
        self.stats.frames += 1;
        match message {
            Message::Hello(hello) => {
                self.device = identify(&hello);
                Vec::new()
            }
            Message::Readings(readings) => self.readings(readings, now),
            Message::TimeRequest(request) => {
                self.stats.time_requests += 1;
                self.observe_clock(request.device_time, now);
                vec![Action::send(request.respond(unix_millis(now)))]
            }
            Message::Heartbeat(heartbeat) => {
                self.observe_clock(heartbeat.device_time, now);
                Vec::new()
            }
            // Gateway-bound messages from a device are ignored (README, "The conversation" 7).
            Message::Ack(_) | Message::Nack(_) | Message::TimeResponse(_) => Vec::new(),
        }
    }

    /// The buffer answered batch `batch`.
    pub fn committed(&mut self, batch: BatchId, outcome: CommitOutcome) -> Vec<Action> {
        let Some(pending) = self.pending.remove(&batch) else {
            return Vec::new();
        };
        let seqs: SeqList = pending.keys.iter().map(|(seq, _)| *seq).collect();
        match outcome {
            CommitOutcome::Stored => {
                let recent = self.committed.entry(pending.device_key).or_default();
                for key in pending.keys {
                    recent.insert(key);
                }
                vec![Action::send(fw::Ack { seqs })]
            }
            CommitOutcome::Refused => {
                self.stats.refused += 1;
                vec![Action::send(Nack {
                    seqs,
                    reason: NackReason::BufferFull,
                })]
            }
            CommitOutcome::Closed => Vec::new(),
        }
    }

    fn observe_clock(&mut self, device_time: DeviceTime, now: OffsetDateTime) {
        if let Some(t) = device_datetime(device_time) {
            let offset = now - t;
            self.clock_offset = Some(if offset.abs() < CLOCK_TOLERANCE {
                Duration::ZERO
            } else {
                offset
            });
        }
    }

    fn readings(&mut self, readings: Readings, now: OffsetDateTime) -> Vec<Action> {
        let Some(device) = self.device.clone() else {
            self.stats.unidentified += 1;
            return vec![Action::send(readings.nack(NackReason::Unidentified))];
        };
        let key = device.id.key();
        let recent = self.committed.get(&key);
        let in_flight = |k: &SeqKey| {
            self.pending
                .values()
                .any(|p| p.device_key == key && p.keys.contains(k))
        };
        let mut again = SeqList::new();
        let mut new = Vec::new();
        for r in &readings.readings {
            let k = seq_key(r);
            if recent.is_some_and(|rec| rec.set.contains(&k)) {
                // Capacity: at most as many as the frame held.
                let _ = again.push(r.seq);
            } else if !in_flight(&k) && !new.iter().any(|n: &&fw::Reading| seq_key(n) == k) {
                new.push(r);
            }
        }
        let mut actions = Vec::new();
        if !again.is_empty() {
            self.stats.retransmissions += again.len() as u64;
            actions.push(Action::send(fw::Ack { seqs: again }));
        }
        if new.is_empty() {
            return actions;
        }
        let batch = self.next_batch;
        self.next_batch += 1;
        let keys: Vec<SeqKey> = new.iter().map(|r| seq_key(r)).collect();
        let patient = self.bindings.patient(&key);
        let converted: Result<Vec<Reading>, (usize, ConvertError)> = new
            .iter()
            .enumerate()
            .map(|(i, r)| {
                convert(r, &device, now, self.clock_offset)
                    .map(|mut reading| {
                        reading.patient = patient.clone();
                        reading
                    })
                    .map_err(|e| (i, e))
            })
            .collect();
        self.pending.insert(
            batch,
            Pending {
                device_key: key,
                keys,
            },
        );
        match converted {
            Ok(readings) => {
                self.stats.readings += readings.len() as u64;
                actions.push(Action::Commit {
                    batch,
                    readings,
                    hold: false,
                });
            }
            Err((i, e)) => {
                self.stats.rejected += 1;
                let payload = encode_to_vec(&Message::Readings(Readings {
                    readings: new.into_iter().cloned().collect(),
                }))
                .unwrap_or_default();
                actions.push(Action::Reject {
                    batch,
                    reason: format!("firmware frame: readings[{i}].{e}"),
                    payload,
                    hold: false,
                });
            }
        }
        actions
    }
}

/// The device a `Hello` names, or `None` when it names no usable id.
fn identify(hello: &Hello) -> Option<DeviceRef> {
    let id = match hello.system_id {
        Some(eui) => DeviceId::Eui64(eui),
        None if !hello.serial.is_empty() && !hello.serial.chars().any(char::is_control) => {
            DeviceId::Serial(hello.serial.to_string())
        }
        None => return None,
    };
    let text = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && !s.chars().any(char::is_control)).then(|| s.to_owned())
    };
    Some(DeviceRef {
        id,
        profile: text(&hello.profile).unwrap_or_else(|| DEFAULT_PROFILE.to_owned()),
        model: text(&hello.model),
        manufacturer: text(&hello.manufacturer),
    })
}

/// The device's clock reading as a UTC time, if it has a clock and the value is in range.
fn device_datetime(time: DeviceTime) -> Option<OffsetDateTime> {
    match time {
        DeviceTime::NoClock => None,
        DeviceTime::UnixMillis(ms) => {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
        }
    }
}

fn unix_millis(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// Why a firmware reading does not map to the model: the field at fault, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ConvertError {
    #[error("metric: MDC code not in the catalog")]
    Metric,
    #[error("unit: not a UCUM code")]
    Unit,
    #[error("unit: {0}")]
    UnitFit(crate::profile::units::UnitError),
    #[error("components[{0}].metric: MDC code not in the catalog")]
    ComponentMetric(usize),
    #[error("value: a reading with components has no value")]
    ValueAndComponents,
    #[error("value: neither a value nor components")]
    NoValue,
    #[error("time: out of range")]
    Time,
}

/// Maps a firmware reading to the model. Errors name the field.
fn convert(
    r: &fw::Reading,
    device: &DeviceRef,
    received_at: OffsetDateTime,
    clock_offset: Option<Duration>,
) -> Result<Reading, ConvertError> {
    let metric = catalog::by_mdc_for_unit(r.metric, r.unit.as_str()).ok_or(ConvertError::Metric)?;
    let unit = r.unit.as_str();
    if unit.is_empty() || !unit.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConvertError::Unit);
    }
    // The frame's one unit is its value's, or every component's.
    let fits = |m: &crate::model::Metric| {
        crate::profile::units::check_unit(m, unit).map_err(ConvertError::UnitFit)
    };
    let value = match (r.value, r.components.is_empty()) {
        (Some(v), true) => {
            fits(&metric)?;
            Value::Quantity(Quantity {
                value: measured(v),
                unit: unit.to_owned(),
            })
        }
        (None, false) => Value::Components(
            r.components
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let metric =
                        catalog::by_mdc(c.metric).ok_or(ConvertError::ComponentMetric(i))?;
                    fits(&metric)?;
                    Ok(Component {
                        metric,
                        quantity: Quantity {
                            value: measured(c.value),
                            unit: unit.to_owned(),
                        },
                    })
                })
                .collect::<Result<_, ConvertError>>()?,
        ),
        (Some(_), false) => return Err(ConvertError::ValueAndComponents),
        (None, true) => return Err(ConvertError::NoValue),
    };
    let device_time = match r.time {
        DeviceTime::NoClock => None,
        t @ DeviceTime::UnixMillis(_) => Some(device_datetime(t).ok_or(ConvertError::Time)?),
    };
    Ok(Reading {
        device: device.clone(),
        patient: None,
        metric,
        value,
        device_time,
        clock_offset: device_time.and(clock_offset),
        received_at,
        duration: None,
        sequence: Some(u64::from(r.seq)),
        status: status_flags(r.status),
        device_user: None,
        bedside: None,
        time_sync: clock_offset
            .and(device_time)
            .map(|_| TimeSync::FirmwareTimeSync),
    })
}

fn measured(v: fw::Value) -> Measured {
    match v {
        fw::Value::Decimal { mantissa, exponent } => {
            Measured::Value(Decimal::new(i64::from(mantissa), exponent))
        }
        fw::Value::Special(s) => Measured::Absent(match s {
            fw::Special::NaN => AbsentReason::NotANumber,
            fw::Special::NRes => AbsentReason::NotAtResolution,
            fw::Special::PositiveInfinity => AbsentReason::PositiveInfinity,
            fw::Special::NegativeInfinity => AbsentReason::NegativeInfinity,
        }),
    }
}

/// Status bits (README "Status bits") to flags. Demo data is test data for FHIR (HTEST);
/// reserved bits are ignored.
fn status_flags(status: fw::Status) -> Vec<StatusFlag> {
    [
        (fw::Status::QUESTIONABLE, StatusFlag::Questionable),
        (fw::Status::CALIBRATING, StatusFlag::Calibrating),
        (fw::Status::TEST_DATA, StatusFlag::TestData),
        (fw::Status::DEMO_DATA, StatusFlag::TestData),
        (fw::Status::BODY_MOVEMENT, StatusFlag::BodyMovement),
        (fw::Status::CUFF_LOOSE, StatusFlag::CuffLoose),
        (fw::Status::IRREGULAR_PULSE, StatusFlag::IrregularPulse),
        (fw::Status::IMPROPER_POSITION, StatusFlag::ImproperPosition),
    ]
    .into_iter()
    .filter(|(bit, _)| status.contains(*bit))
    .fold(Vec::new(), |mut flags, (_, flag)| {
        if !flags.contains(&flag) {
            flags.push(flag);
        }
        flags
    })
}
