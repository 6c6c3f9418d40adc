//! The metric catalog: every metric the gateway knows, with its IEEE 11073-10101 (MDC)
//! code, LOINC code, display and canonical UCUM unit.
//!
//! MDC codes are the 32-bit form used by the PHD IG: partition × 2^16 + term code
//! (SCADA partition 2, so e.g. MDC_PULS_OXIM_SAT_O2 = 2 × 65536 + 19384 = 150456).
//! LOINC codes are the ones the FHIR vital-signs profiles require where a profile exists.
//!
//! Sources and profiles look metrics up here by MDC code, LOINC code or short name, so a
//! metric is spelled once.
//!
//! Term codes were checked against IEEE 11073-10101 as reproduced in the HL7 PHD IG examples
//! (MDC_TEMP_*, MDC_CTXT_GLU_MEAL) and in independent 11073 nomenclature tables of public PHD
//! implementations. Partitions: 2 SCADA (vital signs, glucose, body composition), 128
//! PHD disease management (glucose context, `MDC_CTXT_*`), 129 PHD health and fitness
//! (`MDC_HF_*`). Entries marked "not in 11073-10101" below come from a single public
//! implementation and could not be checked against the standard itself.
//!
//! Some entries share an MDC code with another and differ in LOINC code or in meaning (the
//! molar variants of the glucose metrics, the fast/slow pulse-oximetry responses, cuff
//! pressure); they are constants but are kept out of [`ALL`] so that [`by_mdc`] stays
//! unambiguous.

use crate::model::Metric;

macro_rules! metric {
    ($name:ident, $mdc:expr, $mdc_ref:expr, $loinc:expr, $display:expr, $unit:expr, $vs:expr) => {
        #[doc = $display]
        pub const $name: Metric = Metric {
            mdc: $mdc,
            mdc_ref: $mdc_ref,
            loinc: $loinc,
            display: $display,
            unit: $unit,
            vital_sign_profile: $vs,
        };
    };
}

