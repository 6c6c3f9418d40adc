//! Fuzzes the unit check (`profile::units`): arbitrary text as the unit of every metric, and
//! as both ends of a conversion. Units come from payloads, line profiles, firmware frames and
//! HL7 v2 OBX-6.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalbridge::model::Decimal;
use vitalbridge::profile::{catalog, units};

fuzz_target!(|data: &[u8]| {
    let Ok(unit) = std::str::from_utf8(data) else {
        return;
    };
    for metric in catalog::ALL {
        let _ = units::check_unit(metric, unit);
    }
    let _ = units::convert(Decimal::new(1234, -1), unit, "kg");
    let _ = units::convert(Decimal::new(1234, -1), "Cel", unit);
});
