//! The one wiring point: builds the gateway's stages from the config, connects them, runs
//! them, and stops them in order.
//!
//! ```text
//!  sources ──Ingest (bounded: pipeline::INGEST_CHANNEL_CAPACITY)──► buffer writer ──► SQLite
//!                                                                      ▲     │ GroupReport
//!  uplink workers ──lease (reader)── Store ──ack / dead letter (bounded)─┘     ▼
//!       │                                                         ops::BufferReporter
//!       └──► transport (file, FHIR)                      metrics, audit ◄── ops server
//! ```
//!
//! Start order: buffer (quarantine, key, migrations) → gateway id → audit log → operations
//! server (so a taken port fails the start and `/healthz` answers early) → every source and
//! the uplink's transport prepared (whatever can fail at start fails here, before any of
//! them runs) → writer → sources → uplink workers.
//!
//! Stop order: `/readyz` turns 503 → sources stop acknowledging and end → the uplink
//! finishes the batch in hand → the writer commits what is queued (it also records the
//! uplink's deliveries, so it stops last) → the operations server stops → `gateway_stopped`
//! is audited.
//!
//! Architecture invariant: a stage that panics, or the writer or an uplink worker ending
//! while the gateway runs, stops the gateway with [`RunError::Stage`], so the process exits
//! non-zero and its supervisor restarts it; a crash is never reported as a clean stop.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::buffer::writer::WriterConfig;
use crate::buffer::{self, Store};
use crate::config::Config;
use crate::error_chain::Chain;
use crate::ingest::{self, Bindings, SourceContext};
use crate::ops::audit::{Audit, Event};
use crate::ops::buffer_report::BufferReporter;
use crate::ops::metrics::Metrics;
use crate::ops::{self, GatewayInfo, Phase};
use crate::pipeline::{self, WriterCounts};
use crate::uplink::{self, UplinkContext};
use crate::{fhir, RunError, RunSummary, StageFailure};

/// How long sources get to stop after shutdown begins.
const SOURCE_STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the uplink gets to finish the batch it is sending after shutdown begins.
const UPLINK_STOP_GRACE: Duration = Duration::from_secs(15);
/// How long the buffer writer gets to commit what is queued, after the others stopped.
const WRITER_STOP_GRACE: Duration = Duration::from_secs(10);
/// How often running stages are checked for an unexpected end.
const STAGE_CHECK: Duration = Duration::from_secs(1);

/// A running task and the name it is reported under.
struct Stage<T> {
    name: String,
    task: JoinHandle<T>,
}

impl<T> Stage<T> {
    fn new(name: impl Into<String>, task: JoinHandle<T>) -> Self {
        Self {
            name: name.into(),
            task,
        }
    }
}

/// Loads the active profile pack's vendor profiles (the shipped ones only when none is
/// active or it does not load: the gateway starts either way, and says why) and starts the
/// task that reloads them when another pack is activated, until `stop`.
fn start_profiles(
    config: &Config,
    metrics: &Arc<Metrics>,
    audit: &Audit,
    stop: &CancellationToken,
) -> crate::profile::json::SharedProfiles {
    use crate::packs::live;
    let shared = crate::profile::json::SharedProfiles::default();
    let packs = config.profiles.packs_dir(&config.gateway.data_dir);
    let keys = crate::packs::trusted_keys(config);
    let max_bytes = config.profiles.max_pack_bytes;
    let outcome = live::load_active(&packs, &keys, max_bytes);
    if outcome.is_err() {
        // Start with the shipped profiles; the failure is reported below.
        if let Ok(set) = crate::profile::json::ProfileSet::built_in() {
            shared.replace(set);
        }
    }
    live::apply(outcome, live::When::Start, &shared, metrics, audit);
    tokio::spawn(live::watch(
        live::Watch {
            packs,
            keys,
            max_bytes,
            every: Duration::from_secs(config.profiles.reload_check_s),
            shared: shared.clone(),
            metrics: metrics.clone(),
            audit: audit.clone(),
        },
        stop.clone(),
    ));
    shared
}

/// The operations server, when `[ops.http]` is on.
struct OpsServer {
    state: Arc<ops::server::OpsState<Store>>,
    task: Stage<()>,
}

/// Everything that runs, and how to stop each part.
pub(crate) struct Topology {
    store: Store,
    metrics: Arc<Metrics>,
    audit: Audit,
    ops: Option<OpsServer>,
    /// Stops the operations server, also when the start fails half-way.
    ops_stop: tokio_util::sync::DropGuard,
    writer: Option<Stage<WriterCounts>>,
    writer_stop: CancellationToken,
    sources: Vec<Stage<()>>,
    sources_stop: CancellationToken,
    uplink: Vec<Stage<()>>,
    uplink_stop: CancellationToken,
}

