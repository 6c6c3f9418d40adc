//! The gateway's one TOML configuration file.
//!
//! Every table denies unknown keys, every field has a documented default, values with a
//! syntax of their own (networks, USB ids, UTC offsets, enums) are parsed when the file is
//! read ([`Parsed`], which names every bad key with its line), and [`Config::validate`]
//! checks what types cannot (URLs, file permissions, ranges) and names the offending key.
//! With no file at all the gateway runs [`Config::default`]: the built-in simulator in, the
//! buffer and FHIR NDJSON out under `./vitalbridge-data/`.
//!
//! Architecture invariant: a leaf. This module imports only leaf modules (`limits`,
//! `keyfile`, `serial_settings`); what a check needs from device profiles is checked by the
//! sources (`ingest::check_config`), and `crate::validate_config` runs both.
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

use crate::serial_settings::{FlowControl, Parity, UsbId};

/// The demo configuration as TOML, with a comment on every key. Parsing it gives
/// `Config::default()`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default-config.toml");

/// The prefix of a path inside systemd's credentials directory (see the module header).
pub const CREDENTIALS_PREFIX: &str = "${CREDENTIALS_DIRECTORY}/";

/// A configuration problem, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Dotted path of the key (e.g. `uplink.fhir.key`, `devices[3].id`), or empty for the
    /// whole file.
    pub key: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
    /// The line of the file (from 1) holding the key, when the problem came from reading a
    /// file that holds it.
    pub line: Option<usize>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl ConfigError {
    /// A problem with the key `key` (dotted path, empty for the whole file).
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
            line: None,
        }
    }
}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(key, message)
}

/// The whole configuration.
///
/// Each table's defaults are its type's `Default` (`#[serde(default)]` on the table's
/// struct), except where a key is required. `Config`'s own `Default` is the demo, which an
/// empty file is not (no sources, no operations server), so its fields take their types'
/// defaults one by one.
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
    /// `[default_patient]`: on a home hub with one patient, the patient of every device not
    /// named in `[[devices]]`. Absent: such a device's readings are held unbound.
    #[serde(default)]
    pub default_patient: Option<DefaultPatient>,
    /// `[clinical]`: the checks every reading passes before the buffer.
    #[serde(default)]
    pub clinical: ClinicalConfig,
    /// Logs, the audit log and the operations HTTP server.
    #[serde(default)]
    pub ops: OpsConfig,
    /// Signed device-profile packs: where they are installed, which keys may sign them.
    #[serde(default)]
    pub profiles: ProfilesConfig,
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
            default_patient: None,
            clinical: ClinicalConfig::default(),
            ops: OpsConfig {
                http: Some(OpsHttpConfig::default()),
                ..OpsConfig::default()
            },
            profiles: ProfilesConfig::default(),
        }
    }
}

/// `[profiles]`: signed device-profile packs (docs/profiles.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfilesConfig {
    /// Where `vitalbridge profiles install` keeps packs and the link to the active one, and
    /// where the gateway loads the active pack's vendor JSON profiles from (reloading them
    /// when the link changes). Default: `<data_dir>/packs`.
    pub packs_dir: Option<PathBuf>,
    /// Largest pack accepted, in bytes (all its files together).
    pub max_pack_bytes: u64,
    /// How often the gateway looks for a newly activated pack, in seconds.
    pub reload_check_s: u64,
    /// The public keys a pack's signature may verify with. None: no pack can be installed.
    pub trusted_keys: Vec<TrustedKeyConfig>,
}

/// The default of `profiles.max_pack_bytes`: 16 MiB.
pub const DEFAULT_MAX_PACK_BYTES: u64 = 16 * 1024 * 1024;

/// The default of `profiles.reload_check_s`.
pub const DEFAULT_RELOAD_CHECK_S: u64 = 2;

impl Default for ProfilesConfig {
    fn default() -> Self {
        Self {
            packs_dir: None,
            max_pack_bytes: DEFAULT_MAX_PACK_BYTES,
            reload_check_s: DEFAULT_RELOAD_CHECK_S,
            trusted_keys: Vec::new(),
        }
    }
}

impl ProfilesConfig {
    /// The packs directory: `packs_dir`, or `<data_dir>/packs`.
    pub fn packs_dir(&self, data_dir: &Path) -> PathBuf {
        self.packs_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("packs"))
    }
}

/// `[[profiles.trusted_keys]]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKeyConfig {
    /// The id a pack's manifest names the key by (`key_id`): lower-case letters, digits,
    /// dashes.
    pub id: String,
    /// The raw Ed25519 public key: 64 hex digits (what `vitalbridge profiles keygen` prints).
    pub ed25519: String,
}

/// `[gateway]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Stable id of this gateway, used in its FHIR Device and MQTT client id. Default: a random
    /// id generated on first start and kept in `<data_dir>/gateway-id`.
    pub id: Option<String>,
    /// Directory for the buffer database, the lock file and file-uplink output.
    pub data_dir: PathBuf,
    /// Threads that run the gateway's async work (sources, mapping, uplinks, the operations
    /// port); SQLite has a thread of its own. One is the cheapest per reading: tasks hand
    /// readings to each other without waking another thread (docs/benchmark.md).
    pub worker_threads: usize,
}

/// Most `gateway.worker_threads`.
pub const MAX_WORKER_THREADS: usize = 64;

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            id: None,
            data_dir: PathBuf::from("./vitalbridge-data"),
            worker_threads: 1,
        }
    }
}

