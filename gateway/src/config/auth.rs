//! `[uplink.fhir.auth]`: how the FHIR uplink gets the access token a server asks for
//! (OAuth 2.0 client credentials, SMART Backend Services, or a static bearer token), its
//! table and its checks. What needs the key material itself (does the key parse, is it the
//! type the algorithm needs) is checked by `uplink::auth::check_config`.
//!
//! One flat table with a `method` rather than one table per method: a key that does not
//! belong to the chosen method is named as such instead of failing as "unknown field".

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::validate::{check_readable_key, Text};
use super::{err, ConfigError};
use crate::limits::{MAX_ID_LEN, MAX_PATH_LEN, MAX_TEXT_LEN, MAX_URL_LEN};

/// `[uplink.fhir.auth]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirAuthConfig {
    /// How the gateway authenticates: `private_key_jwt` (SMART Backend Services),
    /// `client_secret_basic`, `client_secret_post` or `static_token`.
    pub method: AuthMethod,
    /// The client id the authorization server registered for this gateway.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The token endpoint. Absent: read from `<base_url>/.well-known/smart-configuration`.
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// Scopes to ask for, space separated (e.g. `system/Observation.c system/Device.c
    /// system/Patient.rs`). Absent: none asked for, the server's default applies.
    #[serde(default)]
    pub scope: Option<String>,
    /// `private_key_jwt`: the private key signing the client assertion (PEM: PKCS#8, or
    /// PKCS#1 for RSA); owner-only.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// `private_key_jwt`: `RS384` or `ES384`. Absent: from the key's type.
    #[serde(default)]
    pub algorithm: Option<JwtAlgorithm>,
    /// `private_key_jwt`: the `kid` header. Absent: the key's RFC 7638 thumbprint.
    #[serde(default)]
    pub kid: Option<String>,
    /// `private_key_jwt`: the `jku` header, the URL where the gateway's JWKS is published.
    #[serde(default)]
    pub jku: Option<String>,
    /// `client_secret_basic`/`client_secret_post`: the file holding the client secret;
    /// owner-only.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// `static_token`: the file holding the bearer token; owner-only.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// RFC 8707 resource indicator sent with the token request, for servers that want one.
    #[serde(default)]
    pub resource: Option<String>,
    /// The CA trusted for the token endpoint (and discovery). Absent: `uplink.fhir.ca`.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Renew a token this many seconds before it expires (at most half its lifetime).
    #[serde(default = "default_refresh_before_s")]
    pub refresh_before_s: u64,
}

fn default_refresh_before_s() -> u64 {
    60
}

/// `uplink.fhir.auth.method`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// Client credentials with a signed JWT client assertion (RFC 7523, SMART Backend
    /// Services).
    PrivateKeyJwt,
    /// Client credentials, the secret in an HTTP Basic `Authorization` header.
    ClientSecretBasic,
    /// Client credentials, the secret in the form body.
    ClientSecretPost,
    /// A bearer token read from a file, sent as it is.
    StaticToken,
}

impl AuthMethod {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::StaticToken => "static_token",
        }
    }
}

/// `uplink.fhir.auth.algorithm`: the JWS algorithms SMART Backend Services requires servers
/// to support.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-384 (an RSA key of 2048 bits or more).
    RS384,
    /// ECDSA on P-384 with SHA-384.
    ES384,
}

impl JwtAlgorithm {
    /// The JWS `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::RS384 => "RS384",
            JwtAlgorithm::ES384 => "ES384",
        }
    }
}

impl fmt::Debug for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

const KEY: &str = "uplink.fhir.auth";

/// The strings and paths of the table, for the length check.
pub(super) fn texts(auth: &FhirAuthConfig, all: &mut Vec<Text>) {
    let key = |field: &str| format!("{KEY}.{field}");
    for (field, value, limit) in [
        ("client_id", &auth.client_id, MAX_ID_LEN),
        ("token_endpoint", &auth.token_endpoint, MAX_URL_LEN),
        ("scope", &auth.scope, MAX_TEXT_LEN),
        ("kid", &auth.kid, MAX_ID_LEN),
        ("jku", &auth.jku, MAX_URL_LEN),
        ("resource", &auth.resource, MAX_URL_LEN),
    ] {
        if let Some(value) = value {
            all.push((key(field), value.len(), limit));
        }
    }
    for (field, value) in [
        ("key", &auth.key),
        ("secret_file", &auth.secret_file),
        ("token_file", &auth.token_file),
        ("ca", &auth.ca),
    ] {
        if let Some(value) = value {
            all.push((key(field), value.as_os_str().len(), MAX_PATH_LEN));
        }
    }
}

