//! Fuzzes the profile-pack manifest parser (`manifest.toml`, read before its signature is
//! checked: the key id says which key to check it with) and the version and hex parsers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalbridge::packs::{parse_public_key, parse_version, unhex, Manifest};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = Manifest::parse(text) {
        // What parses renders back to a manifest that parses to the same.
        assert_eq!(Manifest::parse(&m.to_toml()).ok().as_ref(), Some(&m));
    }
    let _ = parse_version(text);
    let _ = unhex(text);
    let _ = parse_public_key(text);
});
