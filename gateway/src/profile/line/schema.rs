//! The `device-profiles/line-*.toml` file format and its checks.
//!
//! [`ProfileFile`] is the file as written (unknown keys are refused); [`ProfileFile::compile`]
//! checks it and builds a [`LineProfile`]:
//!
//! - `id` is `line-` followed by lower-case letters, digits and dashes;
//! - `documentation` says where the format is documented (non-empty);
//! - exactly one of `line.pattern` or `line.delimiter` + `line.columns`; patterns compile
//!   within a size limit, and `^…$` anchoring is added so a pattern matches whole lines;
//! - every field a metric, status rule or the time stamp names exists (a named group of the
//!   pattern or a column);
//! - every metric is in the catalog (short name, MDC code, MDC reference id or LOINC code),
//!   and its unit is a UCUM code;
//! - status radixes are 10 or 16, masks non-zero, flags known;
//! - the time layout is valid ([`TimeFormat::new`]);
//! - every `[[examples]]` line decodes to exactly the readings, time and status it states;
//! - every string is within its limit ([`crate::limits`]): the id, field and column names
//!   (named groups too), metric names, flags and the time layout 64 bytes, `name`,
//!   `manufacturer` and `model` (which reach the FHIR Device) 128, units 32, absent
//!   markers 64, patterns and other free text 4096.
//!
//! Errors name the key; they may quote the profile (it is configuration, not patient data).

use serde::Deserialize;

use super::{
    DecodeError, Decoded, Delimiter, LayoutError, LineProfile, MetricRule, SerialSettings, Split,
    StatusRule, TimeFormat, TimeSpec, MAX_LINE_LENGTH,
};
use crate::limits::{
    MAX_CODE_LEN, MAX_LINE_FIELD_LEN, MAX_NAME_LEN, MAX_TEXT_LEN, MAX_TIME_LEN, MAX_UNIT_LEN,
};
use crate::model::{Measured, Reading, StatusFlag, Value};
use crate::profile::catalog;
use crate::serial_settings::{FlowControl, Parity};

/// Largest compiled regex a profile may declare, in bytes (the regex crate's size limit).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Why a profile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file or directory.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML does not parse or does not have the schema's shape.
    #[error("{source_name}: {message}")]
    Toml {
        /// The file (or built-in profile) name.
        source_name: String,
        /// Key path and problem.
        message: String,
    },
    /// A key has a value the schema does not allow.
    #[error("{source_name}: `{key}` {message}")]
    Invalid {
        /// The file (or built-in profile) name.
        source_name: String,
        /// The key at fault.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A pattern is not a regex the gateway can run.
    #[error("{source_name}: `{key}` is not a valid regex")]
    Regex {
        /// The file (or built-in profile) name.
        source_name: String,
        /// The key at fault.
        key: String,
        /// The regex crate's reason.
        #[source]
        source: regex::Error,
    },
    /// The time layout is not usable.
    #[error("{source_name}: `time.format` is not a usable time layout")]
    TimeFormat {
        /// The file (or built-in profile) name.
        source_name: String,
        /// What is wrong with it.
        #[source]
        source: LayoutError,
    },
    /// A documented example does not decode as it says.
    #[error("{source_name}: `examples[{index}]` does not hold")]
    Example {
        /// The file (or built-in profile) name.
        source_name: String,
        /// Which example.
        index: usize,
        /// How it differs.
        #[source]
        source: ExampleError,
    },
    /// No profile has this id.
    #[error("unknown line profile {id:?} (known: {known})")]
    Unknown {
        /// The id asked for.
        id: String,
        /// The ids that exist, comma-separated.
        known: String,
    },
}

/// How a profile's documented example differs from what the profile makes of its line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExampleError {
    /// The line does not decode.
    #[error("its line does not decode")]
    Decode(#[source] DecodeError),
    /// The line is ignored, but the example lists readings.
    #[error("its line is ignored, but the example lists readings")]
    Ignored,
    /// The line decodes, but the example says it is ignored.
    #[error("its line decodes, but the example says it is ignored")]
    NotIgnored,
    /// Other readings than the example lists.
    #[error("its line decodes to {got:?}, the example says {stated:?}")]
    Readings {
        /// What the line decodes to.
        got: Vec<String>,
        /// What the example says.
        stated: Vec<String>,
    },
    /// Another device time than the example gives.
    #[error("its line has device time {got:?}, the example says {stated:?}")]
    Time {
        /// What the line decodes to.
        got: Option<String>,
        /// What the example says.
        stated: Option<String>,
    },
    /// Other status flags than the example lists.
    #[error("its line sets status {got:?}, the example says {stated:?}")]
    Status {
        /// What the line decodes to.
        got: Vec<String>,
        /// What the example says.
        stated: Vec<String>,
    },
}

