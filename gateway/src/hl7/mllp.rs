//! MLLP, the Minimal Lower Layer Protocol HL7 v2 travels in over TCP. Pure: bytes in,
//! frames out.
//!
//! # Format
//!
//! ```text
//!  0x0B  <message bytes: no 0x0B, no 0x1C>  0x1C 0x0D
//!  VT    start block                          FS   CR   end block
//! ```
//!
//! [`Deframer::feed`] takes whatever a read returned: a frame split across reads is joined,
//! two frames in one read give two frames. Bytes outside a frame (before its start block,
//! between frames) are discarded and counted, never taken for a message. A start block
//! inside a frame means the sender gave up on the frame and began another: the partial frame
//! is discarded (and counted). An end block not followed by CR still ends the frame (some
//! senders omit it); the byte after it is read as outside a frame.
//!
//! A frame longer than the limit is not kept: only its first [`OVERSIZED_HEAD`] bytes are,
//! so the receiver can still answer with the message's control id; memory stays bounded.

/// Start block.
pub const START: u8 = 0x0B;
/// End block, first byte.
pub const END: u8 = 0x1C;
/// End block, second byte.
pub const CR: u8 = 0x0D;

/// How many bytes of an oversized frame are kept (its MSH, for the ACK).
pub const OVERSIZED_HEAD: usize = 4096;

/// What the deframer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A whole frame's content.
    Message(Vec<u8>),
    /// A frame over the limit: its first bytes and its whole size.
    Oversized {
        /// The first [`OVERSIZED_HEAD`] bytes.
        head: Vec<u8>,
        /// The frame's size, in bytes.
        size: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Outside,
    Inside,
    AfterEnd,
}

/// Turns a byte stream into frames.
#[derive(Debug)]
pub struct Deframer {
    max: usize,
    state: State,
    buf: Vec<u8>,
    /// Size of the current frame (also past `max`).
    size: usize,
    discarded: u64,
}

impl Deframer {
    /// A deframer refusing frames over `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            state: State::Outside,
            buf: Vec::new(),
            size: 0,
            discarded: 0,
        }
    }

    /// Feeds the bytes of one read; complete frames are appended to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<Frame>) {
        while let Some((&b, rest)) = bytes.split_first() {
            match self.state {
                State::Outside => {
                    if b == START {
                        self.begin();
                    } else {
                        self.discarded += 1;
                    }
                    bytes = rest;
                }
                State::Inside => {
                    // Copy the run up to the next control byte in one go.
                    let run = bytes
                        .iter()
                        .position(|&c| c == START || c == END)
                        .unwrap_or(bytes.len());
                    if run > 0 {
                        self.push(&bytes[..run]);
                        bytes = &bytes[run..];
                        continue;
                    }
                    if b == END {
                        self.state = State::AfterEnd;
                    } else {
                        // A new start block: the frame in hand was abandoned.
                        self.discarded += self.size as u64 + 1;
                        self.begin();
                    }
                    bytes = rest;
                }
                State::AfterEnd => {
                    out.push(self.finish());
                    if b == CR {
                        bytes = rest;
                    }
                    // Otherwise the byte is read again, outside a frame.
                }
            }
        }
    }

    fn begin(&mut self) {
        self.state = State::Inside;
        self.buf.clear();
        self.size = 0;
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.size + bytes.len() <= self.max {
            self.buf.extend_from_slice(bytes);
        } else {
            // Over the limit: keep only the head, and give the memory back.
            if self.buf.len() > OVERSIZED_HEAD {
                self.buf.truncate(OVERSIZED_HEAD);
                self.buf.shrink_to(OVERSIZED_HEAD);
            }
            let keep = (OVERSIZED_HEAD - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..keep]);
        }
        self.size += bytes.len();
    }

    fn finish(&mut self) -> Frame {
        self.state = State::Outside;
        let buf = std::mem::take(&mut self.buf);
        let size = std::mem::take(&mut self.size);
        if size > self.max {
            let mut head = buf;
            head.truncate(OVERSIZED_HEAD);
            Frame::Oversized { head, size }
        } else {
            Frame::Message(buf)
        }
    }

    /// Bytes discarded so far (outside frames, abandoned frames).
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// Whether a frame has started and not ended.
    pub fn in_frame(&self) -> bool {
        self.state != State::Outside
    }
}

