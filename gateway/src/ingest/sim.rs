//! The built-in simulator: N devices producing plausible readings at a fixed rate.
//!
//! Devices cycle through five kinds (BP cuff, pulse oximeter, thermometer, scale, heart-rate
//! strap) with ids like `SIM-BP-0001`. Every reading is marked test data (FHIR `HTEST`). A
//! device not bound to a patient in config is given a demo patient
//! (`urn:vitalbridge:demo-patient|demo-N`) so the demo output is complete FHIR.
//! Sequence numbers continue from the buffer's last stored one, so identifiers stay unique
//! across restarts.

use std::time::Duration;

use rand::Rng;
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

#[derive(Debug, Clone, Copy)]
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

struct SimDevice {
    kind: Kind,
    device: DeviceRef,
    patient: PatientRef,
    next_seq: u64,
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

/// The (metric, value) pairs one measurement of a device kind produces.
fn measure(kind: Kind, rng: &mut impl Rng) -> Vec<(Metric, Value)> {
    match kind {
        Kind::BloodPressure => {
            let sys = rng.gen_range(105..=145);
            let dia = rng.gen_range(65..=92);
            let mean = (sys + 2 * dia) / 3;
            vec![
                (
                    catalog::BLOOD_PRESSURE,
                    Value::Components(vec![
                        component(catalog::SYSTOLIC, sys),
                        component(catalog::DIASTOLIC, dia),
                        component(catalog::MEAN_ARTERIAL, mean),
                    ]),
                ),
                (
                    catalog::PULSE_RATE_NONINV,
                    quantity(
                        catalog::PULSE_RATE_NONINV,
                        Decimal::integer(rng.gen_range(55..=95)),
                    ),
                ),
            ]
        }
        Kind::PulseOximeter => vec![
            (
                catalog::SPO2,
                quantity(catalog::SPO2, Decimal::integer(rng.gen_range(93..=99))),
            ),
            (
                catalog::PULSE_RATE_OXIM,
                quantity(
                    catalog::PULSE_RATE_OXIM,
                    Decimal::integer(rng.gen_range(55..=95)),
                ),
            ),
        ],
        Kind::Thermometer => {
            vec![(
                catalog::BODY_TEMPERATURE,
                quantity(
                    catalog::BODY_TEMPERATURE,
                    Decimal::new(rng.gen_range(361..=374), -1),
                ),
            )]
        }
        // 0.005 kg resolution, as a BLE weight scale reports it.
        Kind::Scale => vec![(
            catalog::BODY_WEIGHT,
            quantity(
                catalog::BODY_WEIGHT,
                Decimal::new(rng.gen_range(11_000..=19_000) * 5, -3),
            ),
        )],
        Kind::HeartRateStrap => vec![(
            catalog::HEART_RATE,
            quantity(
                catalog::HEART_RATE,
                Decimal::integer(rng.gen_range(58..=110)),
            ),
        )],
    }
}

fn devices(count: u32, bindings: &Bindings) -> Vec<SimDevice> {
    (0..count)
        .map(|i| {
            let (kind, tag, model) = KINDS[i as usize % KINDS.len()];
            let id = format!("SIM-{tag}-{:04}", i + 1);
            let patient = bindings.patient(&id).unwrap_or_else(|| {
                PatientRef::identifier("urn:vitalbridge:demo-patient", format!("demo-{}", i + 1))
            });
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
    let mut devices = devices(config.devices, &bindings);
    for d in &mut devices {
        if let Ok(Some(last)) = ingest.last_sequence(&d.device.id.key()).await {
            d.next_seq = last + 1;
        }
    }
    let mut stored: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(config.interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(
        devices = devices.len(),
        interval_ms = config.interval_ms,
        "simulator started"
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        for d in &mut devices {
            let now = OffsetDateTime::now_utc();
            let readings: Vec<Reading> = measure(d.kind, &mut rand::thread_rng())
                .into_iter()
                .map(|(metric, value)| {
                    let seq = d.next_seq;
                    d.next_seq += 1;
                    Reading {
                        device: d.device.clone(),
                        patient: Some(d.patient.clone()),
                        metric,
                        value,
                        device_time: Some(now),
                        clock_offset: None,
                        received_at: now,
                        duration: None,
                        sequence: Some(seq),
                        status: vec![StatusFlag::TestData],
                        device_user: None,
                        bedside: None,
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
