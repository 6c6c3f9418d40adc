//! A FHIR R4 test server ("upstream") over HTTPS with mutual TLS, for the gateway's uplink.
//!
//! [`Upstream::start`] binds `127.0.0.1:0` and serves on the caller's tokio runtime. The
//! handshake REQUIRES a client certificate that chains to the test CA; every failed
//! handshake is counted ([`Upstream::tls_failures`]) with its reason.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use vitalbridge_tests::pki::TestPki;
//! use vitalbridge_tests::upstream::{Fault, Upstream, UpstreamConfig};
//! let pki = TestPki::generate();
//! let upstream = Upstream::start(UpstreamConfig::new(&pki)).await?;
//! upstream.faults().push_n(Fault::ServiceUnavailable, 2);
//! // ... point the gateway at upstream.url() with pki.ca_cert_path() / pki.client_files() ...
//! assert!(upstream.wait_for_observations(100, Duration::from_secs(30)).await);
//! upstream.assert_no_duplicate_identifiers();
//! # Ok(()) }
//! ```
//!
//! # What it serves (base path `/fhir` by default)
//!
//! - `POST {base}` or `POST {base}/` with a `transaction` or `batch` Bundle. Every entry must
//!   be `request.method` `POST` to `request.url` = the resource type. An entry with
//!   `request.ifNoneExist` of the form `identifier=SYSTEM|VALUE` (or `identifier=VALUE`, any
//!   system) is a conditional create: if a resource of that type already has that identifier
//!   the entry answers `200 OK` with the existing `location`, otherwise the resource is stored
//!   under a new id and the entry answers `201 Created` with `location`
//!   `TYPE/ID/_history/1`. The query is decoded like a URL query string (`%XX` escapes, and
//!   `+` means a space, as in common servers): a client must percent-encode a `+` in an
//!   identifier (e.g. a timestamp offset), or the lookup misses and a retry duplicates.
//!   Several matches answer `412`. An entry without `ifNoneExist` always creates.
//!   Entries are processed in order, so a second entry with the same identifier in the same
//!   Bundle answers `200 OK` (lenient).
//! - `fullUrl`s of entries (typically `urn:uuid:...`) map to the `TYPE/ID` each entry ended
//!   up with (created or existing); every `reference` in a stored resource that names one of
//!   them is rewritten to `TYPE/ID` (so an Observation's `device.reference` ends as
//!   `Device/ID`). A `urn:uuid:` reference that no entry declares is an entry error (400).
//! - The answer is a `transaction-response` / `batch-response` Bundle with one entry per
//!   request entry, in order, each with `response.status` (`"201 Created"`, `"200 OK"`, ...),
//!   `location`, `etag`, `lastModified`.
//! - Malformed input (not JSON, not a Bundle, another Bundle type, an entry without
//!   `request`/`resource`, another method) → `400` with an OperationOutcome.
//! - `GET {base}/metadata` (a minimal CapabilityStatement), `GET {base}/TYPE/ID`, and
//!   `GET {base}/TYPE?identifier=SYSTEM|VALUE` (a `searchset` Bundle).
//!
//! # Entry errors: transaction vs batch
//!
//! An entry is in error when it is malformed, when [`UpstreamConfig::required_elements`] is on
//! (default) and an Observation lacks `status` or `code` (`422`), or when the
//! [`UpstreamConfig::reject_when`] / [`UpstreamConfig::reject_marker`] rule rejects its
//! resource (the rule's status, e.g. `422`). Then:
//!
//! - `batch`: entries are independent. The failing entry answers its status with an
//!   OperationOutcome in `response.outcome`; the others are applied normally (HTTP 200).
//! - `transaction`: FHIR transactions are all-or-nothing. With
//!   [`TransactionFailureMode::AllOrNothing`] (default) NOTHING is stored and the whole
//!   request answers the first failing entry's status with an OperationOutcome whose issue
//!   `expression` is `Bundle.entry[N]`. With [`TransactionFailureMode::PerEntry`]
//!   (non-conformant, for testing per-entry handling) it behaves like a batch but answers a
//!   `transaction-response`.
//!
//! # Fault injection
//!
//! [`Upstream::faults`] is a FIFO of [`Fault`]s, scriptable while running. Each `POST`
//! takes the next fault, if any (GETs never do); see [`Fault`] for what each does.
//!
//! # Observability
//!
//! [`Upstream::observations`], [`Upstream::devices`], [`Upstream::resources`],
//! [`Upstream::count_by_identifier`], [`Upstream::duplicate_identifiers`],
//! [`Upstream::log`] (one [`LogEntry`] per request), [`Upstream::tls_failures`] and the
//! `wait_*` helpers.
//!
//! Everything is kept in memory as `serde_json::Value`s (100k Observations is a few hundred
//! MB at most).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::pki::{ServerIdentity, TestPki};

