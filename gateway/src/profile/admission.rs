//! Admission: the clinical checks every reading passes before the buffer, whatever its
//! source ([`crate::pipeline::Admit`]; the wiring gives a [`Policy`] to every source's
//! `Ingest` handle).
//!
//! In order, for each reading:
//!
//! 1. **Units** ([`units::check_unit`]): every quantity's unit (and each component's) must
//!    be UCUM and fit the metric. A misfit is **refused**: dead-lettered with a reason that
//!    names the metric and the unit's dimension. Glucose takes the metric of its unit
//!    (by mass or by substance, [`units::metric_for_unit`]).
//! 2. **Plausibility** ([`Plausibility`]): a value outside its metric's physiological limits,
//!    or a blood pressure whose systolic is not above its diastolic, is refused or marked
//!    [`StatusFlag::Implausible`], as configured per metric.
//! 3. **Time**: a device time later than the receive time by more than
//!    [`Policy::future_tolerance`] is marked [`StatusFlag::TimeInFuture`]; one older than
//!    [`Policy::max_age`], [`StatusFlag::TimeTooOld`]. Never refused: the value is right,
//!    the clock is not, and the identifier keeps the device's own time.
//!
//! A refused reading is a dead letter of kind `payload` whose content is the technician
//! JSON of the reading (`profile::report`), so `queue retry-dead-letters` never puts it back;
//! the audit log and `vitalbridge_readings_refused_total` count it by device and check.
//!
//! Pure: no I/O, no clock of its own (times are compared with the reading's receive time).

use time::Duration;

use super::plausibility::{Action, Plausibility};
use super::{report, units};
use crate::model::{Reading, StatusFlag, Value};
use crate::pipeline::{Admit, Refusal, Rejected};

/// Default [`Policy::future_tolerance`]: device clocks a few minutes fast are common.
pub const DEFAULT_FUTURE_TOLERANCE: Duration = Duration::minutes(5);
/// Default [`Policy::max_age`]: a year. Stored glucose records are weeks old; a clock that
/// was reset (year 2000, 1970) is decades off.
pub const DEFAULT_MAX_AGE: Duration = Duration::days(365);

/// What the checks do, from the `[clinical]` configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The limits and what to do outside them.
    pub plausibility: Plausibility,
    /// How far ahead of the receive time a device time may be before it is flagged.
    pub future_tolerance: Duration,
    /// How old a device time may be before it is flagged; `None`: never.
    pub max_age: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            plausibility: Plausibility::default(),
            future_tolerance: DEFAULT_FUTURE_TOLERANCE,
            max_age: Some(DEFAULT_MAX_AGE),
        }
    }
}

/// Why a reading was refused: which check, and a reason naming the metric (never a value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// `unit` or `plausibility`.
    pub check: &'static str,
    /// The reason, for the dead letter.
    pub reason: String,
}

impl Policy {
    /// Checks one reading: `Ok` with the reading marked where a check says so, or why it is
    /// refused.
    pub fn check(&self, r: &mut Reading) -> Result<(), Refused> {
        let unit = |field: &str, e: units::UnitError| Refused {
            check: "unit",
            reason: format!("{field}: {e}"),
        };
        match &mut r.value {
            Value::Quantity(q) => {
                units::check_unit(&r.metric, &q.unit).map_err(|e| unit("unit", e))?;
                r.metric = units::metric_for_unit(r.metric.clone(), &q.unit);
            }
            Value::Components(parts) => {
                for (i, c) in parts.iter_mut().enumerate() {
                    units::check_unit(&c.metric, &c.quantity.unit)
                        .map_err(|e| unit(&format!("components[{i}].unit"), e))?;
                    c.metric = units::metric_for_unit(c.metric.clone(), &c.quantity.unit);
                }
            }
            Value::Samples(s) => {
                units::check_unit(&r.metric, &s.unit).map_err(|e| unit("samples.unit", e))?;
            }
            Value::Coded { .. } => {}
        }
        if let Some(finding) = self.plausibility.check(r) {
            match finding.action {
                Action::Refuse => {
                    return Err(Refused {
                        check: "plausibility",
                        reason: finding.reason,
                    })
                }
                Action::Flag => flag(r, StatusFlag::Implausible),
                Action::Off => {}
            }
        }
        if r.device_time.is_some() {
            let (when, _) = r.effective_time();
            if when > r.received_at + self.future_tolerance {
                flag(r, StatusFlag::TimeInFuture);
            }
            if self.max_age.is_some_and(|age| when < r.received_at - age) {
                flag(r, StatusFlag::TimeTooOld);
            }
        }
        Ok(())
    }
}

fn flag(r: &mut Reading, f: StatusFlag) {
    if !r.status.contains(&f) {
        r.status.push(f);
    }
}

