//! Vitalbridge: an edge gateway for remote patient monitoring and bedside devices.
//!
//! Readings come in from sources ([`ingest`]), are decoded by device profiles ([`profile`])
//! into the plain domain model ([`model`]), committed durably to the SQLite buffer
//! ([`buffer`]), mapped to FHIR R4 ([`fhir`]) and forwarded by the uplink (`uplink`).
//!
//! [`run`] is the whole life of the gateway; `topology.rs` is the only place that creates
//! channels and starts stages. Stages do not know each other: sources talk to the buffer
//! through [`pipeline::Ingest`], the uplink reads the buffer through [`buffer::Store`], the
//! buffer reports to operations through [`pipeline::GroupReport`]. See ARCHITECTURE.md for
//! the map and the invariants.
#![warn(missing_docs)]

mod backoff;
pub mod buffer;
pub mod config;
pub mod error_chain;
pub mod fhir;
pub mod fsmode;
pub mod hl7;
pub mod ingest;
pub mod keyfile;
pub mod limits;
pub mod model;
pub mod ops;
pub mod packs;
pub mod pipeline;
pub mod profile;
mod secret_file;
pub mod serial_settings;
mod tls;
pub mod tools;
mod topology;
mod uplink;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};

/// Why the gateway could not run, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is invalid.
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Config(Vec<ConfigError>),
    /// The buffer could not be opened (including: another gateway holds the data directory).
    #[error(transparent)]
    Buffer(#[from] buffer::BufferError),
    /// The gateway id kept in the data directory cannot be read or written.
    #[error("the gateway id kept in {}", .path.display())]
    GatewayId {
        /// `<data_dir>/gateway-id`.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The gateway id kept in the data directory is not a valid id.
    #[error("{}: the kept gateway id {problem}; fix the file, or remove it for a new id", .path.display())]
    BadGatewayId {
        /// `<data_dir>/gateway-id`.
        path: PathBuf,
        /// What is wrong with it (part of the message, so not a source as well).
        problem: config::InvalidGatewayId,
    },
    /// The audit log cannot be opened.
    #[error("ops.audit_log")]
    Audit(#[from] ops::audit::AuditError),
    /// The operations port cannot be listened on.
    #[error("ops.http.listen: cannot listen on {addr}{}", listen_hint(.source))]
    OpsListen {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The operations server's TLS or token cannot be set up.
    #[error("ops.http: {0}")]
    OpsAccess(String),
    /// A source cannot start.
    #[error(transparent)]
    Source(#[from] ingest::SourceError),
    /// The uplink cannot start.
    #[error(transparent)]
    Uplink(#[from] uplink::UplinkError),
    /// A stage failed while the gateway ran.
    #[error("{stage} {failure}")]
    Stage {
        /// Which stage (`buffer writer`, `uplink worker`, `source mqtt`, …).
        stage: String,
        /// How.
        failure: StageFailure,
    },
}

fn listen_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        " (another program, perhaps another gateway, has this port: set [ops.http] listen to a free one)"
    } else {
        ""
    }
}

/// How a stage failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageFailure {
    /// It panicked (a bug: the message says where).
    #[error("panicked: {0}")]
    Panicked(String),
    /// It was aborted.
    #[error("was aborted")]
    Aborted,
    /// It ended while the gateway was running.
    #[error("ended while the gateway was running")]
    Ended,
}

/// What a run did, for the exit log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunSummary {
    /// Readings stored by this run.
    pub stored: u64,
    /// Readings delivered by this run.
    pub delivered: u64,
}

/// Runs the gateway until `shutdown` is cancelled (or a stage fails), then stops it in order:
/// sources stop acknowledging, the uplink finishes its current batch, the buffer writer
/// commits what it has, the operations server stops. `ready` is called once everything runs.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    ready: impl FnOnce(),
) -> Result<RunSummary, RunError> {
    validate_config(&config).map_err(RunError::Config)?;
    let mut topology = topology::Topology::start(&config).await?;
    ready();
    let waited = topology.wait(&shutdown).await;
    let stopped = topology.stop().await;
    waited?;
    stopped
}

