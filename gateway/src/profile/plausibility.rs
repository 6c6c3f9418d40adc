//! Plausibility: the physiological limits of each metric, and what to do with a value
//! outside them.
//!
//! A limit is a closed range in a unit (the metric's canonical one unless configured
//! otherwise); a value in another commensurable unit is converted before it is compared
//! (`[degF]` to `Cel`), and one in a unit that does not fit the limit's (glucose in `mmol/L`
//! against a `mg/dL` limit) is compared with the limit given in its own unit, if there is
//! one. A blood pressure is also implausible when its systolic pressure is not above its
//! diastolic one. Values the device could not give (`dataAbsentReason`) are not checked.
//!
//! The defaults ([`default_limits`]) are deliberately wide: they mark what cannot be a
//! measurement of a living patient (SpO2 above 100 %, a body temperature of 60 °C, a heart
//! rate of 900 /min), not what is abnormal. Abnormal values are the clinician's business and
//! pass unflagged.
//!
//! Pure: no I/O. Outcomes name the metric and the limit, never the value.

use crate::model::{Decimal, Measured, Metric, Quantity, Reading, Value};
use crate::profile::{catalog, units};

/// What to do with a value outside its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Dead-letter the reading, with the reason, audited.
    Refuse,
    /// Keep it, marked `implausible` (FHIR: interpretation, status `preliminary`).
    Flag,
    /// Do not check.
    Off,
}

impl Action {
    /// `refuse`, `flag` or `off`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Refuse => "refuse",
            Action::Flag => "flag",
            Action::Off => "off",
        }
    }

    /// The action a name names.
    pub fn parse(name: &str) -> Option<Self> {
        [Action::Refuse, Action::Flag, Action::Off]
            .into_iter()
            .find(|a| a.as_str() == name)
    }
}

/// The physiological limits of one metric, in one unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    /// The metric's MDC code (every catalog entry with it: the glucose variants share one).
    pub mdc: u32,
    /// The unit `min` and `max` are in.
    pub unit: String,
    /// Lowest plausible value.
    pub min: f64,
    /// Highest plausible value.
    pub max: f64,
    /// What to do outside them; `None`: the policy's default action.
    pub action: Option<Action>,
}

impl Limit {
    fn new(metric: &Metric, min: f64, max: f64) -> Self {
        Self {
            mdc: metric.mdc,
            unit: metric.unit.to_owned(),
            min,
            max,
            action: None,
        }
    }
}

/// The gateway's default limits (documented in docs/clinical.md, keep them equal).
pub fn default_limits() -> Vec<Limit> {
    use catalog::*;
    let mut limits = vec![
        Limit::new(&SYSTOLIC, 20.0, 300.0),
        Limit::new(&DIASTOLIC, 10.0, 250.0),
        Limit::new(&MEAN_ARTERIAL, 15.0, 270.0),
        Limit::new(&SPO2, 0.0, 100.0),
        Limit::new(&PULSE_AMPLITUDE_INDEX, 0.0, 100.0),
        Limit::new(&RESPIRATORY_RATE, 0.0, 150.0),
        Limit::new(&BODY_WEIGHT, 0.2, 700.0),
        Limit::new(&BODY_HEIGHT, 20.0, 300.0),
        Limit::new(&BMI, 5.0, 200.0),
        Limit::new(&BODY_FAT, 0.0, 100.0),
        Limit::new(&MUSCLE_PERCENTAGE, 0.0, 100.0),
        Limit::new(&HBA1C, 2.0, 25.0),
        Limit::new(&RR_INTERVAL, 100.0, 6000.0),
    ];
    for rate in [PULSE_RATE_NONINV, PULSE_RATE_OXIM, HEART_RATE] {
        limits.push(Limit::new(&rate, 0.0, 350.0));
    }
    for temp in [
        BODY_TEMPERATURE,
        TEMP_AXILLA,
        TEMP_EAR,
        TEMP_FINGER,
        TEMP_GIT,
        TEMP_ORAL,
        TEMP_RECT,
        TEMP_TOE,
        TEMP_TYMP,
    ] {
        limits.push(Limit::new(&temp, 25.0, 45.0));
    }
    for mass in [FAT_FREE_MASS, SOFT_LEAN_MASS, BODY_WATER_MASS, MUSCLE_MASS] {
        limits.push(Limit::new(&mass, 0.0, 700.0));
    }
    // Blood glucose: by mass and, for the same codes, by substance (1 mmol/L ≈ 18 mg/dL).
    for glucose in ALL.iter().filter(|m| (160_000..160_400).contains(&m.mdc)) {
        if glucose.mdc == HBA1C.mdc {
            continue;
        }
        limits.push(Limit::new(glucose, 5.0, 2000.0));
        limits.push(Limit {
            unit: "mmol/L".into(),
            ..Limit::new(glucose, 0.3, 111.0)
        });
    }
    limits
}

