//! Vitalbridge: an edge gateway for remote patient monitoring and bedside devices.
//!
//! Readings come in from sources ([`ingest`]), are decoded by device profiles ([`profile`])
//! into the plain domain model ([`model`]), committed durably to the SQLite buffer
//! ([`buffer`]), mapped to FHIR R4 ([`fhir`]) and forwarded by the uplink ([`uplink`]).
//!
//! This file is the only place that creates channels and starts stages ([`run`]). Stages do
//! not know each other: sources talk to the buffer through [`pipeline::Ingest`], the uplink
//! reads the buffer through [`buffer::Store`]. See ARCHITECTURE.md for the map and the
//! invariants.
#![warn(missing_docs)]

pub mod buffer;
pub mod config;
pub mod fhir;
pub mod fsmode;
pub mod ingest;
pub mod keyfile;
pub mod limits;
pub mod model;
pub mod ops;
pub mod pipeline;
pub mod profile;
pub mod tls;
pub mod tools;
pub mod uplink;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::buffer::writer::{GroupReport, Transition, WriterConfig};
use crate::config::{Config, ConfigError, Destination};
use crate::ingest::Bindings;
use crate::model::PatientRef;
use crate::ops::audit::{Audit, Event};
use crate::ops::metrics::Metrics;
use crate::ops::{GatewayInfo, Phase, QueueGauges};
use crate::pipeline::Ingest;
use crate::uplink::batcher::BatcherConfig;
use crate::uplink::Transport;

/// How long sources get to stop after shutdown begins.
const SOURCE_STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the buffer writer gets to commit what the sources handed it, after they stopped.
const WRITER_STOP_GRACE: Duration = Duration::from_secs(10);
/// How long the uplink gets to finish the batch it is sending after shutdown begins.
const UPLINK_STOP_GRACE: Duration = Duration::from_secs(15);

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is invalid.
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Config(Vec<ConfigError>),
    /// The buffer could not be opened (including: another gateway holds the data directory).
    #[error(transparent)]
    Buffer(#[from] buffer::BufferError),
    /// TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The uplink or a source could not be set up.
    #[error("{0}")]
    Setup(String),
}

/// What a run did, for the exit log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunSummary {
    /// Readings stored by this run.
    pub stored: u64,
    /// Readings delivered by this run.
    pub delivered: u64,
}

/// The gateway id: from config, or generated once and kept in `<data_dir>/gateway-id`
/// (owner only). A kept id that cannot be read or is not a valid gateway id stops the start
/// rather than be replaced: the gateway's identity must not change behind the operator's
/// back.
pub fn gateway_id(config: &Config) -> Result<String, RunError> {
    if let Some(id) = &config.gateway.id {
        return Ok(id.clone());
    }
    let path = config.gateway.data_dir.join("gateway-id");
    let kept = match limits::read_capped(&path, limits::MAX_STATE_FILE_BYTES) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(RunError::Setup(format!(
                "cannot read the kept gateway id {}: {e}",
                path.display()
            )))
        }
    };
    if let Some(text) = kept {
        let id = text.trim().to_owned();
        if !id.is_empty() {
            config::check_gateway_id(&id).map_err(|e| {
                RunError::Setup(format!(
                    "{}: the kept gateway id {e}; fix the file, or remove it for a new id",
                    path.display()
                ))
            })?;
            let _ = fsmode::restrict_path(&path);
            return Ok(id);
        }
    }
    let id = format!("vb-{:016x}", rand::random::<u64>());
    fsmode::create_private_dir_all(&config.gateway.data_dir)
        .and_then(|()| fsmode::write_private_file(&path, format!("{id}\n").as_bytes()))
        .map_err(|e| RunError::Setup(format!("cannot write {}: {e}", path.display())))?;
    Ok(id)
}

fn bindings(config: &Config) -> Bindings {
    Bindings::new(config.devices.iter().filter_map(|d| {
        let patient = match (&d.patient_system, &d.patient_id, &d.patient_reference) {
            (Some(system), Some(value), _) => PatientRef {
                system: system.clone(),
                value: value.clone(),
            },
            (_, _, Some(reference)) => PatientRef {
                system: String::new(),
                value: reference.clone(),
            },
            _ => return None,
        };
        Some((d.id.clone(), d.user, patient))
    }))
}

