//! The built-in simulator: N devices producing plausible readings at a fixed rate.
//!
//! Devices cycle through five kinds (BP cuff, pulse oximeter, thermometer, scale, heart-rate
//! strap) with ids like `SIM-BP-0001`. Every reading is marked test data (FHIR `HTEST`). A
//! device not bound to a patient in config is given a demo patient
//! (`urn:vitalbridge:demo-patient|demo-N`) so the demo output is complete FHIR.
//!
//! Each device measures one simulated patient, who keeps a coherent baseline (a blood
//! pressure, pulse, SpO2, temperature, weight of their own, drawn once per device) that
//! drifts slowly; each measurement is the baseline with small noise, and a systolic pressure
//! is always above the diastolic. With `scenarios` (the default), the demo also shows what
//! the gateway does with readings that are not plain, on a fixed schedule so a test can
//! count them:
//!
//! - the last device (of two or more) has no demo patient: unless config binds it, its
//!   readings are held unbound, never sent;
//! - thermometers have no clock: their readings carry the gateway's receive time, and say so;
//! - every 10th blood pressure reports a loose cuff (FHIR: interpretation, `preliminary`);
//! - every 15th SpO2 reads above 100 % (refused by the plausibility check, dead-lettered).
//!
//! Sequence numbers continue from the buffer's last stored one, so identifiers stay unique
//! across restarts.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use time::OffsetDateTime;

use super::{Bindings, SourceContext};
use crate::config::SimConfig;
use crate::model::{
    Component, Decimal, DeviceId, DeviceRef, Measured, Metric, PatientRef, Quantity, Reading,
    StatusFlag, Value,
};
use crate::pipeline::CommitError;
use crate::profile::catalog;

/// Profile id of simulated devices.
pub const PROFILE_ID: &str = "sim";

/// With `scenarios`: every this many blood pressures, one reports a loose cuff.
pub const CUFF_LOOSE_EVERY: u64 = 10;
/// With `scenarios`: every this many SpO2 readings, one is above 100 %.
pub const SPO2_OUT_OF_RANGE_EVERY: u64 = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    BloodPressure,
    PulseOximeter,
    Thermometer,
    Scale,
    HeartRateStrap,
}

const KINDS: [(Kind, &str, &str); 5] = [
    (Kind::BloodPressure, "BP", "Simulated BP cuff"),
    (Kind::PulseOximeter, "OX", "Simulated pulse oximeter"),
    (Kind::Thermometer, "TH", "Simulated thermometer"),
    (Kind::Scale, "SC", "Simulated scale"),
    (Kind::HeartRateStrap, "HR", "Simulated heart-rate strap"),
];

/// One simulated patient's own values, around which their measurements vary.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Baseline {
    systolic: f64,
    diastolic: f64,
    pulse: f64,
    spo2: f64,
    temperature: f64,
    weight: f64,
}

impl Baseline {
    fn draw(rng: &mut impl Rng) -> Self {
        let diastolic = rng.gen_range(68.0..86.0);
        Self {
            systolic: diastolic + rng.gen_range(35.0..55.0),
            diastolic,
            pulse: rng.gen_range(58.0..84.0),
            spo2: rng.gen_range(95.0..98.5),
            temperature: rng.gen_range(36.4..37.0),
            weight: rng.gen_range(55.0..95.0),
        }
    }

    /// A slow drift back towards where it started, so a patient stays themselves.
    fn drift(&mut self, start: &Baseline, rng: &mut impl Rng) {
        let step = |now: &mut f64, home: f64, size: f64, rng: &mut dyn rand::RngCore| {
            *now += (home - *now) * 0.05 + rng.gen_range(-size..size);
        };
        step(&mut self.systolic, start.systolic, 0.5, rng);
        step(&mut self.diastolic, start.diastolic, 0.3, rng);
        step(&mut self.pulse, start.pulse, 0.5, rng);
        step(&mut self.spo2, start.spo2, 0.05, rng);
        step(&mut self.temperature, start.temperature, 0.01, rng);
        step(&mut self.weight, start.weight, 0.01, rng);
    }
}

struct SimDevice {
    kind: Kind,
    device: DeviceRef,
    /// `None`: the demo's unbound device.
    patient: Option<PatientRef>,
    next_seq: u64,
    /// Whether the device has a clock (thermometers have none, with `scenarios`).
    clock: bool,
    start: Baseline,
    now: Baseline,
    /// Measurements taken, for the scenarios' schedule.
    measured: u64,
    rng: StdRng,
}

fn quantity(metric: Metric, value: Decimal) -> Value {
    Value::Quantity(Quantity {
        value: Measured::Value(value),
        unit: metric.unit.to_owned(),
    })
}

fn component(metric: Metric, value: i64) -> Component {
    Component {
        quantity: Quantity {
            value: Measured::Value(Decimal::integer(value)),
            unit: metric.unit.to_owned(),
        },
        metric,
    }
}

