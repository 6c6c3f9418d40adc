//! The FHIR uplink: HTTP/1.1 over mutual TLS (hyper + tokio-rustls), one transaction (or
//! batch) Bundle per POST to the FHIR base URL.
//!
//! Response handling, per the FHIR RESTful API:
//! - 2xx with a `transaction-response`/`batch-response` Bundle: each Observation entry's
//!   `response.status` decides its row: 2xx delivered (201 created, or 200 because
//!   `ifNoneExist` matched an existing resource), 408/429/5xx retried, other 4xx dead-lettered
//!   with the entry's OperationOutcome text.
//! - 400, 409, 412, 413, 422 for the whole Bundle: refused (the batcher splits the batch to
//!   find the reading at fault; when both halves pass, it was the size, and the batcher
//!   remembers the size that passed).
//! - `max_entries` / `max_request_bytes` ([`Limits`]): a batch is cut into Bundles within
//!   them before anything is sent ([`Transport::fit`]).
//! - 408, 429, 5xx, 401/403/404 (a server or credentials problem, not the data's), timeouts,
//!   connection and TLS errors: retried with backoff, honouring `Retry-After`.
//!
//! Connections are kept alive and reused; a connection that failed is dropped.
//!
//! With `[uplink.fhir.auth]` every request carries the access token of an
//! [`auth::Authorizer`](super::auth::Authorizer); a 401 renews it once and the Bundle is
//! sent again (a conditional create makes that harmless); a 401/403 that remains is a
//! transient failure naming the cause, so the rows stay buffered.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value as Json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::auth::{AuthError, Authorizer};
use super::{parse_retry_after, Cause, Outcome, Refusal, SendError, Transport};
use crate::error_chain::Chain;
use crate::fhir::{self, BundleType, EntryRole, Gateway, PatientMode};
use crate::model::Reading;

/// Largest response body read, in bytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Why the transport could not be set up: the base URL is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// It is not a URL.
    #[error("uplink.fhir.base_url is not a URL")]
    Url(#[source] url::ParseError),
    /// It is not `https://`.
    #[error("uplink.fhir.base_url must be https")]
    NotHttps,
    /// It names no host.
    #[error("uplink.fhir.base_url has no host")]
    NoHost,
    /// Its host is no name a certificate can be checked against.
    #[error("uplink.fhir.base_url has a host TLS cannot check")]
    ServerName(#[source] rustls_pki_types::InvalidDnsNameError),
}

/// The request limits configured for a server (`uplink.fhir.max_entries`,
/// `max_request_bytes`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Most entries in one Bundle, Devices included.
    pub entries: Option<usize>,
    /// Most bytes in one request body.
    pub bytes: Option<usize>,
}

/// Sends Bundles to a FHIR server.
pub struct FhirTransport {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    host: String,
    port: u16,
    /// `Host` header value.
    authority: String,
    /// Request path of the base URL (`/fhir`).
    path: String,
    timeout: Duration,
    bundle_type: BundleType,
    /// How subjects name patients bound by identifier.
    patients: PatientMode,
    limits: Limits,
    gateway: Gateway,
    /// Idle keep-alive connections.
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    /// The access token's source, with `[uplink.fhir.auth]`.
    auth: Option<Arc<Authorizer>>,
}

/// An HTTP answer to a POST.
struct Answer {
    status: StatusCode,
    retry_after: Option<Duration>,
    /// `WWW-Authenticate`, escaped and clipped.
    challenge: Option<String>,
    body: Bytes,
}

/// A token that could not be had (or renewed) as a transient failure: the rows stay.
fn auth_failure(e: AuthError) -> SendError {
    let cause = match e.tls() {
        Some(label) => Cause::Tls(label),
        None => Cause::Auth(e.label()),
    };
    transient(format!("authorization: {}", Chain(&e)), None, cause)
}

fn transient(reason: String, retry_after: Option<Duration>, cause: Cause) -> SendError {
    SendError::Transient {
        reason,
        retry_after,
        cause,
    }
}

