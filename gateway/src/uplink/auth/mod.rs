//! The access token a FHIR server asks for (`[uplink.fhir.auth]`): OAuth 2.0 client
//! credentials (RFC 6749 §4.4) authenticated by `private_key_jwt` (RFC 7523, as SMART Backend
//! Services profiles it), `client_secret_basic` or `client_secret_post` (RFC 6749 §2.3.1), or
//! a static bearer token read from a file. `docs/auth.md` is the operator's side.
//!
//! The FHIR transport (`uplink::https`) asks [`Authorizer::bearer`] for the `Authorization`
//! header of each request, and on a 401 calls [`Authorizer::rejected`] and tries once more
//! with a fresh token; a 401/403 that persists is a transient failure, so rows stay in the
//! buffer and the uplink's last error (status page, `/readyz`) says why.
//!
//! - **Caching.** One token is shared by all workers; one task fetches at a time (the others
//!   wait for its answer). A token is renewed `refresh_before_s` before it expires, at most
//!   halfway through its life; lifetimes are counted on the monotonic clock from the
//!   moment the request was sent, from `expires_in`, so the server's and the gateway's wall
//!   clocks need not agree. A token without `expires_in` is kept five minutes.
//! - **Discovery.** Without `token_endpoint` the endpoint is read from
//!   `<base_url>/.well-known/smart-configuration` on first use, and read again after the
//!   token endpoint failed.
//! - **Secrets.** Keys, client secrets and static tokens are read from owner-only files
//!   (`crate::keyfile`), kept in [`Secret`]s (and a [`jwt::SigningKey`]), whose `Debug` is
//!   redacted, and are never logged or put into an error message; the `Authorization` header
//!   value is marked sensitive. A client secret refused (`invalid_client`) or a static token
//!   refused is read again from its file, and used if it changed: rotating either needs no
//!   restart.
//!
//! `wire.rs` reads the server's answers (pure, fuzzed), `jwt.rs` signs client assertions,
//! `http.rs` makes the one-off HTTPS requests.

pub mod http;
pub mod jwt;
pub mod wire;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::http::{header, HeaderValue, Method};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rustls::ClientConfig;

use crate::config::{AuthMethod, ConfigError, FhirAuthConfig, FhirUplinkConfig};
use crate::error_chain::Chain;
use crate::secret_file::Reread;
use jwt::SigningKey;

/// Largest secret file read (a key, a client secret, a token), in bytes.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;
/// Lifetime assumed for a token whose response has no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// The assertion type of RFC 7523 §2.2.
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A secret string: shown as `[redacted]` by `Debug`, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `s`.
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why the auth configuration's files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file is open to others, or unreadable.
    #[error("uplink.fhir.auth.{key}")]
    File {
        /// The key naming the file.
        key: &'static str,
        /// Why.
        #[source]
        source: crate::keyfile::KeyFileError,
    },
    /// The file's content is unusable.
    #[error("uplink.fhir.auth.{key} {}: {why}", .path.display())]
    Content {
        /// The key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong (never the content).
        why: String,
    },
    /// A URL is unusable (already checked by the config; kept for callers without it).
    #[error("uplink.fhir.auth.{key}: {why}")]
    Url {
        /// The key.
        key: &'static str,
        /// Why.
        why: String,
    },
    /// The CA for the token endpoint cannot be used.
    #[error("uplink.fhir.auth.ca")]
    Tls(#[source] crate::tls::TlsError),
}

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The SMART configuration could not be read.
    #[error("cannot discover the token endpoint from {url}: {why}")]
    Discovery {
        /// The `.well-known/smart-configuration` URL.
        url: String,
        /// Why.
        why: String,
    },
    /// The token endpoint did not answer.
    #[error("token endpoint {endpoint} unreachable: {why}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// Why.
        why: String,
        /// The TLS handshake's failure label, if it was that.
        tls: Option<&'static str>,
    },
    /// The token endpoint refused.
    #[error("token endpoint {endpoint} refused the gateway (HTTP {status}{}){}", .error.as_deref().map(|e| format!(", {e}")).unwrap_or_default(), advice(*.status, .error.as_deref()))]
    Refused {
        /// The endpoint.
        endpoint: String,
        /// Its status.
        status: u16,
        /// The OAuth `error` and `error_description`, escaped.
        error: Option<String>,
    },
    /// The token endpoint's answer is not a usable token response.
    #[error("token endpoint {endpoint} answered HTTP {status} with no usable token: {why}")]
    BadResponse {
        /// The endpoint.
        endpoint: String,
        /// Its status.
        status: u16,
        /// Why.
        why: String,
    },
    /// The token request could not be made (the client assertion could not be signed).
    #[error("cannot make the token request")]
    Request(#[from] jwt::SignError),
    /// The FHIR server refuses the static token.
    #[error("the FHIR server refused the static token from {} (HTTP {status}{}): replace the token file", .path.display(), .challenge.as_deref().map(|c| format!("; {c}")).unwrap_or_default())]
    StaticRefused {
        /// The token file.
        path: PathBuf,
        /// 401 or 403.
        status: u16,
        /// The server's `WWW-Authenticate`.
        challenge: Option<String>,
    },
}

