//! The gateway's one TOML configuration file.
//!
//! Every table denies unknown keys, every field has a documented default, and
//! [`Config::validate`] checks what types cannot (URLs, file permissions, ranges) and names
//! the offending key. With no file at all the gateway runs [`Config::default`]: the built-in
//! simulator in, the buffer and FHIR NDJSON out under `./vitalbridge-data/`.
//!
//! `vitalbridge print-default-config` prints [`DEFAULT_CONFIG_TOML`], which is kept equal to
//! `Config::default()` by a test.
//!
//! ## Secrets from systemd
//!
//! A TLS file path written as `${CREDENTIALS_DIRECTORY}/NAME` names the credential `NAME`
//! that systemd passed to the service (`LoadCredential=NAME:…` in the unit, see
//! `systemd/README.md`). [`Config::load`] puts the value of `$CREDENTIALS_DIRECTORY` in its
//! place; when the variable is not set (the gateway was not started by such a unit) the path
//! stays as written and [`Config::validate`] says so. No other variable is expanded.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ops::net::Cidr;

/// The demo configuration as TOML, with a comment on every key. Parsing it gives
/// `Config::default()`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default-config.toml");

/// The prefix of a path inside systemd's credentials directory (see the module header).
pub const CREDENTIALS_PREFIX: &str = "${CREDENTIALS_DIRECTORY}/";

/// A configuration problem, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Dotted path of the key (e.g. `uplink.fhir.key`), or empty for the whole file.
    pub key: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Identity and storage location of this gateway.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// The durable store-and-forward buffer.
    #[serde(default)]
    pub buffer: BufferConfig,
    /// Where readings come from. A source that is absent is off.
    #[serde(default)]
    pub sources: SourcesConfig,
    /// Where readings go.
    #[serde(default)]
    pub uplink: UplinkConfig,
    /// Device → patient bindings.
    #[serde(default)]
    pub devices: Vec<DeviceBinding>,
    /// Logs, the audit log and the operations HTTP server.
    #[serde(default)]
    pub ops: OpsConfig,
}

impl Default for Config {
    /// The demo: simulator in, NDJSON out, all under `./vitalbridge-data`.
    fn default() -> Self {
        Self {
            gateway: GatewayConfig::default(),
            buffer: BufferConfig::default(),
            sources: SourcesConfig {
                sim: Some(SimConfig::default()),
                ..SourcesConfig::default()
            },
            uplink: UplinkConfig::default(),
            devices: Vec::new(),
            ops: OpsConfig {
                http: Some(OpsHttpConfig::default()),
                ..OpsConfig::default()
            },
        }
    }
}

/// `[gateway]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Stable id of this gateway, used in its FHIR Device and MQTT client id. Default: a random
    /// id generated on first start and kept in `<data_dir>/gateway-id`.
    #[serde(default)]
    pub id: Option<String>,
    /// Directory for the buffer database, the lock file and file-uplink output.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./vitalbridge-data")
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            id: None,
            data_dir: default_data_dir(),
        }
    }
}

/// `[buffer]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Most readings held undelivered. When full, sources stop acknowledging (backpressure);
    /// nothing buffered is ever dropped to make room.
    #[serde(default = "default_capacity")]
    pub capacity: u64,
    /// Most readings committed in one transaction (group commit).
    #[serde(default = "default_commit_max_rows")]
    pub commit_max_rows: usize,
    /// How long the writer waits for more readings before committing a small group, in ms.
    #[serde(default = "default_commit_linger_ms")]
    pub commit_linger_ms: u64,
}

fn default_capacity() -> u64 {
    1_000_000
}
fn default_commit_max_rows() -> usize {
    1024
}
fn default_commit_linger_ms() -> u64 {
    2
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            capacity: default_capacity(),
            commit_max_rows: default_commit_max_rows(),
            commit_linger_ms: default_commit_linger_ms(),
        }
    }
}

/// `[sources]`
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    /// `[sources.sim]`: the built-in device simulator.
    #[serde(default)]
    pub sim: Option<SimConfig>,
    /// `[sources.mqtt]`: readings published to an MQTT broker.
    #[serde(default)]
    pub mqtt: Option<MqttSourceConfig>,
    /// `[sources.ble]`: Bluetooth LE health devices (needs the `ble` build feature).
    #[serde(default)]
    pub ble: Option<BleSourceConfig>,
    /// `[[sources.serial]]`: serial ports (RS-232, USB-serial), one table per port.
    #[serde(default)]
    pub serial: Vec<SerialPortConfig>,
}

