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

mod bundle;
mod config;
mod faults;
mod routes;
mod store;
mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{Rejection, TransactionFailureMode, UpstreamConfig};
pub use faults::{Fault, Faults};
use store::Store;
use tls::spawn_accept;

/// How often the `wait_*` helpers re-check their condition.
const WAIT_POLL: Duration = Duration::from_millis(10);

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

/// What the server's tasks and the [`Upstream`] handle share.
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