fn advice(status: u16, error: Option<&str>) -> &'static str {
    let code = error.and_then(|e| e.split([':', ' ']).next()).unwrap_or("");
    match code {
        "invalid_client" => ": check client_id, the key or secret the server has registered for it, and the gateway's clock",
        "invalid_scope" => ": the server does not grant the scopes in uplink.fhir.auth.scope to this client",
        "unauthorized_client" => ": this client may not use the client_credentials grant",
        "invalid_grant" | "invalid_request" => ": the server did not accept the request; compare the method and scopes with its registration",
        _ if status >= 500 => ": the authorization server has a problem; the gateway keeps retrying",
        _ => "",
    }
}

impl AuthError {
    /// The TLS handshake's failure label, if a handshake failed.
    pub fn tls(&self) -> Option<&'static str> {
        match self {
            AuthError::Unreachable { tls, .. } => *tls,
            _ => None,
        }
    }

    /// A short, stable label for the metric and the audit log: `discovery_failed`,
    /// `token_endpoint_unreachable`, `token_refused`, `token_response_invalid`,
    /// `assertion_unsigned`, `static_token_refused`.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Discovery { .. } => "discovery_failed",
            AuthError::Unreachable { .. } => "token_endpoint_unreachable",
            AuthError::Refused { .. } => "token_refused",
            AuthError::BadResponse { .. } => "token_response_invalid",
            AuthError::Request(_) => "assertion_unsigned",
            AuthError::StaticRefused { .. } => "static_token_refused",
        }
    }
}

/// A client secret, read again from its file when the token endpoint refuses the client.
type SecretFile = Reread<Secret>;

fn read_client_secret(path: &Path) -> Result<Secret, LoadError> {
    read_line_secret("secret_file", path)
}

enum Credential {
    Basic(SecretFile),
    Post(SecretFile),
    Jwt {
        key: Box<SigningKey>,
        kid: String,
        jku: Option<String>,
    },
}

struct ClientCredentials {
    client_id: String,
    credential: Credential,
    scope: Option<String>,
    resource: Option<String>,
    token_endpoint: Option<url::Url>,
}

enum Kind {
    /// The token in use, read again from `path` when the server refuses it (an operator
    /// replaced the file).
    Static(Reread<HeaderValue>),
    Client(Box<ClientCredentials>),
}

/// A token in hand.
#[derive(Clone)]
pub struct Token {
    /// The `Authorization` header value (`Bearer …`), marked sensitive.
    pub header: HeaderValue,
    /// When to renew it.
    refresh_at: Option<Instant>,
    /// What the server said: lifetime and scopes.
    pub expires_in: Option<u64>,
    /// The scopes granted, if the server said.
    pub scope: Option<String>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("header", &"[redacted]")
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

#[derive(Default)]
struct State {
    token: Option<Token>,
    discovered: Option<url::Url>,
}

/// Gets, caches and renews the access token of one FHIR uplink.
pub struct Authorizer {
    kind: Kind,
    method: AuthMethod,
    base_url: url::Url,
    tls: Arc<ClientConfig>,
    timeout: Duration,
    refresh_before: Duration,
    state: tokio::sync::Mutex<State>,
}

impl fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorizer")
            .field("method", &self.method.as_str())
            .field("base_url", &self.base_url.as_str())
            .finish_non_exhaustive()
    }
}

