//! Units: every unit a reading carries is a UCUM expression whose dimension fits what the
//! metric measures.
//!
//! [`check_unit`] is the one check, for every source: the canonical JSON decoder, line
//! profiles (at load and per line), the firmware frames, and, for every reading whatever its
//! source (BLE decoders, the simulator, HL7 v2 OBX units), the admission check before the
//! buffer (`profile::admission`). An HL7 v2 source calls it with the OBX-6 unit.
//!
//! A unit **fits** a metric when it is a valid UCUM expression (case sensitive, UCUM 2.2,
//! through the `octofhir-ucum` crate) commensurable with the metric's canonical unit: the
//! same dimension and the same arbitrary atoms. So a body weight may come in `kg`, `g` or
//! `[lb_av]`, a blood pressure in `mm[Hg]`, `kPa` or `cm[H2O]`, a body temperature in `Cel`,
//! `[degF]` or `K`, SpO2 in `%` or `1`, a rate in `/min`, `{beats}/min` or `Hz`. One
//! exception: glucose is measured by mass (`mg/dL`) or by substance (`mmol/L`), which UCUM
//! does not relate (it takes a molar mass); the catalog has a metric for each, with its own
//! LOINC code, and [`metric_for_unit`] picks the one whose unit fits.
//!
//! Units are kept as the device sent them; [`convert`] turns a value into another
//! commensurable unit (the FHIR output does, where the configuration asks for one unit per
//! metric).
//!
//! Errors name the metric and the unit's dimension ("a mass", "a pressure"), and the unit
//! when it is valid UCUM (a UCUM code is not patient data); never a value.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::rc::Rc;
use std::sync::{Arc, OnceLock, RwLock};

use octofhir_ucum::{analyse, UnitAnalysis};

use crate::model::{Decimal, Metric};

/// What a unit measures, from its UCUM dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dimension {
    /// Exponents of the UCUM base units m, s, g, rad, K, C, cd.
    exponents: [i8; 7],
    /// Arbitrary atoms (`[iU]`, …) and their exponents: units with different ones never
    /// fit each other.
    arbitrary: Vec<(&'static str, i32)>,
}

/// What the check and the conversion need of a unit, kept once per distinct unit text.
#[derive(Debug, Clone)]
struct Analysed {
    dimension: Dimension,
    /// `factor × scale` of the unit, in base units (for conversion).
    scale: f64,
    /// The offset of a temperature, in kelvins; 0 otherwise.
    offset: f64,
}

/// Valid units remembered at most (a gateway meets a few dozen); past it, new units are
/// analysed each time rather than remembered, so hostile input cannot grow the cache.
const CACHE_LIMIT: usize = 256;

/// Texts that are not UCUM remembered at most. They are kept apart from the valid units, so
/// a stream of distinct bad units (a hostile sender, a misconfigured profile) cannot fill
/// the cache and leave the valid units re-analysed on every reading; when full, this set is
/// emptied, so it holds the bad units seen lately (a device that sends `mmHg` every reading).
const REFUSED_LIMIT: usize = 64;

#[derive(Default)]
struct Cache {
    valid: HashMap<String, Arc<Analysed>>,
    refused: HashSet<String>,
}

fn cache() -> &'static RwLock<Cache> {
    static CACHE: OnceLock<RwLock<Cache>> = OnceLock::new();
    CACHE.get_or_init(|| RwLock::new(Cache::default()))
}

/// Units each thread looked up last, at most (valid or not).
const RECENT_LIMIT: usize = 8;

/// The units this thread looked up last, with their analyses, checked before the shared
/// cache: a reading's units are looked up about ten times between its decode and its
/// admission, and the shared cache's lock (shared by every thread) and hash cost more than
/// comparing a few short texts. Replaced in turn when full.
#[derive(Default)]
struct Recent {
    units: Vec<(Box<str>, Option<Rc<Analysed>>)>,
    next: usize,
}

thread_local! {
    static RECENT: RefCell<Recent> = RefCell::default();
}

