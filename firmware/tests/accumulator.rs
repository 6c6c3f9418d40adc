//! The accumulator over streams of valid frames mixed with noise, cut into random chunks:
//! every intact frame comes out exactly once and in order, nothing else comes out as a
//! message, and nothing panics.

mod common;

use common::*;
use proptest::prelude::*;
use vitalbridge_firmware::accumulator::{Accumulator, FeedResult, FrameAccumulator};
use vitalbridge_firmware::frame::{encode_frame, FrameError, MAX_FRAME_LEN};
use vitalbridge_firmware::message::*;

fn frame(message: &Message) -> Vec<u8> {
    let mut out = [0u8; MAX_FRAME_LEN];
    let n = encode_frame(message, &mut out).expect("fits");
    out[..n].to_vec()
}

/// One piece of a test stream.
#[derive(Debug, Clone)]
enum Segment {
    /// An intact frame: must come out.
    Valid(Message),
    /// Random bytes, then a delimiter.
    Garbage(Vec<u8>),
    /// The first `cut` bytes of a frame, then a delimiter (as if the sender restarted).
    Truncated(Message, usize),
    /// A frame with one bit flipped (anywhere but the final delimiter).
    Flipped(Message, usize, u8),
    /// More non-zero bytes than the accumulator holds, then a delimiter.
    Oversize(Vec<u8>),
}

fn arb_segment() -> impl Strategy<Value = Segment> {
    prop_oneof![
        4 => arb_message().prop_map(Segment::Valid),
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Segment::Garbage),
        1 => (arb_message(), any::<usize>()).prop_map(|(m, cut)| Segment::Truncated(m, cut)),
        1 => (arb_message(), any::<usize>(), 0u8..8).prop_map(|(m, at, bit)| Segment::Flipped(m, at, bit)),
        1 => (MAX_FRAME_LEN..MAX_FRAME_LEN + 300)
            .prop_flat_map(|len| proptest::collection::vec(1u8..=255, len))
            .prop_map(Segment::Oversize),
    ]
}

/// The stream bytes, the messages that must come out, and how many `Oversize` errors.
fn build(segments: &[Segment]) -> (Vec<u8>, Vec<Message>, usize) {
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    let mut oversize = 0;
    for segment in segments {
        match segment {
            Segment::Valid(m) => {
                stream.extend(frame(m));
                expected.push(m.clone());
            }
            Segment::Garbage(bytes) => {
                stream.extend(bytes);
                stream.push(0);
            }
            Segment::Truncated(m, cut) => {
                let f = frame(m);
                // Strictly shorter than the frame without its delimiter.
                let cut = cut % (f.len() - 1);
                stream.extend(&f[..cut]);
                stream.push(0);
            }
            Segment::Flipped(m, at, bit) => {
                let mut f = frame(m);
                let at = at % (f.len() - 1);
                f[at] ^= 1 << bit;
                stream.extend(&f);
            }
            Segment::Oversize(bytes) => {
                stream.extend(bytes);
                stream.push(0);
                oversize += 1;
            }
        }
    }
    (stream, expected, oversize)
}

/// Cuts `stream` at the given points (taken modulo its length) and feeds the pieces.
fn run(stream: &[u8], cuts: &[usize]) -> (Vec<Message>, Vec<FrameError>) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.push(0);
    points.push(stream.len());
    points.sort_unstable();
    let mut acc = FrameAccumulator::new();
    let (mut messages, mut errors) = (Vec::new(), Vec::new());
    for w in points.windows(2) {
        for result in acc.frames(&stream[w[0]..w[1]]) {
            match result {
                Ok(m) => messages.push(m),
                Err(e) => errors.push(e),
            }
        }
    }
    (messages, errors)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn delivers_every_intact_frame_once_in_order(
        segments in proptest::collection::vec(arb_segment(), 0..12),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let (stream, expected, oversize) = build(&segments);
        let (messages, errors) = run(&stream, &cuts);
        prop_assert_eq!(messages, expected);
        let reported_oversize = errors.iter().filter(|e| **e == FrameError::Oversize).count();
        prop_assert_eq!(reported_oversize, oversize);
    }

    #[test]
    fn chunking_does_not_change_the_outcome(
        segments in proptest::collection::vec(arb_segment(), 0..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..20),
    ) {
        let (stream, _, _) = build(&segments);
        let whole = run(&stream, &[]);
        let chunked = run(&stream, &cuts);
        prop_assert_eq!(whole, chunked);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_a_small_buffer_copes(
        bytes in proptest::collection::vec(any::<u8>(), 0..2000),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut small = Accumulator::<16>::new();
        let mut big = FrameAccumulator::new();
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        for w in points.windows(2) {
            let chunk = &bytes[w[0]..w[1]];
            for _ in small.frames(chunk) {}
            for _ in big.frames(chunk) {}
            prop_assert!(small.pending() <= 16);
        }
    }
}

