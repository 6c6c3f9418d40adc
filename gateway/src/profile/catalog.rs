//! The metric catalog: every metric the gateway knows, with its IEEE 11073-10101 (MDC)
//! code, LOINC code, display and canonical UCUM unit.
//!
//! MDC codes are the 32-bit form used by the PHD IG: partition × 2^16 + term code
//! (SCADA partition 2, so e.g. MDC_PULS_OXIM_SAT_O2 = 2 × 65536 + 19384 = 150456).
//! LOINC codes are the ones the FHIR vital-signs profiles require where a profile exists.
//!
//! Sources and profiles look metrics up here by MDC code, LOINC code or short name, so a
//! metric is spelled once.

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
    119,
    "MDC_ENERGY_EXPENDED",
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

/// The short name of a metric, if it has one (used by the CLI and the simulator).
pub fn short_name(metric: &Metric) -> Option<&'static str> {
    SHORT_NAMES
        .iter()
        .find(|(_, m)| m.mdc == metric.mdc && m.loinc == metric.loinc)
        .map(|(n, _)| *n)
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
