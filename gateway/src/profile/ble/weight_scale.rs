//! Weight Measurement (0x2A9D), GATT Specification Supplement "Weight Measurement", used by
//! the Weight Scale Service (WSS 1.0).
//!
//! # Format
//!
//! | field       | type          | present when | resolution (SI / imperial)      |
//! |-------------|---------------|--------------|---------------------------------|
//! | Flags       | uint8         | always       |                                 |
//! | Weight      | uint16        | always       | 0.005 kg / 0.01 lb              |
//! | Time Stamp  | Date Time (7) | bit 1        |                                 |
//! | User ID     | uint8         | bit 2        | 0xFF = unknown user             |
//! | BMI         | uint16        | bit 3        | 0.1 kg/m²                       |
//! | Height      | uint16        | bit 3        | 0.001 m / 0.1 in                |
//!
//! Flags: bit 0 measurement units (0 SI, 1 imperial); bits 1–3 as above; bits 4–7 reserved.
//! A weight of `0xFFFF` means "measurement unsuccessful".
//!
//! # Readings
//!
//! [`catalog::BODY_WEIGHT`] in `kg` (raw × 5, exponent -3: raw 14000 is `70.000`) or
//! `[lb_av]` (raw, exponent -2), absent (`Error`) when unsuccessful; with bit 3 also
//! [`catalog::BMI`] in `kg/m2` (raw, exponent -1) and [`catalog::BODY_HEIGHT`] in `m` (raw,
//! exponent -3) or `[in_i]` (raw, exponent -1). All carry the time stamp and user id.

use super::{bit, user_index, Common, DecodeError, Reader};
use crate::model::{AbsentReason, Decimal, Measured, Reading};
use crate::profile::{catalog, FrameContext};
use time::OffsetDateTime;

/// "Measurement unsuccessful" in a weight (and body fat percentage) field.
pub const UNSUCCESSFUL: u16 = 0xFFFF;

/// A mass field in the scale's units, exactly: SI 0.005 kg, imperial 0.01 lb.
pub(crate) fn mass(raw: u16, imperial: bool) -> (Measured, &'static str) {
    if imperial {
        (Measured::Value(Decimal::new(i64::from(raw), -2)), "[lb_av]")
    } else {
        (Measured::Value(Decimal::new(i64::from(raw) * 5, -3)), "kg")
    }
}

/// A length field in the scale's units, exactly: SI 0.001 m, imperial 0.1 in.
pub(crate) fn length(raw: u16, imperial: bool) -> (Measured, &'static str) {
    if imperial {
        (Measured::Value(Decimal::new(i64::from(raw), -1)), "[in_i]")
    } else {
        (Measured::Value(Decimal::new(i64::from(raw), -3)), "m")
    }
}

/// A decoded Weight Measurement (raw field values; see [`Self::to_readings`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightMeasurement {
    /// Imperial units (lb, in) rather than SI (kg, m).
    pub imperial: bool,
    /// Raw weight (`0xFFFF` = unsuccessful).
    pub weight: u16,
    /// Time stamp, if present and known.
    pub time_stamp: Option<OffsetDateTime>,
    /// User index (`None` if absent or unknown).
    pub user_id: Option<u8>,
    /// Raw BMI and height.
    pub bmi_and_height: Option<(u16, u16)>,
}

impl WeightMeasurement {
    /// Parses a characteristic value.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let flags = u32::from(r.u8("flags")?);
        let weight = r.u16("weight")?;
        let time_stamp = if bit(flags, 1) {
            r.date_time("time stamp")?
        } else {
            None
        };
        let user_id = if bit(flags, 2) {
            user_index(r.u8("user id")?)
        } else {
            None
        };
        let bmi_and_height = if bit(flags, 3) {
            let bmi = r.u16("bmi")?;
            Some((bmi, r.u16("height")?))
        } else {
            None
        };
        Ok(Self {
            imperial: bit(flags, 0),
            weight,
            time_stamp,
            user_id,
            bmi_and_height,
        })
    }

    /// The readings (see the module doc).
    pub fn to_readings(&self, ctx: &FrameContext) -> Vec<Reading> {
        let common = Common {
            device_time: self.time_stamp,
            device_user: self.user_id,
            ..Common::default()
        };
        let (mut weight, unit) = mass(self.weight, self.imperial);
        if self.weight == UNSUCCESSFUL {
            weight = Measured::Absent(AbsentReason::Error);
        }
        let mut out = vec![common.quantity(ctx, catalog::BODY_WEIGHT, weight, unit)];
        if let Some((bmi, height)) = self.bmi_and_height {
            out.push(common.quantity(
                ctx,
                catalog::BMI,
                Measured::Value(Decimal::new(i64::from(bmi), -1)),
                "kg/m2",
            ));
            let (height, unit) = length(height, self.imperial);
            out.push(common.quantity(ctx, catalog::BODY_HEIGHT, height, unit));
        }
        out
    }
}
