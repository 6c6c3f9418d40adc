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
    /// The key that seals buffered readings at rest (32 random bytes, or 64 hex digits):
    /// must be readable by the gateway's user only, and must not be under `gateway.data_dir`.
    /// Created (mode 0600) at the very first start if it does not exist; after that a
    /// missing or different key stops the gateway without touching the buffer. Under systemd:
    /// `${CREDENTIALS_DIRECTORY}/vitalbridge-buffer.key`.
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
    /// Keys the buffer may still be sealed with. Rotating: put the new key in `key_file`,
    /// the old one here, start the gateway once (every row is sealed again under the new
    /// key), then remove it from here.
    #[serde(default)]
    pub previous_key_files: Vec<PathBuf>,
    /// Refuse new readings while the file system holding `data_dir` has less free space than
    /// this, in MiB, so that deliveries can still be recorded on a nearly full disk. Unset:
    /// 5 % of the file system, at least 1 and at most 64 MiB.
    #[serde(default)]
    pub min_free_mb: Option<u64>,
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
fn default_key_file() -> PathBuf {
    PathBuf::from("./vitalbridge-buffer.key")
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            capacity: default_capacity(),
            commit_max_rows: default_commit_max_rows(),
            commit_linger_ms: default_commit_linger_ms(),
            key_file: default_key_file(),
            previous_key_files: Vec::new(),
            min_free_mb: None,
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

/// `[uplink]`: any of `file`, `fhir`, `mqtt`, `kafka` at once (each a destination with its own
/// progress); `file` when none is given.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Readings per batch (one Bundle, or one file write).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Batches in flight at once, per destination (the Kafka destination always runs one, so
    /// that each key's records stay in order).
    #[serde(default = "default_in_flight")]
    pub in_flight: usize,
    /// How long a batch that is not full may wait for more readings, in ms, counted from
    /// its oldest reading's arrival: at steady rates fewer, fuller requests (servers charge
    /// per request, and so does the CPU) for at most this much added latency. 0: send at once.
    #[serde(default = "default_batch_linger_ms")]
    pub batch_linger_ms: u64,
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
    /// `[uplink.mqtt]`: an MQTT broker (streamed Observations).
    #[serde(default)]
    pub mqtt: Option<MqttUplinkConfig>,
    /// `[uplink.kafka]`: a Kafka topic (streamed Observations).
    #[serde(default)]
    pub kafka: Option<KafkaUplinkConfig>,
}

fn default_batch_size() -> usize {
    500
}
fn default_in_flight() -> usize {
    2
}
fn default_batch_linger_ms() -> u64 {
    20
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
            batch_linger_ms: default_batch_linger_ms(),
            retry_initial_ms: default_retry_initial_ms(),
            retry_max_ms: default_retry_max_ms(),
            file: None,
            fhir: None,
            mqtt: None,
            kafka: None,
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
    /// An MQTT broker.
    Mqtt(MqttUplinkConfig),
    /// A Kafka topic.
    Kafka(KafkaUplinkConfig),
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

    /// Every configured destination (`file` with defaults when none is configured), each
    /// once, in a fixed order: file, fhir, mqtt, kafka.
    pub fn destinations(&self) -> Vec<Destination> {
        let mut all = Vec::new();
        if let Some(file) = &self.file {
            all.push(Destination::File(file.clone()));
        }
        if let Some(fhir) = &self.fhir {
            all.push(Destination::Fhir(fhir.clone()));
        }
        if let Some(mqtt) = &self.mqtt {
            all.push(Destination::Mqtt(mqtt.clone()));
        }
        if let Some(kafka) = &self.kafka {
            all.push(Destination::Kafka(kafka.clone()));
        }
        if all.is_empty() {
            all.push(Destination::File(FileUplinkConfig::default()));
        }
        all
    }
}