impl FhirTransport {
    /// A transport for `base_url` using the client TLS config `tls`, sending Bundles of
    /// `bundle_type` whose subjects name patients the `patients` way.
    pub fn new(
        base_url: &str,
        tls: Arc<ClientConfig>,
        timeout: Duration,
        (bundle_type, patients): (BundleType, PatientMode),
        limits: Limits,
        gateway: Gateway,
    ) -> Result<Self, SetupError> {
        let url = url::Url::parse(base_url).map_err(SetupError::Url)?;
        if url.scheme() != "https" {
            return Err(SetupError::NotHttps);
        }
        let host = url.host_str().ok_or(SetupError::NoHost)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        let server_name = ServerName::try_from(host.clone()).map_err(SetupError::ServerName)?;
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let path = if url.path().is_empty() {
            "/".to_owned()
        } else {
            url.path().to_owned()
        };
        Ok(Self {
            connector: TlsConnector::from(tls),
            server_name,
            host,
            port,
            authority,
            path,
            timeout,
            bundle_type,
            patients,
            limits,
            gateway,
            idle: Mutex::new(Vec::new()),
            auth: None,
        })
    }

    /// Sends every request with an access token from `auth`.
    pub fn with_auth(mut self, auth: Option<Arc<Authorizer>>) -> Self {
        self.auth = auth;
        self
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, SendError> {
        let tcp = tokio::time::timeout(
            self.timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| {
            transient(
                format!("connect to {}:{} timed out", self.host, self.port),
                None,
                Cause::Other,
            )
        })?
        .map_err(|e| {
            transient(
                format!(
                    "cannot connect to {}:{}: {}",
                    self.host,
                    self.port,
                    Chain(&e)
                ),
                None,
                Cause::Other,
            )
        })?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio::time::timeout(
            self.timeout,
            self.connector.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| {
            transient(
                "TLS handshake timed out".into(),
                None,
                Cause::Tls("timeout"),
            )
        })?
        .map_err(|e| {
            let cause = Cause::Tls(crate::tls::io_cause_label(&e));
            transient(crate::tls::explain(&e), None, cause)
        })?;
        let (sender, conn) = http1::handshake(TokioIo::new(tls)).await.map_err(|e| {
            transient(
                format!("HTTP handshake failed: {}", Chain(&e)),
                None,
                Cause::Other,
            )
        })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn connection(&self) -> Result<SendRequest<Full<Bytes>>, SendError> {
        loop {
            let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
            match idle {
                Some(mut s) if !s.is_closed() => {
                    if s.ready().await.is_ok() {
                        return Ok(s);
                    }
                }
                Some(_) => continue,
                None => return self.connect().await,
            }
        }
    }

    /// Posts `body` with the access token, if there is `[uplink.fhir.auth]`: a 401 renews
    /// the token once and sends again; a 401/403 that remains is a transient failure.
    async fn post_authorized(&self, body: Bytes) -> Result<Answer, SendError> {
        let Some(auth) = &self.auth else {
            return self.post(body, None).await;
        };
        let mut token = auth.bearer().await.map_err(auth_failure)?;
        let mut answer = self.post(body.clone(), Some(&token.header)).await?;
        if answer.status == StatusCode::UNAUTHORIZED {
            tracing::info!("uplink auth: the FHIR server answered 401; renewing the token once");
            auth.rejected(&token, 401, answer.challenge.clone())
                .await
                .map_err(auth_failure)?;
            token = auth.bearer().await.map_err(auth_failure)?;
            answer = self.post(body, Some(&token.header)).await?;
        }
        let status = answer.status.as_u16();
        if matches!(status, 401 | 403) {
            auth.rejected(&token, status, answer.challenge.clone())
                .await
                .map_err(auth_failure)?;
            let challenge = answer
                .challenge
                .as_deref()
                .map(|c| format!("; {c}"))
                .unwrap_or_default();
            let advice = if status == 401 {
                "a fresh token was refused too: check that the server trusts this \
                 authorization server and the token's audience"
            } else {
                "the token lacks a permission: check uplink.fhir.auth.scope and what the \
                 server granted this client"
            };
            return Err(transient(
                format!(
                    "authorization: the FHIR server refused the access token (HTTP {status}{challenge}): {advice}"
                ),
                answer.retry_after,
                Cause::Auth(if status == 401 { "server_401" } else { "server_403" }),
            ));
        }
        Ok(answer)
    }

    async fn post(
        &self,
        body: Bytes,
        authorization: Option<&HeaderValue>,
    ) -> Result<Answer, SendError> {
        let mut sender = self.connection().await?;
        let mut request = Request::post(self.path.as_str());
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = request
            .header(header::HOST, self.authority.as_str())
            .header(header::CONTENT_TYPE, "application/fhir+json")
            .header(header::ACCEPT, "application/fhir+json")
            .header(
                header::USER_AGENT,
                concat!("vitalbridge/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| {
                transient(
                    format!("cannot build request: {}", Chain(&e)),
                    None,
                    Cause::Other,
                )
            })?;
        let exchange = async {
            let response = sender.send_request(request).await.map_err(|e| {
                // Under TLS 1.3 a server refusing the client certificate says so (an alert)
                // after the client's handshake is done: it arrives here, with the response.
                match crate::tls::rustls_cause(&e) {
                    Some(tls) => transient(
                        crate::tls::explain_rustls(tls),
                        None,
                        Cause::Tls(crate::tls::cause_label(tls)),
                    ),
                    None => transient(
                        format!(
                            "request failed (the server may have stored it; retrying is safe): {}",
                            Chain(&e)
                        ),
                        None,
                        Cause::Other,
                    ),
                }
            })?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let challenge = response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .map(|v| super::auth::wire::printable(&String::from_utf8_lossy(v.as_bytes())));
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    transient(
                        format!("reading response failed: {}", Chain(&*e)),
                        None,
                        Cause::Other,
                    )
                })?
                .to_bytes();
            Ok::<_, SendError>(Answer {
                status,
                retry_after,
                challenge,
                body,
            })
        };
        let result = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                transient(
                    format!(
                        "no response within {}s (retrying is safe)",
                        self.timeout.as_secs()
                    ),
                    None,
                    Cause::Other,
                )
            })??;
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(sender);
        }
        Ok(result)
    }
}