/// Readings one measurement of a kind produces (a blood pressure comes with its pulse rate,
/// an SpO2 with the oximeter's).
fn readings_per_measurement(kind: Kind) -> u64 {
    match kind {
        Kind::BloodPressure | Kind::PulseOximeter => 2,
        Kind::Thermometer | Kind::Scale | Kind::HeartRateStrap => 1,
    }
}

/// `x` with `decimals` decimal places.
fn decimal(x: f64, decimals: u8) -> Decimal {
    let scale = 10f64.powi(i32::from(decimals));
    Decimal::new((x * scale).round() as i64, -(decimals as i8))
}

/// What one measurement of a device produces: (metric, value, status flags).
fn measure(d: &mut SimDevice, scenarios: bool) -> Vec<(Metric, Value, Vec<StatusFlag>)> {
    d.now.drift(&d.start, &mut d.rng);
    d.measured += 1;
    let (b, rng, n) = (d.now, &mut d.rng, d.measured);
    let mut noise = |size: f64| rng.gen_range(-size..=size);
    match d.kind {
        Kind::BloodPressure => {
            let sys = (b.systolic + noise(4.0)).round() as i64;
            let dia = ((b.diastolic + noise(3.0)).round() as i64).min(sys - 20);
            let mean = (sys + 2 * dia) / 3;
            let flags = if scenarios && n % CUFF_LOOSE_EVERY == 0 {
                vec![StatusFlag::CuffLoose]
            } else {
                vec![]
            };
            vec![
                (
                    catalog::BLOOD_PRESSURE,
                    Value::Components(vec![
                        component(catalog::SYSTOLIC, sys),
                        component(catalog::DIASTOLIC, dia),
                        component(catalog::MEAN_ARTERIAL, mean),
                    ]),
                    flags,
                ),
                (
                    catalog::PULSE_RATE_NONINV,
                    quantity(
                        catalog::PULSE_RATE_NONINV,
                        Decimal::integer((b.pulse + noise(3.0)).round() as i64),
                    ),
                    vec![],
                ),
            ]
        }
        Kind::PulseOximeter => {
            let spo2 = if scenarios && n % SPO2_OUT_OF_RANGE_EVERY == 0 {
                // A sensor fault the device did not notice: impossible, so refused.
                101 + (n / SPO2_OUT_OF_RANGE_EVERY % 4) as i64
            } else {
                ((b.spo2 + noise(1.0)).round() as i64).min(100)
            };
            vec![
                (
                    catalog::SPO2,
                    quantity(catalog::SPO2, Decimal::integer(spo2)),
                    vec![],
                ),
                (
                    catalog::PULSE_RATE_OXIM,
                    quantity(
                        catalog::PULSE_RATE_OXIM,
                        Decimal::integer((b.pulse + noise(3.0)).round() as i64),
                    ),
                    vec![],
                ),
            ]
        }
        Kind::Thermometer => vec![(
            catalog::BODY_TEMPERATURE,
            quantity(
                catalog::BODY_TEMPERATURE,
                decimal(b.temperature + noise(0.15), 1),
            ),
            vec![],
        )],
        // 0.05 kg resolution, as a BLE weight scale reports it.
        Kind::Scale => vec![(
            catalog::BODY_WEIGHT,
            quantity(
                catalog::BODY_WEIGHT,
                decimal(((b.weight + noise(0.2)) * 20.0).round() / 20.0, 2),
            ),
            vec![],
        )],
        Kind::HeartRateStrap => vec![(
            catalog::HEART_RATE,
            quantity(
                catalog::HEART_RATE,
                Decimal::integer((b.pulse + 8.0 + noise(4.0)).round() as i64),
            ),
            vec![],
        )],
    }
}

fn devices(count: u32, bindings: &Bindings, scenarios: bool) -> Vec<SimDevice> {
    (0..count)
        .map(|i| {
            let (kind, tag, model) = KINDS[i as usize % KINDS.len()];
            let id = format!("SIM-{tag}-{:04}", i + 1);
            let unbound_demo = scenarios && count >= 2 && i + 1 == count;
            let patient = bindings.patient(&id).or_else(|| {
                (!unbound_demo).then(|| {
                    PatientRef::identifier(
                        "urn:vitalbridge:demo-patient",
                        format!("demo-{}", i + 1),
                    )
                })
            });
            // A patient's baseline depends on the device only, so it survives restarts.
            let mut rng = StdRng::seed_from_u64(0x5eed_0000 + u64::from(i));
            let start = Baseline::draw(&mut rng);
            SimDevice {
                kind,
                device: DeviceRef {
                    id: DeviceId::Other(id),
                    profile: PROFILE_ID.into(),
                    model: Some(model.into()),
                    manufacturer: Some("Vitalbridge simulator".into()),
                },
                patient,
                next_seq: 1,
                clock: !(scenarios && kind == Kind::Thermometer),
                start,
                now: start,
                measured: 0,
                rng: StdRng::from_rng(rand::thread_rng()).unwrap_or(rng),
            }
        })
        .collect()
}