metric!(
    BLOOD_PRESSURE,
    150020,
    "MDC_PRESS_BLD_NONINV",
    Some("85354-9"),
    "Blood pressure panel with all children optional",
    "mm[Hg]",
    Some("bp")
);
metric!(
    SYSTOLIC,
    150021,
    "MDC_PRESS_BLD_NONINV_SYS",
    Some("8480-6"),
    "Systolic blood pressure",
    "mm[Hg]",
    None
);
metric!(
    DIASTOLIC,
    150022,
    "MDC_PRESS_BLD_NONINV_DIA",
    Some("8462-4"),
    "Diastolic blood pressure",
    "mm[Hg]",
    None
);
metric!(
    MEAN_ARTERIAL,
    150023,
    "MDC_PRESS_BLD_NONINV_MEAN",
    Some("8478-0"),
    "Mean blood pressure",
    "mm[Hg]",
    None
);
metric!(
    CUFF_PRESSURE,
    150020,
    "MDC_PRESS_BLD_NONINV",
    None,
    "Intermediate cuff pressure",
    "mm[Hg]",
    None
);
metric!(
    PULSE_RATE_NONINV,
    149546,
    "MDC_PULS_RATE_NON_INV",
    Some("8867-4"),
    "Heart rate",
    "/min",
    Some("heartrate")
);
metric!(
    SPO2,
    150456,
    "MDC_PULS_OXIM_SAT_O2",
    Some("2708-6"),
    "Oxygen saturation in Arterial blood",
    "%",
    Some("oxygensat")
);
metric!(
    PULSE_RATE_OXIM,
    149530,
    "MDC_PULS_OXIM_PULS_RATE",
    Some("8867-4"),
    "Heart rate",
    "/min",
    Some("heartrate")
);
metric!(
    HEART_RATE,
    147842,
    "MDC_ECG_HEART_RATE",
    Some("8867-4"),
    "Heart rate",
    "/min",
    Some("heartrate")
);
metric!(
    RR_INTERVAL,
    147240,
    "MDC_ECG_TIME_PD_RR_GL",
    None,
    "R-R interval",
    "ms",
    None
);
metric!(
    ENERGY_EXPENDED,
    8454263,
    "MDC_HF_ENERGY",
    None,
    "Energy expended",
    "kJ",
    None
);
metric!(
    BODY_TEMPERATURE,
    150364,
    "MDC_TEMP_BODY",
    Some("8310-5"),
    "Body temperature",
    "Cel",
    Some("bodytemp")
);
metric!(
    BODY_WEIGHT,
    188736,
    "MDC_MASS_BODY_ACTUAL",
    Some("29463-7"),
    "Body weight",
    "kg",
    Some("bodyweight")
);
metric!(
    BODY_HEIGHT,
    188740,
    "MDC_LEN_BODY_ACTUAL",
    Some("8302-2"),
    "Body height",
    "cm",
    Some("bodyheight")
);
metric!(
    BMI,
    188752,
    "MDC_RATIO_MASS_BODY_LEN_SQ",
    Some("39156-5"),
    "Body mass index (BMI) [Ratio]",
    "kg/m2",
    Some("bmi")
);
metric!(
    BODY_FAT,
    188748,
    "MDC_BODY_FAT",
    Some("41982-0"),
    "Percentage of body fat Measured",
    "%",
    None
);
metric!(
    RESPIRATORY_RATE,
    151562,
    "MDC_RESP_RATE",
    Some("9279-1"),
    "Respiratory rate",
    "/min",
    Some("resprate")
);
metric!(
    GLUCOSE_CAPILLARY_WHOLEBLOOD,
    160184,
    "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD",
    Some("41653-7"),
    "Glucose [Mass/volume] in Capillary blood by Glucometer",
    "mg/dL",
    None
);
metric!(
    GLUCOSE_CAPILLARY_PLASMA,
    160188,
    "MDC_CONC_GLU_CAPILLARY_PLASMA",
    Some("41653-7"),
    "Glucose [Mass/volume] in Capillary blood by Glucometer",
    "mg/dL",
    None
);

/// IEEE 11073-10101 partition of personal-health disease-management codes (glucose context).
pub const PHD_DM_PARTITION: u32 = 128;

// Body temperature by site (IEEE 11073-10408). All carry LOINC 8310-5, the code the FHIR
// body-temperature vital-signs profile requires; the MDC code says where it was measured.
metric!(
    TEMP_AXILLA,
    188452,
    "MDC_TEMP_AXILLA",
    Some("8310-5"),
    "Body temperature (armpit)",
    "Cel",
    Some("bodytemp")
);
metric!(
    TEMP_EAR,
    188428,
    "MDC_TEMP_EAR",
    Some("8310-5"),
    "Body temperature (ear)",
    "Cel",
    Some("bodytemp")
);
metric!(
    TEMP_FINGER,
    188432,
    "MDC_TEMP_FINGER",
    Some("8310-5"),
    "Body temperature (finger)",
    "Cel",
    Some("bodytemp")
);
metric!(
    TEMP_GIT,
    188456,
    "MDC_TEMP_GIT",
    Some("8310-5"),
    "Body temperature (gastro-intestinal tract)",
    "Cel",
    Some("bodytemp")
);
metric!(
    TEMP_ORAL,
    188424,
    "MDC_TEMP_ORAL",
    Some("8310-5"),
    "Body temperature (oral)",
    "Cel",
    Some("bodytemp")
);
metric!(
    TEMP_RECT,
    188420,
    "MDC_TEMP_RECT",
    Some("8310-5"),
    "Body temperature (rectal)",
    "Cel",
    Some("bodytemp")
);
metric!(
    TEMP_TOE,
    188448,
    "MDC_TEMP_TOE",
    Some("8310-5"),
    "Body temperature (toe)",
    "Cel",
    Some("bodytemp")
);
metric!(
    TEMP_TYMP,
    150392,
    "MDC_TEMP_TYMP",
    Some("8310-5"),
    "Body temperature (tympanic)",
    "Cel",
    Some("bodytemp")
);

