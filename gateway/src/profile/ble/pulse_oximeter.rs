//! PLX Spot-check Measurement (0x2A5E) and PLX Continuous Measurement (0x2A5F), GATT
//! Specification Supplement "PLX Spot-Check Measurement" / "PLX Continuous Measurement",
//! used by the Pulse Oximeter Service (PLXS 1.0).
//!
//! # Spot-check format
//!
//! | field                        | type            | present when |
//! |------------------------------|-----------------|--------------|
//! | Flags                        | uint8           | always       |
//! | SpO2PR-Spot-Check: SpO2, PR  | SFLOAT, SFLOAT  | always       |
//! | Timestamp                    | Date Time (7)   | bit 0        |
//! | Measurement Status           | uint16          | bit 1        |
//! | Device and Sensor Status     | uint24          | bit 2        |
//! | Pulse Amplitude Index        | SFLOAT, %       | bit 3        |
//!
//! Flags bit 4 "device clock is not set": the timestamp is then not a real date and is not
//! used (`device_time: None`). Bits 5–7 reserved.
//!
//! # Continuous format
//!
//! | field                        | type            | present when |
//! |------------------------------|-----------------|--------------|
//! | Flags                        | uint8           | always       |
//! | SpO2PR-Normal: SpO2, PR      | SFLOAT, SFLOAT  | always       |
//! | SpO2PR-Fast: SpO2, PR        | SFLOAT, SFLOAT  | bit 0        |
//! | SpO2PR-Slow: SpO2, PR        | SFLOAT, SFLOAT  | bit 1        |
//! | Measurement Status           | uint16          | bit 2        |
//! | Device and Sensor Status     | uint24          | bit 3        |
//! | Pulse Amplitude Index        | SFLOAT, %       | bit 4        |
//!
//! Bits 5–7 reserved. The continuous measurement has no time stamp.
//!
//! # Status bits → [`StatusFlag`]
//!
//! Measurement Status (bits 0–4 reserved): 5 measurement ongoing, 6 early estimated data,
//! 14 questionable measurement → `Questionable`; 7 validated data, 8 fully qualified data,
//! 9 data from measurement storage → nothing; 10 data for demonstration, 11 data for testing
//! → `TestData`; 12 calibration ongoing → `Calibrating`; 13 measurement unavailable,
//! 15 invalid measurement → `Invalid`.
//!
//! Device and Sensor Status (bits 16–23 reserved): 0 extended display update ongoing →
//! nothing; 1 equipment malfunction, 11 sensor unconnected to user, 12 unknown sensor
//! connected, 13 sensor displaced, 14 sensor malfunctioning, 15 sensor disconnected →
//! `SensorFault`; 2 signal processing irregularity, 3 inadequate signal, 4 poor signal, 5 low
//! perfusion, 6 erratic signal, 7 nonpulsatile signal, 8 questionable pulse, 9 signal
//! analysis ongoing, 10 sensor interference → `Questionable`.
//!
//! # Readings
//!
//! [`catalog::SPO2`] in `%` and [`catalog::PULSE_RATE_OXIM`] in `/min`; for continuous
//! measurements also the fast and slow response pairs as [`catalog::SPO2_FAST`],
//! [`catalog::PULSE_RATE_OXIM_FAST`], [`catalog::SPO2_SLOW`], [`catalog::PULSE_RATE_OXIM_SLOW`]
//! (same MDC/LOINC codes as the normal pair; they differ in display only, see the catalog);
//! and [`catalog::PULSE_AMPLITUDE_INDEX`] in `%` when present. All carry the time and the
//! status flags of the measurement.

use super::{bit, push_flag, Common, DecodeError, Reader};
use crate::model::{Measured, Reading, StatusFlag};
use crate::profile::{catalog, FrameContext};
use time::OffsetDateTime;

/// An SpO2 and pulse rate pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpO2Pr {
    /// Oxygen saturation, percent.
    pub spo2: Measured,
    /// Pulse rate, beats per minute.
    pub pulse_rate: Measured,
}

impl SpO2Pr {
    fn read(r: &mut Reader<'_>, spo2: &'static str, pr: &'static str) -> Result<Self, DecodeError> {
        Ok(Self {
            spo2: r.sfloat(spo2)?,
            pulse_rate: r.sfloat(pr)?,
        })
    }
}

/// Status fields shared by both measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlxStatus {
    /// Measurement Status, if present.
    pub measurement: Option<u16>,
    /// Device and Sensor Status (24 bits), if present.
    pub device_and_sensor: Option<u32>,
}

impl PlxStatus {
    /// The status flags these bits map to (see the module doc).
    pub fn flags(&self) -> Vec<StatusFlag> {
        use StatusFlag::*;
        let mut out = Vec::new();
        if let Some(raw) = self.measurement {
            let raw = u32::from(raw);
            let map: [(u32, StatusFlag); 8] = [
                (5, Questionable),
                (6, Questionable),
                (10, TestData),
                (11, TestData),
                (12, Calibrating),
                (13, Invalid),
                (14, Questionable),
                (15, Invalid),
            ];
            for (n, flag) in map {
                if bit(raw, n) {
                    push_flag(&mut out, flag);
                }
            }
        }
        if let Some(raw) = self.device_and_sensor {
            for n in 1..=15 {
                if bit(raw, n) {
                    let flag = match n {
                        1 | 11..=15 => SensorFault,
                        _ => Questionable,
                    };
                    push_flag(&mut out, flag);
                }
            }
        }
        out
    }
}

