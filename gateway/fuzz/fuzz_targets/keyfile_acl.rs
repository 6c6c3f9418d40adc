//! Fuzzes the POSIX ACL extended-attribute decoder behind the private-key check: arbitrary
//! bytes through `parse_acl`, and what it accepts through `acl_exposure`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalbridge::keyfile;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = keyfile::parse_acl(data) {
        let _ = keyfile::acl_exposure(&entries, 0);
        let _ = keyfile::acl_exposure(&entries, 990);
    }
});
