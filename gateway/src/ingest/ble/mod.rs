//! The Bluetooth LE source: standard health devices (cuffs, scales, pulse oximeters,
//! thermometers, glucose meters, heart-rate straps) over a BLE adapter.
//!
//! The source's logic is here and in [`session`]; the adapter is behind the small
//! [`Central`]/[`Link`] trait ([`central`]), implemented thinly over btleplug
//! ([`btleplug`], feature `ble`, Linux/BlueZ) and, in tests, over recorded notification
//! streams.
//!
//! # Which devices, when
//!
//! `[[sources.ble.devices]]` lists devices by `address`, or by the `service` they advertise.
//! The source scans all the time and connects to a listed device **when it advertises**.
//! That is how most cuffs, scales, thermometers and glucose meters work: they advertise
//! only when they have a measurement, and disconnect once it is delivered; that
//! disconnection is the normal end of a session, not a failure. Devices that stay connected
//! (heart-rate straps, continuous oximeters) are reconnected when they advertise again after
//! a lost link.
//!
//! A failed attempt (connect, discovery, subscription, a refused RACP write) makes the source
//! wait before the next one, by the gateway's backoff ([`crate::backoff`]): up to
//! `reconnect_initial_ms`, the ceiling doubling per consecutive failure up to
//! `reconnect_max_ms`, jittered. After a normal session it waits `reconnect_initial_ms` once.
//!
//! # Identity, patients and time
//!
//! A device is identified by its Bluetooth address (`DeviceId::Bluetooth`, key
//! `A1B2C3D4E5F6`), which is also the `[[devices]] id` that binds it to a patient. Readings
//! of a shared device go to the patient bound to the BLE User ID they carry (see
//! [`super::Bindings`]). Clock handling, RACP and what is committed are described in
//! [`session`].
//!
//! # What "acknowledge after durable" means over BLE
//!
//! BlueZ confirms indications itself, before the gateway has committed anything, so a
//! cuff's or scale's measurement that arrived just before a crash can be lost with it. Glucose
//! meters do not have this gap: their records stay on the meter and the next session asks
//! for everything after the last committed sequence number. For the same reason a session
//! takes every value already received before it ends on the device's disconnection (a cuff
//! hangs up right after indicating).

pub mod central;
pub mod profiles;
pub mod session;

#[cfg(all(feature = "ble", target_os = "linux"))]
pub mod btleplug;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use central::{
    format_address, Address, Advertisement, BleError, Central, CentralEvent, GattCharacteristic,
    Link, Notification, Properties,
};
pub use profiles::{Profiles, ProfilesError};
pub use session::SessionEnd;

use super::{Bindings, SourceContext};
use crate::backoff::Backoff;
use crate::config::{BleSourceConfig, ConfigError};
use crate::error_chain::Chain;
use crate::ops::metrics::Metrics;
use crate::pipeline::Ingest;
use crate::profile::ble::parse_bluetooth_address;
use crate::profile::ble::parse_characteristic;
use crate::profile::ble::profile_file::BleProfile;

/// What `[sources.ble]` needs the profiles to check: device addresses (each listed once),
/// service UUIDs, and profile ids (against the built-in ones, when no `profiles_dir` may
/// add others). Every problem, each naming its key.
pub fn check_config(ble: &BleSourceConfig) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    let mut addresses = std::collections::HashSet::new();
    let builtin = ble
        .profiles_dir
        .is_none()
        .then(crate::profile::ble::profile_file::builtin);
    for (i, d) in ble.devices.iter().enumerate() {
        let key = |field: &str| format!("sources.ble.devices[{i}].{field}");
        if let Some(a) = &d.address {
            match parse_bluetooth_address(a) {
                None => problems.push(ConfigError::new(
                    key("address"),
                    "not a Bluetooth address: expected six hex pairs like A1:B2:C3:D4:E5:F6",
                )),
                Some(address) => {
                    if !addresses.insert(address) {
                        problems.push(ConfigError::new(key("address"), "listed twice"));
                    }
                }
            }
        }
        if let Some(svc) = &d.service {
            if parse_characteristic(svc).is_err() {
                problems.push(ConfigError::new(
                    key("service"),
                    "not a 16-bit service UUID: expected e.g. 1810, 0x1810 or the 128-bit form",
                ));
            }
        }
        if let (Some(p), Some(builtin)) = (&d.profile, &builtin) {
            if !builtin.iter().any(|b| &b.id == p) {
                let known: Vec<&str> = builtin.iter().map(|b| b.id.as_str()).collect();
                problems.push(ConfigError::new(
                    key("profile"),
                    format!("no profile {p:?}; built in: {}", known.join(", ")),
                ));
            }
        }
    }
    problems
}