/// A `line-*.toml` file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    /// `line-` + lower-case letters, digits, dashes; equal to the file name.
    pub id: String,
    /// Device and output mode, for people.
    pub name: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Model.
    pub model: String,
    /// Where the format is documented (document, section, page).
    pub documentation: String,
    /// The device's port settings.
    pub serial: SerialSection,
    /// How lines are split.
    pub line: LineSection,
    /// Where the device's time stamp is; absent when lines carry none.
    #[serde(default)]
    pub time: Option<TimeSection>,
    /// Fields that become readings.
    pub metrics: Vec<MetricSection>,
    /// Fields whose bits become status flags.
    #[serde(default)]
    pub status: Vec<StatusSection>,
    /// Documented lines and what they decode to.
    #[serde(default)]
    pub examples: Vec<Example>,
}

/// `[serial]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSection {
    /// Baud rate.
    pub baud: u32,
    /// Data bits, 5–8.
    pub data_bits: u8,
    /// `none`, `odd` or `even`.
    pub parity: Parity,
    /// 1 or 2.
    pub stop_bits: u8,
    /// `none`, `software` or `hardware`.
    pub flow_control: FlowControl,
}

/// `[line]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineSection {
    /// Longest line, in bytes, without the terminator.
    pub max_length: usize,
    /// Lines matching any of these regexes are skipped.
    #[serde(default)]
    pub ignore: Vec<String>,
    /// When set, lines not matching this regex are skipped.
    #[serde(default)]
    pub only: Option<String>,
    /// A regex with named groups that must match the whole line.
    #[serde(default)]
    pub pattern: Option<String>,
    /// A one-character delimiter, or `whitespace`.
    #[serde(default)]
    pub delimiter: Option<String>,
    /// With `delimiter`: a name per column; `""` for a column that is not used.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
}

/// `[time]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeSection {
    /// Fields that hold the time stamp, joined by one space before parsing.
    pub fields: Vec<String>,
    /// The layout, e.g. `MM/DD/YY hh:mm:ss`.
    pub format: String,
}

/// `[[metrics]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSection {
    /// The field holding the number.
    pub field: String,
    /// Catalog short name, MDC code, MDC reference id or LOINC code.
    pub metric: String,
    /// UCUM unit of the number. Default: the metric's canonical unit.
    #[serde(default)]
    pub unit: Option<String>,
    /// Texts that mean "no value" (e.g. `---`).
    #[serde(default)]
    pub absent: Vec<String>,
}

/// `[[status]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusSection {
    /// The field holding the bits.
    pub field: String,
    /// 16 for hex digits, 10 for decimal.
    pub radix: u32,
    /// Which bits set which flag.
    pub bits: Vec<StatusBit>,
}

/// `[[status.bits]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusBit {
    /// Bits that set the flag (any of them).
    pub mask: u64,
    /// A status flag name ([`StatusFlag::as_str`]: `questionable`, `sensor-fault`, …).
    pub flag: String,
}

/// `[[examples]]`: a documented line and what it must decode to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    /// Where the line is documented.
    pub source: String,
    /// The line, without its terminator.
    pub line: String,
    /// Skipped by `ignore`/`only`.
    #[serde(default)]
    pub ignored: bool,
    /// The device time, `YYYY-MM-DDThh:mm:ss` (in the device clock's own offset).
    #[serde(default)]
    pub time: Option<String>,
    /// Each reading as `MDC_REF VALUE UNIT`, in metric order.
    #[serde(default)]
    pub readings: Vec<String>,
    /// Status flag names set on the readings.
    #[serde(default)]
    pub status: Vec<String>,
}

