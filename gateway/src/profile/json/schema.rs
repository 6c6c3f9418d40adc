//! The `device-profiles/json-*.toml` file format and its checks.
//!
//! [`ProfileFile`] is the file as written (unknown keys are refused);
//! [`ProfileFile::compile`] checks it and builds a [`JsonProfile`]. Every error names the
//! file, the line (where the key is in the file) and the key: `json-acme.toml:14:
//! `metrics[1].value` must be …`. Checked:
//!
//! - `id` is `json-` followed by lower-case letters, digits and dashes; `version` is 1 to
//!   32 of letters, digits, `.`, `-`, `+`; `documentation` is not empty;
//! - every topic is a valid MQTT topic filter; every path parses ([`super::path`]);
//!   `records` and `match` paths are pointers (not topic levels);
//! - every metric is in the catalog, a compound one (blood pressure) has `components` and
//!   no `value`, a single one a `value` and no `components`; units are UCUM-looking codes,
//!   given either as `unit` or as `unit_from` with a `units` table;
//! - `scale` is an exact decimal; `time.format` is `rfc3339`, `unix-s`, `unix-ms` or a
//!   layout ([`TimeFormat`]);
//! - every string is within its limit ([`crate::limits`]);
//! - every `[[examples]]` payload decodes to exactly the readings (and device, and time)
//!   it states.

use std::ops::Range;

use serde::Deserialize;

use super::{describe, JsonProfile, MetricRule, Path, TimeKind, UnitRule, ValueRule};
use crate::limits::{
    MAX_CODE_LEN, MAX_NAME_LEN, MAX_TEXT_LEN, MAX_TIME_LEN, MAX_TOPIC_LEN, MAX_UNIT_LEN,
};
use crate::model::{Decimal, DeviceIdKind};
use crate::profile::catalog;
use crate::profile::line::TimeFormat;

/// Longest path in a profile, in bytes.
pub const MAX_PATH_LEN: usize = 256;

/// Largest example payload, in bytes.
pub const MAX_EXAMPLE_BYTES: usize = 64 * 1024;

/// Most `[[metrics]]`, components, topics, `match` conditions, `units` entries or examples.
pub const MAX_ITEMS: usize = 64;

/// Why a profile file could not be loaded. Names the file, the line where known, and the
/// key; may quote the profile (it is configuration, not patient data), never a file it
/// was not meant to read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file or directory.
        path: String,
        /// The OS error.
        message: String,
    },
    /// The file does not fit the schema.
    #[error("{file}{}: {}{message}", line.map(|l| format!(":{l}")).unwrap_or_default(), if key.is_empty() { String::new() } else { format!("`{key}` ") })]
    Invalid {
        /// The file (or built-in profile) name.
        file: String,
        /// The line of the key, when known.
        line: Option<usize>,
        /// The key at fault (`metrics[1].value`), empty for the file as a whole.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A `json-*.toml` file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    /// `json-` + lower-case letters, digits, dashes; equal to the file name.
    pub id: String,
    /// The profile's version; bump it on every change. Readings record `id@version`.
    pub version: String,
    /// What devices or platform, for people.
    pub name: String,
    /// Recorded on the FHIR Device.
    #[serde(default)]
    pub manufacturer: Option<String>,
    /// Recorded on the FHIR Device.
    #[serde(default)]
    pub model: Option<String>,
    /// The public document the payload format comes from: title, section, address.
    pub documentation: String,
    /// MQTT topic filters whose messages this profile decodes.
    pub topics: Vec<String>,
    /// Conditions on the message: pointer → the text its value must have.
    #[serde(default, rename = "match")]
    pub match_: std::collections::BTreeMap<String, String>,
    /// Pointer to an array of records; without it the message is one record.
    #[serde(default)]
    pub records: Option<String>,
    /// Path to the device's sequence number for a record.
    #[serde(default)]
    pub sequence: Option<String>,
    /// The device.
    pub device: DeviceSection,
    /// The measurement time; without it readings get the receive time.
    #[serde(default)]
    pub time: Option<TimeSection>,
    /// What becomes readings.
    pub metrics: Vec<MetricSection>,
    /// Payloads and what they decode to.
    #[serde(default)]
    pub examples: Vec<Example>,
}

/// `[device]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSection {
    /// Path to the device id.
    pub id: String,
    /// `eui64`, `bluetooth`, `serial` or `other` (default).
    #[serde(default)]
    pub id_type: Option<String>,
}

