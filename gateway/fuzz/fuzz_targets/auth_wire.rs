//! Fuzzes the readers of an authorization server's answers (`uplink::auth::wire`): a token
//! response, an error response and a SMART configuration; and of a published JWKS. An
//! accepted token must be one a bearer header can carry; an accepted key set holds no
//! private key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vitalbridge::auth_wire;

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = auth_wire::parse_token_response(data) {
        let t = token.access_token.expose();
        assert!(!t.is_empty() && t.len() <= auth_wire::MAX_TOKEN_LEN);
        assert!(t.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        assert!(token
            .expires_in
            .is_none_or(|s| s > 0 && s <= auth_wire::MAX_EXPIRES_IN_S));
    }
    let _ = auth_wire::parse_error_response(data);
    if let Ok(config) = auth_wire::parse_smart_configuration(data) {
        assert!(!config.token_endpoint.is_empty());
    }
    if let Ok(keys) = auth_wire::parse_public_jwks(data) {
        assert!(keys.len() <= auth_wire::MAX_JWKS_KEYS);
        assert!(keys
            .iter()
            .all(|k| k.get("d").is_none() && k["kid"].is_string()));
    }
});