/// Why a reading is implausible: the metric and its limit, never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What to do about it.
    pub action: Action,
    /// "outside the physiological limits of …: 0 to 100 %", "systolic not above diastolic".
    pub reason: String,
}

/// The limits in force: defaults with the configured ones over them, and the default action.
#[derive(Debug, Clone, PartialEq)]
pub struct Plausibility {
    limits: Vec<Limit>,
    action: Action,
}

impl Default for Plausibility {
    fn default() -> Self {
        Self::new(Action::Refuse, Vec::new())
    }
}

impl Plausibility {
    /// The default limits with `overrides` replacing those of the same metric and a
    /// commensurable unit (or added), and `action` for limits that name none.
    pub fn new(action: Action, overrides: Vec<Limit>) -> Self {
        let mut limits = default_limits();
        for o in overrides {
            limits.retain(|l| !(l.mdc == o.mdc && units::commensurable(&l.unit, &o.unit)));
            limits.push(o);
        }
        Self { limits, action }
    }

    /// The limit for a value of `metric` in `unit`.
    fn limit(&self, metric: &Metric, unit: &str) -> Option<&Limit> {
        self.limits
            .iter()
            .rev()
            .find(|l| l.mdc == metric.mdc && units::commensurable(&l.unit, unit))
    }

    /// The first finding about `r`, if any.
    pub fn check(&self, r: &Reading) -> Option<Finding> {
        match &r.value {
            Value::Quantity(q) => self.quantity(&r.metric, q),
            Value::Components(parts) => {
                for c in parts {
                    if let Some(f) = self.quantity(&c.metric, &c.quantity) {
                        return Some(f);
                    }
                }
                self.systolic_above_diastolic(parts)
            }
            Value::Samples(_) | Value::Coded { .. } => None,
        }
    }

    fn quantity(&self, metric: &Metric, q: &Quantity) -> Option<Finding> {
        let Measured::Value(v) = q.value else {
            return None;
        };
        let limit = self.limit(metric, &q.unit)?;
        let action = limit.action.unwrap_or(self.action);
        if action == Action::Off {
            return None;
        }
        let value = units::convert(v, &q.unit, &limit.unit)?;
        let value = value.to_f64();
        (value < limit.min || value > limit.max).then(|| Finding {
            action,
            reason: format!(
                "outside the physiological limits of {} ({}): {} to {} {}",
                metric.display, metric.mdc_ref, limit.min, limit.max, limit.unit
            ),
        })
    }

