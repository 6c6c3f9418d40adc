//! Device-profile files for the standard Bluetooth health services,
//! `device-profiles/ble-*.toml`: which service, which characteristics to subscribe to and
//! with which decoder, which metrics (MDC + LOINC) and units come out, and whether the
//! Current Time Service and the Record Access Control Point apply.
//!
//! The schema is written down in `device-profiles/README.md`; [`BleProfile`] is its typed
//! form (unknown keys are refused) and [`BleProfile::validate`] checks it against the
//! decoders and the metric catalog:
//!
//! - `id` is `ble-` followed by lower-case letters, digits and dashes;
//! - `service` and every characteristic `uuid` parse as Bluetooth UUIDs;
//! - each characteristic's `decoder` exists and decodes that UUID;
//! - at least one characteristic is required, and UUIDs are not repeated;
//! - every metric names a characteristic of the profile whose decoder produces that exact
//!   metric (MDC code and LOINC code), and lists at least one unit;
//! - every string is within its limit ([`crate::limits`]): names and the specification 128
//!   bytes, units 32, the id and every other code 64.

use serde::Deserialize;

use super::{parse_characteristic, Decoder};

/// Whether an optional part of a service applies to devices of this profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Applies {
    /// The service specification makes it mandatory.
    Required,
    /// Devices may have it; use it when present.
    Optional,
    /// Does not apply (e.g. no time stamps to correct).
    None,
}

/// How a characteristic delivers its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Indications (acknowledged by the gateway's BLE stack).
    Indicate,
    /// Notifications (unacknowledged).
    Notify,
}

/// One characteristic to subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CharacteristicEntry {
    /// 16-bit UUID (`2A35`, `0x2A35` or the 128-bit form).
    pub uuid: String,
    /// Name from the GATT Specification Supplement, for people.
    pub name: String,
    /// Decoder name (see [`Decoder::name`]).
    pub decoder: String,
    /// Indicate or notify.
    pub delivery: Delivery,
    /// Whether the service specification makes the characteristic mandatory.
    pub required: bool,
    /// Whether the BLE source subscribes to it and stores what it sends (default `true`).
    /// `false` for transient values such as Intermediate Cuff Pressure, which are listed so
    /// that `vitalbridge decode ble` knows them but would otherwise flood the buffer with
    /// in-progress pressures.
    #[serde(default = "default_subscribe")]
    pub subscribe: bool,
}

fn default_subscribe() -> bool {
    true
}

/// A metric the profile produces.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricEntry {
    /// MDC code, 32-bit form (partition × 65536 + term).
    pub mdc: u32,
    /// MDC reference id, for people (checked against the catalog).
    pub mdc_ref: String,
    /// LOINC code, if the metric has one.
    #[serde(default)]
    pub loinc: Option<String>,
    /// UCUM units the devices may report it in.
    pub units: Vec<String>,
    /// UUID of the characteristic that carries it.
    pub characteristic: String,
}

/// A `device-profiles/ble-*.toml` file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BleProfile {
    /// Profile id, equal to the file name without `.toml` (e.g. `ble-blood-pressure`).
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// Service specification and version the profile follows (e.g. `BLS 1.1`).
    pub specification: String,
    /// GATT service UUID (`1810`).
    pub service: String,
    /// Whether the gateway reads the device's Current Time (0x2A2B) to work out its clock
    /// offset.
    pub current_time: Applies,
    /// Whether stored records are fetched through the Record Access Control Point (0x2A52).
    pub racp: Applies,
    /// Characteristics to subscribe to.
    pub characteristics: Vec<CharacteristicEntry>,
    /// Metrics the profile produces.
    pub metrics: Vec<MetricEntry>,
}

/// The standard-service profiles shipped in `device-profiles/`, compiled into the binary so a
/// gateway needs no extra files: `(file name, TOML text)`.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "ble-blood-pressure.toml",
        include_str!("../../../../device-profiles/ble-blood-pressure.toml"),
    ),
    (
        "ble-body-composition.toml",
        include_str!("../../../../device-profiles/ble-body-composition.toml"),
    ),
    (
        "ble-glucose.toml",
        include_str!("../../../../device-profiles/ble-glucose.toml"),
    ),
    (
        "ble-heart-rate.toml",
        include_str!("../../../../device-profiles/ble-heart-rate.toml"),
    ),
    (
        "ble-pulse-oximeter.toml",
        include_str!("../../../../device-profiles/ble-pulse-oximeter.toml"),
    ),
    (
        "ble-thermometer.toml",
        include_str!("../../../../device-profiles/ble-thermometer.toml"),
    ),
    (
        "ble-weight-scale.toml",
        include_str!("../../../../device-profiles/ble-weight-scale.toml"),
    ),
];

