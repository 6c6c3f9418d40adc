//! Helpers for testing the gateway's operations endpoints from the outside.
//!
//! - [`request`] / [`get`]: plain HTTP/1.1 requests (hyper), optionally from a chosen local
//!   address (e.g. `127.0.0.2`, to be a different client than `127.0.0.1`).
//! - [`parse_prometheus`]: the `/metrics` text parsed by an independent parser, the official
//!   Python client's (`python3-prometheus-client`, installed by `tests/setup.sh`).
//! - [`dump_dom`]: a page rendered by headless Chromium (Debian's `chromium`, installed by
//!   `tests/setup.sh`), scripts run, as the DOM text.
//! - [`ops_table`]: the `[ops.http]` config table for a test.

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpSocket;

use crate::client::{ClientError, HttpResponse};

/// Bound on one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one Chromium run.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);

/// The `[ops.http]` table listening on `127.0.0.1:port`, with `extra` lines appended to it.
pub fn ops_table(port: u16, extra: &str) -> String {
    format!("\n[ops.http]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n")
}

/// `method path` to `addr`, from `local` if given (any port), over a fresh connection.
pub async fn request(
    local: Option<IpAddr>,
    addr: SocketAddr,
    method: Method,
    path: &str,
) -> Result<HttpResponse, ClientError> {
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(ClientError::Connect)?;
        if let Some(ip) = local {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(ClientError::Connect)?;
        }
        let stream = socket.connect(addr).await.map_err(ClientError::Connect)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|_| ClientError::Url(path.to_owned()))?;
        let result = async {
            let resp = sender.send_request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok(HttpResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        }
        .await;
        driver.abort();
        result
    })
    .await
    .map_err(|_| ClientError::Timeout)?
}

/// `GET path` from the default local address.
pub async fn get(addr: SocketAddr, path: &str) -> Result<HttpResponse, ClientError> {
    request(None, addr, Method::GET, path).await
}

/// One sample of a Prometheus exposition, as the independent parser read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The family (the parser drops a counter's `_total` suffix here).
    pub family: String,
    /// `counter`, `gauge`, `histogram`, …
    pub kind: String,
    /// The sample name (`…_total`, `…_bucket`, …).
    pub name: String,
    /// Its labels.
    pub labels: serde_json::Map<String, Value>,
    /// Its value.
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Clone)]
pub struct Exposition(pub Vec<Sample>);

impl Exposition {
    /// The value of the sample `name` whose labels include every pair of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).and_then(Value::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// The kind of family `family`.
    pub fn kind(&self, family: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|s| s.family == family)
            .map(|s| s.kind.as_str())
    }
}

const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"family": family.name, "kind": family.type, "name": s.name,
                    "labels": s.labels, "value": s.value})
print(json.dumps(out, allow_nan=False))
"#;

/// Parses `text` with the Prometheus Python client's parser; an error carries its complaint.
pub fn parse_prometheus(text: &str) -> io::Result<Exposition> {
    use std::io::Write;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("no stdin"))?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "the Prometheus parser refused the exposition: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).map_err(io::Error::other)?;
    Ok(Exposition(
        rows.into_iter()
            .map(|r| Sample {
                family: r["family"].as_str().unwrap_or_default().to_owned(),
                kind: r["kind"].as_str().unwrap_or_default().to_owned(),
                name: r["name"].as_str().unwrap_or_default().to_owned(),
                labels: r["labels"].as_object().cloned().unwrap_or_default(),
                value: r["value"].as_f64().unwrap_or(f64::NAN),
            })
            .collect(),
    ))
}

/// The Chromium binary: `$CHROMIUM`, or Debian's `/usr/bin/chromium`.
pub fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Loads `url` in headless Chromium with a fresh profile, lets its scripts run for
/// `virtual_time_ms` of virtual time (timers fire, fetches complete), and returns the DOM as
/// HTML. Chromium runs in its own process group, killed as a whole if it overruns.
pub fn dump_dom(url: &str, virtual_time_ms: u64) -> io::Result<String> {
    let profile = tempfile::Builder::new()
        .prefix("vitalbridge-chromium-")
        .tempdir()?;
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={virtual_time_ms}"))
        .arg("--dump-dom")
        .arg(url)
        .env("HOME", profile.path())
        .env("XDG_CONFIG_HOME", profile.path())
        .env("XDG_CACHE_HOME", profile.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout"))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| io::Error::other("no stderr"))?;
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            // SAFETY: signalling the process group we created for this child.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: as above; reaps helpers (zygote, renderer) that outlived the browser process.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let dom = out.join().unwrap_or_default();
    let log = err.join().unwrap_or_default();
    match status {
        Some(s) if s.success() && !dom.is_empty() => Ok(dom),
        Some(s) => Err(io::Error::other(format!(
            "chromium exited with {s}, {} bytes of DOM; stderr:\n{log}",
            dom.len()
        ))),
        None => Err(io::Error::other(format!(
            "chromium did not finish within {CHROMIUM_TIMEOUT:?}; stderr:\n{log}"
        ))),
    }
}

/// The text content of the element with `id` in a DOM dump (the first one), if present.
/// Enough for the flat, attribute-free elements the status page fills.
pub fn element_text(dom: &str, id: &str) -> Option<String> {
    let marker = format!("id=\"{id}\"");
    let start = dom.find(&marker)?;
    let open_end = start + dom[start..].find('>')? + 1;
    let rest = &dom[open_end..];
    let close = rest.find("</")?;
    Some(rest[..close].trim().to_owned())
}
