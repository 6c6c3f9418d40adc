//! Arbitrary bytes, cut into arbitrary chunks, through accumulators of two sizes: no panic,
//! the buffer bound holds, and every message that comes out re-encodes into a frame that
//! decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalbridge_firmware::accumulator::{Accumulator, FrameAccumulator};
use vitalbridge_firmware::frame::{decode_frame, encode_frame, MAX_FRAME_LEN};
use vitalbridge_firmware::message::Message;

fn check(message: &Message) {
    let mut out = [0u8; MAX_FRAME_LEN];
    let n = encode_frame(message, &mut out).expect("every decoded message fits a frame");
    let decoded = decode_frame(&mut out[..n - 1]).expect("re-encoded frame decodes");
    assert_eq!(&decoded, message);
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, the rest is the stream.
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut big = FrameAccumulator::new();
    let mut small = Accumulator::<24>::new();
    for piece in stream.chunks(chunk) {
        for message in big.frames(piece).flatten() {
            check(&message);
        }
        for message in small.frames(piece).flatten() {
            check(&message);
        }
        assert!(small.pending() <= 24);
    }
});
