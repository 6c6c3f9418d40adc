//! Fuzzes the line-profile loader (`device-profiles/line-*.toml`) with arbitrary text; a
//! profile that loads then decodes its own documented example lines again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use time::UtcOffset;
use vitalbridge::profile::line::schema::ProfileFile;

mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = ProfileFile::from_toml(text, "fuzz") else {
        return;
    };
    if let Ok(profile) = file.compile("fuzz") {
        for example in &profile.examples {
            let _ = profile.decode(example.line.as_bytes(), &common::ctx(), UtcOffset::UTC);
        }
    }
});