/// `[sources.ble]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BleSourceConfig {
    /// A directory of extra or replacement `ble-*.toml` device profiles. Unset: only the
    /// profiles built into the binary (the files of `device-profiles/`).
    #[serde(default)]
    pub profiles_dir: Option<PathBuf>,
    /// Set a device's clock (Current Time, 0x2A2B) when it allows writing it and is off by
    /// more than a couple of seconds. Device clocks are set to UTC.
    #[serde(default = "default_true")]
    pub set_device_clock: bool,
    /// Give up a connection attempt (connect and service discovery) after this many seconds.
    #[serde(default = "default_ble_connect_timeout_s")]
    pub connect_timeout_s: u64,
    /// First delay before reconnecting after a failed connection, in ms; doubles per
    /// failure up to `reconnect_max_ms`.
    #[serde(default = "default_ble_reconnect_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest delay before reconnecting, in ms.
    #[serde(default = "default_ble_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// The devices to connect to.
    #[serde(default)]
    pub devices: Vec<BleDeviceConfig>,
}

fn default_true() -> bool {
    true
}
fn default_ble_connect_timeout_s() -> u64 {
    20
}
fn default_ble_reconnect_initial_ms() -> u64 {
    1000
}
fn default_ble_reconnect_max_ms() -> u64 {
    300_000
}

/// `[[sources.ble.devices]]`: one device, or every device advertising a service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BleDeviceConfig {
    /// The device's Bluetooth address, `A1:B2:C3:D4:E5:F6`. Either this or `service`.
    #[serde(default)]
    pub address: Option<String>,
    /// Connect to any device advertising this GATT service (e.g. `1810`). Either this or
    /// `address`. Prefer addresses: a neighbour's cuff advertises the same service.
    #[serde(default)]
    pub service: Option<String>,
    /// Device profile id (e.g. `ble-blood-pressure`). Unset: the profile whose service the
    /// device advertises.
    #[serde(default)]
    pub profile: Option<String>,
}

/// `[sources.sim]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// How many simulated devices; they cycle through BP cuff, pulse oximeter, thermometer,
    /// scale and heart-rate strap.
    #[serde(default = "default_sim_devices")]
    pub devices: u32,
    /// Each device measures once per this many milliseconds.
    #[serde(default = "default_sim_interval_ms")]
    pub interval_ms: u64,
    /// Stop after this many readings in total (0 = run forever). For tests and demos.
    #[serde(default)]
    pub max_readings: u64,
}

fn default_sim_devices() -> u32 {
    5
}
fn default_sim_interval_ms() -> u64 {
    1000
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            devices: default_sim_devices(),
            interval_ms: default_sim_interval_ms(),
            max_readings: 0,
        }
    }
}

/// `[sources.mqtt]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// Broker URL: `mqtt://host:1883` or `mqtts://host:8883` (TLS; set `tls`).
    pub url: String,
    /// MQTT client id; must be stable, since the broker keeps the persistent session under it.
    /// Default: `vitalbridge-<gateway id>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Topic filters to subscribe to, at QoS 1.
    #[serde(default = "default_mqtt_topics")]
    pub topics: Vec<String>,
    /// Keep-alive interval in seconds.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// Largest accepted message, in bytes.
    #[serde(default = "default_max_packet_bytes")]
    pub max_packet_bytes: usize,
    /// TLS to the broker (required for `mqtts://`). With `cert` and `key`, mutual TLS.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
}

fn default_mqtt_topics() -> Vec<String> {
    vec!["vitalbridge/readings/#".to_owned()]
}
fn default_keep_alive_s() -> u64 {
    30
}
fn default_max_packet_bytes() -> usize {
    256 * 1024
}

/// `[[sources.serial]]`: one serial port and the device on it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialPortConfig {
    /// Name of this port in logs and dead-letter origins (`serial:<name>`), e.g.
    /// `bed-12-oximeter`. Unique among serial ports.
    pub name: String,
    /// Device path, e.g. `/dev/ttyUSB0` or a stable `/dev/serial/by-id/...` link. Give
    /// `path` or `usb`, not both.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// USB vendor and product id of the adapter or device, `VVVV:PPPP` in hex (e.g.
    /// `0403:6001`): the port is found wherever it appears, so a replug that gives it another
    /// ttyUSB name still works.
    #[serde(default)]
    pub usb: Option<String>,
    /// With `usb`: the USB serial-number string, to tell apart adapters with the same ids.
    #[serde(default)]
    pub usb_serial: Option<String>,
    /// What the device speaks: `firmware` (Vitalbridge frames, acknowledged) or `line`
    /// (ASCII lines described by a line profile).
    pub protocol: SerialProtocol,
    /// With `line`: the line profile id, e.g. `line-nonin-ascii`.
    #[serde(default)]
    pub profile: Option<String>,
    /// With `line`: a directory of `line-*.toml` profiles that add to or replace the
    /// built-in ones. Default: built-in profiles only.
    #[serde(default)]
    pub profiles_dir: Option<PathBuf>,
    /// With `line`: the device's stable id (the serial number on its label), used to bind it
    /// to a patient. Default: the port `name`.
    #[serde(default)]
    pub device_id: Option<String>,
    /// With `line`: the fixed UTC offset the device's clock keeps, for profiles whose lines
    /// carry a local time stamp, e.g. `+01:00`. Default: `+00:00`.
    #[serde(default)]
    pub device_utc_offset: Option<String>,
    /// Baud rate. Default: the line profile's, or 115200 for `firmware`.
    #[serde(default)]
    pub baud: Option<u32>,
    /// Data bits, 5–8. Default: the profile's, or 8.
    #[serde(default)]
    pub data_bits: Option<u8>,
    /// Parity: `none`, `odd` or `even`. Default: the profile's, or `none`.
    #[serde(default)]
    pub parity: Option<Parity>,
    /// Stop bits, 1 or 2. Default: the profile's, or 1.
    #[serde(default)]
    pub stop_bits: Option<u8>,
    /// Flow control: `none`, `software` (XON/XOFF) or `hardware` (RTS/CTS). Default: the
    /// profile's, or `none`.
    #[serde(default)]
    pub flow_control: Option<FlowControl>,
    /// Longest wait between attempts to (re)open the port, in ms; attempts start at 250 ms
    /// and double up to this.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
}

