//! Blood Pressure Measurement (0x2A35) and Intermediate Cuff Pressure (0x2A36), GATT
//! Specification Supplement "Blood Pressure Measurement" / "Intermediate Cuff Pressure",
//! used by the Blood Pressure Service (BLS 1.1). Both share one format.
//!
//! # Format
//!
//! | field                            | type          | present when |
//! |----------------------------------|---------------|--------------|
//! | Flags                            | uint8         | always       |
//! | Systolic (cuff pressure in 0x2A36) | SFLOAT      | always       |
//! | Diastolic                        | SFLOAT        | always (unused in 0x2A36) |
//! | Mean Arterial Pressure           | SFLOAT        | always (unused in 0x2A36) |
//! | Time Stamp                       | Date Time (7) | bit 1        |
//! | Pulse Rate                       | SFLOAT, /min  | bit 2        |
//! | User ID                          | uint8         | bit 3 (0xFF = unknown user) |
//! | Measurement Status               | uint16        | bit 4        |
//!
//! Flags: bit 0 units (0 mmHg, 1 kPa); bits 1–4 as above; bits 5–7 reserved.
//!
//! Measurement Status: bit 0 body movement detected; bit 1 cuff too loose; bit 2 irregular
//! pulse detected; bits 3–4 pulse rate range (0 within range, 1 exceeds upper limit, 2 below
//! lower limit, 3 reserved → error); bit 5 improper measurement position; bits 6–15 reserved.
//!
//! # Readings
//!
//! Blood Pressure Measurement gives one [`catalog::BLOOD_PRESSURE`] reading whose value is
//! [`Value::Components`] systolic, diastolic and mean (each possibly a special value) in
//! `mm[Hg]` or `kPa`, plus a separate [`catalog::PULSE_RATE_NONINV`] reading in `/min`
//! when the pulse rate is present. Both carry the time stamp, the user id and the status
//! flags: body movement → [`StatusFlag::BodyMovement`], cuff too loose →
//! [`StatusFlag::CuffLoose`], irregular pulse → [`StatusFlag::IrregularPulse`], pulse rate
//! above or below range → [`StatusFlag::PulseRateOutOfRange`], improper position →
//! [`StatusFlag::ImproperPosition`].
//!
//! Intermediate Cuff Pressure gives one [`catalog::CUFF_PRESSURE`] quantity (the systolic
//! field) with the same time, user and flags. Its diastolic, mean and pulse-rate fields are
//! parsed (so a malformed value is still an error) but not reported: BLS leaves them unused
//! and a pulse rate read while the cuff inflates is superseded by the final measurement.

use super::{bit, push_flag, user_index, Common, DecodeError, Reader};
use crate::model::{Component, Measured, Quantity, Reading, StatusFlag, Value};
use crate::profile::{catalog, FrameContext};
use time::OffsetDateTime;

/// The pressure unit a cuff reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PressureUnit {
    /// Millimetres of mercury, UCUM `mm[Hg]`.
    MmHg,
    /// Kilopascal, UCUM `kPa`.
    KPa,
}

impl PressureUnit {
    /// The UCUM code.
    pub const fn ucum(self) -> &'static str {
        match self {
            PressureUnit::MmHg => "mm[Hg]",
            PressureUnit::KPa => "kPa",
        }
    }
}

/// Pulse rate range of the measurement status (bits 3–4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PulseRateRange {
    /// Within range.
    WithinRange,
    /// Exceeds the upper limit.
    AboveUpperLimit,
    /// Less than the lower limit.
    BelowLowerLimit,
}

/// The Measurement Status field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeasurementStatus {
    /// Body movement detected during measurement.
    pub body_movement: bool,
    /// Cuff fit too loose.
    pub cuff_too_loose: bool,
    /// Irregular pulse detected.
    pub irregular_pulse: bool,
    /// Pulse rate range.
    pub pulse_rate_range: PulseRateRange,
    /// Improper measurement position.
    pub improper_position: bool,
}

impl MeasurementStatus {
    fn parse(raw: u16, offset: usize) -> Result<Self, DecodeError> {
        let raw = u32::from(raw);
        let pulse_rate_range = match (raw >> 3) & 0b11 {
            0 => PulseRateRange::WithinRange,
            1 => PulseRateRange::AboveUpperLimit,
            2 => PulseRateRange::BelowLowerLimit,
            other => {
                return Err(DecodeError::Reserved {
                    field: "measurement status: pulse rate range",
                    offset,
                    value: other,
                })
            }
        };
        Ok(Self {
            body_movement: bit(raw, 0),
            cuff_too_loose: bit(raw, 1),
            irregular_pulse: bit(raw, 2),
            pulse_rate_range,
            improper_position: bit(raw, 5),
        })
    }