/// Text of an OperationOutcome (diagnostics and details), for dead-letter reasons.
pub fn outcome_text(outcome: &Json) -> String {
    let mut parts = Vec::new();
    if let Some(issues) = outcome.get("issue").and_then(Json::as_array) {
        for issue in issues {
            let severity = issue
                .get("severity")
                .and_then(Json::as_str)
                .unwrap_or("error");
            let text = issue
                .get("diagnostics")
                .and_then(Json::as_str)
                .or_else(|| issue.pointer("/details/text").and_then(Json::as_str))
                .or_else(|| issue.get("code").and_then(Json::as_str))
                .unwrap_or("");
            parts.push(format!("{severity}: {text}"));
        }
    }
    if parts.is_empty() {
        "no OperationOutcome".to_owned()
    } else {
        parts.join("; ")
    }
}

fn status_code(text: &str) -> Option<u16> {
    text.split_whitespace().next()?.parse().ok()
}

/// The parts of a `transaction-response`/`batch-response` Bundle the uplink reads. Everything
/// else (echoed resources, links) is skipped without being built.
#[derive(Deserialize)]
struct ResponseBundle<'a> {
    /// Each entry is read on its own, so one malformed entry costs only its own row.
    #[serde(default, borrow)]
    entry: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct ResponseEntry<'a> {
    #[serde(default, borrow)]
    response: Option<EntryResponse<'a>>,
}

#[derive(Deserialize)]
struct EntryResponse<'a> {
    #[serde(default, borrow)]
    status: Cow<'a, str>,
    /// Kept unparsed until an entry is refused and its reason is needed.
    #[serde(default, borrow)]
    outcome: Option<&'a RawValue>,
}

/// Maps a 2xx transaction/batch-response to per-row outcomes, in row order.
fn entry_outcomes(roles: &[EntryRole], body: &[u8], kind: BundleType) -> Vec<Outcome> {
    let rows = roles
        .iter()
        .filter(|r| matches!(r, EntryRole::Observation(_)))
        .count();
    let parsed: Option<ResponseBundle> = serde_json::from_slice(body).ok();
    let Some(entries) = parsed.map(|b| b.entry).filter(|e| e.len() == roles.len()) else {
        // A 2xx transaction is all-or-nothing: committed. A batch without a readable response
        // tells nothing per entry: retry (idempotent).
        return match kind {
            BundleType::Transaction => vec![Outcome::Delivered; rows],
            BundleType::Batch => vec![Outcome::Retry("unreadable batch-response".into()); rows],
        };
    };
    roles
        .iter()
        .zip(entries)
        .filter(|(role, _)| matches!(role, EntryRole::Observation(_)))
        .map(|(_, raw)| {
            let entry = serde_json::from_str::<ResponseEntry>(raw.get()).ok();
            let response = entry.as_ref().and_then(|e| e.response.as_ref());
            let status = response.map(|r| r.status.as_ref()).unwrap_or("");
            match status_code(status) {
                Some(200..=299) => Outcome::Delivered,
                Some(408 | 429) | Some(500..=599) | None => {
                    Outcome::Retry(format!("entry status {status:?}"))
                }
                Some(code) => {
                    let why = response
                        .and_then(|r| r.outcome)
                        .and_then(|raw| serde_json::from_str::<Json>(raw.get()).ok())
                        .map(|o| outcome_text(&o))
                        .unwrap_or_default();
                    // A number that is no HTTP status still refuses the entry, without one.
                    let code = Some(code).filter(|c| (100..=599).contains(c));
                    Outcome::Rejected(Refusal::new(code, format!("{status}: {why}")))
                }
            }
        })
        .collect()
}