impl ProfileFile {
    /// Parses a file's text; `source_name` is used in errors.
    pub fn from_toml(text: &str, source_name: &str) -> Result<Self, ProfileError> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            ProfileError::Toml {
                source_name: source_name.to_owned(),
                message: if key == "." || key.is_empty() {
                    inner.to_string().trim().to_owned()
                } else {
                    format!("{key}: {}", inner.message().trim())
                },
            }
        })
    }

    /// Every string of the file with its key and length limit.
    fn strings(&self) -> Vec<(String, &str, usize)> {
        let mut all: Vec<(String, &str, usize)> = vec![
            ("id".into(), &self.id, MAX_CODE_LEN),
            ("name".into(), &self.name, MAX_NAME_LEN),
            ("manufacturer".into(), &self.manufacturer, MAX_NAME_LEN),
            ("model".into(), &self.model, MAX_NAME_LEN),
            ("documentation".into(), &self.documentation, MAX_TEXT_LEN),
        ];
        let l = &self.line;
        for (i, p) in l.ignore.iter().enumerate() {
            all.push((format!("line.ignore[{i}]"), p, MAX_TEXT_LEN));
        }
        for (key, text, max) in [
            ("line.only", &l.only, MAX_TEXT_LEN),
            ("line.pattern", &l.pattern, MAX_TEXT_LEN),
            ("line.delimiter", &l.delimiter, MAX_CODE_LEN),
        ] {
            if let Some(text) = text {
                all.push((key.into(), text, max));
            }
        }
        for (i, c) in l.columns.iter().flatten().enumerate() {
            all.push((format!("line.columns[{i}]"), c, MAX_CODE_LEN));
        }
        if let Some(t) = &self.time {
            for (i, f) in t.fields.iter().enumerate() {
                all.push((format!("time.fields[{i}]"), f, MAX_CODE_LEN));
            }
            all.push(("time.format".into(), &t.format, MAX_CODE_LEN));
        }
        for (i, m) in self.metrics.iter().enumerate() {
            all.push((format!("metrics[{i}].field"), &m.field, MAX_CODE_LEN));
            all.push((format!("metrics[{i}].metric"), &m.metric, MAX_CODE_LEN));
            if let Some(unit) = &m.unit {
                all.push((format!("metrics[{i}].unit"), unit, MAX_UNIT_LEN));
            }
            for (j, a) in m.absent.iter().enumerate() {
                all.push((format!("metrics[{i}].absent[{j}]"), a, MAX_LINE_FIELD_LEN));
            }
        }
        for (i, st) in self.status.iter().enumerate() {
            all.push((format!("status[{i}].field"), &st.field, MAX_CODE_LEN));
            for (j, b) in st.bits.iter().enumerate() {
                all.push((format!("status[{i}].bits[{j}].flag"), &b.flag, MAX_CODE_LEN));
            }
        }
        for (i, e) in self.examples.iter().enumerate() {
            all.push((format!("examples[{i}].source"), &e.source, MAX_TEXT_LEN));
            all.push((format!("examples[{i}].line"), &e.line, MAX_LINE_LENGTH));
            if let Some(t) = &e.time {
                all.push((format!("examples[{i}].time"), t, MAX_TIME_LEN));
            }
            for (j, r) in e.readings.iter().enumerate() {
                all.push((format!("examples[{i}].readings[{j}]"), r, MAX_TEXT_LEN));
            }
            for (j, f) in e.status.iter().enumerate() {
                all.push((format!("examples[{i}].status[{j}]"), f, MAX_CODE_LEN));
            }
        }
        all
    }

    /// Checks the file and builds the profile.
    pub fn compile(self, source_name: &str) -> Result<LineProfile, ProfileError> {
        let invalid = |key: &str, message: String| ProfileError::Invalid {
            source_name: source_name.to_owned(),
            key: key.to_owned(),
            message,
        };
        if let Some((key, _, max)) = self
            .strings()
            .into_iter()
            .find(|(_, text, max)| text.len() > *max)
        {
            return Err(invalid(&key, format!("is longer than {max} bytes")));
        }
        let valid_id = self.id.strip_prefix("line-").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
        if !valid_id {
            return Err(invalid(
                "id",
                "must be `line-` followed by lower-case letters, digits and dashes".into(),
            ));
        }
        for (key, value) in [
            ("name", &self.name),
            ("manufacturer", &self.manufacturer),
            ("model", &self.model),
            ("documentation", &self.documentation),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(key, "must not be empty".into()));
            }
        }
        let s = &self.serial;
        if !(50..=4_000_000).contains(&s.baud) {
            return Err(invalid(
                "serial.baud",
                "must be between 50 and 4000000".into(),
            ));
        }
        if !(5..=8).contains(&s.data_bits) {
            return Err(invalid("serial.data_bits", "must be 5, 6, 7 or 8".into()));
        }
        if !(1..=2).contains(&s.stop_bits) {
            return Err(invalid("serial.stop_bits", "must be 1 or 2".into()));
        }
        let l = &self.line;
        if !(1..=MAX_LINE_LENGTH).contains(&l.max_length) {
            return Err(invalid(
                "line.max_length",
                format!("must be between 1 and {MAX_LINE_LENGTH}"),
            ));
        }
        let regex = |key: &str, pattern: &str, anchored: bool| {
            let text = if anchored {
                format!("^(?:{pattern})$")
            } else {
                pattern.to_owned()
            };
            regex::RegexBuilder::new(&text)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|source| ProfileError::Regex {
                    source_name: source_name.to_owned(),
                    key: key.to_owned(),
                    source,
                })
        };
        let ignore = l
            .ignore
            .iter()
            .enumerate()
            .map(|(i, p)| regex(&format!("line.ignore[{i}]"), p, false))
            .collect::<Result<Vec<_>, _>>()?;
        let only = l
            .only
            .as_deref()
            .map(|p| regex("line.only", p, false))
            .transpose()?;
        let split = match (&l.pattern, &l.delimiter, &l.columns) {
            (Some(p), None, None) => {
                let re = regex("line.pattern", p, true)?;
                if re.capture_names().flatten().next().is_none() {
                    return Err(invalid(
                        "line.pattern",
                        "has no named groups `(?<name>…)`".into(),
                    ));
                }
                Split::Pattern(re)
            }
            (None, Some(d), Some(columns)) => {
                let mut chars = d.chars();
                let delimiter = match (d.as_str(), chars.next(), chars.next()) {
                    ("whitespace", _, _) => Delimiter::Whitespace,
                    (_, Some(c), None) if c.is_ascii() && !c.is_ascii_alphanumeric() => {
                        Delimiter::Char(c)
                    }
                    _ => {
                        return Err(invalid(
                            "line.delimiter",
                            "must be one ASCII punctuation or space character, or `whitespace`"
                                .into(),
                        ))
                    }
                };
                if columns.iter().all(String::is_empty) {
                    return Err(invalid("line.columns", "names no column".into()));
                }
                for (i, c) in columns.iter().enumerate() {
                    if !c.is_empty() && columns[..i].contains(c) {
                        return Err(invalid("line.columns", format!("names column {c:?} twice")));
                    }
                }
                Split::Delimited {
                    delimiter,
                    columns: columns.clone(),
                }
            }
            _ => {
                return Err(invalid(
                    "line",
                    "give either `pattern`, or `delimiter` and `columns`".into(),
                ))
            }
        };
        let field_names: Vec<String> = match &split {
            Split::Pattern(re) => re.capture_names().flatten().map(str::to_owned).collect(),
            Split::Delimited { columns, .. } => columns.clone(),
        };
        if field_names.iter().any(|n| n.len() > MAX_CODE_LEN) {
            return Err(invalid(
                "line.pattern",
                format!("names a group longer than {MAX_CODE_LEN} bytes"),
            ));
        }
        let check_field = |key: &str, field: &str| {
            if field.is_empty() || !field_names.iter().any(|n| n == field) {
                Err(invalid(
                    key,
                    format!("names field {field:?}, which the line does not have"),
                ))
            } else {
                Ok(())
            }
        };
        let time = match &self.time {
            None => None,
            Some(t) => {
                if t.fields.is_empty() {
                    return Err(invalid(
                        "time.fields",
                        "must name at least one field".into(),
                    ));
                }
                for f in &t.fields {
                    check_field("time.fields", f)?;
                }
                let format =
                    TimeFormat::new(&t.format).map_err(|source| ProfileError::TimeFormat {
                        source_name: source_name.to_owned(),
                        source,
                    })?;
                Some(TimeSpec {
                    fields: t.fields.clone(),
                    format,
                })
            }
        };
        if self.metrics.is_empty() {
            return Err(invalid("metrics", "must list at least one metric".into()));
        }
        let mut metrics = Vec::new();
        for (i, m) in self.metrics.iter().enumerate() {
            let key = format!("metrics[{i}]");
            check_field(&format!("{key}.field"), &m.field)?;
            let metric = catalog::lookup(&m.metric).ok_or_else(|| {
                invalid(
                    &format!("{key}.metric"),
                    "is not in the metric catalog (use a short name, MDC code, MDC reference id or LOINC code)"
                        .into(),
                )
            })?;
            let unit = m.unit.clone().unwrap_or_else(|| metric.unit.to_owned());
            if unit.is_empty()
                || unit.len() > MAX_UNIT_LEN
                || !unit.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(invalid(
                    &format!("{key}.unit"),
                    format!(
                        "must be a UCUM code (printable ASCII, up to {MAX_UNIT_LEN} characters)"
                    ),
                ));
            }
            crate::profile::units::check_unit(&metric, &unit)
                .map_err(|e| invalid(&format!("{key}.unit"), e.to_string()))?;
            let metric = crate::profile::units::metric_for_unit(metric, &unit);
            metrics.push(MetricRule {
                field: m.field.clone(),
                metric,
                unit,
                absent: m.absent.clone(),
            });
        }
        let mut status = Vec::new();
        for (i, st) in self.status.iter().enumerate() {
            let key = format!("status[{i}]");
            check_field(&format!("{key}.field"), &st.field)?;
            if st.radix != 10 && st.radix != 16 {
                return Err(invalid(&format!("{key}.radix"), "must be 10 or 16".into()));
            }
            let mut bits = Vec::new();
            for (j, b) in st.bits.iter().enumerate() {
                let flag = StatusFlag::parse(&b.flag).ok_or_else(|| {
                    invalid(
                        &format!("{key}.bits[{j}].flag"),
                        "is not a known status flag".into(),
                    )
                })?;
                if b.mask == 0 {
                    return Err(invalid(
                        &format!("{key}.bits[{j}].mask"),
                        "must not be 0".into(),
                    ));
                }
                bits.push((b.mask, flag));
            }
            status.push(StatusRule {
                field: st.field.clone(),
                radix: st.radix,
                bits,
            });
        }
        let profile = LineProfile {
            id: self.id,
            manufacturer: self.manufacturer,
            model: self.model,
            serial: SerialSettings {
                baud: s.baud,
                data_bits: s.data_bits,
                parity: s.parity,
                stop_bits: s.stop_bits,
                flow_control: s.flow_control,
            },
            max_length: l.max_length,
            ignore,
            only,
            split,
            time,
            metrics,
            status,
            examples: self.examples,
        };
        for (index, example) in profile.examples.iter().enumerate() {
            check_example(&profile, example).map_err(|source| ProfileError::Example {
                source_name: source_name.to_owned(),
                index,
                source,
            })?;
        }
        Ok(profile)
    }
}