/// Time limits and delays of the source. [`Timing::from_config`] gives the configured and
/// default ones; tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Longest connect, and longest service discovery.
    pub connect_timeout: Duration,
    /// First delay after a failure (and the delay after a normal session).
    pub reconnect_initial: Duration,
    /// Longest delay after failures.
    pub reconnect_max: Duration,
    /// How long after subscribing a device that sends stored measurements on subscription
    /// is given before its clock is set.
    pub clock_settle: Duration,
    /// Delay before retrying a commit the buffer refused (full).
    pub commit_retry: Duration,
}

/// Default [`Timing::clock_settle`].
pub const CLOCK_SETTLE: Duration = Duration::from_secs(2);
/// Default [`Timing::commit_retry`].
pub const COMMIT_RETRY: Duration = Duration::from_millis(250);
/// Longest wait for a disconnection to complete.
pub const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Capacity of the event and notification channels between an adapter and the source: a
/// glucose meter's burst of stored records fits several times over.
pub const EVENT_CHANNEL_CAPACITY: usize = 256;

impl Timing {
    /// The timing of a `[sources.ble]` table.
    pub fn from_config(c: &BleSourceConfig) -> Self {
        Self {
            connect_timeout: Duration::from_secs(c.connect_timeout_s),
            reconnect_initial: Duration::from_millis(c.reconnect_initial_ms),
            reconnect_max: Duration::from_millis(c.reconnect_max_ms),
            clock_settle: CLOCK_SETTLE,
            commit_retry: COMMIT_RETRY,
        }
    }

    /// The delays after consecutive failures: from `reconnect_initial` to `reconnect_max`.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.reconnect_initial, self.reconnect_max)
    }
}

/// A configured device, resolved.
#[derive(Debug, Clone)]
struct Target {
    address: Option<Address>,
    service: Option<u16>,
    profile: Option<Arc<BleProfile>>,
}

/// What every session shares.
pub struct SessionEnv {
    /// The buffer.
    pub ingest: Ingest,
    /// Device → patient bindings.
    pub bindings: Bindings,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Delays and limits.
    pub timing: Timing,
    /// `[sources.ble] set_device_clock`.
    pub set_device_clock: bool,
    /// Gateway shutdown.
    pub shutdown: CancellationToken,
}

/// The BLE source, ready to run over a [`Central`].
#[derive(Debug, Clone)]
pub struct BleSource {
    targets: Vec<Target>,
    profiles: Profiles,
    timing: Timing,
    set_device_clock: bool,
}

/// Per-address state in the source loop.
#[derive(Debug)]
struct DeviceState {
    /// Set while a session runs: cancelled when the adapter reports the device gone.
    session: Option<CancellationToken>,
    /// No new attempt before this.
    not_before: Option<Instant>,
    /// Delays after consecutive failed sessions.
    backoff: Backoff,
}

impl DeviceState {
    fn new(timing: &Timing) -> Self {
        Self {
            session: None,
            not_before: None,
            backoff: timing.backoff(),
        }
    }
}

impl BleSource {
    /// Resolves the configured devices against the profiles (built in, plus
    /// `profiles_dir`). Errors name the config key or the profile file.
    pub fn new(config: &BleSourceConfig) -> Result<Self, BleError> {
        let profiles = Profiles::load(config.profiles_dir.as_deref())
            .map_err(|e| BleError::Profiles(Arc::new(e)))?;
        let mut targets = Vec::new();
        for (i, d) in config.devices.iter().enumerate() {
            let key = format!("sources.ble.devices[{i}]");
            let profile = match &d.profile {
                Some(id) => Some(profiles.by_id(id).ok_or_else(|| {
                    BleError::Config(format!("{key}.profile: no device profile {id:?}"))
                })?),
                None => None,
            };
            let address = match &d.address {
                Some(a) => Some(parse_bluetooth_address(a).ok_or_else(|| {
                    BleError::Config(format!("{key}.address: not a Bluetooth address"))
                })?),
                None => None,
            };
            let service =
                match &d.service {
                    Some(s) => Some(parse_characteristic(s).map_err(|_| {
                        BleError::Config(format!("{key}.service: not a 16-bit UUID"))
                    })?),
                    None => None,
                };
            targets.push(Target {
                address,
                service,
                profile,
            });
        }
        Ok(Self {
            targets,
            profiles,
            timing: Timing::from_config(config),
            set_device_clock: config.set_device_clock,
        })
    }