/// The operations endpoints read queue figures from the buffer through this.
impl ops::QueueProbe for buffer::Store {
    async fn gauges(&self) -> Result<QueueGauges, String> {
        let s = self.live_stats().await.map_err(|e| e.to_string())?;
        let h = self.health();
        Ok(QueueGauges {
            pending: s.pending,
            capacity: self.capacity(),
            leased: s.leased,
            dead_letters: s.dead_letters,
            oldest_age: s
                .oldest_age_ms
                .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
            storage: ops::StorageGauges {
                failing: h.failing.map(|p| ops::StorageFailing {
                    since: p.since,
                    during: p.during,
                    kind: p.failure.kind.as_str(),
                    message: p.failure.message.to_string(),
                }),
                free_bytes: h.free_bytes,
                floor_bytes: h.floor_bytes,
                low_space: h.low_space,
                quarantined: h.quarantined,
            },
        })
    }
}

/// Logs and audits what opening the buffer found.
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

/// Whether the buffer is full, so the log says when that starts and when it ends, not once
/// per refused request. Full: a request was refused with the buffer at 90 % of its capacity
/// or more (a refusal below that is a source's group too big for the room left, which it
/// splits); over: back at 80 % or less.
struct FullState<'a> {
    store: &'a buffer::Store,
    full: &'a AtomicBool,
}

/// Counts and audits what one buffer group commit did.
fn report_group(metrics: &Metrics, audit: &Audit, state: &FullState<'_>, report: &GroupReport<'_>) {
    let c = &report.counts;
    Metrics::add(&metrics.commits, c.commits);
    Metrics::add(&metrics.readings_duplicate, c.duplicates);
    metrics.buffer_refused_full(c.refused_full);
    metrics.buffer_refused_space(c.refused_space);
    for t in report.transitions {
        match t {
            Transition::Failed(p) => audit.record(Event::StorageFailed {
                during: p.during,
                error: p.failure.kind.as_str(),
            }),
            Transition::Recovered { after } => audit.record(Event::StorageRecovered {
                after_s: after.as_secs(),
            }),
            Transition::LowSpace {
                free_bytes,
                floor_bytes,
            } => audit.record(Event::LowSpace {
                free_bytes: *free_bytes,
                floor_bytes: *floor_bytes,
            }),
            Transition::SpaceOk { free_bytes } => audit.record(Event::SpaceOk {
                free_bytes: *free_bytes,
            }),
        }
    }
    let (pending, capacity) = (state.store.pending(), state.store.capacity());
    if c.refused_full > 0 && pending >= capacity * 9 / 10 {
        if !state.full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "buffer full: sources stop acknowledging and devices keep their readings until the uplink makes room"
            );
        }
    } else if pending <= capacity * 8 / 10 && state.full.swap(false, Ordering::Relaxed) {
        tracing::info!("buffer has room again: sources acknowledge again");
    }
    if let Some(e) = report.error {
        metrics.buffer_commit_failed(e.to_string());
    }
    if let Some(at) = report.committed_at {
        metrics.readings_committed(report.readings, at);
    }
    // One audit line per origin per commit, so a flood of garbage costs a line per group.
    let mut by_origin: Vec<(&str, &str, usize, usize)> = Vec::new();
    for (source, rejected) in report.rejected {
        metrics.payload_dead_lettered(source);
        match by_origin
            .iter_mut()
            .find(|(_, o, _, _)| *o == rejected.origin)
        {
            Some((_, _, count, bytes)) => {
                *count += 1;
                *bytes += rejected.payload.len();
            }
            None => by_origin.push((source, &rejected.origin, 1, rejected.payload.len())),
        }
    }
    for (source, origin, count, bytes) in by_origin {
        audit.record(Event::PayloadDeadLettered {
            source,
            origin,
            count,
            bytes,
        });
    }
}

