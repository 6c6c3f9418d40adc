//! The "broker + gateway + upstream" set-up of the end-to-end tests, a publisher that keeps
//! publishing until told to stop, and an exact reconciliation whose failure message says
//! what went wrong.
//!
//! - [`Rig`]: a mosquitto broker, the FHIR test upstream over mutual TLS, a working
//!   directory for the gateway's config and log, and a port for its operations server.
//!   [`Rig::start`] starts both with their defaults; [`Rig::builder`] sets the broker's
//!   options or the upstream's config first (TLS, another server identity, a rejection
//!   rule). [`Rig::mqtt_to_fhir`] is the usual gateway config (MQTT from the broker, FHIR to
//!   the upstream, data in the working directory); [`Rig::config`] the fault tests' (a
//!   `data_dir` of their own, on a faulty file system, and the operations server).
//! - [`Publisher`]: publishes [`scenario::reading`]s `0, 1, 2, …` with QoS 1 in chunks,
//!   each chunk on its own connection, and publishes a chunk again until the broker has
//!   acknowledged all of it (as a device retries until PUBACK; the identifier makes a
//!   second copy harmless). So what the broker accepted is always a prefix `0..n`.
//! - [`reconcile`]: exactly the readings `0..n`, each once, with the right values; the
//!   message counts missing, duplicated and unexpected readings and ends with the gateway
//!   log's tail.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;

use crate::gateway::GatewayProcess;
use crate::mosquitto::{self, publish_qos1_with, ClientOptions, Mosquitto, MosquittoOptions};
use crate::pki::TestPki;
use crate::scenario::{self, Expected};
use crate::upstream::{Upstream, UpstreamConfig};

/// The topic the publisher uses (the gateway subscribes to `vitals/#`).
pub const TOPIC: &str = "vitals/faults";

/// Devices the readings are spread over.
pub const DEVICES: u64 = 25;

/// How long a gateway may take to subscribe to the broker after it starts.
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Broker, upstream, the gateway's working directory and its operations port.
pub struct Rig {
    /// The throw-away PKI (upstream server and gateway client certificates).
    pub pki: TestPki,
    /// The broker.
    pub broker: Mosquitto,
    /// The FHIR upstream.
    pub upstream: Upstream,
    /// The gateway's working directory: `gateway.toml`, `gateway.log`, and `data/` with
    /// [`Rig::mqtt_to_fhir`].
    pub dir: TempDir,
    /// A free port for the gateway's `[ops.http]` server (in the config only where a test
    /// puts it there).
    pub ops_port: u16,
}

/// Makes a broker's options from the rig's PKI.
type BrokerOptions = Box<dyn FnOnce(&TestPki) -> MosquittoOptions>;
/// Adjusts the upstream's config, given the rig's PKI.
type UpstreamOptions = Box<dyn FnOnce(UpstreamConfig, &TestPki) -> UpstreamConfig>;

/// A [`Rig`] to be started: the broker's options and the upstream's config.
pub struct RigBuilder {
    broker: BrokerOptions,
    upstream: UpstreamOptions,
}

impl RigBuilder {
    /// The broker's options (default: [`MosquittoOptions::default`]), e.g.
    /// `|pki| MosquittoOptions::default().with_tls(pki)`.
    pub fn broker(mut self, options: impl FnOnce(&TestPki) -> MosquittoOptions + 'static) -> Self {
        self.broker = Box::new(options);
        self
    }

    /// Changes the upstream's config (default: [`UpstreamConfig::new`] as it is), e.g.
    /// `|config, pki| config.identity(pki, ServerIdentity::RogueCa)`.
    pub fn upstream(
        mut self,
        config: impl FnOnce(UpstreamConfig, &TestPki) -> UpstreamConfig + 'static,
    ) -> Self {
        self.upstream = Box::new(config);
        self
    }

    /// Generates the PKI, starts the broker and the upstream (no faults), makes the
    /// working directory and picks the operations port.
    pub async fn start(self) -> Rig {
        let pki = TestPki::generate();
        let broker = Mosquitto::start((self.broker)(&pki)).expect("start mosquitto");
        let upstream = Upstream::start((self.upstream)(UpstreamConfig::new(&pki), &pki))
            .await
            .expect("start the FHIR upstream");
        let dir = tempfile::Builder::new()
            .prefix("vitalbridge-rig-")
            .tempdir()
            .expect("tempdir");
        let ops_port = mosquitto::free_port().expect("free port");
        Rig {
            pki,
            broker,
            upstream,
            dir,
            ops_port,
        }
    }
}

