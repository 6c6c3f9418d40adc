//! Bluetooth SIG health-service decoders: GATT characteristic values in, [`Reading`]s out.
//!
//! Pure functions over bytes: no I/O, no allocation beyond the readings, and no panics on
//! any input (every read goes through [`Reader`], which returns an error instead of
//! indexing past the end; `proptest` and cargo-fuzz targets hold that).
//!
//! Formats are byte-exact per the Bluetooth SIG *GATT Specification Supplement* (GSS), which
//! defines every field and flag of the characteristics, and the service specifications that
//! give them meaning (HRS, BLS, HTS, GLS, PLXS, WSS, BCS). One module per family:
//!
//! | characteristic                         | UUID     | module                |
//! |----------------------------------------|----------|-----------------------|
//! | Heart Rate Measurement                 | `0x2A37` | [`heart_rate`]        |
//! | Blood Pressure Measurement             | `0x2A35` | [`blood_pressure`]    |
//! | Intermediate Cuff Pressure             | `0x2A36` | [`blood_pressure`]    |
//! | Temperature Measurement                | `0x2A1C` | [`thermometer`]       |
//! | Intermediate Temperature               | `0x2A1E` | [`thermometer`]       |
//! | Glucose Measurement                    | `0x2A18` | [`glucose`]           |
//! | Glucose Measurement Context            | `0x2A34` | [`glucose`]           |
//! | PLX Spot-check Measurement             | `0x2A5E` | [`pulse_oximeter`]    |
//! | PLX Continuous Measurement             | `0x2A5F` | [`pulse_oximeter`]    |
//! | Weight Measurement                     | `0x2A9D` | [`weight_scale`]      |
//! | Body Composition Measurement           | `0x2A9C` | [`body_composition`]  |
//!
//! Shared field types live in [`ieee11073`] (SFLOAT, FLOAT and their special values) and
//! [`datetime`] (Date Time, Current Time). [`racp`] encodes and parses the Record Access
//! Control Point a glucose meter's stored records are fetched with. [`profile_file`] loads the `device-profiles/ble-*.toml`
//! files that say which of these a standard service uses.
//!
//! # Conventions every decoder follows
//!
//! - **Errors name the field.** A payload too short for what its flags announce is
//!   [`DecodeError::Truncated`] with the field and its offset; an enumerated field holding a
//!   value the specification marks "Reserved for Future Use" is [`DecodeError::Reserved`];
//!   an out-of-range time is [`DecodeError::Invalid`]. Error messages carry field names,
//!   offsets and code values, never a measured value (no PHI in logs).
//! - **Reserved flag bits are ignored, and so are bytes after the last field** the flags
//!   announce, as Bluetooth receivers do so that later versions of a characteristic can
//!   append fields. (Heart Rate Measurement is the exception: its RR-intervals run to the
//!   end, so an odd byte left over is an error.)
//! - **Units are UCUM codes, in the unit the device reported** (`mm[Hg]` or `kPa`, `Cel` or
//!   `[degF]`, `kg` or `[lb_av]`, …), and numbers keep the device's precision as a
//!   [`crate::model::Decimal`]. The one conversion is glucose (see [`glucose`]).
//! - **Special values are never numbers.** SFLOAT/FLOAT NaN, NRes, ±INF and reserved, and a
//!   scale's "measurement unsuccessful" `0xFFFF`, become [`crate::model::Measured::Absent`].
//! - **Time.** `device_time` is the characteristic's own time stamp when it has one (decoded
//!   as described in [`datetime`]), else `None`; `received_at`, `clock_offset`, `device` and
//!   `patient` come from the [`FrameContext`].
//! - **Status bits** the device reports are mapped onto [`crate::model::StatusFlag`] on
//!   every reading of the measurement they describe; each module documents its mapping.
//! - **User index.** A BLE User ID goes into [`Reading::device_user`]; `0xFF` ("unknown
//!   user") becomes `None`.

pub mod blood_pressure;
pub mod body_composition;
pub mod datetime;
pub mod glucose;
pub mod heart_rate;
pub mod ieee11073;
pub mod profile_file;
pub mod pulse_oximeter;
pub mod racp;
pub mod thermometer;
pub mod weight_scale;

#[cfg(test)]
mod tests;

use time::OffsetDateTime;

use super::FrameContext;
use crate::model::{Measured, Metric, Quantity, Reading, StatusFlag, Value};