/// `MDC_REF VALUE UNIT` for a single-valued reading; how examples state readings.
pub fn describe(reading: &Reading) -> String {
    let value = match &reading.value {
        Value::Quantity(q) => match q.value {
            Measured::Value(d) => format!("{d} {}", q.unit),
            Measured::Absent(r) => format!("<{r:?}> {}", q.unit),
        },
        other => format!("{other:?}"),
    };
    format!("{} {value}", reading.metric.mdc_ref)
}

fn check_example(profile: &LineProfile, example: &Example) -> Result<(), ExampleError> {
    let decoded = profile
        .decode_example(&example.line)
        .map_err(ExampleError::Decode)?;
    let readings = match decoded {
        Decoded::Ignored if example.ignored => return Ok(()),
        Decoded::Ignored => return Err(ExampleError::Ignored),
        Decoded::Readings(_) if example.ignored => return Err(ExampleError::NotIgnored),
        Decoded::Readings(r) => r,
    };
    let got: Vec<String> = readings.iter().map(describe).collect();
    if got != example.readings {
        return Err(ExampleError::Readings {
            got,
            stated: example.readings.clone(),
        });
    }
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let got_time = readings
        .first()
        .and_then(|r| r.device_time)
        .map(|t| t.format(&format).unwrap_or_default());
    if !readings.is_empty() && got_time != example.time {
        return Err(ExampleError::Time {
            got: got_time,
            stated: example.time.clone(),
        });
    }
    let mut got_status: Vec<&str> = readings
        .first()
        .map(|r| r.status.iter().map(|f| f.as_str()).collect())
        .unwrap_or_default();
    let mut want_status: Vec<&str> = example.status.iter().map(String::as_str).collect();
    got_status.sort_unstable();
    want_status.sort_unstable();
    if got_status != want_status {
        let owned = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect();
        return Err(ExampleError::Status {
            got: owned(got_status),
            stated: owned(want_status),
        });
    }
    Ok(())
}