/// `[time]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeSection {
    /// Path to the time stamp.
    pub path: String,
    /// `rfc3339`, `unix-s`, `unix-ms`, or a layout in UTC such as `YYYY-MM-DDThh:mm:ss`.
    pub format: String,
}

/// `[[metrics]]` and `[[metrics.components]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSection {
    /// Catalog short name, MDC code, MDC reference id or LOINC code.
    pub metric: String,
    /// Path to the number (not for a compound metric).
    #[serde(default)]
    pub value: Option<String>,
    /// Path to a power of ten the number is multiplied by.
    #[serde(default)]
    pub exponent: Option<String>,
    /// An exact decimal the number is multiplied by, as a string (`"0.1"`).
    #[serde(default)]
    pub scale: Option<String>,
    /// The UCUM unit. Default: the metric's canonical unit (unless `unit_from`).
    #[serde(default)]
    pub unit: Option<String>,
    /// Path to the unit as the vendor writes it; mapped through `units`.
    #[serde(default)]
    pub unit_from: Option<String>,
    /// Vendor unit text → UCUM code.
    #[serde(default)]
    pub units: std::collections::BTreeMap<String, String>,
    /// Whether a record may lack it (then it makes no reading). Default false. Only on
    /// `[[metrics]]`, not on components.
    #[serde(default)]
    pub optional: bool,
    /// The parts of a compound metric.
    #[serde(default)]
    pub components: Vec<MetricSection>,
}

/// `[[examples]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    /// Where the payload's shape comes from.
    pub source: String,
    /// The topic it arrives on.
    pub topic: String,
    /// The payload, JSON text.
    pub payload: String,
    /// The device key every reading must have.
    pub device: String,
    /// The first reading's device time in UTC (`2026-01-02T03:04:05Z`), if it has one.
    #[serde(default)]
    pub time: Option<String>,
    /// The readings, as [`describe`] states them.
    pub readings: Vec<String>,
}

/// Where keys are in a file's text, for the line of an error.
struct Lines<'a> {
    text: &'a str,
    doc: Option<toml_edit::ImDocument<&'a str>>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            doc: toml_edit::ImDocument::parse(text).ok(),
        }
    }

    fn line_of_offset(&self, offset: usize) -> usize {
        self.text
            .get(..offset)
            .map(|t| t.bytes().filter(|b| *b == b'\n').count() + 1)
            .unwrap_or(1)
    }

    /// The line of a key path such as `metrics[1].components[0].value`: that of the deepest
    /// part of it that is in the file.
    fn of(&self, key: &str) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut current: &dyn toml_edit::TableLike = doc.as_table();
        let mut span: Option<Range<usize>> = None;
        for part in key.split('.').filter(|p| !p.is_empty()) {
            let (name, index) = match part.split_once('[') {
                Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (part, None),
            };
            let Some((k, item)) = current.get_key_value(name) else {
                break;
            };
            span = k.span().or_else(|| item.span()).or(span);
            let next = match index {
                Some(i) => item.as_array_of_tables().and_then(|t| t.get(i)).map(|t| {
                    span = t.span().or(span.clone());
                    t as &dyn toml_edit::TableLike
                }),
                None => item.as_table_like(),
            };
            match next {
                Some(t) => current = t,
                None => break,
            }
        }
        span.map(|s| self.line_of_offset(s.start))
    }
}