/// `[buffer]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BufferConfig {
    /// Most readings held undelivered. When full, sources stop acknowledging (backpressure);
    /// nothing buffered is ever dropped to make room.
    pub capacity: u64,
    /// Most readings committed in one transaction (group commit).
    pub commit_max_rows: usize,
    /// How long the writer waits for more readings before committing a small group, in ms.
    pub commit_linger_ms: u64,
    /// The key that seals buffered readings at rest (32 random bytes, or 64 hex digits):
    /// must be readable by the gateway's user only, and must not be under `gateway.data_dir`.
    /// Created (mode 0600) at the very first start if it does not exist; after that a
    /// missing or different key stops the gateway without touching the buffer. Under systemd:
    /// `${CREDENTIALS_DIRECTORY}/vitalbridge-buffer.key`.
    pub key_file: PathBuf,
    /// Keys the buffer may still be sealed with. Rotating: put the new key in `key_file`,
    /// the old one here, start the gateway once (every row is sealed again under the new
    /// key), then remove it from here.
    pub previous_key_files: Vec<PathBuf>,
    /// Refuse new readings while the file system holding `data_dir` has less free space than
    /// this, in MiB, so that deliveries can still be recorded on a nearly full disk. Unset:
    /// 5 % of the file system, at least 1 and at most 64 MiB.
    pub min_free_mb: Option<u64>,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            capacity: 1_000_000,
            commit_max_rows: 1024,
            commit_linger_ms: 2,
            key_file: PathBuf::from("./vitalbridge-buffer.key"),
            previous_key_files: Vec::new(),
            min_free_mb: None,
        }
    }
}

/// `[sources]`
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourcesConfig {
    /// `[sources.sim]`: the built-in device simulator.
    pub sim: Option<SimConfig>,
    /// `[sources.mqtt]`: readings published to an MQTT broker.
    pub mqtt: Option<MqttSourceConfig>,
    /// `[sources.ble]`: Bluetooth LE health devices (needs the `ble` build feature).
    pub ble: Option<BleSourceConfig>,
    /// `[[sources.serial]]`: serial ports (RS-232, USB-serial), one table per port.
    pub serial: Vec<SerialPortConfig>,
    /// `[sources.hl7]`: HL7 v2 (IHE PCD-01) over MLLP from monitor gateways.
    #[serde(default)]
    pub hl7: Option<Hl7SourceConfig>,
}

/// `[sources.ble]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BleSourceConfig {
    /// A directory of extra or replacement `ble-*.toml` device profiles. Unset: only the
    /// profiles built into the binary (the files of `device-profiles/`).
    pub profiles_dir: Option<PathBuf>,
    /// Set a device's clock (Current Time, 0x2A2B) when it allows writing it and is off by
    /// more than a couple of seconds. Device clocks are set to UTC.
    pub set_device_clock: bool,
    /// Give up a connection attempt (connect and service discovery) after this many seconds.
    pub connect_timeout_s: u64,
    /// First delay before reconnecting after a failed connection, in ms; doubles per
    /// failure up to `reconnect_max_ms`.
    pub reconnect_initial_ms: u64,
    /// Longest delay before reconnecting, in ms.
    pub reconnect_max_ms: u64,
    /// The devices to connect to.
    pub devices: Vec<BleDeviceConfig>,
}

impl Default for BleSourceConfig {
    fn default() -> Self {
        Self {
            profiles_dir: None,
            set_device_clock: true,
            connect_timeout_s: 20,
            reconnect_initial_ms: 1000,
            reconnect_max_ms: 300_000,
            devices: Vec::new(),
        }
    }
}

/// `[[sources.ble.devices]]`: one device, or every device advertising a service.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BleDeviceConfig {
    /// The device's Bluetooth address, `A1:B2:C3:D4:E5:F6`. Either this or `service`.
    pub address: Option<String>,
    /// Connect to any device advertising this GATT service (e.g. `1810`). Either this or
    /// `address`. Prefer addresses: a neighbour's cuff advertises the same service.
    pub service: Option<String>,
    /// Device profile id (e.g. `ble-blood-pressure`). Unset: the profile whose service the
    /// device advertises.
    pub profile: Option<String>,
}