// Pulse oximetry (IEEE 11073-10404).
metric!(
    PULSE_AMPLITUDE_INDEX,
    150448,
    "MDC_PULS_OXIM_PERF_REL",
    None,
    "Pulse amplitude index (relative perfusion)",
    "%",
    None
);
metric!(
    SPO2_FAST,
    150456,
    "MDC_PULS_OXIM_SAT_O2",
    Some("2708-6"),
    "Oxygen saturation in Arterial blood (fast response)",
    "%",
    Some("oxygensat")
);
metric!(
    SPO2_SLOW,
    150456,
    "MDC_PULS_OXIM_SAT_O2",
    Some("2708-6"),
    "Oxygen saturation in Arterial blood (slow response)",
    "%",
    Some("oxygensat")
);
metric!(
    PULSE_RATE_OXIM_FAST,
    149530,
    "MDC_PULS_OXIM_PULS_RATE",
    Some("8867-4"),
    "Heart rate (pulse oximeter, fast response)",
    "/min",
    Some("heartrate")
);
metric!(
    PULSE_RATE_OXIM_SLOW,
    149530,
    "MDC_PULS_OXIM_PULS_RATE",
    Some("8867-4"),
    "Heart rate (pulse oximeter, slow response)",
    "/min",
    Some("heartrate")
);

// Glucose by sample type (IEEE 11073-10417). LOINC codes only where LOINC maps them: the
// glucometer codes for capillary blood (mass 41653-7, molar 14743-9) and serum/plasma
// 2345-7 (mass), which LOINC's own IEEE mapping gives for venous and undetermined plasma.
metric!(
    GLUCOSE_CAPILLARY_WHOLEBLOOD_MOLAR,
    160184,
    "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD",
    Some("14743-9"),
    "Glucose [Moles/volume] in Capillary blood by Glucometer",
    "mmol/L",
    None
);
metric!(
    GLUCOSE_CAPILLARY_PLASMA_MOLAR,
    160188,
    "MDC_CONC_GLU_CAPILLARY_PLASMA",
    Some("14743-9"),
    "Glucose [Moles/volume] in Capillary blood by Glucometer",
    "mmol/L",
    None
);
metric!(
    GLUCOSE_VENOUS_WHOLEBLOOD,
    160192,
    "MDC_CONC_GLU_VENOUS_WHOLEBLOOD",
    None,
    "Glucose in venous whole blood",
    "mg/dL",
    None
);
metric!(
    GLUCOSE_VENOUS_PLASMA,
    160196,
    "MDC_CONC_GLU_VENOUS_PLASMA",
    Some("2345-7"),
    "Glucose [Mass/volume] in Serum or Plasma",
    "mg/dL",
    None
);
metric!(
    GLUCOSE_VENOUS_PLASMA_MOLAR,
    160196,
    "MDC_CONC_GLU_VENOUS_PLASMA",
    None,
    "Glucose in venous plasma",
    "mmol/L",
    None
);
metric!(
    GLUCOSE_ARTERIAL_WHOLEBLOOD,
    160200,
    "MDC_CONC_GLU_ARTERIAL_WHOLEBLOOD",
    None,
    "Glucose in arterial whole blood",
    "mg/dL",
    None
);
metric!(
    GLUCOSE_ARTERIAL_PLASMA,
    160204,
    "MDC_CONC_GLU_ARTERIAL_PLASMA",
    None,
    "Glucose in arterial plasma",
    "mg/dL",
    None
);
metric!(
    GLUCOSE_CONTROL,
    160208,
    "MDC_CONC_GLU_CONTROL",
    None,
    "Glucose in control solution",
    "mg/dL",
    None
);
metric!(
    GLUCOSE_ISF,
    160212,
    "MDC_CONC_GLU_ISF",
    None,
    "Glucose in interstitial fluid",
    "mg/dL",
    None
);
metric!(
    GLUCOSE_UNDETERMINED_WHOLEBLOOD,
    160364,
    "MDC_CONC_GLU_UNDETERMINED_WHOLEBLOOD",
    None,
    "Glucose in whole blood, sample source undetermined",
    "mg/dL",
    None
);
metric!(
    GLUCOSE_UNDETERMINED_PLASMA,
    160368,
    "MDC_CONC_GLU_UNDETERMINED_PLASMA",
    Some("2345-7"),
    "Glucose [Mass/volume] in Serum or Plasma",
    "mg/dL",
    None
);
metric!(
    GLUCOSE_UNDETERMINED_PLASMA_MOLAR,
    160368,
    "MDC_CONC_GLU_UNDETERMINED_PLASMA",
    None,
    "Glucose in plasma, sample source undetermined",
    "mmol/L",
    None
);
metric!(
    GLUCOSE_GENERIC,
    160020,
    "MDC_CONC_GLU_GEN",
    None,
    "Glucose (sample type not reported)",
    "mg/dL",
    None
);
metric!(
    HBA1C,
    160220,
    "MDC_CONC_HBA1C",
    Some("4548-4"),
    "Hemoglobin A1c/Hemoglobin.total in Blood",
    "%",
    None
);