/// A stage's end, as the wiring judges it.
fn judge<T>(name: &str, result: Result<T, JoinError>) -> Result<T, RunError> {
    result.map_err(|e| RunError::Stage {
        stage: name.to_owned(),
        failure: if e.is_panic() {
            StageFailure::Panicked(panic_text(e))
        } else {
            StageFailure::Aborted
        },
    })
}

fn panic_text(e: JoinError) -> String {
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}

impl Topology {
    /// Opens the buffer and starts every stage the config names.
    pub(crate) async fn start(config: &Config) -> Result<Self, RunError> {
        let (store, writer, opened) =
            buffer::open(&config.gateway.data_dir, &crate::buffer_options(config)).await?;
        let id = crate::gateway_id(config)?;
        tracing::info!(
            gateway = %id,
            data_dir = %config.gateway.data_dir.display(),
            pending = store.pending(),
            "buffer open (WAL, synchronous=FULL, sealed)"
        );
        let metrics = Arc::new(Metrics::default());
        metrics.set_clock_drift_warn(Duration::from_secs(config.clinical.clock_drift_warn_s));
        let certs = ops::certs::inspect(config);
        let audit = ops::start_audit(config, &id, &certs)?;
        report_open(&opened, &audit);

        let ops_stop = CancellationToken::new();
        let ops = start_ops(config, &id, &store, &metrics, &audit, certs, &ops_stop).await?;

        // Whatever can fail at start fails here, before any source or worker runs.
        let (ingest_tx, ingest_rx) = pipeline::channel();
        let sources_stop = CancellationToken::new();
        // Every reading of every source passes the clinical checks before the buffer. The
        // config was validated, so the policy builds; a problem here is reported all the same.
        let admission = ingest::admission_policy(&config.clinical).map_err(RunError::Config)?;
        let ctx = SourceContext {
            ingest: pipeline::Ingest::new(ingest_tx, "gateway").with_admission(Arc::new(admission)),
            bindings: Bindings::from_config(&config.devices)
                .with_default(config.default_patient.as_ref()),
            metrics: metrics.clone(),
            audit: audit.clone(),
            shutdown: sources_stop.clone(),
        };
        let profiles = start_profiles(config, &metrics, &audit, &sources_stop);
        let prepared = ingest::prepare(&config.sources, &id, &ctx, &profiles)?;
        // Only sources hold ingest handles now: when they end, the writer may drain and end.
        drop(ctx);
        let gateway = fhir::Gateway {
            id,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            convert_units: (config.clinical.units == crate::config::UnitOutput::Canonical)
                .then_some(crate::profile::units::convert as fhir::UnitConverter),
        };
        let transports = config
            .uplink
            .destinations()
            .iter()
            .map(|d| uplink::prepare(d, &config.gateway.data_dir, gateway.clone()))
            .collect::<Result<Vec<_>, _>>()?;

        let writer_stop = CancellationToken::new();
        let reporter = BufferReporter::new(metrics.clone(), audit.clone());
        let writer_config = WriterConfig {
            max_rows: config.buffer.commit_max_rows,
            linger: Duration::from_millis(config.buffer.commit_linger_ms),
        };
        let writer = Stage::new(
            "buffer writer",
            tokio::spawn(writer.run(
                ingest_rx,
                writer_config,
                writer_stop.clone(),
                Box::new(move |report| reporter.report(report)),
            )),
        );
        if prepared.is_empty() {
            tracing::warn!("no source is configured: nothing will be read until a [sources.*] table is added to the config");
        }
        let sources = prepared
            .into_iter()
            .map(|p| Stage::new(format!("source {}", p.name), tokio::spawn(p.task)))
            .collect();
        let uplink_stop = CancellationToken::new();
        let uplink_ctx = UplinkContext {
            store: store.clone(),
            metrics: metrics.clone(),
            audit: audit.clone(),
            shutdown: uplink_stop.clone(),
        };
        let uplink = transports
            .into_iter()
            .flat_map(|transport| {
                let name = format!("uplink {} worker", uplink::Transport::name(&transport));
                uplink::start(transport, &config.uplink, &uplink_ctx)
                    .into_iter()
                    .map(move |task| Stage::new(name.clone(), task))
            })
            .collect();
        if let Some(ops) = &ops {
            ops.state.lifecycle.set(Phase::Running);
        }
        Ok(Self {
            store,
            metrics,
            audit,
            ops,
            ops_stop: ops_stop.drop_guard(),
            writer: Some(writer),
            writer_stop,
            sources,
            sources_stop,
            uplink,
            uplink_stop,
        })
    }