/// `[sources.sim]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// How many simulated devices; they cycle through BP cuff, pulse oximeter, thermometer,
    /// scale and heart-rate strap.
    pub devices: u32,
    /// Each device measures once per this many milliseconds.
    pub interval_ms: u64,
    /// Stop after this many readings in total (0 = run forever). For tests and demos.
    pub max_readings: u64,
    /// Show what the gateway does with readings that are not plain: the last device is
    /// bound to no patient (its readings are held unbound), the thermometers have no clock,
    /// every 10th blood pressure reports a loose cuff and every 15th SpO2 is above 100 %
    /// (refused). Off: every device has a demo patient and a clock, every value is plain.
    pub scenarios: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            devices: 5,
            interval_ms: 1000,
            max_readings: 0,
            scenarios: true,
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
    /// Longest a message waits in the buffer writer for others to share its commit (one
    /// fsync), in milliseconds, counted from its arrival. The source sends messages to the
    /// buffer without waiting for the commit before, so this adds at most this much latency
    /// and saves CPU at steady rates (docs/configuration.md). Replaces
    /// `buffer.commit_linger_ms` for this source.
    #[serde(default = "default_mqtt_commit_linger_ms")]
    pub commit_linger_ms: u64,
    /// TLS to the broker (required for `mqtts://`). With `cert` and `key`, mutual TLS.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Whether a payload's `patient` field is trusted: `true` files the reading under the
    /// patient the payload names (audited); `false` ignores it and applies the bindings
    /// (`[[devices]]`, `[default_patient]`; a reading with none is held unbound). Unset:
    /// `false` when bindings are configured, else `true` (a publisher that is the system of
    /// record for its patients). Anyone who may publish to the topics can name any patient.
    #[serde(default)]
    pub trust_payload_patient: Option<bool>,
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
fn default_mqtt_commit_linger_ms() -> u64 {
    20
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
    pub usb: Option<UsbId>,
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
    #[serde(default, deserialize_with = "utc_offset")]
    pub device_utc_offset: Option<time::UtcOffset>,
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

/// Parses a fixed UTC offset written `+HH:MM`, `-HH:MM` or `Z` (`device_utc_offset`).
fn parse_utc_offset(text: &str) -> Option<time::UtcOffset> {
    if text == "Z" {
        return Some(time::UtcOffset::UTC);
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1i8, &text[1..]),
        b'-' => (-1i8, &text[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
    if h > 18 || m > 59 {
        return None;
    }
    time::UtcOffset::from_hms(sign * h, sign * m, 0).ok()
}

/// `device_utc_offset`, parsed when the file is read.
fn utc_offset<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<time::UtcOffset>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_utc_offset(&text).map(Some).ok_or_else(|| {
        serde::de::Error::custom("must be a UTC offset like +01:00, -05:00 or +00:00")
    })
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
    /// Certificate revocation lists (PEM) of `ca`: a server certificate on one is refused.
    /// Read again when a file changes.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
}

/// `[uplink]`: any of `file`, `fhir`, `hl7`, `mqtt`, `kafka` at once (each a destination with
/// its own progress); `file` when none is given.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UplinkConfig {
    /// Readings per batch (one Bundle, or one file write).
    pub batch_size: usize,
    /// Batches in flight at once, per destination (the Kafka destination always runs one, so
    /// that each key's records stay in order).
    pub in_flight: usize,
    /// How long a batch that is not full may wait for more readings, in ms, counted from
    /// its oldest reading's arrival: at steady rates fewer, fuller requests (servers charge
    /// per request, and so does the CPU) for at most this much added latency. 0: send at once.
    pub batch_linger_ms: u64,
    /// First retry delay, in ms; doubles per attempt, with jitter.
    pub retry_initial_ms: u64,
    /// Longest retry delay, in ms.
    pub retry_max_ms: u64,
    /// `[uplink.file]`: FHIR NDJSON files.
    pub file: Option<FileUplinkConfig>,
    /// `[uplink.fhir]`: a FHIR server over HTTPS with mutual TLS.
    pub fhir: Option<FhirUplinkConfig>,
    /// `[uplink.hl7]`: HL7 v2 ORU^R01 over MLLP to an interface engine.
    #[serde(default)]
    pub hl7: Option<Hl7UplinkConfig>,
    /// `[uplink.mqtt]`: an MQTT broker (streamed Observations).
    #[serde(default)]
    pub mqtt: Option<MqttUplinkConfig>,
    /// `[uplink.kafka]`: a Kafka topic (streamed Observations).
    #[serde(default)]
    pub kafka: Option<KafkaUplinkConfig>,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            in_flight: 2,
            batch_linger_ms: 20,
            retry_initial_ms: 500,
            retry_max_ms: 60_000,
            file: None,
            fhir: None,
            hl7: None,
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
    /// An interface engine (HL7 v2 over MLLP).
    Hl7(Hl7UplinkConfig),
    /// An MQTT broker.
    Mqtt(MqttUplinkConfig),
    /// A Kafka topic.
    Kafka(KafkaUplinkConfig),
}

impl UplinkConfig {
    /// Every configured destination (`file` with defaults when none is configured), each
    /// once, in a fixed order: file, fhir, hl7, mqtt, kafka.
    pub fn destinations(&self) -> Vec<Destination> {
        let mut all = Vec::new();
        if let Some(file) = &self.file {
            all.push(Destination::File(file.clone()));
        }
        if let Some(fhir) = &self.fhir {
            all.push(Destination::Fhir(fhir.clone()));
        }
        if let Some(hl7) = &self.hl7 {
            all.push(Destination::Hl7(hl7.clone()));
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
            Destination::Hl7(_) => "hl7",
            Destination::Mqtt(_) => "mqtt",
            Destination::Kafka(_) => "kafka",
        }
    }
}

/// `[uplink.file]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileUplinkConfig {
    /// Output directory. Default: `<data_dir>/out`.
    pub dir: Option<PathBuf>,
    /// Start a new file when the current one reaches this size, in bytes.
    pub rotate_bytes: u64,
}

impl Default for FileUplinkConfig {
    fn default() -> Self {
        Self {
            dir: None,
            rotate_bytes: 64 * 1024 * 1024,
        }
    }
}

/// `[uplink.fhir]`
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirUplinkConfig {
    /// FHIR base URL, e.g. `https://fhir.example.org/r4`. Must be `https://`.
    pub base_url: String,
    /// The private CA that signed the server's certificate (the only one trusted).
    pub ca: PathBuf,
    /// This gateway's client certificate chain (PEM). May be left out (with `key`) only
    /// when `[uplink.fhir.auth]` authenticates the gateway instead.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The client key (PEM); must not be readable by group or others.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Per-request timeout, in seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// Bundle type: `transaction` (all-or-nothing, the default) or `batch` (per entry).
    #[serde(default)]
    pub bundle_type: BundleType,
    /// Most entries in one Bundle, Devices included (unset: no limit of ours; the batch is
    /// `uplink.batch_size` readings plus their Devices). Servers limit transactions: Medplum
    /// refuses a transaction with conditional creates above 8 entries.
    #[serde(default)]
    pub max_entries: Option<usize>,
    /// Most bytes in one request body (unset: no limit of ours). For a server or a proxy in
    /// front of it that refuses larger requests (413).
    #[serde(default)]
    pub max_request_bytes: Option<usize>,
    /// Certificate revocation lists (PEM) of the CA in `ca`: a server certificate on one is
    /// refused. Read again when a file changes.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// How an Observation names a patient bound by identifier: `identifier` (the default),
    /// `conditional` or `create`.
    #[serde(default)]
    pub patient_reference: PatientReference,
    /// `[uplink.fhir.auth]`: the access token the server asks for. Absent: none (mutual
    /// TLS only).
    #[serde(default)]
    pub auth: Option<FhirAuthConfig>,
}

