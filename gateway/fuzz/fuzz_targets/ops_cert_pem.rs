//! Fuzzes the certificate-file reader of the status page (PEM framing, then X.509 DER) and the
//! `ops.http.allow_from` network parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalbridge::config::Cidr;
use vitalbridge::ops::certs;

fuzz_target!(|data: &[u8]| {
    let _ = certs::parse_pem(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<Cidr>();
    }
});