/// Why a characteristic value could not be decoded.
///
/// Like every decode error of the gateway, it says which field was wrong and where, never
/// which value a patient had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload ended before a field its flags say is present (incomplete).
    #[error("too short for its flags: missing field `{field}` at offset {offset}")]
    Truncated {
        /// The field that did not fit.
        field: &'static str,
        /// Where it should have started.
        offset: usize,
    },
    /// An enumerated field holds a value the specification reserves for future use.
    #[error("reserved value {value} in field `{field}` at offset {offset}")]
    Reserved {
        /// The field.
        field: &'static str,
        /// Where it starts.
        offset: usize,
        /// The reserved code the device sent (a code, never a measured value).
        value: u32,
    },
    /// A field is present but its content is impossible (e.g. month 13).
    #[error("invalid field `{field}` at offset {offset}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Where it starts.
        offset: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No decoder exists for this characteristic UUID.
    #[error("no decoder for characteristic 0x{0:04X}")]
    UnsupportedCharacteristic(u16),
}

impl DecodeError {
    /// Whether the payload was cut short (as opposed to wrong): a source may log these
    /// differently.
    pub fn is_incomplete(&self) -> bool {
        matches!(self, DecodeError::Truncated { .. })
    }
}

/// A characteristic UUID that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a Bluetooth characteristic UUID: expected `2A35`, `0x2A35` or \
     `00002a35-0000-1000-8000-00805f9b34fb`"
)]
pub struct UuidError;

/// The Bluetooth Base UUID, `0000xxxx-0000-1000-8000-00805F9B34FB`, after the 16-bit part.
const BASE_UUID_TAIL: &str = "-0000-1000-8000-00805f9b34fb";

/// Parses a 16-bit characteristic UUID written as `2A35`, `0x2A35` (any case), or as the
/// full 128-bit UUID built on the Bluetooth Base UUID (`00002a35-0000-1000-8000-00805f9b34fb`).
pub fn parse_characteristic(s: &str) -> Result<u16, UuidError> {
    let s = s.trim();
    // UUIDs are ASCII; checking first also keeps the byte slicing below on char boundaries.
    if !s.is_ascii() {
        return Err(UuidError);
    }
    let hex4 = |t: &str| {
        if t.len() == 4 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            u16::from_str_radix(t, 16).map_err(|_| UuidError)
        } else {
            Err(UuidError)
        }
    };
    if s.len() == 36 {
        let lower = s.to_ascii_lowercase();
        let (head, tail) = lower.split_at(8);
        if tail != BASE_UUID_TAIL || !head.starts_with("0000") {
            return Err(UuidError);
        }
        return hex4(&head[4..]);
    }
    let t = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    hex4(t)
}

