//! Every shipped metric with a unit that fits it, a commensurable unit it is kept in, and a
//! unit of another dimension, through every way a unit enters: the canonical JSON decoder
//! (MQTT), a line profile (serial line devices, checked when the profile is loaded), and the
//! admission check every reading passes before the buffer (BLE decoders, firmware frames,
//! the simulator, HL7 v2 OBX units). One check, [`units::check_unit`], behind all three.

use time::macros::datetime;

use super::admission::Policy;
use super::plausibility::{Action, Plausibility};
use super::{canonical, catalog, line, units};
use crate::model::{Decimal, DeviceId, DeviceRef, Measured, Metric, Quantity, Reading, Value};

/// A commensurable unit other than the canonical one, and one of another dimension.
fn other_units(canonical: &str) -> (&'static str, &'static str) {
    match canonical {
        "mm[Hg]" => ("kPa", "kg"),
        "/min" => ("Hz", "kg"),
        "%" => ("1", "kg"),
        "1" => ("%", "kg"),
        "ms" => ("s", "kg"),
        "kJ" => ("kcal", "kg"),
        "Cel" => ("[degF]", "kg"),
        "kg" => ("[lb_av]", "Cel"),
        "g" => ("[oz_av]", "Cel"),
        "mg" => ("ug", "Cel"),
        "cm" => ("[in_i]", "kg"),
        "kg/m2" => ("g/cm2", "kg"),
        "mg/dL" => ("g/L", "kg"),
        "mmol/L" => ("umol/L", "kg"),
        "Ohm" => ("kOhm", "kg"),
        "mL/h" => ("L/h", "kg"),
        other => panic!("no alternative unit listed for {other}: add one"),
    }
}

fn reading(metric: &Metric, unit: &str) -> Reading {
    Reading {
        device: DeviceRef {
            id: DeviceId::Other("table".into()),
            profile: "test".into(),
            model: None,
            manufacturer: None,
        },
        patient: None,
        metric: metric.clone(),
        value: Value::Quantity(Quantity {
            value: Measured::Value(Decimal::integer(42)),
            unit: unit.into(),
        }),
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

/// What each way in says about `unit` for `metric`: `Ok(unit kept)` or `Err(reason)`.
fn through_every_source(metric: &Metric, unit: &str) -> [Result<String, String>; 3] {
    let json = format!(
        r#"{{"device":"table","metric":"{}","value":42,"unit":"{unit}"}}"#,
        metric.mdc
    );
    let canonical = canonical::decode(json.as_bytes(), datetime!(2026-11-25 12:00 UTC), &|_, _| {
        None
    })
    .map(|r| match &r[0].value {
        Value::Quantity(q) => q.unit.clone(),
        other => panic!("{other:?}"),
    })
    .map_err(|e| e.to_string());
    let toml = format!(
        "id = \"line-table\"\nname = \"t\"\nmanufacturer = \"t\"\nmodel = \"t\"\ndocumentation = \"t\"\n[serial]\nbaud = 9600\ndata_bits = 8\nparity = \"none\"\nstop_bits = 1\nflow_control = \"none\"\n[line]\nmax_length = 64\npattern = '(?<v>\\S+)'\n\
         [[metrics]]\nfield = \"v\"\nmetric = \"{}\"\nunit = \"{unit}\"\n",
        metric.mdc
    );
    let line = line::schema::ProfileFile::from_toml(&toml, "line-table.toml")
        .and_then(|f| f.compile("line-table.toml"))
        .map(|_| unit.to_owned())
        .map_err(|e| e.to_string());
    let policy = Policy {
        plausibility: Plausibility::new(Action::Off, vec![]),
        ..Policy::default()
    };
    let mut r = reading(metric, unit);
    let admission = policy
        .check(&mut r)
        .map(|()| unit.to_owned())
        .map_err(|e| e.reason);
    [canonical, line, admission]
}

#[test]
fn every_metric_with_a_fitting_a_commensurable_and_a_wrong_unit_through_every_source() {
    let mut checked = 0;
    for metric in catalog::ALL.iter().chain(catalog::VARIANTS) {
        let (commensurable, wrong) = other_units(metric.unit);
        for unit in [metric.unit, commensurable] {
            for (way, result) in ["canonical", "line", "admission"]
                .iter()
                .zip(through_every_source(metric, unit))
            {
                // Kept as the device sent it.
                assert_eq!(
                    result.as_deref(),
                    Ok(unit),
                    "{way}: {} in {unit}",
                    metric.mdc_ref
                );
            }
        }
        for (way, result) in ["canonical", "line", "admission"]
            .iter()
            .zip(through_every_source(metric, wrong))
        {
            let e = result.expect_err(&format!("{way}: {} in {wrong}", metric.mdc_ref));
            assert!(e.contains(metric.mdc_ref), "{way}: names the metric: {e}");
            let dimension = units::dimension(wrong).unwrap().name();
            assert!(e.contains(&dimension), "{way}: names the dimension: {e}");
            assert!(!e.contains("42"), "{way}: never the value: {e}");
        }
        checked += 1;
    }
    assert_eq!(checked, catalog::ALL.len() + catalog::VARIANTS.len());
}