impl Recent {
    fn remember(&mut self, unit: &str, analysed: Option<Rc<Analysed>>) {
        let entry = (Box::from(unit), analysed);
        if self.units.len() < RECENT_LIMIT {
            self.units.push(entry);
        } else {
            self.units[self.next] = entry;
            self.next = (self.next + 1) % RECENT_LIMIT;
        }
    }
}

impl Dimension {
    fn of(a: &UnitAnalysis) -> Self {
        Self {
            exponents: a.dimension.0,
            arbitrary: a.arbitrary.clone(),
        }
    }

    /// A name a person understands: "a mass", "a pressure", "dimensionless (a fraction or a
    /// count)"; the UCUM dimension (`L.T-1`) where there is no common name.
    pub fn name(&self) -> String {
        if !self.arbitrary.is_empty() {
            return "an arbitrary unit (such as international units)".into();
        }
        let named = match self.exponents {
            [0, 0, 0, 0, 0, 0, 0] => "dimensionless (a fraction or a count)",
            [1, 0, 0, 0, 0, 0, 0] => "a length",
            [0, 1, 0, 0, 0, 0, 0] => "a duration",
            [0, 0, 1, 0, 0, 0, 0] => "a mass",
            [0, 0, 0, 0, 1, 0, 0] => "a temperature",
            [0, 0, 0, 1, 0, 0, 0] => "an angle",
            [-1, -2, 1, 0, 0, 0, 0] => "a pressure",
            [0, -1, 0, 0, 0, 0, 0] => "a rate (per time)",
            [-2, 0, 1, 0, 0, 0, 0] => "a mass per area",
            [2, -2, 1, 0, 0, 0, 0] => "an energy",
            [2, -3, 1, 0, 0, 0, 0] => "a power",
            [-3, 0, 1, 0, 0, 0, 0] => "a mass concentration",
            [-3, 0, 0, 0, 0, 0, 0] => "a substance (or number) concentration",
            [3, 0, 0, 0, 0, 0, 0] => "a volume",
            [3, -1, 0, 0, 0, 0, 0] => "a volume flow",
            [1, -1, 0, 0, 0, 0, 0] => "a velocity",
            [2, -1, 1, 0, 0, -2, 0] => "an electrical resistance",
            other => return format!("of dimension {}", octofhir_ucum::Dimension(other)),
        };
        named.to_owned()
    }

    fn is_mass_concentration(&self) -> bool {
        self.arbitrary.is_empty() && self.exponents == [-3, 0, 1, 0, 0, 0, 0]
    }

    fn is_substance_concentration(&self) -> bool {
        self.arbitrary.is_empty() && self.exponents == [-3, 0, 0, 0, 0, 0, 0]
    }

    /// A mass or a substance concentration (glucose is measured as either).
    fn is_concentration(&self) -> bool {
        self.is_mass_concentration() || self.is_substance_concentration()
    }
}

/// Why a unit does not fit a metric.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Not a UCUM expression (or not one this gateway's UCUM tables know).
    #[error("is not a UCUM unit; {metric} needs {needs}, e.g. `{example}`")]
    NotUcum {
        /// The metric's display and MDC reference id.
        metric: String,
        /// What it needs ("a mass").
        needs: String,
        /// Its canonical unit.
        example: &'static str,
    },
    /// A UCUM unit of another dimension.
    #[error("`{unit}` is {is}; {metric} needs {needs}, e.g. `{example}`")]
    WrongDimension {
        /// The unit (a valid UCUM code).
        unit: String,
        /// What the unit measures.
        is: String,
        /// The metric's display and MDC reference id.
        metric: String,
        /// What it needs.
        needs: String,
        /// Its canonical unit.
        example: &'static str,
    },
}

/// The metric as errors name it: display and MDC reference id.
fn metric_name(m: &Metric) -> String {
    format!("{} ({})", m.display, m.mdc_ref)
}