impl FhirUplinkConfig {
    /// The client certificate and key, when mutual TLS is configured.
    pub fn client_identity(&self) -> Option<(&Path, &Path)> {
        self.cert.as_deref().zip(self.key.as_deref())
    }
}

impl fmt::Debug for FhirUplinkConfig {
    /// As derived, but without `auth` when there is none: the configuration fingerprint
    /// (`ops::config_change`) hashes this text, and an upgrade alone must not look like a
    /// configuration change of an uplink without `[uplink.fhir.auth]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `cert` and `key` as the plain paths they were before they became optional.
        let mut s = f.debug_struct("FhirUplinkConfig");
        s.field("base_url", &self.base_url).field("ca", &self.ca);
        for (name, path) in [("cert", &self.cert), ("key", &self.key)] {
            match path {
                Some(path) => s.field(name, path),
                None => s.field(name, &Option::<PathBuf>::None),
            };
        }
        s.field("timeout_s", &self.timeout_s)
            .field("bundle_type", &self.bundle_type);
        // Later keys only when set, for the same reason.
        if let Some(n) = &self.max_entries {
            s.field("max_entries", n);
        }
        if let Some(n) = &self.max_request_bytes {
            s.field("max_request_bytes", n);
        }
        if !self.crls.is_empty() {
            s.field("crls", &self.crls);
        }
        if self.patient_reference != PatientReference::default() {
            s.field("patient_reference", &self.patient_reference);
        }
        if let Some(auth) = &self.auth {
            s.field("auth", auth);
        }
        s.finish()
    }
}

/// How `subject` names a patient bound by identifier (`uplink.fhir.patient_reference`).
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatientReference {
    /// `subject.identifier` only.
    #[default]
    Identifier,
    /// A conditional reference `Patient?identifier=system|value` the server resolves.
    Conditional,
    /// The Patient created by conditional create in the same Bundle, and referenced.
    Create,
}

/// The fewest entries `uplink.fhir.max_entries` may allow: the gateway's Device, one
/// measuring Device and one Observation.
pub const MIN_BUNDLE_ENTRIES: usize = 3;
/// The smallest `uplink.fhir.max_request_bytes`: room for one Observation and its Devices.
pub const MIN_REQUEST_BYTES: usize = 16 * 1024;

/// How a batch of readings is sent to a FHIR server (`uplink.fhir.bundle_type`).
#[derive(Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BundleType {
    /// One `transaction` Bundle: all entries stored, or none.
    #[default]
    Transaction,
    /// One `batch` Bundle: an answer per entry.
    Batch,
}

impl fmt::Debug for BundleType {
    /// `"transaction"` or `"batch"`, as the string this key was before it was parsed at
    /// load: the configuration fingerprint (`ops::config_change`) hashes the `Debug` text,
    /// and an upgrade alone must not look like a configuration change in the audit log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            BundleType::Transaction => "transaction",
            BundleType::Batch => "batch",
        };
        write!(f, "{name:?}")
    }
}

fn default_timeout_s() -> u64 {
    30
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

/// `[default_patient]`: the patient of every device without a `[[devices]]` binding.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultPatient {
    /// Patient identifier system. With `id`.
    #[serde(default)]
    pub system: Option<String>,
    /// Patient identifier value. With `system`.
    #[serde(default)]
    pub id: Option<String>,
    /// A literal reference instead, e.g. `Patient/123`.
    #[serde(default)]
    pub reference: Option<String>,
    /// Device user indexes (BLE User ID) the default patient takes. A reading that reports
    /// another user index (the second user of a two-user cuff) is held unbound rather than
    /// given to the default patient; a reading that reports none is the default patient's.
    #[serde(default)]
    pub users: Vec<u8>,
}

/// What to do with a value outside its metric's physiological limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlausibilityAction {
    /// Dead-letter the reading, with its reason; audited.
    #[default]
    Refuse,
    /// Keep it, marked `implausible` (FHIR interpretation, status `preliminary`).
    Flag,
    /// Do not check.
    Off,
}

/// In which unit values are sent (`clinical.units`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitOutput {
    /// As the device sent them (`[lb_av]`, `[degF]`, `kPa`).
    #[default]
    AsSent,
    /// Converted to the metric's canonical unit (`kg`, `Cel`, `mm[Hg]`), the value as sent
    /// kept beside it in the Observation.
    Canonical,
}

/// `[clinical]`: the checks every reading passes on its way to the buffer (docs/clinical.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClinicalConfig {
    /// Units in the output: `as-sent` (the device's, with their UCUM codes) or `canonical`
    /// (one unit per metric: converted, the original kept beside it in the Observation).
    pub units: UnitOutput,
    /// A value outside its metric's physiological limits: `refuse`, `flag` or `off`.
    pub plausibility: PlausibilityAction,
    /// `[[clinical.limits]]`: limits that replace the built-in ones of a metric.
    pub limits: Vec<LimitConfig>,
    /// A device time ahead of the gateway's receive time by more than this many seconds is
    /// flagged `time-in-future`.
    pub future_tolerance_s: u64,
    /// A device time older than this many days is flagged `time-too-old` (a reset clock);
    /// 0: never.
    pub max_age_days: u64,
    /// A device whose clock is off from the gateway's by more than this many seconds is
    /// shown on the status page and in `/metrics`.
    pub clock_drift_warn_s: u64,
}

/// Default of `clinical.future_tolerance_s`: device clocks a few minutes fast are common.
pub const DEFAULT_FUTURE_TOLERANCE_S: u64 = 300;
/// Default of `clinical.max_age_days`: stored glucose records are weeks old; a reset clock
/// is decades off.
pub const DEFAULT_MAX_AGE_DAYS: u64 = 365;
/// Default of `clinical.clock_drift_warn_s`.
pub const DEFAULT_CLOCK_DRIFT_WARN_S: u64 = 120;