impl Transport for FhirTransport {
    fn name(&self) -> &'static str {
        "fhir"
    }

    fn fit(&self, rows: &[(i64, &Reading)]) -> usize {
        let mut fits = rows.len();
        if let Some(max) = self.limits.entries {
            fits = fhir::rows_within_entries(rows, max, self.patients);
        }
        if let Some(max) = self.limits.bytes {
            // Measured, not estimated: map the candidate and shrink it in proportion until
            // its body fits (a reading's entry is a few KiB, so this converges at once).
            loop {
                if fits <= 1 {
                    break;
                }
                let len = fhir::bundle(
                    &self.gateway,
                    &rows[..fits],
                    self.bundle_type,
                    self.patients,
                )
                .body
                .len();
                if len <= max {
                    break;
                }
                let scaled = (fits as u128 * max as u128 / len as u128) as usize;
                fits = scaled.min(fits - 1).max(1);
            }
        }
        fits.max(1)
    }

    async fn send(&self, rows: &[(i64, &Reading)]) -> Result<Vec<Outcome>, SendError> {
        let mapped = fhir::bundle(&self.gateway, rows, self.bundle_type, self.patients);
        let Answer {
            status,
            retry_after,
            body: response,
            ..
        } = self.post_authorized(Bytes::from(mapped.body)).await?;
        match status.as_u16() {
            200..=299 => Ok(entry_outcomes(&mapped.roles, &response, self.bundle_type)),
            400 | 409 | 412 | 413 | 422 => {
                let why = serde_json::from_slice::<Json>(&response)
                    .map(|o| outcome_text(&o))
                    .unwrap_or_default();
                Err(SendError::Refused(Refusal::new(
                    Some(status.as_u16()),
                    format!("HTTP {status}: {why}"),
                )))
            }
            code => Err(transient(
                format!("server answered HTTP {code}"),
                retry_after,
                Cause::Other,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_statuses_decide_each_row() {
        let roles = [
            EntryRole::Device,
            EntryRole::Observation(1),
            EntryRole::Observation(2),
            EntryRole::Observation(3),
        ];
        let body = serde_json::json!({"resourceType": "Bundle", "type": "batch-response", "entry": [
            {"response": {"status": "200 OK"}},
            {"response": {"status": "201 Created"}},
            {"response": {"status": "422 Unprocessable Entity", "outcome": {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "invalid", "diagnostics": "bad unit"}]}}},
            {"response": {"status": "503"}},
        ]});
        let out = entry_outcomes(
            &roles,
            &serde_json::to_vec(&body).unwrap(),
            BundleType::Batch,
        );
        assert_eq!(out[0], Outcome::Delivered);
        assert_eq!(
            out[1],
            Outcome::Rejected(Refusal::new(
                Some(422),
                "422 Unprocessable Entity: error: bad unit"
            ))
        );
        assert!(matches!(out[2], Outcome::Retry(_)));
    }

    #[test]
    fn a_malformed_entry_is_retried_alone() {
        let roles = [
            EntryRole::Observation(1),
            EntryRole::Observation(2),
            EntryRole::Observation(3),
        ];
        let body = serde_json::json!({"resourceType": "Bundle", "type": "batch-response", "entry": [
            {"response": {"status": "201 Created"}},
            {"response": {"status": 201}},
            null,
        ]});
        let out = entry_outcomes(
            &roles,
            &serde_json::to_vec(&body).unwrap(),
            BundleType::Batch,
        );
        assert_eq!(out[0], Outcome::Delivered);
        assert!(matches!(out[1], Outcome::Retry(_)), "{out:?}");
        assert!(matches!(out[2], Outcome::Retry(_)), "{out:?}");
    }

    #[test]
    fn an_unreadable_2xx_transaction_counts_as_committed_but_a_batch_is_retried() {
        let roles = [EntryRole::Observation(1)];
        assert_eq!(
            entry_outcomes(&roles, b"", BundleType::Transaction),
            vec![Outcome::Delivered]
        );
        assert!(matches!(
            entry_outcomes(&roles, b"", BundleType::Batch)[0],
            Outcome::Retry(_)
        ));
    }
}
