//! Fuzzes vendor JSON payloads: arbitrary bytes on each shipped profile's topic (first byte
//! picks the profile) through the profile set's decoder, then the FHIR mapping of whatever
//! it decoded, as the MQTT source does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use time::macros::datetime;
use vitalbridge::fhir;
use vitalbridge::profile::json::ProfileSet;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    // Built once: loading checks every example, which would dominate each run.
    static SET: std::sync::OnceLock<Option<ProfileSet>> = std::sync::OnceLock::new();
    let Some(set) = SET.get_or_init(|| ProfileSet::built_in().ok()) else {
        return;
    };
    let profiles = set.profiles();
    let profile = &profiles[usize::from(pick) % profiles.len()];
    let topic = profile
        .examples
        .first()
        .map(|e| e.topic.clone())
        .unwrap_or_default();
    let received = datetime!(2026-01-01 00:00:00 UTC);
    if let Some(Ok(readings)) = set.decode(&topic, payload, received, &|_, _| None) {
        for r in &readings {
            let _ = fhir::observation(r, "urn:uuid:device", "urn:uuid:gateway").to_string();
        }
    }
});