impl Default for ClinicalConfig {
    fn default() -> Self {
        Self {
            units: UnitOutput::AsSent,
            plausibility: PlausibilityAction::Refuse,
            limits: Vec::new(),
            future_tolerance_s: DEFAULT_FUTURE_TOLERANCE_S,
            max_age_days: DEFAULT_MAX_AGE_DAYS,
            clock_drift_warn_s: DEFAULT_CLOCK_DRIFT_WARN_S,
        }
    }
}

/// `[[clinical.limits]]`: the physiological limits of one metric.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// The metric: short name (`spo2`), MDC code, MDC reference id or LOINC code.
    pub metric: String,
    /// Lowest plausible value, in `unit`.
    pub min: f64,
    /// Highest plausible value, in `unit`.
    pub max: f64,
    /// The unit of `min` and `max` (UCUM, fitting the metric). Default: the metric's
    /// canonical unit.
    #[serde(default)]
    pub unit: Option<String>,
    /// What to do outside them. Default: `clinical.plausibility`.
    #[serde(default)]
    pub action: Option<PlausibilityAction>,
}

/// `[ops]`: logs, the audit log and the operations HTTP server.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsConfig {
    /// Log format on stderr: `text` or `json` (one JSON object per line). The command line's
    /// `--log-format` overrides it.
    pub log_format: LogFormat,
    /// The audit log: security-relevant events, one JSON object per line, only ever appended
    /// to. Default: `<data_dir>/audit.log`.
    pub audit_log: Option<PathBuf>,
    /// `[ops.http]`: `/metrics`, `/healthz`, `/readyz` and the status page. Absent: not served
    /// (the demo defaults serve it on loopback).
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
#[serde(default, deny_unknown_fields)]
pub struct OpsHttpConfig {
    /// Address and port to listen on, e.g. `127.0.0.1:8642`. A non-loopback address is refused
    /// unless `allow_from` names a non-loopback network (an explicit decision to serve wider).
    pub listen: SocketAddr,
    /// Client networks allowed to connect, in CIDR notation. A connection from anywhere else is
    /// closed at once and recorded in the audit log.
    pub allow_from: Vec<Cidr>,
    /// `/readyz` reports not ready once the uplink has been failing for longer than this, in
    /// seconds (short outages are expected and are what the buffer is for).
    pub ready_staleness_s: u64,
    /// Host names clients may use in the `Host` header, besides `localhost`, loopback
    /// addresses and the listen address (a request naming any other host is refused, so a
    /// DNS-rebinding page cannot read the status).
    pub hosts: Vec<String>,
    /// `[ops.http.tls]`: serve HTTPS. Required when listening beyond loopback.
    pub tls: Option<OpsTlsConfig>,
    /// A file holding the access token (at least 16 characters, not readable by group or
    /// others). With it every path but `/healthz` needs `Authorization: Bearer <token>`, or
    /// HTTP Basic with the token as password (what a browser prompts for).
    pub token_file: Option<PathBuf>,
    /// Most connections one client address may hold open at once.
    pub max_connections_per_client: usize,
}

/// The default of `ops.http.max_connections_per_client`: a quarter of the server's 32.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 8;

impl Default for OpsHttpConfig {
    fn default() -> Self {
        Self {
            // Loopback only, on a port outside the range Prometheus exporters have
            // allocated (9100-9999) and the usual development ports.
            listen: SocketAddr::from(([127, 0, 0, 1], 8642)),
            allow_from: Cidr::loopback(),
            ready_staleness_s: 300,
            hosts: Vec::new(),
            tls: None,
            token_file: None,
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
        }
    }
}

/// `[ops.http.tls]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsTlsConfig {
    /// The server certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM), readable by the gateway's user only.
    pub key: PathBuf,
    /// With it, clients must present a certificate issued by this CA (PEM).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl Config {
    /// Parses TOML: the configuration, or every unknown key, wrong type and bad value, each
    /// naming its full key path and line (see [`Parsed`]).
    pub fn from_toml(text: &str) -> Result<Self, Vec<ConfigError>> {
        Parsed::from_toml(text).into_result()
    }

    /// Reads and parses a config file (see [`Parsed::read`]): the configuration, or every
    /// problem with reading it.
    pub fn load(path: &Path) -> Result<Self, Vec<ConfigError>> {
        Parsed::read(path).into_result()
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
            for crl in &mut tls.crls {
                paths.push(("sources.mqtt.tls.crls", crl));
            }
            if let Some(cert) = tls.cert.as_mut() {
                paths.push(("sources.mqtt.tls.cert", cert));
            }
            if let Some(key) = tls.key.as_mut() {
                paths.push(("sources.mqtt.tls.key", key));
            }
        }
        if let Some(tls) = self.sources.hl7.as_mut().and_then(|h| h.tls.as_mut()) {
            paths.push(("sources.hl7.tls.cert", &mut tls.cert));
            paths.push(("sources.hl7.tls.key", &mut tls.key));
            if let Some(ca) = tls.client_ca.as_mut() {
                paths.push(("sources.hl7.tls.client_ca", ca));
            }
            for crl in &mut tls.crls {
                paths.push(("sources.hl7.tls.crls", crl));
            }
        }
        if let Some(tls) = self.uplink.hl7.as_mut().and_then(|h| h.tls.as_mut()) {
            paths.push(("uplink.hl7.tls.ca", &mut tls.ca));
            for crl in &mut tls.crls {
                paths.push(("uplink.hl7.tls.crls", crl));
            }
            if let Some(cert) = tls.cert.as_mut() {
                paths.push(("uplink.hl7.tls.cert", cert));
            }
            if let Some(key) = tls.key.as_mut() {
                paths.push(("uplink.hl7.tls.key", key));
            }
        }
        if let Some(fhir) = self.uplink.fhir.as_mut() {
            paths.push(("uplink.fhir.ca", &mut fhir.ca));
            if let Some(cert) = fhir.cert.as_mut() {
                paths.push(("uplink.fhir.cert", cert));
            }
            if let Some(key) = fhir.key.as_mut() {
                paths.push(("uplink.fhir.key", key));
            }
            if let Some(auth) = fhir.auth.as_mut() {
                paths.extend(auth::secret_paths_mut(auth));
            }
            for crl in &mut fhir.crls {
                paths.push(("uplink.fhir.crls", crl));
            }
        }
        streams::secret_paths(
            self.uplink.mqtt.as_mut(),
            self.uplink.kafka.as_mut(),
            &mut paths,
        );
        paths
    }
}