// Glucose context (IEEE 11073-10417, partition 128 = PHD disease management).
metric!(
    GLUCOSE_SAMPLE_LOCATION,
    8417844,
    "MDC_CTXT_GLU_SAMPLELOCATION",
    None,
    "Glucose sample location",
    "1",
    None
);
metric!(
    GLUCOSE_MEAL_CONTEXT,
    8417864,
    "MDC_CTXT_GLU_MEAL",
    None,
    "Glucose meal context",
    "1",
    None
);
metric!(
    GLUCOSE_TESTER,
    8417884,
    "MDC_CTXT_GLU_TESTER",
    None,
    "Glucose tester",
    "1",
    None
);
metric!(
    GLUCOSE_HEALTH,
    8417820,
    "MDC_CTXT_GLU_HEALTH",
    None,
    "Health context of a glucose measurement",
    "1",
    None
);
metric!(
    GLUCOSE_EXERCISE,
    8417760,
    "MDC_CTXT_GLU_EXERCISE",
    None,
    "Exercise before a glucose measurement (intensity)",
    "%",
    None
);
metric!(
    GLUCOSE_CARB_BREAKFAST,
    8417768,
    "MDC_CTXT_GLU_CARB_BREAKFAST",
    None,
    "Carbohydrate intake, breakfast",
    "g",
    None
);
metric!(
    GLUCOSE_CARB_LUNCH,
    8417772,
    "MDC_CTXT_GLU_CARB_LUNCH",
    None,
    "Carbohydrate intake, lunch",
    "g",
    None
);
metric!(
    GLUCOSE_CARB_DINNER,
    8417776,
    "MDC_CTXT_GLU_CARB_DINNER",
    None,
    "Carbohydrate intake, dinner",
    "g",
    None
);
metric!(
    GLUCOSE_CARB_SNACK,
    8417780,
    "MDC_CTXT_GLU_CARB_SNACK",
    None,
    "Carbohydrate intake, snack",
    "g",
    None
);
metric!(
    GLUCOSE_CARB_DRINK,
    8417784,
    "MDC_CTXT_GLU_CARB_DRINK",
    None,
    "Carbohydrate intake, drink",
    "g",
    None
);
metric!(
    GLUCOSE_CARB_SUPPER,
    8417788,
    "MDC_CTXT_GLU_CARB_SUPPER",
    None,
    "Carbohydrate intake, supper",
    "g",
    None
);
metric!(
    GLUCOSE_CARB_BRUNCH,
    8417792,
    "MDC_CTXT_GLU_CARB_BRUNCH",
    None,
    "Carbohydrate intake, brunch",
    "g",
    None
);
metric!(
    MEDICATION_RAPID_ACTING,
    8417800,
    "MDC_CTXT_MEDICATION_RAPIDACTING",
    None,
    "Rapid acting insulin",
    "mg",
    None
);
metric!(
    MEDICATION_SHORT_ACTING,
    8417804,
    "MDC_CTXT_MEDICATION_SHORTACTING",
    None,
    "Short acting insulin",
    "mg",
    None
);
metric!(
    MEDICATION_INTERMEDIATE_ACTING,
    8417808,
    "MDC_CTXT_MEDICATION_INTERMEDIATEACTING",
    None,
    "Intermediate acting insulin",
    "mg",
    None
);
metric!(
    MEDICATION_LONG_ACTING,
    8417812,
    "MDC_CTXT_MEDICATION_LONGACTING",
    None,
    "Long acting insulin",
    "mg",
    None
);
metric!(
    MEDICATION_PREMIX,
    8417816,
    "MDC_CTXT_MEDICATION_PREMIX",
    None,
    "Pre-mixed insulin",
    "mg",
    None
);