/// The built-in profiles, parsed and validated (a test checks every one of them does).
pub fn builtin() -> Vec<BleProfile> {
    BUILTIN
        .iter()
        .filter_map(|(_, text)| BleProfile::from_toml(text).ok())
        .collect()
}

/// Why a profile file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Not valid TOML for the schema (syntax, missing or unknown key, wrong type).
    #[error("profile file does not match the schema")]
    Toml(#[from] toml::de::Error),
    /// Valid TOML, but inconsistent.
    #[error("invalid profile `{profile}`: {reason}")]
    Invalid {
        /// The profile id.
        profile: String,
        /// What is wrong.
        reason: String,
    },
}

impl BleProfile {
    /// Parses and validates a profile file's text.
    pub fn from_toml(text: &str) -> Result<Self, ProfileError> {
        let profile: BleProfile = toml::from_str(text)?;
        profile.validate()?;
        Ok(profile)
    }

    /// The service UUID as a 16-bit value.
    pub fn service_uuid(&self) -> Option<u16> {
        parse_characteristic(&self.service).ok()
    }

    /// The characteristics the BLE source subscribes to, with their decoders.
    pub fn subscriptions(&self) -> Vec<(u16, Decoder)> {
        self.characteristics
            .iter()
            .filter(|c| c.subscribe)
            .filter_map(|c| {
                let uuid = parse_characteristic(&c.uuid).ok()?;
                Some((uuid, Decoder::from_name(&c.decoder)?))
            })
            .collect()
    }

    /// Whether the source reads (and, where it may, sets) the device's Current Time.
    pub fn uses_current_time(&self) -> bool {
        self.current_time != Applies::None
    }

    /// Whether the source fetches stored records through the Record Access Control Point.
    pub fn uses_racp(&self) -> bool {
        self.racp != Applies::None
    }

    /// The characteristics with their parsed UUIDs and decoders (valid profiles only have
    /// resolvable entries).
    pub fn decoders(&self) -> Vec<(u16, Decoder)> {
        self.characteristics
            .iter()
            .filter_map(|c| {
                let uuid = parse_characteristic(&c.uuid).ok()?;
                Some((uuid, Decoder::from_name(&c.decoder)?))
            })
            .collect()
    }

