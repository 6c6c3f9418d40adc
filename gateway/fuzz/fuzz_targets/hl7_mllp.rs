//! Fuzzes the MLLP deframer (`hl7::mllp`): arbitrary bytes as a stream, in chunks whose size
//! the first byte chooses, with a frame limit the second byte chooses. A frame never holds a
//! framing byte, and an oversized one keeps only its head.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalbridge::hl7::mllp::{Deframer, Frame, END, OVERSIZED_HEAD, START};

fuzz_target!(|data: &[u8]| {
    let [chunk, max, stream @ ..] = data else {
        return;
    };
    let max = usize::from(*max) * 64;
    let mut d = Deframer::new(max);
    let mut frames = Vec::new();
    for piece in stream.chunks(usize::from(*chunk).max(1)) {
        d.feed(piece, &mut frames);
    }
    let mut inside = 0u64;
    for f in &frames {
        match f {
            Frame::Message(m) => {
                assert!(m.len() <= max);
                assert!(!m.contains(&START) && !m.contains(&END));
                inside += m.len() as u64 + 2;
            }
            Frame::Oversized { head, size } => {
                assert!(*size > max && head.len() <= OVERSIZED_HEAD);
                inside += *size as u64 + 2;
            }
        }
    }
    assert!(d.discarded() + inside <= stream.len() as u64);
});
