//! Fuzzes the vendor JSON profile loader (`device-profiles/json-*.toml`) with arbitrary text;
//! a profile that loads then decodes its own example payloads again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use time::macros::datetime;
use vitalbridge::profile::json::registry::load;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(profile) = load(text, "fuzz") {
        for e in &profile.examples {
            if let Ok(message) = serde_json::from_str::<serde_json::Value>(&e.payload) {
                let _ = profile.decode(
                    &e.topic,
                    &message,
                    datetime!(2026-01-01 00:00:00 UTC),
                    &|_, _| None,
                );
            }
        }
    }
});