fn default_reconnect_max_ms() -> u64 {
    10_000
}

/// What a serial device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SerialProtocol {
    /// Vitalbridge firmware frames (`firmware/README.md`): acknowledged after commit.
    Firmware,
    /// ASCII lines decoded by a line profile (`device-profiles/line-*.toml`).
    Line,
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit.
    None,
    /// Odd parity.
    Odd,
    /// Even parity.
    Even,
}

/// Serial flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    /// None.
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

/// PEM files for a TLS client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The private CA that signed the server's certificate; the only trust anchor used.
    pub ca: PathBuf,
    /// This gateway's client certificate chain (mutual TLS).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key; must not be readable by group or others.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// `[uplink]`: exactly one of `file` or `fhir`; `file` when neither is given.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Readings per batch (one Bundle, or one file write).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Batches in flight at once.
    #[serde(default = "default_in_flight")]
    pub in_flight: usize,
    /// First retry delay, in ms; doubles per attempt, with jitter.
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest retry delay, in ms.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// `[uplink.file]`: FHIR NDJSON files.
    #[serde(default)]
    pub file: Option<FileUplinkConfig>,
    /// `[uplink.fhir]`: a FHIR server over HTTPS with mutual TLS.
    #[serde(default)]
    pub fhir: Option<FhirUplinkConfig>,
}

fn default_batch_size() -> usize {
    500
}
fn default_in_flight() -> usize {
    2
}
fn default_retry_initial_ms() -> u64 {
    500
}
fn default_retry_max_ms() -> u64 {
    60_000
}

impl Default for UplinkConfig {
    fn default() -> Self {
        Self {
            batch_size: default_batch_size(),
            in_flight: default_in_flight(),
            retry_initial_ms: default_retry_initial_ms(),
            retry_max_ms: default_retry_max_ms(),
            file: None,
            fhir: None,
        }
    }
}

/// Which uplink a configuration selects, after defaults.
#[derive(Debug, Clone, PartialEq)]
pub enum Destination {
    /// NDJSON files.
    File(FileUplinkConfig),
    /// A FHIR server.
    Fhir(FhirUplinkConfig),
}

impl UplinkConfig {
    /// The selected destination (`file` with defaults when none is configured).
    pub fn destination(&self) -> Destination {
        match (&self.fhir, &self.file) {
            (Some(fhir), _) => Destination::Fhir(fhir.clone()),
            (None, Some(file)) => Destination::File(file.clone()),
            (None, None) => Destination::File(FileUplinkConfig::default()),
        }
    }
}

/// `[uplink.file]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUplinkConfig {
    /// Output directory. Default: `<data_dir>/out`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Start a new file when the current one reaches this size, in bytes.
    #[serde(default = "default_rotate_bytes")]
    pub rotate_bytes: u64,
}

fn default_rotate_bytes() -> u64 {
    64 * 1024 * 1024
}

impl Default for FileUplinkConfig {
    fn default() -> Self {
        Self {
            dir: None,
            rotate_bytes: default_rotate_bytes(),
        }
    }
}

/// `[uplink.fhir]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirUplinkConfig {
    /// FHIR base URL, e.g. `https://fhir.example.org/r4`. Must be `https://`.
    pub base_url: String,
    /// The private CA that signed the server's certificate (the only one trusted).
    pub ca: PathBuf,
    /// This gateway's client certificate chain (PEM).
    pub cert: PathBuf,
    /// The client key (PEM); must not be readable by group or others.
    pub key: PathBuf,
    /// Per-request timeout, in seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// Bundle type: `transaction` (all-or-nothing, the default) or `batch` (per entry).
    #[serde(default = "default_bundle_type")]
    pub bundle_type: String,
}

fn default_timeout_s() -> u64 {
    30
}
fn default_bundle_type() -> String {
    "transaction".to_owned()
}

