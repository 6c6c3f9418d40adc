//! Transaction and batch Bundles: each entry planned (validated, its conditional create
//! resolved against the store and the entries before it), references to `fullUrl`s
//! rewritten, then everything applied, or nothing for an all-or-nothing transaction in error.

use std::collections::HashMap;

use http::StatusCode;
use serde_json::{json, Map, Value};

use super::config::{TransactionFailureMode, UpstreamConfig};
use super::routes::{json_response, operation_outcome, outcome_response, Handled, Resp};
use super::store::{identifiers, parse_query, split_token, Store};

/// An entry that will be applied.
struct Planned {
    index: usize,
    rtype: String,
    resource: Value,
    full_url: Option<String>,
    /// `Some(id)` when an existing resource matched `ifNoneExist`.
    existing: Option<String>,
    /// Id for a new resource.
    new_id: Option<String>,
}

/// An entry in error: (index, status, OperationOutcome).
type EntryError = (usize, StatusCode, Value);

fn entry_error(index: usize, status: StatusCode, code: &str, msg: &str) -> EntryError {
    let oo = operation_outcome(code, msg, Some(&format!("Bundle.entry[{index}]")));
    (index, status, oo)
}

/// Identifiers of the entries already planned in this Bundle: `(type, value)` → `(system, id)`,
/// so each lookup is a hash probe rather than a scan of the Bundle.
type PlannedIndex = HashMap<(String, String), Vec<(String, String)>>;

fn index_planned(index: &mut PlannedIndex, p: &Planned) {
    if let Some(id) = p.new_id.clone().or_else(|| p.existing.clone()) {
        for (system, value) in identifiers(&p.resource) {
            index
                .entry((p.rtype.clone(), value))
                .or_default()
                .push((system, id.clone()));
        }
    }
}

/// Validates one entry and resolves its conditional create against the store and the
/// entries already planned in this Bundle.
fn plan_entry(
    store: &Store,
    planned: &PlannedIndex,
    cfg: &UpstreamConfig,
    index: usize,
    entry: Value,
    last_id: &mut u64,
) -> Result<Planned, EntryError> {
    let bad = |msg: &str| entry_error(index, StatusCode::BAD_REQUEST, "invalid", msg);
    let request = entry
        .get("request")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("entry has no request"))?;
    let method = request.get("method").and_then(Value::as_str).unwrap_or("");
    if method != "POST" {
        return Err(bad(&format!(
            "request.method {method:?} is not supported (only POST)"
        )));
    }
    let resource = entry
        .get("resource")
        .filter(|r| r.is_object())
        .ok_or_else(|| bad("POST entry has no resource"))?;
    let rtype = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("resource has no resourceType"))?
        .to_string();
    let url = request.get("url").and_then(Value::as_str).unwrap_or("");
    if url.trim_end_matches('/') != rtype {
        return Err(bad(&format!(
            "request.url {url:?} does not match resourceType {rtype:?}"
        )));
    }
    if cfg.required_elements && rtype == "Observation" {
        for field in ["status", "code"] {
            if resource.get(field).is_none() {
                return Err(entry_error(
                    index,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "required",
                    &format!("Observation.{field}: minimum required = 1, but only found 0"),
                ));
            }
        }
    }
    if let Some(rule) = &cfg.reject {
        if let Some(r) = rule(resource) {
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
            return Err(entry_error(index, status, "processing", &r.message));
        }
    }
    let full_url = entry
        .get("fullUrl")
        .and_then(Value::as_str)
        .map(str::to_string);

    let mut existing = None;
    if let Some(cond) = request.get("ifNoneExist") {
        let cond = cond
            .as_str()
            .ok_or_else(|| bad("request.ifNoneExist is not a string"))?;
        let params = parse_query(cond);
        let [(name, token)] = params.as_slice() else {
            return Err(bad(&format!(
                "ifNoneExist {cond:?}: only a single identifier=SYSTEM|VALUE is supported"
            )));
        };
        if name != "identifier" {
            return Err(bad(&format!(
                "ifNoneExist {cond:?}: only the identifier parameter is supported"
            )));
        }
        let (system, value) = split_token(token);
        let mut matches = store.find(&rtype, system.as_deref(), &value);
        if let Some(hits) = planned.get(&(rtype.clone(), value.clone())) {
            for (s, id) in hits {
                if system.as_deref().is_none_or(|sys| sys == s) && !matches.contains(id) {
                    matches.push(id.clone());
                }
            }
        }
        match matches.len() {
            0 => {}
            1 => existing = matches.pop(),
            n => {
                return Err(entry_error(
                    index,
                    StatusCode::PRECONDITION_FAILED,
                    "multiple-matches",
                    &format!("ifNoneExist {cond:?} matched {n} resources"),
                ))
            }
        }
    }
    let new_id = if existing.is_none() {
        *last_id += 1;
        Some(last_id.to_string())
    } else {
        None
    };
    let resource = match entry {
        Value::Object(mut fields) => fields.remove("resource").unwrap_or_default(),
        _ => Value::Null,
    };
    Ok(Planned {
        index,
        rtype,
        resource,
        full_url,
        existing,
        new_id,
    })
}

/// Rewrites every `"reference"` string found in `map`; returns the first unresolved
/// `urn:uuid:` reference, if any.
fn rewrite_references(v: &mut Value, map: &HashMap<String, String>) -> Option<String> {
    let mut unresolved = None;
    match v {
        Value::Object(obj) => {
            for (k, child) in obj.iter_mut() {
                if k == "reference" {
                    if let Value::String(s) = child {
                        if let Some(target) = map.get(s.as_str()) {
                            *s = target.clone();
                        } else if s.starts_with("urn:uuid:") || s.starts_with("urn:oid:") {
                            unresolved.get_or_insert_with(|| s.clone());
                        }
                        continue;
                    }
                }
                if let Some(u) = rewrite_references(child, map) {
                    unresolved.get_or_insert(u);
                }
            }
        }
        Value::Array(items) => {
            for child in items {
                if let Some(u) = rewrite_references(child, map) {
                    unresolved.get_or_insert(u);
                }
            }
        }
        _ => {}
    }
    unresolved
}

