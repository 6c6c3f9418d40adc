//! Fuzzes the buffer's row body decoder (`buffer::codec::decode`): arbitrary bytes as a plain
//! body, of either format (a damaged or salvaged file's rows, a dead letter's content). A body
//! that decodes must encode (format 2) to one that decodes to the same reading.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalbridge::buffer::codec::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(reading) = decode(data) {
        let again = encode(&reading);
        assert_eq!(decode(&again).as_ref(), Ok(&reading));
    }
});