/// How long a TCP peer may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the `wait_*` helpers re-check their condition.
const WAIT_POLL: Duration = Duration::from_millis(10);

/// FHIR JSON media type used on every response.
const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// A scripted misbehaviour for one `POST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `503 Service Unavailable` with an OperationOutcome (`transient`); nothing applied.
    ServiceUnavailable,
    /// `429 Too Many Requests` with `Retry-After: SECONDS` (whole seconds, the delay-seconds
    /// form) and an OperationOutcome (`throttled`); nothing applied.
    TooManyRequests {
        /// Value of the `Retry-After` header, in seconds.
        retry_after_secs: u64,
    },
    /// Any status (e.g. 500, 502, or a permanent 400) with an OperationOutcome; nothing
    /// applied.
    Status(u16),
    /// Apply the request (store the resources exactly as a normal request would), then close
    /// the connection without sending a response. The client sees a connection error and
    /// must retry; conditional create makes the retry answer `200 OK` for each entry.
    CommitThenDrop,
    /// Close the connection without applying the request or responding.
    DropBeforeCommit,
    /// Wait this long, then handle the request normally. The request is applied even if the
    /// client gave up meanwhile (like a slow server that still commits).
    Delay(Duration),
}

/// The shared FIFO of faults; see [`Upstream::faults`].
#[derive(Debug, Clone, Default)]
pub struct Faults {
    queue: Arc<Mutex<VecDeque<Fault>>>,
}

impl Faults {
    /// Appends one fault: it applies to the next `POST` not already claimed by an earlier one.
    pub fn push(&self, fault: Fault) {
        lock(&self.queue).push_back(fault);
    }

    /// Appends `n` copies of `fault` (e.g. "503 to the next 3 requests").
    pub fn push_n(&self, fault: Fault, n: usize) {
        let mut q = lock(&self.queue);
        for _ in 0..n {
            q.push_back(fault.clone());
        }
    }

    /// Removes every pending fault.
    pub fn clear(&self) {
        lock(&self.queue).clear();
    }

    /// Faults not yet consumed, in order.
    pub fn pending(&self) -> Vec<Fault> {
        lock(&self.queue).iter().cloned().collect()
    }

    /// Number of faults not yet consumed.
    pub fn len(&self) -> usize {
        lock(&self.queue).len()
    }

    /// Whether every fault has been consumed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pop(&self) -> Option<Fault> {
        lock(&self.queue).pop_front()
    }
}

/// Why the [`UpstreamConfig::reject_when`] rule refuses an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status for the entry (e.g. 422 or 400).
    pub status: u16,
    /// Text for the OperationOutcome's `diagnostics`.
    pub message: String,
}

/// What a `transaction` Bundle does when one entry is in error (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransactionFailureMode {
    /// FHIR semantics: nothing applied, whole-request error status + OperationOutcome.
    #[default]
    AllOrNothing,
    /// Non-conformant: per-entry statuses like a batch (answer type `transaction-response`).
    PerEntry,
}

type RejectFn = dyn Fn(&Value) -> Option<Rejection> + Send + Sync;

/// Configuration for [`Upstream::start`].
#[derive(Clone)]
pub struct UpstreamConfig {
    /// TLS server config (identity + client verification).
    tls: Arc<rustls::ServerConfig>,
    /// Base path, no trailing slash (`/fhir`).
    base_path: String,
    /// Optional per-entry rejection rule.
    reject: Option<Arc<RejectFn>>,
    /// Transaction semantics on entry errors.
    transaction_mode: TransactionFailureMode,
    /// Reject Observations missing `status` or `code`.
    required_elements: bool,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("base_path", &self.base_path)
            .field("reject", &self.reject.is_some())
            .field("transaction_mode", &self.transaction_mode)
            .field("required_elements", &self.required_elements)
            .finish_non_exhaustive()
    }
}

