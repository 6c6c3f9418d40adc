//! Glucose Measurement (0x2A18) and Glucose Measurement Context (0x2A34), GATT Specification
//! Supplement "Glucose Measurement" / "Glucose Measurement Context", used by the Glucose
//! Service (GLS 1.0) with its Record Access Control Point.
//!
//! # Glucose Measurement format
//!
//! | field                              | type          | present when |
//! |------------------------------------|---------------|--------------|
//! | Flags                              | uint8         | always       |
//! | Sequence Number                    | uint16        | always       |
//! | Base Time                          | Date Time (7) | always       |
//! | Time Offset                        | sint16, minutes | bit 0      |
//! | Glucose Concentration              | SFLOAT        | bit 1        |
//! | Type (low nibble) / Sample Location (high nibble) | uint8 | bit 1 |
//! | Sensor Status Annunciation         | uint16        | bit 3        |
//!
//! Flags: bit 0 time offset present; bit 1 concentration, type and sample location present;
//! bit 2 concentration units (0 kg/L, 1 mol/L); bit 3 sensor status annunciation present;
//! bit 4 context information follows; bits 5–7 reserved.
//!
//! Type: 1 capillary whole blood, 2 capillary plasma, 3 venous whole blood, 4 venous plasma,
//! 5 arterial whole blood, 6 arterial plasma, 7 undetermined whole blood, 8 undetermined
//! plasma, 9 interstitial fluid, 10 control solution; 0 and 11–15 reserved → error.
//! Sample Location: 1 finger, 2 alternate site test, 3 earlobe, 4 control solution,
//! 15 not available; 0 and 5–14 reserved → error.
//!
//! Sensor Status Annunciation bits and the [`StatusFlag`] each maps to: 0 battery low →
//! `LowBattery`; 1 sensor malfunction → `SensorFault`; 2 sample size insufficient, 3 strip
//! insertion error, 4 strip type incorrect, 9 strip pulled too soon → `Invalid`; 5 result
//! higher / 6 lower than the device can process, 7 / 8 sensor temperature too high / low,
//! 11 time fault → `Questionable`; 10 general device fault → `SensorFault`; 12–15 reserved,
//! ignored.
//!
//! # Units: the one conversion
//!
//! GLS sends concentrations in SI base units, kg/L or mol/L. They are transcoded, exactly, to
//! the clinical units the IEEE 11073-10417 glucose specialization uses: kg/L × 10⁵ = mg/dL
//! and mol/L × 10³ = mmol/L. Both are powers of ten, so only the exponent of the decimal
//! changes: SFLOAT mantissa 95, exponent -5 (0.00095 kg/L) becomes 95 mg/dL, and the
//! device's precision is kept.
//!
//! # Measurement readings
//!
//! - one glucose quantity whose metric follows the type (`MDC_CONC_GLU_*`, with the molar
//!   LOINC variant when the unit is mmol/L), `sequence` = the sequence number and
//!   `device_time` = base time + time offset. A control-solution type or location adds
//!   [`StatusFlag::TestData`]. A record without a concentration (meters send those for
//!   strip errors) still gives a reading, [`catalog::GLUCOSE_GENERIC`] with value absent
//!   (`Error`), so its status is not lost;
//! - one coded [`catalog::GLUCOSE_SAMPLE_LOCATION`] reading (same sequence and time) when a
//!   sample location other than "not available" is given, since the reading model has no
//!   body-site slot.
//!
//! # Glucose Measurement Context format
//!
//! | field                                  | type    | present when |
//! |----------------------------------------|---------|--------------|
//! | Flags                                  | uint8   | always       |
//! | Sequence Number                        | uint16  | always       |
//! | Extended Flags                         | uint8   | bit 7 (all bits reserved) |
//! | Carbohydrate ID, Carbohydrate (kg)     | uint8, SFLOAT | bit 0  |
//! | Meal                                   | uint8   | bit 1        |
//! | Tester (low nibble) / Health (high nibble) | uint8 | bit 2      |
//! | Exercise Duration (s), Exercise Intensity (%) | uint16, uint8 | bit 3 |
//! | Medication ID, Medication (kg or L)    | uint8, SFLOAT | bit 4  |
//! | HbA1c (%)                              | SFLOAT  | bit 6        |
//!
//! Flags bit 5 is the medication unit (0 kilograms, 1 litres). Carbohydrate ID: 1 breakfast,
//! 2 lunch, 3 dinner, 4 snack, 5 drink, 6 supper, 7 brunch. Meal: 1 preprandial,
//! 2 postprandial, 3 fasting, 4 casual, 5 bedtime. Tester: 1 self, 2 health care
//! professional, 3 lab test, 15 not available. Health: 1 minor issues, 2 major issues,
//! 3 during menses, 4 under stress, 5 no issues, 15 not available. Medication ID: 1 rapid-,
//! 2 short-, 3 intermediate-, 4 long-acting insulin, 5 pre-mixed insulin. Every other value
//! (0 included) is reserved → error. Exercise duration `0xFFFF` means "overrun".
//!
//! # Context readings, and how to attach them
//!
//! A context is not a separate measurement: it describes the Glucose Measurement with the
//! same sequence number, which GLS sends just before it (that measurement has flags bit 4
//! set). Each context item becomes its own reading with `sequence` = that sequence number,
//! following IEEE 11073-10417, whose context objects are their own observations:
//! carbohydrate as `MDC_CTXT_GLU_CARB_<meal>` in `kg`; meal, tester and health as coded
//! readings (`MDC_CTXT_GLU_MEAL` = `MDC_CTXT_GLU_MEAL_POSTPRANDIAL`, …; "not available" gives
//! no reading); exercise as `MDC_CTXT_GLU_EXERCISE`, intensity in `%` with the duration as
//! the reading's duration (none on overrun); medication as `MDC_CTXT_MEDICATION_<kind>` in
//! `kg` or `L`; HbA1c as [`catalog::HBA1C`] in `%`.
//!
//! The context carries no time, so its readings come out with `device_time: None`. A source
//! keeps the readings of the last measurement and calls [`attach_context`], which copies the
//! measurement's device time and user onto the context readings with the same device and
//! sequence number (a FHIR mapper can then also link them by sequence). Context readings that
//! find no measurement keep the gateway's receive time, which the model records as such.

