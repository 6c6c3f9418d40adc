//! Device profiles: how the bytes a device sends become [`Reading`]s.
//!
//! Architecture invariant: no I/O here. A source hands a frame and a [`FrameContext`] to a
//! decoder and gets readings or an error back; decoders never panic on outside bytes.

pub mod admission;
pub mod ble;
pub mod canonical;
pub mod catalog;
pub mod json;
pub mod line;
pub mod plausibility;
pub mod report;
pub mod units;

#[cfg(test)]
mod unit_table_tests;

use time::OffsetDateTime;

use crate::model::{DeviceRef, PatientRef};

/// What a decoder needs to know besides the bytes: which device sent them, when they arrived,
/// and whom the device is bound to.
#[derive(Debug, Clone)]
pub struct FrameContext {
    /// The device the frame came from.
    pub device: DeviceRef,
    /// The patient bound to the device in config, if any.
    pub patient: Option<PatientRef>,
    /// When the gateway received the frame.
    pub received_at: OffsetDateTime,
    /// Correction for the device clock (gateway − device), when the gateway knows it.
    pub clock_offset: Option<time::Duration>,
    /// How the gateway knows `clock_offset` (or the device clock's zone), when it does.
    pub time_sync: Option<crate::model::TimeSync>,
}