impl Rig {
    /// Starts the broker and the upstream with their defaults (both up, no faults).
    pub async fn start() -> Rig {
        Rig::builder().start().await
    }

    /// A rig with other broker options or upstream config.
    pub fn builder() -> RigBuilder {
        RigBuilder {
            broker: Box::new(|_| MosquittoOptions::default()),
            upstream: Box::new(|config, _| config),
        }
    }

    /// `data/` in the working directory: the gateway's data directory in
    /// [`Rig::mqtt_to_fhir`].
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The usual gateway config: MQTT from the broker (plain), FHIR to the upstream with
    /// the PKI's client certificate, the buffer in [`Rig::data_dir`], no operations server;
    /// `extra` appended ([`scenario::mqtt_to_fhir`]).
    pub fn mqtt_to_fhir(&self, extra: &str) -> String {
        scenario::mqtt_to_fhir(
            &self.data_dir(),
            self.broker.port(),
            &self.upstream.url(),
            &self.pki,
            extra,
        )
    }

    /// The fault tests' gateway config: MQTT from the broker, FHIR to the upstream, the
    /// operations server on [`Rig::ops_port`] (readiness ignores the uplink for an hour, so a
    /// `503` from `/readyz` is about the gateway itself), buffer in `data_dir`; `extra`
    /// appended.
    pub fn config(&self, data_dir: &Path, extra: &str) -> String {
        let ops = crate::ops::ops_table(self.ops_port, "ready_staleness_s = 3600");
        scenario::mqtt_to_fhir(
            data_dir,
            self.broker.port(),
            &self.upstream.url(),
            &self.pki,
            &format!("{ops}{extra}"),
        )
    }

    /// Starts the gateway with `config` in [`Rig::dir`] (does not wait for it).
    pub fn start_gateway(&self, config: &str) -> GatewayProcess {
        GatewayProcess::start(self.dir.path(), config).expect("start the gateway")
    }

    /// Starts the gateway with `config` and waits until it has subscribed to the broker
    /// (panics with its log if it has not within [`SUBSCRIBE_TIMEOUT`]).
    pub fn start_subscribed(&self, config: &str) -> GatewayProcess {
        let gw = self.start_gateway(config);
        assert!(
            wait_subscribed(&gw, 1, SUBSCRIBE_TIMEOUT),
            "the gateway did not subscribe\n{}",
            tail(&gw.log(), 40)
        );
        gw
    }

    /// The operations server's address.
    pub fn ops_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ops_port))
    }

    /// `GET /readyz`: status code and body, or `None` if the server does not answer.
    pub async fn readyz(&self) -> Option<(u16, String)> {
        let resp = crate::ops::get(self.ops_addr(), "/readyz").await.ok()?;
        Some((
            resp.status.as_u16(),
            String::from_utf8_lossy(&resp.body).into_owned(),
        ))
    }
}

