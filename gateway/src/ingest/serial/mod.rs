//! The serial source: one task per configured port (`[[sources.serial]]`), reading a
//! device over RS-232 or USB-serial with tokio-serial.
//!
//! | module | what it owns |
//! | --- | --- |
//! | [`port`] | finding the port (path, or USB VID:PID through sysfs) and opening it |
//! | [`session`] | the firmware protocol (`firmware/README.md`) as a pure state machine |
//! | [`lines`] | line protocols: framing lines and decoding them with a line profile |
//! | [`task`] | the async task that owns the port: read loop, writer, commits, reconnects |
//! | [`simulator`] | the device side, for `vitalbridge sim serial` (tests, cable checks) |
//!
//! Both protocol sessions are pure: bytes and commit results in, [`Action`]s out. The task
//! performs the actions: it writes messages through a writer task (a device that stops
//! reading can never stall the read loop; a dropped answer is covered by the device's
//! retransmission), and runs each commit as its own task whose result comes back into the
//! loop, so the loop that owns the port never waits on work that needs it to progress.
//!
//! Architecture invariant (acknowledge after durable): a firmware `Ack` is produced only by
//! [`session::Session::committed`] for a commit that resolved `Ok`.

pub mod lines;
pub mod port;
pub mod session;
pub mod simulator;
pub mod task;

#[cfg(test)]
mod tests;

use time::UtcOffset;
use vitalbridge_firmware::message::Message;

use crate::config::{ConfigError, SerialPortConfig, SerialProtocol};
use crate::error_chain::Chain;
use crate::model::{DeviceId, DeviceRef, Reading};
use crate::profile::line::{LineProfile, ProfileError, Registry};
use crate::serial_settings::{FlowControl, Parity};
use port::{PortTarget, Settings, SysRoots};

/// What `[[sources.serial]]` table `i` needs the line profiles to check: that its profile
/// loads (built in, or from `profiles_dir`).
pub fn check_config(i: usize, port: &SerialPortConfig) -> Option<ConfigError> {
    let (SerialProtocol::Line, Some(id)) = (port.protocol, &port.profile) else {
        return None;
    };
    let e = Registry::load(port.profiles_dir.as_deref())
        .and_then(|r| r.get(id).map(|_| ()))
        .err()?;
    let field = if port.profiles_dir.is_some() && !matches!(e, ProfileError::Unknown { .. }) {
        "profiles_dir"
    } else {
        "profile"
    };
    Some(ConfigError::new(
        format!("sources.serial[{i}].{field}"),
        Chain(&e).to_string(),
    ))
}

/// Port settings for firmware devices unless configured otherwise: 115200 8N1, no flow
/// control.
pub const FIRMWARE_SETTINGS: Settings = Settings {
    baud: 115_200,
    data_bits: 8,
    parity: Parity::None,
    stop_bits: 1,
    flow_control: FlowControl::None,
};

/// Identifies a commit between a session and the task that runs it.
pub type BatchId = u64;

/// What a protocol session asks the port task to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write this message to the device (boxed: a message is a fixed-size value of a few
    /// hundred bytes).
    Send(Box<Message>),
    /// Store these readings, then tell the session with `committed(batch, …)`.
    Commit {
        /// Echoed back.
        batch: BatchId,
        /// The readings of one frame or line.
        readings: Vec<Reading>,
        /// Keep retrying while the buffer is full (the device cannot resend), instead of
        /// reporting [`CommitOutcome::Refused`].
        hold: bool,
    },
    /// Dead-letter this payload with its reason, then tell the session.
    Reject {
        /// Echoed back.
        batch: BatchId,
        /// Why; names fields, never values.
        reason: String,
        /// The bytes, for a technician.
        payload: Vec<u8>,
        /// As for `Commit`.
        hold: bool,
    },
}

impl Action {
    /// [`Action::Send`] of `message`.
    pub fn send(message: impl Into<Message>) -> Self {
        Action::Send(Box::new(message.into()))
    }
}

/// How a commit ended, as a session needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Durable: acknowledge.
    Stored,
    /// The buffer is full or failing: refuse, the device retries.
    Refused,
    /// The gateway is shutting down: answer nothing.
    Closed,
}

