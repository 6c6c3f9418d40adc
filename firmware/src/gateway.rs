//! Gateway-side conveniences (feature `std`): owned frames and a stream decoder whose
//! results hold no borrow, so they are easy to use across `.await` points.

use crate::accumulator::FrameAccumulator;
use crate::frame::{encode_frame, EncodeError, FrameError, MAX_FRAME_LEN};
use crate::message::Message;
use std::time::{SystemTime, UNIX_EPOCH};
use std::vec::Vec;

/// Encodes `message` as a complete frame, delimiter included, ready to write to the port.
pub fn encode_to_vec(message: &Message) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![0u8; MAX_FRAME_LEN];
    let len = encode_frame(message, &mut out)?;
    out.truncate(len);
    Ok(out)
}

/// Decodes a serial byte stream chunk by chunk.
///
/// ```
/// use vitalbridge_firmware::gateway::{encode_to_vec, StreamDecoder};
/// use vitalbridge_firmware::message::{Ack, Message, SeqList};
///
/// let frame = encode_to_vec(&Message::Ack(Ack { seqs: SeqList::from_slice(&[7]).unwrap() })).unwrap();
/// let mut decoder = StreamDecoder::new();
/// // Bytes arrive in any split; garbage before the frame costs one error.
/// let mut results = decoder.decode(&[0x13, 0x37, 0x00]);
/// results.extend(decoder.decode(&frame[..3]));
/// results.extend(decoder.decode(&frame[3..]));
/// assert_eq!(results.len(), 2);
/// assert!(results[0].is_err());
/// assert!(matches!(results[1], Ok(Message::Ack(_))));
/// ```
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    /// Holds the unfinished frame between chunks.
    accumulator: FrameAccumulator,
}

impl StreamDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every frame that ends in `chunk`, in order; an unfinished frame is kept for the
    /// next call.
    pub fn decode(&mut self, chunk: &[u8]) -> Vec<Result<Message, FrameError>> {
        self.accumulator.frames(chunk).collect()
    }

    /// Forgets an unfinished frame (call after reopening the port).
    pub fn reset(&mut self) {
        self.accumulator.reset();
    }
}

/// `time` as milliseconds since the Unix epoch, for a [`TimeResponse`]
/// (0 for times before 1970).
///
/// [`TimeResponse`]: crate::message::TimeResponse
pub fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Ack, SeqList, TimeRequest};
    use std::time::Duration;

    #[test]
    fn unix_millis_counts_from_the_epoch_and_clamps_before_it() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        assert_eq!(unix_millis(t), 1_700_000_000_250);
        assert_eq!(unix_millis(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }

    #[test]
    fn responses_encode_and_decode_through_the_stream_decoder() {
        let request = TimeRequest {
            token: 9,
            device_time: crate::message::DeviceTime::NoClock,
        };
        let replies = [
            Message::from(request.respond(1_700_000_000_000)),
            Message::from(Ack {
                seqs: SeqList::from_slice(&[1, 2]).unwrap(),
            }),
        ];
        let mut wire = vec![0u8];
        for reply in &replies {
            wire.extend(encode_to_vec(reply).unwrap());
        }
        let mut decoder = StreamDecoder::new();
        let (head, tail) = wire.split_at(5);
        let mut got = decoder.decode(head);
        got.extend(decoder.decode(tail));
        let expected: Vec<_> = replies.into_iter().map(Ok).collect();
        assert_eq!(got, expected);
    }
}
