//! Heart Rate Measurement (0x2A37), GATT Specification Supplement "Heart Rate
//! Measurement", used by the Heart Rate Service (HRS 1.0).
//!
//! # Format
//!
//! | field             | type            | present when     |
//! |-------------------|-----------------|------------------|
//! | Flags             | uint8           | always           |
//! | Heart Rate        | uint8 or uint16 | always (bit 0 picks the width), beats per minute |
//! | Energy Expended   | uint16, kJ      | bit 3            |
//! | RR-Intervals      | uint16 each, 1/1024 s | bit 4: one or more, to the end of the value |
//!
//! Flags: bit 0 heart rate value format (0 uint8, 1 uint16); bits 1–2 sensor contact status
//! (bit 2 "contact feature supported", bit 1 "contact detected"); bit 3 energy expended
//! present; bit 4 RR-intervals present; bits 5–7 reserved.
//!
//! # Readings
//!
//! - one [`catalog::HEART_RATE`] reading in `/min`. When the sensor supports contact
//!   detection and reports **no contact**, the reading carries
//!   [`StatusFlag::Questionable`] (HRS says the value may then be meaningless);
//! - one [`catalog::ENERGY_EXPENDED`] reading in `kJ` when present (a running total since
//!   the collector last reset it; `0xFFFF` means "at least 65535 kJ" and is kept as a number);
//! - one [`catalog::RR_INTERVAL`] reading per RR-interval, in the device's own unit, UCUM
//!   `s/1024` (a valid UCUM term: seconds divided by the factor 1024), with the raw count as
//!   the value, so nothing is rounded. (In milliseconds it would be exactly
//!   `raw × 0.9765625`; converting is left to the consumer.)
//!
//! The Heart Rate Measurement has no time stamp: every reading has `device_time: None`.

use super::{bit, Common, DecodeError, Reader};
use crate::model::{Decimal, Measured, Reading, StatusFlag};
use crate::profile::{catalog, FrameContext};

/// UCUM unit of a BLE RR-interval: 1/1024 second.
pub const RR_UNIT: &str = "s/1024";

/// The sensor contact status of flags bits 1–2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SensorContact {
    /// The sensor does not support contact detection (values 0 and 1).
    NotSupported,
    /// Supported, and no (or poor) contact is detected (value 2).
    NotDetected,
    /// Supported, and contact is detected (value 3).
    Detected,
}

/// A decoded Heart Rate Measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartRateMeasurement {
    /// Beats per minute.
    pub heart_rate: u16,
    /// Sensor contact status.
    pub contact: SensorContact,
    /// Accumulated energy expended, kJ.
    pub energy_expended: Option<u16>,
    /// RR-intervals in 1/1024 s, oldest first.
    pub rr_intervals: Vec<u16>,
}

impl HeartRateMeasurement {
    /// Parses a characteristic value.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let flags = u32::from(r.u8("flags")?);
        let heart_rate = if bit(flags, 0) {
            r.u16("heart rate measurement value (uint16)")?
        } else {
            u16::from(r.u8("heart rate measurement value (uint8)")?)
        };
        let contact = match (bit(flags, 2), bit(flags, 1)) {
            (false, _) => SensorContact::NotSupported,
            (true, false) => SensorContact::NotDetected,
            (true, true) => SensorContact::Detected,
        };
        let energy_expended = if bit(flags, 3) {
            Some(r.u16("energy expended")?)
        } else {
            None
        };
        let mut rr_intervals = Vec::new();
        if bit(flags, 4) {
            // At least one interval, then as many as fit; an odd byte left over is a cut-off
            // interval.
            rr_intervals.push(r.u16("rr-interval")?);
            while !r.rest().is_empty() {
                rr_intervals.push(r.u16("rr-interval")?);
            }
        }
        Ok(Self {
            heart_rate,
            contact,
            energy_expended,
            rr_intervals,
        })
    }

    /// The readings this measurement reports (see the module doc).
    pub fn to_readings(&self, ctx: &FrameContext) -> Vec<Reading> {
        let mut common = Common::default();
        if self.contact == SensorContact::NotDetected {
            common.status.push(StatusFlag::Questionable);
        }
        let mut out = vec![common.quantity(
            ctx,
            catalog::HEART_RATE,
            Measured::Value(Decimal::integer(i64::from(self.heart_rate))),
            "/min",
        )];
        if let Some(kj) = self.energy_expended {
            out.push(common.quantity(
                ctx,
                catalog::ENERGY_EXPENDED,
                Measured::Value(Decimal::integer(i64::from(kj))),
                "kJ",
            ));
        }
        for rr in &self.rr_intervals {
            out.push(common.quantity(
                ctx,
                catalog::RR_INTERVAL,
                Measured::Value(Decimal::integer(i64::from(*rr))),
                RR_UNIT,
            ));
        }
        out
    }
}