impl UpstreamConfig {
    /// Serves the trusted server certificate of `pki`, requires a client certificate from its
    /// CA, base path `/fhir`, all-or-nothing transactions, required elements checked, no
    /// rejection rule.
    pub fn new(pki: &TestPki) -> UpstreamConfig {
        UpstreamConfig {
            tls: pki.server_config(ServerIdentity::Trusted),
            base_path: "/fhir".to_string(),
            reject: None,
            transaction_mode: TransactionFailureMode::AllOrNothing,
            required_elements: true,
        }
    }

    /// Presents another server identity (rogue CA, wrong name) for negative TLS tests.
    pub fn identity(mut self, pki: &TestPki, identity: ServerIdentity) -> Self {
        self.tls = pki.server_config(identity);
        self
    }

    /// Uses an arbitrary rustls server config.
    pub fn tls_config(mut self, tls: Arc<rustls::ServerConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// Base path of the FHIR endpoint, e.g. `/fhir` (default) or `/r4`. Empty string = root.
    pub fn base_path(mut self, base: &str) -> Self {
        self.base_path = base.trim_end_matches('/').to_string();
        self
    }

    /// Rejects every entry whose resource makes `rule` return `Some`.
    pub fn reject_when(
        mut self,
        rule: impl Fn(&Value) -> Option<Rejection> + Send + Sync + 'static,
    ) -> Self {
        self.reject = Some(Arc::new(rule));
        self
    }

    /// Rejects, with `status`, every entry whose resource JSON contains `marker` anywhere
    /// (e.g. a device id or a value the test planted).
    pub fn reject_marker(self, marker: &str, status: u16) -> Self {
        let marker = marker.to_string();
        self.reject_when(move |resource| {
            let text = serde_json::to_string(resource).unwrap_or_default();
            text.contains(&marker).then(|| Rejection {
                status,
                message: "resource rejected by test rule".to_string(),
            })
        })
    }

    /// Transaction semantics on entry errors (default all-or-nothing).
    pub fn transaction_failure(mut self, mode: TransactionFailureMode) -> Self {
        self.transaction_mode = mode;
        self
    }

    /// Whether Observations without `status` or `code` (both 1..1 in R4) are rejected with
    /// 422 (default true).
    pub fn required_elements(mut self, on: bool) -> Self {
        self.required_elements = on;
        self
    }
}

/// One request as the upstream saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Wall-clock time the response was decided (or the connection dropped).
    pub at: SystemTime,
    /// Same, relative to [`Upstream::start`].
    pub since_start: Duration,
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The request's `Content-Type`, if any.
    pub content_type: Option<String>,
    /// HTTP status returned; `None` when the connection was dropped without a response.
    pub status: Option<u16>,
    /// Bundle `type` (`transaction`, `batch`), when the body was a Bundle.
    pub bundle_type: Option<String>,
    /// Number of Bundle entries.
    pub entries: usize,
    /// Entries that created a resource (committed).
    pub created: usize,
    /// Entries answered `200 OK` because the identifier already existed.
    pub existed: usize,
    /// Entries in error (and, for an all-or-nothing transaction, not applied at all).
    pub rejected: usize,
    /// The fault applied to this request, if any.
    pub fault: Option<Fault>,
}

/// One identifier held by more than one stored resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateIdentifier {
    /// Resource type.
    pub resource_type: String,
    /// `identifier.system` (empty if absent).
    pub system: String,
    /// `identifier.value`.
    pub value: String,
    /// Ids of the resources carrying it.
    pub ids: Vec<String>,
}

/// (resource type, identifier system, identifier value)
type IdentKey = (String, String, String);