/// `message` in an MLLP frame.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 3);
    out.push(START);
    out.extend_from_slice(message);
    out.push(END);
    out.push(CR);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(d: &mut Deframer, chunks: &[&[u8]]) -> Vec<Frame> {
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, &mut out);
        }
        out
    }

    fn msg(s: &str) -> Frame {
        Frame::Message(s.as_bytes().to_vec())
    }

    #[test]
    fn frames_split_across_reads_and_two_in_one_read() {
        let mut d = Deframer::new(1024);
        let out = feed_all(
            &mut d,
            &[b"\x0bMSH|a", b"bc\x1c", b"\r\x0bMSH|2\x1c\r\x0bMSH|3\x1c\r"],
        );
        assert_eq!(out, vec![msg("MSH|abc"), msg("MSH|2"), msg("MSH|3")]);
        assert_eq!(d.discarded(), 0);
        // Byte by byte.
        let bytes = frame(b"MSH|x");
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(feed_all(&mut d, &chunks), vec![msg("MSH|x")]);
    }

    #[test]
    fn bytes_outside_frames_are_counted_never_a_message() {
        let mut d = Deframer::new(1024);
        let out = feed_all(&mut d, &[b"noise\r\n", b"\x0bMSH|1\x1c\rjunk", b"\x1c\r"]);
        assert_eq!(out, vec![msg("MSH|1")]);
        assert_eq!(d.discarded(), 7 + 4 + 2);
        assert!(!d.in_frame());
    }

    #[test]
    fn a_new_start_block_abandons_the_partial_frame() {
        let mut d = Deframer::new(1024);
        let out = feed_all(&mut d, &[b"\x0bMSH|partial", b"\x0bMSH|whole\x1c\r"]);
        assert_eq!(out, vec![msg("MSH|whole")]);
        assert_eq!(d.discarded(), 11 + 1);
    }

    #[test]
    fn a_partial_frame_is_not_a_message() {
        let mut d = Deframer::new(1024);
        assert!(feed_all(&mut d, &[b"\x0bMSH|never ended"]).is_empty());
        assert!(d.in_frame());
    }

    #[test]
    fn an_end_block_without_cr_still_ends_the_frame() {
        let mut d = Deframer::new(1024);
        let out = feed_all(&mut d, &[b"\x0bMSH|1\x1c\x0bMSH|2\x1c", b"x"]);
        assert_eq!(out, vec![msg("MSH|1"), msg("MSH|2")]);
        assert_eq!(d.discarded(), 1);
    }

    #[test]
    fn an_oversized_frame_keeps_only_its_head_and_the_next_frame_is_fine() {
        let mut d = Deframer::new(10_000);
        let mut big = b"\x0bMSH|".to_vec();
        big.extend(std::iter::repeat_n(b'x', 50_000));
        big.extend_from_slice(b"\x1c\r\x0bMSH|ok\x1c\r");
        let out = feed_all(&mut d, &big.chunks(777).collect::<Vec<_>>());
        assert_eq!(out.len(), 2);
        match &out[0] {
            Frame::Oversized { head, size } => {
                assert_eq!(*size, 50_004);
                assert_eq!(head.len(), OVERSIZED_HEAD);
                assert!(head.starts_with(b"MSH|xx"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(out[1], msg("MSH|ok"));
        assert!(d.buf.capacity() <= 10_000 + 777);
    }

    proptest::proptest! {
        #[test]
        fn any_split_of_framed_messages_gives_the_messages(
            messages in proptest::collection::vec("[A-Z|^0-9]{1,40}", 1..6),
            cut in 1usize..50,
        ) {
            let mut stream = Vec::new();
            for m in &messages {
                stream.extend(frame(m.as_bytes()));
            }
            let mut d = Deframer::new(1024);
            let out = feed_all(&mut d, &stream.chunks(cut).collect::<Vec<_>>());
            let want: Vec<Frame> = messages.iter().map(|m| msg(m)).collect();
            proptest::prop_assert_eq!(out, want);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600), max in 0usize..64) {
            let mut d = Deframer::new(max);
            let mut out = Vec::new();
            d.feed(&bytes, &mut out);
        }
    }
}