/// Reads an owner-only secret file as text.
fn read_secret(key: &'static str, path: &Path) -> Result<String, LoadError> {
    crate::keyfile::check_private(path).map_err(|source| LoadError::File { key, source })?;
    let content = |why: String| LoadError::Content {
        key,
        path: path.to_owned(),
        why,
    };
    crate::limits::read_capped(path, MAX_SECRET_FILE_BYTES)
        .map_err(|e| content(format!("cannot be read: {}", Chain(&e))))
}

/// A one-line secret (client secret, token): trimmed, non-empty, printable ASCII.
fn read_line_secret(key: &'static str, path: &Path) -> Result<Secret, LoadError> {
    let text = read_secret(key, path)?;
    let line = text.trim();
    let content = |why: &str| LoadError::Content {
        key,
        path: path.to_owned(),
        why: why.to_owned(),
    };
    if line.is_empty() {
        return Err(content("is empty"));
    }
    if line.lines().count() > 1 || !line.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(content(
            "must hold one line of printable ASCII without spaces (the value itself is not shown)",
        ));
    }
    Ok(Secret::new(line.to_owned()))
}

/// The `Authorization` header value of the static token in `path`, marked sensitive.
fn static_token(path: &Path) -> Result<HeaderValue, LoadError> {
    let token = read_line_secret("token_file", path)?;
    let mut header = HeaderValue::try_from(format!("Bearer {}", token.expose())).map_err(|_| {
        LoadError::Content {
            key: "token_file",
            path: path.to_owned(),
            why: "is not a usable header value".into(),
        }
    })?;
    header.set_sensitive(true);
    Ok(header)
}

/// Reads the signing key of `private_key_jwt`.
pub fn load_signing_key(auth: &FhirAuthConfig) -> Result<Option<SigningKey>, LoadError> {
    let Some(path) = &auth.key else {
        return Ok(None);
    };
    let pem = read_secret("key", path)?;
    SigningKey::from_pem(pem.as_bytes(), auth.algorithm)
        .map(Some)
        .map_err(|e| LoadError::Content {
            key: "key",
            path: path.clone(),
            why: e.to_string(),
        })
}

/// The JWKS to publish for `private_key_jwt` (the public key only), or `None` for the other
/// methods; followed by `keep` (the keys of the key set published now, read with
/// [`wire::parse_public_jwks`]) except one with the configured key's `kid`: during a key
/// rotation the server must know the new key before the gateway signs with it, and the old
/// one until every token signed with it has expired.
pub fn public_jwks(
    auth: &FhirAuthConfig,
    keep: &[serde_json::Value],
) -> Result<Option<serde_json::Value>, LoadError> {
    Ok(load_signing_key(auth)?.map(|key| {
        let kid = auth.kid.clone().unwrap_or_else(|| key.thumbprint());
        let mut keys = vec![key.public_jwk(&kid)];
        keys.extend(keep.iter().filter(|k| k["kid"] != kid.as_str()).cloned());
        serde_json::json!({ "keys": keys })
    }))
}

/// What `check-config` checks beyond the config itself: the key parses and suits the
/// algorithm, the secret and token files hold one usable line.
pub fn check_config(fhir: &FhirUplinkConfig) -> Vec<ConfigError> {
    let Some(auth) = &fhir.auth else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    let mut push = |key: &str, e: LoadError| {
        // The mode problems were named by the config's own check already.
        if !matches!(e, LoadError::File { .. }) {
            problems.push(ConfigError::new(
                format!("uplink.fhir.auth.{key}"),
                Chain(&e).to_string(),
            ));
        }
    };
    if auth.method == AuthMethod::PrivateKeyJwt {
        if let Err(e) = load_signing_key(auth) {
            push("key", e);
        }
    }
    for (key, path) in [
        ("secret_file", &auth.secret_file),
        ("token_file", &auth.token_file),
    ] {
        if let Some(path) = path {
            if let Err(e) = read_line_secret(key, path) {
                push(key, e);
            }
        }
    }
    problems
}