#[derive(Default)]
struct Store {
    /// Last id handed out (ids are decimal strings, shared by all types).
    last_id: u64,
    /// Resources per type, in creation order.
    resources: HashMap<String, Vec<Value>>,
    /// `TYPE/ID` → index into `resources[TYPE]`.
    by_ref: HashMap<String, usize>,
    /// Identifier → ids carrying it (more than one = a duplicate).
    by_identifier: HashMap<IdentKey, Vec<String>>,
}

impl Store {
    fn find(&self, rtype: &str, system: Option<&str>, value: &str) -> Vec<String> {
        match system {
            Some(s) => self
                .by_identifier
                .get(&(rtype.to_string(), s.to_string(), value.to_string()))
                .cloned()
                .unwrap_or_default(),
            None => self
                .by_identifier
                .iter()
                .filter(|((t, _, v), _)| t == rtype && v == value)
                .flat_map(|(_, ids)| ids.iter().cloned())
                .collect(),
        }
    }

    fn insert(&mut self, rtype: &str, id: &str, resource: Value) {
        for (system, value) in identifiers(&resource) {
            self.by_identifier
                .entry((rtype.to_string(), system, value))
                .or_default()
                .push(id.to_string());
        }
        let list = self.resources.entry(rtype.to_string()).or_default();
        self.by_ref.insert(format!("{rtype}/{id}"), list.len());
        list.push(resource);
    }

    fn get(&self, rtype: &str, id: &str) -> Option<&Value> {
        let i = *self.by_ref.get(&format!("{rtype}/{id}"))?;
        self.resources.get(rtype)?.get(i)
    }
}

/// `(system, value)` of every `identifier` element with a value.
fn identifiers(resource: &Value) -> Vec<(String, String)> {
    resource
        .get("identifier")
        .and_then(Value::as_array)
        .map(|ids| {
            ids.iter()
                .filter_map(|i| {
                    let value = i.get("value")?.as_str()?.to_string();
                    let system = i
                        .get("system")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    Some((system, value))
                })
                .collect()
        })
        .unwrap_or_default()
}