mod auth;
mod hl7;
mod load;
mod net;
mod streams;
mod validate;
pub(crate) use auth::check_https_url;
pub use auth::{AuthMethod, FhirAuthConfig, JwtAlgorithm};
pub use hl7::{split_address, Hl7SourceConfig, Hl7UplinkConfig, ListenerTls};
pub use load::Parsed;
pub use net::{Cidr, CidrError};
pub(crate) use streams::parse_topic_template;
pub use streams::{
    split_host_port, KafkaKey, KafkaSaslConfig, KafkaUplinkConfig, MqttUplinkConfig, StreamPayload,
    TopicField, TopicPart,
};
pub use validate::{check_gateway_id, check_private_key, InvalidGatewayId};

#[cfg(test)]
mod tests {
    use super::load::{clip, MAX_ERROR_TEXT};
    use super::*;

    /// The one problem of a file that has exactly one.
    #[track_caller]
    fn the_problem<T: std::fmt::Debug>(result: Result<T, Vec<ConfigError>>) -> ConfigError {
        match result {
            Err(mut problems) if problems.len() == 1 => problems.remove(0),
            other => panic!("expected exactly one problem, got {other:?}"),
        }
    }

    #[test]
    fn an_fhir_uplink_without_auth_keeps_its_debug_text_and_one_with_auth_parses() {
        let fhir =
            "[uplink.fhir]\nbase_url = \"https://f\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n";
        let plain = Config::from_toml(fhir).unwrap().uplink.fhir.unwrap();
        // The configuration fingerprint hashes this text: no new field without the table.
        assert_eq!(
            format!("{plain:?}"),
            "FhirUplinkConfig { base_url: \"https://f\", ca: \"c\", cert: \"c\", key: \"k\", \
             timeout_s: 30, bundle_type: \"transaction\" }"
        );
        let with = Config::from_toml(&format!(
            "{fhir}[uplink.fhir.auth]\nmethod = \"private_key_jwt\"\nclient_id = \"gw\"\n\
             key = \"/k.pem\"\nalgorithm = \"ES384\"\n"
        ))
        .unwrap();
        let auth = with.uplink.fhir.unwrap().auth.unwrap();
        assert_eq!(auth.method, AuthMethod::PrivateKeyJwt);
        assert_eq!(auth.algorithm, Some(JwtAlgorithm::ES384));
        assert_eq!(auth.refresh_before_s, 60);
        let e = the_problem(Config::from_toml(&format!(
            "{fhir}[uplink.fhir.auth]\nmethod = \"static_token\"\ntoken = \"abc\"\n"
        )));
        assert_eq!(e.key, "uplink.fhir.auth.token");
        assert!(!e.message.contains("abc"), "{e}");
    }

    #[test]
    fn the_mqtt_sources_wait_for_company_defaults_to_20_ms_and_is_bounded() {
        let mqtt = "[sources.mqtt]\nurl = \"mqtt://broker.example.org\"\n";
        let parsed = Config::from_toml(mqtt).unwrap();
        assert_eq!(parsed.sources.mqtt.unwrap().commit_linger_ms, 20);
        assert_eq!(parsed.buffer.commit_linger_ms, 2);
        let slow = Config::from_toml(&format!("{mqtt}commit_linger_ms = 5000\n")).unwrap();
        let e = the_problem(slow.validate());
        assert_eq!(e.key, "sources.mqtt.commit_linger_ms");
        assert!(e.message.contains("at most 1000 ms"), "{e}");
    }

    #[test]
    fn one_worker_thread_by_default_and_the_count_is_bounded() {
        assert_eq!(Config::from_toml("").unwrap().gateway.worker_threads, 1);
        let four = Config::from_toml("[gateway]\nworker_threads = 4\n").unwrap();
        assert_eq!(four.gateway.worker_threads, 4);
        four.validate().unwrap();
        for bad in [0, MAX_WORKER_THREADS + 1] {
            let config = Config::from_toml(&format!("[gateway]\nworker_threads = {bad}\n"));
            let e = the_problem(config.unwrap().validate());
            assert_eq!(e.key, "gateway.worker_threads");
            assert!(e.message.contains("between 1 and 64"), "{e}");
        }
    }

    #[test]
    fn errors_about_patient_bindings_and_syntax_errors_do_not_quote_the_file() {
        let e = the_problem(Config::from_toml(
            "[[devices]]\nid = \"d\"\npatient_system = \"urn:oid:1\"\npatient_id = 770123\n",
        ));
        assert_eq!(e.key, "devices[0].patient_id");
        assert!(!e.message.contains("770123"), "{e}");
        assert!(e.message.starts_with("invalid type"), "{e}");
        assert!(e.message.contains("expected a string"), "{e}");

        let e = the_problem(Config::from_toml(
            "[[devices]]\nid = \"d\"\npatient_id = \"P-4711\n",
        ));
        assert!(e.message.starts_with("TOML parse error at line 3"), "{e}");
        assert!(!e.message.contains("P-4711"), "{e}");

        // Elsewhere the value helps and is shown.
        let e = the_problem(Config::from_toml("[buffer]\ncapacity = \"lots\"\n"));
        assert!(e.message.contains("lots"), "{e}");
    }