    /// Runs until `shutdown`, pinging the systemd watchdog if there is one. Returns early with
    /// [`RunError::Stage`] when a stage panics, or when the writer or an uplink worker ends
    /// while the gateway runs (a source may end by design, e.g. a simulator with
    /// `max_readings`).
    pub(crate) async fn wait(&mut self, shutdown: &CancellationToken) -> Result<(), RunError> {
        let watchdog = ops::systemd::Watchdog::from_env();
        if let Some(w) = &watchdog {
            tracing::info!(
                interval_ms = w.interval().as_millis() as u64,
                "systemd watchdog on"
            );
        }
        let ping = async {
            match &watchdog {
                Some(w) => {
                    w.keep_alive(shutdown, || Ok::<(), std::convert::Infallible>(()))
                        .await
                }
                None => std::future::pending().await,
            }
        };
        let monitor = async {
            let mut ticks = tokio::time::interval(STAGE_CHECK);
            loop {
                ticks.tick().await;
                if let Err(e) = self.check_stages().await {
                    return e;
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => Ok(()),
            e = monitor => Err(e),
            _ = ping => Ok(()),
        }
    }

    /// Awaits the stages that ended and judges their end.
    async fn check_stages(&mut self) -> Result<(), RunError> {
        for i in (0..self.sources.len()).rev() {
            if self.sources[i].task.is_finished() {
                let s = self.sources.swap_remove(i);
                judge(&s.name, s.task.await)?;
                tracing::info!(source = %s.name, "source ended");
            }
        }
        if let Some(w) = self.uplink.iter_mut().find(|w| w.task.is_finished()) {
            let name = w.name.clone();
            judge(&name, (&mut w.task).await)?;
            return Err(RunError::Stage {
                stage: name,
                failure: StageFailure::Ended,
            });
        }
        let writer_ended = self.writer.as_ref().is_some_and(|w| w.task.is_finished());
        if writer_ended && !self.sources.is_empty() {
            let w = self.writer.take().expect("checked");
            judge(&w.name, w.task.await)?;
            return Err(RunError::Stage {
                stage: w.name,
                failure: StageFailure::Ended,
            });
        }
        Ok(())
    }

    /// Stops every stage in order (see the module docs); the first stage failure met is
    /// returned after everything else was stopped.
    pub(crate) async fn stop(mut self) -> Result<RunSummary, RunError> {
        tracing::info!(
            "shutting down: sources stop acknowledging, the uplink finishes its batch, the buffer flushes"
        );
        if let Some(ops) = &self.ops {
            ops.state.lifecycle.set(Phase::Stopping);
        }
        let mut first_failure: Option<RunError> = None;
        let mut note = |r: Result<(), RunError>| {
            if let Err(e) = r {
                tracing::error!(error = %Chain(&e), "a stage failed");
                first_failure.get_or_insert(e);
            }
        };
        self.sources_stop.cancel();
        for s in std::mem::take(&mut self.sources) {
            note(
                join(
                    s,
                    SOURCE_STOP_GRACE,
                    "a source did not stop in time; aborted (unacknowledged data stays upstream)",
                )
                .await
                .map(|_| ()),
            );
        }
        self.uplink_stop.cancel();
        for w in std::mem::take(&mut self.uplink) {
            note(
                join(
                    w,
                    UPLINK_STOP_GRACE,
                    "the uplink did not finish its batch in time; it stays queued",
                )
                .await
                .map(|_| ()),
            );
        }
        self.writer_stop.cancel();
        let mut totals = WriterCounts::default();
        if let Some(w) = self.writer.take() {
            match join(
                w,
                WRITER_STOP_GRACE,
                "the buffer writer did not drain in time; unacknowledged data stays upstream",
            )
            .await
            {
                Ok(Some(t)) => totals = t,
                Ok(None) => {}
                Err(e) => note(Err(e)),
            }
        }
        drop(self.ops_stop);
        if let Some(ops) = self.ops.take() {
            note(judge(&ops.task.name, ops.task.task.await));
        }
        self.store.close().await;
        self.audit.flush_repeats();
        self.audit.record(Event::GatewayStopped);
        match first_failure {
            Some(e) => Err(e),
            None => Ok(RunSummary {
                stored: totals.inserted,
                delivered: Metrics::get(&self.metrics.readings_out),
            }),
        }
    }
}

/// Awaits `stage` for at most `grace`, then aborts it with `late` in the log. `None`: it was
/// aborted.
async fn join<T>(stage: Stage<T>, grace: Duration, late: &str) -> Result<Option<T>, RunError> {
    let abort = stage.task.abort_handle();
    match tokio::time::timeout(grace, stage.task).await {
        Ok(result) => judge(&stage.name, result).map(Some),
        Err(_) => {
            tracing::warn!(stage = %stage.name, "{late}");
            abort.abort();
            Ok(None)
        }
    }
}

/// Binds and starts the operations server (if configured).
async fn start_ops(
    config: &Config,
    id: &str,
    store: &Store,
    metrics: &Arc<Metrics>,
    audit: &Audit,
    certs: Vec<ops::certs::CertReport>,
    stop: &CancellationToken,
) -> Result<Option<OpsServer>, RunError> {
    let Some(http) = &config.ops.http else {
        return Ok(None);
    };
    let listener = ops::server::bind(http.listen)
        .await
        .map_err(|source| RunError::OpsListen {
            addr: http.listen,
            source,
        })?;
    let state = Arc::new(ops::server::OpsState {
        info: GatewayInfo::new(id, config),
        metrics: metrics.clone(),
        queue: store.clone(),
        certs,
        staleness: Duration::from_secs(http.ready_staleness_s),
        lifecycle: ops::Lifecycle::default(),
        audit: audit.clone(),
        allow_from: http.allow_from.clone(),
        access: ops_access(http)?,
        history: Default::default(),
    });
    let scheme = if http.tls.is_some() { "https" } else { "http" };
    tracing::info!(url = %format!("{scheme}://{}/", http.listen), "operations server: status page, /metrics, /healthz, /readyz");
    let task = tokio::spawn(ops::server::serve(listener, state.clone(), stop.clone()));
    Ok(Some(OpsServer {
        state,
        task: Stage::new("operations server", task),
    }))
}

/// The operations server's checks beyond `allow_from`: TLS, token, Host names, limits.
fn ops_access(http: &crate::config::OpsHttpConfig) -> Result<ops::server::Access, RunError> {
    let tls = match &http.tls {
        None => None,
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(
            crate::tls::server_config(&t.cert, &t.key, t.client_ca.as_deref(), &[])
                .map_err(|e| RunError::OpsAccess(e.to_string()))?,
        )),
    };
    let token_sha256 = match &http.token_file {
        None => None,
        Some(path) => {
            crate::keyfile::check_private(path)
                .map_err(|e| RunError::OpsAccess(format!("ops.http.token_file: {e}")))?;
            let text = crate::limits::read_capped(path, crate::limits::MAX_TOKEN_FILE_BYTES)
                .map_err(|e| {
                    RunError::OpsAccess(format!("ops.http.token_file {}: {e}", path.display()))
                })?;
            let token = text.trim();
            if token.len() < 16 {
                return Err(RunError::OpsAccess(
                    "ops.http.token_file: the token must be at least 16 characters".into(),
                ));
            }
            Some(ops::server::Access::digest(token))
        }
    };
    Ok(ops::server::Access {
        hosts: ops::server::Access::hosts_for(http.listen, &http.hosts),
        token_sha256,
        tls,
        per_client: http.max_connections_per_client,
        ..Default::default()
    })
}

/// Audits what opening the buffer found (the buffer logged it already).
fn report_open(report: &buffer::OpenReport, audit: &Audit) {
    if let Some(q) = &report.quarantined {
        audit.record(Event::BufferQuarantined {
            path: &q.path,
            reason: &q.reason,
        });
    }
    if let Some(path) = &report.key_created {
        audit.record(Event::BufferKeyCreated { path });
    }
    if let Some(rows) = report.rotated {
        audit.record(Event::BufferKeyRotated { rows });
    }
    for message in &report.warnings {
        audit.record(Event::BufferWarning { message });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicked_stage_is_an_error_naming_it_never_a_clean_end() {
        let task: JoinHandle<()> = tokio::spawn(async { panic!("index out of bounds") });
        let e = join(
            Stage::new("buffer writer", task),
            Duration::from_secs(5),
            "late",
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&e, RunError::Stage { stage, failure: StageFailure::Panicked(why) }
                if stage == "buffer writer" && why == "index out of bounds"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "buffer writer panicked: index out of bounds");
        let fine: JoinHandle<u32> = tokio::spawn(async { 7 });
        assert_eq!(
            join(Stage::new("x", fine), Duration::from_secs(5), "late")
                .await
                .unwrap(),
            Some(7)
        );
    }

    #[tokio::test]
    async fn a_stage_that_does_not_stop_in_time_is_aborted_not_waited_for() {
        let task: JoinHandle<()> = tokio::spawn(std::future::pending());
        let joined = join(
            Stage::new("source mqtt", task),
            Duration::from_millis(20),
            "late",
        )
        .await;
        assert!(matches!(joined, Ok(None)));
    }
}