/// The analysis of a UCUM unit, or `None` when it is not one, remembered per unit text (every
/// reading is checked, so the parse is done once per distinct unit, not once per reading).
/// Units are at most `limits::MAX_UNIT_LEN` bytes where they enter; the parser bounds
/// nesting itself.
fn ucum(unit: &str) -> Option<Rc<Analysed>> {
    RECENT.with(|recent| {
        let mut recent = recent.borrow_mut();
        if let Some((_, analysed)) = recent.units.iter().find(|(u, _)| **u == *unit) {
            return analysed.clone();
        }
        let analysed = shared_ucum(unit).map(|a| Rc::new(Analysed::clone(&a)));
        recent.remember(unit, analysed.clone());
        analysed
    })
}

/// [`ucum`] from the cache every thread shares.
fn shared_ucum(unit: &str) -> Option<Arc<Analysed>> {
    {
        let known = cache().read().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = known.valid.get(unit) {
            return Some(a.clone());
        }
        if known.refused.contains(unit) {
            return None;
        }
    }
    let analysed = (!unit.is_empty() && unit.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| analyse(unit).ok())
        .flatten()
        .map(|a| {
            Arc::new(Analysed {
                dimension: Dimension::of(&a),
                scale: a.factor.to_f64() * a.scale.to_f64(),
                offset: a.offset.to_f64(),
            })
        });
    let mut known = cache().write().unwrap_or_else(|e| e.into_inner());
    match &analysed {
        Some(a) if known.valid.len() < CACHE_LIMIT => {
            known.valid.insert(unit.to_owned(), a.clone());
        }
        Some(_) => {}
        None => {
            if known.refused.len() >= REFUSED_LIMIT {
                known.refused.clear();
            }
            known.refused.insert(unit.to_owned());
        }
    }
    analysed
}

/// What a unit measures, when it is a UCUM unit.
pub fn dimension(unit: &str) -> Option<Dimension> {
    ucum(unit).map(|a| a.dimension.clone())
}

/// Whether `unit` is a valid UCUM expression.
pub fn is_ucum(unit: &str) -> bool {
    ucum(unit).is_some()
}

/// Whether two units measure the same kind of thing (UCUM: commensurable). False when
/// either is not UCUM.
pub fn commensurable(a: &str, b: &str) -> bool {
    match (ucum(a), ucum(b)) {
        (Some(a), Some(b)) => a.dimension == b.dimension,
        _ => false,
    }
}

/// Whether the metric is measured either by mass or by substance concentration (glucose).
fn is_concentration(m: &Metric) -> bool {
    ucum(m.unit).is_some_and(|a| a.dimension.is_concentration())
}

/// The check: `unit` fits `metric` (see the module docs). Returns what the unit measures.
/// Every reading passes here (more than once), so the happy path looks each unit up once
/// and builds no text; the error's words are made only for a unit that does not fit.
pub fn check_unit(metric: &Metric, unit: &str) -> Result<Dimension, UnitError> {
    let needs = ucum(metric.unit);
    let Some(is) = ucum(unit) else {
        return Err(UnitError::NotUcum {
            metric: metric_name(metric),
            needs: needs_name(needs.as_deref()),
            example: metric.unit,
        });
    };
    let fits = match needs.as_deref() {
        Some(needs) if needs.dimension.is_concentration() => is.dimension.is_concentration(),
        Some(needs) => needs.dimension == is.dimension,
        // A catalog unit that is not UCUM would be a catalog bug (a test checks every one).
        None => unit == metric.unit,
    };
    if fits {
        Ok(is.dimension.clone())
    } else {
        Err(UnitError::WrongDimension {
            unit: unit.to_owned(),
            is: is.dimension.name(),
            metric: metric_name(metric),
            needs: needs_name(needs.as_deref()),
            example: metric.unit,
        })
    }
}

/// What a metric's unit (`needs`, its analysis) measures, in words, for an error.
fn needs_name(needs: Option<&Analysed>) -> String {
    match needs {
        Some(a) if a.dimension.is_concentration() => "a mass or substance concentration".into(),
        Some(a) => a.dimension.name(),
        None => "its own unit".into(),
    }
}

/// The catalog metric for `metric` measured in `unit`: for glucose, the mass or the
/// substance-concentration variant (their LOINC codes differ) whose unit fits; `metric`
/// itself otherwise.
pub fn metric_for_unit(metric: Metric, unit: &str) -> Metric {
    if !is_concentration(&metric) || commensurable(metric.unit, unit) {
        return metric;
    }
    super::catalog::by_mdc_for_unit(metric.mdc, unit).unwrap_or(metric)
}

