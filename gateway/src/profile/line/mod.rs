//! Line protocols: devices that print one ASCII line per measurement on a serial port
//! (pulse oximeters' real-time and trend output, monitors' "printer" ports), decoded by a
//! declarative profile (`device-profiles/line-*.toml`).
//!
//! A profile says how a line splits into named fields — a regular expression with named
//! groups, or a delimiter and column names — and which fields become which metrics (catalog
//! code, UCUM unit, "no value" markers), which field holds the device's time stamp, and which
//! bits of a status field become [`StatusFlag`]s. The schema is written down in
//! `device-profiles/README.md`; [`schema`] is its typed form and turns a file into a checked
//! [`LineProfile`]. [`Registry`] holds the profiles shipped in the binary plus any from a
//! configured directory.
//!
//! # Decoding a line
//!
//! [`LineProfile::decode`] is pure and never panics. In order:
//!
//! 1. a line longer than `max_length`, or not printable ASCII, is an error;
//! 2. a line matching an `ignore` pattern, or not matching `only`, is [`Decoded::Ignored`]
//!    (headers, banners, blank lines);
//! 3. the line splits into fields (the pattern must match the whole line; a delimited line
//!    must have exactly the declared columns) — otherwise an error; a field the profile
//!    uses (time stamp, metric, status) longer than [`MAX_LINE_FIELD_LEN`] bytes is an error;
//! 4. the time stamp fields, joined by one space, parse in the profile's layout
//!    ([`timefmt`]) with the port's configured UTC offset; a profile without `[time]` gives
//!    readings with no device time (the gateway's receive time is used, and recorded so);
//! 5. each metric field becomes a reading unless its text is one of the field's `absent`
//!    markers (the device had no value: nothing was measured, so nothing is reported);
//! 6. status fields set flags on every reading of the line.
//!
//! Errors ([`DecodeError`]) name the field and the rule it broke, never the text: a line
//! is patient data.

pub mod registry;
pub mod schema;
pub mod timefmt;

#[cfg(test)]
mod tests;

use std::fmt;
use std::ops::Range;

use regex::Regex;
use time::{OffsetDateTime, UtcOffset};

use crate::limits::MAX_LINE_FIELD_LEN;
use crate::model::{Decimal, Measured, Metric, Quantity, Reading, StatusFlag, Value};
use crate::profile::FrameContext;
use crate::serial_settings::{FlowControl, Parity};

pub use registry::Registry;
pub use schema::ProfileError;
pub use timefmt::{LayoutError, TimeFormat};

/// Longest line any profile may declare, in bytes.
pub const MAX_LINE_LENGTH: usize = 4096;

/// A checked line profile, ready to decode.
#[derive(Debug, Clone)]
pub struct LineProfile {
    /// Profile id, e.g. `line-nonin-ascii`; recorded on every device it decodes.
    pub id: String,
    /// Device manufacturer, recorded on the FHIR Device.
    pub manufacturer: String,
    /// Device model, recorded on the FHIR Device.
    pub model: String,
    /// The port settings the device uses.
    pub serial: SerialSettings,
    /// Longest line accepted, in bytes, without its terminator.
    pub max_length: usize,
    /// Lines matching one of these are skipped silently.
    ignore: Vec<Regex>,
    /// When set, lines not matching it are skipped silently.
    only: Option<Regex>,
    /// How a line becomes named fields.
    split: Split,
    /// Where the device's time stamp is.
    time: Option<TimeSpec>,
    /// Fields that become readings.
    metrics: Vec<MetricRule>,
    /// Fields whose bits become status flags.
    status: Vec<StatusRule>,
    /// Documented lines and what they decode to (checked when the profile loads).
    pub examples: Vec<schema::Example>,
}

/// Serial port settings a device uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialSettings {
    /// Baud rate.
    pub baud: u32,
    /// Data bits, 5–8.
    pub data_bits: u8,
    /// Parity.
    pub parity: Parity,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
    /// Flow control.
    pub flow_control: FlowControl,
}

