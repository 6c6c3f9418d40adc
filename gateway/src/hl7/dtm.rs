//! HL7 v2 date/time values (DTM, and the first component of the older TS).
//!
//! # Format
//!
//! `YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`: missing parts are the start of the
//! period (a day alone is its midnight). A value with an offset means exactly that
//! instant; a value without one is a wall-clock time in the configured time zone
//! (`sources.hl7.time_zone`, default the host's), and a wall-clock time that the zone skips
//! or repeats (daylight-saving changes) is resolved the way RFC 5545 does: the later
//! offset in a gap, the earlier in a fold.

use jiff::tz::TimeZone;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Why a date/time value is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DtmError(pub &'static str);

fn digits(text: &str, at: usize, len: usize) -> Option<u32> {
    let part = text.get(at..at + len)?;
    if part.bytes().all(|b| b.is_ascii_digit()) {
        part.parse().ok()
    } else {
        None
    }
}

/// Parses a DTM, interpreting a value without an offset in `zone`.
pub fn parse(text: &str, zone: &TimeZone) -> Result<OffsetDateTime, DtmError> {
    let text = text.trim();
    let (body, offset) = match text.find(['+', '-']) {
        Some(i) => (&text[..i], Some(&text[i..])),
        None => (text.strip_suffix('Z').unwrap_or(text), None),
    };
    let (main, fraction) = match body.split_once('.') {
        Some((m, f)) => (m, Some(f)),
        None => (body, None),
    };
    if !matches!(main.len(), 4 | 6 | 8 | 10 | 12 | 14) || !main.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(DtmError("not an HL7 date/time (YYYY[MM[DD[HH[MM[SS]]]]])"));
    }
    let bad = || DtmError("date/time out of range");
    let year = digits(main, 0, 4).ok_or_else(bad)?;
    let month = digits(main, 4, 2).unwrap_or(1);
    let day = digits(main, 6, 2).unwrap_or(1);
    let hour = digits(main, 8, 2).unwrap_or(0);
    let minute = digits(main, 10, 2).unwrap_or(0);
    let second = digits(main, 12, 2).unwrap_or(0);
    let nanos = match fraction {
        None => 0,
        Some(f) if main.len() == 14 && (1..=4).contains(&f.len()) => {
            let n: u32 = digits(f, 0, f.len()).ok_or_else(bad)?;
            n * 10u32.pow(9 - f.len() as u32)
        }
        Some(_) => return Err(DtmError("fractional seconds need seconds and 1-4 digits")),
    };
    let month = Month::try_from(u8::try_from(month).map_err(|_| bad())?).map_err(|_| bad())?;
    let date = Date::from_calendar_date(i32::try_from(year).map_err(|_| bad())?, month, day as u8)
        .map_err(|_| bad())?;
    let time =
        Time::from_hms_nano(hour as u8, minute as u8, second as u8, nanos).map_err(|_| bad())?;
    let local = PrimitiveDateTime::new(date, time);
    let offset = match offset {
        Some(o) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let hh = digits(o, 1, 2)
                .filter(|_| o.len() == 5)
                .ok_or(DtmError("the offset must be +HHMM or -HHMM"))?;
            let mm = digits(o, 3, 2).ok_or(DtmError("the offset must be +HHMM or -HHMM"))?;
            UtcOffset::from_hms(sign * hh as i8, sign * mm as i8, 0).map_err(|_| bad())?
        }
        None => zone_offset(local, zone)?,
    };
    Ok(local.assume_offset(offset))
}

fn zone_offset(local: PrimitiveDateTime, zone: &TimeZone) -> Result<UtcOffset, DtmError> {
    let bad = || DtmError("date/time out of range for the time zone");
    let civil = jiff::civil::DateTime::new(
        i16::try_from(local.year()).map_err(|_| bad())?,
        u8::from(local.month()) as i8,
        local.day() as i8,
        local.hour() as i8,
        local.minute() as i8,
        local.second() as i8,
        local.nanosecond() as i32,
    )
    .map_err(|_| bad())?;
    let zoned = zone
        .to_ambiguous_zoned(civil)
        .compatible()
        .map_err(|_| bad())?;
    UtcOffset::from_whole_seconds(zoned.offset().seconds()).map_err(|_| bad())
}

