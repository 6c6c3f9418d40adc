//! Fuzzes the line-protocol path: arbitrary bytes through the line framer and every built-in
//! line profile's decoder (`profile::line`), in chunks whose size the first byte chooses.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use time::UtcOffset;
use vitalbridge::ingest::serial::lines::{Line, LineFramer};
use vitalbridge::profile::line::{LineProfile, Registry};

mod common;

static PROFILES: LazyLock<Vec<LineProfile>> = LazyLock::new(|| {
    let registry = Registry::built_in().expect("built-in profiles load");
    registry
        .ids()
        .iter()
        .map(|id| registry.get(id).expect("listed").clone())
        .collect()
});

fuzz_target!(|data: &[u8]| {
    let ctx = common::ctx();
    // The whole input as one line, with a fixed and a strange offset.
    for profile in PROFILES.iter() {
        for offset in [
            UtcOffset::UTC,
            UtcOffset::from_hms(-12, -30, 0).expect("offset"),
        ] {
            let _ = profile.decode(data, &ctx, offset);
        }
    }
    // The input as a byte stream, framed into lines.
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    for profile in PROFILES.iter() {
        let mut framer = LineFramer::new(profile.max_length);
        for piece in stream.chunks(usize::from(chunk).max(1)) {
            for line in framer.push(piece) {
                if let Line::Text(text) = line {
                    assert!(text.len() <= profile.max_length);
                    let _ = profile.decode(&text, &ctx, UtcOffset::UTC);
                }
            }
        }
    }
});
