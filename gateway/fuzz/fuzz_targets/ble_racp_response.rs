//! Fuzzes the Record Access Control Point parsers (what a glucose meter indicates, and a
//! request as a meter would read it): any bytes must parse or fail, never panic; a parsed
//! response re-encodes to a value that parses to the same response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalbridge::profile::ble::racp;

fuzz_target!(|data: &[u8]| {
    if let Ok(response) = racp::Response::parse(data) {
        assert_eq!(racp::Response::parse(&response.encode()), Ok(response));
    }
    if let Some(request) = racp::parse_request(data) {
        assert_eq!(request.encode(), data);
    }
});