#[test]
fn starting_mid_frame_costs_one_error() {
    let ack = Message::Ack(Ack {
        seqs: SeqList::from_slice(&[1]).unwrap(),
    });
    let f = frame(&ack);
    let mut stream = f[3..].to_vec();
    stream.extend(&f);
    let (messages, errors) = run(&stream, &[]);
    assert_eq!(messages, vec![ack]);
    assert_eq!(errors.len(), 1);
}

#[test]
fn empty_frames_are_skipped() {
    let ack = Message::Ack(Ack {
        seqs: SeqList::new(),
    });
    let mut stream = vec![0, 0, 0];
    stream.extend(frame(&ack));
    stream.extend([0, 0]);
    assert_eq!(run(&stream, &[]), (vec![ack], vec![]));
}

#[test]
fn oversize_is_reported_once_at_the_delimiter_then_the_next_frame_decodes() {
    let ack = Message::Ack(Ack {
        seqs: SeqList::from_slice(&[9]).unwrap(),
    });
    let mut acc = Accumulator::<16>::new();
    assert!(matches!(acc.feed(&[0x55; 12]), FeedResult::Consumed));
    assert!(matches!(acc.feed(&[0x55; 12]), FeedResult::Consumed));
    let mut stream = vec![0x55, 0x00];
    stream.extend(frame(&ack));
    let FeedResult::Error { error, remaining } = acc.feed(&stream) else {
        panic!("expected an error");
    };
    assert_eq!(error, FrameError::Oversize);
    let FeedResult::Frame { message, remaining } = acc.feed(remaining) else {
        panic!("expected a frame");
    };
    assert_eq!(message, ack);
    assert!(remaining.is_empty());
}

#[test]
fn each_error_kind_is_reported() {
    let ack = Message::Ack(Ack {
        seqs: SeqList::from_slice(&[9]).unwrap(),
    });
    let mut acc = FrameAccumulator::new();
    let mut kinds = Vec::new();
    // COBS code byte pointing past the end.
    kinds.extend(acc.frames(&[0x09, 0x01, 0x00]));
    // Valid COBS, body too short.
    kinds.extend(acc.frames(&[0x03, 0x01, 0x02, 0x00]));
    // Bad CRC: flip a payload bit.
    let mut f = frame(&ack);
    f[3] ^= 0x10;
    kinds.extend(acc.frames(&f));
    assert_eq!(
        kinds,
        vec![
            Err(FrameError::Cobs),
            Err(FrameError::TooShort),
            Err(FrameError::BadCrc)
        ]
    );
}

#[test]
fn the_largest_frame_fits_a_frame_accumulator() {
    let message = largest_message();
    let f = frame(&message);
    assert!(f.len() <= MAX_FRAME_LEN);
    let (messages, errors) = run(&f, &[]);
    assert_eq!((messages, errors), (vec![message], vec![]));
    // Its COBS bytes are 400 long here (its zeros leave COBS one extra byte); one byte less
    // of buffer and it is oversize.
    assert_eq!(f.len(), 401);
    let mut short = Accumulator::<399>::new();
    let got: Vec<_> = short.frames(&f).collect();
    assert_eq!(got, vec![Err(FrameError::Oversize)]);
}
