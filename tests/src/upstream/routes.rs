//! Routing: one request sent to the Bundle processor, a read, a search or an error; scripted
//! faults applied; every request logged.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::bundle::{now_instant, process_bundle};
use super::store::{parse_query, split_token, Store};
use super::{lock, Fault, LogEntry, Shared};

/// FHIR JSON media type used on every response.
const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// What one request produced, for the log.
#[derive(Default)]
pub(super) struct Handled {
    pub(super) status: Option<u16>,
    pub(super) bundle_type: Option<String>,
    pub(super) entries: usize,
    pub(super) created: usize,
    pub(super) existed: usize,
    pub(super) rejected: usize,
}

/// A response as hyper sends it.
pub(super) type Resp = Response<Full<Bytes>>;

/// Serves one request: reads the body, takes the next fault for a `POST`, routes, logs.
pub(super) async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    kill: Arc<Notify>,
) -> Result<Resp, Infallible> {
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let resp = outcome_response(StatusCode::BAD_REQUEST, "invalid", &format!("{e}"));
            log_request(
                &shared,
                &method,
                &path,
                content_type,
                None,
                Some(400),
                Handled::default(),
            );
            return Ok(resp);
        }
    };
    // Run the rest in its own task so a delayed request still completes (and commits) if
    // the client disconnects and hyper drops this future.
    let task = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let fault = if method == Method::POST {
                shared.faults.pop()
            } else {
                None
            };
            let (resp, handled) = route(&shared, &method, &path, &body, fault.as_ref()).await;
            log_request(
                &shared,
                &method,
                &path,
                content_type,
                fault,
                handled.status,
                handled,
            );
            resp
        })
    };
    match task.await {
        Ok(Some(resp)) => Ok(resp),
        Ok(None) => {
            kill.notify_one();
            // The connection task drops this future with the connection.
            std::future::pending().await
        }
        Err(e) => Ok(outcome_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "exception",
            &format!("test server handler failed: {e}"),
        )),
    }
}

fn log_request(
    shared: &Shared,
    method: &Method,
    path: &str,
    content_type: Option<String>,
    fault: Option<Fault>,
    status: Option<u16>,
    h: Handled,
) {
    let entry = LogEntry {
        at: SystemTime::now(),
        since_start: shared.started.elapsed(),
        method: method.to_string(),
        path: path.to_string(),
        content_type,
        status,
        bundle_type: h.bundle_type,
        entries: h.entries,
        created: h.created,
        existed: h.existed,
        rejected: h.rejected,
        fault,
    };
    lock(&shared.log).push(entry);
}

/// Returns `None` to drop the connection without answering.
async fn route(
    shared: &Shared,
    method: &Method,
    path_and_query: &str,
    body: &[u8],
    fault: Option<&Fault>,
) -> (Option<Resp>, Handled) {
    let base = shared.cfg.base_path.as_str();
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let rest = match path.strip_prefix(base) {
        Some(r) if r.is_empty() || r.starts_with('/') => r.trim_start_matches('/'),
        _ => {
            return answer(outcome_response(
                StatusCode::NOT_FOUND,
                "not-found",
                &format!("no FHIR endpoint at {path}; base is {base}"),
            ))
        }
    };

    if *method == Method::POST {
        if !rest.is_empty() {
            return answer(outcome_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "not-supported",
                "this test server accepts only Bundles POSTed to the base URL",
            ));
        }
        match fault {
            Some(Fault::ServiceUnavailable) => {
                return answer(outcome_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "transient",
                    "injected fault: service unavailable",
                ))
            }
            Some(Fault::TooManyRequests { retry_after_secs }) => {
                let mut resp = outcome_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "throttled",
                    "injected fault: too many requests",
                );
                resp.headers_mut().insert(
                    header::RETRY_AFTER,
                    header::HeaderValue::from(*retry_after_secs),
                );
                return answer(resp);
            }
            Some(Fault::Status(code)) => {
                let status =
                    StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return answer(outcome_response(
                    status,
                    "exception",
                    &format!("injected fault: status {code}"),
                ));
            }
            Some(Fault::DropBeforeCommit) => return (None, Handled::default()),
            Some(Fault::Delay(d)) => tokio::time::sleep(*d).await,
            Some(Fault::CommitThenDrop) | None => {}
        }
        let (resp, mut handled) = {
            let mut store = lock(&shared.store);
            process_bundle(&mut store, &shared.cfg, body)
        };
        if matches!(fault, Some(Fault::CommitThenDrop)) {
            handled.status = None;
            return (None, handled);
        }
        return (Some(resp), handled);
    }

    if *method == Method::GET {
        let store = lock(&shared.store);
        let resp = if rest == "metadata" {
            json_response(StatusCode::OK, &capability_statement())
        } else if let Some((rtype, id)) = rest.split_once('/') {
            match store.get(rtype, id) {
                Some(r) => json_response(StatusCode::OK, r),
                None => outcome_response(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    &format!("{rtype}/{id} is not known"),
                ),
            }
        } else if !rest.is_empty() {
            search(&store, rest, query.unwrap_or(""))
        } else {
            outcome_response(
                StatusCode::BAD_REQUEST,
                "not-supported",
                "system-level search is not supported",
            )
        };
        return answer(resp);
    }

    answer(outcome_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "not-supported",
        &format!("{method} is not supported by this test server"),
    ))
}