/// Every secret path of the table (systemd credentials may name them).
pub(super) fn secret_paths_mut(
    auth: &mut FhirAuthConfig,
) -> Vec<(&'static str, &mut std::path::PathBuf)> {
    let mut paths = Vec::new();
    if let Some(p) = auth.key.as_mut() {
        paths.push(("uplink.fhir.auth.key", p));
    }
    if let Some(p) = auth.secret_file.as_mut() {
        paths.push(("uplink.fhir.auth.secret_file", p));
    }
    if let Some(p) = auth.token_file.as_mut() {
        paths.push(("uplink.fhir.auth.token_file", p));
    }
    if let Some(p) = auth.ca.as_mut() {
        paths.push(("uplink.fhir.auth.ca", p));
    }
    paths
}

/// An `https://` URL with a host, or why not.
pub(crate) fn check_https_url(value: &str) -> Result<(), String> {
    match url::Url::parse(value) {
        Err(e) => Err(format!("not a valid URL ({e})")),
        Ok(u) if u.scheme() != "https" => Err(format!("scheme {:?} is not https", u.scheme())),
        Ok(u) if u.host_str().is_none_or(str::is_empty) => Err("has no host".into()),
        Ok(u) if !u.username().is_empty() || u.password().is_some() => {
            Err("must not carry a user name or password: secrets go in files".into())
        }
        Ok(_) => Ok(()),
    }
}

/// Checks the table: the keys the method needs are there, those it does not use are not,
/// URLs are `https://`, files exist and secrets are owner-only.
pub(super) fn validate(auth: &FhirAuthConfig, problems: &mut Vec<ConfigError>) {
    let key = |field: &str| format!("{KEY}.{field}");
    let method = auth.method.as_str();
    let given = |field: &str| -> bool {
        match field {
            "client_id" => auth.client_id.is_some(),
            "token_endpoint" => auth.token_endpoint.is_some(),
            "scope" => auth.scope.is_some(),
            "key" => auth.key.is_some(),
            "algorithm" => auth.algorithm.is_some(),
            "kid" => auth.kid.is_some(),
            "jku" => auth.jku.is_some(),
            "secret_file" => auth.secret_file.is_some(),
            "token_file" => auth.token_file.is_some(),
            "resource" => auth.resource.is_some(),
            _ => false,
        }
    };
    let (required, unused): (&[&str], &[&str]) = match auth.method {
        AuthMethod::PrivateKeyJwt => (&["client_id", "key"], &["secret_file", "token_file"]),
        AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost => (
            &["client_id", "secret_file"],
            &["key", "algorithm", "kid", "jku", "token_file"],
        ),
        AuthMethod::StaticToken => (
            &["token_file"],
            &[
                "client_id",
                "token_endpoint",
                "scope",
                "key",
                "algorithm",
                "kid",
                "jku",
                "secret_file",
                "resource",
            ],
        ),
    };
    for field in required {
        if !given(field) {
            problems.push(err(
                &key(field),
                format!("is required with method = \"{method}\""),
            ));
        }
    }
    for field in unused {
        if given(field) {
            problems.push(err(
                &key(field),
                format!("is not used with method = \"{method}\"; remove it"),
            ));
        }
    }
    for (field, value) in [
        ("client_id", &auth.client_id),
        ("kid", &auth.kid),
        ("scope", &auth.scope),
    ] {
        match value.as_deref() {
            Some("") => problems.push(err(&key(field), "must not be empty")),
            Some(v) if v.chars().any(|c| !(' '..='~').contains(&c)) => problems.push(err(
                &key(field),
                "must be printable ASCII (RFC 6749 allows no other characters here)",
            )),
            _ => {}
        }
    }
    for (field, value) in [
        ("token_endpoint", &auth.token_endpoint),
        ("jku", &auth.jku),
        ("resource", &auth.resource),
    ] {
        if let Some(value) = value {
            if let Err(why) = check_https_url(value) {
                problems.push(err(&key(field), why));
            }
        }
    }
    for (field, path) in [
        ("key", &auth.key),
        ("secret_file", &auth.secret_file),
        ("token_file", &auth.token_file),
    ] {
        if let Some(path) = path {
            check_readable_key(&key(field), path, true, problems);
        }
    }
    if let Some(ca) = &auth.ca {
        check_readable_key(&key("ca"), ca, false, problems);
    }
    if auth.refresh_before_s > 3600 {
        problems.push(err(
            &key("refresh_before_s"),
            "must be at most 3600 (a token is renewed at the latest halfway through its life)",
        ));
    }
}
