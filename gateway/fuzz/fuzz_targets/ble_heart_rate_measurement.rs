//! Fuzzes the HeartRateMeasurement decoder: any bytes must decode or fail, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalbridge::profile::ble::Decoder;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    common::decode_and_report(Decoder::HeartRateMeasurement, data);
});