use super::{bit, push_flag, Common, DecodeError, Reader};
use crate::model::{AbsentReason, Decimal, Measured, Metric, Reading, StatusFlag, Value};
use crate::profile::{catalog, FrameContext};
use time::{Duration, OffsetDateTime};

/// Code system of the coded context values.
pub const MDC_SYSTEM: &str = "urn:iso:std:iso:11073:10101";

/// What the blood sample was (Type nibble).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleType {
    /// 1.
    CapillaryWholeBlood,
    /// 2.
    CapillaryPlasma,
    /// 3.
    VenousWholeBlood,
    /// 4.
    VenousPlasma,
    /// 5.
    ArterialWholeBlood,
    /// 6.
    ArterialPlasma,
    /// 7.
    UndeterminedWholeBlood,
    /// 8.
    UndeterminedPlasma,
    /// 9: interstitial fluid.
    InterstitialFluid,
    /// 10: control solution (a meter check, not patient data).
    ControlSolution,
}

impl SampleType {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::CapillaryWholeBlood,
            2 => Self::CapillaryPlasma,
            3 => Self::VenousWholeBlood,
            4 => Self::VenousPlasma,
            5 => Self::ArterialWholeBlood,
            6 => Self::ArterialPlasma,
            7 => Self::UndeterminedWholeBlood,
            8 => Self::UndeterminedPlasma,
            9 => Self::InterstitialFluid,
            10 => Self::ControlSolution,
            _ => return None,
        })
    }

    /// The metric of a concentration of this type, in mass (`mg/dL`) or molar (`mmol/L`)
    /// units; they differ only in LOINC code.
    pub fn metric(self, molar: bool) -> Metric {
        use catalog as c;
        match (self, molar) {
            (Self::CapillaryWholeBlood, false) => c::GLUCOSE_CAPILLARY_WHOLEBLOOD,
            (Self::CapillaryWholeBlood, true) => c::GLUCOSE_CAPILLARY_WHOLEBLOOD_MOLAR,
            (Self::CapillaryPlasma, false) => c::GLUCOSE_CAPILLARY_PLASMA,
            (Self::CapillaryPlasma, true) => c::GLUCOSE_CAPILLARY_PLASMA_MOLAR,
            (Self::VenousWholeBlood, _) => c::GLUCOSE_VENOUS_WHOLEBLOOD,
            (Self::VenousPlasma, false) => c::GLUCOSE_VENOUS_PLASMA,
            (Self::VenousPlasma, true) => c::GLUCOSE_VENOUS_PLASMA_MOLAR,
            (Self::ArterialWholeBlood, _) => c::GLUCOSE_ARTERIAL_WHOLEBLOOD,
            (Self::ArterialPlasma, _) => c::GLUCOSE_ARTERIAL_PLASMA,
            (Self::UndeterminedWholeBlood, _) => c::GLUCOSE_UNDETERMINED_WHOLEBLOOD,
            (Self::UndeterminedPlasma, false) => c::GLUCOSE_UNDETERMINED_PLASMA,
            (Self::UndeterminedPlasma, true) => c::GLUCOSE_UNDETERMINED_PLASMA_MOLAR,
            (Self::InterstitialFluid, _) => c::GLUCOSE_ISF,
            (Self::ControlSolution, _) => c::GLUCOSE_CONTROL,
        }
    }
}

