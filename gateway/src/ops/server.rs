//! The operations HTTP server (HTTP/1.1, hyper, no TLS: it serves loopback by default).
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /healthz` | `200 ok`: the process is alive and its runtime answers |
//! | `GET /readyz` | `200 ready`, or `503` with one reason per line (see [`super::status`]) |
//! | `GET /metrics` | Prometheus text format (see [`super::prometheus`]) |
//! | `GET /status.json` | the status page's data (see [`super::status`]) |
//! | `GET /` | the status page (static HTML, `/status.js`, `/status.css`, embedded in the binary) |
//!
//! `HEAD` works wherever `GET` does; other methods get `405`, other paths `404`. Everything is
//! read-only.
//!
//! Security: a connection from an address outside `ops.http.allow_from` is closed before a
//! byte is read, counted and recorded in the audit log. At most [`MAX_CONNECTIONS`] are served
//! at once, and at most `ops.http.max_connections_per_client` from one address (so one
//! client's idle keep-alive connections cannot lock the others out); request headers must
//! arrive within [`HEADER_TIMEOUT`], and request bodies are never read.
//!
//! Beyond loopback the port speaks TLS (`[ops.http.tls]`, rustls, TLS 1.2+), with client
//! certificates from `client_ca` and/or a token (`ops.http.token_file`: `Authorization:
//! Bearer <token>`, or HTTP Basic with the token as password, which a browser prompts for);
//! every path but `/healthz` needs the token when one is set. A request whose `Host` header is
//! not `localhost`, a loopback address, the listen address or one of `ops.http.hosts` gets
//! `421` (a DNS-rebinding page could otherwise read `/status.json`). Every refusal — address,
//! connection limits, TLS handshake, token, Host — is counted and audited (repeats summarised
//! by the audit log), and logged at most once per [`REFUSAL_LOG_WINDOW`] per kind with the
//! number left unlogged.
//!
//! Pages carry a strict Content-Security-Policy (scripts and styles from this server only, no
//! inline code, no framing); the page fills itself with `textContent`, never HTML, so a
//! device id cannot inject markup.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::audit::{Audit, Event};
use super::certs::CertReport;
use super::metrics::Metrics;
use super::{prometheus, status, GatewayInfo, Lifecycle, QueueProbe, View};
use crate::config::Cidr;
use crate::error_chain::Chain;

/// Most connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = crate::limits::MAX_OPS_CONNECTIONS;
/// At most one log line per kind of refusal in this window; the next says how many were
/// not logged.
pub const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(10);
/// How long a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish when the server stops.
const STOP_GRACE: Duration = Duration::from_secs(2);

const STATUS_HTML: &str = include_str!("page/status.html");
const STATUS_JS: &str = include_str!("page/status.js");
const STATUS_CSS: &str = include_str!("page/status.css");

/// Content-Security-Policy of every response: nothing but this server's own script, style
/// and JSON; no inline code, no framing, no forms.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the handlers read.
pub struct OpsState<Q> {
    /// Who and what this gateway is.
    pub info: GatewayInfo,
    /// Counters and state.
    pub metrics: Arc<Metrics>,
    /// The buffer's queue figures.
    pub queue: Q,
    /// Configured certificates, read at start.
    pub certs: Vec<CertReport>,
    /// `ops.http.ready_staleness_s`.
    pub staleness: Duration,
    /// Starting, running or stopping.
    pub lifecycle: Lifecycle,
    /// Where refused connections are recorded.
    pub audit: Audit,
    /// `ops.http.allow_from`.
    pub allow_from: Vec<Cidr>,
    /// Who may connect beyond the address check: Host names, token, TLS, limits.
    pub access: Access,
    /// The last hour of readings in and out and queue depth, for the chart.
    pub history: super::history::History,
}

/// Samples the history every [`super::history::STEP`] until `stop`.
async fn sample_history<Q: QueueProbe>(state: Arc<OpsState<Q>>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(super::history::STEP);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.cancelled() => return,
        }
        let queue = state.queue.gauges().await.ok().map(|g| g.pending);
        let snapshot = state.metrics.snapshot();
        state.history.record(super::history::Sample {
            at: OffsetDateTime::now_utc(),
            readings_in: snapshot.readings_in.iter().map(|c| c.readings).sum(),
            readings_out: state
                .metrics
                .readings_out
                .load(std::sync::atomic::Ordering::Relaxed),
            queue,
        });
    }
}