struct Shared {
    started: Instant,
    cfg: UpstreamConfig,
    store: Mutex<Store>,
    faults: Faults,
    log: Mutex<Vec<LogEntry>>,
    tls_failures: AtomicUsize,
    tls_failure_reasons: Mutex<Vec<String>>,
    handshakes: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not hide the state from the assertions that follow.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running FHIR test server. Stops (listener closed, connections dropped) on drop.
pub struct Upstream {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// Accept loop; `None` while stopped.
    accept: Option<JoinHandle<()>>,
    /// Tells connection tasks to close (on stop/drop).
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Binds `127.0.0.1:0` and starts serving on the current tokio runtime.
    pub async fn start(cfg: UpstreamConfig) -> io::Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            started: Instant::now(),
            cfg,
            store: Mutex::new(Store::default()),
            faults: Faults::default(),
            log: Mutex::new(Vec::new()),
            tls_failures: AtomicUsize::new(0),
            tls_failure_reasons: Mutex::new(Vec::new()),
            handshakes: AtomicUsize::new(0),
        });
        let (shutdown, _) = watch::channel(false);
        let accept = Some(spawn_accept(listener, shared.clone(), shutdown.subscribe()));
        Ok(Upstream {
            shared,
            addr,
            accept,
            shutdown,
        })
    }

    /// `https://127.0.0.1:PORT/fhir` (the server certificate has the IP SAN).
    pub fn url(&self) -> String {
        format!(
            "https://127.0.0.1:{}{}",
            self.addr.port(),
            self.shared.cfg.base_path
        )
    }

    /// `https://localhost:PORT/fhir` (only 127.0.0.1 is bound, not ::1).
    pub fn url_localhost(&self) -> String {
        format!(
            "https://localhost:{}{}",
            self.addr.port(),
            self.shared.cfg.base_path
        )
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The fault queue (cheap clone, shared with the server).
    pub fn faults(&self) -> Faults {
        self.shared.faults.clone()
    }

    /// Closes the listener and every open connection; stored state is kept. Clients now see
    /// "connection refused" until [`Upstream::restart`].
    pub async fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.accept.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port with the same state (after [`Upstream::stop`]).
    pub async fn restart(&mut self) -> io::Result<()> {
        self.stop().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let (shutdown, _) = watch::channel(false);
        self.shutdown = shutdown;
        self.accept = Some(spawn_accept(
            listener,
            self.shared.clone(),
            self.shutdown.subscribe(),
        ));
        Ok(())
    }

    /// Every stored resource of `resource_type`, in creation order (with `id` and `meta`).
    pub fn resources(&self, resource_type: &str) -> Vec<Value> {
        lock(&self.shared.store)
            .resources
            .get(resource_type)
            .cloned()
            .unwrap_or_default()
    }

    /// Number of stored resources of `resource_type`.
    pub fn resource_count(&self, resource_type: &str) -> usize {
        lock(&self.shared.store)
            .resources
            .get(resource_type)
            .map_or(0, Vec::len)
    }

    /// Stored Observations, in creation order.
    pub fn observations(&self) -> Vec<Value> {
        self.resources("Observation")
    }

    /// Number of stored Observations.
    pub fn observation_count(&self) -> usize {
        self.resource_count("Observation")
    }

    /// Stored Devices, in creation order.
    pub fn devices(&self) -> Vec<Value> {
        self.resources("Device")
    }

    /// The stored resource `TYPE/ID`.
    pub fn get(&self, resource_type: &str, id: &str) -> Option<Value> {
        lock(&self.shared.store).get(resource_type, id).cloned()
    }

    /// How many stored resources of `resource_type` carry identifier `system|value`.
    pub fn count_by_identifier(&self, resource_type: &str, system: &str, value: &str) -> usize {
        lock(&self.shared.store)
            .find(resource_type, Some(system), value)
            .len()
    }

    /// Every identifier carried by more than one stored resource of the same type.
    pub fn duplicate_identifiers(&self) -> Vec<DuplicateIdentifier> {
        let store = lock(&self.shared.store);
        let mut dups: Vec<DuplicateIdentifier> = store
            .by_identifier
            .iter()
            .filter(|(_, ids)| ids.len() > 1)
            .map(|((t, s, v), ids)| DuplicateIdentifier {
                resource_type: t.clone(),
                system: s.clone(),
                value: v.clone(),
                ids: ids.clone(),
            })
            .collect();
        dups.sort_by(|a, b| {
            (&a.resource_type, &a.system, &a.value).cmp(&(&b.resource_type, &b.system, &b.value))
        });
        dups
    }

    /// Panics, listing up to 20 of them, if any identifier is stored twice.
    #[track_caller]
    pub fn assert_no_duplicate_identifiers(&self) {
        let dups = self.duplicate_identifiers();
        assert!(
            dups.is_empty(),
            "{} identifier(s) stored more than once, e.g. {:#?}",
            dups.len(),
            &dups[..dups.len().min(20)]
        );
    }

    /// One entry per request received, in the order responses were decided.
    pub fn log(&self) -> Vec<LogEntry> {
        lock(&self.shared.log).clone()
    }

    /// Number of requests received (all methods).
    pub fn request_count(&self) -> usize {
        lock(&self.shared.log).len()
    }

    /// TLS handshakes that failed (no/foreign client certificate, client rejected our
    /// certificate, timeout, garbage).
    pub fn tls_failures(&self) -> usize {
        self.shared.tls_failures.load(Ordering::SeqCst)
    }

    /// The error text of each failed handshake, in order.
    pub fn tls_failure_reasons(&self) -> Vec<String> {
        lock(&self.shared.tls_failure_reasons).clone()
    }

    /// TLS handshakes that succeeded (= connections served).
    pub fn handshakes(&self) -> usize {
        self.shared.handshakes.load(Ordering::SeqCst)
    }

    /// Waits until `cond(self)` holds, re-checking every 10 ms; false on timeout.
    pub async fn wait_until(&self, timeout: Duration, cond: impl Fn(&Upstream) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Waits until at least `n` Observations are stored; false on timeout.
    pub async fn wait_for_observations(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |u| u.observation_count() >= n)
            .await
    }

    /// Waits until at least `n` TLS handshakes have failed; false on timeout.
    pub async fn wait_for_tls_failures(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |u| u.tls_failures() >= n).await
    }

    /// Waits until at least `n` requests have been logged; false on timeout.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |u| u.request_count() >= n).await
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.accept.take() {
            task.abort();
        }
    }
}