/// `[[devices]]`: binds a device to a patient.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceBinding {
    /// The device's stable id as the gateway sees it (e.g. `SIM-BP-0001`, a BLE address
    /// `A1B2C3D4E5F6`, a serial number).
    pub id: String,
    /// Patient identifier system (e.g. the MRN namespace URI). With `patient_id`.
    #[serde(default)]
    pub patient_system: Option<String>,
    /// Patient identifier value. With `patient_system`.
    #[serde(default)]
    pub patient_id: Option<String>,
    /// A literal reference instead, e.g. `Patient/123`.
    #[serde(default)]
    pub patient_reference: Option<String>,
    /// On a shared device (a scale or cuff with user profiles), the device's user index this
    /// binding is for (the BLE User ID, 0–254). A device bound with `user` is shared: each of
    /// its readings goes to the patient bound to the user it reports, and a reading of a user
    /// with no binding (or with no user) gets no patient rather than someone else's.
    #[serde(default)]
    pub user: Option<u8>,
}

/// `[ops]`: logs, the audit log and the operations HTTP server.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// Log format on stderr: `text` or `json` (one JSON object per line). The command line's
    /// `--log-format` overrides it.
    #[serde(default)]
    pub log_format: LogFormat,
    /// The audit log: security-relevant events, one JSON object per line, only ever appended
    /// to. Default: `<data_dir>/audit.log`.
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    /// `[ops.http]`: `/metrics`, `/healthz`, `/readyz` and the status page. Absent: not served
    /// (the demo defaults serve it on loopback).
    #[serde(default)]
    pub http: Option<OpsHttpConfig>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[ops.http]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsHttpConfig {
    /// Address and port to listen on, e.g. `127.0.0.1:8642`. A non-loopback address is refused
    /// unless `allow_from` names a non-loopback network (an explicit decision to serve wider).
    #[serde(default = "default_ops_listen")]
    pub listen: SocketAddr,
    /// Client networks allowed to connect, in CIDR notation. A connection from anywhere else is
    /// closed at once and recorded in the audit log.
    #[serde(default = "Cidr::loopback")]
    pub allow_from: Vec<Cidr>,
    /// `/readyz` reports not ready once the uplink has been failing for longer than this, in
    /// seconds (short outages are expected and are what the buffer is for).
    #[serde(default = "default_ready_staleness_s")]
    pub ready_staleness_s: u64,
}

/// The operations server's default address: loopback only, on a port outside the range
/// Prometheus exporters have allocated (9100-9999) and the usual development ports.
fn default_ops_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8642))
}
fn default_ready_staleness_s() -> u64 {
    300
}

impl Default for OpsHttpConfig {
    fn default() -> Self {
        Self {
            listen: default_ops_listen(),
            allow_from: Cidr::loopback(),
            ready_staleness_s: default_ready_staleness_s(),
        }
    }
}

