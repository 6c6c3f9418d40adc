//! The messages devices and the gateway exchange, and their postcard encoding.
//!
//! # Format
//!
//! A message is one [`Message`] value serialized with [postcard] 1.x. Postcard is not
//! self-describing: the bytes are the fields in declaration order, with no names and no
//! padding. The rules this crate relies on:
//!
//! | Rust type | bytes |
//! | --- | --- |
//! | `u8`, `i8` | one byte (two's complement for `i8`) |
//! | `u16`, `u32`, `u64` | unsigned LEB128 varint: 7 bits per byte, least significant group first, high bit set on every byte but the last (at most 3 / 5 / 10 bytes) |
//! | `i32` | zigzag (`(n << 1) ^ (n >> 31)`, so 0, -1, 1, -2 … become 0, 1, 2, 3 …), then as `u32` |
//! | `[u8; 8]` | eight raw bytes, no length |
//! | `Option<T>` | `00` for `None`; `01` then `T` for `Some` |
//! | enum | variant index as a varint (one byte here, all indices are < 128), then the variant's fields |
//! | `heapless::String<N>` | byte length as a varint, then the UTF-8 bytes |
//! | `heapless::Vec<T, N>` | element count as a varint, then each element |
//! | struct, newtype | the fields in order / the inner value |
//!
//! Variant indices are part of the wire format: variants are only ever appended, and a
//! change that is not an append needs a new [`PROTOCOL_VERSION`]. Bounded collections
//! reject too-long input when decoding, so every message has a known worst-case size
//! ([`MAX_PAYLOAD_LEN`]).
//!
//! The frame around a message (version byte, CRC, COBS) is described in [`crate::frame`].

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks; the first byte of every frame body.
pub const PROTOCOL_VERSION: u8 = 1;

/// Most readings one [`Readings`] message carries (and most sequence numbers in an
/// [`Ack`] or [`Nack`]).
pub const MAX_READINGS: usize = 4;

/// Most components one reading carries (blood pressure uses three).
pub const MAX_COMPONENTS: usize = 4;

/// Longest UCUM unit code, in bytes.
pub const MAX_UNIT_LEN: usize = 16;

/// Longest device identity string (serial number, manufacturer, model, profile id), in bytes.
pub const MAX_ID_LEN: usize = 32;

/// Longest firmware version string, in bytes.
pub const MAX_VERSION_LEN: usize = 16;

/// Worst-case size of an encoded [`Message`] in bytes: a [`Readings`] message with
/// [`MAX_READINGS`] readings, each with [`MAX_COMPONENTS`] components and every field at its
/// longest encoding. A test builds that message and checks this number.
pub const MAX_PAYLOAD_LEN: usize = 1 + 1 + MAX_READINGS * MAX_READING_LEN;

/// Worst-case size of one encoded [`Reading`].
const MAX_READING_LEN: usize = 5 // seq
    + (1 + 10) // time
    + 5 // metric
    + (1 + MAX_VALUE_LEN) // value
    + (1 + MAX_UNIT_LEN) // unit
    + (1 + MAX_COMPONENTS * (5 + MAX_VALUE_LEN)) // components
    + 3; // status

/// Worst-case size of one encoded [`Value`]: variant, zigzag `i32`, `i8`.
const MAX_VALUE_LEN: usize = 1 + 5 + 1;

/// A UCUM unit code such as `%`, `mm[Hg]`, `/min`, `Cel`, `kg`, `mg/dL`.
pub type Unit = String<MAX_UNIT_LEN>;

/// Sequence numbers acknowledged or refused together.
pub type SeqList = Vec<u32, MAX_READINGS>;

/// Everything that travels in a frame.
///
/// Device → gateway: [`Hello`](Message::Hello), [`Readings`](Message::Readings),
/// [`TimeRequest`](Message::TimeRequest), [`Heartbeat`](Message::Heartbeat).
/// Gateway → device: [`Ack`](Message::Ack), [`Nack`](Message::Nack),
/// [`TimeResponse`](Message::TimeResponse).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(
    clippy::large_enum_variant,
    reason = "no alloc: a message is a fixed-size value (at most a few hundred bytes), never boxed"
)]
pub enum Message {
    /// Variant 0: who the device is. Sent after boot and whenever the gateway asks
    /// (a [`Nack`] with [`NackReason::Unidentified`]).
    Hello(Hello),
    /// Variant 1: measurements, each with its own sequence number.
    Readings(Readings),
    /// Variant 2: the gateway has durably stored these readings.
    Ack(Ack),
    /// Variant 3: the gateway did not store these readings; retry later.
    Nack(Nack),
    /// Variant 4: the device asks for the gateway's clock.
    TimeRequest(TimeRequest),
    /// Variant 5: the gateway's clock, answering a [`TimeRequest`].
    TimeResponse(TimeResponse),
    /// Variant 6: the device is alive, and how much it still holds.
    Heartbeat(Heartbeat),
}

