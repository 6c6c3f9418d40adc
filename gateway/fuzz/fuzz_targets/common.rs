//! Shared by the fuzz targets: a fixed frame context, and the whole path a frame takes in
//! the technician CLI (decode, then the JSON report), so the report is fuzzed too.

use time::macros::datetime;
use vitalbridge::model::{DeviceId, DeviceRef};
use vitalbridge::profile::ble::Decoder;
use vitalbridge::profile::{report, FrameContext};

pub fn ctx() -> FrameContext {
    FrameContext {
        device: DeviceRef {
            id: DeviceId::Bluetooth([0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6]),
            profile: "fuzz".into(),
            model: None,
            manufacturer: None,
        },
        patient: None,
        received_at: datetime!(2026-01-01 00:00:00 UTC),
        clock_offset: None,
        time_sync: None,
    }
}

#[allow(dead_code)]
pub fn decode_and_report(decoder: Decoder, data: &[u8]) {
    if let Ok(readings) = decoder.decode(data, &ctx()) {
        let _ = report::readings_to_json(&readings).to_string();
    }
}