/// Parses a Bluetooth device address written as six hex pairs separated by `:` or `-`
/// (`A1:B2:C3:D4:E5:F6`, any case) or as twelve hex digits (`A1B2C3D4E5F6`, the device key
/// the gateway uses). Most significant byte first, as people write it.
pub fn parse_bluetooth_address(s: &str) -> Option<[u8; 6]> {
    let s = s.trim();
    if !s.is_ascii() {
        return None;
    }
    let digits: String = match s.len() {
        17 => {
            let sep = s.as_bytes().get(2).copied()?;
            if !(sep == b':' || sep == b'-') {
                return None;
            }
            let parts: Vec<&str> = s.split(char::from(sep)).collect();
            if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
                return None;
            }
            parts.concat()
        }
        12 => s.to_owned(),
        _ => return None,
    };
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 6];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(digits.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Every characteristic this module decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decoder {
    /// Heart Rate Measurement, 0x2A37.
    HeartRateMeasurement,
    /// Blood Pressure Measurement, 0x2A35.
    BloodPressureMeasurement,
    /// Intermediate Cuff Pressure, 0x2A36.
    IntermediateCuffPressure,
    /// Temperature Measurement, 0x2A1C.
    TemperatureMeasurement,
    /// Intermediate Temperature, 0x2A1E.
    IntermediateTemperature,
    /// Glucose Measurement, 0x2A18.
    GlucoseMeasurement,
    /// Glucose Measurement Context, 0x2A34.
    GlucoseMeasurementContext,
    /// PLX Spot-check Measurement, 0x2A5E.
    PlxSpotCheckMeasurement,
    /// PLX Continuous Measurement, 0x2A5F.
    PlxContinuousMeasurement,
    /// Weight Measurement, 0x2A9D.
    WeightMeasurement,
    /// Body Composition Measurement, 0x2A9C.
    BodyCompositionMeasurement,
}

impl Decoder {
    /// All decoders, in the order of the table in the module doc.
    pub const ALL: [Decoder; 11] = [
        Decoder::HeartRateMeasurement,
        Decoder::BloodPressureMeasurement,
        Decoder::IntermediateCuffPressure,
        Decoder::TemperatureMeasurement,
        Decoder::IntermediateTemperature,
        Decoder::GlucoseMeasurement,
        Decoder::GlucoseMeasurementContext,
        Decoder::PlxSpotCheckMeasurement,
        Decoder::PlxContinuousMeasurement,
        Decoder::WeightMeasurement,
        Decoder::BodyCompositionMeasurement,
    ];

    /// The characteristic's 16-bit UUID.
    pub const fn uuid(self) -> u16 {
        match self {
            Decoder::HeartRateMeasurement => 0x2A37,
            Decoder::BloodPressureMeasurement => 0x2A35,
            Decoder::IntermediateCuffPressure => 0x2A36,
            Decoder::TemperatureMeasurement => 0x2A1C,
            Decoder::IntermediateTemperature => 0x2A1E,
            Decoder::GlucoseMeasurement => 0x2A18,
            Decoder::GlucoseMeasurementContext => 0x2A34,
            Decoder::PlxSpotCheckMeasurement => 0x2A5E,
            Decoder::PlxContinuousMeasurement => 0x2A5F,
            Decoder::WeightMeasurement => 0x2A9D,
            Decoder::BodyCompositionMeasurement => 0x2A9C,
        }
    }

    /// The name used in device-profile files (`decoder = "blood-pressure-measurement"`).
    pub const fn name(self) -> &'static str {
        match self {
            Decoder::HeartRateMeasurement => "heart-rate-measurement",
            Decoder::BloodPressureMeasurement => "blood-pressure-measurement",
            Decoder::IntermediateCuffPressure => "intermediate-cuff-pressure",
            Decoder::TemperatureMeasurement => "temperature-measurement",
            Decoder::IntermediateTemperature => "intermediate-temperature",
            Decoder::GlucoseMeasurement => "glucose-measurement",
            Decoder::GlucoseMeasurementContext => "glucose-measurement-context",
            Decoder::PlxSpotCheckMeasurement => "plx-spot-check-measurement",
            Decoder::PlxContinuousMeasurement => "plx-continuous-measurement",
            Decoder::WeightMeasurement => "weight-measurement",
            Decoder::BodyCompositionMeasurement => "body-composition-measurement",
        }
    }

    /// Every metric this decoder can put on a reading (device-profile files are checked
    /// against it).
    pub fn metrics(self) -> Vec<Metric> {
        use crate::profile::catalog as c;
        match self {
            Decoder::HeartRateMeasurement => {
                vec![c::HEART_RATE, c::ENERGY_EXPENDED, c::RR_INTERVAL]
            }
            Decoder::BloodPressureMeasurement => vec![
                c::BLOOD_PRESSURE,
                c::SYSTOLIC,
                c::DIASTOLIC,
                c::MEAN_ARTERIAL,
                c::PULSE_RATE_NONINV,
            ],
            Decoder::IntermediateCuffPressure => vec![c::CUFF_PRESSURE],
            Decoder::TemperatureMeasurement | Decoder::IntermediateTemperature => vec![
                c::BODY_TEMPERATURE,
                c::TEMP_AXILLA,
                c::TEMP_EAR,
                c::TEMP_FINGER,
                c::TEMP_GIT,
                c::TEMP_ORAL,
                c::TEMP_RECT,
                c::TEMP_TOE,
                c::TEMP_TYMP,
            ],
            Decoder::GlucoseMeasurement => vec![
                c::GLUCOSE_CAPILLARY_WHOLEBLOOD,
                c::GLUCOSE_CAPILLARY_WHOLEBLOOD_MOLAR,
                c::GLUCOSE_CAPILLARY_PLASMA,
                c::GLUCOSE_CAPILLARY_PLASMA_MOLAR,
                c::GLUCOSE_VENOUS_WHOLEBLOOD,
                c::GLUCOSE_VENOUS_PLASMA,
                c::GLUCOSE_VENOUS_PLASMA_MOLAR,
                c::GLUCOSE_ARTERIAL_WHOLEBLOOD,
                c::GLUCOSE_ARTERIAL_PLASMA,
                c::GLUCOSE_UNDETERMINED_WHOLEBLOOD,
                c::GLUCOSE_UNDETERMINED_PLASMA,
                c::GLUCOSE_UNDETERMINED_PLASMA_MOLAR,
                c::GLUCOSE_ISF,
                c::GLUCOSE_CONTROL,
                c::GLUCOSE_GENERIC,
                c::GLUCOSE_SAMPLE_LOCATION,
            ],
            Decoder::GlucoseMeasurementContext => vec![
                c::GLUCOSE_CARB_BREAKFAST,
                c::GLUCOSE_CARB_LUNCH,
                c::GLUCOSE_CARB_DINNER,
                c::GLUCOSE_CARB_SNACK,
                c::GLUCOSE_CARB_DRINK,
                c::GLUCOSE_CARB_SUPPER,
                c::GLUCOSE_CARB_BRUNCH,
                c::GLUCOSE_MEAL_CONTEXT,
                c::GLUCOSE_TESTER,
                c::GLUCOSE_HEALTH,
                c::GLUCOSE_EXERCISE,
                c::MEDICATION_RAPID_ACTING,
                c::MEDICATION_SHORT_ACTING,
                c::MEDICATION_INTERMEDIATE_ACTING,
                c::MEDICATION_LONG_ACTING,
                c::MEDICATION_PREMIX,
                c::HBA1C,
            ],
            Decoder::PlxSpotCheckMeasurement => {
                vec![c::SPO2, c::PULSE_RATE_OXIM, c::PULSE_AMPLITUDE_INDEX]
            }
            Decoder::PlxContinuousMeasurement => vec![
                c::SPO2,
                c::PULSE_RATE_OXIM,
                c::SPO2_FAST,
                c::PULSE_RATE_OXIM_FAST,
                c::SPO2_SLOW,
                c::PULSE_RATE_OXIM_SLOW,
                c::PULSE_AMPLITUDE_INDEX,
            ],
            Decoder::WeightMeasurement => vec![c::BODY_WEIGHT, c::BMI, c::BODY_HEIGHT],
            Decoder::BodyCompositionMeasurement => vec![
                c::BODY_FAT,
                c::BASAL_METABOLISM,
                c::MUSCLE_PERCENTAGE,
                c::MUSCLE_MASS,
                c::FAT_FREE_MASS,
                c::SOFT_LEAN_MASS,
                c::BODY_WATER_MASS,
                c::IMPEDANCE,
                c::BODY_WEIGHT,
                c::BODY_HEIGHT,
            ],
        }
    }

    /// The decoder for a characteristic UUID.
    pub fn from_uuid(uuid: u16) -> Option<Decoder> {
        Self::ALL.into_iter().find(|d| d.uuid() == uuid)
    }

    /// The decoder with a profile-file name.
    pub fn from_name(name: &str) -> Option<Decoder> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Decodes one characteristic value.
    pub fn decode(self, bytes: &[u8], ctx: &FrameContext) -> Result<Vec<Reading>, DecodeError> {
        match self {
            Decoder::HeartRateMeasurement => {
                heart_rate::HeartRateMeasurement::parse(bytes).map(|m| m.to_readings(ctx))
            }
            Decoder::BloodPressureMeasurement => {
                blood_pressure::BloodPressureMeasurement::parse(bytes).map(|m| m.to_readings(ctx))
            }
            Decoder::IntermediateCuffPressure => {
                blood_pressure::BloodPressureMeasurement::parse(bytes)
                    .map(|m| m.to_intermediate_readings(ctx))
            }
            Decoder::TemperatureMeasurement | Decoder::IntermediateTemperature => {
                thermometer::TemperatureMeasurement::parse(bytes).map(|m| m.to_readings(ctx))
            }
            Decoder::GlucoseMeasurement => {
                glucose::GlucoseMeasurement::parse(bytes).map(|m| m.to_readings(ctx))
            }
            Decoder::GlucoseMeasurementContext => {
                glucose::GlucoseContext::parse(bytes).map(|m| m.to_readings(ctx))
            }
            Decoder::PlxSpotCheckMeasurement => {
                pulse_oximeter::SpotCheck::parse(bytes).map(|m| m.to_readings(ctx))
            }
            Decoder::PlxContinuousMeasurement => {
                pulse_oximeter::Continuous::parse(bytes).map(|m| m.to_readings(ctx))
            }
            Decoder::WeightMeasurement => {
                weight_scale::WeightMeasurement::parse(bytes).map(|m| m.to_readings(ctx))
            }
            Decoder::BodyCompositionMeasurement => {
                body_composition::BodyCompositionMeasurement::parse(bytes)
                    .map(|m| m.to_readings(ctx))
            }
        }
    }
}

