//! Turning a byte stream, in chunks of any size, into decoded messages.
//!
//! An [`Accumulator`] keeps the bytes of the frame in progress in a fixed buffer of `N`
//! bytes (no allocation). On each `00` it decodes what it holds ([`crate::frame`]) and
//! reports either a [`Message`] or a [`FrameError`], then starts afresh, so one bad frame
//! costs only itself:
//!
//! - garbage or a truncated frame ends at the next `00` and is reported as `Cobs`,
//!   `TooShort` or `BadCrc`;
//! - more than `N` bytes without a `00` switches to discarding until the next `00`, which is
//!   then reported once as `Oversize`;
//! - empty frames (consecutive `00`s) are skipped silently.
//!
//! Connecting in the middle of a frame therefore costs at most one reported error.

use crate::frame::{decode_frame, FrameError, DELIMITER, MAX_FRAME_LEN};
use crate::message::Message;

/// An accumulator sized for any frame of this protocol version.
pub type FrameAccumulator = Accumulator<{ MAX_FRAME_LEN - 1 }>;

/// Collects bytes until a delimiter and decodes them; `N` is the largest frame (COBS bytes,
/// without the delimiter) it accepts.
#[derive(Debug, Clone)]
pub struct Accumulator<const N: usize> {
    /// COBS bytes of the frame in progress; decoded in place when it ends.
    buf: [u8; N],
    /// How many bytes of `buf` are in use.
    len: usize,
    /// The frame in progress outgrew `buf`; drop bytes until the next delimiter.
    overflowed: bool,
}

/// What one call to [`Accumulator::feed`] found.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "no alloc: the decoded message is returned by value"
)]
pub enum FeedResult<'a> {
    /// All input was taken in; no frame ended in it.
    Consumed,
    /// A frame ended and decoded; `remaining` is the input after its delimiter.
    Frame {
        /// The decoded message.
        message: Message,
        /// Input not yet looked at: feed it next.
        remaining: &'a [u8],
    },
    /// A frame ended and was bad; `remaining` is the input after its delimiter.
    Error {
        /// Why the frame was rejected.
        error: FrameError,
        /// Input not yet looked at: feed it next.
        remaining: &'a [u8],
    },
}

impl<const N: usize> Accumulator<N> {
    /// An empty accumulator.
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
            overflowed: false,
        }
    }

    /// Forgets the frame in progress (e.g. after the port was reopened).
    pub fn reset(&mut self) {
        self.len = 0;
        self.overflowed = false;
    }

    /// Bytes of an unfinished frame currently held.
    pub fn pending(&self) -> usize {
        self.len
    }

    /// Takes in bytes up to and including the first delimiter that ends a non-empty frame,
    /// and says what that frame was. Call again with `remaining` until it returns
    /// [`FeedResult::Consumed`]; or use [`Accumulator::frames`], which does that.
    pub fn feed<'a>(&mut self, mut input: &'a [u8]) -> FeedResult<'a> {
        loop {
            let Some(at) = input.iter().position(|&b| b == DELIMITER) else {
                self.extend(input);
                return FeedResult::Consumed;
            };
            self.extend(&input[..at]);
            input = &input[at + 1..];
            match self.finish_frame() {
                None => continue,
                Some(Ok(message)) => {
                    return FeedResult::Frame {
                        message,
                        remaining: input,
                    }
                }
                Some(Err(error)) => {
                    return FeedResult::Error {
                        error,
                        remaining: input,
                    }
                }
            }
        }
    }

    /// An iterator over every frame that ends in `input`, in order.
    pub fn frames<'s, 'a>(&'s mut self, input: &'a [u8]) -> Frames<'s, 'a, N> {
        Frames {
            accumulator: self,
            input,
        }
    }

    /// Appends frame bytes (no delimiters), or notes the overflow.
    fn extend(&mut self, bytes: &[u8]) {
        if self.overflowed || bytes.is_empty() {
            return;
        }
        match self.buf.get_mut(self.len..self.len + bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.len += bytes.len();
            }
            None => self.overflowed = true,
        }
    }

    /// A delimiter arrived: decode what is held and start afresh. `None` for an empty frame.
    fn finish_frame(&mut self) -> Option<Result<Message, FrameError>> {
        let result = if self.overflowed {
            Some(Err(FrameError::Oversize))
        } else if self.len == 0 {
            None
        } else {
            Some(decode_frame(&mut self.buf[..self.len]))
        };
        self.reset();
        result
    }
}

impl<const N: usize> Default for Accumulator<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Iterator returned by [`Accumulator::frames`]: one item per frame that ends in the input.
/// Bytes after the last delimiter stay in the accumulator for the next chunk. Run it to the
/// end: input it has not reached when dropped is never fed.
#[derive(Debug)]
pub struct Frames<'s, 'a, const N: usize> {
    /// Where unfinished bytes are kept.
    accumulator: &'s mut Accumulator<N>,
    /// Input not yet fed.
    input: &'a [u8],
}

impl<const N: usize> Iterator for Frames<'_, '_, N> {
    type Item = Result<Message, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.accumulator.feed(self.input) {
            FeedResult::Consumed => {
                self.input = &[];
                None
            }
            FeedResult::Frame { message, remaining } => {
                self.input = remaining;
                Some(Ok(message))
            }
            FeedResult::Error { error, remaining } => {
                self.input = remaining;
                Some(Err(error))
            }
        }
    }
}