/// Why a configured port cannot be served at all (as opposed to being unplugged now).
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The line profile is unknown or invalid.
    #[error("sources.serial {port}")]
    Profile {
        /// The port name.
        port: String,
        /// The profile problem.
        #[source]
        source: ProfileError,
    },
    /// A setting is invalid (`check-config` reports these first).
    #[error("sources.serial {port}: {message}")]
    Config {
        /// The port name.
        port: String,
        /// What is wrong.
        message: String,
    },
}

/// What the port speaks, resolved from config.
#[derive(Debug, Clone)]
pub enum Protocol {
    /// Vitalbridge firmware frames.
    Firmware,
    /// Lines decoded by a profile.
    Line {
        /// The profile.
        profile: Box<LineProfile>,
        /// The device on the port.
        device: DeviceRef,
        /// Its clock's UTC offset.
        utc_offset: UtcOffset,
    },
}

/// A configured port, ready to run.
#[derive(Debug, Clone)]
pub struct SerialSource {
    /// The port's name (logs, dead-letter origins `serial:<name>`).
    pub name: String,
    /// Where it is.
    pub target: PortTarget,
    /// Line settings.
    pub settings: Settings,
    /// What it speaks.
    pub protocol: Protocol,
    /// Longest wait between open attempts.
    pub reconnect_max: std::time::Duration,
    /// sysfs and /dev roots (tests swap them).
    pub roots: SysRoots,
}

impl SerialSource {
    /// Resolves a `[[sources.serial]]` table: the target, the profile and the settings
    /// (configured values over the profile's over the defaults).
    pub fn new(config: &SerialPortConfig) -> Result<Self, SerialError> {
        let bad = |message: &str| SerialError::Config {
            port: config.name.clone(),
            message: message.to_owned(),
        };
        let target = match (&config.path, &config.usb) {
            (Some(path), None) => PortTarget::Path(path.clone()),
            (None, Some(usb)) => PortTarget::Usb {
                id: *usb,
                serial: config.usb_serial.clone(),
            },
            _ => return Err(bad("give exactly one of `path` or `usb`")),
        };
        let (protocol, defaults) = match config.protocol {
            SerialProtocol::Firmware => (Protocol::Firmware, FIRMWARE_SETTINGS),
            SerialProtocol::Line => {
                let id = config
                    .profile
                    .as_deref()
                    .ok_or_else(|| bad("a line port needs `profile`"))?;
                let profile_error = |source| SerialError::Profile {
                    port: config.name.clone(),
                    source,
                };
                let registry =
                    Registry::load(config.profiles_dir.as_deref()).map_err(profile_error)?;
                let profile = registry.get(id).map_err(profile_error)?.clone();
                let utc_offset = config.device_utc_offset.unwrap_or(UtcOffset::UTC);
                let device = DeviceRef {
                    id: match &config.device_id {
                        Some(id) => DeviceId::Serial(id.clone()),
                        None => DeviceId::Other(config.name.clone()),
                    },
                    profile: profile.id.clone(),
                    model: Some(profile.model.clone()),
                    manufacturer: Some(profile.manufacturer.clone()),
                };
                let defaults = Settings::from(profile.serial);
                (
                    Protocol::Line {
                        profile: Box::new(profile),
                        device,
                        utc_offset,
                    },
                    defaults,
                )
            }
        };
        let settings = Settings {
            baud: config.baud.unwrap_or(defaults.baud),
            data_bits: config.data_bits.unwrap_or(defaults.data_bits),
            parity: config.parity.unwrap_or(defaults.parity),
            stop_bits: config.stop_bits.unwrap_or(defaults.stop_bits),
            flow_control: config.flow_control.unwrap_or(defaults.flow_control),
        };
        Ok(Self {
            name: config.name.clone(),
            target,
            settings,
            protocol,
            reconnect_max: std::time::Duration::from_millis(config.reconnect_max_ms),
            roots: SysRoots::default(),
        })
    }

    /// `serial:<name>`: the origin recorded on this port's dead letters.
    pub fn origin(&self) -> String {
        format!("serial:{}", self.name)
    }
}
