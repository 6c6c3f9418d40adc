//! Bluetooth SIG time fields: the 7-byte **Date Time** (GATT Specification Supplement, GSS,
//! characteristic "Date Time", 0x2A08), used as the Time Stamp of blood pressure,
//! thermometer, weight, body composition and PLX measurements and as the Base Time of a
//! glucose measurement (to which the glucose Time Offset, sint16 minutes, is added: GSS
//! "Glucose Measurement", 0x2A18). Also the 10-byte **Current Time** (GSS "Current Time",
//! 0x2A2B, Current Time Service), whose first seven bytes are a Date Time, so a source can
//! read a device's sense of now and work out its clock offset.
//!
//! # Format
//!
//! | offset | field   | type   | valid                      |
//! |--------|---------|--------|----------------------------|
//! | 0      | year    | uint16 | 1582–9999, 0 = not known   |
//! | 2      | month   | uint8  | 1–12, 0 = not known        |
//! | 3      | day     | uint8  | 1–31, 0 = not known        |
//! | 4      | hours   | uint8  | 0–23                       |
//! | 5      | minutes | uint8  | 0–59                       |
//! | 6      | seconds | uint8  | 0–59                       |
//!
//! A date with any "not known" part decodes to `None` (the reading then has no device time
//! and the gateway's receive time is used, which the model records as such). Any other value
//! outside the valid range, or a day past the end of its month, is an error.
//!
//! # Time zone
//!
//! A Date Time has no zone or UTC offset: it is the device's wall clock. It is decoded as if
//! it were UTC (`+00:00`). That is deliberate: the per-device clock offset the gateway
//! applies ([`crate::model::Reading::clock_offset`]) is computed by comparing the gateway's
//! clock with the device's Current Time, which is decoded by the same rule
//! ([`current_time`]), so `device_time + clock_offset` is the right instant whatever zone
//! the device's clock was set in. The uncorrected `device_time` keeps exactly the digits the
//! device sent, which is what the idempotency identifier needs.

use time::{Date, Duration, Month, OffsetDateTime, PrimitiveDateTime, Time};

use super::{DecodeError, Reader};

/// Length of a Date Time on the air.
pub const DATE_TIME_LEN: usize = 7;

/// Reads a Date Time at the reader's position; `Ok(None)` if the device says it does not
/// know the date.
pub(crate) fn read_date_time(
    r: &mut Reader<'_>,
    field: &'static str,
) -> Result<Option<OffsetDateTime>, DecodeError> {
    let offset = r.position();
    let b: [u8; DATE_TIME_LEN] = r.array(field)?;
    let invalid = |reason| DecodeError::Invalid {
        field,
        offset,
        reason,
    };
    let year = u16::from_le_bytes([b[0], b[1]]);
    let (month, day, hours, minutes, seconds) = (b[2], b[3], b[4], b[5], b[6]);
    if year != 0 && !(1582..=9999).contains(&year) {
        return Err(invalid("year out of range 1582-9999"));
    }
    if month > 12 {
        return Err(invalid("month out of range 1-12"));
    }
    if day > 31 {
        return Err(invalid("day out of range 1-31"));
    }
    if hours > 23 {
        return Err(invalid("hours out of range 0-23"));
    }
    if minutes > 59 {
        return Err(invalid("minutes out of range 0-59"));
    }
    if seconds > 59 {
        return Err(invalid("seconds out of range 0-59"));
    }
    if year == 0 || month == 0 || day == 0 {
        return Ok(None);
    }
    let month = Month::try_from(month).map_err(|_| invalid("month out of range 1-12"))?;
    let date = Date::from_calendar_date(i32::from(year), month, day)
        .map_err(|_| invalid("day past the end of its month"))?;
    let time =
        Time::from_hms(hours, minutes, seconds).map_err(|_| invalid("time of day out of range"))?;
    Ok(Some(PrimitiveDateTime::new(date, time).assume_utc()))
}

/// Adds a glucose Time Offset (sint16 minutes) to a Base Time.
pub(crate) fn add_minutes(base: Option<OffsetDateTime>, minutes: i16) -> Option<OffsetDateTime> {
    base.and_then(|t| t.checked_add(Duration::minutes(i64::from(minutes))))
}