/// Runs the gateway until `shutdown` is cancelled, then stops in order: sources stop
/// acknowledging, the buffer writer commits what it has, the uplink finishes its current
/// batch, the operations server stops. `ready` is called once everything is started.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    ready: impl FnOnce(),
) -> Result<RunSummary, RunError> {
    config.validate().map_err(RunError::Config)?;
    let (store, writer, opened) =
        buffer::open(&config.gateway.data_dir, &buffer_options(&config)).await?;
    let id = gateway_id(&config)?;
    let gateway = fhir::Gateway {
        id: id.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    tracing::info!(
        gateway = %id,
        data_dir = %config.gateway.data_dir.display(),
        pending = store.pending(),
        "buffer open (WAL, synchronous=FULL, sealed)"
    );
    let metrics = Arc::new(Metrics::default());
    let certs = ops::certs::inspect(&config);
    let audit = ops::start_audit(&config, &id, &certs)
        .map_err(|e| RunError::Setup(format!("ops.audit_log: {e}")))?;
    report_open(&opened, &audit);

    // Operations endpoints, first, so a taken port fails the start and /healthz answers early.
    let ops_stop = CancellationToken::new();
    // Stops the server on an early error return too.
    let _ops_stop_on_drop = ops_stop.clone().drop_guard();
    let mut ops_server = None;
    if let Some(http) = &config.ops.http {
        let listener = ops::server::bind(http.listen).await.map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                " (another program, perhaps another gateway, has this port: set \
                 [ops.http] listen to a free one)"
            } else {
                ""
            };
            RunError::Setup(format!(
                "ops.http.listen: cannot listen on {}: {e}{hint}",
                http.listen
            ))
        })?;
        let state = Arc::new(ops::server::OpsState {
            info: GatewayInfo::new(&id, &config),
            metrics: metrics.clone(),
            queue: store.clone(),
            certs,
            staleness: Duration::from_secs(http.ready_staleness_s),
            lifecycle: ops::Lifecycle::default(),
            audit: audit.clone(),
            allow_from: http.allow_from.clone(),
        });
        tracing::info!(url = %format!("http://{}/", http.listen), "operations server: status page, /metrics, /healthz, /readyz");
        let task = tokio::spawn(ops::server::serve(
            listener,
            state.clone(),
            ops_stop.clone(),
        ));
        ops_server = Some((state, task));
    }

    // Sources → buffer writer.
    let (ingest_tx, ingest_rx) = pipeline::channel();
    let writer_config = WriterConfig {
        max_rows: config.buffer.commit_max_rows,
        linger: Duration::from_millis(config.buffer.commit_linger_ms),
    };
    let (writer_metrics, writer_audit) = (metrics.clone(), audit.clone());
    let (writer_store, full) = (store.clone(), AtomicBool::new(false));
    let writer_stop = CancellationToken::new();
    let writer = tokio::spawn(writer.run(
        ingest_rx,
        writer_config,
        writer_stop.clone(),
        Box::new(move |report| {
            let state = FullState {
                store: &writer_store,
                full: &full,
            };
            report_group(&writer_metrics, &writer_audit, &state, report)
        }),
    ));

    let sources_stop = CancellationToken::new();
    let mut sources: Vec<JoinHandle<()>> = Vec::new();
    let bindings = bindings(&config);
    if let Some(sim) = config.sources.sim.clone() {
        let ingest = Ingest::new(ingest_tx.clone(), "sim");
        sources.push(tokio::spawn(ingest::sim::run(
            sim,
            ingest,
            bindings.clone(),
            sources_stop.clone(),
        )));
    }
    if let Some(mqtt) = &config.sources.mqtt {
        let tls = match &mqtt.tls {
            Some(t) => {
                let identity = t.cert.as_deref().zip(t.key.as_deref());
                Some(tls::client_config(&t.ca, identity)?)
            }
            None => None,
        };
        let client_id = mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("vitalbridge-{id}"));
        let source = ingest::mqtt::MqttSource::new(mqtt, client_id, tls)
            .map_err(|e| RunError::Setup(e.to_string()))?;
        let ingest = Ingest::new(ingest_tx.clone(), "mqtt");
        sources.push(tokio::spawn(source.run(
            ingest,
            bindings.clone(),
            metrics.clone(),
            audit.clone(),
            sources_stop.clone(),
        )));
    }
    if let Some(ble) = &config.sources.ble {
        sources.push(spawn_ble(
            ble,
            &ingest_tx,
            &bindings,
            &metrics,
            &sources_stop,
        )?);
    }
    for port in &config.sources.serial {
        let source =
            ingest::serial::SerialSource::new(port).map_err(|e| RunError::Setup(e.to_string()))?;
        let ingest = Ingest::new(ingest_tx.clone(), source.origin());
        sources.push(tokio::spawn(source.run(
            ingest,
            bindings.clone(),
            metrics.clone(),
            audit.clone(),
            sources_stop.clone(),
        )));
    }
    if sources.is_empty() {
        tracing::warn!("no source is configured: nothing will be read until a [sources.*] table is added to the config");
    }
    // Only sources hold ingest handles now: when they end, the writer drains and ends.
    drop(ingest_tx);

    // Buffer → uplink.
    let uplink_stop = CancellationToken::new();
    let batcher = BatcherConfig {
        batch_size: config.uplink.batch_size,
        retry_initial: Duration::from_millis(config.uplink.retry_initial_ms),
        retry_max: Duration::from_millis(config.uplink.retry_max_ms),
    };
    let workers = match config.uplink.destination() {
        Destination::File(file) => {
            let dir = file
                .dir
                .clone()
                .unwrap_or_else(|| config.gateway.data_dir.join("out"));
            let transport = uplink::file::FileTransport::new(&dir, file.rotate_bytes, gateway)
                .map_err(|e| RunError::Setup(format!("uplink.file.dir {}: {e}", dir.display())))?;
            tracing::info!(dir = %dir.display(), "uplink: FHIR NDJSON files");
            spawn_workers(
                Arc::new(transport),
                &store,
                batcher,
                config.uplink.in_flight,
                &metrics,
                &audit,
                &uplink_stop,
            )
        }
        Destination::Fhir(fhir_cfg) => {
            let tls = tls::client_config(&fhir_cfg.ca, Some((&fhir_cfg.cert, &fhir_cfg.key)))?;
            let kind = if fhir_cfg.bundle_type == "batch" {
                fhir::BundleType::Batch
            } else {
                fhir::BundleType::Transaction
            };
            let transport = uplink::https::FhirTransport::new(
                &fhir_cfg.base_url,
                tls,
                Duration::from_secs(fhir_cfg.timeout_s),
                kind,
                gateway,
            )
            .map_err(|e| RunError::Setup(e.to_string()))?;
            tracing::info!(base_url = %fhir_cfg.base_url, "uplink: FHIR server over mutual TLS");
            spawn_workers(
                Arc::new(transport),
                &store,
                batcher,
                config.uplink.in_flight,
                &metrics,
                &audit,
                &uplink_stop,
            )
        }
    };

    if let Some((state, _)) = &ops_server {
        state.lifecycle.set(Phase::Running);
    }
    ready();
    match ops::systemd::Watchdog::from_env() {
        Some(watchdog) => {
            tracing::info!(
                interval_ms = watchdog.interval().as_millis() as u64,
                "systemd watchdog on"
            );
            watchdog
                .keep_alive(&shutdown, || stages_alive(&writer, &sources, &workers))
                .await
        }
        None => shutdown.cancelled().await,
    }
    tracing::info!(
        "shutting down: sources stop acknowledging, buffer flushes, uplink finishes its batch"
    );
    if let Some((state, _)) = &ops_server {
        state.lifecycle.set(Phase::Stopping);
    }

    sources_stop.cancel();
    for s in sources {
        let abort = s.abort_handle();
        if tokio::time::timeout(SOURCE_STOP_GRACE, s).await.is_err() {
            // Dropping it releases its ingest handle, so the writer can drain and end.
            tracing::warn!(
                "a source did not stop in time; aborting it (unacknowledged data stays upstream)"
            );
            abort.abort();
        }
    }
    // The writer also records the uplink's deliveries: stop it after the uplink.
    uplink_stop.cancel();
    for w in workers {
        let abort = w.abort_handle();
        if tokio::time::timeout(UPLINK_STOP_GRACE, w).await.is_err() {
            tracing::warn!("uplink did not finish its batch in time; it stays queued");
            abort.abort();
        }
    }
    writer_stop.cancel();
    let totals = match tokio::time::timeout(WRITER_STOP_GRACE, writer).await {
        Ok(totals) => totals.unwrap_or_default(),
        Err(_) => {
            tracing::warn!(
                "the buffer writer did not drain in time; unacknowledged data stays upstream"
            );
            Default::default()
        }
    };
    ops_stop.cancel();
    if let Some((_, task)) = ops_server {
        let _ = task.await;
    }
    store.close().await;
    audit.flush_repeats();
    audit.record(Event::GatewayStopped);
    Ok(RunSummary {
        stored: totals.inserted,
        delivered: Metrics::get(&metrics.readings_out),
    })
}