// Body composition (IEEE 11073-10420 for fat-free mass, soft lean mass and body water; the
// others are not in 11073-10101 as published and come from the Bluetooth PHD transcoding
// practice of public implementations: unverified against the standard).
metric!(
    FAT_FREE_MASS,
    188756,
    "MDC_MASS_BODY_FAT_FREE",
    None,
    "Fat free mass",
    "kg",
    None
);
metric!(
    SOFT_LEAN_MASS,
    188760,
    "MDC_MASS_BODY_SOFT_LEAN",
    None,
    "Soft lean mass",
    "kg",
    None
);
metric!(
    BODY_WATER_MASS,
    188764,
    "MDC_BODY_WATER",
    None,
    "Body water mass",
    "kg",
    None
);
metric!(
    BASAL_METABOLISM,
    188768,
    "MDC_BASAL_METABOLISM",
    None,
    "Basal metabolism (not in 11073-10101)",
    "kJ",
    None
);
metric!(
    MUSCLE_PERCENTAGE,
    188772,
    "MDC_BODY_MUSCLE",
    None,
    "Muscle percentage (not in 11073-10101)",
    "%",
    None
);
metric!(
    MUSCLE_MASS,
    188776,
    "MDC_MASS_BODY_MUSCLE",
    None,
    "Muscle mass (not in 11073-10101)",
    "kg",
    None
);
metric!(
    IMPEDANCE,
    188780,
    "MDC_BODY_ELECTRICAL_IMPEDANCE",
    None,
    "Body electrical impedance (not in 11073-10101)",
    "Ohm",
    None
);