    /// Checks the profile against the decoders and the catalog (see the module doc).
    pub fn validate(&self) -> Result<(), ProfileError> {
        use crate::limits::{MAX_CODE_LEN, MAX_NAME_LEN, MAX_UNIT_LEN};
        let mut strings: Vec<(String, &str, usize)> = vec![
            ("id".into(), &self.id, MAX_CODE_LEN),
            ("name".into(), &self.name, MAX_NAME_LEN),
            ("specification".into(), &self.specification, MAX_NAME_LEN),
            ("service".into(), &self.service, MAX_CODE_LEN),
        ];
        for (i, c) in self.characteristics.iter().enumerate() {
            strings.push((format!("characteristics[{i}].uuid"), &c.uuid, MAX_CODE_LEN));
            strings.push((format!("characteristics[{i}].name"), &c.name, MAX_NAME_LEN));
            strings.push((
                format!("characteristics[{i}].decoder"),
                &c.decoder,
                MAX_CODE_LEN,
            ));
        }
        for (i, m) in self.metrics.iter().enumerate() {
            strings.push((format!("metrics[{i}].mdc_ref"), &m.mdc_ref, MAX_CODE_LEN));
            if let Some(loinc) = &m.loinc {
                strings.push((format!("metrics[{i}].loinc"), loinc, MAX_CODE_LEN));
            }
            for (j, u) in m.units.iter().enumerate() {
                strings.push((format!("metrics[{i}].units[{j}]"), u, MAX_UNIT_LEN));
            }
            strings.push((
                format!("metrics[{i}].characteristic"),
                &m.characteristic,
                MAX_CODE_LEN,
            ));
        }
        if let Some((key, _, max)) = strings.iter().find(|(_, text, max)| text.len() > *max) {
            // The id itself may be the long string: name the profile by nothing else.
            return Err(ProfileError::Invalid {
                profile: if key == "id" {
                    "(id not shown)".to_owned()
                } else {
                    self.id.clone()
                },
                reason: format!("`{key}` is longer than {max} bytes"),
            });
        }
        let invalid = |reason: String| ProfileError::Invalid {
            profile: self.id.clone(),
            reason,
        };
        let id_ok = self.id.strip_prefix("ble-").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
        if !id_ok {
            return Err(invalid(
                "id must be `ble-` + lower-case letters, digits, dashes".into(),
            ));
        }
        if self.service_uuid().is_none() {
            return Err(invalid(format!("service `{}` is not a UUID", self.service)));
        }
        if self.characteristics.is_empty() {
            return Err(invalid("no characteristics".into()));
        }
        let mut seen = Vec::new();
        for c in &self.characteristics {
            let uuid = parse_characteristic(&c.uuid)
                .map_err(|_| invalid(format!("characteristic `{}` is not a UUID", c.uuid)))?;
            if seen.contains(&uuid) {
                return Err(invalid(format!("characteristic {uuid:04X} listed twice")));
            }
            seen.push(uuid);
            let decoder = Decoder::from_name(&c.decoder)
                .ok_or_else(|| invalid(format!("unknown decoder `{}`", c.decoder)))?;
            if decoder.uuid() != uuid {
                return Err(invalid(format!(
                    "decoder `{}` decodes {:04X}, not {uuid:04X}",
                    c.decoder,
                    decoder.uuid()
                )));
            }
        }
        for m in &self.metrics {
            let uuid = parse_characteristic(&m.characteristic).map_err(|_| {
                invalid(format!(
                    "metric {}: `{}` is not a UUID",
                    m.mdc, m.characteristic
                ))
            })?;
            let decoder = self
                .decoders()
                .into_iter()
                .find(|(u, _)| *u == uuid)
                .map(|(_, d)| d)
                .ok_or_else(|| {
                    invalid(format!(
                        "metric {}: characteristic {uuid:04X} not in profile",
                        m.mdc
                    ))
                })?;
            let produced = decoder
                .metrics()
                .into_iter()
                .any(|p| p.mdc == m.mdc && p.mdc_ref == m.mdc_ref && p.loinc == m.loinc.as_deref());
            if !produced {
                return Err(invalid(format!(
                    "metric {} {} (LOINC {:?}) is not produced by decoder `{}`",
                    m.mdc,
                    m.mdc_ref,
                    m.loinc,
                    decoder.name()
                )));
            }
            if m.units.is_empty() || m.units.iter().any(|u| u.trim().is_empty()) {
                return Err(invalid(format!(
                    "metric {}: units must be non-empty",
                    m.mdc
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn profiles_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../device-profiles")
    }

    #[test]
    fn every_ble_profile_file_loads_and_validates() {
        let mut loaded = Vec::new();
        for entry in std::fs::read_dir(profiles_dir()).expect("device-profiles/ exists") {
            let path = entry.expect("readable dir entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if !(name.starts_with("ble-") && name.ends_with(".toml")) {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable file");
            let profile =
                BleProfile::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(format!("{}.toml", profile.id), name, "id matches file name");
            loaded.push(profile.id);
        }
        loaded.sort();
        assert_eq!(
            loaded,
            [
                "ble-blood-pressure",
                "ble-body-composition",
                "ble-glucose",
                "ble-heart-rate",
                "ble-pulse-oximeter",
                "ble-thermometer",
                "ble-weight-scale",
            ]
        );
    }

    #[test]
    fn the_builtin_profiles_are_exactly_the_files() {
        let mut files: Vec<(String, String)> = std::fs::read_dir(profiles_dir())
            .expect("device-profiles/ exists")
            .filter_map(|e| {
                let path = e.ok()?.path();
                let name = path.file_name()?.to_str()?.to_owned();
                (name.starts_with("ble-") && name.ends_with(".toml"))
                    .then(|| Some((name, std::fs::read_to_string(&path).ok()?)))?
            })
            .collect();
        files.sort();
        let builtin: Vec<(String, String)> = BUILTIN
            .iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect();
        assert_eq!(builtin, files, "add new ble-*.toml files to BUILTIN");
        assert_eq!(
            super::builtin().len(),
            BUILTIN.len(),
            "every builtin profile is valid"
        );
    }

    #[test]
    fn transient_characteristics_are_listed_but_not_subscribed() {
        let bp = builtin()
            .into_iter()
            .find(|p| p.id == "ble-blood-pressure")
            .unwrap();
        let subscribed: Vec<u16> = bp.subscriptions().into_iter().map(|(u, _)| u).collect();
        assert_eq!(subscribed, [0x2A35]);
        assert_eq!(bp.decoders().len(), 2);
    }

    #[test]
    fn every_decoder_is_used_by_some_profile() {
        let mut used = Vec::new();
        for entry in std::fs::read_dir(profiles_dir()).expect("device-profiles/ exists") {
            let path = entry.expect("dir entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.starts_with("ble-") && name.ends_with(".toml") {
                let text = std::fs::read_to_string(&path).expect("readable");
                let profile = BleProfile::from_toml(&text).expect("valid");
                used.extend(profile.decoders().into_iter().map(|(_, d)| d));
            }
        }
        for d in Decoder::ALL {
            assert!(used.contains(&d), "{} unused", d.name());
        }
    }

    const MINIMAL: &str = r#"
id = "ble-test"
name = "Test"
specification = "HRS 1.0"
service = "180D"
current_time = "none"
racp = "none"

[[characteristics]]
uuid = "2A37"
name = "Heart Rate Measurement"
decoder = "heart-rate-measurement"
delivery = "notify"
required = true

[[metrics]]
mdc = 147842
mdc_ref = "MDC_ECG_HEART_RATE"
loinc = "8867-4"
units = ["/min"]
characteristic = "2A37"
"#;

    #[test]
    fn a_minimal_profile_validates() {
        BleProfile::from_toml(MINIMAL).expect("valid");
    }

    #[test]
    fn unknown_keys_and_inconsistencies_are_refused() {
        let cases = [
            MINIMAL.replace("racp = \"none\"", "racp = \"none\"\nextra = 1"),
            MINIMAL.replace(
                "decoder = \"heart-rate-measurement\"",
                "decoder = \"glucose-measurement\"",
            ),
            MINIMAL.replace(
                "decoder = \"heart-rate-measurement\"",
                "decoder = \"no-such\"",
            ),
            MINIMAL.replace("mdc = 147842", "mdc = 150456"),
            MINIMAL.replace("loinc = \"8867-4\"", "loinc = \"1234-5\""),
            MINIMAL.replace("characteristic = \"2A37\"", "characteristic = \"2A35\""),
            MINIMAL.replace("service = \"180D\"", "service = \"heart\""),
            MINIMAL.replace("id = \"ble-test\"", "id = \"Test\""),
            MINIMAL.replace("units = [\"/min\"]", "units = []"),
            MINIMAL.replace("delivery = \"notify\"", "delivery = \"read\""),
        ];
        for text in cases {
            assert!(BleProfile::from_toml(&text).is_err(), "accepted:\n{text}");
        }
    }

    #[test]
    fn every_string_has_a_length_limit() {
        use crate::limits::{MAX_CODE_LEN, MAX_NAME_LEN, MAX_UNIT_LEN};
        let long = |n: usize| "q".repeat(n + 1);
        let cases = [
            (
                "id = \"ble-test\"",
                format!("id = \"ble-{}\"", long(MAX_CODE_LEN)),
                "id",
                MAX_CODE_LEN,
            ),
            (
                "name = \"Test\"",
                format!("name = \"{}\"", long(MAX_NAME_LEN)),
                "name",
                MAX_NAME_LEN,
            ),
            (
                "specification = \"HRS 1.0\"",
                format!("specification = \"{}\"", long(MAX_NAME_LEN)),
                "specification",
                MAX_NAME_LEN,
            ),
            (
                "service = \"180D\"",
                format!("service = \"{}\"", long(MAX_CODE_LEN)),
                "service",
                MAX_CODE_LEN,
            ),
            (
                "uuid = \"2A37\"",
                format!("uuid = \"{}\"", long(MAX_CODE_LEN)),
                "characteristics[0].uuid",
                MAX_CODE_LEN,
            ),
            (
                "name = \"Heart Rate Measurement\"",
                format!("name = \"{}\"", long(MAX_NAME_LEN)),
                "characteristics[0].name",
                MAX_NAME_LEN,
            ),
            (
                "decoder = \"heart-rate-measurement\"",
                format!("decoder = \"{}\"", long(MAX_CODE_LEN)),
                "characteristics[0].decoder",
                MAX_CODE_LEN,
            ),
            (
                "mdc_ref = \"MDC_ECG_HEART_RATE\"",
                format!("mdc_ref = \"{}\"", long(MAX_CODE_LEN)),
                "metrics[0].mdc_ref",
                MAX_CODE_LEN,
            ),
            (
                "loinc = \"8867-4\"",
                format!("loinc = \"{}\"", long(MAX_CODE_LEN)),
                "metrics[0].loinc",
                MAX_CODE_LEN,
            ),
            (
                "units = [\"/min\"]",
                format!("units = [\"/min\", \"{}\"]", long(MAX_UNIT_LEN)),
                "metrics[0].units[1]",
                MAX_UNIT_LEN,
            ),
            (
                "characteristic = \"2A37\"",
                format!("characteristic = \"{}\"", long(MAX_CODE_LEN)),
                "metrics[0].characteristic",
                MAX_CODE_LEN,
            ),
        ];
        for (from, to, key, max) in cases {
            assert!(MINIMAL.contains(from), "{from}");
            let text = MINIMAL.replacen(from, &to, 1);
            let err = BleProfile::from_toml(&text).unwrap_err().to_string();
            assert!(
                err.ends_with(&format!("`{key}` is longer than {max} bytes")),
                "{key}: {err}"
            );
            assert!(!err.contains("qqq"), "{key}: quotes the value: {err}");
        }
    }
}
