//! The few Bluetooth LE operations the BLE source needs, as a trait, so the source's logic
//! runs the same over the real adapter ([`super::btleplug`]) and over recorded notification
//! streams in tests.
//!
//! A [`Central`] scans (advertisements and disconnections arrive as [`CentralEvent`]s) and
//! connects; a [`Link`] is one connection: discover, subscribe, read, write (with response),
//! the stream of notifications and indications, and disconnect.
//!
//! Characteristics and services are 16-bit UUIDs on the Bluetooth Base UUID: every standard
//! health service and characteristic is one. An implementation leaves out anything else.
//!
//! Streams are bounded `tokio` channels. An implementation must never make a method wait
//! for the caller to drain a stream (a write must complete while notifications queue up);
//! the source in turn never waits inside a method for work that needs its own loop.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;

/// A Bluetooth device address, most significant byte first (as written `A1:B2:…`).
pub type Address = [u8; 6];

/// `A1:B2:C3:D4:E5:F6`.
pub fn format_address(a: &Address) -> String {
    a.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What one advertising device said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    /// Its address.
    pub address: Address,
    /// Its advertised local name, if any (outside text: display only).
    pub name: Option<String>,
    /// 16-bit service UUIDs it advertises.
    pub services: Vec<u16>,
    /// Received signal strength, dBm.
    pub rssi: Option<i16>,
}

/// What a scan reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CentralEvent {
    /// A device advertised (first seen, or seen again).
    Advertisement(Advertisement),
    /// A connected device went away (it disconnected, or the link was lost).
    Disconnected(Address),
}

/// What a characteristic allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Properties {
    /// Read.
    pub read: bool,
    /// Write with response.
    pub write: bool,
    /// Notify.
    pub notify: bool,
    /// Indicate.
    pub indicate: bool,
}

/// A characteristic found by discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GattCharacteristic {
    /// The service it belongs to.
    pub service: u16,
    /// Its UUID.
    pub uuid: u16,
    /// What it allows.
    pub properties: Properties,
}

/// A notified or indicated value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The characteristic that sent it.
    pub characteristic: u16,
    /// The value, as received.
    pub value: Vec<u8>,
}

/// Why a Bluetooth operation failed. Messages name operations and addresses, never values.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BleError {
    /// No adapter could be used (none present, BlueZ not running, no D-Bus).
    #[error("no usable Bluetooth adapter: {0}")]
    NoAdapter(String),
    /// The adapter or the device refused or failed an operation.
    #[error("Bluetooth {operation} failed: {reason}")]
    Operation {
        /// What was being done (`connect`, `discover`, `write 2A52`, …).
        operation: String,
        /// What the stack said.
        reason: String,
    },
    /// An operation took longer than allowed.
    #[error("Bluetooth {0} timed out")]
    Timeout(&'static str),
    /// The device is not in range or not known to the adapter.
    #[error("device {0} not found by the adapter")]
    NotFound(String),
    /// `[sources.ble]` names something that does not exist (a profile, an address).
    #[error("{0}")]
    Config(String),
    /// A profile of `[sources.ble] profiles_dir` does not load.
    #[error(transparent)]
    Profiles(Arc<super::profiles::ProfilesError>),
    /// This build has no Bluetooth support.
    #[error("this vitalbridge was built without Bluetooth support (cargo feature `ble`, Linux)")]
    NotBuilt,
}

impl BleError {
    /// An [`BleError::Operation`].
    pub fn operation(operation: impl Into<String>, reason: impl ToString) -> Self {
        Self::Operation {
            operation: operation.into(),
            reason: reason.to_string(),
        }
    }
}

/// A Bluetooth LE central (an adapter).
pub trait Central: Send + Sync + 'static {
    /// One connection.
    type Link: Link;

    /// Starts scanning for every advertising device and returns the events. The stream ends
    /// when the adapter goes away; scanning again is allowed.
    fn scan(&self) -> impl Future<Output = Result<mpsc::Receiver<CentralEvent>, BleError>> + Send;

    /// Connects to a device seen while scanning. No timeout of its own: the caller bounds it.
    fn connect(
        &self,
        address: Address,
    ) -> impl Future<Output = Result<Self::Link, BleError>> + Send;
}

/// One connection to a device.
pub trait Link: Send + Sync + 'static {
    /// Discovers every service and characteristic.
    fn discover(&self) -> impl Future<Output = Result<Vec<GattCharacteristic>, BleError>> + Send;

    /// The notifications and indications of every subscribed characteristic, from now on.
    /// Call before subscribing, so that nothing sent right after a subscription is missed.
    fn notifications(
        &self,
    ) -> impl Future<Output = Result<mpsc::Receiver<Notification>, BleError>> + Send;

    /// Enables notifications or indications (whichever the characteristic has).
    fn subscribe(&self, characteristic: u16) -> impl Future<Output = Result<(), BleError>> + Send;

    /// Reads a value.
    fn read(&self, characteristic: u16) -> impl Future<Output = Result<Vec<u8>, BleError>> + Send;

    /// Writes a value, with response.
    fn write(
        &self,
        characteristic: u16,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<(), BleError>> + Send;

    /// Disconnects (a no-op when the device already went away).
    fn disconnect(&self) -> impl Future<Output = Result<(), BleError>> + Send;
}