/// Where the sample was taken (Sample Location nibble).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleLocation {
    /// 1.
    Finger,
    /// 2: alternate site test.
    AlternateSite,
    /// 3.
    Earlobe,
    /// 4.
    ControlSolution,
    /// 15: the device does not know.
    NotAvailable,
}

impl SampleLocation {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Finger,
            2 => Self::AlternateSite,
            3 => Self::Earlobe,
            4 => Self::ControlSolution,
            15 => Self::NotAvailable,
            _ => return None,
        })
    }

    /// The MDC code (partition 128, 32-bit form) and reference id, if the location is known.
    pub fn code(self) -> Option<(u32, &'static str)> {
        let dm = |term: u32| catalog::PHD_DM_PARTITION * 65536 + term;
        Some(match self {
            Self::Finger => (dm(29240), "MDC_CTXT_GLU_SAMPLELOCATION_FINGER"),
            Self::AlternateSite => (dm(29244), "MDC_CTXT_GLU_SAMPLELOCATION_AST"),
            Self::Earlobe => (dm(29248), "MDC_CTXT_GLU_SAMPLELOCATION_EARLOBE"),
            Self::ControlSolution => (dm(29252), "MDC_CTXT_GLU_SAMPLELOCATION_CTRLSOLUTION"),
            Self::NotAvailable => return None,
        })
    }
}

/// The unit the concentration arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConcentrationUnit {
    /// kg/L, reported as mg/dL.
    KilogramPerLitre,
    /// mol/L, reported as mmol/L.
    MolePerLitre,
}

impl ConcentrationUnit {
    /// UCUM code of the unit the value is reported in after transcoding.
    pub const fn reported_ucum(self) -> &'static str {
        match self {
            Self::KilogramPerLitre => "mg/dL",
            Self::MolePerLitre => "mmol/L",
        }
    }

    /// Transcodes a device value to [`Self::reported_ucum`] by moving the decimal point
    /// (kg/L × 10⁵ = mg/dL, mol/L × 10³ = mmol/L). Exact; the precision is kept.
    pub fn transcode(self, value: Measured) -> Measured {
        let shift: i8 = match self {
            Self::KilogramPerLitre => 5,
            Self::MolePerLitre => 3,
        };
        match value {
            Measured::Value(d) => match d.exponent.checked_add(shift) {
                Some(exponent) => Measured::Value(Decimal::new(d.mantissa, exponent)),
                None => Measured::Absent(AbsentReason::Error),
            },
            absent => absent,
        }
    }
}