/// How long after asking for a token of `lifetime` to renew it: `refresh_before` before it
/// expires, but at the latest halfway through its life.
fn renew_after(lifetime: Duration, refresh_before: Duration) -> Duration {
    lifetime - refresh_before.min(lifetime / 2)
}

fn https_url(key: &'static str, value: &str) -> Result<url::Url, LoadError> {
    crate::config::check_https_url(value).map_err(|why| LoadError::Url { key, why })?;
    url::Url::parse(value).map_err(|e| LoadError::Url {
        key,
        why: e.to_string(),
    })
}

impl Authorizer {
    /// The authorizer of `fhir`'s `[uplink.fhir.auth]`, or `None` without one. `tls` is the
    /// uplink's client config, used for the token endpoint unless `auth.ca` names another CA.
    pub fn from_config(
        fhir: &FhirUplinkConfig,
        tls: Arc<ClientConfig>,
    ) -> Result<Option<Arc<Authorizer>>, LoadError> {
        let Some(auth) = &fhir.auth else {
            return Ok(None);
        };
        let base_url = https_url("base_url", &fhir.base_url)?;
        let tls = match &auth.ca {
            Some(ca) => {
                crate::tls::client_config(ca, fhir.client_identity()).map_err(LoadError::Tls)?
            }
            None => tls,
        };
        let kind = match auth.method {
            AuthMethod::StaticToken => {
                let path = auth.token_file.clone().unwrap_or_default();
                Kind::Static(Reread::new(&path, static_token(&path)?))
            }
            method => {
                let credential = match method {
                    AuthMethod::PrivateKeyJwt => {
                        let key = load_signing_key(auth)?.ok_or(LoadError::Url {
                            key: "key",
                            why: "is required with method = \"private_key_jwt\"".into(),
                        })?;
                        let kid = auth.kid.clone().unwrap_or_else(|| key.thumbprint());
                        Credential::Jwt {
                            key: Box::new(key),
                            kid,
                            jku: auth.jku.clone(),
                        }
                    }
                    _ => {
                        let path = auth.secret_file.clone().unwrap_or_default();
                        let secret = Reread::new(&path, read_client_secret(&path)?);
                        if method == AuthMethod::ClientSecretBasic {
                            Credential::Basic(secret)
                        } else {
                            Credential::Post(secret)
                        }
                    }
                };
                let token_endpoint = auth
                    .token_endpoint
                    .as_deref()
                    .map(|t| https_url("token_endpoint", t))
                    .transpose()?;
                Kind::Client(Box::new(ClientCredentials {
                    client_id: auth.client_id.clone().unwrap_or_default(),
                    credential,
                    scope: auth.scope.clone(),
                    resource: auth.resource.clone(),
                    token_endpoint,
                }))
            }
        };
        Ok(Some(Arc::new(Authorizer {
            kind,
            method: auth.method,
            base_url,
            tls,
            timeout: Duration::from_secs(fhir.timeout_s.max(1)),
            refresh_before: Duration::from_secs(auth.refresh_before_s),
            state: tokio::sync::Mutex::new(State::default()),
        })))
    }

    /// The configured method.
    pub fn method(&self) -> AuthMethod {
        self.method
    }