/// Checks a configuration: what it can tell by itself ([`Config::validate`]), then what the
/// sources know (profiles, Bluetooth addresses, which `[[devices]]` name the same device:
/// [`ingest::check_config`]). Every problem, each naming its key; when a string is over its
/// length limit, only those problems.
pub fn validate_config(config: &Config) -> Result<(), Vec<ConfigError>> {
    config.check_lengths()?;
    let mut problems = config.validate().err().unwrap_or_default();
    problems.extend(ingest::check_config(&config.sources, &config.devices));
    if let Err(more) = ingest::admission_policy(&config.clinical) {
        problems.extend(more);
    }
    if let Some(fhir) = &config.uplink.fhir {
        problems.extend(uplink::auth::check_config(fhir));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
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
    let io = |source| RunError::GatewayId {
        path: path.clone(),
        source,
    };
    let kept = match limits::read_capped(&path, limits::MAX_STATE_FILE_BYTES) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    if let Some(id) = kept.as_deref().map(str::trim).filter(|id| !id.is_empty()) {
        config::check_gateway_id(id).map_err(|problem| RunError::BadGatewayId {
            path: path.clone(),
            problem,
        })?;
        let _ = fsmode::restrict_path(&path);
        return Ok(id.to_owned());
    }
    let id = format!("vb-{:016x}", rand::random::<u64>());
    fsmode::create_private_dir_all(&config.gateway.data_dir)
        .and_then(|()| fsmode::write_private_file(&path, format!("{id}\n").as_bytes()))
        .map_err(io)?;
    Ok(id)
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
        destinations: config
            .uplink
            .destinations()
            .iter()
            .map(|d| d.name().to_owned())
            .collect(),
    }
}

/// Every problem of a config file, for `check-config`: what reading it found (every unknown
/// key, wrong type and bad value, not only the first), then what [`validate_config`] finds
/// in the rest; each with its line where the file holds its key. Empty when it is good.
pub fn check_config_file(path: &Path) -> Vec<ConfigError> {
    let mut parsed = config::Parsed::read(path);
    if let Some(Err(problems)) = parsed.config().map(validate_config) {
        parsed.add_checked(problems);
    }
    parsed.problems()
}

/// `vitalbridge uplink test`: with the configured TLS files and `[uplink.fhir.auth]`, gets
/// an access token and reads the FHIR server's CapabilityStatement.
pub async fn uplink_test(config: &Config) -> UplinkTestReport {
    uplink::probe::run(config).await
}

/// `vitalbridge uplink jwks`: the public JWKS of `[uplink.fhir.auth]`'s `private_key_jwt`
/// key, to register with the authorization server; `None` for the other methods or without
/// `[uplink.fhir.auth]`.
pub fn uplink_jwks(config: &Config) -> Result<Option<serde_json::Value>, uplink::auth::LoadError> {
    uplink_jwks_keeping(config, &[])
}

/// [`uplink_jwks`] with the keys of `keep` (a published key set, read with
/// [`auth_wire::parse_public_jwks`]) after the configured key: the set to publish during a
/// key rotation.
pub fn uplink_jwks_keeping(
    config: &Config,
    keep: &[serde_json::Value],
) -> Result<Option<serde_json::Value>, uplink::auth::LoadError> {
    match config.uplink.fhir.as_ref().and_then(|f| f.auth.as_ref()) {
        Some(auth) => uplink::auth::public_jwks(auth, keep),
        None => Ok(None),
    }
}

pub use uplink::auth::wire as auth_wire;
pub use uplink::auth::LoadError as AuthLoadError;
pub use uplink::probe::{Report as UplinkTestReport, Verdict as UplinkTestVerdict};

/// Loads the config file, or the demo defaults when `path` is `None`.
pub fn load_config(path: Option<&Path>) -> Result<Config, Vec<ConfigError>> {
    match path {
        Some(p) => Config::load(p),
        None => Ok(Config::default()),
    }
}
