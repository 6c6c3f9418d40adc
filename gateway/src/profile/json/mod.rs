//! Vendor JSON payload profiles (`device-profiles/json-*.toml`): how a device's or a vendor
//! cloud's own JSON, arriving over MQTT, becomes [`Reading`]s — without a new binary.
//!
//! In the spirit of the device-mapping templates that cloud IoMT services use (a type match,
//! then an expression each for the device id, the time and every value), but checked when
//! the profile loads, with errors that name the file, the line and the key
//! ([`schema::ProfileError`]), and carrying its own test vectors: every `[[examples]]`
//! payload must decode to exactly the readings it states.
//!
//! # How a message is decoded
//!
//! 1. The profiles whose `topics` filters match the message's topic are the candidates. No
//!    candidate: the message is not a vendor payload, and the canonical format
//!    ([`crate::profile::canonical`]) decodes it, as before vendor profiles existed.
//! 2. The payload parses as JSON (a syntax error is a dead letter); the first candidate, by
//!    id, whose `match` conditions all hold (a pointer and the text its value must have)
//!    decodes it. Candidates but none matching: a dead letter naming them.
//! 3. `records` (a pointer to an array) splits the message into records; without it the
//!    message is one record. Every other path is relative to a record ([`path`]).
//! 4. Per record: the device id (required), the time (optional: the receive time is used
//!    and recorded so), the sequence number (optional), then per `[[metrics]]` the value —
//!    or, for a compound metric such as blood pressure, each component's value. A value is
//!    a JSON number (kept with its written precision) or a string holding one; it is
//!    multiplied by 10^`exponent` (a path to a power of ten, as Withings sends it) and by
//!    `scale` (an exact decimal), both exactly. Its unit is `unit`, or the `unit_from` text
//!    mapped through `units`. A metric marked `optional` whose value is absent (or `null`)
//!    makes no reading; otherwise absence is an error.
//! 5. A message that yields no reading, or more than
//!    [`canonical::MAX_READINGS_PER_MESSAGE`], is refused whole.
//!
//! Each reading's device carries `profile = "<id>@<version>"`, so the readings of a bad
//! profile version can be found in the buffer, the dead letters and FHIR (the Observation's
//! `meta.tag`) afterwards.
//!
//! Decoding never panics; errors name the profile, the record, the key and the path, never
//! a value (a payload is patient data).

pub mod path;
pub mod registry;
pub mod schema;

use serde_json::Value as Json;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use crate::limits::{MAX_ID_LEN, MAX_TIME_LEN};
use crate::model::{
    Component, Decimal, DeviceId, DeviceIdKind, DeviceRef, Measured, Metric, PatientRef, Quantity,
    Reading, Value,
};
use crate::profile::canonical;
use crate::profile::line::TimeFormat;

pub use path::{topic_matches, Path};
pub use registry::{ProfileSet, SharedProfiles};
pub use schema::ProfileError;

/// Why a message could not be decoded. The text names the profile, keys and paths, never
/// values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// Profiles claim the topic, but the message meets none's `match` conditions.
    #[error("no vendor profile matches the message (candidates for its topic: {0})")]
    NoProfile(String),
    /// The profile's rules do not fit the message.
    #[error("{profile}: {place}`{key}` ({path}): {problem}")]
    Field {
        /// `id@version`.
        profile: String,
        /// `record N: ` when the message has records, else empty.
        place: String,
        /// The profile key whose path failed (`device.id`, `metrics[2].value`).
        key: String,
        /// The path, as written in the profile.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The message as a whole does not fit.
    #[error("{profile}: {problem}")]
    Message {
        /// `id@version`.
        profile: String,
        /// What is wrong.
        problem: String,
    },
}

/// How a time stamp is written.
#[derive(Debug, Clone)]
pub enum TimeKind {
    /// RFC 3339 with an offset.
    Rfc3339,
    /// Seconds since 1970 (a JSON integer, or a string of one).
    UnixSeconds,
    /// Milliseconds since 1970.
    UnixMillis,
    /// A layout ([`TimeFormat`]) without an offset, in UTC.
    Layout(TimeFormat),
}

/// Where one number comes from and how it is made exact.
#[derive(Debug, Clone)]
pub struct ValueRule {
    /// The key in the profile (`metrics[0]`, `metrics[1].components[0]`), for errors.
    pub key: String,
    /// What is measured.
    pub metric: Metric,
    /// Where the number is.
    pub value: (String, Path),
    /// Where a power of ten to apply is, if any.
    pub exponent: Option<(String, Path)>,
    /// An exact factor, if any.
    pub scale: Option<Decimal>,
    /// The unit.
    pub unit: UnitRule,
}