/// Waits until the gateway's log says it subscribed `starts` times in all (the log is
/// appended to by every start); true if it did within `timeout`.
pub fn wait_subscribed(gw: &GatewayProcess, starts: usize, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if gw.log().matches("subscribed to MQTT topics").count() >= starts {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// The last `n` lines of a log.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// How the publisher paces itself.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Readings per chunk (one connection, one wait for every PUBACK).
    pub chunk: u64,
    /// Pause after each accepted chunk.
    pub pause: Duration,
    /// Stop by itself after this many readings were accepted.
    pub max: u64,
}

/// A background publisher of [`scenario::reading`]s `0, 1, 2, …`.
pub struct Publisher {
    accepted: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// What a publisher did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Readings `0..accepted` were acknowledged by the broker.
    pub accepted: u64,
    /// Chunks published again after a failed attempt (broker restarting, …).
    pub retries: u64,
}

impl Publisher {
    /// Starts publishing to the broker on `port` (on the current tokio runtime).
    pub fn start(port: u16, pace: Pace) -> Publisher {
        let accepted = Arc::new(AtomicU64::new(0));
        let retries = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (accepted, retries, stop) = (accepted.clone(), retries.clone(), stop.clone());
            tokio::spawn(async move {
                let mut opts = ClientOptions::new(port);
                opts.timeout = Duration::from_secs(20);
                let mut next = 0u64;
                // A chunk whose attempt failed may be partly at the broker: it is published
                // again even after `stop`, so that what the broker holds stays `0..next`.
                let mut in_doubt = false;
                while next < pace.max && (in_doubt || !stop.load(Ordering::SeqCst)) {
                    let end = (next + pace.chunk).min(pace.max);
                    let payloads: Vec<Vec<u8>> = (next..end)
                        .map(|i| scenario::reading(i, DEVICES).0)
                        .collect();
                    match publish_qos1_with(&opts, TOPIC, payloads).await {
                        Ok(_) => {
                            in_doubt = false;
                            next = end;
                            accepted.store(next, Ordering::SeqCst);
                            tokio::time::sleep(pace.pause).await;
                        }
                        Err(_) => {
                            in_doubt = true;
                            // Broker away (restarting): the same chunk again in a moment.
                            retries.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            })
        };
        Publisher {
            accepted,
            retries,
            stop,
            task,
        }
    }

    /// Readings accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Whether it stopped by itself (reached its `max`).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops after the chunk in progress is accepted; returns what was published.
    pub async fn stop(self) -> Published {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("publisher task");
        Published {
            accepted: self.accepted.load(Ordering::SeqCst),
            retries: self.retries.load(Ordering::SeqCst),
        }
    }
}

/// What readings `0..n` must become at the upstream.
pub fn expected(n: u64) -> Vec<Expected> {
    (0..n).map(|i| scenario::reading(i, DEVICES).1).collect()
}

/// Checks that the upstream holds exactly readings `0..n` (see [`Publisher`]), each once,
/// with the right code, value, unit and time. The error says how many are missing,
/// duplicated or unexpected, lists the first differences, and ends with the gateway log.
pub fn reconcile(upstream: &Upstream, n: u64, gateway_log: &str) -> Result<(), String> {
    let want = expected(n);
    let observations = upstream.observations();
    let mut count: HashMap<String, usize> = HashMap::new();
    for o in &observations {
        *count.entry(scenario::observed(o).time).or_default() += 1;
    }
    let missing: Vec<u64> = (0..n)
        .filter(|i| !count.contains_key(&want[*i as usize].time))
        .collect();
    let duplicated = count.values().filter(|c| **c > 1).count();
    let wanted: std::collections::HashSet<&str> = want.iter().map(|e| e.time.as_str()).collect();
    let unexpected = count
        .keys()
        .filter(|t| !wanted.contains(t.as_str()))
        .count();
    let duplicate_ids = upstream.duplicate_identifiers();
    let problems = scenario::compare(&observations, &want);
    if problems.is_empty() && duplicate_ids.is_empty() {
        return Ok(());
    }
    let first_missing = ranges(&missing);
    Err(format!(
        "{} readings accepted by the broker, {} Observations at the upstream: {} missing \
         ({first_missing}), {duplicated} stored more than once, {unexpected} never \
         published, {} identifiers held by two resources\nfirst differences:\n  {}{}",
        n,
        observations.len(),
        missing.len(),
        duplicate_ids.len(),
        problems.join("\n  "),
        if gateway_log.is_empty() {
            String::new()
        } else {
            format!("\n--- gateway log (tail) ---\n{}", tail(gateway_log, 60))
        }
    ))
}

/// Waits until the upstream holds at least `n` Observations; gives up early when the count
/// has not moved for `quiet` (the gateway retries every 2 s at most, so a longer silence
/// means nothing more is coming), and at `timeout`. Returns the count.
pub async fn wait_for_delivery(
    upstream: &Upstream,
    n: usize,
    quiet: Duration,
    timeout: Duration,
) -> usize {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = (upstream.observation_count(), tokio::time::Instant::now());
    loop {
        let now = tokio::time::Instant::now();
        let count = upstream.observation_count();
        if count >= n || now >= deadline {
            return count;
        }
        if count != last.0 {
            last = (count, now);
        } else if now - last.1 >= quiet {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `[3, 4, 5, 9]` as `3..=5, 9` (the first 10 runs).
fn ranges(ids: &[u64]) -> String {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &i in ids {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == i => *end = i,
            _ => runs.push((i, i)),
        }
    }
    let mut text: Vec<String> = runs
        .iter()
        .take(10)
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}..={b}")
            }
        })
        .collect();
    if runs.len() > 10 {
        text.push(format!("and {} more runs", runs.len() - 10));
    }
    text.join(", ")
}