/// Decodes a Current Time characteristic value (0x2A2B: Date Time, Day of Week, Fractions256,
/// Adjust Reason) into the device's sense of now, as UTC by the rule in the module doc.
/// Fractions of a second are added; Day of Week and Adjust Reason are ignored.
pub fn current_time(bytes: &[u8]) -> Result<Option<OffsetDateTime>, DecodeError> {
    let mut r = Reader::new(bytes);
    let now = read_date_time(&mut r, "exact time 256: date time")?;
    let day_of_week = r.u8("exact time 256: day of week")?;
    if day_of_week > 7 {
        return Err(DecodeError::Reserved {
            field: "day of week",
            offset: 7,
            value: u32::from(day_of_week),
        });
    }
    let fractions = r.u8("exact time 256: fractions256")?;
    let _adjust_reason = r.u8("adjust reason")?;
    Ok(now.map(|t| t + Duration::microseconds(i64::from(fractions) * 1_000_000 / 256)))
}

/// Current Time "Adjust Reason" bit 1: external reference time update (the gateway's clock,
/// itself kept by NTP).
pub const ADJUST_EXTERNAL_REFERENCE: u8 = 0x02;

/// Encodes `now` as a Current Time value (0x2A2B) for writing to a device: its UTC wall-clock
/// digits (the rule in the module doc), Day of Week 1 = Monday … 7 = Sunday, Fractions256,
/// and Adjust Reason "external reference time update". `None` outside the years a Date Time
/// can hold.
pub fn encode_current_time(now: OffsetDateTime) -> Option<[u8; 10]> {
    let t = now.to_offset(time::UtcOffset::UTC);
    let year = u16::try_from(t.year())
        .ok()
        .filter(|y| (1582..=9999).contains(y))?;
    let [y0, y1] = year.to_le_bytes();
    let fractions = u8::try_from(u32::from(t.millisecond()) * 256 / 1000).unwrap_or(u8::MAX);
    Some([
        y0,
        y1,
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.weekday().number_from_monday(),
        fractions,
        ADJUST_EXTERNAL_REFERENCE,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn decode(bytes: &[u8]) -> Result<Option<OffsetDateTime>, DecodeError> {
        read_date_time(&mut Reader::new(bytes), "time stamp")
    }

    #[test]
    fn date_time_is_little_endian_year_then_one_byte_each() {
        // 2013-12-05 10:20:30 (0x07DD = 2013).
        assert_eq!(
            decode(&[0xDD, 0x07, 12, 5, 10, 20, 30]),
            Ok(Some(datetime!(2013-12-05 10:20:30 UTC)))
        );
    }

    #[test]
    fn an_unknown_date_part_means_no_device_time() {
        assert_eq!(decode(&[0, 0, 12, 5, 10, 20, 30]), Ok(None));
        assert_eq!(decode(&[0xDD, 0x07, 0, 5, 10, 20, 30]), Ok(None));
        assert_eq!(decode(&[0xDD, 0x07, 12, 0, 10, 20, 30]), Ok(None));
    }

    #[test]
    fn out_of_range_parts_are_errors_naming_the_field() {
        for bytes in [
            [0x2D, 0x06, 1, 1, 0, 0, 0], // year 1581
            [0xDD, 0x07, 13, 1, 0, 0, 0],
            [0xDD, 0x07, 1, 32, 0, 0, 0],
            [0xDD, 0x07, 1, 1, 24, 0, 0],
            [0xDD, 0x07, 1, 1, 0, 60, 0],
            [0xDD, 0x07, 1, 1, 0, 0, 60],
            [0xDD, 0x07, 2, 30, 0, 0, 0], // 30 February
        ] {
            let err = decode(&bytes).unwrap_err();
            assert!(err.to_string().contains("`time stamp`"), "{err}");
        }
    }

    #[test]
    fn current_time_adds_fractions_of_a_second() {
        // 2020-02-29 23:59:58, Saturday (6), 128/256 s, adjust reason 0.
        let bytes = [0xE4, 0x07, 2, 29, 23, 59, 58, 6, 128, 0];
        assert_eq!(
            current_time(&bytes),
            Ok(Some(datetime!(2020-02-29 23:59:58.5 UTC)))
        );
        assert!(current_time(&bytes[..9]).is_err());
    }

    #[test]
    fn current_time_encodes_what_it_decodes() {
        // 2020-02-29 was a Saturday (6); 0.5 s is 128/256.
        let t = datetime!(2020-02-29 23:59:58.5 UTC);
        let bytes = encode_current_time(t).unwrap();
        assert_eq!(bytes, [0xE4, 0x07, 2, 29, 23, 59, 58, 6, 128, 0x02]);
        assert_eq!(current_time(&bytes), Ok(Some(t)));
        // Written as UTC digits whatever offset the gateway's time carries.
        assert_eq!(
            encode_current_time(datetime!(2020-03-01 00:59:58.5 +01:00)),
            Some(bytes)
        );
        assert_eq!(encode_current_time(datetime!(1500-01-01 0:00 UTC)), None);
    }
}