/// Where a unit comes from.
#[derive(Debug, Clone)]
pub enum UnitRule {
    /// Always this UCUM code.
    Fixed(String),
    /// The text at this path, mapped to UCUM by the table.
    From((String, Path), Vec<(String, String)>),
}

/// One `[[metrics]]` rule.
#[derive(Debug, Clone)]
pub enum MetricRule {
    /// A single quantity.
    Single(ValueRule),
    /// A compound with components and no value of its own.
    Compound {
        /// The key in the profile.
        key: String,
        /// The compound metric (blood pressure).
        metric: Metric,
        /// Its components.
        components: Vec<ValueRule>,
    },
}

impl MetricRule {
    fn optional_key(&self) -> &str {
        match self {
            MetricRule::Single(v) => &v.key,
            MetricRule::Compound { key, .. } => key,
        }
    }
}

/// A checked vendor JSON profile.
#[derive(Debug, Clone)]
pub struct JsonProfile {
    /// `json-…`, equal to the file name.
    pub id: String,
    /// The profile's own version (recorded on every reading).
    pub version: String,
    /// For people.
    pub name: String,
    /// Recorded on the FHIR Device.
    pub manufacturer: Option<String>,
    /// Recorded on the FHIR Device.
    pub model: Option<String>,
    /// Where the payload format is published.
    pub documentation: String,
    /// MQTT topic filters the profile claims.
    pub topics: Vec<String>,
    /// Conditions on the message: (pointer text, pointer, expected text).
    pub matches: Vec<(String, Path, String)>,
    /// The array of records, if the message holds several.
    pub records: Option<(String, Path)>,
    /// Where the device id is, and its kind.
    pub device_id: (String, Path),
    /// The kind of device id.
    pub device_id_kind: DeviceIdKind,
    /// Where the time is, and how it is written.
    pub time: Option<((String, Path), TimeKind)>,
    /// Where the device's sequence number is.
    pub sequence: Option<(String, Path)>,
    /// The readings of a record.
    pub metrics: Vec<(MetricRule, bool)>,
    /// The examples, checked at load.
    pub examples: Vec<schema::Example>,
}

impl JsonProfile {
    /// `id@version`: what each reading records as its profile.
    pub fn label(&self) -> String {
        format!("{}@{}", self.id, self.version)
    }

    /// Whether one of the profile's topic filters matches `topic`.
    pub fn claims(&self, topic: &str) -> bool {
        self.topics.iter().any(|f| topic_matches(f, topic))
    }

    /// Whether the message meets every `match` condition.
    pub fn matches(&self, message: &Json) -> bool {
        self.matches
            .iter()
            .all(|(_, path, want)| path.json(message).and_then(text_of).as_deref() == Some(want))
    }

    /// Decodes a message that this profile was chosen for.
    pub fn decode(
        &self,
        topic: &str,
        message: &Json,
        received_at: OffsetDateTime,
        binding: &dyn Fn(&str, Option<u8>) -> Option<PatientRef>,
    ) -> Result<Vec<Reading>, DecodeError> {
        let label = self.label();
        let records: Vec<&Json> = match &self.records {
            None => vec![message],
            Some((text, path)) => match path.json(message) {
                Some(Json::Array(items)) => items.iter().collect(),
                _ => {
                    return Err(DecodeError::Field {
                        profile: label,
                        place: String::new(),
                        key: "records".into(),
                        path: text.clone(),
                        problem: "is not an array in this message".into(),
                    })
                }
            },
        };
        if records.len() > canonical::MAX_READINGS_PER_MESSAGE {
            return Err(DecodeError::Message {
                profile: label,
                problem: format!(
                    "more than {} records in one message",
                    canonical::MAX_READINGS_PER_MESSAGE
                ),
            });
        }
        let mut readings = Vec::new();
        for (i, record) in records.into_iter().enumerate() {
            let place = if self.records.is_some() {
                format!("record {i}: ")
            } else {
                String::new()
            };
            let ctx = Record {
                profile: self,
                label: &label,
                place: &place,
                topic,
                record,
            };
            ctx.readings(received_at, binding, &mut readings)?;
            if readings.len() > canonical::MAX_READINGS_PER_MESSAGE {
                return Err(DecodeError::Message {
                    profile: label,
                    problem: format!(
                        "more than {} readings in one message",
                        canonical::MAX_READINGS_PER_MESSAGE
                    ),
                });
            }
        }
        if readings.is_empty() {
            return Err(DecodeError::Message {
                profile: label,
                problem: "no reading in the message (none of the profile's metrics is present)"
                    .into(),
            });
        }
        Ok(readings)
    }
}