impl ProfileFile {
    /// Parses a file's text; `file` is used in errors.
    pub fn from_toml(text: &str, file: &str) -> Result<Self, ProfileError> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let lines = Lines::new(text);
            let line = inner
                .span()
                .map(|s| lines.line_of_offset(s.start))
                .or_else(|| lines.of(&key));
            ProfileError::Invalid {
                file: file.to_owned(),
                line,
                key: if key == "." { String::new() } else { key },
                message: inner.message().trim().to_owned(),
            }
        })
    }

    /// Every string of the file with its key and length limit.
    fn strings(&self) -> Vec<(String, &str, usize)> {
        let mut all: Vec<(String, &str, usize)> = vec![
            ("id".into(), &self.id, MAX_CODE_LEN),
            ("version".into(), &self.version, 32),
            ("name".into(), &self.name, MAX_NAME_LEN),
            ("documentation".into(), &self.documentation, MAX_TEXT_LEN),
            ("device.id".into(), &self.device.id, MAX_PATH_LEN),
        ];
        for (key, text, max) in [
            ("manufacturer", &self.manufacturer, MAX_NAME_LEN),
            ("model", &self.model, MAX_NAME_LEN),
            ("records", &self.records, MAX_PATH_LEN),
            ("sequence", &self.sequence, MAX_PATH_LEN),
            ("device.id_type", &self.device.id_type, MAX_CODE_LEN),
        ] {
            if let Some(text) = text {
                all.push((key.into(), text, max));
            }
        }
        for (i, t) in self.topics.iter().enumerate() {
            all.push((format!("topics[{i}]"), t, MAX_TOPIC_LEN));
        }
        for (k, v) in &self.match_ {
            all.push(("match".into(), k, MAX_PATH_LEN));
            all.push((format!("match.{k:?}"), v, MAX_CODE_LEN));
        }
        if let Some(t) = &self.time {
            all.push(("time.path".into(), &t.path, MAX_PATH_LEN));
            all.push(("time.format".into(), &t.format, MAX_CODE_LEN));
        }
        fn metric<'a>(key: String, m: &'a MetricSection, all: &mut Vec<(String, &'a str, usize)>) {
            all.push((format!("{key}.metric"), &m.metric, MAX_CODE_LEN));
            for (k, text, max) in [
                ("value", &m.value, MAX_PATH_LEN),
                ("exponent", &m.exponent, MAX_PATH_LEN),
                ("scale", &m.scale, MAX_CODE_LEN),
                ("unit", &m.unit, MAX_UNIT_LEN),
                ("unit_from", &m.unit_from, MAX_PATH_LEN),
            ] {
                if let Some(text) = text {
                    all.push((format!("{key}.{k}"), text, max));
                }
            }
            for (vendor, ucum) in &m.units {
                all.push((format!("{key}.units"), vendor, MAX_CODE_LEN));
                all.push((format!("{key}.units"), ucum, MAX_UNIT_LEN));
            }
            for (j, c) in m.components.iter().enumerate() {
                metric(format!("{key}.components[{j}]"), c, all);
            }
        }
        for (i, m) in self.metrics.iter().enumerate() {
            metric(format!("metrics[{i}]"), m, &mut all);
        }
        for (i, e) in self.examples.iter().enumerate() {
            let key = format!("examples[{i}]");
            all.push((format!("{key}.source"), &e.source, MAX_TEXT_LEN));
            all.push((format!("{key}.topic"), &e.topic, MAX_TOPIC_LEN));
            all.push((format!("{key}.payload"), &e.payload, MAX_EXAMPLE_BYTES));
            all.push((
                format!("{key}.device"),
                &e.device,
                crate::limits::MAX_ID_LEN,
            ));
            if let Some(t) = &e.time {
                all.push((format!("{key}.time"), t, MAX_TIME_LEN));
            }
            for (j, r) in e.readings.iter().enumerate() {
                all.push((format!("{key}.readings[{j}]"), r, MAX_TEXT_LEN));
            }
        }
        all
    }

    /// Checks the file (whose text is `text`, named `file` in errors) and builds the
    /// profile.
    pub fn compile(self, text: &str, file: &str) -> Result<JsonProfile, ProfileError> {
        let lines = Lines::new(text);
        let invalid = |key: &str, message: String| ProfileError::Invalid {
            file: file.to_owned(),
            line: lines.of(key),
            key: key.to_owned(),
            message,
        };
        for (key, text, max) in self.strings() {
            if text.len() > max {
                return Err(invalid(&key, crate::limits::too_long_message(max)));
            }
        }
        let counts = [
            ("topics", self.topics.len()),
            ("match", self.match_.len()),
            ("metrics", self.metrics.len()),
            ("examples", self.examples.len()),
        ];
        for (key, n) in counts {
            if n > MAX_ITEMS {
                return Err(invalid(key, format!("has more than {MAX_ITEMS} entries")));
            }
        }
        let id_ok = self.id.strip_prefix("json-").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
        if !id_ok {
            return Err(invalid(
                "id",
                "must be `json-` followed by lower-case letters, digits and dashes".into(),
            ));
        }
        if self.version.is_empty()
            || !self
                .version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-+".contains(&b))
        {
            return Err(invalid(
                "version",
                "must be 1 to 32 letters, digits, `.`, `-` or `+`".into(),
            ));
        }
        for (key, text) in [("name", &self.name), ("documentation", &self.documentation)] {
            if text.trim().is_empty() {
                return Err(invalid(key, "must not be empty".into()));
            }
        }
        for (key, text) in [("manufacturer", &self.manufacturer), ("model", &self.model)] {
            if text
                .as_ref()
                .is_some_and(|t| t.chars().any(char::is_control))
            {
                return Err(invalid(key, "must not contain control characters".into()));
            }
        }
        if self.topics.is_empty() {
            return Err(invalid(
                "topics",
                "must list at least one topic filter".into(),
            ));
        }
        for (i, t) in self.topics.iter().enumerate() {
            if !super::path::valid_filter(t) {
                return Err(invalid(
                    &format!("topics[{i}]"),
                    "is not a valid MQTT topic filter".into(),
                ));
            }
        }
        let path = |key: &str, text: &str| -> Result<(String, Path), ProfileError> {
            Path::parse(text)
                .map(|p| (text.to_owned(), p))
                .map_err(|m| invalid(key, m))
        };
        let pointer = |key: &str, text: &str| -> Result<(String, Path), ProfileError> {
            let p = path(key, text)?;
            if !p.1.is_pointer() {
                return Err(invalid(
                    key,
                    "must be a JSON pointer, not a topic level".into(),
                ));
            }
            Ok(p)
        };
        let mut matches = Vec::new();
        for (k, v) in &self.match_ {
            let (text, p) = pointer("match", k)?;
            matches.push((text, p, v.clone()));
        }
        let records = self
            .records
            .as_deref()
            .map(|r| pointer("records", r))
            .transpose()?;
        let sequence = self
            .sequence
            .as_deref()
            .map(|s| path("sequence", s))
            .transpose()?;
        let device_id = path("device.id", &self.device.id)?;
        let device_id_kind = match self.device.id_type.as_deref() {
            None => DeviceIdKind::Other,
            Some(k) => DeviceIdKind::parse(k).ok_or_else(|| {
                invalid(
                    "device.id_type",
                    "must be eui64, bluetooth, serial or other".into(),
                )
            })?,
        };
        let time = match &self.time {
            None => None,
            Some(t) => {
                let at = path("time.path", &t.path)?;
                let kind = match t.format.as_str() {
                    "rfc3339" => TimeKind::Rfc3339,
                    "unix-s" => TimeKind::UnixSeconds,
                    "unix-ms" => TimeKind::UnixMillis,
                    layout => TimeKind::Layout(TimeFormat::new(layout).map_err(|m| {
                        invalid(
                            "time.format",
                            format!("is not rfc3339, unix-s, unix-ms or a layout: {m}"),
                        )
                    })?),
                };
                Some((at, kind))
            }
        };
        if self.metrics.is_empty() {
            return Err(invalid("metrics", "must list at least one metric".into()));
        }
        let value_rule = |key: &str, m: &MetricSection| -> Result<ValueRule, ProfileError> {
            let metric = catalog::lookup(&m.metric).ok_or_else(|| {
                invalid(
                    &format!("{key}.metric"),
                    "is not in the metric catalog (use a short name, MDC code, MDC reference id or LOINC code)".into(),
                )
            })?;
            let Some(value) = &m.value else {
                return Err(invalid(
                    &format!("{key}.value"),
                    "is required for a metric without components".into(),
                ));
            };
            let value = path(&format!("{key}.value"), value)?;
            let exponent = m
                .exponent
                .as_deref()
                .map(|e| path(&format!("{key}.exponent"), e))
                .transpose()?;
            let scale = match &m.scale {
                None => None,
                Some(s) => Some(Decimal::parse(s).ok_or_else(|| {
                    invalid(
                        &format!("{key}.scale"),
                        "must be a decimal number written as a string, e.g. \"0.1\"".into(),
                    )
                })?),
            };
            let ucum_ok = |u: &str| {
                !u.is_empty() && u.len() <= MAX_UNIT_LEN && u.bytes().all(|b| b.is_ascii_graphic())
            };
            let ucum_message =
                format!("must be a UCUM code (printable ASCII, up to {MAX_UNIT_LEN} characters)");
            let unit = match (&m.unit, &m.unit_from) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        &format!("{key}.unit_from"),
                        "cannot be given with `unit`".into(),
                    ))
                }
                (None, Some(from)) => {
                    if m.units.is_empty() {
                        return Err(invalid(
                            &format!("{key}.units"),
                            "must map each vendor unit to a UCUM code when `unit_from` is given"
                                .into(),
                        ));
                    }
                    if m.units.len() > MAX_ITEMS {
                        return Err(invalid(
                            &format!("{key}.units"),
                            format!("has more than {MAX_ITEMS} entries"),
                        ));
                    }
                    for u in m.units.values() {
                        if !ucum_ok(u) {
                            return Err(invalid(&format!("{key}.units"), ucum_message));
                        }
                    }
                    UnitRule::From(
                        path(&format!("{key}.unit_from"), from)?,
                        m.units.clone().into_iter().collect(),
                    )
                }
                (unit, None) => {
                    if !m.units.is_empty() {
                        return Err(invalid(
                            &format!("{key}.units"),
                            "is only used with `unit_from`".into(),
                        ));
                    }
                    let unit = unit.clone().unwrap_or_else(|| metric.unit.to_owned());
                    if !ucum_ok(&unit) {
                        return Err(invalid(&format!("{key}.unit"), ucum_message));
                    }
                    UnitRule::Fixed(unit)
                }
            };
            Ok(ValueRule {
                key: key.to_owned(),
                metric,
                value,
                exponent,
                scale,
                unit,
            })
        };
        let mut metrics = Vec::new();
        for (i, m) in self.metrics.iter().enumerate() {
            let key = format!("metrics[{i}]");
            let rule = if m.components.is_empty() {
                MetricRule::Single(value_rule(&key, m)?)
            } else {
                let metric = catalog::lookup(&m.metric).ok_or_else(|| {
                    invalid(
                        &format!("{key}.metric"),
                        "is not in the metric catalog".into(),
                    )
                })?;
                for (k, given) in [
                    ("value", m.value.is_some()),
                    ("exponent", m.exponent.is_some()),
                    ("scale", m.scale.is_some()),
                    ("unit", m.unit.is_some()),
                    ("unit_from", m.unit_from.is_some()),
                ] {
                    if given {
                        return Err(invalid(
                            &format!("{key}.{k}"),
                            "belongs on each component of a metric with components".into(),
                        ));
                    }
                }
                if m.components.len() > MAX_ITEMS {
                    return Err(invalid(
                        &format!("{key}.components"),
                        format!("has more than {MAX_ITEMS} entries"),
                    ));
                }
                let mut components = Vec::new();
                for (j, c) in m.components.iter().enumerate() {
                    let ckey = format!("{key}.components[{j}]");
                    if c.optional || !c.components.is_empty() {
                        return Err(invalid(
                            &ckey,
                            "a component has no `optional` and no `components` of its own".into(),
                        ));
                    }
                    components.push(value_rule(&ckey, c)?);
                }
                MetricRule::Compound {
                    key: key.clone(),
                    metric,
                    components,
                }
            };
            metrics.push((rule, m.optional));
        }
        let profile = JsonProfile {
            id: self.id,
            version: self.version,
            name: self.name,
            manufacturer: self.manufacturer.filter(|m| !m.trim().is_empty()),
            model: self.model.filter(|m| !m.trim().is_empty()),
            documentation: self.documentation,
            topics: self.topics,
            matches,
            records,
            device_id,
            device_id_kind,
            time,
            sequence,
            metrics,
            examples: self.examples,
        };
        for (i, example) in profile.examples.iter().enumerate() {
            check_example(&profile, example).map_err(|m| invalid(&format!("examples[{i}]"), m))?;
        }
        Ok(profile)
    }
}

