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
//! at once, request headers must arrive within [`HEADER_TIMEOUT`], and request bodies are
//! never read. Pages carry a strict Content-Security-Policy (scripts and styles from this
//! server only, no inline code, no framing); the page fills itself with `textContent`, never
//! HTML, so a device id cannot inject markup.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
pub const MAX_CONNECTIONS: usize = 32;
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
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
            state.metrics.connection_refused();
            tracing::warn!(client = %ip, "operations server: connection refused (not in ops.http.allow_from)");
            state.audit.record(Event::ConnectionRefused {
                endpoint: "ops",
                direction: "inbound",
                address: Some(ip),
                reason: "client not in ops.http.allow_from",
            });
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(
                client = %ip,
                "operations server: too many connections; closing this one"
            );
            continue;
        };
        let state = state.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
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
) -> Response<Full<Bytes>> {
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
                _ => response(
                    StatusCode::OK,
                    "application/json",
                    status::status_json(&view).to_string(),
                ),
            }
        }
        _ => response(StatusCode::NOT_FOUND, TEXT, "not found\n"),
    }
}
