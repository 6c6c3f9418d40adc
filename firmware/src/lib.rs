//! The Vitalbridge device wire format: what a device with a serial (UART, USB-CDC) link sends
//! to the gateway and what it gets back. `no_std`, no allocation; the `std` feature (on by
//! default) adds gateway-side conveniences.
//!
//! A frame on the wire is `COBS(version ‖ postcard(message) ‖ CRC-32) 00`. The layers, each
//! in its own module with its format written at the top:
//!
//! - [`message`]: the [`Message`] enum (hello, readings, ack/nack, time
//!   sync, heartbeat) and its postcard encoding;
//! - [`crc`]: the CRC-32 that protects each frame;
//! - [`cobs`]: the byte stuffing that makes `00` a delimiter;
//! - [`frame`]: one message ↔ one frame, and the [`FrameError`] kinds;
//! - [`accumulator`]: byte chunks in, decoded messages out, resynchronising after bad input;
//! - [`outbox`]: the device keeps readings until acknowledged and retransmits on timeout;
//! - `gateway` (feature `std`): encode into a `Vec`, a stream decoder for async code.
//!
//! The byte-for-byte specification with worked examples is in the crate's `README.md`; its
//! examples are checked by the tests.
//!
//! ```
//! use vitalbridge_firmware::accumulator::FrameAccumulator;
//! use vitalbridge_firmware::frame::{encode_frame, MAX_FRAME_LEN};
//! use vitalbridge_firmware::message::{Message, Readings, Reading, DeviceTime, Value, Unit};
//!
//! // Device: build a reading and frame it.
//! let unit = Unit::try_from("%").unwrap();
//! let mut reading = Reading::new(DeviceTime::UnixMillis(1_700_000_000_250), 150456, Value::decimal(97, 0), unit);
//! reading.seq = 7;
//! let mut readings = Readings { readings: Default::default() };
//! readings.readings.push(reading).unwrap();
//! let message = Message::Readings(readings);
//! let mut wire = [0u8; MAX_FRAME_LEN];
//! let n = encode_frame(&message, &mut wire).unwrap();
//!
//! // Gateway: feed bytes as they come, get messages out.
//! let mut acc = FrameAccumulator::new();
//! let mut got = acc.frames(&wire[..n]);
//! assert_eq!(got.next(), Some(Ok(message)));
//! assert_eq!(got.next(), None);
//! ```
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![warn(missing_docs)]

pub mod accumulator;
pub mod cobs;
pub mod crc;
pub mod frame;
#[cfg(feature = "std")]
pub mod gateway;
pub mod message;
pub mod outbox;

pub use accumulator::{Accumulator, FeedResult, FrameAccumulator};
pub use frame::{decode_frame, encode_frame, EncodeError, FrameError, MAX_FRAME_LEN};
pub use message::{Message, PROTOCOL_VERSION};
pub use outbox::{Outbox, OutboxFull, RetryPolicy};