/// The text form of a JSON scalar: a string's text, a number's decimal text, `true`/`false`.
fn text_of(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// One record being decoded, with what its errors need.
struct Record<'a> {
    profile: &'a JsonProfile,
    label: &'a str,
    place: &'a str,
    topic: &'a str,
    record: &'a Json,
}

impl Record<'_> {
    fn error(&self, key: &str, path: &str, problem: impl Into<String>) -> DecodeError {
        DecodeError::Field {
            profile: self.label.to_owned(),
            place: self.place.to_owned(),
            key: key.to_owned(),
            path: path.to_owned(),
            problem: problem.into(),
        }
    }

    /// The scalar at a path as text; `None` when absent or `null`.
    fn text(
        &self,
        key: &str,
        (text, path): &(String, Path),
    ) -> Result<Option<String>, DecodeError> {
        match path.find(self.record, self.topic) {
            None | Some(path::Found::Json(Json::Null)) => Ok(None),
            Some(path::Found::Text(t)) => Ok(Some(t.to_owned())),
            Some(path::Found::Json(v)) => text_of(v)
                .map(Some)
                .ok_or_else(|| self.error(key, text, "is not a string, number or boolean")),
        }
    }

    fn readings(
        &self,
        received_at: OffsetDateTime,
        binding: &dyn Fn(&str, Option<u8>) -> Option<PatientRef>,
        out: &mut Vec<Reading>,
    ) -> Result<(), DecodeError> {
        let p = self.profile;
        let device = self.device()?;
        let device_time = match &p.time {
            None => None,
            Some((at, kind)) => Some(self.time(at, kind)?),
        };
        let sequence = match &p.sequence {
            None => None,
            Some(at) => match self.text("sequence", at)? {
                None => None,
                Some(t) => Some(
                    t.parse::<u64>()
                        .map_err(|_| self.error("sequence", &at.0, "is not a whole number"))?,
                ),
            },
        };
        let patient = binding(&device.id.key(), None);
        for (rule, optional) in &p.metrics {
            let made = match rule {
                MetricRule::Single(v) => self
                    .quantity(v)?
                    .map(|q| (v.metric.clone(), Value::Quantity(q))),
                MetricRule::Compound {
                    key,
                    metric,
                    components,
                } => {
                    let mut parts = Vec::with_capacity(components.len());
                    for c in components {
                        if let Some(q) = self.quantity(c)? {
                            parts.push(Component {
                                metric: c.metric.clone(),
                                quantity: q,
                            });
                        }
                    }
                    if parts.is_empty() {
                        None
                    } else if parts.len() < components.len() {
                        return Err(self.error(
                            key,
                            "components",
                            "has only some of its components in this record",
                        ));
                    } else {
                        Some((metric.clone(), Value::Components(parts)))
                    }
                }
            };
            let Some((metric, value)) = made else {
                if *optional {
                    continue;
                }
                return Err(self.error(
                    rule.optional_key(),
                    "value",
                    "is absent (and the metric is not optional)",
                ));
            };
            out.push(Reading {
                device: device.clone(),
                patient: patient.clone(),
                metric,
                value,
                device_time,
                clock_offset: None,
                received_at,
                duration: None,
                sequence,
                status: Vec::new(),
                device_user: None,
                time_sync: None,
                bedside: None,
            });
        }
        Ok(())
    }

    fn device(&self) -> Result<DeviceRef, DecodeError> {
        let p = self.profile;
        let key = "device.id";
        let at = &p.device_id;
        let Some(id) = self.text(key, at)? else {
            return Err(self.error(key, &at.0, "is absent"));
        };
        if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
            return Err(self.error(
                key,
                &at.0,
                format!("must be 1 to {MAX_ID_LEN} bytes of printable characters"),
            ));
        }
        let id = match p.device_id_kind {
            DeviceIdKind::Bluetooth => id.chars().filter(|c| *c != ':').collect(),
            _ => id,
        };
        let id = DeviceId::from_key(p.device_id_kind, id).ok_or_else(|| {
            self.error(
                key,
                &at.0,
                format!("is not a {} id", p.device_id_kind.as_str()),
            )
        })?;
        Ok(DeviceRef {
            id,
            profile: p.label(),
            model: p.model.clone(),
            manufacturer: p.manufacturer.clone(),
        })
    }

    fn time(&self, at: &(String, Path), kind: &TimeKind) -> Result<OffsetDateTime, DecodeError> {
        let key = "time.path";
        let Some(text) = self.text(key, at)? else {
            return Err(self.error(key, &at.0, "is absent"));
        };
        if text.len() > MAX_TIME_LEN {
            return Err(self.error(key, &at.0, format!("is longer than {MAX_TIME_LEN} bytes")));
        }
        let bad = |what: &str| self.error(key, &at.0, format!("is not {what}"));
        match kind {
            TimeKind::Rfc3339 => {
                OffsetDateTime::parse(&text, &Rfc3339).map_err(|_| bad("an RFC 3339 time"))
            }
            TimeKind::UnixSeconds => text
                .parse::<i64>()
                .ok()
                .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
                .ok_or_else(|| bad("a whole number of seconds since 1970")),
            TimeKind::UnixMillis => text
                .parse::<i64>()
                .ok()
                .and_then(|ms| {
                    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
                })
                .ok_or_else(|| bad("a whole number of milliseconds since 1970")),
            TimeKind::Layout(format) => format
                .parse(&text, UtcOffset::UTC)
                .map_err(|_| bad(&format!("a time in the layout {}", format.as_str()))),
        }
    }

    /// The quantity of a value rule; `None` when the value is absent or `null`.
    fn quantity(&self, rule: &ValueRule) -> Result<Option<Quantity>, DecodeError> {
        let key = format!("{}.value", rule.key);
        let Some(text) = self.text(&key, &rule.value)? else {
            return Ok(None);
        };
        let mut number = Decimal::parse(text.trim())
            .ok_or_else(|| self.error(&key, &rule.value.0, "is not a number"))?;
        if let Some(at) = &rule.exponent {
            let key = format!("{}.exponent", rule.key);
            let exponent = self
                .text(&key, at)?
                .ok_or_else(|| self.error(&key, &at.0, "is absent"))?
                .parse::<i8>()
                .map_err(|_| self.error(&key, &at.0, "is not a small whole number"))?;
            number.exponent = number
                .exponent
                .checked_add(exponent)
                .ok_or_else(|| self.error(&key, &at.0, "puts the value out of range"))?;
        }
        if let Some(scale) = rule.scale {
            number = multiply(number, scale)
                .ok_or_else(|| self.error(&key, &rule.value.0, "is out of range once scaled"))?;
        }
        let unit = match &rule.unit {
            UnitRule::Fixed(u) => u.clone(),
            UnitRule::From(at, table) => {
                let key = format!("{}.unit_from", rule.key);
                let text = self
                    .text(&key, at)?
                    .ok_or_else(|| self.error(&key, &at.0, "is absent"))?;
                table
                    .iter()
                    .find(|(vendor, _)| *vendor == text)
                    .map(|(_, ucum)| ucum.clone())
                    .ok_or_else(|| {
                        self.error(
                            &key,
                            &at.0,
                            "is a unit the profile's `units` table does not list",
                        )
                    })?
            }
        };
        Ok(Some(Quantity {
            value: Measured::Value(number),
            unit,
        }))
    }
}

/// `a × b`, exactly, or `None` out of range.
pub fn multiply(a: Decimal, b: Decimal) -> Option<Decimal> {
    Some(Decimal::new(
        a.mantissa.checked_mul(b.mantissa)?,
        a.exponent.checked_add(b.exponent)?,
    ))
}

/// How a test or a technician states a reading: `MDC_REF VALUE UNIT`, and for a compound
/// `MDC_REF (PART_REF VALUE UNIT; …)`.
pub fn describe(reading: &Reading) -> String {
    let quantity = |q: &Quantity| match q.value {
        Measured::Value(d) => format!("{d} {}", q.unit),
        Measured::Absent(r) => format!("<{}> {}", r.as_str(), q.unit),
    };
    match &reading.value {
        Value::Quantity(q) => format!("{} {}", reading.metric.mdc_ref, quantity(q)),
        Value::Components(parts) => {
            let parts: Vec<String> = parts
                .iter()
                .map(|c| format!("{} {}", c.metric.mdc_ref, quantity(&c.quantity)))
                .collect();
            format!("{} ({})", reading.metric.mdc_ref, parts.join("; "))
        }
        other => format!("{} {other:?}", reading.metric.mdc_ref),
    }
}

#[cfg(test)]
mod tests;