/// Now, as a FHIR `instant`.
pub(super) fn now_instant() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

fn status_line(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_string()
}

/// Applies a transaction or batch Bundle to `store` (or nothing, on an all-or-nothing
/// failure) and builds the answer.
pub(super) fn process_bundle(
    store: &mut Store,
    cfg: &UpstreamConfig,
    body: &[u8],
) -> (Resp, Handled) {
    let fail = |status: StatusCode, msg: &str, h: Handled| {
        let resp = outcome_response(status, "invalid", msg);
        (
            resp,
            Handled {
                status: Some(status.as_u16()),
                ..h
            },
        )
    };
    let mut bundle: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                &format!("body is not JSON: {e}"),
                Handled::default(),
            )
        }
    };
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return fail(
            StatusCode::BAD_REQUEST,
            "body is not a Bundle",
            Handled::default(),
        );
    }
    let btype = bundle
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let is_batch = match btype.as_str() {
        "batch" => true,
        "transaction" => false,
        other => {
            return fail(
                StatusCode::BAD_REQUEST,
                &format!("Bundle.type {other:?}: only transaction and batch are processed"),
                Handled {
                    bundle_type: Some(btype.clone()),
                    ..Handled::default()
                },
            )
        }
    };
    // Entries are moved out of the parsed Bundle, so each resource is planned and stored
    // without a copy.
    let entries = match bundle.get_mut("entry") {
        None => Vec::new(),
        Some(Value::Array(a)) => std::mem::take(a),
        Some(_) => {
            return fail(
                StatusCode::BAD_REQUEST,
                "Bundle.entry is not an array",
                Handled {
                    bundle_type: Some(btype.clone()),
                    ..Handled::default()
                },
            )
        }
    };
    let entry_count = entries.len();
    let mut handled = Handled {
        bundle_type: Some(btype.clone()),
        entries: entry_count,
        ..Handled::default()
    };
    let per_entry = is_batch || cfg.transaction_mode == TransactionFailureMode::PerEntry;

    // 1. Plan every entry (validation + conditional-create lookups); ids are provisional.
    let mut last_id = store.last_id;
    let mut planned: Vec<Planned> = Vec::new();
    let mut planned_index = PlannedIndex::new();
    let mut errors: Vec<EntryError> = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        match plan_entry(store, &planned_index, cfg, i, entry, &mut last_id) {
            Ok(p) => {
                index_planned(&mut planned_index, &p);
                planned.push(p);
            }
            Err(e) => errors.push(e),
        }
    }

    // 2. fullUrl → TYPE/ID, then rewrite references in what will be created.
    let map: HashMap<String, String> = planned
        .iter()
        .filter_map(|p| {
            let id = p.new_id.as_ref().or(p.existing.as_ref())?;
            Some((p.full_url.clone()?, format!("{}/{id}", p.rtype)))
        })
        .collect();
    let mut kept = Vec::with_capacity(planned.len());
    for mut p in planned {
        if p.new_id.is_some() {
            if let Some(u) = rewrite_references(&mut p.resource, &map) {
                errors.push(entry_error(
                    p.index,
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    &format!("reference {u} does not resolve to any entry of this Bundle"),
                ));
                continue;
            }
        }
        kept.push(p);
    }
    errors.sort_by_key(|e| e.0);
    handled.rejected = errors.len();

    if !per_entry {
        if let Some((_, status, oo)) = errors.first() {
            handled.status = Some(status.as_u16());
            return (json_response(*status, oo), handled);
        }
    }

    // 3. Commit.
    store.last_id = last_id;
    let now = now_instant();
    let mut responses: Vec<Option<Value>> = vec![None; entry_count];
    for p in kept {
        let (status, id) = match (&p.existing, &p.new_id) {
            (Some(id), _) => {
                handled.existed += 1;
                (StatusCode::OK, id.clone())
            }
            (None, Some(id)) => {
                let mut resource = p.resource;
                if let Value::Object(obj) = &mut resource {
                    obj.insert("id".to_string(), Value::String(id.clone()));
                    let meta = obj
                        .entry("meta")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(meta) = meta {
                        meta.insert("versionId".to_string(), json!("1"));
                        meta.insert("lastUpdated".to_string(), json!(now));
                    }
                }
                store.insert(&p.rtype, id, resource);
                handled.created += 1;
                (StatusCode::CREATED, id.clone())
            }
            (None, None) => unreachable!("planned entries have an id"),
        };
        responses[p.index] = Some(json!({
            "response": {
                "status": status_line(status),
                "location": format!("{}/{id}/_history/1", p.rtype),
                "etag": "W/\"1\"",
                "lastModified": now,
            }
        }));
    }
    for (i, status, oo) in errors {
        responses[i] = Some(json!({
            "response": { "status": status_line(status), "outcome": oo }
        }));
    }
    let response_entries: Vec<Value> = responses
        .into_iter()
        .map(|r| r.unwrap_or_else(|| json!({"response": {"status": "500 Internal Server Error"}})))
        .collect();
    let answer = json!({
        "resourceType": "Bundle",
        "id": format!("{:032x}", rand::random::<u128>()),
        "type": format!("{btype}-response"),
        "entry": response_entries,
    });
    handled.status = Some(200);
    (json_response(StatusCode::OK, &answer), handled)
}