/// Decodes the value of `characteristic` (a 16-bit UUID, see [`parse_characteristic`]) into
/// readings, taking device, patient, receive time and clock offset from `ctx`.
///
/// Never panics. An unknown characteristic is [`DecodeError::UnsupportedCharacteristic`].
pub fn decode(
    characteristic: u16,
    bytes: &[u8],
    ctx: &FrameContext,
) -> Result<Vec<Reading>, DecodeError> {
    Decoder::from_uuid(characteristic)
        .ok_or(DecodeError::UnsupportedCharacteristic(characteristic))?
        .decode(bytes, ctx)
}

/// A cursor over a characteristic value whose reads never panic: each returns
/// [`DecodeError::Truncated`] naming the field when the bytes run out.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// Offset of the next byte to read.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// The bytes not read yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.pos..).unwrap_or(&[])
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let truncated = DecodeError::Truncated {
            field,
            offset: self.pos,
        };
        let end = self.pos.checked_add(N).ok_or(truncated.clone())?;
        let slice = self.bytes.get(self.pos..end).ok_or(truncated.clone())?;
        let array = <[u8; N]>::try_from(slice).map_err(|_| truncated)?;
        self.pos = end;
        Ok(array)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.array::<1>(field).map(|[b]| b)
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.array(field).map(u16::from_le_bytes)
    }

    pub(crate) fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        self.array(field).map(i16::from_le_bytes)
    }

    pub(crate) fn u24(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array::<3>(field)
            .map(|[a, b, c]| u32::from_le_bytes([a, b, c, 0]))
    }

    pub(crate) fn sfloat(&mut self, field: &'static str) -> Result<Measured, DecodeError> {
        self.u16(field).map(ieee11073::sfloat)
    }

    pub(crate) fn float(&mut self, field: &'static str) -> Result<Measured, DecodeError> {
        self.array(field)
            .map(u32::from_le_bytes)
            .map(ieee11073::float)
    }

    pub(crate) fn date_time(
        &mut self,
        field: &'static str,
    ) -> Result<Option<OffsetDateTime>, DecodeError> {
        datetime::read_date_time(self, field)
    }
}