    #[test]
    fn fhir_request_limits_and_patient_reference_are_checked_by_key() {
        let text = |extra: &str| {
            format!(
                "[uplink.fhir]\nbase_url = \"https://fhir.example.org/r4\"\nca = \"a.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n{extra}"
            )
        };
        let parsed = Config::from_toml(&text(
            "max_entries = 8\nmax_request_bytes = 1048576\npatient_reference = \"create\"\n",
        ))
        .unwrap();
        let fhir = parsed.uplink.fhir.clone().unwrap();
        assert_eq!(fhir.max_entries, Some(8));
        assert_eq!(fhir.max_request_bytes, Some(1_048_576));
        assert_eq!(fhir.patient_reference, PatientReference::Create);
        let problems = |extra: &str| -> Vec<ConfigError> {
            Config::from_toml(&text(extra))
                .unwrap()
                .validate()
                .unwrap_err()
        };
        let has = |problems: &[ConfigError], key: &str, words: &str| {
            problems
                .iter()
                .any(|p| p.key == key && p.message.contains(words))
        };
        let p = problems("max_entries = 2\nmax_request_bytes = 1000\n");
        assert!(has(&p, "uplink.fhir.max_entries", "at least 3"), "{p:?}");
        assert!(
            has(&p, "uplink.fhir.max_request_bytes", "at least 16384"),
            "{p:?}"
        );
        let p = problems("bundle_type = \"batch\"\npatient_reference = \"conditional\"\n");
        assert!(
            has(&p, "uplink.fhir.patient_reference", "needs bundle_type"),
            "{p:?}"
        );
        let e = the_problem(Config::from_toml(&text("patient_reference = \"guess\"\n")));
        assert_eq!(e.key, "uplink.fhir.patient_reference");
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
            fhir.cert.as_deref(),
            Some(Path::new(
                "/run/credentials/vitalbridge.service/gateway.pem"
            ))
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
device_utc_offset = "+01:00"
[[sources.serial]]
name = "@sources.serial[1].name@"
usb = "0403:6001"
usb_serial = "@sources.serial[1].usb_serial@"
protocol = "firmware"
[uplink.file]
dir = "@uplink.file.dir@"
[uplink.fhir]
base_url = "@uplink.fhir.base_url@"
ca = "@uplink.fhir.ca@"
cert = "@uplink.fhir.cert@"
key = "@uplink.fhir.key@"
bundle_type = "batch"
[uplink.fhir.auth]
method = "private_key_jwt"
client_id = "@uplink.fhir.auth.client_id@"
token_endpoint = "@uplink.fhir.auth.token_endpoint@"
scope = "@uplink.fhir.auth.scope@"
key = "@uplink.fhir.auth.key@"
kid = "@uplink.fhir.auth.kid@"
jku = "@uplink.fhir.auth.jku@"
secret_file = "@uplink.fhir.auth.secret_file@"
token_file = "@uplink.fhir.auth.token_file@"
resource = "@uplink.fhir.auth.resource@"
ca = "@uplink.fhir.auth.ca@"
[sources.hl7]
listen = "127.0.0.1:0"
time_zone = "@sources.hl7.time_zone@"
no_value = ["@sources.hl7.no_value[0]@"]
[sources.hl7.tls]
cert = "@sources.hl7.tls.cert@"
key = "@sources.hl7.tls.key@"
client_ca = "@sources.hl7.tls.client_ca@"
[uplink.hl7]
address = "@uplink.hl7.address@"
sending_application = "@uplink.hl7.sending_application@"
sending_facility = "@uplink.hl7.sending_facility@"
receiving_application = "@uplink.hl7.receiving_application@"
receiving_facility = "@uplink.hl7.receiving_facility@"
[uplink.hl7.tls]
ca = "@uplink.hl7.tls.ca@"
cert = "@uplink.hl7.tls.cert@"
key = "@uplink.hl7.tls.key@"
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
            ("sources.serial[1].name", MAX_CODE_LEN),
            ("sources.serial[1].usb_serial", MAX_ID_LEN),
            ("uplink.file.dir", MAX_PATH_LEN),
            ("uplink.fhir.base_url", MAX_URL_LEN),
            ("uplink.fhir.ca", MAX_PATH_LEN),
            ("uplink.fhir.cert", MAX_PATH_LEN),
            ("uplink.fhir.key", MAX_PATH_LEN),
            ("uplink.fhir.auth.client_id", MAX_ID_LEN),
            ("uplink.fhir.auth.token_endpoint", MAX_URL_LEN),
            ("uplink.fhir.auth.scope", MAX_TEXT_LEN),
            ("uplink.fhir.auth.kid", MAX_ID_LEN),
            ("uplink.fhir.auth.jku", MAX_URL_LEN),
            ("uplink.fhir.auth.resource", MAX_URL_LEN),
            ("uplink.fhir.auth.key", MAX_PATH_LEN),
            ("uplink.fhir.auth.secret_file", MAX_PATH_LEN),
            ("uplink.fhir.auth.token_file", MAX_PATH_LEN),
            ("uplink.fhir.auth.ca", MAX_PATH_LEN),
            ("sources.hl7.time_zone", MAX_CODE_LEN),
            ("sources.hl7.no_value[0]", MAX_CODE_LEN),
            ("sources.hl7.tls.cert", MAX_PATH_LEN),
            ("sources.hl7.tls.key", MAX_PATH_LEN),
            ("sources.hl7.tls.client_ca", MAX_PATH_LEN),
            ("uplink.hl7.address", MAX_URL_LEN),
            ("uplink.hl7.sending_application", MAX_NAME_LEN),
            ("uplink.hl7.sending_facility", MAX_NAME_LEN),
            ("uplink.hl7.receiving_application", MAX_NAME_LEN),
            ("uplink.hl7.receiving_facility", MAX_NAME_LEN),
            ("uplink.hl7.tls.ca", MAX_PATH_LEN),
            ("uplink.hl7.tls.cert", MAX_PATH_LEN),
            ("uplink.hl7.tls.key", MAX_PATH_LEN),
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
        let e = the_problem(Config::load(&path));
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
            let e = the_problem(Config::from_toml(&text));
            assert!(e.key.len() <= MAX_ERROR_TEXT + 3, "{}", e.key.len());
            assert!(e.message.len() <= MAX_ERROR_TEXT + 3, "{}", e.message.len());
        }
        assert_eq!(clip("ab€".into(), 3), "ab…");
        assert_eq!(clip("abc".into(), 3), "abc");
    }

    #[test]
    fn a_bad_allow_from_network_is_named_by_its_key_and_index() {
        let e = the_problem(Config::from_toml(
            "[ops.http]\nallow_from = [\"127.0.0.0/8\", \"10.20.1.0/16\"]\n",
        ));
        assert_eq!(e.key, "ops.http.allow_from[1]");
        assert_eq!(
            e.message,
            "10.20.1.0/16 has host bits set below the prefix; did you mean 10.20.0.0/16?"
        );
    }

    /// `usb`, `device_utc_offset` and `bundle_type` are parsed when the file is read, once;
    /// a bad one is a problem of reading, named by its key.
    #[test]
    fn typed_values_are_parsed_when_the_file_is_read() {
        let port = "[[sources.serial]]\nname = \"p\"\nprotocol = \"line\"\nprofile = \"line-nonin-ascii\"\n";
        let c = Config::from_toml(&format!(
            "{port}usb = \"0403:6001\"\ndevice_utc_offset = \"-05:30\"\n"
        ))
        .unwrap();
        let p = &c.sources.serial[0];
        assert_eq!(p.usb, UsbId::parse("0403:6001"));
        assert_eq!(p.device_utc_offset, Some(time::macros::offset!(-5:30)));
        for (line, key, message) in [
            (
                "usb = \"0403-6001\"",
                "sources.serial[0].usb",
                "must be VVVV:PPPP, the USB vendor and product id in hex (e.g. 0403:6001)",
            ),
            (
                "device_utc_offset = \"CET\"",
                "sources.serial[0].device_utc_offset",
                "must be a UTC offset like +01:00, -05:00 or +00:00",
            ),
        ] {
            let e = the_problem(Config::from_toml(&format!("{port}{line}\n")));
            assert_eq!(
                (e.key.as_str(), e.message.as_str(), e.line),
                (key, message, Some(5))
            );
        }
        let fhir =
            "[uplink.fhir]\nbase_url = \"https://f\"\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n";
        let c = Config::from_toml(&format!("{fhir}bundle_type = \"batch\"\n")).unwrap();
        assert_eq!(c.uplink.fhir.unwrap().bundle_type, BundleType::Batch);
        let c = Config::from_toml(fhir).unwrap();
        assert_eq!(c.uplink.fhir.unwrap().bundle_type, BundleType::Transaction);
        let e = the_problem(Config::from_toml(&format!(
            "{fhir}bundle_type = \"bulk\"\n"
        )));
        assert_eq!(e.key, "uplink.fhir.bundle_type");
        assert_eq!(
            e.message,
            "unknown variant `bulk`, expected `transaction` or `batch`"
        );
    }

    /// The configuration fingerprint hashes `Debug` (ops/config_change.rs): the values that
    /// became types keep the text they had as strings or as the hand-written CIDR.
    #[test]
    fn debug_text_of_the_typed_values_is_what_earlier_versions_hashed() {
        assert_eq!(
            format!("{:?}", OpsHttpConfig::default().allow_from),
            "[Cidr { addr: 127.0.0.0, prefix: 8 }, Cidr { addr: ::1, prefix: 128 }]"
        );
        assert_eq!(
            format!("{:?} {:?}", BundleType::Transaction, BundleType::Batch),
            "\"transaction\" \"batch\""
        );
    }

    #[test]
    fn utc_offsets_parse_strictly() {
        use time::macros::offset;
        assert_eq!(parse_utc_offset("+01:00"), Some(offset!(+1)));
        assert_eq!(parse_utc_offset("-05:30"), Some(offset!(-5:30)));
        assert_eq!(parse_utc_offset("Z"), Some(time::UtcOffset::UTC));
        for bad in [
            "", "+1", "01:00", "+01:60", "+19:00", "+1:00", "+01-00", "+0a:00",
        ] {
            assert_eq!(parse_utc_offset(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_empty_table_takes_its_types_defaults() {
        let c = Config::from_toml(
            "[gateway]\n[buffer]\n[sources.sim]\n[sources.ble]\n[uplink]\n[uplink.file]\n[ops]\n[ops.http]\n",
        )
        .unwrap();
        assert_eq!(c.gateway, GatewayConfig::default());
        assert_eq!(c.buffer, BufferConfig::default());
        assert_eq!(c.sources.sim, Some(SimConfig::default()));
        assert_eq!(c.sources.ble, Some(BleSourceConfig::default()));
        assert_eq!(c.uplink.file, Some(FileUplinkConfig::default()));
        assert_eq!(
            UplinkConfig {
                file: None,
                ..c.uplink
            },
            UplinkConfig::default()
        );
        assert_eq!(c.ops.http, Some(OpsHttpConfig::default()));
        let ble = c.sources.ble.unwrap();
        assert!(ble.set_device_clock);
        assert_eq!(ble.connect_timeout_s, 20);
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
            c.uplink.destinations(),
            [Destination::File(FileUplinkConfig::default())]
        );
    }
}