/// A decoded Glucose Measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlucoseMeasurement {
    /// Sequence number: identifies the record on the meter.
    pub sequence: u16,
    /// Base time + time offset, if the base time is known.
    pub time: Option<OffsetDateTime>,
    /// Concentration as the device sent it, with its unit, type and location.
    pub concentration: Option<(Measured, ConcentrationUnit, SampleType, SampleLocation)>,
    /// The unit flag (meaningful even without a concentration).
    pub unit: ConcentrationUnit,
    /// Sensor Status Annunciation bits, if present.
    pub sensor_status: Option<u16>,
    /// A Glucose Measurement Context with the same sequence number follows.
    pub context_follows: bool,
}

impl GlucoseMeasurement {
    /// Parses a characteristic value.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let flags = u32::from(r.u8("flags")?);
        let sequence = r.u16("sequence number")?;
        let base = r.date_time("base time")?;
        let time = if bit(flags, 0) {
            super::datetime::add_minutes(base, r.i16("time offset")?)
        } else {
            base
        };
        let unit = if bit(flags, 2) {
            ConcentrationUnit::MolePerLitre
        } else {
            ConcentrationUnit::KilogramPerLitre
        };
        let concentration = if bit(flags, 1) {
            let value = r.sfloat("glucose concentration")?;
            let offset = r.position();
            let code = r.u8("type-sample location")?;
            let sample_type = SampleType::from_code(code & 0x0F).ok_or(DecodeError::Reserved {
                field: "type",
                offset,
                value: u32::from(code & 0x0F),
            })?;
            let location = SampleLocation::from_code(code >> 4).ok_or(DecodeError::Reserved {
                field: "sample location",
                offset,
                value: u32::from(code >> 4),
            })?;
            Some((value, unit, sample_type, location))
        } else {
            None
        };
        let sensor_status = if bit(flags, 3) {
            Some(r.u16("sensor status annunciation")?)
        } else {
            None
        };
        Ok(Self {
            sequence,
            time,
            concentration,
            unit,
            sensor_status,
            context_follows: bit(flags, 4),
        })
    }

    /// The status flags of the measurement (see the module doc for the mapping).
    pub fn flags(&self) -> Vec<StatusFlag> {
        let mut out = Vec::new();
        if let Some(raw) = self.sensor_status {
            let raw = u32::from(raw);
            let map: [(u32, StatusFlag); 12] = [
                (0, StatusFlag::LowBattery),
                (1, StatusFlag::SensorFault),
                (2, StatusFlag::Invalid),
                (3, StatusFlag::Invalid),
                (4, StatusFlag::Invalid),
                (5, StatusFlag::Questionable),
                (6, StatusFlag::Questionable),
                (7, StatusFlag::Questionable),
                (8, StatusFlag::Questionable),
                (9, StatusFlag::Invalid),
                (10, StatusFlag::SensorFault),
                (11, StatusFlag::Questionable),
            ];
            for (n, flag) in map {
                if bit(raw, n) {
                    push_flag(&mut out, flag);
                }
            }
        }
        if let Some((_, _, t, l)) = self.concentration {
            if t == SampleType::ControlSolution || l == SampleLocation::ControlSolution {
                push_flag(&mut out, StatusFlag::TestData);
            }
        }
        out
    }

    /// The readings (see the module doc).
    pub fn to_readings(&self, ctx: &FrameContext) -> Vec<Reading> {
        let common = Common {
            device_time: self.time,
            status: self.flags(),
            sequence: Some(u64::from(self.sequence)),
            ..Common::default()
        };
        match self.concentration {
            Some((value, unit, sample_type, location)) => {
                let molar = unit == ConcentrationUnit::MolePerLitre;
                let mut out = vec![common.quantity(
                    ctx,
                    sample_type.metric(molar),
                    unit.transcode(value),
                    unit.reported_ucum(),
                )];
                if let Some((code, display)) = location.code() {
                    out.push(common.reading(
                        ctx,
                        catalog::GLUCOSE_SAMPLE_LOCATION,
                        coded(code, display),
                    ));
                }
                out
            }
            None => vec![common.quantity(
                ctx,
                catalog::GLUCOSE_GENERIC,
                Measured::Absent(AbsentReason::Error),
                self.unit.reported_ucum(),
            )],
        }
    }
}