/// `value` in `from`, converted to `to`, with as many significant digits as it had (at
/// least two). `None` when either unit is not UCUM, they do not fit each other, or the
/// number is out of range. Temperatures convert with their offsets (`[degF]` to `Cel`).
pub fn convert(value: Decimal, from: &str, to: &str) -> Option<Decimal> {
    let (a, b) = (ucum(from)?, ucum(to)?);
    if a.dimension != b.dimension {
        return None;
    }
    if from == to {
        return Some(value);
    }
    let v = value.to_f64();
    let base = v * a.scale + a.offset;
    let out = (base - b.offset) / b.scale;
    let digits = value.mantissa.unsigned_abs().to_string().len().max(2);
    round_significant(out, digits)
}

/// `x` rounded to `digits` significant digits, as a decimal.
fn round_significant(x: f64, digits: usize) -> Option<Decimal> {
    if !x.is_finite() {
        return None;
    }
    if x == 0.0 {
        return Some(Decimal::new(0, 0));
    }
    let magnitude = x.abs().log10().floor() as i32;
    let exponent = magnitude - i32::try_from(digits).ok()? + 1;
    let mantissa = (x / 10f64.powi(exponent)).round();
    if mantissa.abs() >= 1e17 {
        return None;
    }
    Some(Decimal::new(mantissa as i64, i8::try_from(exponent).ok()?))
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::catalog;

    #[test]
    fn every_catalog_unit_is_ucum_and_fits_its_own_metric() {
        for m in catalog::ALL.iter().chain(catalog::VARIANTS) {
            assert!(is_ucum(m.unit), "{} {}", m.mdc_ref, m.unit);
            assert!(check_unit(m, m.unit).is_ok(), "{}", m.mdc_ref);
        }
    }

    #[test]
    fn the_bug_report_spo2_in_kg_is_refused_naming_the_dimension_not_the_value() {
        let e = check_unit(&catalog::SPO2, "kg").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`kg` is a mass; Oxygen saturation in Arterial blood (MDC_PULS_OXIM_SAT_O2) needs \
             dimensionless (a fraction or a count), e.g. `%`"
        );
        let e = check_unit(&catalog::BODY_WEIGHT, "Jane").unwrap_err();
        assert!(matches!(e, UnitError::NotUcum { .. }), "{e}");
        assert!(!e.to_string().contains("Jane"), "{e}");
    }

    /// (metric, units that fit, units that do not)
    #[test]
    fn units_fit_by_dimension() {
        let cases: &[(Metric, &[&str], &[&str])] = &[
            (
                catalog::SYSTOLIC,
                &["mm[Hg]", "kPa", "cm[H2O]", "Pa"],
                &["kg", "%", "Cel", "mmHg"],
            ),
            (catalog::SPO2, &["%", "1", "%{saturation}"], &["kg", "/min"]),
            (
                catalog::HEART_RATE,
                &["/min", "{beats}/min", "Hz", "/s"],
                &["min", "%"],
            ),
            (
                catalog::BODY_TEMPERATURE,
                &["Cel", "[degF]", "K"],
                &["degF", "mm[Hg]"],
            ),
            (
                catalog::BODY_WEIGHT,
                &["kg", "g", "[lb_av]"],
                &["lb", "kg/m2", "cm"],
            ),
            (catalog::BODY_HEIGHT, &["cm", "m", "[in_i]"], &["kg"]),
            (catalog::BMI, &["kg/m2"], &["kg"]),
            (
                catalog::GLUCOSE_CAPILLARY_PLASMA,
                &["mg/dL", "mmol/L", "g/L", "mol/L"],
                &["mg", "%", "mmol"],
            ),
        ];
        for (metric, fit, misfit) in cases {
            for u in *fit {
                assert!(check_unit(metric, u).is_ok(), "{} {u}", metric.mdc_ref);
            }
            for u in *misfit {
                assert!(check_unit(metric, u).is_err(), "{} {u}", metric.mdc_ref);
            }
        }
    }

    #[test]
    fn glucose_by_substance_gets_the_molar_metric() {
        let m = metric_for_unit(catalog::GLUCOSE_CAPILLARY_PLASMA, "mmol/L");
        assert_eq!(m, catalog::GLUCOSE_CAPILLARY_PLASMA_MOLAR);
        let m = metric_for_unit(catalog::GLUCOSE_CAPILLARY_PLASMA, "mg/dL");
        assert_eq!(m, catalog::GLUCOSE_CAPILLARY_PLASMA);
        let m = metric_for_unit(catalog::BODY_WEIGHT, "[lb_av]");
        assert_eq!(m, catalog::BODY_WEIGHT);
    }

    #[test]
    fn conversions_keep_the_significant_digits_and_temperature_offsets() {
        let cases = [
            ("98.6", "[degF]", "Cel", "37.0"),
            ("154.3", "[lb_av]", "kg", "69.99"),
            ("16.0", "kPa", "mm[Hg]", "120"),
            ("36.6", "Cel", "Cel", "36.6"),
            ("0.97", "1", "%", "97"),
            ("310.15", "K", "Cel", "37.000"),
        ];
        for (v, from, to, want) in cases {
            let got = convert(Decimal::parse(v).unwrap(), from, to).unwrap();
            assert_eq!(got.to_string(), want, "{v} {from} -> {to}");
        }
        assert_eq!(convert(Decimal::integer(1), "kg", "Cel"), None);
        assert_eq!(convert(Decimal::integer(1), "mmol/L", "mg/dL"), None);
    }

    /// Whether `unit` is remembered as a valid unit.
    fn remembered(unit: &str) -> bool {
        cache().read().unwrap().valid.contains_key(unit)
    }

    #[test]
    fn a_flood_of_bad_units_does_not_crowd_the_valid_ones_out_of_the_cache() {
        for i in 0..4 * CACHE_LIMIT {
            assert!(!is_ucum(&format!("junk{i}(")));
        }
        let refused = cache().read().unwrap().refused.len();
        assert!((1..=REFUSED_LIMIT).contains(&refused), "{refused}");
        // A unit no other test uses, met after the flood, is still remembered.
        assert!(is_ucum("[ft_i]/s"));
        assert!(remembered("[ft_i]/s"));
        // A bad unit seen again (answered from the refused set) is still refused.
        assert!(!is_ucum("mmHg"));
        assert!(!is_ucum("mmHg"));
    }

    /// More units than a thread keeps, valid and not, looked up in turn again and again:
    /// each answer is the first one (a stale or misplaced recent entry would differ).
    #[test]
    fn a_thread_s_recent_units_answer_as_the_shared_cache_does() {
        let units: Vec<String> = (0..3 * RECENT_LIMIT)
            .map(|i| match i % 3 {
                0 => ["kg", "mm[Hg]", "Cel", "/min", "%", "g", "[lb_av]", "kPa"][i / 3 % 8].into(),
                1 => format!("{}.s-1", ["m", "g", "mol"][i / 3 % 3]),
                _ => format!("not-a-unit{i}("),
            })
            .collect();
        let first: Vec<Option<Dimension>> = units.iter().map(|u| dimension(u)).collect();
        assert!(first.iter().any(Option::is_some) && first.iter().any(Option::is_none));
        for round in 0..4 {
            for (i, u) in units.iter().enumerate().rev().skip(round) {
                assert_eq!(dimension(u), first[i], "{u} in round {round}");
                assert_eq!(is_ucum(u), first[i].is_some(), "{u} in round {round}");
            }
        }
        // Two units in a row compare through the recent entries of both.
        assert!(commensurable("kg", "[lb_av]"));
        assert!(!commensurable("kg", "kPa"));
    }

    proptest::proptest! {
        #[test]
        fn any_unit_text_is_checked_without_panicking(unit in "[ -~]{0,32}") {
            let _ = check_unit(&catalog::SPO2, &unit);
            let _ = convert(Decimal::integer(1), &unit, "kg");
        }
    }
}