impl Destination {
    /// The destination's name: its uplink's, as in metrics, dead letters and the buffer.
    pub fn name(&self) -> &'static str {
        match self {
            Destination::File(_) => "file",
            Destination::Fhir(_) => "fhir",
            Destination::Mqtt(_) => "mqtt",
            Destination::Kafka(_) => "kafka",
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

/// Longest key path and message of a parse error, in bytes: a parse error can quote an
/// unknown key or a value (`unknown variant `…``), which may be megabytes long.
const MAX_ERROR_TEXT: usize = 512;

/// `text` cut to at most `max` bytes (at a character boundary), marked with `…` when cut.
fn clip(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// A serde message about a `[[devices]]` key without the value it quotes (`invalid type:
/// string "…", expected …`): the value may be a patient identifier, and config errors go to
/// the journal.
fn without_value(message: &str) -> String {
    for kind in ["invalid type", "invalid value"] {
        if message.starts_with(kind) {
            let expected = message
                .split_once(", expected ")
                .map(|(_, e)| format!(", expected {e}"))
                .unwrap_or_default();
            return format!("{kind} (not shown: it may identify a patient){expected}");
        }
    }
    message.to_owned()
}

impl Config {
    /// Parses TOML, naming the full key path of any unknown key or wrong type. The key and
    /// message of an error are cut at [`MAX_ERROR_TEXT`] bytes.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let e = Self::parse_error(e);
            ConfigError {
                key: clip(e.key, MAX_ERROR_TEXT),
                message: clip(e.message, MAX_ERROR_TEXT),
            }
        })
    }

    /// A parse error as a [`ConfigError`], quoting nothing of a patient binding.
    fn parse_error(e: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
        let key = e.path().to_string();
        let inner = e.into_inner();
        if key == "." || key.is_empty() {
            // A syntax error: where it is and what is wrong, without the snippet of the
            // line (it may be a patient binding).
            let full = inner.to_string();
            let at = full.lines().next().unwrap_or("TOML parse error").trim();
            ConfigError {
                key: String::new(),
                message: format!("{at}: {}", inner.message().trim()),
            }
        } else {
            let message = inner.message().trim();
            ConfigError {
                message: if key.starts_with("devices") {
                    without_value(message)
                } else {
                    message.to_owned()
                },
                key,
            }
        }
    }

    /// Reads and parses a config file of at most [`crate::limits::MAX_CONFIG_FILE_BYTES`]
    /// (a larger one is refused unread), then resolves `${CREDENTIALS_DIRECTORY}/…` paths
    /// against the environment variable of that name, when it is set.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let max = crate::limits::MAX_CONFIG_FILE_BYTES;
        let text = crate::limits::read_capped(path, max).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::InvalidData {
                format!(" (a config file may be at most {max} bytes of UTF-8 text)")
            } else {
                String::new()
            };
            err(
                "",
                format!("cannot read config file {}: {e}{hint}", path.display()),
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
        paths.push(("buffer.key_file", &mut self.buffer.key_file));
        for path in &mut self.buffer.previous_key_files {
            paths.push(("buffer.previous_key_files", path));
        }
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
        streams::secret_paths(
            self.uplink.mqtt.as_mut(),
            self.uplink.kafka.as_mut(),
            &mut paths,
        );
        paths
    }
}