/// Decodes an example as the MQTT source would, and compares.
fn check_example(profile: &JsonProfile, example: &Example) -> Result<(), String> {
    if !profile.claims(&example.topic) {
        return Err("its topic is not one of the profile's `topics`".into());
    }
    let message: serde_json::Value =
        serde_json::from_str(&example.payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    if !profile.matches(&message) {
        return Err("payload does not meet the profile's `match` conditions".into());
    }
    let readings = profile
        .decode(
            &example.topic,
            &message,
            time::OffsetDateTime::UNIX_EPOCH,
            &|_, _| None,
        )
        .map_err(|e| format!("does not decode: {e}"))?;
    let got: Vec<String> = readings.iter().map(describe).collect();
    if got != example.readings {
        return Err(format!(
            "decodes to {got:?}, the example says {:?}",
            example.readings
        ));
    }
    if let Some(r) = readings
        .iter()
        .find(|r| r.device.id.key() != example.device)
    {
        return Err(format!(
            "has device {:?}, the example says {:?}",
            r.device.id.key(),
            example.device
        ));
    }
    let got_time = readings.first().and_then(|r| r.device_time).map(|t| {
        t.to_offset(time::UtcOffset::UTC)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    });
    if got_time != example.time {
        return Err(format!(
            "has device time {got_time:?}, the example says {:?}",
            example.time
        ));
    }
    Ok(())
}