fn answer(resp: Resp) -> (Option<Resp>, Handled) {
    let status = resp.status().as_u16();
    (
        Some(resp),
        Handled {
            status: Some(status),
            ..Handled::default()
        },
    )
}

/// `GET {base}/TYPE?identifier=…`: a `searchset` Bundle.
fn search(store: &Store, rtype: &str, query: &str) -> Resp {
    let mut ids: Option<Vec<String>> = None;
    for (k, v) in parse_query(query) {
        match k.as_str() {
            "identifier" => {
                let (system, value) = split_token(&v);
                ids = Some(store.find(rtype, system.as_deref(), &value));
            }
            "_count" | "_format" => {}
            other => {
                return outcome_response(
                    StatusCode::BAD_REQUEST,
                    "not-supported",
                    &format!("search parameter {other} is not supported"),
                )
            }
        }
    }
    let matched: Vec<Value> = match ids {
        Some(ids) => ids
            .iter()
            .filter_map(|id| store.get(rtype, id).cloned())
            .collect(),
        None => store.resources.get(rtype).cloned().unwrap_or_default(),
    };
    let entries: Vec<Value> = matched
        .into_iter()
        .map(|r| {
            let id = r
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            json!({"fullUrl": format!("{rtype}/{id}"), "resource": r, "search": {"mode": "match"}})
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "total": entries.len(),
            "entry": entries,
        }),
    )
}

/// An OperationOutcome with one issue.
pub(super) fn operation_outcome(code: &str, msg: &str, expression: Option<&str>) -> Value {
    let mut issue = json!({"severity": "error", "code": code, "diagnostics": msg});
    if let Some(e) = expression {
        issue["expression"] = json!([e]);
    }
    json!({"resourceType": "OperationOutcome", "issue": [issue]})
}

/// A response whose body is an OperationOutcome.
pub(super) fn outcome_response(status: StatusCode, code: &str, msg: &str) -> Resp {
    json_response(status, &operation_outcome(code, msg, None))
}

/// A FHIR JSON response.
pub(super) fn json_response(status: StatusCode, body: &Value) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, FHIR_JSON)
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn capability_statement() -> Value {
    let interactions = json!([{"code": "create"}, {"code": "read"}, {"code": "search-type"}]);
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now_instant(),
        "kind": "instance",
        "software": {"name": "vitalbridge-tests upstream"},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "resource": [
                {"type": "Observation", "interaction": interactions, "conditionalCreate": true,
                 "searchParam": [{"name": "identifier", "type": "token"}]},
                {"type": "Device", "interaction": interactions, "conditionalCreate": true,
                 "searchParam": [{"name": "identifier", "type": "token"}]},
                {"type": "Patient", "interaction": interactions, "conditionalCreate": true,
                 "searchParam": [{"name": "identifier", "type": "token"}]}
            ],
            "interaction": [{"code": "transaction"}, {"code": "batch"}]
        }]
    })
}