mod streams;
mod validate;
pub use streams::{
    parse_topic_template, split_host_port, KafkaKey, KafkaSaslConfig, KafkaUplinkConfig,
    MqttUplinkConfig, StreamPayload, TopicField, TopicPart,
};
pub use validate::{check_gateway_id, check_private_key};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_about_patient_bindings_and_syntax_errors_do_not_quote_the_file() {
        let e = Config::from_toml(
            "[[devices]]\nid = \"d\"\npatient_system = \"urn:oid:1\"\npatient_id = 770123\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "devices[0].patient_id");
        assert!(!e.message.contains("770123"), "{e}");
        assert!(e.message.starts_with("invalid type"), "{e}");
        assert!(e.message.contains("expected a string"), "{e}");

        let e = Config::from_toml("[[devices]]\nid = \"d\"\npatient_id = \"P-4711\n").unwrap_err();
        assert!(e.message.starts_with("TOML parse error at line 3"), "{e}");
        assert!(!e.message.contains("P-4711"), "{e}");

        // Elsewhere the value helps and is shown.
        let e = Config::from_toml("[buffer]\ncapacity = \"lots\"\n").unwrap_err();
        assert!(e.message.contains("lots"), "{e}");
    }

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

    /// A config with every string option set: `@key@` stands for the value of `key`.
    const EVERY_STRING: &str = r#"
[gateway]
id = "@gateway.id@"
data_dir = "@gateway.data_dir@"
[sources.ble]
profiles_dir = "@sources.ble.profiles_dir@"
[[sources.ble.devices]]
address = "@sources.ble.devices[0].address@"
profile = "@sources.ble.devices[0].profile@"
[[sources.ble.devices]]
service = "@sources.ble.devices[1].service@"
[sources.mqtt]
url = "@sources.mqtt.url@"
client_id = "@sources.mqtt.client_id@"
topics = ["@sources.mqtt.topics[0]@"]
[sources.mqtt.tls]
ca = "@sources.mqtt.tls.ca@"
cert = "@sources.mqtt.tls.cert@"
key = "@sources.mqtt.tls.key@"
[[sources.serial]]
name = "@sources.serial[0].name@"
path = "@sources.serial[0].path@"
protocol = "line"
profile = "@sources.serial[0].profile@"
profiles_dir = "@sources.serial[0].profiles_dir@"
device_id = "@sources.serial[0].device_id@"
device_utc_offset = "@sources.serial[0].device_utc_offset@"
[[sources.serial]]
name = "@sources.serial[1].name@"
usb = "@sources.serial[1].usb@"
usb_serial = "@sources.serial[1].usb_serial@"
protocol = "firmware"
[uplink.file]
dir = "@uplink.file.dir@"
[uplink.fhir]
base_url = "@uplink.fhir.base_url@"
ca = "@uplink.fhir.ca@"
cert = "@uplink.fhir.cert@"
key = "@uplink.fhir.key@"
bundle_type = "@uplink.fhir.bundle_type@"
[uplink.mqtt]
url = "@uplink.mqtt.url@"
client_id = "@uplink.mqtt.client_id@"
topic = "@uplink.mqtt.topic@"
[uplink.mqtt.tls]
ca = "@uplink.mqtt.tls.ca@"
cert = "@uplink.mqtt.tls.cert@"
key = "@uplink.mqtt.tls.key@"
[uplink.kafka]
bootstrap = ["@uplink.kafka.bootstrap[0]@"]
topic = "@uplink.kafka.topic@"
[uplink.kafka.tls]
ca = "@uplink.kafka.tls.ca@"
cert = "@uplink.kafka.tls.cert@"
key = "@uplink.kafka.tls.key@"
[uplink.kafka.sasl]
mechanism = "@uplink.kafka.sasl.mechanism@"
username = "@uplink.kafka.sasl.username@"
password_file = "@uplink.kafka.sasl.password_file@"
[[devices]]
id = "@devices[0].id@"
patient_system = "@devices[0].patient_system@"
patient_id = "@devices[0].patient_id@"
[[devices]]
id = "@devices[1].id@"
patient_reference = "@devices[1].patient_reference@"
[ops]
audit_log = "@ops.audit_log@"
"#;

    #[test]
    fn every_string_of_the_config_has_a_length_limit_named_with_its_key() {
        use crate::limits::*;
        let cases: &[(&str, usize)] = &[
            ("gateway.id", MAX_ID_LEN),
            ("gateway.data_dir", MAX_PATH_LEN),
            ("sources.ble.profiles_dir", MAX_PATH_LEN),
            ("sources.ble.devices[0].address", MAX_CODE_LEN),
            ("sources.ble.devices[0].profile", MAX_CODE_LEN),
            ("sources.ble.devices[1].service", MAX_CODE_LEN),
            ("sources.mqtt.url", MAX_URL_LEN),
            ("sources.mqtt.client_id", MAX_ID_LEN),
            ("sources.mqtt.topics[0]", MAX_TOPIC_LEN),
            ("sources.mqtt.tls.ca", MAX_PATH_LEN),
            ("sources.mqtt.tls.cert", MAX_PATH_LEN),
            ("sources.mqtt.tls.key", MAX_PATH_LEN),
            ("sources.serial[0].name", MAX_CODE_LEN),
            ("sources.serial[0].path", MAX_PATH_LEN),
            ("sources.serial[0].profile", MAX_CODE_LEN),
            ("sources.serial[0].profiles_dir", MAX_PATH_LEN),
            ("sources.serial[0].device_id", MAX_ID_LEN),
            ("sources.serial[0].device_utc_offset", MAX_CODE_LEN),
            ("sources.serial[1].name", MAX_CODE_LEN),
            ("sources.serial[1].usb", MAX_CODE_LEN),
            ("sources.serial[1].usb_serial", MAX_ID_LEN),
            ("uplink.file.dir", MAX_PATH_LEN),
            ("uplink.fhir.base_url", MAX_URL_LEN),
            ("uplink.fhir.ca", MAX_PATH_LEN),
            ("uplink.fhir.cert", MAX_PATH_LEN),
            ("uplink.fhir.key", MAX_PATH_LEN),
            ("uplink.fhir.bundle_type", MAX_CODE_LEN),
            ("uplink.mqtt.url", MAX_URL_LEN),
            ("uplink.mqtt.client_id", MAX_ID_LEN),
            ("uplink.mqtt.topic", MAX_TOPIC_LEN),
            ("uplink.mqtt.tls.ca", MAX_PATH_LEN),
            ("uplink.mqtt.tls.cert", MAX_PATH_LEN),
            ("uplink.mqtt.tls.key", MAX_PATH_LEN),
            ("uplink.kafka.bootstrap[0]", MAX_URL_LEN),
            ("uplink.kafka.topic", MAX_TOPIC_LEN),
            ("uplink.kafka.tls.ca", MAX_PATH_LEN),
            ("uplink.kafka.tls.cert", MAX_PATH_LEN),
            ("uplink.kafka.tls.key", MAX_PATH_LEN),
            ("uplink.kafka.sasl.mechanism", MAX_CODE_LEN),
            ("uplink.kafka.sasl.username", MAX_ID_LEN),
            ("uplink.kafka.sasl.password_file", MAX_PATH_LEN),
            ("devices[0].id", MAX_ID_LEN),
            ("devices[0].patient_system", MAX_SYSTEM_LEN),
            ("devices[0].patient_id", MAX_ID_LEN),
            ("devices[1].id", MAX_ID_LEN),
            ("devices[1].patient_reference", MAX_SYSTEM_LEN),
            ("ops.audit_log", MAX_PATH_LEN),
        ];
        let with = |long_key: &str, long: &str| {
            let mut text = EVERY_STRING.to_owned();
            for (key, _) in cases {
                let value = if *key == long_key { long } else { "x" };
                text = text.replace(&format!("@{key}@"), value);
            }
            assert!(!text.contains('@'), "every placeholder is a case");
            Config::from_toml(&text).unwrap()
        };
        // The table is every string the length check knows.
        let mut known: Vec<String> = with("", "").texts().into_iter().map(|t| t.0).collect();
        let mut listed: Vec<String> = cases.iter().map(|(k, _)| (*k).to_owned()).collect();
        known.sort();
        listed.sort();
        assert_eq!(known, listed);
        for (key, limit) in cases {
            let at_limit = with(key, &"P".repeat(*limit));
            if let Err(problems) = at_limit.validate() {
                assert!(
                    problems.iter().all(|p| !p.message.contains("longer than")),
                    "{key}: {problems:?}"
                );
            }
            let long = "Jane Doe ".repeat(limit / 9 + 1);
            let problems = with(key, &long).validate().unwrap_err();
            assert_eq!(
                problems,
                [err(key, format!("longer than {limit} bytes"))],
                "{key}: only the length problem is reported, without the value"
            );
        }
    }

    #[test]
    fn a_huge_config_file_is_refused_unread_and_a_huge_gateway_id_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(50 * 1024 * 1024).unwrap();
        let e = Config::load(&path).unwrap_err();
        assert!(e.message.contains("larger than 4194304 bytes"), "{e}");
        assert!(e.message.len() < 300, "{e}");

        let id = "g".repeat(3 * 1024 * 1024);
        std::fs::write(&path, format!("[gateway]\nid = \"{id}\"\n")).unwrap();
        let problems = Config::load(&path).unwrap().validate().unwrap_err();
        assert_eq!(problems, [err("gateway.id", "longer than 128 bytes")]);
    }

    #[test]
    fn parse_errors_do_not_quote_megabytes() {
        let long = "q".repeat(1024 * 1024);
        for text in [
            format!("[gateway]\n{long} = 1\n"),
            format!("[sources.mqtt]\nurl = \"mqtt://b\"\n[ops]\nlog_format = \"{long}\"\n"),
            format!("[buffer]\ncapacity = \"{long}\"\n"),
        ] {
            let e = Config::from_toml(&text).unwrap_err();
            assert!(e.key.len() <= MAX_ERROR_TEXT + 3, "{}", e.key.len());
            assert!(e.message.len() <= MAX_ERROR_TEXT + 3, "{}", e.message.len());
        }
        assert_eq!(clip("ab€".into(), 3), "ab…");
        assert_eq!(clip("abc".into(), 3), "abc");
    }

    #[test]
    fn every_configured_destination_is_one_destination_with_its_fixed_name() {
        let c = Config::from_toml(
            r#"
[uplink.file]
[uplink.mqtt]
url = "mqtt://127.0.0.1:1883"
[uplink.kafka]
bootstrap = ["127.0.0.1:9092"]
"#,
        )
        .unwrap();
        let names: Vec<&str> = c.uplink.destinations().iter().map(|d| d.name()).collect();
        assert_eq!(names, ["file", "mqtt", "kafka"]);
        c.validate()
            .expect("file, MQTT and Kafka together are fine");
        let only_kafka =
            Config::from_toml("[uplink.kafka]\nbootstrap = [\"localhost:9092\"]\n").unwrap();
        let names: Vec<&str> = only_kafka
            .uplink
            .destinations()
            .iter()
            .map(|d| d.name())
            .collect();
        assert_eq!(names, ["kafka"], "no file uplink unless asked for");
    }

    #[test]
    fn a_bad_broker_url_an_unknown_topic_field_and_an_open_key_are_each_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join(name);
            std::fs::write(&path, "x").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path.display().to_string()
        };
        let (ca, cert, key, pw) = (
            file("ca.pem", 0o644),
            file("gw.pem", 0o644),
            file("gw.key", 0o644),
            file("pw", 0o640),
        );
        let text = format!(
            r#"
[uplink.mqtt]
url = "mqtts//broker:8883"
topic = "rpm/{{gateway}}/{{mrn}}"
[uplink.mqtt.tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
[uplink.kafka]
bootstrap = ["kafka-1.example.org:9093", "kafka-2"]
topic = "obs/all"
[uplink.kafka.sasl]
mechanism = "PLAIN"
username = "hub"
password_file = "{pw}"
"#
        );
        let problems = Config::from_toml(&text).unwrap().validate().unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "uplink.mqtt.url",
            "uplink.mqtt.topic",
            "uplink.mqtt.tls.key",
            "uplink.kafka.bootstrap[1]",
            "uplink.kafka.tls",
            "uplink.kafka.topic",
            "uplink.kafka.sasl.mechanism",
            "uplink.kafka.sasl.password_file",
        ] {
            assert!(keys.contains(&key), "{key}: {problems:?}");
        }
        let topic = problems
            .iter()
            .find(|p| p.key == "uplink.mqtt.topic")
            .unwrap();
        assert!(topic.message.contains("{mrn}"), "{topic}");
        // Plain MQTT leaves the machine only if nobody asked.
        let plain = Config::from_toml("[uplink.mqtt]\nurl = \"mqtt://broker.example.org:1883\"\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(plain[0].key, "uplink.mqtt.url");
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