/// The checks beyond `allow_from`.
#[derive(Default)]
pub struct Access {
    /// Allowed `Host` header names, lower case, without ports (loopback names included).
    pub hosts: Vec<String>,
    /// SHA-256 of the access token, when one is required.
    pub token_sha256: Option<[u8; 32]>,
    /// Serve TLS with this.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// `ops.http.max_connections_per_client` (0: the default).
    pub per_client: usize,
    /// Rate limit of the refusal log lines (start with the default).
    pub refusals: RefusalLog,
}

impl Access {
    /// The Host names always allowed for `listen`: `localhost`, loopback addresses, and the
    /// listen address itself, plus `extra`.
    pub fn hosts_for(listen: SocketAddr, extra: &[String]) -> Vec<String> {
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
            .iter()
            .map(|h| (*h).to_owned())
            .collect();
        hosts.push(match listen.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        });
        hosts.extend(extra.iter().map(|h| h.to_ascii_lowercase()));
        hosts
    }

    /// The SHA-256 of a token.
    pub fn digest(token: &str) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}

/// One log line per kind of refusal per [`REFUSAL_LOG_WINDOW`].
#[derive(Default)]
pub struct RefusalLog(Mutex<HashMap<&'static str, (Instant, u64)>>);

impl RefusalLog {
    /// Whether to log a refusal of `kind` now, and how many went unlogged before it.
    fn admit(&self, kind: &'static str) -> Option<u64> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match map.get_mut(kind) {
            Some((at, skipped)) if now.duration_since(*at) < REFUSAL_LOG_WINDOW => {
                *skipped += 1;
                None
            }
            Some((at, skipped)) => {
                let n = std::mem::take(skipped);
                *at = now;
                Some(n)
            }
            None => {
                map.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

/// Counts, logs (rate-limited) and audits a refused client.
fn refuse<Q>(state: &OpsState<Q>, kind: &'static str, ip: IpAddr, reason: &str) {
    state.metrics.connection_refused();
    if let Some(unlogged) = state.access.refusals.admit(kind) {
        tracing::warn!(client = %ip, unlogged_since_last = unlogged, reason, "operations server: refused");
    }
    state.audit.record(Event::ConnectionRefused {
        endpoint: "ops",
        direction: "inbound",
        address: Some(ip),
        reason,
    });
}

/// Open connections per client address; a slot is given back when its guard drops.
#[derive(Default, Clone)]
struct PerClient(Arc<Mutex<HashMap<IpAddr, usize>>>);

struct Slot(PerClient, IpAddr);

impl PerClient {
    fn take(&self, ip: IpAddr, max: usize) -> Option<Slot> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot(self.clone(), ip))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = (self.0).0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

/// Binds the listening socket (before anything else starts, so a taken port fails the start).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `listener` until `stop`, then lets open connections finish for a moment.
pub async fn serve<Q: QueueProbe>(
    listener: TcpListener,
    state: Arc<OpsState<Q>>,
    stop: CancellationToken,
) {
    tokio::spawn(sample_history(state.clone(), stop.clone()));
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_client = PerClient::default();
    let max_per_client = match state.access.per_client {
        0 => crate::config::DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
        n => n,
    };
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => break,
        };
        // Reap finished connection tasks so the set does not grow.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "operations server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ip = peer.ip().to_canonical();
        if !state.allow_from.iter().any(|net| net.contains(ip)) {
            drop(stream);
            refuse(
                &state,
                "allow_from",
                ip,
                "client not in ops.http.allow_from",
            );
            continue;
        }
        let Some(slot) = per_client.take(ip, max_per_client) else {
            drop(stream);
            refuse(
                &state,
                "per_client",
                ip,
                "too many connections from this client (ops.http.max_connections_per_client)",
            );
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            refuse(&state, "server_full", ip, "too many connections");
            continue;
        };
        let state = state.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let _held = (permit, slot);
            match state.access.tls.clone() {
                None => serve_connection(TokioIo::new(stream), &state, ip, &stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve_connection(TokioIo::new(tls), &state, ip, &stop).await,
                        Ok(Err(e)) => {
                            let reason = format!("TLS handshake failed: {}", Chain(&e));
                            refuse(&state, "tls", ip, &reason);
                        }
                        Err(_) => refuse(&state, "tls", ip, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
}

/// Serves one connection (plain or TLS) until it ends or the server stops.
async fn serve_connection<Q: QueueProbe, S>(
    io: TokioIo<S>,
    state: &Arc<OpsState<Q>>,
    ip: IpAddr,
    stop: &CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service_state = state.clone();
    let service = service_fn(move |req| {
        let state = service_state.clone();
        async move { Ok::<_, Infallible>(handle(&state, req, ip).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %Chain(&e), "operations server: connection ended with an error");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// The host of a `Host` header, lower case, without its port.
fn host_name(value: &str) -> String {
    let value = value.trim().to_ascii_lowercase();
    if value.starts_with('[') {
        return match value.find(']') {
            Some(end) => value[..=end].to_owned(),
            None => value,
        };
    }
    match value.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host.to_owned(),
        _ => value,
    }
}

/// Decodes standard base64 (for HTTP Basic credentials); `None` if malformed.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Whether the request carries the token: `Bearer <token>`, or Basic with it as password.
fn authorized(expected: &[u8; 32], header: Option<&HeaderValue>) -> bool {
    let Some(value) = header.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let token = if let Some(t) = value.strip_prefix("Bearer ") {
        t.trim().to_owned()
    } else if let Some(b) = value.strip_prefix("Basic ") {
        let Some(pair) = base64_decode(b).and_then(|p| String::from_utf8(p).ok()) else {
            return false;
        };
        match pair.split_once(':') {
            Some((_, password)) => password.to_owned(),
            None => return false,
        }
    } else {
        return false;
    };
    // Compare digests: equal lengths, and no early exit that depends on the token's bytes.
    let got = Access::digest(&token);
    got.iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

const TEXT: &str = "text/plain; charset=utf-8";

async fn handle<Q: QueueProbe>(
    state: &OpsState<Q>,
    req: Request<Incoming>,
    ip: IpAddr,
) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(host_name);
    if !host.is_some_and(|h| state.access.hosts.contains(&h)) {
        refuse(
            state,
            "host",
            ip,
            "Host header not one of this server's names (ops.http.hosts)",
        );
        return response(
            StatusCode::MISDIRECTED_REQUEST,
            TEXT,
            "this server does not answer for that host name (ops.http.hosts)\n",
        );
    }
    if let Some(expected) = &state.access.token_sha256 {
        if req.uri().path() != "/healthz"
            && !authorized(expected, req.headers().get(header::AUTHORIZATION))
        {
            refuse(state, "token", ip, "missing or wrong access token");
            let mut r = response(StatusCode::UNAUTHORIZED, TEXT, "access token required\n");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"vitalbridge\", charset=\"UTF-8\""),
            );
            return r;
        }
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = response(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "read-only: GET or HEAD\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/healthz" => response(StatusCode::OK, TEXT, "ok\n"),
        "/" | "/index.html" => response(StatusCode::OK, "text/html; charset=utf-8", STATUS_HTML),
        "/status.js" => response(StatusCode::OK, "text/javascript; charset=utf-8", STATUS_JS),
        "/status.css" => response(StatusCode::OK, "text/css; charset=utf-8", STATUS_CSS),
        path @ ("/readyz" | "/metrics" | "/status.json") => {
            let queue = state.queue.gauges().await;
            let snapshot = state.metrics.snapshot();
            let now = OffsetDateTime::now_utc();
            let phase = state.lifecycle.get();
            let readiness = status::readiness(phase, &queue, &snapshot, state.staleness, now);
            let view = View {
                info: &state.info,
                phase,
                snapshot: &snapshot,
                queue: &queue,
                certs: &state.certs,
                readiness: &readiness,
                audit_log: state.audit.path(),
                now,
            };
            match path {
                "/readyz" if readiness.ready => response(StatusCode::OK, TEXT, "ready\n"),
                "/readyz" => {
                    let mut text = String::from("not ready\n");
                    for reason in &readiness.reasons {
                        text.push_str(reason);
                        text.push('\n');
                    }
                    response(StatusCode::SERVICE_UNAVAILABLE, TEXT, text)
                }
                "/metrics" => response(
                    StatusCode::OK,
                    prometheus::CONTENT_TYPE,
                    prometheus::render(&view),
                ),
                _ => {
                    let mut doc = status::status_json(&view);
                    doc["profiles"] = status::profiles_json(&state.metrics.profiles());
                    doc["history"] = state.history.json();
                    response(StatusCode::OK, "application/json", doc.to_string())
                }
            }
        }
        _ => response(StatusCode::NOT_FOUND, TEXT, "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{ProbeError, QueueGauges};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    struct NoQueue;

    impl QueueProbe for NoQueue {
        async fn gauges(&self) -> Result<QueueGauges, ProbeError> {
            Err(ProbeError("no buffer in this test".into()))
        }
    }

    fn state(access: Access) -> Arc<OpsState<NoQueue>> {
        Arc::new(OpsState {
            info: GatewayInfo {
                id: "hub-test".into(),
                version: "0".into(),
                started: OffsetDateTime::now_utc(),
                uplink: "none".into(),
            },
            metrics: Arc::new(Metrics::default()),
            queue: NoQueue,
            certs: Vec::new(),
            staleness: Duration::from_secs(300),
            lifecycle: Lifecycle::default(),
            audit: Audit::default(),
            allow_from: vec!["127.0.0.0/8".parse().unwrap()],
            access,
            history: Default::default(),
        })
    }

    async fn start(access: Access) -> (SocketAddr, Arc<OpsState<NoQueue>>, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut access = access;
        if access.hosts.is_empty() {
            access.hosts = Access::hosts_for(addr, &["hub-7.ward.example".into()]);
        }
        let state = state(access);
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, state.clone(), stop.clone()));
        (addr, state, stop)
    }

    /// Connects from `from` (a loopback address) to `addr`.
    async fn connect(from: [u8; 4], addr: SocketAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((from, 0))).unwrap();
        socket.connect(addr).await.unwrap()
    }

    /// One request; the status line and the whole answer.
    async fn get(addr: SocketAddr, path: &str, headers: &str) -> String {
        let mut s = connect([127, 0, 0, 1], addr).await;
        let req = format!("GET {path} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn only_the_servers_own_host_names_are_answered() {
        let (addr, state, stop) = start(Access::default()).await;
        let port = addr.port();
        for ok in [
            format!("Host: 127.0.0.1:{port}\r\n"),
            format!("Host: localhost:{port}\r\n"),
            format!("Host: HUB-7.ward.example:{port}\r\n"),
            "Host: hub-7.ward.example\r\n".to_owned(),
        ] {
            let answer = get(addr, "/status.json", &ok).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{ok}: {answer}");
            assert!(answer.contains("\"profiles\""), "{answer}");
        }
        for bad in [
            "Host: attacker.example\r\n",
            "Host: hub-7.ward.example.attacker.example\r\n",
            "",
        ] {
            let answer = get(addr, "/status.json", bad).await;
            assert!(
                answer.starts_with("HTTP/1.1 421") || answer.starts_with("HTTP/1.1 400"),
                "{bad}: {answer}"
            );
            assert!(
                !answer.contains("hub-test"),
                "nothing of the status leaks: {answer}"
            );
        }
        assert!(state.metrics.snapshot().connections_refused >= 2);
        stop.cancel();
    }

    #[tokio::test]
    async fn one_clients_idle_connections_do_not_lock_the_others_out() {
        let (addr, state, stop) = start(Access::default()).await;
        // One client opens as many idle keep-alive connections as the server serves.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(connect([127, 0, 0, 5], addr).await);
        }
        // Those past its share were closed at once.
        let mut closed = 0;
        for s in &mut idle {
            let mut b = [0u8; 1];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await
            {
                closed += 1;
            }
        }
        assert_eq!(
            closed,
            MAX_CONNECTIONS - crate::config::DEFAULT_MAX_CONNECTIONS_PER_CLIENT
        );
        // Another client is served at once.
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            get(
                addr,
                "/healthz",
                &format!("Host: 127.0.0.1:{}\r\n", addr.port()),
            ),
        )
        .await
        .expect("served without waiting for the idle ones");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(
            state.metrics.snapshot().connections_refused,
            (MAX_CONNECTIONS - crate::config::DEFAULT_MAX_CONNECTIONS_PER_CLIENT) as u64
        );
        stop.cancel();
    }

    #[test]
    fn refusals_are_logged_once_per_window_with_the_count_left_out() {
        let log = RefusalLog::default();
        assert_eq!(log.admit("allow_from"), Some(0));
        for _ in 0..499 {
            assert_eq!(log.admit("allow_from"), None);
        }
        assert_eq!(log.admit("host"), Some(0), "kinds are limited apart");
        // After the window, the next line says how many were not logged.
        log.0.lock().unwrap().get_mut("allow_from").unwrap().0 -= REFUSAL_LOG_WINDOW;
        assert_eq!(log.admit("allow_from"), Some(499));
    }

    #[tokio::test]
    async fn with_a_token_every_path_but_healthz_needs_it() {
        let token = "correct-horse-battery-staple";
        let access = Access {
            token_sha256: Some(Access::digest(token)),
            ..Access::default()
        };
        let (addr, _state, stop) = start(access).await;
        let host = format!("Host: 127.0.0.1:{}\r\n", addr.port());
        let answer = get(addr, "/status.json", &host).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(answer.contains("www-authenticate: Basic"), "{answer}");
        let wrong = get(
            addr,
            "/metrics",
            &format!("{host}Authorization: Bearer nope-nope-nope-nope\r\n"),
        )
        .await;
        assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
        let bearer = get(
            addr,
            "/metrics",
            &format!("{host}Authorization: Bearer {token}\r\n"),
        )
        .await;
        assert!(bearer.starts_with("HTTP/1.1 200"), "{bearer}");
        // A browser's Basic credentials: any user, the token as password ("tech:" + token).
        let basic = get(
            addr,
            "/",
            &format!("{host}Authorization: Basic dGVjaDpjb3JyZWN0LWhvcnNlLWJhdHRlcnktc3RhcGxl\r\n"),
        )
        .await;
        assert!(basic.starts_with("HTTP/1.1 200"), "{basic}");
        let health = get(addr, "/healthz", &host).await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        stop.cancel();
    }

    #[tokio::test]
    async fn tls_with_client_certificates_serves_only_clients_the_ca_issued() {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap();
        let client_key = rcgen::KeyPair::generate().unwrap();
        let client = rcgen::CertificateParams::new(vec!["biomed-ws".into()])
            .unwrap()
            .signed_by(&client_key, &ca, &ca_key)
            .unwrap();
        let write = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            p
        };
        let (ca_pem, cert, key, ccert, ckey) = (
            write("ca.pem", ca.pem()),
            write("server.pem", server.pem()),
            write("server.key", server_key.serialize_pem()),
            write("client.pem", client.pem()),
            write("client.key", client_key.serialize_pem()),
        );
        let config = crate::tls::server_config(&cert, &key, Some(&ca_pem), &[]).unwrap();
        let access = Access {
            tls: Some(tokio_rustls::TlsAcceptor::from(config)),
            ..Access::default()
        };
        let (addr, state, stop) = start(access).await;
        let request = |with_client: bool| {
            let (ca_pem, ccert, ckey) = (ca_pem.clone(), ccert.clone(), ckey.clone());
            async move {
                let identity = with_client.then_some((ccert.as_path(), ckey.as_path()));
                let client = crate::tls::client_config(&ca_pem, identity).unwrap();
                let connector = tokio_rustls::TlsConnector::from(client);
                let tcp = TcpStream::connect(addr).await.unwrap();
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                let mut tls = connector.connect(name, tcp).await.ok()?;
                let req = format!(
                    "GET /healthz HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
                    addr.port()
                );
                tls.write_all(req.as_bytes()).await.ok()?;
                let mut out = String::new();
                tls.read_to_string(&mut out).await.ok()?;
                Some(out)
            }
        };
        let answer = request(true)
            .await
            .expect("served over TLS with a client certificate");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            request(false).await.is_none_or(|a| a.is_empty()),
            "no client certificate: no answer"
        );
        // Plain HTTP on the TLS port gets nothing either.
        let plain = get(addr, "/status.json", "Host: localhost\r\n").await;
        assert!(!plain.contains("hub-test"), "{plain}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(state.metrics.snapshot().connections_refused >= 2);
        stop.cancel();
    }
}