    /// A token to send: the cached one while it is fresh, else a new one.
    pub async fn bearer(&self) -> Result<Token, AuthError> {
        let client = match &self.kind {
            Kind::Static(token) => {
                return Ok(Token {
                    header: token.get(),
                    refresh_at: None,
                    expires_in: None,
                    scope: None,
                });
            }
            Kind::Client(c) => c,
        };
        let mut state = self.state.lock().await;
        if let Some(token) = &state.token {
            if token.refresh_at.is_none_or(|at| Instant::now() < at) {
                return Ok(token.clone());
            }
        }
        let endpoint = match (&client.token_endpoint, &state.discovered) {
            (Some(configured), _) => configured.clone(),
            (None, Some(found)) => found.clone(),
            (None, None) => {
                let found = self.discover().await?;
                state.discovered = Some(found.clone());
                found
            }
        };
        let mut fetched = self.fetch(client, &endpoint).await;
        if let (
            Err(AuthError::Refused { error, .. }),
            Credential::Basic(file) | Credential::Post(file),
        ) = (&fetched, &client.credential)
        {
            if error
                .as_deref()
                .is_some_and(|e| e.starts_with("invalid_client"))
                && file.reread(read_client_secret)
            {
                tracing::info!(
                    "uplink auth: the client secret file changed; asking again with the new secret"
                );
                fetched = self.fetch(client, &endpoint).await;
            }
        }
        match fetched {
            Ok(token) => {
                tracing::info!(
                    endpoint = %endpoint,
                    expires_in = token.expires_in,
                    scope = token.scope.as_deref().unwrap_or(""),
                    "uplink auth: access token obtained"
                );
                state.token = Some(token.clone());
                Ok(token)
            }
            Err(e) => {
                state.token = None;
                if matches!(e, AuthError::Unreachable { .. }) {
                    state.discovered = None;
                }
                Err(e)
            }
        }
    }

    /// The server answered `status` (401 or 403) to a request carrying `used`: forget that
    /// token (unless another task renewed it already), so the next [`Self::bearer`] fetches
    /// a new one. `Err` when there is nothing to renew (a static token).
    pub async fn rejected(
        &self,
        used: &Token,
        status: u16,
        challenge: Option<String>,
    ) -> Result<(), AuthError> {
        if let Kind::Static(token) = &self.kind {
            if token.get() != used.header {
                return Ok(()); // another request already picked up a new token
            }
            // The operator may have put a new token into the file: use it; else the refusal
            // stands.
            if token.reread(static_token) {
                tracing::info!("uplink auth: the static token file changed; using the new token");
                return Ok(());
            }
            return Err(AuthError::StaticRefused {
                path: token.path().to_owned(),
                status,
                challenge,
            });
        }
        let mut state = self.state.lock().await;
        if state
            .token
            .as_ref()
            .is_some_and(|t| t.header == used.header)
        {
            state.token = None;
        }
        Ok(())
    }

    async fn discover(&self) -> Result<url::Url, AuthError> {
        let mut url = self.base_url.clone();
        let path = format!(
            "{}/.well-known/smart-configuration",
            url.path().trim_end_matches('/')
        );
        url.set_path(&path);
        let failed = |why: String| AuthError::Discovery {
            url: url.to_string(),
            why,
        };
        let response = http::request(
            &self.tls,
            Method::GET,
            &url,
            &[(header::ACCEPT, HeaderValue::from_static("application/json"))],
            None,
            self.timeout,
            wire::MAX_BODY_BYTES,
        )
        .await
        .map_err(|e| failed(e.to_string()))?;
        if response.status != 200 {
            return Err(failed(format!("HTTP {}", response.status)));
        }
        let config =
            wire::parse_smart_configuration(&response.body).map_err(|e| failed(e.to_string()))?;
        let endpoint = https_url("token_endpoint", &config.token_endpoint)
            .map_err(|e| failed(format!("its {}", Chain(&e))))?;
        tracing::info!(endpoint = %endpoint, "uplink auth: token endpoint discovered");
        let method = self.method.as_str();
        if !config.auth_methods.is_empty() && !config.auth_methods.iter().any(|m| m == method) {
            tracing::warn!(
                method,
                "uplink auth: the server's SMART configuration does not list this client authentication method"
            );
        }
        if let Kind::Client(client) = &self.kind {
            if let Credential::Jwt { key, .. } = &client.credential {
                let alg = key.algorithm().as_str();
                if !config.signing_algs.is_empty() && !config.signing_algs.iter().any(|a| a == alg)
                {
                    tracing::warn!(
                        alg,
                        "uplink auth: the server's SMART configuration does not list this signing algorithm"
                    );
                }
            }
        }
        Ok(endpoint)
    }

