//! Temperature Measurement (0x2A1C) and Intermediate Temperature (0x2A1E), GATT
//! Specification Supplement "Temperature Measurement" / "Intermediate Temperature", used by
//! the Health Thermometer Service (HTS 1.0). Both share one format.
//!
//! # Format
//!
//! | field              | type          | present when |
//! |--------------------|---------------|--------------|
//! | Flags              | uint8         | always       |
//! | Temperature        | FLOAT         | always       |
//! | Time Stamp         | Date Time (7) | bit 1        |
//! | Temperature Type   | uint8         | bit 2        |
//!
//! Flags: bit 0 units (0 °C, 1 °F); bit 1 time stamp present; bit 2 temperature type
//! present; bits 3–7 reserved.
//!
//! Temperature Type: 1 armpit, 2 body (general), 3 ear (usually earlobe), 4 finger,
//! 5 gastro-intestinal tract, 6 mouth, 7 rectum, 8 toe, 9 tympanum (ear drum);
//! 0 and 10–255 are reserved → error.
//!
//! # Readings
//!
//! One quantity in `Cel` or `[degF]`. The metric follows the temperature type, as the
//! IEEE 11073-10408 thermometer specialization does: [`catalog::TEMP_AXILLA`],
//! [`catalog::BODY_TEMPERATURE`] (type 2, or no type given), [`catalog::TEMP_EAR`],
//! [`catalog::TEMP_FINGER`], [`catalog::TEMP_GIT`], [`catalog::TEMP_ORAL`],
//! [`catalog::TEMP_RECT`], [`catalog::TEMP_TOE`], [`catalog::TEMP_TYMP`]. All of them carry
//! LOINC 8310-5 so the FHIR body-temperature vital-signs profile applies. An intermediate
//! temperature is decoded the same way (the profile decides whether to subscribe to it).

use super::{bit, Common, DecodeError, Reader};
use crate::model::{Measured, Metric, Reading};
use crate::profile::{catalog, FrameContext};
use time::OffsetDateTime;

/// Where the temperature was taken (Temperature Type, GSS "Temperature Type" 0x2A1D).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemperatureType {
    /// 1: armpit.
    Armpit,
    /// 2: body (general).
    Body,
    /// 3: ear (usually earlobe).
    Ear,
    /// 4: finger.
    Finger,
    /// 5: gastro-intestinal tract.
    GastroIntestinalTract,
    /// 6: mouth.
    Mouth,
    /// 7: rectum.
    Rectum,
    /// 8: toe.
    Toe,
    /// 9: tympanum (ear drum).
    Tympanum,
}

impl TemperatureType {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Armpit,
            2 => Self::Body,
            3 => Self::Ear,
            4 => Self::Finger,
            5 => Self::GastroIntestinalTract,
            6 => Self::Mouth,
            7 => Self::Rectum,
            8 => Self::Toe,
            9 => Self::Tympanum,
            _ => return None,
        })
    }

    /// The metric for a temperature taken here.
    pub fn metric(self) -> Metric {
        match self {
            Self::Armpit => catalog::TEMP_AXILLA,
            Self::Body => catalog::BODY_TEMPERATURE,
            Self::Ear => catalog::TEMP_EAR,
            Self::Finger => catalog::TEMP_FINGER,
            Self::GastroIntestinalTract => catalog::TEMP_GIT,
            Self::Mouth => catalog::TEMP_ORAL,
            Self::Rectum => catalog::TEMP_RECT,
            Self::Toe => catalog::TEMP_TOE,
            Self::Tympanum => catalog::TEMP_TYMP,
        }
    }
}

/// A decoded Temperature Measurement or Intermediate Temperature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemperatureMeasurement {
    /// The temperature.
    pub value: Measured,
    /// `true` for degrees Fahrenheit, `false` for Celsius.
    pub fahrenheit: bool,
    /// Time stamp, if present and known.
    pub time_stamp: Option<OffsetDateTime>,
    /// Site, if given.
    pub temperature_type: Option<TemperatureType>,
}

impl TemperatureMeasurement {
    /// Parses a characteristic value (either characteristic).
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let flags = u32::from(r.u8("flags")?);
        let value = r.float("temperature measurement value")?;
        let time_stamp = if bit(flags, 1) {
            r.date_time("time stamp")?
        } else {
            None
        };
        let temperature_type = if bit(flags, 2) {
            let offset = r.position();
            let code = r.u8("temperature type")?;
            Some(
                TemperatureType::from_code(code).ok_or(DecodeError::Reserved {
                    field: "temperature type",
                    offset,
                    value: u32::from(code),
                })?,
            )
        } else {
            None
        };
        Ok(Self {
            value,
            fahrenheit: bit(flags, 0),
            time_stamp,
            temperature_type,
        })
    }

    /// The reading (see the module doc).
    pub fn to_readings(&self, ctx: &FrameContext) -> Vec<Reading> {
        let common = Common {
            device_time: self.time_stamp,
            ..Common::default()
        };
        let metric = self
            .temperature_type
            .map_or(catalog::BODY_TEMPERATURE, TemperatureType::metric);
        let unit = if self.fahrenheit { "[degF]" } else { "Cel" };
        vec![common.quantity(ctx, metric, self.value, unit)]
    }
}