fn coded(code: u32, display: &str) -> Value {
    Value::Coded {
        system: MDC_SYSTEM.to_owned(),
        code: code.to_string(),
        display: Some(display.to_owned()),
    }
}

/// Coded context values: MDC term codes in partition 128 and their reference ids.
fn dm_coded(term: u32, display: &'static str) -> Value {
    coded(catalog::PHD_DM_PARTITION * 65536 + term, display)
}

/// A decoded Glucose Measurement Context. Codes are kept as sent (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlucoseContext {
    /// Sequence number of the measurement this context belongs to.
    pub sequence: u16,
    /// Carbohydrate ID (1–7) and amount in kg.
    pub carbohydrate: Option<(u8, Measured)>,
    /// Meal code (1–5).
    pub meal: Option<u8>,
    /// Tester (1–3, 15) and health (1–5, 15) codes.
    pub tester_health: Option<(u8, u8)>,
    /// Exercise duration in seconds (0xFFFF = overrun) and intensity in percent.
    pub exercise: Option<(u16, u8)>,
    /// Medication ID (1–5), amount, and whether it is in litres (else kilograms).
    pub medication: Option<(u8, Measured, bool)>,
    /// HbA1c, percent.
    pub hba1c: Option<Measured>,
}

impl GlucoseContext {
    /// Parses a characteristic value.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let flags = u32::from(r.u8("flags")?);
        let sequence = r.u16("sequence number")?;
        if bit(flags, 7) {
            let _extended = r.u8("extended flags")?;
        }
        let reserved = |field, offset, value: u8| DecodeError::Reserved {
            field,
            offset,
            value: u32::from(value),
        };
        let carbohydrate = if bit(flags, 0) {
            let offset = r.position();
            let id = r.u8("carbohydrate id")?;
            if !(1..=7).contains(&id) {
                return Err(reserved("carbohydrate id", offset, id));
            }
            Some((id, r.sfloat("carbohydrate")?))
        } else {
            None
        };
        let meal = if bit(flags, 1) {
            let offset = r.position();
            let meal = r.u8("meal")?;
            if !(1..=5).contains(&meal) {
                return Err(reserved("meal", offset, meal));
            }
            Some(meal)
        } else {
            None
        };
        let tester_health = if bit(flags, 2) {
            let offset = r.position();
            let raw = r.u8("tester-health")?;
            let (tester, health) = (raw & 0x0F, raw >> 4);
            if !matches!(tester, 1..=3 | 15) {
                return Err(reserved("tester", offset, tester));
            }
            if !matches!(health, 1..=5 | 15) {
                return Err(reserved("health", offset, health));
            }
            Some((tester, health))
        } else {
            None
        };
        let exercise = if bit(flags, 3) {
            let duration = r.u16("exercise duration")?;
            Some((duration, r.u8("exercise intensity")?))
        } else {
            None
        };
        let medication = if bit(flags, 4) {
            let offset = r.position();
            let id = r.u8("medication id")?;
            if !(1..=5).contains(&id) {
                return Err(reserved("medication id", offset, id));
            }
            Some((id, r.sfloat("medication")?, bit(flags, 5)))
        } else {
            None
        };
        let hba1c = if bit(flags, 6) {
            Some(r.sfloat("hba1c")?)
        } else {
            None
        };
        Ok(Self {
            sequence,
            carbohydrate,
            meal,
            tester_health,
            exercise,
            medication,
            hba1c,
        })
    }

    /// The readings (see the module doc); all with `sequence` = the context's sequence
    /// number and no device time until [`attach_context`] supplies it.
    pub fn to_readings(&self, ctx: &FrameContext) -> Vec<Reading> {
        use catalog as c;
        let common = Common {
            sequence: Some(u64::from(self.sequence)),
            ..Common::default()
        };
        let mut out = Vec::new();
        if let Some((id, amount)) = self.carbohydrate {
            let metric = match id {
                1 => c::GLUCOSE_CARB_BREAKFAST,
                2 => c::GLUCOSE_CARB_LUNCH,
                3 => c::GLUCOSE_CARB_DINNER,
                4 => c::GLUCOSE_CARB_SNACK,
                5 => c::GLUCOSE_CARB_DRINK,
                6 => c::GLUCOSE_CARB_SUPPER,
                _ => c::GLUCOSE_CARB_BRUNCH,
            };
            out.push(common.quantity(ctx, metric, amount, "kg"));
        }
        if let Some(meal) = self.meal {
            let value = match meal {
                1 => dm_coded(29260, "MDC_CTXT_GLU_MEAL_PREPRANDIAL"),
                2 => dm_coded(29264, "MDC_CTXT_GLU_MEAL_POSTPRANDIAL"),
                3 => dm_coded(29268, "MDC_CTXT_GLU_MEAL_FASTING"),
                4 => dm_coded(29272, "MDC_CTXT_GLU_MEAL_CASUAL"),
                _ => dm_coded(29261, "MDC_CTXT_GLU_MEAL_BEDTIME"),
            };
            out.push(common.reading(ctx, c::GLUCOSE_MEAL_CONTEXT, value));
        }
        if let Some((tester, health)) = self.tester_health {
            let tester = match tester {
                1 => Some(dm_coded(29280, "MDC_CTXT_GLU_TESTER_SELF")),
                2 => Some(dm_coded(29284, "MDC_CTXT_GLU_TESTER_HCP")),
                3 => Some(dm_coded(29288, "MDC_CTXT_GLU_TESTER_LAB")),
                _ => None,
            };
            if let Some(value) = tester {
                out.push(common.reading(ctx, c::GLUCOSE_TESTER, value));
            }
            let health = match health {
                1 => Some(dm_coded(29216, "MDC_CTXT_GLU_HEALTH_MINOR")),
                2 => Some(dm_coded(29220, "MDC_CTXT_GLU_HEALTH_MAJOR")),
                3 => Some(dm_coded(29224, "MDC_CTXT_GLU_HEALTH_MENSES")),
                4 => Some(dm_coded(29228, "MDC_CTXT_GLU_HEALTH_STRESS")),
                5 => Some(dm_coded(29232, "MDC_CTXT_GLU_HEALTH_NONE")),
                _ => None,
            };
            if let Some(value) = health {
                out.push(common.reading(ctx, c::GLUCOSE_HEALTH, value));
            }
        }
        if let Some((duration, intensity)) = self.exercise {
            let mut exercise = common.quantity(
                ctx,
                c::GLUCOSE_EXERCISE,
                Measured::Value(Decimal::integer(i64::from(intensity))),
                "%",
            );
            exercise.duration =
                (duration != 0xFFFF).then(|| Duration::seconds(i64::from(duration)));
            out.push(exercise);
        }
        if let Some((id, amount, litres)) = self.medication {
            let metric = match id {
                1 => c::MEDICATION_RAPID_ACTING,
                2 => c::MEDICATION_SHORT_ACTING,
                3 => c::MEDICATION_INTERMEDIATE_ACTING,
                4 => c::MEDICATION_LONG_ACTING,
                _ => c::MEDICATION_PREMIX,
            };
            out.push(common.quantity(ctx, metric, amount, if litres { "L" } else { "kg" }));
        }
        if let Some(hba1c) = self.hba1c {
            out.push(common.quantity(ctx, c::HBA1C, hba1c, "%"));
        }
        out
    }
}

/// Gives context readings the device time and user of the measurement they describe: for
/// each reading in `context` without a device time, the first reading in `measurements`
/// from the same device with the same sequence number lends its `device_time` and
/// `device_user`. Returns how many context readings were matched.
pub fn attach_context(measurements: &[Reading], context: &mut [Reading]) -> usize {
    let mut matched = 0;
    for c in context.iter_mut().filter(|c| c.device_time.is_none()) {
        let Some(seq) = c.sequence else { continue };
        if let Some(m) = measurements
            .iter()
            .find(|m| m.sequence == Some(seq) && m.device == c.device)
        {
            c.device_time = m.device_time;
            c.device_user = c.device_user.or(m.device_user);
            matched += 1;
        }
    }
    matched
}
