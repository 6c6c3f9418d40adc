//! Device time stamps in line protocols: a small, fixed-width format language.
//!
//! Bedside devices print their clock as fixed-width digits (`09/21/08 09:56:12`,
//! `2026-11-25T08:30:00`). A profile names the layout with these tokens; every other
//! character must appear literally:
//!
//! | token  | meaning                               | digits |
//! |--------|---------------------------------------|--------|
//! | `YYYY` | year                                  | 4      |
//! | `YY`   | year 2000–2099                        | 2      |
//! | `MM`   | month 01–12                           | 2      |
//! | `DD`   | day of month                          | 2      |
//! | `hh`   | hour 00–23                            | 2      |
//! | `mm`   | minute                                | 2      |
//! | `ss`   | second                                | 2      |
//! | `fff`  | milliseconds                          | 3      |
//!
//! Devices print their local wall-clock time without an offset, so the offset is not part
//! of the format: the port's configuration says which fixed UTC offset the device clock
//! keeps (`device_utc_offset`), and the parsed time carries it. Parsing never panics; a
//! wrong width, a non-digit or an impossible date is an error.

use std::fmt;

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Year4,
    Year2,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Millis,
    Literal(char),
}

impl Part {
    /// Digits a numeric part takes; 0 for a literal.
    fn width(self) -> usize {
        match self {
            Part::Year4 => 4,
            Part::Millis => 3,
            Part::Literal(_) => 0,
            _ => 2,
        }
    }
}

/// A parsed time-stamp layout such as `MM/DD/YY hh:mm:ss`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeFormat {
    parts: Vec<Part>,
    /// The layout as written in the profile, for messages.
    text: String,
}

/// Why a time stamp did not parse. Never contains the text itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeError {
    /// Length, a literal or a digit does not fit the layout.
    Layout,
    /// The digits fit but name no real date or time (month 13, 31 February, 25:00).
    OutOfRange,
}

impl fmt::Display for TimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeError::Layout => f.write_str("does not match the time format"),
            TimeError::OutOfRange => f.write_str("is not a valid date and time"),
        }
    }
}

const TOKENS: &[(&str, Part)] = &[
    ("YYYY", Part::Year4),
    ("YY", Part::Year2),
    ("MM", Part::Month),
    ("DD", Part::Day),
    ("hh", Part::Hour),
    ("mm", Part::Minute),
    ("ss", Part::Second),
    ("fff", Part::Millis),
];

/// Why a layout is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// A part every time stamp needs is missing or given twice.
    #[error("needs exactly one {0}")]
    NeedsOne(&'static str),
    /// Milliseconds given twice.
    #[error("has milliseconds (fff) twice")]
    MillisTwice,
}

impl TimeFormat {
    /// Parses a layout. It must contain a year, month, day, hour, minute and second, each
    /// once.
    pub fn new(layout: &str) -> Result<Self, LayoutError> {
        let mut parts = Vec::new();
        let mut rest = layout;
        while !rest.is_empty() {
            if let Some((token, part)) = TOKENS.iter().find(|(t, _)| rest.starts_with(t)) {
                parts.push(*part);
                rest = &rest[token.len()..];
            } else {
                let mut chars = rest.chars();
                if let Some(c) = chars.next() {
                    parts.push(Part::Literal(c));
                }
                rest = chars.as_str();
            }
        }
        let count = |wanted: &[Part]| parts.iter().filter(|p| wanted.contains(p)).count();
        for (name, wanted) in [
            ("a year (YYYY or YY)", &[Part::Year4, Part::Year2][..]),
            ("a month (MM)", &[Part::Month][..]),
            ("a day (DD)", &[Part::Day][..]),
            ("an hour (hh)", &[Part::Hour][..]),
            ("a minute (mm)", &[Part::Minute][..]),
            ("a second (ss)", &[Part::Second][..]),
        ] {
            if count(wanted) != 1 {
                return Err(LayoutError::NeedsOne(name));
            }
        }
        if count(&[Part::Millis]) > 1 {
            return Err(LayoutError::MillisTwice);
        }
        Ok(Self {
            parts,
            text: layout.to_owned(),
        })
    }