/// What the readings of one measurement share besides device, patient and receive time.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Common {
    pub(crate) device_time: Option<OffsetDateTime>,
    pub(crate) status: Vec<StatusFlag>,
    pub(crate) device_user: Option<u8>,
    pub(crate) sequence: Option<u64>,
    pub(crate) duration: Option<time::Duration>,
}

impl Common {
    /// A reading of `metric` with `value`, the rest from `self` and `ctx`.
    pub(crate) fn reading(&self, ctx: &FrameContext, metric: Metric, value: Value) -> Reading {
        Reading {
            device: ctx.device.clone(),
            patient: ctx.patient.clone(),
            metric,
            value,
            device_time: self.device_time,
            clock_offset: ctx.clock_offset,
            received_at: ctx.received_at,
            duration: self.duration,
            sequence: self.sequence,
            status: self.status.clone(),
            device_user: self.device_user,
            bedside: None,
            time_sync: ctx.time_sync,
        }
    }

    /// A single-quantity reading.
    pub(crate) fn quantity(
        &self,
        ctx: &FrameContext,
        metric: Metric,
        value: Measured,
        unit: &str,
    ) -> Reading {
        self.reading(
            ctx,
            metric,
            Value::Quantity(Quantity {
                value,
                unit: unit.to_owned(),
            }),
        )
    }
}

/// Adds `flag` to `status` unless it is there already (several device bits may map to one
/// flag; each flag is listed once).
pub(crate) fn push_flag(status: &mut Vec<StatusFlag>, flag: StatusFlag) {
    if !status.contains(&flag) {
        status.push(flag);
    }
}

/// A BLE User ID as a device user index: `0xFF` means "unknown user".
pub(crate) fn user_index(raw: u8) -> Option<u8> {
    (raw != 0xFF).then_some(raw)
}

/// Whether bit `n` of `flags` is set.
pub(crate) const fn bit(flags: u32, n: u32) -> bool {
    flags & (1 << n) != 0
}
