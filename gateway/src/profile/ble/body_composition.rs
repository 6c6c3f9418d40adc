//! Body Composition Measurement (0x2A9C), GATT Specification Supplement "Body Composition
//! Measurement", used by the Body Composition Service (BCS 1.0).
//!
//! # Format
//!
//! | field               | type          | flag bit | resolution (SI / imperial) |
//! |---------------------|---------------|----------|----------------------------|
//! | Flags               | uint16        | —        |                            |
//! | Body Fat Percentage | uint16        | always   | 0.1 %                      |
//! | Time Stamp          | Date Time (7) | 1        |                            |
//! | User ID             | uint8         | 2        | 0xFF = unknown user        |
//! | Basal Metabolism    | uint16        | 3        | 1 kJ                       |
//! | Muscle Percentage   | uint16        | 4        | 0.1 %                      |
//! | Muscle Mass         | uint16        | 5        | 0.005 kg / 0.01 lb         |
//! | Fat Free Mass       | uint16        | 6        | mass                       |
//! | Soft Lean Mass      | uint16        | 7        | mass                       |
//! | Body Water Mass     | uint16        | 8        | mass                       |
//! | Impedance           | uint16        | 9        | 0.1 Ω                      |
//! | Weight              | uint16        | 10       | mass                       |
//! | Height              | uint16        | 11       | 0.001 m / 0.1 in           |
//!
//! Flags bit 0: measurement units (0 SI, 1 imperial); bit 12: multiple packet measurement
//! (the measurement is split over several notifications, each decoded on its own; the
//! readings are independent); bits 13–15 reserved. A body fat percentage of `0xFFFF` means
//! "measurement unsuccessful".
//!
//! # Readings
//!
//! One reading per field present, all with the time stamp and user id:
//! [`catalog::BODY_FAT`] `%` (absent, `Error`, when unsuccessful; a weight of `0xFFFF` is
//! treated the same way), [`catalog::BASAL_METABOLISM`] `kJ`, [`catalog::MUSCLE_PERCENTAGE`]
//! `%`, [`catalog::MUSCLE_MASS`], [`catalog::FAT_FREE_MASS`], [`catalog::SOFT_LEAN_MASS`],
//! [`catalog::BODY_WATER_MASS`] and [`catalog::BODY_WEIGHT`] in `kg` or `[lb_av]`,
//! [`catalog::IMPEDANCE`] `Ohm`, [`catalog::BODY_HEIGHT`] `m` or `[in_i]`.

use super::weight_scale::{length, mass, UNSUCCESSFUL};
use super::{bit, user_index, Common, DecodeError, Reader};
use crate::model::{AbsentReason, Decimal, Measured, Metric, Reading};
use crate::profile::{catalog, FrameContext};
use time::OffsetDateTime;

/// A decoded Body Composition Measurement (raw field values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyCompositionMeasurement {
    /// The 16 flag bits.
    pub flags: u16,
    /// Raw body fat percentage (`0xFFFF` = unsuccessful).
    pub body_fat: u16,
    /// Time stamp, if present and known.
    pub time_stamp: Option<OffsetDateTime>,
    /// User index (`None` if absent or unknown).
    pub user_id: Option<u8>,
    /// Raw optional fields in wire order (basal metabolism … height), `None` when absent.
    pub fields: [Option<u16>; 9],
}

/// The optional uint16 fields after the user id: flag bit and field name.
const FIELDS: [(u32, &str); 9] = [
    (3, "basal metabolism"),
    (4, "muscle percentage"),
    (5, "muscle mass"),
    (6, "fat free mass"),
    (7, "soft lean mass"),
    (8, "body water mass"),
    (9, "impedance"),
    (10, "weight"),
    (11, "height"),
];

impl BodyCompositionMeasurement {
    /// Parses a characteristic value.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let flags = r.u16("flags")?;
        let f = u32::from(flags);
        let body_fat = r.u16("body fat percentage")?;
        let time_stamp = if bit(f, 1) {
            r.date_time("time stamp")?
        } else {
            None
        };
        let user_id = if bit(f, 2) {
            user_index(r.u8("user id")?)
        } else {
            None
        };
        let mut fields = [None; 9];
        for (slot, (n, name)) in fields.iter_mut().zip(FIELDS) {
            if bit(f, n) {
                *slot = Some(r.u16(name)?);
            }
        }
        Ok(Self {
            flags,
            body_fat,
            time_stamp,
            user_id,
            fields,
        })
    }

    /// Whether the values are in imperial units.
    pub fn imperial(&self) -> bool {
        bit(u32::from(self.flags), 0)
    }

    /// The readings (see the module doc).
    pub fn to_readings(&self, ctx: &FrameContext) -> Vec<Reading> {
        let common = Common {
            device_time: self.time_stamp,
            device_user: self.user_id,
            ..Common::default()
        };
        let imperial = self.imperial();
        let tenth = |raw: u16| Measured::Value(Decimal::new(i64::from(raw), -1));
        let body_fat = if self.body_fat == UNSUCCESSFUL {
            Measured::Absent(AbsentReason::Error)
        } else {
            tenth(self.body_fat)
        };
        let mut out = vec![common.quantity(ctx, catalog::BODY_FAT, body_fat, "%")];
        let metrics: [Metric; 9] = [
            catalog::BASAL_METABOLISM,
            catalog::MUSCLE_PERCENTAGE,
            catalog::MUSCLE_MASS,
            catalog::FAT_FREE_MASS,
            catalog::SOFT_LEAN_MASS,
            catalog::BODY_WATER_MASS,
            catalog::IMPEDANCE,
            catalog::BODY_WEIGHT,
            catalog::BODY_HEIGHT,
        ];
        for (i, (raw, metric)) in self.fields.iter().zip(metrics).enumerate() {
            let Some(raw) = *raw else { continue };
            let (value, unit) = match i {
                0 => (Measured::Value(Decimal::integer(i64::from(raw))), "kJ"),
                1 => (tenth(raw), "%"),
                6 => (tenth(raw), "Ohm"),
                7 if raw == UNSUCCESSFUL => {
                    (Measured::Absent(AbsentReason::Error), mass(raw, imperial).1)
                }
                8 => length(raw, imperial),
                _ => mass(raw, imperial),
            };
            out.push(common.quantity(ctx, metric, value, unit));
        }
        out
    }
}