// Bedside monitors and pumps (IHE PCD-01 over HL7 v2). Invasive pressures are reported as
// systolic / diastolic / mean of one channel and combined into a panel like the cuff's; the
// codes are those of the IEEE 11073-10101 SCADA partition as vendor PCD-01 interface
// specifications print them (e.g. GE's B40 HL7 guide for MDC_PRESS_BLD_ART_*).
metric!(
    PRESS_BLD_ART,
    150032,
    "MDC_PRESS_BLD_ART",
    Some("85354-9"),
    "Arterial blood pressure (invasive)",
    "mm[Hg]",
    Some("bp")
);
metric!(
    PRESS_BLD_ART_SYS,
    150033,
    "MDC_PRESS_BLD_ART_SYS",
    Some("8480-6"),
    "Systolic blood pressure (arterial, invasive)",
    "mm[Hg]",
    None
);
metric!(
    PRESS_BLD_ART_DIA,
    150034,
    "MDC_PRESS_BLD_ART_DIA",
    Some("8462-4"),
    "Diastolic blood pressure (arterial, invasive)",
    "mm[Hg]",
    None
);
metric!(
    PRESS_BLD_ART_MEAN,
    150035,
    "MDC_PRESS_BLD_ART_MEAN",
    Some("8478-0"),
    "Mean blood pressure (arterial, invasive)",
    "mm[Hg]",
    None
);
metric!(
    PRESS_BLD_ART_ABP,
    150036,
    "MDC_PRESS_BLD_ART_ABP",
    Some("85354-9"),
    "Arterial blood pressure, ABP label (invasive)",
    "mm[Hg]",
    Some("bp")
);
metric!(
    PRESS_BLD_ART_ABP_SYS,
    150037,
    "MDC_PRESS_BLD_ART_ABP_SYS",
    Some("8480-6"),
    "Systolic blood pressure (ABP, invasive)",
    "mm[Hg]",
    None
);
metric!(
    PRESS_BLD_ART_ABP_DIA,
    150038,
    "MDC_PRESS_BLD_ART_ABP_DIA",
    Some("8462-4"),
    "Diastolic blood pressure (ABP, invasive)",
    "mm[Hg]",
    None
);
metric!(
    PRESS_BLD_ART_ABP_MEAN,
    150039,
    "MDC_PRESS_BLD_ART_ABP_MEAN",
    Some("8478-0"),
    "Mean blood pressure (ABP, invasive)",
    "mm[Hg]",
    None
);
metric!(
    PRESS_BLD_ART_PULM,
    150044,
    "MDC_PRESS_BLD_ART_PULM",
    None,
    "Pulmonary artery pressure",
    "mm[Hg]",
    None
);
metric!(
    PRESS_BLD_ART_PULM_SYS,
    150045,
    "MDC_PRESS_BLD_ART_PULM_SYS",
    None,
    "Pulmonary artery pressure, systolic",
    "mm[Hg]",
    None
);
metric!(
    PRESS_BLD_ART_PULM_DIA,
    150046,
    "MDC_PRESS_BLD_ART_PULM_DIA",
    None,
    "Pulmonary artery pressure, diastolic",
    "mm[Hg]",
    None
);
metric!(
    PRESS_BLD_ART_PULM_MEAN,
    150047,
    "MDC_PRESS_BLD_ART_PULM_MEAN",
    None,
    "Pulmonary artery pressure, mean",
    "mm[Hg]",
    None
);
metric!(
    PULSE_RATE_INV,
    149522,
    "MDC_BLD_PULS_RATE_INV",
    Some("8867-4"),
    "Heart rate (from invasive pressure)",
    "/min",
    Some("heartrate")
);
metric!(
    PVC_RATE,
    148066,
    "MDC_ECG_V_P_C_RATE",
    None,
    "Premature ventricular contractions rate",
    "/min",
    None
);
metric!(
    TEMP_GENERIC,
    150344,
    "MDC_TEMP",
    Some("8310-5"),
    "Body temperature",
    "Cel",
    Some("bodytemp")
);
metric!(
    CO2_END_TIDAL,
    151708,
    "MDC_AWAY_CO2_ET",
    None,
    "End-tidal carbon dioxide",
    "mm[Hg]",
    None
);
metric!(
    FLOW_FLUID_PUMP,
    157784,
    "MDC_FLOW_FLUID_PUMP",
    None,
    "Infusion pump flow rate",
    "mL/h",
    None
);

