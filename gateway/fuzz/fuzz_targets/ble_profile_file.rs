//! Fuzzes the device-profile loader and the UUID and Bluetooth address parsers with
//! arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalbridge::profile::ble::{
    parse_bluetooth_address, parse_characteristic, profile_file::BleProfile,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_characteristic(text);
        let _ = parse_bluetooth_address(text);
        let _ = BleProfile::from_toml(text);
    }
});