    /// Replaces the timing (tests use short delays).
    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// The listed device an advertisement belongs to: by address first, then by service.
    fn target_for(&self, adv: &Advertisement) -> Option<&Target> {
        self.targets
            .iter()
            .find(|t| t.address == Some(adv.address))
            .or_else(|| {
                self.targets
                    .iter()
                    .find(|t| t.service.is_some_and(|s| adv.services.contains(&s)))
            })
    }

    /// Runs until `shutdown`: scans, connects to listed devices when they advertise, one
    /// session per device at a time, with backoff after failures.
    pub async fn run<C: Central>(self, central: C, ctx: SourceContext) {
        let SourceContext {
            ingest,
            bindings,
            metrics,
            shutdown,
            ..
        } = ctx;
        let central = Arc::new(central);
        let source = Arc::new(self);
        let env = Arc::new(SessionEnv {
            ingest,
            bindings,
            metrics,
            timing: source.timing,
            set_device_clock: source.set_device_clock,
            shutdown: shutdown.clone(),
        });
        let mut devices: HashMap<Address, DeviceState> = HashMap::new();
        let mut sessions: JoinSet<(Address, Result<SessionEnd, BleError>)> = JoinSet::new();
        let mut scan_backoff = source.timing.backoff();
        'scan: loop {
            let mut events = match central.scan().await {
                Ok(events) => {
                    tracing::info!(devices = source.targets.len(), "BLE source scanning");
                    events
                }
                Err(e) => {
                    let delay = scan_backoff.next_delay();
                    tracing::error!(error = %Chain(&e), retry_in_ms = delay.as_millis() as u64, "BLE scan cannot start");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue 'scan,
                        _ = shutdown.cancelled() => break 'scan,
                    }
                }
            };
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break 'scan,
                    event = events.recv() => match event {
                        None => {
                            let delay = scan_backoff.next_delay();
                            tracing::warn!(retry_in_ms = delay.as_millis() as u64, "BLE adapter event stream ended; scanning again");
                            tokio::select! {
                                _ = tokio::time::sleep(delay) => continue 'scan,
                                _ = shutdown.cancelled() => break 'scan,
                            }
                        }
                        Some(CentralEvent::Disconnected(address)) => {
                            scan_backoff.reset();
                            if let Some(token) = devices.get(&address).and_then(|d| d.session.as_ref()) {
                                token.cancel();
                            }
                        }
                        Some(CentralEvent::Advertisement(adv)) => {
                            scan_backoff.reset();
                            let Some(target) = source.target_for(&adv).cloned() else { continue };
                            let state = devices.entry(adv.address).or_insert_with(|| DeviceState::new(&source.timing));
                            if state.session.is_some() || state.not_before.is_some_and(|t| Instant::now() < t) {
                                continue;
                            }
                            let lost = CancellationToken::new();
                            state.session = Some(lost.clone());
                            let (central, source, env) = (central.clone(), source.clone(), env.clone());
                            sessions.spawn(async move {
                                let address = adv.address;
                                let result = connect_and_run(&*central, &source, &target, &adv, &env, &lost).await;
                                (address, result)
                            });
                        }
                    },
                    Some(done) = sessions.join_next() => {
                        let Ok((address, result)) = done else { continue };
                        let timing = source.timing;
                        let state = devices.entry(address).or_insert_with(|| DeviceState::new(&timing));
                        state.session = None;
                        let key = format_address(&address);
                        match result {
                            Ok(end) => {
                                state.backoff.reset();
                                state.not_before = Some(Instant::now() + timing.reconnect_initial);
                                tracing::info!(device = %key, ?end, "BLE session ended");
                            }
                            Err(e) => {
                                let delay = state.backoff.next_delay();
                                state.not_before = Some(Instant::now() + delay);
                                tracing::warn!(device = %key, error = %Chain(&e), failures = state.backoff.attempts(), retry_in_ms = delay.as_millis() as u64, "BLE session failed");
                            }
                        }
                    }
                }
            }
        }
        // Sessions see the same shutdown token; give them their commit in progress.
        while sessions.join_next().await.is_some() {}
    }
}

/// Connects (bounded by the connect timeout), runs a session, disconnects.
async fn connect_and_run<C: Central>(
    central: &C,
    source: &BleSource,
    target: &Target,
    adv: &Advertisement,
    env: &SessionEnv,
    lost: &CancellationToken,
) -> Result<SessionEnd, BleError> {
    let link = tokio::time::timeout(env.timing.connect_timeout, central.connect(adv.address))
        .await
        .map_err(|_| BleError::Timeout("connect"))??;
    let result = session::run(
        &link,
        adv.address,
        target.profile.clone(),
        &adv.services,
        &source.profiles,
        env,
        lost,
    )
    .await;
    // Also after the device went away: it releases the adapter's state for that link.
    let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, link.disconnect()).await;
    result
}

