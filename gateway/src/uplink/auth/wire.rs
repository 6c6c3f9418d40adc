//! The authorization server's answers, read: an access-token response and an error response
//! (RFC 6749 §5.1, §5.2) and a SMART configuration (`.well-known/smart-configuration`,
//! SMART App Launch 2.x "Conformance"); and a published key set (JWKS) an operator hands to
//! `vitalbridge uplink jwks --keep` during a key rotation.
//!
//! Outside bytes: every function returns an error for bad input and never panics, reads at
//! most [`MAX_BODY_BYTES`], keeps only bounded strings and lists, and is fuzzed
//! (`gateway/fuzz`, target `auth_wire`). A token is kept as a [`Secret`] at once, so neither
//! `Debug` nor an error message can show it; error texts quote nothing of the server's
//! answer but its `error` code and a clipped, escaped `error_description`.

use serde_json::Value as Json;

use super::Secret;

/// Largest token or discovery response read, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest access token accepted (a JWT with many scopes is a few KB).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Longest token lifetime believed, in seconds (a year); longer is capped.
pub const MAX_EXPIRES_IN_S: u64 = 365 * 24 * 3600;
/// Longest text kept from a server's answer (scopes, error descriptions, URLs).
const MAX_TEXT: usize = 2048;
/// Most entries kept of a list in a SMART configuration.
const MAX_LIST: usize = 64;

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Larger than [`MAX_BODY_BYTES`].
    #[error("answer of {0} bytes is larger than the {MAX_BODY_BYTES} bytes read")]
    TooLarge(usize),
    /// Not a JSON object.
    #[error("answer is not a JSON object")]
    NotAnObject,
    /// A member is missing or has the wrong type or value.
    #[error("{0}")]
    Member(String),
}

/// A successful token response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenResponse {
    /// The access token (redacted in `Debug`).
    pub access_token: Secret,
    /// Seconds the token is valid for, if the server said (capped at [`MAX_EXPIRES_IN_S`]).
    pub expires_in: Option<u64>,
    /// The scopes granted, if the server said.
    pub scope: Option<String>,
}

/// An OAuth error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    /// The `error` code (`invalid_client`, `invalid_scope`, …), printable ASCII only.
    pub error: String,
    /// The `error_description`, escaped and clipped.
    pub description: Option<String>,
}

/// The parts of a SMART configuration the gateway uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SmartConfiguration {
    /// `token_endpoint`, as written (the caller checks it is an `https://` URL).
    pub token_endpoint: String,
    /// `token_endpoint_auth_methods_supported`.
    pub auth_methods: Vec<String>,
    /// `token_endpoint_auth_signing_alg_values_supported`.
    pub signing_algs: Vec<String>,
    /// `grant_types_supported`.
    pub grant_types: Vec<String>,
}

fn object(body: &[u8]) -> Result<serde_json::Map<String, Json>, WireError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(WireError::TooLarge(body.len()));
    }
    match serde_json::from_slice::<Json>(body) {
        Ok(Json::Object(map)) => Ok(map),
        _ => Err(WireError::NotAnObject),
    }
}

/// `s` with control and non-ASCII characters escaped, at most [`MAX_TEXT`] characters.
pub fn printable(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() >= MAX_TEXT {
            out.push('…');
            break;
        }
        if (' '..='~').contains(&c) {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    out
}

fn optional_text(
    map: &serde_json::Map<String, Json>,
    name: &str,
) -> Result<Option<String>, WireError> {
    match map.get(name) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) if s.len() <= MAX_TEXT => Ok(Some(s.clone())),
        Some(Json::String(_)) => Err(WireError::Member(format!(
            "{name} is longer than {MAX_TEXT} bytes"
        ))),
        Some(_) => Err(WireError::Member(format!("{name} is not a string"))),
    }
}

