//! `vitalbridge status`: the status page's facts in a terminal. It asks the running
//! gateway's operations server for `/status.json` (over loopback, with the configured TLS
//! certificate pinned and the configured token, when those are set) and renders it as text:
//! readiness, the queue (depth, oldest age, dead letters), each uplink's state and last
//! error, devices heard from (last reading per device and per metric), certificate expiry
//! dates, and the active profile pack.
//!
//! Device ids and messages are shown with invisible and control characters escaped
//! (`\u{202e}`), so what the terminal shows is what the data holds.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::Config;

/// How long to wait for the gateway.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer read.
const MAX_ANSWER: u64 = 16 * 1024 * 1024;

/// Why the status could not be had.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// `[ops.http]` is off.
    #[error(
        "the operations server is off ([ops.http] is not in the config): no status to ask for"
    )]
    Off,
    /// The gateway did not answer.
    #[error("cannot reach the gateway at {0}: {1} (is it running?)")]
    Connect(SocketAddr, String),
    /// TLS or token set-up.
    #[error("{0}")]
    Setup(String),
    /// An answer that is not a status.
    #[error("unexpected answer from {0}: {1}")]
    Answer(SocketAddr, String),
}

/// Where to connect for a listen address: loopback for a wildcard.
fn target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Client certificate for a server that asks for one.
pub type Identity<'a> = Option<(&'a Path, &'a Path)>;

/// Fetches `/status.json` from the gateway that `config` describes.
pub fn fetch(config: &Config, identity: Identity<'_>) -> Result<Value, StatusError> {
    let http = config.ops.http.as_ref().ok_or(StatusError::Off)?;
    let addr = target(http.listen);
    let mut headers = String::from("Host: localhost\r\nConnection: close\r\n");
    if let Some(path) = &http.token_file {
        let token =
            crate::limits::read_capped(path, crate::limits::MAX_TOKEN_FILE_BYTES).map_err(|e| {
                StatusError::Setup(format!("ops.http.token_file {}: {e}", path.display()))
            })?;
        headers.push_str(&format!("Authorization: Bearer {}\r\n", token.trim()));
    }
    let request = format!("GET /status.json HTTP/1.1\r\n{headers}\r\n");
    let tcp = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|e| StatusError::Connect(addr, e.to_string()))?;
    let _ = tcp.set_read_timeout(Some(TIMEOUT));
    let _ = tcp.set_write_timeout(Some(TIMEOUT));
    let answer = match &http.tls {
        None => exchange(tcp, &request),
        Some(tls) => {
            let config = crate::tls::pinned_client_config(&tls.cert, identity)
                .map_err(|e| StatusError::Setup(e.to_string()))?;
            let name = rustls_pki_types::ServerName::try_from("localhost")
                .map_err(|e| StatusError::Setup(e.to_string()))?;
            let conn = rustls::ClientConnection::new(Arc::clone(&config), name)
                .map_err(|e| StatusError::Setup(e.to_string()))?;
            exchange(rustls::StreamOwned::new(conn, tcp), &request)
        }
    }
    .map_err(|e| StatusError::Connect(addr, e.to_string()))?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| StatusError::Answer(addr, "no HTTP header".into()))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        return Err(StatusError::Answer(addr, status.to_owned()));
    }
    serde_json::from_str(body).map_err(|e| StatusError::Answer(addr, e.to_string()))
}

fn exchange(mut stream: impl Read + Write, request: &str) -> std::io::Result<Vec<u8>> {
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    let mut answer = Vec::new();
    match stream.take(MAX_ANSWER).read_to_end(&mut answer) {
        Ok(_) => Ok(answer),
        // A server that closes without close_notify: what arrived is the answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => Ok(answer),
        Err(e) => Err(e),
    }
}

/// `text` with control and invisible characters escaped as `\u{…}`.
pub fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || crate::ops::audit::is_invisible(c) {
            out.push_str(&format!("\\u{{{:04x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(t) => shown(t),
        other => shown(&other.to_string()),
    }
}

fn ago(v: &Value, now: OffsetDateTime) -> String {
    let Some(t) = v
        .as_str()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
    else {
        return "never".into();
    };
    format!(
        "{} ({} ago)",
        shown(v.as_str().unwrap_or_default()),
        duration((now - t).whole_seconds())
    )
}

/// `75 s`, `12 min`, `3 h 4 min`, `2 days`.
pub fn duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} days", s / 86400),
    }
}

