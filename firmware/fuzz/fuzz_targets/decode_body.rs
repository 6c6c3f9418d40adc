//! Arbitrary bytes as a message payload, a frame body and a frame's COBS bytes: no panic,
//! and whatever decodes re-encodes into something that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalbridge_firmware::frame::{decode_body, decode_frame, encode_body, MAX_BODY_LEN};
use vitalbridge_firmware::message::Message;

fn check(message: &Message) {
    let mut body = [0u8; MAX_BODY_LEN];
    let n = encode_body(message, &mut body).expect("every decoded message fits a body");
    assert_eq!(decode_body(&body[..n]).as_ref(), Ok(message));
}

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        check(&message);
    }
    if let Ok(message) = decode_body(data) {
        check(&message);
    }
    let mut copy = data.to_vec();
    if let Ok(message) = decode_frame(&mut copy) {
        check(&message);
    }
});
