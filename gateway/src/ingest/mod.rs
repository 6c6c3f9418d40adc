//! Sources: each owns one transport and turns what arrives into readings for the buffer.
//!
//! Architecture invariant: sources never import each other, the buffer or the uplink. They
//! hold an [`Ingest`](crate::pipeline::Ingest) handle and acknowledge upstream of themselves
//! only after its `commit` resolved `Ok`.
//!
//! # Adding a source
//! A source is one module here with a config table under `[sources]`, and one arm in
//! [`prepare`]: it gets a [`SourceContext`] (its buffer handle, the patient bindings, metrics,
//! the audit log, the shutdown signal) and returns the future that runs it. Everything that
//! can fail at start (a URL, a profile, TLS files) fails in `prepare`, before any source runs.
//! What `check-config` can find out about it beyond the config's own checks (a profile id, a
//! device address) goes in [`check_config`].

pub mod ble;
pub mod hl7;
pub mod mqtt;
pub mod serial;
pub mod sim;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{ClinicalConfig, ConfigError, DefaultPatient, DeviceBinding, SourcesConfig};
use crate::model::{hex_upper, PatientRef};
use crate::ops::audit::Audit;
use crate::ops::metrics::Metrics;
use crate::pipeline::Ingest;
use crate::profile::ble::parse_bluetooth_address;

/// What every source gets from the wiring.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// The buffer, under this source's name (readings are counted per source by it).
    pub ingest: Ingest,
    /// Device → patient bindings from `[[devices]]`.
    pub bindings: Bindings,
    /// Counters and state for `/metrics` and the status page.
    pub metrics: Arc<Metrics>,
    /// The audit log (refused connections, TLS failures, lost input).
    pub audit: Audit,
    /// Cancelled when the gateway stops: stop acknowledging and return.
    pub shutdown: CancellationToken,
}

impl SourceContext {
    /// The same context for the source called `name`.
    pub fn named(&self, name: impl Into<Arc<str>>) -> Self {
        Self {
            ingest: self.ingest.for_source(name),
            ..self.clone()
        }
    }
}

