//! Frames: how one [`Message`] is put on a byte stream.
//!
//! # Format
//!
//! ```text
//! wire   = COBS(body) 00
//! body   = version payload crc
//! version: 1 byte, PROTOCOL_VERSION (1)
//! payload: the postcard encoding of one Message (see crate::message)
//! crc    : 4 bytes, CRC-32/ISO-HDLC of version ‖ payload, little-endian (see crate::crc)
//! ```
//!
//! The COBS step ([`crate::cobs`]) removes every `00` from the body, so a single `00` ends
//! each frame and a receiver that starts mid-stream (or after noise) is back in step at the
//! next `00`. Senders may put extra `00`s between frames (for example one before the first
//! frame, to flush whatever the receiver held); receivers skip empty frames silently.
//!
//! A receiver checks, in this order: the COBS bytes fit its buffer ([`FrameError::Oversize`]
//! otherwise), they are valid COBS ([`FrameError::Cobs`]), the body holds at least a version
//! byte and a CRC ([`FrameError::TooShort`]), the CRC matches ([`FrameError::BadCrc`]), the
//! version is one it speaks ([`FrameError::UnsupportedVersion`]), and the payload is one whole
//! message with nothing left over ([`FrameError::Decode`]).
//!
//! **Compatibility rule.** The envelope (leading version byte, trailing CRC-32, COBS, `00`
//! delimiter) never changes between protocol versions, so an intact frame of a newer version
//! is always recognised as such and refused with `UnsupportedVersion(v)` instead of being
//! misread; the payload of a newer version may change in any way.
//!
//! Sizes: a body is at most [`MAX_BODY_LEN`] bytes and a frame on the wire, delimiter
//! included, at most [`MAX_FRAME_LEN`] bytes. A receiver that may get any message needs an
//! [`Accumulator`](crate::accumulator::Accumulator) of at least `MAX_FRAME_LEN - 1` bytes; a
//! device that only receives small gateway messages may use a smaller one.

use crate::cobs;
use crate::crc::crc32;
use crate::message::{Message, MAX_PAYLOAD_LEN, PROTOCOL_VERSION};
use core::fmt;

/// Bytes of the CRC at the end of a body.
pub const CRC_LEN: usize = 4;

/// Largest frame body: version byte, largest payload, CRC.
pub const MAX_BODY_LEN: usize = 1 + MAX_PAYLOAD_LEN + CRC_LEN;

/// Largest frame on the wire: the COBS-encoded largest body plus the `00` delimiter.
pub const MAX_FRAME_LEN: usize = cobs::max_encoded_len(MAX_BODY_LEN) + 1;

/// The frame delimiter.
pub const DELIMITER: u8 = 0x00;

/// Why received bytes did not yield a message. Small and `Copy` so a receiver can count
/// bad frames by kind ([`FrameError::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameError {
    /// More bytes arrived before a `00` than the receiver's buffer holds; they were
    /// discarded up to and including the next `00`.
    Oversize,
    /// The bytes between two `00`s were not valid COBS.
    Cobs,
    /// The body is shorter than a version byte and a CRC.
    TooShort,
    /// The CRC does not match: noise, a truncated frame, or a frame joined to garbage.
    BadCrc,
    /// An intact frame of a protocol version this side does not speak.
    UnsupportedVersion(u8),
    /// An intact frame of our version whose payload is not one valid message.
    Decode,
}

impl FrameError {
    /// A short stable label, for metrics (`oversize`, `cobs`, `too_short`, `bad_crc`,
    /// `unsupported_version`, `decode`).
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Oversize => "oversize",
            Self::Cobs => "cobs",
            Self::TooShort => "too_short",
            Self::BadCrc => "bad_crc",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::Decode => "decode",
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Oversize => f.write_str("frame larger than the receive buffer"),
            Self::Cobs => f.write_str("invalid COBS encoding"),
            Self::TooShort => f.write_str("frame too short for version and CRC"),
            Self::BadCrc => f.write_str("CRC mismatch"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            Self::Decode => f.write_str("payload is not a valid message"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for FrameError {}

/// Why a message could not be encoded into a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is smaller than the frame; [`MAX_FRAME_LEN`] always suffices.
    BufferTooSmall,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall => f.write_str("output buffer too small for the frame"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for EncodeError {}

/// Writes the body (version, payload, CRC) of `message` into `body`, returning its length.
///
/// `body` of [`MAX_BODY_LEN`] bytes always suffices.
pub fn encode_body(message: &Message, body: &mut [u8]) -> Result<usize, EncodeError> {
    let (version, rest) = body.split_first_mut().ok_or(EncodeError::BufferTooSmall)?;
    *version = PROTOCOL_VERSION;
    let payload_len = message
        .encode(rest)
        .map_err(|_| EncodeError::BufferTooSmall)?
        .len();
    let covered = 1 + payload_len;
    let crc = crc32(&body[..covered]);
    body.get_mut(covered..covered + CRC_LEN)
        .ok_or(EncodeError::BufferTooSmall)?
        .copy_from_slice(&crc.to_le_bytes());
    Ok(covered + CRC_LEN)
}

/// Encodes `message` as a complete frame, delimiter included, into `out`, returning the
/// number of bytes to send.
///
/// `out` of [`MAX_FRAME_LEN`] bytes always suffices. Uses [`MAX_BODY_LEN`] bytes of stack.
pub fn encode_frame(message: &Message, out: &mut [u8]) -> Result<usize, EncodeError> {
    let mut body = [0u8; MAX_BODY_LEN];
    let body_len = encode_body(message, &mut body)?;
    let n = cobs::encode(&body[..body_len], out).map_err(|_| EncodeError::BufferTooSmall)?;
    *out.get_mut(n).ok_or(EncodeError::BufferTooSmall)? = DELIMITER;
    Ok(n + 1)
}

/// Checks and decodes a frame body (already COBS-decoded): CRC, then version, then payload.
pub fn decode_body(body: &[u8]) -> Result<Message, FrameError> {
    if body.len() < 1 + CRC_LEN {
        return Err(FrameError::TooShort);
    }
    let (covered, crc_bytes) = body.split_at(body.len() - CRC_LEN);
    let mut received = [0u8; CRC_LEN];
    received.copy_from_slice(crc_bytes);
    if crc32(covered) != u32::from_le_bytes(received) {
        return Err(FrameError::BadCrc);
    }
    let (&version, payload) = covered.split_first().ok_or(FrameError::TooShort)?;
    if version != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    Message::decode(payload).map_err(|_| FrameError::Decode)
}

/// Decodes one frame's COBS bytes (everything between two delimiters, delimiters
/// excluded). `frame` is overwritten with the body.
pub fn decode_frame(frame: &mut [u8]) -> Result<Message, FrameError> {
    let len = cobs::decode_in_place(frame).map_err(|_| FrameError::Cobs)?;
    decode_body(&frame[..len])
}