#[derive(Debug, Clone)]
enum Split {
    /// Named groups of a regex that must match the whole line.
    Pattern(Regex),
    /// Fields by position.
    Delimited {
        delimiter: Delimiter,
        /// Column names; empty for a column that is not used.
        columns: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delimiter {
    /// One character.
    Char(char),
    /// Runs of spaces and tabs; leading and trailing ones are ignored.
    Whitespace,
}

#[derive(Debug, Clone)]
struct TimeSpec {
    /// Fields joined with one space before parsing.
    fields: Vec<String>,
    format: TimeFormat,
}

#[derive(Debug, Clone)]
struct MetricRule {
    field: String,
    metric: Metric,
    unit: String,
    absent: Vec<String>,
}

#[derive(Debug, Clone)]
struct StatusRule {
    field: String,
    radix: u32,
    bits: Vec<(u64, StatusFlag)>,
}

/// What a line was.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A line the profile says to skip (header, banner, blank).
    Ignored,
    /// The readings of a measurement line; empty when every value was marked absent.
    Readings(Vec<Reading>),
}

/// Why a line could not be decoded. Names fields and rules, never the line's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Longer than the profile allows.
    #[error("line longer than {max} bytes")]
    TooLong {
        /// The profile's `max_length`.
        max: usize,
    },
    /// Bytes outside printable ASCII (noise, wrong baud rate or parity).
    #[error("line is not printable ASCII (check baud rate, parity and data bits)")]
    NotText,
    /// The profile's pattern does not match the line.
    #[error("line does not match the profile's pattern")]
    NoMatch,
    /// A delimited line with the wrong number of columns.
    #[error("line has {found} columns, the profile expects {expected}")]
    Columns {
        /// Columns the profile declares.
        expected: usize,
        /// Columns in the line.
        found: usize,
    },
    /// A field's text is not what its rule needs.
    #[error("field `{field}` {problem}")]
    Field {
        /// The field name from the profile.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl DecodeError {
    /// A short stable label for counting (`too_long`, `not_text`, `no_match`, `columns`,
    /// `field`).
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooLong { .. } => "too_long",
            DecodeError::NotText => "not_text",
            DecodeError::NoMatch => "no_match",
            DecodeError::Columns { .. } => "columns",
            DecodeError::Field { .. } => "field",
        }
    }
}

fn field_error(field: &str, problem: impl fmt::Display) -> DecodeError {
    DecodeError::Field {
        field: field.to_owned(),
        problem: problem.to_string(),
    }
}

/// The named fields of one line and where each is in it.
pub type Fields<'l> = Vec<(&'l str, Range<usize>)>;

impl LineProfile {
    /// Decodes `line` outside any connection, as the profile's examples are checked and the
    /// simulator picks its templates: device `example`, no patient, a UTC device clock.
    pub fn decode_example(&self, line: &str) -> Result<Decoded, DecodeError> {
        let ctx = FrameContext {
            device: crate::model::DeviceRef {
                id: crate::model::DeviceId::Other("example".into()),
                profile: self.id.clone(),
                model: None,
                manufacturer: None,
            },
            patient: None,
            received_at: OffsetDateTime::UNIX_EPOCH,
            clock_offset: None,
            time_sync: None,
        };
        self.decode(line.as_bytes(), &ctx, UtcOffset::UTC)
    }