fn spawn_accept(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let acceptor = TlsAcceptor::from(shared.cfg.tls.clone());
        loop {
            let (tcp, _peer) = match listener.accept().await {
                Ok(c) => c,
                Err(_) => {
                    // e.g. EMFILE: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(serve_connection(
                tcp,
                acceptor.clone(),
                shared.clone(),
                shutdown.clone(),
            ));
        }
    })
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            record_tls_failure(&shared, e.to_string());
            return;
        }
        Err(_) => {
            record_tls_failure(&shared, "handshake timed out".to_string());
            return;
        }
    };
    shared.handshakes.fetch_add(1, Ordering::SeqCst);
    // Set by a request handler to close this connection without answering.
    let kill = Arc::new(Notify::new());
    let svc = {
        let shared = shared.clone();
        let kill = kill.clone();
        service_fn(move |req| handle(req, shared.clone(), kill.clone()))
    };
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc);
    // Dropping `conn` closes the socket (no TLS close_notify, no HTTP response).
    tokio::select! {
        _ = conn => {}
        _ = kill.notified() => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
}

fn record_tls_failure(shared: &Shared, reason: String) {
    lock(&shared.tls_failure_reasons).push(reason);
    shared.tls_failures.fetch_add(1, Ordering::SeqCst);
}

/// What one request produced, for the log.
#[derive(Default)]
struct Handled {
    status: Option<u16>,
    bundle_type: Option<String>,
    entries: usize,
    created: usize,
    existed: usize,
    rejected: usize,
}

type Resp = Response<Full<Bytes>>;

async fn handle(
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

fn search(store: &Store, rtype: &str, query: &str) -> Resp {
    let mut ids: Option<Vec<String>> = None;
    for (k, v) in parse_query(query) {
        match k.as_str() {
            "identifier" => {
                let (system, value) = split_token(&v);
                ids = Some(store.find(rtype, system, value));
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

/// `SYSTEM|VALUE` → (Some(SYSTEM), VALUE); `VALUE` → (None, VALUE) (any system);
/// `|VALUE` → (Some(""), VALUE) (no system).
fn split_token(token: &str) -> (Option<&str>, &str) {
    match token.split_once('|') {
        Some((s, v)) => (Some(s), v),
        None => (None, token),
    }
}

/// Splits a query string into decoded `(name, value)` pairs, form-style (`+` is a space).
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

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

/// Validates one entry and resolves its conditional create against the store and the
/// entries already planned in this Bundle.
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
        let mut matches = store.find(&rtype, system, value);
        if let Some(hits) = planned.get(&(rtype.clone(), value.to_string())) {
            for (s, id) in hits {
                if system.is_none_or(|sys| sys == s) && !matches.contains(id) {
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

fn now_instant() -> String {
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
fn process_bundle(store: &mut Store, cfg: &UpstreamConfig, body: &[u8]) -> (Resp, Handled) {
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

fn operation_outcome(code: &str, msg: &str, expression: Option<&str>) -> Value {
    let mut issue = json!({"severity": "error", "code": code, "diagnostics": msg});
    if let Some(e) = expression {
        issue["expression"] = json!([e]);
    }
    json!({"resourceType": "OperationOutcome", "issue": [issue]})
}

fn outcome_response(status: StatusCode, code: &str, msg: &str) -> Resp {
    json_response(status, &operation_outcome(code, msg, None))
}

fn json_response(status: StatusCode, body: &Value) -> Resp {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_treats_plus_as_space_and_decodes_escapes() {
        assert_eq!(percent_decode("a%7Cb"), "a|b");
        assert_eq!(percent_decode("12%3A00%2B01%3A00"), "12:00+01:00");
        assert_eq!(percent_decode("12:00+01:00"), "12:00 01:00");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn tokens_split_on_the_first_bar() {
        assert_eq!(split_token("http://x|v|w"), (Some("http://x"), "v|w"));
        assert_eq!(split_token("v"), (None, "v"));
        assert_eq!(split_token("|v"), (Some(""), "v"));
    }
}
