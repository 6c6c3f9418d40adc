//! Fuzzes the canonical JSON reading format (MQTT payloads): arbitrary bytes through
//! `canonical::decode`, then every decoded reading through the admission check (units,
//! plausibility, time) and the FHIR mapping, as the gateway does with a payload from the
//! broker.
#![no_main]

use libfuzzer_sys::fuzz_target;
use time::macros::datetime;
use vitalbridge::fhir;
use vitalbridge::profile::{admission, canonical};

fuzz_target!(|data: &[u8]| {
    let received = datetime!(2026-01-01 00:00:00 UTC);
    if let Ok(readings) = canonical::decode(data, received, &|_, _| None) {
        let policy = admission::Policy::default();
        for mut r in readings {
            if policy.check(&mut r).is_ok() {
                let _ = fhir::observation(&r, "urn:uuid:device", "urn:uuid:gateway").to_string();
            }
        }
    }
});