    fn systolic_above_diastolic(&self, parts: &[crate::model::Component]) -> Option<Finding> {
        let action = self
            .limit(&catalog::SYSTOLIC, catalog::SYSTOLIC.unit)
            .and_then(|l| l.action)
            .unwrap_or(self.action);
        if action == Action::Off {
            return None;
        }
        let in_mmhg = |mdc: u32| {
            parts.iter().find(|c| c.metric.mdc == mdc).and_then(|c| {
                let Measured::Value(v) = c.quantity.value else {
                    return None;
                };
                units::convert(v, &c.quantity.unit, "mm[Hg]").map(Decimal::to_f64)
            })
        };
        let (sys, dia) = (
            in_mmhg(catalog::SYSTOLIC.mdc)?,
            in_mmhg(catalog::DIASTOLIC.mdc)?,
        );
        (sys <= dia).then(|| Finding {
            action,
            reason: "blood pressure: the systolic pressure is not above the diastolic".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Component, Decimal, DeviceId, DeviceRef};
    use time::macros::datetime;

    fn reading(metric: Metric, value: Value) -> Reading {
        Reading {
            device: DeviceRef {
                id: DeviceId::Other("d".into()),
                profile: "test".into(),
                model: None,
                manufacturer: None,
            },
            patient: None,
            metric,
            value,
            device_time: None,
            clock_offset: None,
            received_at: datetime!(2026-11-25 12:00 UTC),
            duration: None,
            sequence: None,
            status: vec![],
            device_user: None,
            bedside: None,
            time_sync: None,
        }
    }

    fn q(metric: Metric, value: &str, unit: &str) -> Reading {
        reading(
            metric,
            Value::Quantity(Quantity {
                value: Measured::Value(Decimal::parse(value).unwrap()),
                unit: unit.into(),
            }),
        )
    }

    fn bp(sys: i64, dia: i64, unit: &str) -> Reading {
        let c = |metric: Metric, v: i64| Component {
            metric,
            quantity: Quantity {
                value: Measured::Value(Decimal::integer(v)),
                unit: unit.into(),
            },
        };
        reading(
            catalog::BLOOD_PRESSURE,
            Value::Components(vec![c(catalog::SYSTOLIC, sys), c(catalog::DIASTOLIC, dia)]),
        )
    }

    /// The edges: a limit itself is plausible, a step beyond it is not.
    #[test]
    fn limits_are_inclusive_and_checked_after_conversion() {
        let p = Plausibility::default();
        let cases: &[(Reading, bool)] = &[
            (q(catalog::SPO2, "100", "%"), true),
            (q(catalog::SPO2, "100.1", "%"), false),
            (q(catalog::SPO2, "0", "%"), true),
            (q(catalog::SPO2, "970", "%"), false),
            (q(catalog::SPO2, "0.97", "1"), true),
            (q(catalog::HEART_RATE, "350", "/min"), true),
            (q(catalog::HEART_RATE, "351", "/min"), false),
            (q(catalog::BODY_TEMPERATURE, "25.0", "Cel"), true),
            (q(catalog::BODY_TEMPERATURE, "24.9", "Cel"), false),
            (q(catalog::BODY_TEMPERATURE, "45.1", "Cel"), false),
            (q(catalog::BODY_TEMPERATURE, "98.6", "[degF]"), true),
            (q(catalog::BODY_TEMPERATURE, "120", "[degF]"), false),
            (q(catalog::BODY_WEIGHT, "154", "[lb_av]"), true),
            (q(catalog::BODY_WEIGHT, "0", "kg"), false),
            (q(catalog::GLUCOSE_CAPILLARY_PLASMA, "95", "mg/dL"), true),
            (
                q(catalog::GLUCOSE_CAPILLARY_PLASMA_MOLAR, "5.4", "mmol/L"),
                true,
            ),
            (
                q(catalog::GLUCOSE_CAPILLARY_PLASMA_MOLAR, "150", "mmol/L"),
                false,
            ),
            (bp(120, 80, "mm[Hg]"), true),
            (bp(80, 80, "mm[Hg]"), false),
            (bp(80, 120, "mm[Hg]"), false),
            (bp(400, 80, "mm[Hg]"), false),
        ];
        for (r, plausible) in cases {
            let found = p.check(r);
            assert_eq!(found.is_none(), *plausible, "{:?}: {found:?}", r.value);
            if let Some(f) = found {
                assert_eq!(f.action, Action::Refuse);
                assert!(!f.reason.contains("970"), "{}", f.reason);
            }
        }
    }

    #[test]
    fn configured_limits_replace_the_defaults_and_name_their_action() {
        let p = Plausibility::new(
            Action::Flag,
            vec![Limit {
                mdc: catalog::SPO2.mdc,
                unit: "%".into(),
                min: 70.0,
                max: 100.0,
                action: Some(Action::Refuse),
            }],
        );
        let f = p.check(&q(catalog::SPO2, "65", "%")).unwrap();
        assert_eq!(f.action, Action::Refuse);
        assert!(f.reason.contains("70 to 100 %"), "{}", f.reason);
        // Other metrics take the policy's action.
        let f = p.check(&q(catalog::HEART_RATE, "900", "/min")).unwrap();
        assert_eq!(f.action, Action::Flag);
        let off = Plausibility::new(Action::Off, vec![]);
        assert_eq!(off.check(&q(catalog::HEART_RATE, "900", "/min")), None);
    }
}