/// Renders a `/status.json` document as text.
pub fn render(doc: &Value) -> String {
    let now = doc["time"]
        .as_str()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .unwrap_or_else(OffsetDateTime::now_utc);
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    let g = &doc["gateway"];
    line(format!(
        "Gateway {} (vitalbridge {}), {} for {}",
        s(&g["id"]),
        s(&g["version"]),
        s(&g["phase"]),
        duration(g["uptime_s"].as_i64().unwrap_or(0))
    ));
    if doc["ready"]["ready"].as_bool() == Some(true) {
        line("Ready".into());
    } else {
        line("NOT READY:".into());
        for r in doc["ready"]["reasons"].as_array().into_iter().flatten() {
            line(format!("  - {}", s(r)));
        }
    }
    line(String::new());
    let q = &doc["queue"];
    if q.get("error").is_some() {
        line(format!("Queue: cannot read: {}", s(&q["error"])));
    } else {
        line(format!(
            "Queue: {} waiting (oldest {}), {} being sent, {} dead letters, capacity {}",
            s(&q["pending"]),
            q["oldest_age_s"]
                .as_f64()
                .map(|a| duration(a as i64))
                .unwrap_or_else(|| "-".into()),
            s(&q["leased"]),
            s(&q["dead_letters"]),
            s(&q["capacity"])
        ));
    }
    if let Some(f) = doc["buffer"]["storage"]["failing"].as_object() {
        line(format!(
            "  storage failing since {} ({}): nothing is acknowledged",
            s(&f["since"]),
            s(&f["kind"])
        ));
    }
    line(String::new());
    line(format!("Uplink: {}", s(&g["uplink"])));
    for u in doc["uplinks"].as_array().into_iter().flatten() {
        let state = if u["failing_since"].is_null() {
            "ok".to_owned()
        } else {
            format!("FAILING since {}", ago(&u["failing_since"], now))
        };
        line(format!(
            "  {}: {state}; delivered {}, retries {}, dead-lettered {}, last delivery {}",
            s(&u["name"]),
            s(&u["delivered"]),
            s(&u["retries"]),
            s(&u["dead_lettered"]),
            ago(&u["last_delivery"], now)
        ));
        if let Some(e) = u["last_error"].as_object() {
            line(format!(
                "    last error {}: {}: {}",
                ago(&e["at"], now),
                s(&e["kind"]),
                s(&e["message"])
            ));
        }
        if let Some(causes) = u["auth_failures"].as_object().filter(|c| !c.is_empty()) {
            let list: Vec<String> = causes
                .iter()
                .map(|(cause, n)| format!("{} {}", shown(cause), s(n)))
                .collect();
            line(format!("    authorization failures: {}", list.join(", ")));
        }
    }
    line(String::new());
    let devices = doc["devices"].as_array().cloned().unwrap_or_default();
    line(format!("Devices heard from: {}", devices.len()));
    for d in &devices {
        line(format!(
            "  {} ({}, {}, via {}): {} readings, last {}",
            s(&d["id"]),
            s(&d["id_kind"]),
            s(&d["profile"]),
            s(&d["source"]),
            s(&d["readings"]),
            ago(&d["last_reading"], now)
        ));
        for m in d["metrics"].as_array().into_iter().flatten() {
            line(format!(
                "    {}: {}",
                s(&m["metric"]),
                ago(&m["last_reading"], now)
            ));
        }
    }
    if doc["devices_not_shown"].as_u64().unwrap_or(0) > 0 {
        line(format!(
            "  ({} more not heard from recently)",
            s(&doc["devices_not_shown"])
        ));
    }
    line(String::new());
    line("Certificates:".into());
    let certs = doc["certificates"].as_array().cloned().unwrap_or_default();
    if certs.is_empty() {
        line("  none configured".into());
    }
    for c in &certs {
        if c.get("error").is_some() {
            line(format!(
                "  {} {}: cannot read: {}",
                s(&c["usage"]),
                s(&c["path"]),
                s(&c["error"])
            ));
        } else {
            line(format!(
                "  {} {}: expires {} ({} days){}",
                s(&c["usage"]),
                s(&c["subject"]),
                s(&c["not_after"]),
                s(&c["days_left"]),
                c["problem"]
                    .as_str()
                    .map(|p| format!(" - {}", shown(p)))
                    .unwrap_or_default()
            ));
        }
    }
    let by_cause = doc["tls_failures_by_cause"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !by_cause.is_empty() {
        line(format!(
            "TLS handshake failures: {}",
            s(&doc["tls_failures"])
        ));
        for t in &by_cause {
            line(format!(
                "  {} {}: {}",
                s(&t["peer"]),
                s(&t["cause"]),
                s(&t["count"])
            ));
        }
    }
    line(String::new());
    let p = &doc["profiles"];
    line(format!(
        "Profile pack: {}",
        p["pack"]
            .as_str()
            .map(shown)
            .unwrap_or_else(|| "none installed (built-in profiles)".into())
    ));
    let vendor: Vec<String> = p["vendor_profiles"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect();
    line(format!("  vendor JSON profiles: {}", vendor.join(", ")));
    if !p["error"].is_null() {
        line(format!("  last reload problem: {}", s(&p["error"])));
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_text_has_the_status_pages_facts_and_shows_hidden_characters() {
        let doc = json!({
            "time": "2026-03-01T10:00:00Z",
            "gateway": {"id": "hub-7", "version": "0.1.0", "phase": "running", "uptime_s": 3700, "uplink": "FHIR server https://fhir.example/r4"},
            "ready": {"ready": false, "reasons": ["uplink failing for 400 s"]},
            "queue": {"pending": 12, "capacity": 1000, "leased": 2, "dead_letters": 1, "oldest_age_s": 95.5},
            "buffer": {"storage": {"failing": null}},
            "uplinks": [{"name": "fhir", "delivered": 5, "retries": 3, "dead_lettered": 0, "last_delivery": "2026-03-01T09:50:00Z",
                         "failing_since": "2026-03-01T09:53:20Z", "last_error": {"at": "2026-03-01T09:59:00Z", "kind": "tls", "message": "certificate expired"},
                         "auth_failures": {"server_401": 1, "token_refused": 2}}],
            "tls_failures": 4,
            "tls_failures_by_cause": [{"peer": "uplink:fhir", "cause": "peer_expired", "count": 4}],
            "devices": [{"id": "\u{202e}GNP.exe", "id_kind": "other", "profile": "json-dexcom-egv@1", "source": "mqtt",
                         "last_reading": "2026-03-01T09:59:58Z", "readings": 4,
                         "metrics": [{"metric": "MDC_CONC_GLU_ISF", "last_reading": "2026-03-01T09:59:58Z"}]}],
            "devices_not_shown": 0,
            "certificates": [{"usage": "uplink.fhir.cert", "path": "/etc/x.pem", "subject": "CN=hub-7", "not_after": "2026-04-01T00:00:00Z", "days_left": 30, "problem": "expires_soon"}],
            "profiles": {"pack": "site-a 1.4.0", "vendor_profiles": ["json-dexcom-egv@1"], "loaded_at": "2026-03-01T09:00:00Z", "error": null},
        });
        let text = render(&doc);
        for want in [
            "Gateway hub-7 (vitalbridge 0.1.0), running for 61 min",
            "NOT READY:\n  - uplink failing for 400 s",
            "Queue: 12 waiting (oldest 95 s), 2 being sent, 1 dead letters, capacity 1000",
            "fhir: FAILING since 2026-03-01T09:53:20Z (6 min ago)",
            "last error 2026-03-01T09:59:00Z (60 s ago): tls: certificate expired",
            "\\u{202e}GNP.exe (other, json-dexcom-egv@1, via mqtt): 4 readings",
            "    MDC_CONC_GLU_ISF: 2026-03-01T09:59:58Z (2 s ago)",
            "uplink.fhir.cert CN=hub-7: expires 2026-04-01T00:00:00Z (30 days) - expires_soon",
            "Profile pack: site-a 1.4.0",
            "    authorization failures: server_401 1, token_refused 2",
            "TLS handshake failures: 4\n  uplink:fhir peer_expired: 4",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(!text.contains('\u{202e}'));
    }

    #[test]
    fn a_wildcard_listen_address_is_reached_on_loopback() {
        assert_eq!(
            target("0.0.0.0:8642".parse().unwrap()),
            "127.0.0.1:8642".parse().unwrap()
        );
        assert_eq!(
            target("[::]:8642".parse().unwrap()),
            "[::1]:8642".parse().unwrap()
        );
        assert_eq!(
            target("10.0.0.5:1".parse().unwrap()),
            "10.0.0.5:1".parse().unwrap()
        );
    }
}
