//! Fuzzes the Current Time (0x2A2B) decoder the BLE source reads device clocks with: any
//! bytes must decode or fail, never panic; a decoded time re-encodes and decodes to itself
//! (to the 1/256 s the format carries).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalbridge::profile::ble::datetime;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(t)) = datetime::current_time(data) {
        if let Some(bytes) = datetime::encode_current_time(t) {
            let again = datetime::current_time(&bytes).ok().flatten();
            let diff = again.map(|a| (a - t).abs());
            assert!(
                diff.is_some_and(|d| d < time::Duration::milliseconds(8)),
                "{t} {again:?}"
            );
        }
    }
});