/// Why a configured source cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// `[sources.mqtt]`.
    #[error(transparent)]
    Mqtt(#[from] mqtt::MqttError),
    /// `[sources.ble]`.
    #[error("sources.ble")]
    Ble(#[source] ble::BleError),
    /// `[[sources.serial]]`.
    #[error(transparent)]
    Serial(#[from] serial::SerialError),
    /// `[sources.hl7]`.
    #[error(transparent)]
    Hl7(#[from] hl7::Hl7Error),
}

/// A source ready to run: its name and the future that runs it until shutdown.
pub struct Prepared {
    /// The source's name (`sim`, `mqtt`, `ble`, `serial:<port>`).
    pub name: String,
    /// Runs the source.
    pub task: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("name", &self.name)
            .finish()
    }
}

fn prepared(name: String, task: impl Future<Output = ()> + Send + 'static) -> Prepared {
    Prepared {
        name,
        task: Box::pin(task),
    }
}

/// Every configured source, prepared with its own view of `ctx`: one arm per kind of
/// source. `gateway_id` names the MQTT client when the config does not; `profiles` are the
/// vendor JSON profiles the MQTT source decodes with (replaced by a pack reload).
pub fn prepare(
    config: &SourcesConfig,
    gateway_id: &str,
    ctx: &SourceContext,
    profiles: &crate::profile::json::SharedProfiles,
) -> Result<Vec<Prepared>, SourceError> {
    let mut sources = Vec::new();
    if let Some(sim) = &config.sim {
        sources.push(prepared(
            "sim".into(),
            sim::run(sim.clone(), ctx.named("sim")),
        ));
    }
    if let Some(mqtt) = &config.mqtt {
        // Off by default where bindings are configured (see `trust_payload_patient`).
        let trust = mqtt.trust_payload_patient.unwrap_or(!ctx.bindings.any());
        let source = mqtt::MqttSource::new(mqtt, gateway_id, profiles.clone())?
            .trusting_payload_patient(trust);
        sources.push(prepared("mqtt".into(), source.run(ctx.named("mqtt"))));
    }
    if let Some(config) = &config.ble {
        let source = ble::BleSource::new(config).map_err(SourceError::Ble)?;
        sources.push(prepared(
            "ble".into(),
            ble::run_on_host_adapter(source, ctx.named("ble")).map_err(SourceError::Ble)?,
        ));
    }
    if let Some(config) = &config.hl7 {
        let source = hl7::Hl7Source::new(config)?;
        sources.push(prepared("hl7".into(), source.run(ctx.named("hl7"))));
    }
    for port in &config.serial {
        let source = serial::SerialSource::new(port)?;
        let name = source.origin();
        sources.push(prepared(name.clone(), source.run(ctx.named(name))));
    }
    Ok(sources)
}

/// What the configuration of the sources and of the patient bindings cannot check by itself:
/// profile ids, Bluetooth addresses and services, line profiles, and which `[[devices]]` ids
/// name the same device. Every problem, each naming its key. Run after
/// [`crate::config::Config::check_lengths`] passed.
pub fn check_config(sources: &SourcesConfig, devices: &[DeviceBinding]) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    if let Some(ble) = &sources.ble {
        problems.extend(ble::check_config(ble));
    }
    for (i, port) in sources.serial.iter().enumerate() {
        problems.extend(serial::check_config(i, port));
    }
    problems.extend(Bindings::check_config(devices));
    problems
}

/// The admission policy (`profile::admission`) of `[clinical]`, or every problem with its
/// limits (a metric the catalog does not know, a unit that does not fit it), each naming its
/// key. `crate::validate_config` runs it with the sources' checks.
pub fn admission_policy(
    clinical: &ClinicalConfig,
) -> Result<crate::profile::admission::Policy, Vec<ConfigError>> {
    use crate::config::PlausibilityAction;
    use crate::profile::plausibility::{Action, Limit, Plausibility};
    use crate::profile::{catalog, units};
    let action = |a: PlausibilityAction| match a {
        PlausibilityAction::Refuse => Action::Refuse,
        PlausibilityAction::Flag => Action::Flag,
        PlausibilityAction::Off => Action::Off,
    };
    let mut problems = Vec::new();
    let mut limits = Vec::new();
    for (i, l) in clinical.limits.iter().enumerate() {
        let Some(metric) = catalog::lookup(&l.metric) else {
            problems.push(ConfigError::new(
                format!("clinical.limits[{i}].metric"),
                "is not in the metric catalog (use a short name, MDC code, MDC reference id or LOINC code)",
            ));
            continue;
        };
        let unit = l.unit.clone().unwrap_or_else(|| metric.unit.to_owned());
        if let Err(e) = units::check_unit(&metric, &unit) {
            problems.push(ConfigError::new(
                format!("clinical.limits[{i}].unit"),
                e.to_string(),
            ));
            continue;
        }
        limits.push(Limit {
            mdc: metric.mdc,
            unit,
            min: l.min,
            max: l.max,
            action: l.action.map(action),
        });
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(crate::profile::admission::Policy {
        plausibility: Plausibility::new(action(clinical.plausibility), limits),
        future_tolerance: time::Duration::seconds(
            i64::try_from(clinical.future_tolerance_s).unwrap_or(i64::MAX),
        ),
        max_age: (clinical.max_age_days > 0).then(|| {
            time::Duration::days(i64::try_from(clinical.max_age_days).unwrap_or(i64::MAX / 86_400))
        }),
    })
}

/// Device → patient bindings from config (`[[devices]]`), shared by all sources.
///
/// # Shared devices
///
/// A device bound once without `user` belongs to one patient: every reading from it goes to
/// that patient, whatever user index it reports (the behaviour before shared devices).
///
/// A device whose bindings name a `user` is **shared** (a family scale, a cuff with user
/// buttons): a reading goes to the patient bound to the user index the device reported
/// ([`crate::model::Reading::device_user`], the BLE User ID). A reading that reports a user
/// with no binding, or no user at all ("unknown user" 0xFF, or a device that omits the
/// field), is **not assigned to anyone**: the buffer holds it unbound (never delivered) until
/// `vitalbridge devices bind` releases it, so it is neither lost nor given to the wrong
/// patient. Config validation refuses mixing bound-with-user and bound-without-user on one
/// device, so a shared device never falls back to another binding.
///
/// # The home hub's default patient
///
/// With `[default_patient]` (a hub with one patient), a device not named in `[[devices]]`
/// is that patient's: its readings that report no user index, or one of
/// `default_patient.users`, go to the default patient; a reading that reports another user
/// (the second user of a two-user cuff) is held unbound rather than guessed.
///
/// Keys are `DeviceId::key()` strings; a Bluetooth address written with colons in config
/// (`A1:B2:C3:D4:E5:F6`) is normalised to the key form (`A1B2C3D4E5F6`).
#[derive(Debug, Clone, Default)]
pub struct Bindings {
    /// Device key → its binding.
    map: Arc<HashMap<String, Binding>>,
    /// The home hub's patient of every device not in `map`, and the user indexes it takes.
    default: Option<Arc<(PatientRef, Vec<u8>)>>,
}

/// How one device is bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// One patient for every reading of the device.
    Patient(PatientRef),
    /// A shared device: one patient per device user index.
    Shared(HashMap<u8, PatientRef>),
}

/// The binding key of a config id: Bluetooth addresses normalised to upper-case hex.
pub fn binding_key(id: &str) -> String {
    match parse_bluetooth_address(id) {
        Some(address) => hex_upper(&address),
        None => id.to_owned(),
    }
}

impl Bindings {
    /// The bindings of the config's `[[devices]]` tables.
    pub fn from_config(devices: &[DeviceBinding]) -> Self {
        Self::new(devices.iter().filter_map(|d| {
            let patient = match (&d.patient_system, &d.patient_id, &d.patient_reference) {
                (Some(system), Some(value), _) => PatientRef::identifier(system, value),
                (_, _, Some(reference)) => PatientRef::Reference(reference.clone()),
                _ => return None,
            };
            Some((d.id.clone(), d.user, patient))
        }))
    }

    /// Bindings that name the same device (by [`binding_key`]) twice for the same user, or
    /// both with and without a user. Linear in the number of bindings.
    pub fn check_config(devices: &[DeviceBinding]) -> Vec<ConfigError> {
        /// What the bindings before this one said about a device.
        #[derive(Default)]
        struct Seen {
            users: HashSet<Option<u8>>,
            with_user: bool,
            without_user: bool,
        }
        let mut problems = Vec::new();
        let mut seen: HashMap<String, Seen> = HashMap::with_capacity(devices.len());
        for (i, d) in devices.iter().enumerate() {
            let device = seen.entry(binding_key(&d.id)).or_default();
            if device.users.contains(&d.user) {
                problems.push(ConfigError::new(
                    format!("devices[{i}].id"),
                    match d.user {
                        Some(u) => format!("device {:?} user {u} is bound twice", d.id),
                        None => format!("device {:?} is bound twice", d.id),
                    },
                ));
            } else if (d.user.is_some() && device.without_user)
                || (d.user.is_none() && device.with_user)
            {
                problems.push(ConfigError::new(
                    format!("devices[{i}].user"),
                    format!(
                        "device {:?} has bindings with and without `user`: on a shared device \
                         every binding names its user",
                        d.id
                    ),
                ));
            }
            device.users.insert(d.user);
            device.with_user |= d.user.is_some();
            device.without_user |= d.user.is_none();
        }
        problems
    }

    /// Bindings from `(device id, user index, patient)` entries. Ids are normalised with
    /// [`binding_key`]. Entries with a user make the device shared (see the type doc).
    pub fn new(entries: impl IntoIterator<Item = (String, Option<u8>, PatientRef)>) -> Self {
        let mut map: HashMap<String, Binding> = HashMap::new();
        for (id, user, patient) in entries {
            let key = binding_key(&id);
            match user {
                None => {
                    map.insert(key, Binding::Patient(patient));
                }
                Some(user) => {
                    let entry = map
                        .entry(key)
                        .or_insert_with(|| Binding::Shared(HashMap::new()));
                    match entry {
                        Binding::Shared(users) => {
                            users.insert(user, patient);
                        }
                        // Refused by config validation; keep the single patient rather than
                        // guess.
                        Binding::Patient(_) => {}
                    }
                }
            }
        }
        Self {
            map: Arc::new(map),
            default: None,
        }
    }

    /// The same bindings, with `[default_patient]` for the devices they do not name.
    pub fn with_default(self, default: Option<&DefaultPatient>) -> Self {
        let default = default.and_then(|d| {
            let patient = match (&d.system, &d.id, &d.reference) {
                (Some(system), Some(value), _) => PatientRef::identifier(system, value),
                (_, _, Some(reference)) => PatientRef::Reference(reference.clone()),
                _ => return None,
            };
            Some(Arc::new((patient, d.users.clone())))
        });
        Self { default, ..self }
    }

    /// Whether any patient binding is configured (`[[devices]]` or `[default_patient]`).
    pub fn any(&self) -> bool {
        !self.map.is_empty() || self.default.is_some()
    }

    /// The default patient, for a device no binding names and a reading reporting `user`.
    fn default_for(&self, user: Option<u8>) -> Option<PatientRef> {
        let (patient, users) = &**self.default.as_ref()?;
        match user {
            None => Some(patient.clone()),
            Some(u) if users.contains(&u) => Some(patient.clone()),
            Some(_) => None,
        }
    }

    /// The patient of a device bound to one patient; `None` for an unbound or a shared
    /// device (a source that knows the device user calls [`Self::patient_for`]).
    pub fn patient(&self, device_key: &str) -> Option<PatientRef> {
        match self.map.get(device_key) {
            Some(Binding::Patient(p)) => Some(p.clone()),
            Some(Binding::Shared(_)) => None,
            None => self.default_for(None),
        }
    }

    /// The patient a reading from `device_key` reporting device user `user` belongs to (see
    /// the type doc for shared devices).
    pub fn patient_for(&self, device_key: &str, user: Option<u8>) -> Option<PatientRef> {
        match self.map.get(device_key) {
            Some(Binding::Patient(p)) => Some(p.clone()),
            Some(Binding::Shared(users)) => users.get(&user?).cloned(),
            None => self.default_for(user),
        }
    }

    /// Whether the device's bindings name users.
    pub fn is_shared(&self, device_key: &str) -> bool {
        matches!(self.map.get(device_key), Some(Binding::Shared(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &str) -> PatientRef {
        PatientRef::identifier("urn:oid:1.2.3", v)
    }

    #[test]
    fn a_device_bound_without_user_gives_every_reading_to_its_patient() {
        let b = Bindings::new([("SIM-BP-0001".to_owned(), None, p("alice"))]);
        assert_eq!(b.patient("SIM-BP-0001"), Some(p("alice")));
        for user in [None, Some(1), Some(7)] {
            assert_eq!(b.patient_for("SIM-BP-0001", user), Some(p("alice")));
        }
        assert_eq!(b.patient("SIM-BP-0002"), None);
        assert!(!b.is_shared("SIM-BP-0001"));
    }

    #[test]
    fn a_shared_scale_gives_each_user_their_own_patient_and_unbound_users_nobody() {
        let b = Bindings::new([
            ("a1:b2:c3:d4:e5:f6".to_owned(), Some(1), p("alice")),
            ("A1B2C3D4E5F6".to_owned(), Some(2), p("bob")),
        ]);
        let key = "A1B2C3D4E5F6";
        assert!(b.is_shared(key));
        assert_eq!(b.patient_for(key, Some(1)), Some(p("alice")));
        assert_eq!(b.patient_for(key, Some(2)), Some(p("bob")));
        assert_eq!(b.patient_for(key, Some(3)), None);
        assert_eq!(b.patient_for(key, None), None);
        // Without a user index there is no safe answer for a shared device.
        assert_eq!(b.patient(key), None);
    }

    fn binding(id: String, user: Option<u8>) -> DeviceBinding {
        DeviceBinding {
            id,
            patient_system: None,
            patient_id: None,
            patient_reference: Some("Patient/1".into()),
            user,
        }
    }

    #[test]
    fn bindings_of_one_device_twice_or_with_and_without_user_are_refused() {
        let problems = Bindings::check_config(&[
            binding("A1B2C3D4E5F6".into(), Some(1)),
            binding("a1:b2:c3:d4:e5:f6".into(), Some(2)),
            binding("A1-B2-C3-D4-E5-F6".into(), Some(1)),
            binding("A1:B2:C3:D4:E5:F6".into(), None),
            binding("SCALE-7".into(), None),
            binding("SCALE-7".into(), None),
            binding("scale-7".into(), None),
        ]);
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "devices[2].id: device \"A1-B2-C3-D4-E5-F6\" user 1 is bound twice",
                "devices[3].user: device \"A1:B2:C3:D4:E5:F6\" has bindings with and without `user`: on a shared device every binding names its user",
                "devices[5].id: device \"SCALE-7\" is bound twice",
            ]
        );
    }

    /// The check compared every binding with every earlier one: 40 000 bindings took 33 s.
    /// Keyed by device it takes milliseconds; the bound is generous so a loaded machine
    /// does not fail it, and far below what the quadratic check needs.
    #[test]
    fn forty_thousand_bindings_are_checked_quickly() {
        let mut devices: Vec<DeviceBinding> = (0..40_000u32)
            .map(|i| match i % 2 {
                0 => binding(
                    format!(
                        "A1:B2:{:02X}:{:02X}:{:02X}:00",
                        i >> 16,
                        (i >> 8) & 0xff,
                        i & 0xff
                    ),
                    None,
                ),
                _ => binding(format!("SERIAL-{i}"), Some((i % 200) as u8)),
            })
            .collect();
        devices.push(binding("a1b2000000 00".replace(' ', ""), None));
        let started = std::time::Instant::now();
        let problems = Bindings::check_config(&devices);
        let took = started.elapsed();
        assert_eq!(
            problems,
            [ConfigError::new(
                "devices[40000].id",
                "device \"a1b200000000\" is bound twice"
            )]
        );
        // A complexity guard, not a speed target: the quadratic check took 33 s natively,
        // the keyed one milliseconds natively and about 2 s under qemu on a loaded machine.
        assert!(took < std::time::Duration::from_secs(20), "took {took:?}");
    }

    #[test]
    fn a_home_hub_default_patient_takes_unnamed_devices_but_not_other_users() {
        let default = DefaultPatient {
            system: Some("urn:oid:1.2.3".into()),
            id: Some("home".into()),
            reference: None,
            users: vec![1],
        };
        let b = Bindings::new([
            ("SIM-BP-0001".to_owned(), None, p("alice")),
            ("SCALE-7".to_owned(), Some(2), p("bob")),
        ])
        .with_default(Some(&default));
        assert!(b.any());
        // A device config names keeps its binding.
        assert_eq!(b.patient_for("SIM-BP-0001", Some(3)), Some(p("alice")));
        // A shared device never falls back to the default.
        assert_eq!(b.patient_for("SCALE-7", Some(1)), None);
        assert_eq!(b.patient_for("SCALE-7", None), None);
        // Any other device: the default patient, for no user or a listed one only.
        assert_eq!(b.patient_for("CUFF-9", None), Some(p("home")));
        assert_eq!(b.patient("CUFF-9"), Some(p("home")));
        assert_eq!(b.patient_for("CUFF-9", Some(1)), Some(p("home")));
        assert_eq!(b.patient_for("CUFF-9", Some(2)), None);
        assert!(!Bindings::default().any());
    }

    #[test]
    fn binding_keys_normalise_bluetooth_addresses_only() {
        assert_eq!(binding_key("a1:b2:c3:d4:e5:f6"), "A1B2C3D4E5F6");
        assert_eq!(binding_key("A1-B2-C3-D4-E5-F6"), "A1B2C3D4E5F6");
        assert_eq!(binding_key("SIM-BP-0001"), "SIM-BP-0001");
    }
}