    /// The status flags these bits map to.
    pub fn flags(&self) -> Vec<StatusFlag> {
        let mut out = Vec::new();
        if self.body_movement {
            push_flag(&mut out, StatusFlag::BodyMovement);
        }
        if self.cuff_too_loose {
            push_flag(&mut out, StatusFlag::CuffLoose);
        }
        if self.irregular_pulse {
            push_flag(&mut out, StatusFlag::IrregularPulse);
        }
        if self.pulse_rate_range != PulseRateRange::WithinRange {
            push_flag(&mut out, StatusFlag::PulseRateOutOfRange);
        }
        if self.improper_position {
            push_flag(&mut out, StatusFlag::ImproperPosition);
        }
        out
    }
}

/// A decoded Blood Pressure Measurement or Intermediate Cuff Pressure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BloodPressureMeasurement {
    /// Unit of the three pressures.
    pub unit: PressureUnit,
    /// Systolic pressure (current cuff pressure in Intermediate Cuff Pressure).
    pub systolic: Measured,
    /// Diastolic pressure.
    pub diastolic: Measured,
    /// Mean arterial pressure.
    pub mean_arterial: Measured,
    /// Time stamp, if present and known.
    pub time_stamp: Option<OffsetDateTime>,
    /// Pulse rate, beats per minute.
    pub pulse_rate: Option<Measured>,
    /// User index (`None` if absent or 0xFF "unknown user").
    pub user_id: Option<u8>,
    /// Measurement status, if present.
    pub status: Option<MeasurementStatus>,
}

impl BloodPressureMeasurement {
    /// Parses a characteristic value (either characteristic).
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let flags = u32::from(r.u8("flags")?);
        let unit = if bit(flags, 0) {
            PressureUnit::KPa
        } else {
            PressureUnit::MmHg
        };
        let systolic = r.sfloat("systolic")?;
        let diastolic = r.sfloat("diastolic")?;
        let mean_arterial = r.sfloat("mean arterial pressure")?;
        let time_stamp = if bit(flags, 1) {
            r.date_time("time stamp")?
        } else {
            None
        };
        let pulse_rate = if bit(flags, 2) {
            Some(r.sfloat("pulse rate")?)
        } else {
            None
        };
        let user_id = if bit(flags, 3) {
            user_index(r.u8("user id")?)
        } else {
            None
        };
        let status = if bit(flags, 4) {
            let offset = r.position();
            Some(MeasurementStatus::parse(
                r.u16("measurement status")?,
                offset,
            )?)
        } else {
            None
        };
        Ok(Self {
            unit,
            systolic,
            diastolic,
            mean_arterial,
            time_stamp,
            pulse_rate,
            user_id,
            status,
        })
    }

    fn common(&self) -> Common {
        Common {
            device_time: self.time_stamp,
            status: self.status.map(|s| s.flags()).unwrap_or_default(),
            device_user: self.user_id,
            ..Common::default()
        }
    }

    /// Readings of a Blood Pressure Measurement (0x2A35).
    pub fn to_readings(&self, ctx: &FrameContext) -> Vec<Reading> {
        let common = self.common();
        let unit = self.unit.ucum();
        let component = |metric, value| Component {
            metric,
            quantity: Quantity {
                value,
                unit: unit.to_owned(),
            },
        };
        let mut out = vec![common.reading(
            ctx,
            catalog::BLOOD_PRESSURE,
            Value::Components(vec![
                component(catalog::SYSTOLIC, self.systolic),
                component(catalog::DIASTOLIC, self.diastolic),
                component(catalog::MEAN_ARTERIAL, self.mean_arterial),
            ]),
        )];
        if let Some(pulse) = self.pulse_rate {
            out.push(common.quantity(ctx, catalog::PULSE_RATE_NONINV, pulse, "/min"));
        }
        out
    }

    /// Readings of an Intermediate Cuff Pressure (0x2A36).
    pub fn to_intermediate_readings(&self, ctx: &FrameContext) -> Vec<Reading> {
        vec![self
            .common()
            .quantity(ctx, catalog::CUFF_PRESSURE, self.systolic, self.unit.ucum())]
    }
}