impl Admit for Policy {
    fn admit(&self, source: &str, readings: &mut Vec<Reading>) -> Vec<Rejected> {
        let mut refused = Vec::new();
        readings.retain_mut(|r| match self.check(r) {
            Ok(()) => true,
            Err(why) => {
                refused.push(rejected(source, r, why));
                false
            }
        });
        refused
    }
}

/// The dead letter of a refused reading: its technician JSON (without the receive time, so
/// the same reading resent is one row), the device and the reason.
fn rejected(source: &str, r: &Reading, why: Refused) -> Rejected {
    let mut json = report::reading_to_json(r);
    if let Some(o) = json.as_object_mut() {
        o.remove("received_at");
    }
    let payload = serde_json::to_vec(&json).unwrap_or_default();
    let device = r.device.id.key();
    let mut rejected = Rejected::new(
        source.to_owned(),
        format!(
            "refused by the {} check, device {device}: {}",
            why.check, why.reason
        ),
        &payload,
    );
    rejected.refused = Some(Box::new(Refusal {
        device,
        check: why.check,
    }));
    rejected
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Decimal, DeviceId, DeviceRef, Measured, Metric, Quantity};
    use crate::profile::catalog;
    use time::macros::datetime;

    fn q(metric: Metric, value: &str, unit: &str) -> Reading {
        Reading {
            device: DeviceRef {
                id: DeviceId::Other("d-1".into()),
                profile: "test".into(),
                model: None,
                manufacturer: None,
            },
            patient: None,
            metric,
            value: Value::Quantity(Quantity {
                value: Measured::Value(Decimal::parse(value).unwrap()),
                unit: unit.into(),
            }),
            device_time: Some(datetime!(2026-11-25 12:00 UTC)),
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

    #[test]
    fn the_bug_report_reading_is_refused_by_the_unit_check_without_its_value() {
        let mut readings = vec![
            q(catalog::SPO2, "970", "kg"),
            q(catalog::SPO2, "97", "%"),
            q(catalog::SPO2, "970", "%"),
        ];
        let refused = Policy::default().admit("mqtt", &mut readings);
        assert_eq!(readings.len(), 1);
        assert_eq!(refused.len(), 2);
        let unit = refused[0].refused.as_ref().unwrap();
        assert_eq!((unit.check, unit.device.as_str()), ("unit", "d-1"));
        assert!(
            refused[0].reason.contains("is a mass"),
            "{}",
            refused[0].reason
        );
        assert_eq!(refused[1].refused.as_ref().unwrap().check, "plausibility");
        for r in &refused {
            assert!(!r.reason.contains("970"), "{}", r.reason);
            assert_eq!(r.origin, "mqtt");
        }
    }

    #[test]
    fn flagged_values_and_clocks_are_kept_and_marked() {
        let policy = Policy {
            plausibility: Plausibility::new(Action::Flag, vec![]),
            ..Policy::default()
        };
        let mut r = q(catalog::HEART_RATE, "900", "/min");
        policy.check(&mut r).unwrap();
        assert_eq!(r.status, vec![StatusFlag::Implausible]);

        let mut ahead = q(catalog::HEART_RATE, "60", "/min");
        ahead.device_time = Some(ahead.received_at + Duration::minutes(6));
        policy.check(&mut ahead).unwrap();
        assert_eq!(ahead.status, vec![StatusFlag::TimeInFuture]);

        let mut within = q(catalog::HEART_RATE, "60", "/min");
        within.device_time = Some(within.received_at + Duration::minutes(4));
        policy.check(&mut within).unwrap();
        assert!(within.status.is_empty());

        // Corrected by a known offset, the time is right: not flagged.
        let mut corrected = ahead.clone();
        corrected.status.clear();
        corrected.clock_offset = Some(-Duration::minutes(6));
        policy.check(&mut corrected).unwrap();
        assert!(corrected.status.is_empty());

        let mut reset = q(catalog::HEART_RATE, "60", "/min");
        reset.device_time = Some(datetime!(2000-01-01 00:00 UTC));
        policy.check(&mut reset).unwrap();
        assert_eq!(reset.status, vec![StatusFlag::TimeTooOld]);

        // No clock: receive time, never flagged.
        let mut clockless = q(catalog::HEART_RATE, "60", "/min");
        clockless.device_time = None;
        policy.check(&mut clockless).unwrap();
        assert!(clockless.status.is_empty());
    }

    #[test]
    fn glucose_in_mmol_per_litre_takes_the_molar_code() {
        let mut r = q(catalog::GLUCOSE_CAPILLARY_PLASMA, "5.4", "mmol/L");
        Policy::default().check(&mut r).unwrap();
        assert_eq!(r.metric, catalog::GLUCOSE_CAPILLARY_PLASMA_MOLAR);
    }
}