/// Runs the simulator until `shutdown` or until `max_readings` were stored.
pub async fn run(config: SimConfig, ctx: SourceContext) {
    let SourceContext {
        ingest,
        bindings,
        shutdown,
        ..
    } = ctx;
    let mut devices = devices(config.devices, &bindings, config.scenarios);
    for d in &mut devices {
        if let Ok(Some(last)) = ingest.last_sequence(&d.device.id.key()).await {
            d.next_seq = last + 1;
            // The schedule of the scenarios goes on where it was.
            d.measured = last / readings_per_measurement(d.kind);
        }
    }
    let mut stored: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(config.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(
        devices = devices.len(),
        interval_ms = config.interval_ms,
        scenarios = config.scenarios,
        "simulator started"
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        for d in &mut devices {
            let now = OffsetDateTime::now_utc();
            let readings: Vec<Reading> = measure(d, config.scenarios)
                .into_iter()
                .map(|(metric, value, mut status)| {
                    let seq = d.next_seq;
                    d.next_seq += 1;
                    status.push(StatusFlag::TestData);
                    Reading {
                        device: d.device.clone(),
                        patient: d.patient.clone(),
                        metric,
                        value,
                        device_time: d.clock.then_some(now),
                        clock_offset: None,
                        received_at: now,
                        duration: None,
                        sequence: Some(seq),
                        status,
                        device_user: None,
                        bedside: None,
                        time_sync: None,
                    }
                })
                .collect();
            let n = readings.len() as u64;
            // A simulated device keeps its reading until the buffer takes it, like a real one.
            loop {
                match ingest.commit(readings.clone()).await {
                    Ok(_) => break,
                    Err(
                        CommitError::Full { .. }
                        | CommitError::LowSpace { .. }
                        | CommitError::Storage(_),
                    ) => {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                            _ = shutdown.cancelled() => return,
                        }
                    }
                    Err(CommitError::Closed) => return,
                }
            }
            stored += n;
            if config.max_readings > 0 && stored >= config.max_readings {
                tracing::info!(
                    readings = stored,
                    "simulator reached max_readings; stopping"
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(d: &mut SimDevice, n: usize) -> Vec<Vec<(Metric, Value, Vec<StatusFlag>)>> {
        (0..n).map(|_| measure(d, true)).collect()
    }

    fn number(v: &Value) -> f64 {
        match v {
            Value::Quantity(Quantity {
                value: Measured::Value(d),
                ..
            }) => d.to_string().parse().unwrap(),
            _ => panic!("not a number: {v:?}"),
        }
    }

    #[test]
    fn each_simulated_patient_keeps_a_coherent_baseline() {
        let mut devs = devices(5, &Bindings::default(), true);
        for d in &mut devs {
            let all = values(d, 300);
            if d.kind == Kind::Scale {
                let w: Vec<f64> = all.iter().map(|m| number(&m[0].1)).collect();
                let (lo, hi) = w
                    .iter()
                    .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
                assert!(hi - lo < 3.0, "a weight wanders {lo}..{hi}");
                for pair in w.windows(2) {
                    assert!((pair[1] - pair[0]).abs() < 1.5, "{pair:?}");
                }
            }
            if d.kind == Kind::BloodPressure {
                for m in &all {
                    let Value::Components(c) = &m[0].1 else {
                        panic!()
                    };
                    let (sys, dia) = (&c[0].quantity.value, &c[1].quantity.value);
                    let (Measured::Value(sys), Measured::Value(dia)) = (sys, dia) else {
                        panic!()
                    };
                    assert!(sys.mantissa > dia.mantissa, "{sys} over {dia}");
                }
                let loose = all
                    .iter()
                    .filter(|m| m[0].2.contains(&StatusFlag::CuffLoose))
                    .count();
                assert_eq!(loose as u64, 300 / CUFF_LOOSE_EVERY);
            }
            if d.kind == Kind::PulseOximeter {
                let high = all.iter().filter(|m| number(&m[0].1) > 100.0).count();
                assert_eq!(high as u64, 300 / SPO2_OUT_OF_RANGE_EVERY);
            }
        }
        assert!(
            devs[4].patient.is_none(),
            "the last device is the unbound one"
        );
        assert!(devs[..4].iter().all(|d| d.patient.is_some()));
        assert!(!devs[2].clock, "the thermometer has no clock");
    }

    #[test]
    fn without_scenarios_every_device_is_bound_clocked_and_plain() {
        let mut devs = devices(5, &Bindings::default(), false);
        assert!(devs.iter().all(|d| d.patient.is_some() && d.clock));
        for d in &mut devs {
            let kind = d.kind;
            for m in (0..60).map(|_| measure(d, false)) {
                assert!(m.iter().all(|(_, _, flags)| flags.is_empty()));
                if kind == Kind::PulseOximeter {
                    assert!(number(&m[0].1) <= 100.0);
                }
            }
        }
    }
}
