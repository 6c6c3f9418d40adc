//! IEEE 11073-10101 dimension codes (partition 4, `MDC_DIM_*`) and the UCUM codes they mean.
//!
//! The 32-bit code is 4 × 65536 + the term code, as PCD-01 OBX-6 carries it
//! (`262688^MDC_DIM_PERCENT^MDC`). Only units listed here are translated; any other unit is
//! not guessed at (the PCD-01 mapping keeps such an observation as a dead letter, with the
//! unit's text in the reason).

use crate::model::Metric;

/// `(MDC code, MDC reference id, UCUM code)`.
const UNITS: &[(u32, &str, &str)] = &[
    (262656, "MDC_DIM_DIMLESS", "1"),
    (262688, "MDC_DIM_PERCENT", "%"),
    (263441, "MDC_DIM_CENTI_M", "cm"),
    (263762, "MDC_DIM_MILLI_L", "mL"),
    (263872, "MDC_DIM_X_G", "g"),
    (263875, "MDC_DIM_KILO_G", "kg"),
    (264274, "MDC_DIM_MILLI_G_PER_DL", "mg/dL"),
    (264338, "MDC_DIM_MILLI_SEC", "ms"),
    (264864, "MDC_DIM_BEAT_PER_MIN", "/min"),
    (264928, "MDC_DIM_RESP_PER_MIN", "/min"),
    (265216, "MDC_DIM_X_L_PER_MIN", "L/min"),
    (265266, "MDC_DIM_MILLI_L_PER_HR", "mL/h"),
    (265987, "MDC_DIM_KILO_PASCAL", "kPa"),
    (266016, "MDC_DIM_MMHG", "mm[Hg]"),
    (266048, "MDC_DIM_CM_H2O", "cm[H2O]"),
    (266560, "MDC_DIM_FAHR", "[degF]"),
    (266866, "MDC_DIM_MILLI_MOLE_PER_L", "mmol/L"),
    (268192, "MDC_DIM_DEGC", "Cel"),
];

/// The UCUM code of an MDC unit, by its numeric code or, when the code is empty, its
/// reference id.
pub fn ucum_of_mdc(code: &str, reference: &str) -> Option<&'static str> {
    let by_code = code
        .parse::<u32>()
        .ok()
        .and_then(|c| UNITS.iter().find(|(n, _, _)| *n == c));
    let found = match by_code {
        Some(u) => Some(u),
        None if code.is_empty() => UNITS.iter().find(|(_, r, _)| *r == reference),
        None => None,
    };
    found.map(|(_, _, ucum)| *ucum)
}

/// The MDC unit (code, reference id) for a UCUM code, for `metric` (`/min` is breaths for
/// respiration rates, beats otherwise).
pub fn mdc_of_ucum(ucum: &str, metric: &Metric) -> Option<(u32, &'static str)> {
    let breaths = metric.mdc_ref.contains("RESP_RATE");
    UNITS
        .iter()
        .filter(|(_, _, u)| *u == ucum)
        .find(|(_, r, _)| ucum != "/min" || (r.contains("RESP") == breaths))
        .map(|(c, r, _)| (*c, *r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::catalog;

    #[test]
    fn codes_are_partition_4_and_map_both_ways() {
        for (code, reference, ucum) in UNITS {
            assert_eq!(code >> 16, 4, "{reference}");
            assert_eq!(ucum_of_mdc(&code.to_string(), ""), Some(*ucum));
            assert_eq!(ucum_of_mdc("", reference), Some(*ucum));
        }
        assert_eq!(ucum_of_mdc("262689", "MDC_DIM_PERCENT"), None);
        assert_eq!(ucum_of_mdc("", "MDC_DIM_FURLONG"), None);
        assert_eq!(
            mdc_of_ucum("/min", &catalog::RESPIRATORY_RATE),
            Some((264928, "MDC_DIM_RESP_PER_MIN"))
        );
        assert_eq!(
            mdc_of_ucum("/min", &catalog::HEART_RATE),
            Some((264864, "MDC_DIM_BEAT_PER_MIN"))
        );
        assert_eq!(
            mdc_of_ucum("%", &catalog::SPO2),
            Some((262688, "MDC_DIM_PERCENT"))
        );
        assert_eq!(mdc_of_ucum("[in_i]", &catalog::BODY_HEIGHT), None);
    }
}
