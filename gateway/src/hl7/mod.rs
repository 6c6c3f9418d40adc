//! HL7 v2 for hospital systems, without I/O: MLLP framing ([`mllp`]), the v2 message
//! format with its delimiters, escapes and character sets ([`v2`]), date/times ([`dtm`]),
//! IHE PCD-01 ORU^R01 → readings ([`pcd`]), acknowledgements ([`ack`]), readings →
//! ORU^R01 ([`oru`]) and MDC ↔ UCUM units ([`units`]).
//!
//! The listener that uses them is `ingest/hl7.rs`, the sender `uplink/hl7.rs`; the
//! technician's `vitalbridge decode hl7` is [`decode`].
//!
//! Architecture invariant: every function here that reads outside bytes returns an error for
//! bad input and never panics; each has a property test over random bytes and a fuzz target
//! (`gateway/fuzz/fuzz_targets/hl7_*.rs`).

pub mod ack;
pub mod dtm;
pub mod mllp;
pub mod oru;
pub mod pcd;
pub mod units;
pub mod v2;

use time::OffsetDateTime;

use crate::model::{Decimal, PatientRef};
use pcd::{AckCode, Header, MapContext, Mapped, Refusal};
use v2::Message;

/// One message of a frame, processed as far as it goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Processed {
    /// The MSH fields the ACK needs (default when the message did not parse).
    pub header: Header,
    /// The message's character set (for the ACK).
    pub charset: v2::Charset,
    /// The readings and unmapped OBX, or why the message is refused.
    pub outcome: Result<Mapped, Refusal>,
}

/// Settings of the mapping.
#[derive(Clone)]
pub struct Settings {
    /// The zone of times without an offset.
    pub zone: jiff::tz::TimeZone,
    /// Vendor placeholder values meaning "no value".
    pub placeholders: Vec<Decimal>,
}

impl Settings {
    /// Times without an offset in UTC, no vendor placeholders (tests, fuzzing).
    pub fn utc() -> Self {
        Self {
            zone: jiff::tz::TimeZone::UTC,
            placeholders: Vec::new(),
        }
    }
}

/// Parses and maps one message (one element of [`v2::split_batch`]).
pub fn process(
    bytes: &[u8],
    settings: &Settings,
    received_at: OffsetDateTime,
    binding: &dyn Fn(&str) -> Option<PatientRef>,
) -> Processed {
    let message = match Message::parse(bytes) {
        Ok(m) => m,
        Err(e) => {
            return Processed {
                header: Header::default(),
                charset: v2::Charset::Default,
                outcome: Err(Refusal {
                    ack: AckCode::Reject,
                    error: pcd::ErrorInfo {
                        segment: String::new(),
                        sequence: 0,
                        field: 0,
                        code: match e {
                            v2::ParseError::UnsupportedCharset(_) => pcd::err_code::DATA_TYPE,
                            _ => pcd::err_code::SEGMENT_SEQUENCE,
                        },
                        text: e.to_string(),
                    },
                }),
            }
        }
    };
    let ctx = MapContext {
        received_at,
        zone: &settings.zone,
        placeholders: &settings.placeholders,
        binding,
    };
    Processed {
        header: pcd::header(&message),
        charset: message.charset,
        outcome: pcd::map(&message, &ctx),
    }
}

/// The readings of a captured message or batch, for `vitalbridge decode hl7`: every
/// message's outcome, in order.
pub fn decode(bytes: &[u8], settings: &Settings, received_at: OffsetDateTime) -> Vec<Processed> {
    let bytes = strip_mllp(bytes);
    v2::split_batch(&bytes)
        .into_iter()
        .map(|m| process(m, settings, received_at, &|_| None))
        .collect()
}

/// A captured message may still carry its MLLP frame bytes; a file may use LF line ends.
fn strip_mllp(bytes: &[u8]) -> Vec<u8> {
    bytes
        .iter()
        .copied()
        .filter(|&b| b != mllp::START && b != mllp::END)
        .collect()
}