/// A decoded PLX Spot-check Measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpotCheck {
    /// SpO2 and pulse rate.
    pub values: SpO2Pr,
    /// Timestamp, if present, known, and the device clock is set.
    pub time_stamp: Option<OffsetDateTime>,
    /// Status fields.
    pub status: PlxStatus,
    /// Pulse amplitude index, percent.
    pub pulse_amplitude_index: Option<Measured>,
}

impl SpotCheck {
    /// Parses a characteristic value.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let flags = u32::from(r.u8("flags")?);
        let values = SpO2Pr::read(&mut r, "spo2pr-spot-check: spo2", "spo2pr-spot-check: pr")?;
        let time_stamp = if bit(flags, 0) {
            r.date_time("timestamp")?
        } else {
            None
        };
        let status = read_status(&mut r, bit(flags, 1), bit(flags, 2))?;
        let pulse_amplitude_index = if bit(flags, 3) {
            Some(r.sfloat("pulse amplitude index")?)
        } else {
            None
        };
        Ok(Self {
            values,
            time_stamp: time_stamp.filter(|_| !bit(flags, 4)),
            status,
            pulse_amplitude_index,
        })
    }

    /// The readings (see the module doc).
    pub fn to_readings(&self, ctx: &FrameContext) -> Vec<Reading> {
        let common = Common {
            device_time: self.time_stamp,
            status: self.status.flags(),
            ..Common::default()
        };
        let mut out = vec![
            common.quantity(ctx, catalog::SPO2, self.values.spo2, "%"),
            common.quantity(
                ctx,
                catalog::PULSE_RATE_OXIM,
                self.values.pulse_rate,
                "/min",
            ),
        ];
        if let Some(pai) = self.pulse_amplitude_index {
            out.push(common.quantity(ctx, catalog::PULSE_AMPLITUDE_INDEX, pai, "%"));
        }
        out
    }
}

/// A decoded PLX Continuous Measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continuous {
    /// SpO2PR-Normal.
    pub normal: SpO2Pr,
    /// SpO2PR-Fast, if present.
    pub fast: Option<SpO2Pr>,
    /// SpO2PR-Slow, if present.
    pub slow: Option<SpO2Pr>,
    /// Status fields.
    pub status: PlxStatus,
    /// Pulse amplitude index, percent.
    pub pulse_amplitude_index: Option<Measured>,
}

impl Continuous {
    /// Parses a characteristic value.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let flags = u32::from(r.u8("flags")?);
        let normal = SpO2Pr::read(&mut r, "spo2pr-normal: spo2", "spo2pr-normal: pr")?;
        let fast = if bit(flags, 0) {
            Some(SpO2Pr::read(
                &mut r,
                "spo2pr-fast: spo2",
                "spo2pr-fast: pr",
            )?)
        } else {
            None
        };
        let slow = if bit(flags, 1) {
            Some(SpO2Pr::read(
                &mut r,
                "spo2pr-slow: spo2",
                "spo2pr-slow: pr",
            )?)
        } else {
            None
        };
        let status = read_status(&mut r, bit(flags, 2), bit(flags, 3))?;
        let pulse_amplitude_index = if bit(flags, 4) {
            Some(r.sfloat("pulse amplitude index")?)
        } else {
            None
        };
        Ok(Self {
            normal,
            fast,
            slow,
            status,
            pulse_amplitude_index,
        })
    }

    /// The readings (see the module doc).
    pub fn to_readings(&self, ctx: &FrameContext) -> Vec<Reading> {
        let common = Common {
            status: self.status.flags(),
            ..Common::default()
        };
        let mut out = vec![
            common.quantity(ctx, catalog::SPO2, self.normal.spo2, "%"),
            common.quantity(
                ctx,
                catalog::PULSE_RATE_OXIM,
                self.normal.pulse_rate,
                "/min",
            ),
        ];
        if let Some(fast) = self.fast {
            out.push(common.quantity(ctx, catalog::SPO2_FAST, fast.spo2, "%"));
            out.push(common.quantity(ctx, catalog::PULSE_RATE_OXIM_FAST, fast.pulse_rate, "/min"));
        }
        if let Some(slow) = self.slow {
            out.push(common.quantity(ctx, catalog::SPO2_SLOW, slow.spo2, "%"));
            out.push(common.quantity(ctx, catalog::PULSE_RATE_OXIM_SLOW, slow.pulse_rate, "/min"));
        }
        if let Some(pai) = self.pulse_amplitude_index {
            out.push(common.quantity(ctx, catalog::PULSE_AMPLITUDE_INDEX, pai, "%"));
        }
        out
    }
}

fn read_status(
    r: &mut Reader<'_>,
    measurement: bool,
    device_and_sensor: bool,
) -> Result<PlxStatus, DecodeError> {
    Ok(PlxStatus {
        measurement: if measurement {
            Some(r.u16("measurement status")?)
        } else {
            None
        },
        device_and_sensor: if device_and_sensor {
            Some(r.u24("device and sensor status")?)
        } else {
            None
        },
    })
}