/// One device seen by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEntry {
    /// Its address.
    pub address: Address,
    /// Advertised name, printable characters only.
    pub name: Option<String>,
    /// Strongest signal seen, dBm.
    pub rssi: Option<i16>,
    /// Advertised services.
    pub services: Vec<u16>,
    /// The device profiles of the health services it advertises.
    pub profiles: Vec<String>,
}

/// Scans for `duration` and lists every device seen, health devices (those advertising a
/// service some profile names) first, then by address.
pub async fn scan<C: Central>(
    central: &C,
    profiles: &Profiles,
    duration: Duration,
) -> Result<Vec<ScanEntry>, BleError> {
    let mut events = central.scan().await?;
    let mut seen: BTreeMap<Address, ScanEntry> = BTreeMap::new();
    let deadline = tokio::time::sleep(duration);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            event = events.recv() => match event {
                Some(CentralEvent::Advertisement(adv)) => {
                    let e = seen.entry(adv.address).or_insert_with(|| ScanEntry {
                        address: adv.address,
                        name: None,
                        rssi: None,
                        services: Vec::new(),
                        profiles: Vec::new(),
                    });
                    if let Some(name) = adv.name {
                        let clean: String = name.chars().filter(|c| !c.is_control()).take(40).collect();
                        e.name = Some(clean);
                    }
                    e.rssi = match (e.rssi, adv.rssi) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                    for s in adv.services {
                        if !e.services.contains(&s) {
                            e.services.push(s);
                        }
                    }
                }
                Some(CentralEvent::Disconnected(_)) => {}
                None => break,
            }
        }
    }
    let mut out: Vec<ScanEntry> = seen
        .into_values()
        .map(|mut e| {
            e.services.sort_unstable();
            e.profiles = profiles
                .iter()
                .filter(|p| p.service_uuid().is_some_and(|s| e.services.contains(&s)))
                .map(|p| p.id.clone())
                .collect();
            e
        })
        .collect();
    out.sort_by_key(|e| (e.profiles.is_empty(), e.address));
    Ok(out)
}

/// The BLE source over the host's adapter (btleplug, BlueZ), or [`BleError::NotBuilt`] when
/// this binary was built without Bluetooth support.
pub fn run_on_host_adapter(
    source: BleSource,
    ctx: SourceContext,
) -> Result<impl std::future::Future<Output = ()> + Send, BleError> {
    #[cfg(all(feature = "ble", target_os = "linux"))]
    {
        Ok(source.run(btleplug::BtleplugCentral::new(), ctx))
    }
    #[cfg(not(all(feature = "ble", target_os = "linux")))]
    {
        let _ = (source, ctx);
        Err::<std::future::Ready<()>, _>(BleError::NotBuilt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_grow_from_the_configured_initial_to_the_maximum() {
        let t = Timing {
            connect_timeout: Duration::from_secs(20),
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(300),
            clock_settle: CLOCK_SETTLE,
            commit_retry: COMMIT_RETRY,
        };
        let mut backoff = t.backoff();
        let mut ceilings = Vec::new();
        for _ in 0..11 {
            ceilings.push(backoff.ceiling().as_secs());
            let _ = backoff.next_delay();
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    }

    fn adv(address: Address, services: &[u16]) -> Advertisement {
        Advertisement {
            address,
            name: None,
            services: services.to_vec(),
            rssi: None,
        }
    }

    #[test]
    fn devices_are_matched_by_address_before_service() {
        let config = crate::config::Config::from_toml(
            r#"
[sources.ble]
[[sources.ble.devices]]
service = "1810"
[[sources.ble.devices]]
address = "A1:B2:C3:D4:E5:F6"
profile = "ble-weight-scale"
"#,
        )
        .unwrap();
        let source = BleSource::new(config.sources.ble.as_ref().unwrap()).unwrap();
        let listed = [0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6];
        let by_address = source.target_for(&adv(listed, &[0x1810])).unwrap();
        assert_eq!(by_address.profile.as_ref().unwrap().id, "ble-weight-scale");
        let by_service = source.target_for(&adv([1; 6], &[0x180A, 0x1810])).unwrap();
        assert_eq!(by_service.service, Some(0x1810));
        assert!(source.target_for(&adv([2; 6], &[0x180D])).is_none());
    }
}