/// Starts the BLE source over the host's adapter (btleplug), or refuses when the binary was
/// built without Bluetooth support.
fn spawn_ble(
    config: &config::BleSourceConfig,
    ingest_tx: &tokio::sync::mpsc::Sender<pipeline::Request>,
    bindings: &Bindings,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) -> Result<JoinHandle<()>, RunError> {
    let source = ingest::ble::BleSource::new(config).map_err(|e| RunError::Setup(e.to_string()))?;
    #[cfg(all(feature = "ble", target_os = "linux"))]
    {
        let central = ingest::ble::btleplug::BtleplugCentral::new();
        let ingest = Ingest::new(ingest_tx.clone(), "ble");
        Ok(tokio::spawn(source.run(
            central,
            ingest,
            bindings.clone(),
            metrics.clone(),
            stop.clone(),
        )))
    }
    #[cfg(not(all(feature = "ble", target_os = "linux")))]
    {
        let _ = (source, ingest_tx, bindings, metrics, stop);
        Err(RunError::Setup(format!(
            "sources.ble: {}",
            ingest::ble::BleError::NotBuilt
        )))
    }
}

/// The watchdog's health check: the stages that must run for the whole life of the gateway
/// are still running. The buffer writer may end only once every source has ended (it drains
/// and stops when the last `Ingest` handle is dropped, e.g. after a simulator with
/// `max_readings`); uplink workers end only at shutdown. A finished task here means it
/// panicked, and only a restart brings it back. Sources themselves are not checked: they
/// reconnect on their own, and some end by design.
fn stages_alive(
    writer: &JoinHandle<buffer::writer::WriterCounts>,
    sources: &[JoinHandle<()>],
    workers: &[JoinHandle<()>],
) -> Result<(), String> {
    if writer.is_finished() && sources.iter().any(|s| !s.is_finished()) {
        return Err("the buffer writer stopped while sources are running".to_owned());
    }
    let stopped = workers.iter().filter(|w| w.is_finished()).count();
    if stopped > 0 {
        return Err(format!(
            "{stopped} of {} uplink workers stopped",
            workers.len()
        ));
    }
    Ok(())
}

fn spawn_workers<T: Transport>(
    transport: Arc<T>,
    store: &buffer::Store,
    config: BatcherConfig,
    count: usize,
    metrics: &Arc<Metrics>,
    audit: &Audit,
    stop: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    metrics.uplink_registered(transport.name());
    (0..count)
        .map(|_| {
            tokio::spawn(uplink::batcher::run(
                store.clone(),
                transport.clone(),
                config,
                metrics.clone(),
                audit.clone(),
                stop.clone(),
            ))
        })
        .collect()
}

/// How to open the buffer, from the config.
pub fn buffer_options(config: &Config) -> buffer::OpenOptions {
    buffer::OpenOptions {
        capacity: config.buffer.capacity,
        key_file: config.buffer.key_file.clone(),
        previous_key_files: config.buffer.previous_key_files.clone(),
        min_free_bytes: config
            .buffer
            .min_free_mb
            .map(|mb| mb.saturating_mul(1024 * 1024)),
    }
}

/// Loads the config file, or the demo defaults when `path` is `None`.
pub fn load_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::default()),
    }
}