    /// Decodes one line (without its terminator) received in `ctx`, whose device clock keeps
    /// `utc_offset`.
    pub fn decode(
        &self,
        line: &[u8],
        ctx: &FrameContext,
        utc_offset: UtcOffset,
    ) -> Result<Decoded, DecodeError> {
        if line.len() > self.max_length {
            return Err(DecodeError::TooLong {
                max: self.max_length,
            });
        }
        if !line.iter().all(|b| (0x20..0x7f).contains(b) || *b == b'\t') {
            return Err(DecodeError::NotText);
        }
        // Printable ASCII is UTF-8.
        let text = std::str::from_utf8(line).map_err(|_| DecodeError::NotText)?;
        if self.ignore.iter().any(|r| r.is_match(text))
            || self.only.as_ref().is_some_and(|r| !r.is_match(text))
        {
            return Ok(Decoded::Ignored);
        }
        let fields = self.fields(text)?;
        for (name, range) in &fields {
            if range.len() > MAX_LINE_FIELD_LEN && self.uses_field(name) {
                return Err(field_error(
                    name,
                    format_args!("is longer than {MAX_LINE_FIELD_LEN} bytes"),
                ));
            }
        }
        let get = |name: &str| -> Option<&str> {
            fields
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, r)| text.get(r.clone()))
        };
        let device_time = match &self.time {
            None => None,
            Some(spec) => Some(self.device_time(spec, &get, utc_offset)?),
        };
        let mut status = Vec::new();
        for rule in &self.status {
            let Some(raw) = get(&rule.field) else {
                continue;
            };
            let bits = u64::from_str_radix(raw.trim(), rule.radix).map_err(|_| {
                field_error(
                    &rule.field,
                    format_args!("is not a base-{} number", rule.radix),
                )
            })?;
            for (mask, flag) in &rule.bits {
                if bits & mask != 0 && !status.contains(flag) {
                    status.push(*flag);
                }
            }
        }
        let mut readings = Vec::new();
        for rule in &self.metrics {
            let Some(raw) = get(&rule.field).map(str::trim) else {
                continue;
            };
            if rule.absent.iter().any(|a| a == raw) {
                continue;
            }
            let number = Decimal::parse(raw).ok_or_else(|| {
                field_error(
                    &rule.field,
                    "is not a decimal number (or a declared absent marker)",
                )
            })?;
            readings.push(Reading {
                device: ctx.device.clone(),
                patient: ctx.patient.clone(),
                metric: rule.metric.clone(),
                value: Value::Quantity(Quantity {
                    value: Measured::Value(number),
                    unit: rule.unit.clone(),
                }),
                device_time,
                clock_offset: ctx.clock_offset,
                received_at: ctx.received_at,
                duration: None,
                sequence: None,
                status: status.clone(),
                device_user: None,
                bedside: None,
                time_sync: ctx.time_sync,
            });
        }
        Ok(Decoded::Readings(readings))
    }

    fn device_time<'l>(
        &self,
        spec: &TimeSpec,
        get: &impl Fn(&str) -> Option<&'l str>,
        utc_offset: UtcOffset,
    ) -> Result<OffsetDateTime, DecodeError> {
        let mut joined = String::new();
        for name in &spec.fields {
            let part = get(name).ok_or_else(|| field_error(name, "is missing"))?;
            if !joined.is_empty() {
                joined.push(' ');
            }
            joined.push_str(part);
        }
        let field = spec.fields.join("+");
        spec.format
            .parse(&joined, utc_offset)
            .map_err(|e| field_error(&field, format_args!("{e} ({})", spec.format.as_str())))
    }

    /// Splits a (printable, not ignored) line into its named fields. Fields an optional
    /// pattern group did not match are left out.
    pub fn fields<'l>(&'l self, text: &str) -> Result<Fields<'l>, DecodeError> {
        match &self.split {
            Split::Pattern(re) => {
                let caps = re.captures(text).ok_or(DecodeError::NoMatch)?;
                Ok(re
                    .capture_names()
                    .flatten()
                    .filter_map(|name| caps.name(name).map(|m| (name, m.range())))
                    .collect())
            }
            Split::Delimited { delimiter, columns } => {
                let spans = split_spans(text, *delimiter);
                if spans.len() != columns.len() {
                    return Err(DecodeError::Columns {
                        expected: columns.len(),
                        found: spans.len(),
                    });
                }
                Ok(columns
                    .iter()
                    .zip(spans)
                    .filter(|(name, _)| !name.is_empty())
                    .map(|(name, span)| (name.as_str(), span))
                    .collect())
            }
        }
    }

    /// Whether decoding reads field `name` (for a time stamp, a metric or status bits).
    fn uses_field(&self, name: &str) -> bool {
        self.metrics.iter().any(|m| m.field == name)
            || self.status.iter().any(|s| s.field == name)
            || self
                .time
                .as_ref()
                .is_some_and(|t| t.fields.iter().any(|f| f == name))
    }

    /// The time-stamp layout and the fields it spans, if the lines carry a device time.
    pub fn time_fields(&self) -> Option<(&[String], &TimeFormat)> {
        self.time.as_ref().map(|t| (&t.fields[..], &t.format))
    }

    /// The fields that become metrics, with their absent markers.
    pub fn metric_fields(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.metrics
            .iter()
            .map(|m| (m.field.as_str(), &m.absent[..]))
    }
}

/// Byte ranges of the fields of `text` split by `delimiter`.
fn split_spans(text: &str, delimiter: Delimiter) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    match delimiter {
        Delimiter::Char(d) => {
            let mut start = 0;
            for (i, c) in text.char_indices() {
                if c == d {
                    spans.push(start..i);
                    start = i + c.len_utf8();
                }
            }
            spans.push(start..text.len());
        }
        Delimiter::Whitespace => {
            let mut start = None;
            for (i, c) in text.char_indices() {
                match (c == ' ' || c == '\t', start) {
                    (true, Some(s)) => {
                        spans.push(s..i);
                        start = None;
                    }
                    (false, None) => start = Some(i),
                    _ => {}
                }
            }
            if let Some(s) = start {
                spans.push(s..text.len());
            }
        }
    }
    spans
}
