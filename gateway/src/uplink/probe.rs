//! `vitalbridge uplink test`: checks a site before going live. With the configured TLS files
//! and `[uplink.fhir.auth]`, it gets an access token and reads the server's
//! CapabilityStatement (`GET <base>/metadata`), and says in words what works and what does
//! not. Nothing is sent to the server but those two requests; no token or secret is printed.

use std::time::Duration;

use serde_json::Value as Json;

use super::auth::{http::HttpError, Authorizer};
use crate::config::Config;
use crate::error_chain::Chain;

/// How `uplink test` ended, as its exit code (documented in the man page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 0: token (if configured) and CapabilityStatement read; ready to send.
    Ready = 0,
    /// 2: the configuration is unusable (also: no `[uplink.fhir]`).
    Config = 2,
    /// 3: no access token (discovery, token endpoint unreachable or refusing).
    NoToken = 3,
    /// 4: the FHIR server cannot be reached (connection, TLS).
    Unreachable = 4,
    /// 5: the FHIR server answered, but refused the token or is no usable FHIR R4 server.
    Refused = 5,
}

/// What `uplink test` found: lines for the technician and the verdict.
#[derive(Debug, Clone)]
pub struct Report {
    /// One line per step, `ok:`/`FAIL:`/`note:` first.
    pub lines: Vec<String>,
    /// The outcome.
    pub verdict: Verdict,
}

impl Report {
    fn fail(mut self, verdict: Verdict, line: String) -> Self {
        self.lines.push(format!("FAIL: {line}"));
        self.verdict = verdict;
        self
    }
}

/// Runs the test against the configured FHIR uplink.
pub async fn run(config: &Config) -> Report {
    let report = Report {
        lines: Vec::new(),
        verdict: Verdict::Ready,
    };
    let Some(fhir) = config.uplink.fhir.as_ref() else {
        return report.fail(
            Verdict::Config,
            "no [uplink.fhir] in the configuration: nothing to test".into(),
        );
    };
    let mut report = report;
    report.lines.push(format!("server: {}", fhir.base_url));
    let tls =
        match crate::tls::client_config_with_crls(&fhir.ca, &fhir.crls, fhir.client_identity()) {
            Ok(tls) => tls,
            Err(e) => {
                return report.fail(
                    Verdict::Config,
                    format!("uplink.fhir TLS files: {}", Chain(&e)),
                )
            }
        };
    let timeout = Duration::from_secs(fhir.timeout_s.max(1));
    let authorizer = match Authorizer::from_config(fhir, tls.clone()) {
        Ok(a) => a,
        Err(e) => return report.fail(Verdict::Config, Chain(&e).to_string()),
    };
    let token = match &authorizer {
        None => {
            report
                .lines
                .push("note: no [uplink.fhir.auth]: mutual TLS only, no access token".into());
            None
        }
        Some(a) => match a.bearer().await {
            Ok(t) => {
                let life = t
                    .expires_in
                    .map(|s| format!("valid {s} s"))
                    .unwrap_or_else(|| "no lifetime given".into());
                let scope = t
                    .scope
                    .as_deref()
                    .map(|s| format!(", scope \"{}\"", super::auth::wire::printable(s)))
                    .unwrap_or_default();
                report.lines.push(format!(
                    "ok: access token obtained ({}, {life}{scope})",
                    a.method().as_str()
                ));
                Some(t)
            }
            Err(e) => return report.fail(Verdict::NoToken, Chain(&e).to_string()),
        },
    };
    let response =
        match Authorizer::read_metadata(&fhir.base_url, &tls, token.as_ref(), timeout).await {
            Ok(r) => r,
            Err(e @ HttpError::Url(_)) => return report.fail(Verdict::Config, e.to_string()),
            Err(e) => {
                return report.fail(
                    Verdict::Unreachable,
                    format!(
                        "cannot read {}/metadata: {e}",
                        fhir.base_url.trim_end_matches('/')
                    ),
                )
            }
        };
    match response.status {
        200 => {}
        401 | 403 => {
            let challenge = response
                .www_authenticate
                .map(|c| format!("; {c}"))
                .unwrap_or_default();
            let why = if token.is_some() {
                "the server refused the access token"
            } else {
                "the server wants an access token: configure [uplink.fhir.auth]"
            };
            return report.fail(
                Verdict::Refused,
                format!(
                    "GET metadata answered HTTP {}{challenge}: {why}",
                    response.status
                ),
            );
        }
        other => {
            return report.fail(
                Verdict::Refused,
                format!("GET metadata answered HTTP {other}"),
            )
        }
    }
    let statement: Option<Json> = serde_json::from_slice(&response.body).ok();
    let Some(statement) =
        statement.filter(|s| s.get("resourceType") == Some(&Json::from("CapabilityStatement")))
    else {
        return report.fail(
            Verdict::Refused,
            "GET metadata answered no CapabilityStatement: is base_url the FHIR base?".into(),
        );
    };
    let text = |pointer: &str| {
        statement
            .pointer(pointer)
            .and_then(Json::as_str)
            .map(super::auth::wire::printable)
    };
    let version = text("/fhirVersion").unwrap_or_else(|| "unknown".into());
    let software = match (text("/software/name"), text("/software/version")) {
        (Some(n), Some(v)) => format!("{n} {v}"),
        (Some(n), None) => n,
        _ => "unnamed software".into(),
    };
    report.lines.push(format!(
        "ok: CapabilityStatement read: FHIR {version}, {software}"
    ));
    if !version.starts_with("4.0") {
        return report.fail(
            Verdict::Refused,
            format!("the server speaks FHIR {version}; the gateway sends FHIR R4 (4.0.x)"),
        );
    }
    let rest = statement.pointer("/rest/0").cloned().unwrap_or(Json::Null);
    let interactions = |v: &Json| -> Vec<String> {
        v.get("interaction")
            .and_then(Json::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|i| i.get("code").and_then(Json::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let system = interactions(&rest);
    let wanted = match fhir.bundle_type {
        crate::config::BundleType::Transaction => "transaction",
        crate::config::BundleType::Batch => "batch",
    };
    if !system.is_empty() && !system.iter().any(|c| c == wanted) {
        report.lines.push(format!(
            "note: the server does not list the {wanted} interaction the gateway uses \
             (uplink.fhir.bundle_type)"
        ));
    }
    for resource in ["Observation", "Device"] {
        let listed = rest.get("resource").and_then(Json::as_array).and_then(|r| {
            r.iter()
                .find(|r| r.get("type").and_then(Json::as_str) == Some(resource))
        });
        match listed {
            None => report.lines.push(format!(
                "note: the CapabilityStatement does not list {resource}"
            )),
            Some(r) if !interactions(r).iter().any(|c| c == "create") => report.lines.push(
                format!("note: the CapabilityStatement lists no create for {resource}"),
            ),
            Some(_) => {}
        }
    }
    report
        .lines
        .push("ok: ready: the gateway can authenticate and reach the FHIR server".into());
    report
}