    /// The layout as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Parses `text` as a wall-clock time of a clock that keeps `offset`.
    pub fn parse(&self, text: &str, offset: UtcOffset) -> Result<OffsetDateTime, TimeError> {
        let mut bytes = text.as_bytes();
        let (mut year, mut month, mut day) = (0i32, 1u8, 1u8);
        let (mut hour, mut minute, mut second, mut millis) = (0u8, 0u8, 0u8, 0u16);
        for part in &self.parts {
            if let Part::Literal(c) = part {
                let mut buf = [0u8; 4];
                let lit = c.encode_utf8(&mut buf).as_bytes();
                bytes = bytes.strip_prefix(lit).ok_or(TimeError::Layout)?;
                continue;
            }
            let width = part.width();
            let digits = bytes.get(..width).ok_or(TimeError::Layout)?;
            bytes = &bytes[width..];
            let mut n: u32 = 0;
            for &d in digits {
                if !d.is_ascii_digit() {
                    return Err(TimeError::Layout);
                }
                n = n * 10 + u32::from(d - b'0');
            }
            // Widths are at most 4 digits, so every value below fits its type.
            match part {
                Part::Year4 => year = n as i32,
                Part::Year2 => year = 2000 + n as i32,
                Part::Month => month = n as u8,
                Part::Day => day = n as u8,
                Part::Hour => hour = n as u8,
                Part::Minute => minute = n as u8,
                Part::Second => second = n as u8,
                Part::Millis => millis = n as u16,
                Part::Literal(_) => {}
            }
        }
        if !bytes.is_empty() {
            return Err(TimeError::Layout);
        }
        let month = Month::try_from(month).map_err(|_| TimeError::OutOfRange)?;
        let date = Date::from_calendar_date(year, month, day).map_err(|_| TimeError::OutOfRange)?;
        let time = Time::from_hms_milli(hour, minute, second, millis)
            .map_err(|_| TimeError::OutOfRange)?;
        Ok(PrimitiveDateTime::new(date, time).assume_offset(offset))
    }

    /// Writes `t` (in its own offset) in this layout; the inverse of [`TimeFormat::parse`]
    /// for years the layout can hold. Used by the device simulator.
    pub fn format(&self, t: OffsetDateTime) -> String {
        let mut out = String::new();
        for part in &self.parts {
            let value: u32 = match part {
                Part::Literal(c) => {
                    out.push(*c);
                    continue;
                }
                Part::Year4 => t.year().rem_euclid(10_000) as u32,
                Part::Year2 => t.year().rem_euclid(100) as u32,
                Part::Month => u8::from(t.month()).into(),
                Part::Day => t.day().into(),
                Part::Hour => t.hour().into(),
                Part::Minute => t.minute().into(),
                Part::Second => t.second().into(),
                Part::Millis => t.millisecond().into(),
            };
            out.push_str(&format!("{value:0width$}", width = part.width()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{datetime, offset};

    #[test]
    fn layouts_parse_exactly_and_round_trip() {
        let cases = [
            (
                "MM/DD/YY hh:mm:ss",
                "09/21/08 09:56:12",
                datetime!(2008-09-21 09:56:12 UTC),
            ),
            (
                "YYYY-MM-DDThh:mm:ss",
                "2026-11-25T08:30:00",
                datetime!(2026-11-25 08:30:00 UTC),
            ),
            (
                "DD.MM.YYYY hh:mm:ss.fff",
                "29.02.2024 23:59:59.250",
                datetime!(2024-02-29 23:59:59.25 UTC),
            ),
        ];
        for (layout, text, expected) in cases {
            let f = TimeFormat::new(layout).unwrap();
            let t = f.parse(text, UtcOffset::UTC).unwrap();
            assert_eq!(t, expected, "{layout}");
            assert_eq!(f.format(t), text, "{layout}");
        }
    }

    #[test]
    fn the_configured_offset_is_attached_not_applied() {
        let f = TimeFormat::new("MM/DD/YY hh:mm:ss").unwrap();
        let t = f.parse("09/21/08 09:56:12", offset!(+2)).unwrap();
        assert_eq!(t, datetime!(2008-09-21 09:56:12 +2));
        assert_eq!(t.offset(), offset!(+2));
    }

    #[test]
    fn wrong_text_is_an_error_never_a_panic() {
        let f = TimeFormat::new("MM/DD/YY hh:mm:ss").unwrap();
        for (text, err) in [
            ("", TimeError::Layout),
            ("09/21/08", TimeError::Layout),
            ("09/21/08 09:56:12 ", TimeError::Layout),
            ("09-21-08 09:56:12", TimeError::Layout),
            ("0x/21/08 09:56:12", TimeError::Layout),
            ("13/21/08 09:56:12", TimeError::OutOfRange),
            ("02/30/08 09:56:12", TimeError::OutOfRange),
            ("09/21/08 24:00:00", TimeError::OutOfRange),
            ("09/21/08 09:60:00", TimeError::OutOfRange),
            ("é9/21/08 09:56:12", TimeError::Layout),
        ] {
            assert_eq!(f.parse(text, UtcOffset::UTC), Err(err), "{text:?}");
        }
    }

    #[test]
    fn incomplete_layouts_are_refused() {
        for layout in [
            "hh:mm:ss",
            "MM/DD/YY",
            "YYYY-MM-DD hh:mm",
            "YY YYYY MM DD hh mm ss",
        ] {
            assert!(TimeFormat::new(layout).is_err(), "{layout}");
        }
    }
}