/// A DTM with seconds, milliseconds when there are any, and the offset:
/// `20260105101500.250+0100`.
pub fn format(t: OffsetDateTime) -> String {
    let offset = t.offset();
    let total = offset.whole_minutes();
    let sign = if total < 0 { '-' } else { '+' };
    let total = total.unsigned_abs();
    let millis = t.millisecond();
    let fraction = if millis == 0 {
        String::new()
    } else {
        format!(".{millis:03}")
    };
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}{fraction}{sign}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        total / 60,
        total % 60
    )
}

/// The time zone called `name` (an IANA name such as `Europe/Berlin`, or `UTC`), or the
/// host's when `name` is `None`.
pub fn zone(name: Option<&str>) -> Result<TimeZone, jiff::Error> {
    match name {
        None => Ok(TimeZone::system()),
        Some(n) => TimeZone::get(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn berlin() -> TimeZone {
        TimeZone::get("Europe/Berlin").expect("tzdata installed")
    }

    #[test]
    fn an_offset_is_taken_as_given() {
        let z = TimeZone::UTC;
        assert_eq!(
            parse("20260105101500+0100", &z).unwrap(),
            datetime!(2026-01-05 10:15:00 +01:00)
        );
        assert_eq!(
            parse("20260105101500.25-0530", &z).unwrap(),
            datetime!(2026-01-05 10:15:00.25 -05:30)
        );
        assert_eq!(
            parse("2026010510", &z).unwrap(),
            datetime!(2026-01-05 10:00 UTC)
        );
        assert_eq!(parse("2026", &z).unwrap(), datetime!(2026-01-01 0:00 UTC));
    }

    #[test]
    fn no_offset_means_the_configured_zone_with_its_daylight_saving() {
        let z = berlin();
        assert_eq!(
            parse("20260105101500", &z).unwrap(),
            datetime!(2026-01-05 10:15:00 +01:00)
        );
        assert_eq!(
            parse("20260705101500", &z).unwrap(),
            datetime!(2026-07-05 10:15:00 +02:00)
        );
        // 02:30 on 29 March 2026 does not exist in Berlin: the later offset.
        assert_eq!(
            parse("20260329023000", &z).unwrap().offset(),
            UtcOffset::from_hms(2, 0, 0).unwrap()
        );
        // 02:30 on 25 October 2026 happens twice: the earlier (summer) offset.
        assert_eq!(
            parse("20261025023000", &z).unwrap().offset(),
            UtcOffset::from_hms(2, 0, 0).unwrap()
        );
    }

    #[test]
    fn bad_values_are_errors() {
        let z = TimeZone::UTC;
        for text in [
            "",
            "2026-01-05",
            "202601051",
            "20261305",
            "20260230",
            "20260105256000",
            "20260105101500.12345",
            "20260105.5",
            "20260105101500+01",
            "20260105101500+9900",
            "abcd",
            "20260105101500++0100",
        ] {
            assert!(parse(text, &z).is_err(), "{text}");
        }
    }

    #[test]
    fn format_round_trips() {
        for t in [
            datetime!(2026-01-05 10:15:00 +01:00),
            datetime!(2026-01-05 10:15:00.25 -05:30),
            datetime!(2026-12-31 23:59:59.999 UTC),
        ] {
            assert_eq!(
                parse(&format(t), &TimeZone::UTC).unwrap(),
                t,
                "{}",
                format(t)
            );
        }
        assert_eq!(
            format(datetime!(2026-01-05 10:15:00 -05:30)),
            "20260105101500-0530"
        );
    }

    #[test]
    fn zones_by_name() {
        assert!(zone(Some("Europe/Berlin")).is_ok());
        assert!(zone(Some("UTC")).is_ok());
        assert!(zone(Some("Mars/Olympus")).is_err());
        assert!(zone(None).is_ok());
    }
}