/// Device identity, sent once per connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// IEEE EUI-64 system id, most significant byte first, where the device has one; the
    /// gateway's preferred stable device identifier.
    pub system_id: Option<[u8; 8]>,
    /// Serial number: the stable identifier when there is no system id.
    pub serial: String<MAX_ID_LEN>,
    /// Manufacturer name.
    pub manufacturer: String<MAX_ID_LEN>,
    /// Model name or number.
    pub model: String<MAX_ID_LEN>,
    /// Firmware version, free text (e.g. `1.4.2`).
    pub firmware: String<MAX_VERSION_LEN>,
    /// Gateway device-profile id that says how to interpret this device's readings.
    pub profile: String<MAX_ID_LEN>,
}

/// One or more readings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readings {
    /// The readings, in the order the device sends them (not necessarily contiguous
    /// sequence numbers: some may have been acknowledged already).
    pub readings: Vec<Reading, MAX_READINGS>,
}

impl Readings {
    /// The sequence numbers of these readings.
    pub fn seqs(&self) -> SeqList {
        self.readings.iter().map(|r| r.seq).collect()
    }

    /// The acknowledgement the gateway sends once all of these readings are durable.
    pub fn ack(&self) -> Ack {
        Ack { seqs: self.seqs() }
    }

    /// The refusal the gateway sends when it cannot store these readings.
    pub fn nack(&self, reason: NackReason) -> Nack {
        Nack {
            seqs: self.seqs(),
            reason,
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    /// Per-device sequence number, increasing by one per reading and never reused by the
    /// device (it survives reboots on a device that persists it). The gateway acknowledges
    /// by it and uses it to recognise a retransmission.
    pub seq: u32,
    /// When the device took the measurement, by its own clock.
    pub time: DeviceTime,
    /// IEEE 11073-10101 (MDC) code: partition × 2^16 + term code (e.g. 150456 for SpO2).
    pub metric: u32,
    /// The value; `None` for a compound with no value of its own (blood pressure), whose
    /// values are the components.
    pub value: Option<Value>,
    /// UCUM unit of `value` and of every component.
    pub unit: Unit,
    /// Parts of a compound measurement (blood pressure: systolic, diastolic, mean).
    pub components: Vec<Component, MAX_COMPONENTS>,
    /// Measurement status bits.
    pub status: Status,
}

impl Reading {
    /// A single-valued reading with no components and no status bits. The sequence number is
    /// 0 until an [`Outbox`](crate::outbox::Outbox) assigns one.
    pub fn new(time: DeviceTime, metric: u32, value: Value, unit: Unit) -> Self {
        Self {
            seq: 0,
            time,
            metric,
            value: Some(value),
            unit,
            components: Vec::new(),
            status: Status::NONE,
        }
    }
}

/// One part of a compound measurement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// MDC code of the part (e.g. 150021 systolic, 150022 diastolic, 150023 mean).
    pub metric: u32,
    /// Its value, in the reading's unit.
    pub value: Value,
}

/// A measured number, or the special value the device reported instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    /// Variant 0: `mantissa × 10^exponent`, keeping the device's precision
    /// (mantissa 365, exponent -1 is 36.5).
    Decimal {
        /// Significant digits, with sign.
        mantissa: i32,
        /// Power of ten.
        exponent: i8,
    },
    /// Variant 1: no number.
    Special(Special),
}

impl Value {
    /// `mantissa × 10^exponent`.
    pub const fn decimal(mantissa: i32, exponent: i8) -> Self {
        Self::Decimal { mantissa, exponent }
    }
}

/// IEEE 11073-20601 special values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Special {
    /// Variant 0: not a number.
    NaN,
    /// Variant 1: not at this resolution (the device could not produce a value).
    NRes,
    /// Variant 2: +INF.
    PositiveInfinity,
    /// Variant 3: -INF.
    NegativeInfinity,
}

/// When something happened, by the device's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceTime {
    /// Variant 0: the device has no usable clock; the gateway stamps the reading with its
    /// receive time and records that it did.
    NoClock,
    /// Variant 1: milliseconds since 1970-01-01T00:00:00Z by the device's clock (which may
    /// be off; the gateway keeps this raw value and its own correction).
    UnixMillis(u64),
}