/// Every metric in the catalog, for lookups.
pub const ALL: &[Metric] = &[
    BLOOD_PRESSURE,
    SYSTOLIC,
    DIASTOLIC,
    MEAN_ARTERIAL,
    PULSE_RATE_NONINV,
    SPO2,
    PULSE_RATE_OXIM,
    HEART_RATE,
    RR_INTERVAL,
    ENERGY_EXPENDED,
    BODY_TEMPERATURE,
    BODY_WEIGHT,
    BODY_HEIGHT,
    BMI,
    BODY_FAT,
    RESPIRATORY_RATE,
    GLUCOSE_CAPILLARY_WHOLEBLOOD,
    GLUCOSE_CAPILLARY_PLASMA,
    TEMP_AXILLA,
    TEMP_EAR,
    TEMP_FINGER,
    TEMP_GIT,
    TEMP_ORAL,
    TEMP_RECT,
    TEMP_TOE,
    TEMP_TYMP,
    PULSE_AMPLITUDE_INDEX,
    GLUCOSE_VENOUS_WHOLEBLOOD,
    GLUCOSE_VENOUS_PLASMA,
    GLUCOSE_ARTERIAL_WHOLEBLOOD,
    GLUCOSE_ARTERIAL_PLASMA,
    GLUCOSE_CONTROL,
    GLUCOSE_ISF,
    GLUCOSE_UNDETERMINED_WHOLEBLOOD,
    GLUCOSE_UNDETERMINED_PLASMA,
    GLUCOSE_GENERIC,
    HBA1C,
    GLUCOSE_SAMPLE_LOCATION,
    GLUCOSE_MEAL_CONTEXT,
    GLUCOSE_TESTER,
    GLUCOSE_HEALTH,
    GLUCOSE_EXERCISE,
    GLUCOSE_CARB_BREAKFAST,
    GLUCOSE_CARB_LUNCH,
    GLUCOSE_CARB_DINNER,
    GLUCOSE_CARB_SNACK,
    GLUCOSE_CARB_DRINK,
    GLUCOSE_CARB_SUPPER,
    GLUCOSE_CARB_BRUNCH,
    MEDICATION_RAPID_ACTING,
    MEDICATION_SHORT_ACTING,
    MEDICATION_INTERMEDIATE_ACTING,
    MEDICATION_LONG_ACTING,
    MEDICATION_PREMIX,
    FAT_FREE_MASS,
    SOFT_LEAN_MASS,
    BODY_WATER_MASS,
    BASAL_METABOLISM,
    MUSCLE_PERCENTAGE,
    MUSCLE_MASS,
    IMPEDANCE,
    PRESS_BLD_ART,
    PRESS_BLD_ART_SYS,
    PRESS_BLD_ART_DIA,
    PRESS_BLD_ART_MEAN,
    PRESS_BLD_ART_ABP,
    PRESS_BLD_ART_ABP_SYS,
    PRESS_BLD_ART_ABP_DIA,
    PRESS_BLD_ART_ABP_MEAN,
    PRESS_BLD_ART_PULM,
    PRESS_BLD_ART_PULM_SYS,
    PRESS_BLD_ART_PULM_DIA,
    PRESS_BLD_ART_PULM_MEAN,
    PULSE_RATE_INV,
    PVC_RATE,
    TEMP_GENERIC,
    CO2_END_TIDAL,
    FLOW_FLUID_PUMP,
];

/// The entries kept out of [`ALL`] because they share an MDC code with one in it (see the
/// module docs): the molar glucose metrics, the fast and slow pulse-oximetry responses,
/// cuff pressure.
pub const VARIANTS: &[Metric] = &[
    CUFF_PRESSURE,
    SPO2_FAST,
    SPO2_SLOW,
    PULSE_RATE_OXIM_FAST,
    PULSE_RATE_OXIM_SLOW,
    GLUCOSE_CAPILLARY_WHOLEBLOOD_MOLAR,
    GLUCOSE_CAPILLARY_PLASMA_MOLAR,
    GLUCOSE_VENOUS_PLASMA_MOLAR,
    GLUCOSE_UNDETERMINED_PLASMA_MOLAR,
];