    /// The form and headers of a token request to `endpoint`.
    fn token_request(
        client: &ClientCredentials,
        endpoint: &url::Url,
    ) -> Result<(String, Vec<(header::HeaderName, HeaderValue)>), AuthError> {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if let Some(scope) = &client.scope {
            form.append_pair("scope", scope);
        }
        if let Some(resource) = &client.resource {
            form.append_pair("resource", resource);
        }
        let mut headers = vec![(header::ACCEPT, HeaderValue::from_static("application/json"))];
        match &client.credential {
            Credential::Basic(file) => {
                let secret = file.get();
                // RFC 6749 §2.3.1: both parts form-encoded before the Basic encoding.
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                let pair = format!("{}:{}", enc(&client.client_id), enc(secret.expose()));
                let mut value = HeaderValue::try_from(format!("Basic {}", STANDARD.encode(pair)))
                    .map_err(|_| AuthError::Request(jwt::SignError))?;
                value.set_sensitive(true);
                headers.push((header::AUTHORIZATION, value));
            }
            Credential::Post(file) => {
                let secret = file.get();
                form.append_pair("client_id", &client.client_id);
                form.append_pair("client_secret", secret.expose());
            }
            Credential::Jwt { key, kid, jku } => {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                let claims = jwt::assertion_claims(&client.client_id, endpoint.as_str(), now);
                let assertion = key.jws(kid, jku.as_deref(), &claims)?;
                form.append_pair("client_assertion_type", JWT_BEARER);
                form.append_pair("client_assertion", &assertion);
            }
        }
        Ok((form.finish(), headers))
    }

    async fn fetch(
        &self,
        client: &ClientCredentials,
        endpoint: &url::Url,
    ) -> Result<Token, AuthError> {
        let (form, headers) = Self::token_request(client, endpoint)?;
        let sent = Instant::now();
        let response = http::request(
            &self.tls,
            Method::POST,
            endpoint,
            &headers,
            Some(form),
            self.timeout,
            wire::MAX_BODY_BYTES,
        )
        .await
        .map_err(|e| AuthError::Unreachable {
            endpoint: endpoint.to_string(),
            tls: match &e {
                http::HttpError::Failed { tls, .. } => *tls,
                http::HttpError::Url(_) => None,
            },
            why: e.to_string(),
        })?;
        if !(200..=299).contains(&response.status) {
            let error = wire::parse_error_response(&response.body).map(|e| match e.description {
                Some(d) => format!("{}: {d}", e.error),
                None => e.error,
            });
            return Err(AuthError::Refused {
                endpoint: endpoint.to_string(),
                status: response.status,
                error,
            });
        }
        let parsed =
            wire::parse_token_response(&response.body).map_err(|e| AuthError::BadResponse {
                endpoint: endpoint.to_string(),
                status: response.status,
                why: e.to_string(),
            })?;
        let mut header = HeaderValue::try_from(format!("Bearer {}", parsed.access_token.expose()))
            .map_err(|_| AuthError::BadResponse {
                endpoint: endpoint.to_string(),
                status: response.status,
                why: "access_token is no header value".into(),
            })?;
        header.set_sensitive(true);
        let lifetime = parsed
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_LIFETIME);
        Ok(Token {
            header,
            refresh_at: Some(sent + renew_after(lifetime, self.refresh_before)),
            expires_in: parsed.expires_in,
            scope: parsed.scope,
        })
    }

    /// `GET <base>/metadata` with a token, for `vitalbridge uplink test`: the status and body.
    pub async fn read_metadata(
        base_url: &str,
        tls: &Arc<ClientConfig>,
        token: Option<&Token>,
        timeout: Duration,
    ) -> Result<http::Response, http::HttpError> {
        let mut url = url::Url::parse(base_url).map_err(|e| http::HttpError::Url(e.to_string()))?;
        let path = format!("{}/metadata", url.path().trim_end_matches('/'));
        url.set_path(&path);
        let mut headers = vec![(
            header::ACCEPT,
            HeaderValue::from_static("application/fhir+json"),
        )];
        if let Some(token) = token {
            headers.push((header::AUTHORIZATION, token.header.clone()));
        }
        http::request(
            tls,
            Method::GET,
            &url,
            &headers,
            None,
            timeout,
            8 * 1024 * 1024,
        )
        .await
    }
}

#[cfg(test)]
mod tests;