/// Reads a 2xx token response: `access_token` (printable ASCII, no spaces, at most
/// [`MAX_TOKEN_LEN`]), `token_type` `Bearer` (any case), `expires_in` a positive integer
/// (a number or, as some servers send it, a string of digits).
pub fn parse_token_response(body: &[u8]) -> Result<TokenResponse, WireError> {
    let map = object(body)?;
    let token = match map.get("access_token") {
        Some(Json::String(t)) => t,
        Some(_) => return Err(WireError::Member("access_token is not a string".into())),
        None => return Err(WireError::Member("no access_token".into())),
    };
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(WireError::Member(format!(
            "access_token of {} bytes (1 to {MAX_TOKEN_LEN} accepted)",
            token.len()
        )));
    }
    if !token.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(WireError::Member(
            "access_token holds characters a bearer token cannot (RFC 6750 §2.1)".into(),
        ));
    }
    match map.get("token_type") {
        Some(Json::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        Some(Json::String(t)) => {
            return Err(WireError::Member(format!(
                "token_type {:?} is not Bearer",
                printable(t)
            )))
        }
        _ => return Err(WireError::Member("no token_type".into())),
    }
    let expires_in = match map.get("expires_in") {
        None | Some(Json::Null) => None,
        Some(Json::Number(n)) => Some(n.to_string()),
        Some(Json::String(s)) => Some(s.clone()),
        Some(_) => return Err(WireError::Member("expires_in is not a number".into())),
    };
    let expires_in = match expires_in {
        None => None,
        Some(text) => {
            let ok =
                !text.is_empty() && text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit());
            let seconds = ok.then(|| text.parse::<u64>().ok()).flatten();
            match seconds {
                Some(0) => {
                    return Err(WireError::Member(
                        "expires_in is 0: the token is expired already".into(),
                    ))
                }
                Some(s) => Some(s.min(MAX_EXPIRES_IN_S)),
                None => {
                    return Err(WireError::Member(format!(
                        "expires_in {:?} is not a whole number of seconds",
                        printable(&text)
                    )))
                }
            }
        }
    };
    Ok(TokenResponse {
        access_token: Secret::new(token.clone()),
        expires_in,
        scope: optional_text(&map, "scope")?,
    })
}

/// Reads an error response (any status); `None` when the body is not one.
pub fn parse_error_response(body: &[u8]) -> Option<ErrorResponse> {
    let map = object(body).ok()?;
    let error = match map.get("error") {
        Some(Json::String(e))
            if !e.is_empty() && e.len() <= 128 && e.bytes().all(|b| (0x20..=0x7e).contains(&b)) =>
        {
            e.clone()
        }
        _ => return None,
    };
    let description = match map.get("error_description") {
        Some(Json::String(d)) => Some(printable(d)),
        _ => None,
    };
    Some(ErrorResponse { error, description })
}

fn list(map: &serde_json::Map<String, Json>, name: &str) -> Result<Vec<String>, WireError> {
    match map.get(name) {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(items)) => Ok(items
            .iter()
            .take(MAX_LIST)
            .filter_map(Json::as_str)
            .filter(|s| s.len() <= 128)
            .map(str::to_owned)
            .collect()),
        Some(_) => Err(WireError::Member(format!("{name} is not a list"))),
    }
}

/// Reads a SMART configuration document: `token_endpoint` is required, the lists are
/// optional (at most 64 entries each are kept, entries that are not short strings skipped).
pub fn parse_smart_configuration(body: &[u8]) -> Result<SmartConfiguration, WireError> {
    let map = object(body)?;
    let token_endpoint = optional_text(&map, "token_endpoint")?
        .filter(|t| !t.is_empty())
        .ok_or_else(|| WireError::Member("no token_endpoint".into()))?;
    Ok(SmartConfiguration {
        token_endpoint,
        auth_methods: list(&map, "token_endpoint_auth_methods_supported")?,
        signing_algs: list(&map, "token_endpoint_auth_signing_alg_values_supported")?,
        grant_types: list(&map, "grant_types_supported")?,
    })
}

/// Most keys kept from a published JWKS.
pub const MAX_JWKS_KEYS: usize = 16;