/// Short names accepted in payloads and profiles, mapped to catalog entries.
const SHORT_NAMES: &[(&str, Metric)] = &[
    ("blood-pressure", BLOOD_PRESSURE),
    ("systolic", SYSTOLIC),
    ("diastolic", DIASTOLIC),
    ("mean-arterial-pressure", MEAN_ARTERIAL),
    ("pulse-rate", PULSE_RATE_NONINV),
    ("spo2", SPO2),
    ("oximeter-pulse-rate", PULSE_RATE_OXIM),
    ("heart-rate", HEART_RATE),
    ("rr-interval", RR_INTERVAL),
    ("energy-expended", ENERGY_EXPENDED),
    ("body-temperature", BODY_TEMPERATURE),
    ("body-weight", BODY_WEIGHT),
    ("body-height", BODY_HEIGHT),
    ("bmi", BMI),
    ("body-fat", BODY_FAT),
    ("respiratory-rate", RESPIRATORY_RATE),
    ("glucose", GLUCOSE_CAPILLARY_PLASMA),
];

/// Looks a metric up by short name (`spo2`), MDC code (`150456`), MDC reference id
/// (`MDC_PULS_OXIM_SAT_O2`) or LOINC code (`2708-6`). LOINC codes shared by several MDC
/// metrics (heart rate) resolve to the first listed.
pub fn lookup(key: &str) -> Option<Metric> {
    if let Some((_, m)) = SHORT_NAMES.iter().find(|(n, _)| *n == key) {
        return Some(m.clone());
    }
    if let Ok(code) = key.parse::<u32>() {
        return by_mdc(code);
    }
    ALL.iter()
        .find(|m| m.mdc_ref == key || m.loinc == Some(key))
        .cloned()
}

/// Looks a metric up by its MDC code.
pub fn by_mdc(code: u32) -> Option<Metric> {
    ALL.iter().find(|m| m.mdc == code).cloned()
}

/// Looks a metric up by its MDC code and the unit of its value: where the catalog has the
/// code in more than one unit (glucose by mass and by substance concentration), the entry
/// whose unit is commensurable with `unit`; else [`by_mdc`]'s.
pub fn by_mdc_for_unit(code: u32, unit: &str) -> Option<Metric> {
    let first = by_mdc(code)?;
    if super::units::commensurable(first.unit, unit) {
        return Some(first);
    }
    VARIANTS
        .iter()
        .find(|m| m.mdc == code && super::units::commensurable(m.unit, unit))
        .cloned()
        .or(Some(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mdc_codes_are_partition_times_65536_plus_term() {
        // SCADA partition 2; term codes from IEEE 11073-10101.
        assert_eq!(SPO2.mdc, 2 * 65536 + 19384);
        assert_eq!(BLOOD_PRESSURE.mdc, 2 * 65536 + 18948);
        assert_eq!(BODY_TEMPERATURE.mdc, 2 * 65536 + 19292);
        // PHD partitions: 128 disease management, 129 health and fitness.
        assert_eq!(GLUCOSE_MEAL_CONTEXT.mdc, 128 * 65536 + 29256);
        assert_eq!(ENERGY_EXPENDED.mdc, 129 * 65536 + 119);
        assert_eq!(TEMP_RECT.mdc, 2 * 65536 + 57348);
        assert_eq!(HBA1C.mdc, 2 * 65536 + 29148);
    }

    #[test]
    fn lookup_accepts_names_codes_and_loinc() {
        assert_eq!(lookup("spo2"), Some(SPO2));
        assert_eq!(lookup("150456"), Some(SPO2));
        assert_eq!(lookup("MDC_PULS_OXIM_SAT_O2"), Some(SPO2));
        assert_eq!(lookup("2708-6"), Some(SPO2));
        assert_eq!(lookup("85354-9"), Some(BLOOD_PRESSURE));
        assert_eq!(lookup("no-such-metric"), None);
    }

    #[test]
    fn every_catalog_entry_has_a_unique_mdc_or_is_a_known_alias() {
        for (i, a) in ALL.iter().enumerate() {
            for b in &ALL[i + 1..] {
                assert!(
                    a.mdc != b.mdc,
                    "{} and {} share MDC {}",
                    a.mdc_ref,
                    b.mdc_ref,
                    a.mdc
                );
            }
        }
    }
}