impl Config {
    /// Parses TOML, naming the full key path of any unknown key or wrong type.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            if key == "." || key.is_empty() {
                // A syntax error: the full text has the line, column and a snippet.
                ConfigError {
                    key: String::new(),
                    message: inner.to_string().trim().to_owned(),
                }
            } else {
                ConfigError {
                    key,
                    message: inner.message().trim().to_owned(),
                }
            }
        })
    }

    /// Reads and parses a config file, then resolves `${CREDENTIALS_DIRECTORY}/…` paths
    /// against the environment variable of that name, when it is set.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            err(
                "",
                format!("cannot read config file {}: {e}", path.display()),
            )
        })?;
        let mut config = Self::from_toml(&text)?;
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty());
        config.resolve_credentials(credentials.as_deref().map(Path::new));
        Ok(config)
    }

    /// Replaces the `${CREDENTIALS_DIRECTORY}/` prefix of every TLS file path with `dir`.
    /// With `dir` `None` nothing changes (and `validate()` reports the unresolved paths).
    pub fn resolve_credentials(&mut self, dir: Option<&Path>) {
        let Some(dir) = dir else { return };
        for (_, path) in self.secret_paths_mut() {
            if let Some(name) = path
                .to_str()
                .and_then(|p| p.strip_prefix(CREDENTIALS_PREFIX))
            {
                *path = dir.join(name);
            }
        }
    }

    /// Every path that may name a systemd credential, with its key. A new option holding a
    /// key or certificate file belongs in this list.
    fn secret_paths_mut(&mut self) -> Vec<(&'static str, &mut PathBuf)> {
        let mut paths = Vec::new();
        if let Some(tls) = self.sources.mqtt.as_mut().and_then(|m| m.tls.as_mut()) {
            paths.push(("sources.mqtt.tls.ca", &mut tls.ca));
            if let Some(cert) = tls.cert.as_mut() {
                paths.push(("sources.mqtt.tls.cert", cert));
            }
            if let Some(key) = tls.key.as_mut() {
                paths.push(("sources.mqtt.tls.key", key));
            }
        }
        if let Some(fhir) = self.uplink.fhir.as_mut() {
            paths.push(("uplink.fhir.ca", &mut fhir.ca));
            paths.push(("uplink.fhir.cert", &mut fhir.cert));
            paths.push(("uplink.fhir.key", &mut fhir.key));
        }
        paths
    }

    /// Checks what the types cannot. Returns every problem, each naming its key.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut problems = Vec::new();
        let b = &self.buffer;
        if b.capacity == 0 {
            problems.push(err("buffer.capacity", "must be at least 1"));
        }
        if !(1..=100_000).contains(&b.commit_max_rows) {
            problems.push(err(
                "buffer.commit_max_rows",
                "must be between 1 and 100000",
            ));
        }
        if b.commit_linger_ms > 1000 {
            problems.push(err("buffer.commit_linger_ms", "must be at most 1000 ms"));
        }
        if let Some(id) = &self.gateway.id {
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                problems.push(err(
                    "gateway.id",
                    "must be non-empty ASCII letters, digits, '-', '_' or '.'",
                ));
            }
        }
        if let Some(sim) = &self.sources.sim {
            if sim.devices == 0 || sim.devices > 10_000 {
                problems.push(err("sources.sim.devices", "must be between 1 and 10000"));
            }
            if sim.interval_ms == 0 {
                problems.push(err("sources.sim.interval_ms", "must be at least 1"));
            }
        }
        if let Some(mqtt) = &self.sources.mqtt {
            validate_mqtt(mqtt, &mut problems);
        }
        if let Some(ble) = &self.sources.ble {
            validate_ble(ble, &mut problems);
        }
        for (i, port) in self.sources.serial.iter().enumerate() {
            validate_serial(i, port, &self.sources.serial[..i], &mut problems);
        }
        let u = &self.uplink;
        if !(1..=10_000).contains(&u.batch_size) {
            problems.push(err("uplink.batch_size", "must be between 1 and 10000"));
        }
        if !(1..=64).contains(&u.in_flight) {
            problems.push(err("uplink.in_flight", "must be between 1 and 64"));
        }
        if u.retry_initial_ms == 0 || u.retry_initial_ms > u.retry_max_ms {
            problems.push(err(
                "uplink.retry_initial_ms",
                "must be at least 1 and at most uplink.retry_max_ms",
            ));
        }
        if u.file.is_some() && u.fhir.is_some() {
            problems.push(err(
                "uplink",
                "configure exactly one of [uplink.file] or [uplink.fhir]",
            ));
        }
        if let Some(file) = &u.file {
            if file.rotate_bytes < 4096 {
                problems.push(err("uplink.file.rotate_bytes", "must be at least 4096"));
            }
        }
        if let Some(fhir) = &u.fhir {
            validate_fhir(fhir, &mut problems);
        }
        for (i, d) in self.devices.iter().enumerate() {
            let key = format!("devices[{i}]");
            if d.id.is_empty() {
                problems.push(err(&format!("{key}.id"), "must not be empty"));
            }
            match (&d.patient_system, &d.patient_id, &d.patient_reference) {
                (Some(_), Some(_), None) | (None, None, Some(_)) => {}
                _ => problems.push(err(
                    &key,
                    "give either patient_system and patient_id, or patient_reference",
                )),
            }
            if d.user == Some(0xFF) {
                problems.push(err(
                    &format!("{key}.user"),
                    "255 means \"unknown user\" in BLE; use 0-254",
                ));
            }
            let same_device = |o: &&DeviceBinding| same_device_id(&o.id, &d.id);
            if self.devices[..i]
                .iter()
                .filter(same_device)
                .any(|o| o.user == d.user)
            {
                problems.push(err(
                    &format!("{key}.id"),
                    match d.user {
                        Some(u) => format!("device {:?} user {u} is bound twice", d.id),
                        None => format!("device {:?} is bound twice", d.id),
                    },
                ));
            } else if self.devices[..i]
                .iter()
                .filter(same_device)
                .any(|o| o.user.is_some() != d.user.is_some())
            {
                problems.push(err(
                    &format!("{key}.user"),
                    format!(
                        "device {:?} has bindings with and without `user`: on a shared device \
                         every binding names its user",
                        d.id
                    ),
                ));
            }
        }
        validate_ops(&self.ops, &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// Whether two `[[devices]]` ids name the same device (a Bluetooth address may be written
/// with or without colons, in either case).
fn same_device_id(a: &str, b: &str) -> bool {
    use crate::profile::ble::parse_bluetooth_address as addr;
    match (addr(a), addr(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn validate_ble(ble: &BleSourceConfig, problems: &mut Vec<ConfigError>) {
    if ble.connect_timeout_s == 0 || ble.connect_timeout_s > 300 {
        problems.push(err(
            "sources.ble.connect_timeout_s",
            "must be between 1 and 300",
        ));
    }
    if ble.reconnect_initial_ms == 0 || ble.reconnect_initial_ms > ble.reconnect_max_ms {
        problems.push(err(
            "sources.ble.reconnect_initial_ms",
            "must be at least 1 and at most sources.ble.reconnect_max_ms",
        ));
    }
    if let Some(dir) = &ble.profiles_dir {
        if let Err(e) = std::fs::read_dir(dir) {
            problems.push(err(
                "sources.ble.profiles_dir",
                format!("cannot read directory {}: {e}", dir.display()),
            ));
        }
    }
    if ble.devices.is_empty() {
        problems.push(err(
            "sources.ble.devices",
            "list at least one [[sources.ble.devices]] (an address or a service)",
        ));
    }
    for (i, d) in ble.devices.iter().enumerate() {
        let key = format!("sources.ble.devices[{i}]");
        match (&d.address, &d.service) {
            (Some(_), Some(_)) | (None, None) => {
                problems.push(err(&key, "give exactly one of `address` or `service`"))
            }
            _ => {}
        }
        if let Some(a) = &d.address {
            if crate::profile::ble::parse_bluetooth_address(a).is_none() {
                problems.push(err(
                    &format!("{key}.address"),
                    "not a Bluetooth address: expected six hex pairs like A1:B2:C3:D4:E5:F6",
                ));
            } else if ble.devices[..i].iter().any(|o| {
                o.address
                    .as_deref()
                    .and_then(crate::profile::ble::parse_bluetooth_address)
                    == crate::profile::ble::parse_bluetooth_address(a)
            }) {
                problems.push(err(&format!("{key}.address"), "listed twice"));
            }
        }
        if let Some(svc) = &d.service {
            if crate::profile::ble::parse_characteristic(svc).is_err() {
                problems.push(err(
                    &format!("{key}.service"),
                    "not a 16-bit service UUID: expected e.g. 1810, 0x1810 or the 128-bit form",
                ));
            }
        }
        if let Some(p) = &d.profile {
            let builtin = crate::profile::ble::profile_file::builtin();
            if ble.profiles_dir.is_none() && !builtin.iter().any(|b| &b.id == p) {
                let known: Vec<String> = builtin.into_iter().map(|b| b.id).collect();
                problems.push(err(
                    &format!("{key}.profile"),
                    format!("no profile {p:?}; built in: {}", known.join(", ")),
                ));
            }
        }
    }
}

fn validate_ops(ops: &OpsConfig, problems: &mut Vec<ConfigError>) {
    if let Some(path) = &ops.audit_log {
        if path.as_os_str().is_empty() || path.is_dir() {
            problems.push(err(
                "ops.audit_log",
                "must be a file path (the file is created if missing)",
            ));
        }
    }
    let Some(http) = &ops.http else { return };
    if http.listen.port() == 0 {
        problems.push(err(
            "ops.http.listen",
            "must name a port (e.g. 127.0.0.1:8642) so scrapers and technicians can find it",
        ));
    }
    if http.allow_from.is_empty() {
        problems.push(err(
            "ops.http.allow_from",
            "must list at least one network; [\"127.0.0.0/8\", \"::1/128\"] is this machine only",
        ));
    }
    if !http.listen.ip().is_loopback() && http.allow_from.iter().all(Cidr::is_loopback) {
        problems.push(err(
            "ops.http.listen",
            format!(
                "{} is not a loopback address: the status page and metrics name devices and queue \
                 state, so serving them beyond this machine must be explicit: list the client \
                 networks allowed in ops.http.allow_from (e.g. [\"10.20.0.0/16\"]), or listen on \
                 127.0.0.1",
                http.listen.ip()
            ),
        ));
    }
    if http.ready_staleness_s == 0 || http.ready_staleness_s > 7 * 24 * 3600 {
        problems.push(err(
            "ops.http.ready_staleness_s",
            "must be between 1 and 604800 (7 days)",
        ));
    }
}

fn validate_mqtt(mqtt: &MqttSourceConfig, problems: &mut Vec<ConfigError>) {
    match url::Url::parse(&mqtt.url) {
        Err(e) => problems.push(err(
            "sources.mqtt.url",
            format!("not a valid URL ({e}): expected mqtt://host:port or mqtts://host:port"),
        )),
        Ok(u) => {
            match u.scheme() {
                "mqtt" => {}
                "mqtts" => {
                    if mqtt.tls.is_none() {
                        problems.push(err(
                            "sources.mqtt.tls",
                            "mqtts:// needs a [sources.mqtt.tls] table with at least `ca`",
                        ));
                    }
                }
                other => problems.push(err(
                    "sources.mqtt.url",
                    format!("scheme {other:?} is not mqtt or mqtts"),
                )),
            }
            if u.host_str().is_none_or(str::is_empty) {
                problems.push(err("sources.mqtt.url", "has no host"));
            }
        }
    }
    if mqtt.topics.is_empty() || mqtt.topics.iter().any(String::is_empty) {
        problems.push(err(
            "sources.mqtt.topics",
            "needs at least one non-empty topic filter",
        ));
    }
    if mqtt.keep_alive_s < 5 {
        problems.push(err(
            "sources.mqtt.keep_alive_s",
            "must be at least 5 seconds",
        ));
    }
    if let Some(tls) = &mqtt.tls {
        check_readable("sources.mqtt.tls.ca", &tls.ca, problems);
        match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                check_readable("sources.mqtt.tls.cert", cert, problems);
                check_private_key("sources.mqtt.tls.key", key, problems);
            }
            (None, None) => {}
            _ => problems.push(err(
                "sources.mqtt.tls",
                "give both `cert` and `key` for mutual TLS, or neither",
            )),
        }
    }
}

fn validate_serial(
    i: usize,
    port: &SerialPortConfig,
    earlier: &[SerialPortConfig],
    problems: &mut Vec<ConfigError>,
) {
    let key = |field: &str| format!("sources.serial[{i}].{field}");
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.len() <= 64
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if !valid_name(&port.name) {
        problems.push(err(
            &key("name"),
            "must be 1 to 64 ASCII letters, digits, '-', '_' or '.'",
        ));
    } else if earlier.iter().any(|o| o.name == port.name) {
        problems.push(err(
            &key("name"),
            format!("serial port {:?} is configured twice", port.name),
        ));
    }
    match (&port.path, &port.usb) {
        (Some(_), None) => {
            if port.usb_serial.is_some() {
                problems.push(err(&key("usb_serial"), "only with `usb`"));
            }
        }
        (None, Some(usb)) => {
            if crate::ingest::serial::port::UsbId::parse(usb).is_none() {
                problems.push(err(
                    &key("usb"),
                    "must be VVVV:PPPP, the USB vendor and product id in hex (e.g. 0403:6001)",
                ));
            }
        }
        _ => problems.push(err(
            &format!("sources.serial[{i}]"),
            "give exactly one of `path` or `usb`",
        )),
    }
    match port.protocol {
        SerialProtocol::Line => match &port.profile {
            None => problems.push(err(
                &key("profile"),
                "a `line` port needs a line profile id (e.g. line-nonin-ascii)",
            )),
            Some(id) => {
                if let Err(e) = crate::profile::line::Registry::load(port.profiles_dir.as_deref())
                    .and_then(|r| r.get(id).map(|_| ()))
                {
                    let field = if port.profiles_dir.is_some()
                        && !matches!(e, crate::profile::line::ProfileError::Unknown { .. })
                    {
                        "profiles_dir"
                    } else {
                        "profile"
                    };
                    problems.push(err(&key(field), e.to_string()));
                }
            }
        },
        SerialProtocol::Firmware => {
            for (field, set) in [
                ("profile", port.profile.is_some()),
                ("profiles_dir", port.profiles_dir.is_some()),
                ("device_id", port.device_id.is_some()),
                ("device_utc_offset", port.device_utc_offset.is_some()),
            ] {
                if set {
                    problems.push(err(
                        &key(field),
                        "only for `line` ports: a firmware device identifies itself and syncs its clock",
                    ));
                }
            }
        }
    }
    if let Some(id) = &port.device_id {
        if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
            problems.push(err(
                &key("device_id"),
                "must be 1 to 128 printable characters",
            ));
        }
    }
    if let Some(offset) = &port.device_utc_offset {
        if crate::profile::line::parse_utc_offset(offset).is_none() {
            problems.push(err(
                &key("device_utc_offset"),
                "must be a UTC offset like +01:00, -05:00 or +00:00",
            ));
        }
    }
    if port.baud.is_some_and(|b| !(50..=4_000_000).contains(&b)) {
        problems.push(err(&key("baud"), "must be between 50 and 4000000"));
    }
    if port.data_bits.is_some_and(|b| !(5..=8).contains(&b)) {
        problems.push(err(&key("data_bits"), "must be 5, 6, 7 or 8"));
    }
    if port.stop_bits.is_some_and(|b| !(1..=2).contains(&b)) {
        problems.push(err(&key("stop_bits"), "must be 1 or 2"));
    }
    if !(250..=600_000).contains(&port.reconnect_max_ms) {
        problems.push(err(
            &key("reconnect_max_ms"),
            "must be between 250 and 600000",
        ));
    }
}

fn validate_fhir(fhir: &FhirUplinkConfig, problems: &mut Vec<ConfigError>) {
    match url::Url::parse(&fhir.base_url) {
        Err(e) => problems.push(err(
            "uplink.fhir.base_url",
            format!("not a valid URL ({e})"),
        )),
        Ok(u) if u.scheme() != "https" => problems.push(err(
            "uplink.fhir.base_url",
            format!(
                "scheme {:?} is not https: the uplink only speaks mutual TLS",
                u.scheme()
            ),
        )),
        Ok(u) if u.host_str().is_none_or(str::is_empty) => {
            problems.push(err("uplink.fhir.base_url", "has no host"))
        }
        Ok(_) => {}
    }
    check_readable("uplink.fhir.ca", &fhir.ca, problems);
    check_readable("uplink.fhir.cert", &fhir.cert, problems);
    check_private_key("uplink.fhir.key", &fhir.key, problems);
    if fhir.timeout_s == 0 || fhir.timeout_s > 600 {
        problems.push(err("uplink.fhir.timeout_s", "must be between 1 and 600"));
    }
    if fhir.bundle_type != "transaction" && fhir.bundle_type != "batch" {
        problems.push(err(
            "uplink.fhir.bundle_type",
            "must be \"transaction\" or \"batch\"",
        ));
    }
}

/// A path still starting with `${CREDENTIALS_DIRECTORY}/` after [`Config::load`]: the
/// variable was not set.
fn unresolved_credential(key: &str, path: &Path, problems: &mut Vec<ConfigError>) -> bool {
    let unresolved = path
        .to_str()
        .is_some_and(|p| p.starts_with(CREDENTIALS_PREFIX));
    if unresolved {
        problems.push(err(
            key,
            format!(
                "{} names a systemd credential, but $CREDENTIALS_DIRECTORY is not set: \
                 start the gateway with its systemd unit (LoadCredential=), or, to check the \
                 file by hand, set CREDENTIALS_DIRECTORY to the directory holding the files",
                path.display()
            ),
        ));
    }
    unresolved
}

fn check_readable(key: &str, path: &Path, problems: &mut Vec<ConfigError>) {
    if unresolved_credential(key, path, problems) {
        return;
    }
    if let Err(e) = std::fs::File::open(path) {
        problems.push(err(key, format!("cannot read {}: {e}", path.display())));
    }
}

/// Private keys must exist and be accessible to nobody but their owner and the gateway's
/// own user (see [`crate::keyfile`]: mode 0600 or stricter, or an equivalent POSIX ACL such as
/// the one systemd puts on a credential).
pub fn check_private_key(key: &str, path: &Path, problems: &mut Vec<ConfigError>) {
    if unresolved_credential(key, path, problems) {
        return;
    }
    if let Err(e) = crate::keyfile::check_private(path) {
        problems.push(err(key, e.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_toml_is_the_default_config() {
        let parsed = Config::from_toml(DEFAULT_CONFIG_TOML).expect("default config parses");
        assert_eq!(parsed, Config::default());
        parsed.validate().expect("default config validates");
    }

    #[test]
    fn credential_paths_resolve_against_the_credentials_directory_only_when_given() {
        let text = r#"
[sources.mqtt]
url = "mqtts://broker:8883"
[sources.mqtt.tls]
ca = "/etc/vitalbridge/broker-ca.pem"
cert = "${CREDENTIALS_DIRECTORY}/gateway.pem"
key = "${CREDENTIALS_DIRECTORY}/gateway.key"
[uplink.fhir]
base_url = "https://fhir.example.org/r4"
ca = "fhir-ca.pem"
cert = "${CREDENTIALS_DIRECTORY}/gateway.pem"
key = "${CREDENTIALS_DIRECTORY}/gateway.key"
"#;
        let parsed = Config::from_toml(text).unwrap();

        let mut unresolved = parsed.clone();
        unresolved.resolve_credentials(None);
        assert_eq!(unresolved, parsed);
        let problems = unresolved.validate().unwrap_err();
        for key in [
            "sources.mqtt.tls.cert",
            "sources.mqtt.tls.key",
            "uplink.fhir.cert",
            "uplink.fhir.key",
        ] {
            assert!(
                problems.iter().any(
                    |p| p.key == key && p.message.contains("$CREDENTIALS_DIRECTORY is not set")
                ),
                "{key}: {problems:?}"
            );
        }

        let mut resolved = parsed;
        resolved.resolve_credentials(Some(Path::new("/run/credentials/vitalbridge.service")));
        let tls = resolved.sources.mqtt.unwrap().tls.unwrap();
        assert_eq!(tls.ca, Path::new("/etc/vitalbridge/broker-ca.pem"));
        assert_eq!(
            tls.key.unwrap(),
            Path::new("/run/credentials/vitalbridge.service/gateway.key")
        );
        let fhir = resolved.uplink.fhir.unwrap();
        assert_eq!(fhir.ca, Path::new("fhir-ca.pem"));
        assert_eq!(
            fhir.cert,
            Path::new("/run/credentials/vitalbridge.service/gateway.pem")
        );
    }

    #[test]
    fn an_empty_file_means_no_sources_and_the_file_uplink() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.sources, SourcesConfig::default());
        assert_eq!(
            c.uplink.destination(),
            Destination::File(FileUplinkConfig::default())
        );
    }
}