/// The public keys of a published key set (`{"keys": [...]}`, RFC 7517 §5), for
/// `vitalbridge uplink jwks --keep`: each a JSON object with a string `kid` and `kty`, none
/// with a private member (`d`, `p`, `q`, `dp`, `dq`, `qi`, `oth`, `k`), at most
/// [`MAX_JWKS_KEYS`]. The keys are kept as they are (members unchecked beyond that).
pub fn parse_public_jwks(body: &[u8]) -> Result<Vec<Json>, WireError> {
    let map = object(body)?;
    let Some(Json::Array(keys)) = map.get("keys") else {
        return Err(WireError::Member("no \"keys\" array".into()));
    };
    if keys.len() > MAX_JWKS_KEYS {
        return Err(WireError::Member(format!(
            "{} keys; at most {MAX_JWKS_KEYS} are kept",
            keys.len()
        )));
    }
    let mut out = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let Json::Object(members) = key else {
            return Err(WireError::Member(format!("key {i} is not a JSON object")));
        };
        for name in ["kid", "kty"] {
            match members.get(name) {
                Some(Json::String(v)) if !v.is_empty() && v.len() <= MAX_TEXT => {}
                _ => {
                    return Err(WireError::Member(format!(
                        "key {i} has no usable \"{name}\""
                    )))
                }
            }
        }
        if let Some(private) = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"]
            .into_iter()
            .find(|m| members.contains_key(*m))
        {
            return Err(WireError::Member(format!(
                "key {i} holds a private or secret member (\"{private}\"): publish public keys only"
            )));
        }
        out.push(key.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_published_key_set_is_read_and_private_keys_are_refused() {
        let keys = parse_public_jwks(
            br#"{"keys":[{"kty":"EC","kid":"old","crv":"P-384","x":"a","y":"b"},{"kty":"RSA","kid":"older","n":"c","e":"AQAB"}]}"#,
        )
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1]["kid"], "older");
        for (bad, words) in [
            (
                &br#"{"keys":[{"kty":"EC","kid":"x","d":"s3cr3t-value"}]}"#[..],
                "private",
            ),
            (br#"{"keys":[{"kty":"EC"}]}"#, "kid"),
            (br#"{"keys":{}}"#, "keys"),
            (br#"[1]"#, "not a JSON object"),
            (br#"{"keys":[1]}"#, "not a JSON object"),
        ] {
            let e = parse_public_jwks(bad).unwrap_err().to_string();
            assert!(e.contains(words), "{e}");
            assert!(!e.contains("s3cr3t-value"), "{e}");
        }
    }

    proptest! {
        /// The fuzz target's properties, on stable: whatever the bytes, no panic, and an
        /// accepted token is one a bearer header can carry.
        #[test]
        fn any_bytes_are_read_or_refused(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(t) = parse_token_response(&data) {
                prop_assert!(t.access_token.expose().bytes().all(|b| (0x21..=0x7e).contains(&b)));
            }
            let _ = parse_error_response(&data);
            if let Ok(keys) = parse_public_jwks(&data) {
                prop_assert!(keys.len() <= MAX_JWKS_KEYS);
                prop_assert!(keys.iter().all(|k| k.get("d").is_none() && k["kid"].is_string()));
            }
            let _ = parse_smart_configuration(&data);
        }

        #[test]
        fn token_responses_with_any_member_values_are_read_or_refused(
            token in "[ -~\u{80}-\u{10ffff}]{0,40}",
            kind in "[A-Za-z ]{0,8}",
            expires in "-?[0-9]{0,24}(\\.[0-9])?|\"[0-9a-z]{0,24}\"|null|true|\\[\\]",
        ) {
            let body = format!(
                r#"{{"access_token":{},"token_type":{},"expires_in":{expires}}}"#,
                serde_json::Value::from(token.clone()),
                serde_json::Value::from(kind),
            );
            if let Ok(t) = parse_token_response(body.as_bytes()) {
                prop_assert_eq!(t.access_token.expose(), token.as_str());
                prop_assert!(t.expires_in.is_none_or(|s| (1..=MAX_EXPIRES_IN_S).contains(&s)));
            }
        }
    }

    #[test]
    fn a_token_response_is_read_and_its_token_never_shown() {
        let r = parse_token_response(
            br#"{"access_token":"eyJ.abc.def","token_type":"bearer","expires_in":300,"scope":"system/Observation.c"}"#,
        )
        .unwrap();
        assert_eq!(r.access_token.expose(), "eyJ.abc.def");
        assert_eq!(r.expires_in, Some(300));
        assert_eq!(r.scope.as_deref(), Some("system/Observation.c"));
        assert!(!format!("{r:?}").contains("eyJ"), "{r:?}");
        let r = parse_token_response(
            br#"{"access_token":"t","token_type":"Bearer","expires_in":"60"}"#,
        )
        .unwrap();
        assert_eq!(r.expires_in, Some(60));
        let r = parse_token_response(br#"{"access_token":"t","token_type":"Bearer"}"#).unwrap();
        assert_eq!(r.expires_in, None);
        let r = parse_token_response(
            br#"{"access_token":"t","token_type":"Bearer","expires_in":99999999999999}"#,
        )
        .unwrap();
        assert_eq!(r.expires_in, Some(MAX_EXPIRES_IN_S));
    }

    #[test]
    fn bad_token_responses_are_errors_that_quote_no_token() {
        for body in [
            &b""[..],
            b"[]",
            b"{",
            br#"{"token_type":"Bearer"}"#,
            br#"{"access_token":"","token_type":"Bearer"}"#,
            br#"{"access_token":"has space","token_type":"Bearer"}"#,
            br#"{"access_token":"t\u00e9","token_type":"Bearer"}"#,
            br#"{"access_token":"secret-t","token_type":"mac"}"#,
            br#"{"access_token":"secret-t"}"#,
            br#"{"access_token":"secret-t","token_type":"Bearer","expires_in":-5}"#,
            br#"{"access_token":"secret-t","token_type":"Bearer","expires_in":1.5}"#,
            br#"{"access_token":"secret-t","token_type":"Bearer","expires_in":0}"#,
            br#"{"access_token":"secret-t","token_type":"Bearer","expires_in":"soon"}"#,
            br#"{"access_token":"secret-t","token_type":"Bearer","expires_in":[]}"#,
            br#"{"access_token":7,"token_type":"Bearer"}"#,
        ] {
            let e = parse_token_response(body).unwrap_err();
            assert!(!e.to_string().contains("secret-t"), "{e}");
        }
        let big = format!(
            r#"{{"access_token":"{}","token_type":"Bearer"}}"#,
            "a".repeat(MAX_TOKEN_LEN + 1)
        );
        assert!(parse_token_response(big.as_bytes()).is_err());
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(
            parse_token_response(&huge),
            Err(WireError::TooLarge(MAX_BODY_BYTES + 1))
        );
    }

    #[test]
    fn error_responses_give_their_code_and_an_escaped_description() {
        let e = parse_error_response(
            br#"{"error":"invalid_client","error_description":"client \u001b[31m authentication failed"}"#,
        )
        .unwrap();
        assert_eq!(e.error, "invalid_client");
        assert_eq!(
            e.description.as_deref(),
            Some("client \\u{1b}[31m authentication failed")
        );
        assert_eq!(parse_error_response(b"<html>"), None);
        assert_eq!(parse_error_response(br#"{"error":5}"#), None);
    }

    #[test]
    fn a_smart_configuration_is_read() {
        let c = parse_smart_configuration(
            br#"{"token_endpoint":"https://auth.example/token","token_endpoint_auth_methods_supported":["private_key_jwt",3],
                "token_endpoint_auth_signing_alg_values_supported":["RS384","ES384"],"grant_types_supported":["client_credentials"],
                "capabilities":["permission-v2"]}"#,
        )
        .unwrap();
        assert_eq!(c.token_endpoint, "https://auth.example/token");
        assert_eq!(c.auth_methods, ["private_key_jwt"]);
        assert_eq!(c.signing_algs, ["RS384", "ES384"]);
        assert_eq!(c.grant_types, ["client_credentials"]);
        assert!(parse_smart_configuration(br#"{"issuer":"x"}"#).is_err());
        assert!(parse_smart_configuration(br#"{"token_endpoint":""}"#).is_err());
        assert!(parse_smart_configuration(
            br#"{"token_endpoint":"https://a","grant_types_supported":"client_credentials"}"#
        )
        .is_err());
    }
}
