//! Fuzzes every BLE decoder through `ble::decode`: the first byte selects the
//! characteristic (an index into `Decoder::ALL`, or an unknown UUID), the rest is the value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalbridge::profile::ble::{self, Decoder};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, value)) = data.split_first() else {
        return;
    };
    let uuid = Decoder::ALL
        .get(usize::from(selector) % (Decoder::ALL.len() + 1))
        .map_or(0x2A00, |d| d.uuid());
    let _ = ble::decode(uuid, value, &common::ctx());
});