/// Measurement status bits (bit 0 is the least significant). Bits this version does not
/// name are reserved: devices send them as 0, receivers keep whatever arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Status(pub u16);

impl Status {
    /// No status bits set: a normal measurement.
    pub const NONE: Self = Self(0);
    /// Bit 0: the device considers the value questionable.
    pub const QUESTIONABLE: Self = Self(1 << 0);
    /// Bit 1: the sensor was calibrating.
    pub const CALIBRATING: Self = Self(1 << 1);
    /// Bit 2: test data, not a patient measurement.
    pub const TEST_DATA: Self = Self(1 << 2);
    /// Bit 3: demonstration data, not a patient measurement.
    pub const DEMO_DATA: Self = Self(1 << 3);
    /// Bit 4: body movement detected during the measurement.
    pub const BODY_MOVEMENT: Self = Self(1 << 4);
    /// Bit 5: blood pressure cuff too loose.
    pub const CUFF_LOOSE: Self = Self(1 << 5);
    /// Bit 6: irregular pulse detected.
    pub const IRREGULAR_PULSE: Self = Self(1 << 6);
    /// Bit 7: improper measurement position.
    pub const IMPROPER_POSITION: Self = Self(1 << 7);

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` with the bits of `other` set too.
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// The gateway has committed these readings to durable storage (or already had them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Sequence numbers of the stored readings.
    pub seqs: SeqList,
}

/// The gateway did not store these readings. The device keeps them and retries later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    /// Sequence numbers of the refused readings.
    pub seqs: SeqList,
    /// Why.
    pub reason: NackReason,
}

/// Why the gateway refused readings. Encoded as one byte; unknown codes are kept as
/// [`NackReason::Other`] so an older device still backs off and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "u8", into = "u8")]
pub enum NackReason {
    /// Code 1: the gateway's buffer is full; retry after a back-off.
    BufferFull,
    /// Code 2: the gateway does not know who is talking; send a [`Hello`], then retry.
    Unidentified,
    /// Any other code (0, 3–255): retry after a back-off.
    Other(u8),
}

impl From<u8> for NackReason {
    fn from(code: u8) -> Self {
        match code {
            1 => Self::BufferFull,
            2 => Self::Unidentified,
            other => Self::Other(other),
        }
    }
}

impl From<NackReason> for u8 {
    fn from(reason: NackReason) -> Self {
        match reason {
            NackReason::BufferFull => 1,
            NackReason::Unidentified => 2,
            NackReason::Other(code) => code,
        }
    }
}

/// The device asks for the gateway's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeRequest {
    /// Opaque to the gateway, echoed in the response; typically the device's monotonic
    /// milliseconds when it sent the request, so it can measure the round trip.
    pub token: u32,
    /// The device's current clock, so the gateway can log and track its offset.
    pub device_time: DeviceTime,
}

impl TimeRequest {
    /// The answer, given the gateway's current Unix time in milliseconds.
    pub const fn respond(&self, gateway_unix_millis: u64) -> TimeResponse {
        TimeResponse {
            token: self.token,
            gateway_unix_millis,
        }
    }
}

/// The gateway's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeResponse {
    /// The request's token, unchanged.
    pub token: u32,
    /// Milliseconds since 1970-01-01T00:00:00Z by the gateway's clock when it answered.
    pub gateway_unix_millis: u64,
}

/// The device is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Seconds since the device booted.
    pub uptime_secs: u32,
    /// Readings waiting in the device's outbox for an acknowledgement.
    pub pending: u16,
    /// The device's current clock.
    pub device_time: DeviceTime,
}

macro_rules! message_from {
    ($($variant:ident),*) => {$(
        impl From<$variant> for Message {
            fn from(inner: $variant) -> Self {
                Message::$variant(inner)
            }
        }
    )*};
}
message_from!(
    Hello,
    Readings,
    Ack,
    Nack,
    TimeRequest,
    TimeResponse,
    Heartbeat
);

/// A payload that is not a valid [`Message`] (unknown variant, bad varint, string or list
/// longer than its bound, invalid UTF-8, bytes left over, or too short).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError;

/// The buffer given to [`Message::encode`] is too small for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferFull;

impl Message {
    /// Encodes the message with postcard into `buf`, returning the bytes written.
    pub fn encode<'b>(&self, buf: &'b mut [u8]) -> Result<&'b mut [u8], BufferFull> {
        postcard::to_slice(self, buf).map_err(|_| BufferFull)
    }

    /// Decodes a message that must fill `bytes` exactly.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match postcard::take_from_bytes::<Self>(bytes) {
            Ok((message, [])) => Ok(message),
            _ => Err(DecodeError),
        }
    }
}
