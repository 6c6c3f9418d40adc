//! IEEE 11073-20601 numeric types as they appear in Bluetooth SIG health characteristics:
//! the 16-bit SFLOAT and the 32-bit FLOAT ("medfloat16" / "medfloat32" in the GATT
//! Specification Supplement, §2.2 "Data types"; IEEE 11073-20601 §F.8 "FLOAT-Type" and
//! "SFLOAT-Type").
//!
//! # Format
//!
//! Both are little-endian on the air and are `mantissa × 10^exponent` with a signed
//! (two's-complement) exponent and mantissa:
//!
//! | type   | bits | exponent        | mantissa          |
//! |--------|------|-----------------|-------------------|
//! | SFLOAT | 16   | top 4 bits, i4  | low 12 bits, i12  |
//! | FLOAT  | 32   | top 8 bits, i8  | low 24 bits, i24  |
//!
//! The exponent carries the precision the device measured with: SFLOAT `0xE0C8` is mantissa
//! 200, exponent -2, i.e. `2.00`, and stays `Decimal::new(200, -2)`; it is never turned into
//! a binary float.
//!
//! # Special values
//!
//! With exponent 0, five mantissas are reserved. They never become numbers; each maps to an
//! [`AbsentReason`] (and, in FHIR, to the `dataAbsentReason` the HL7 PHD IG gives in its
//! "MDER FLOATs and SFLOATs" page):
//!
//! | SFLOAT  | FLOAT        | meaning        | [`AbsentReason`]     | FHIR                 |
//! |---------|--------------|----------------|----------------------|----------------------|
//! | `0x07FF`| `0x007FFFFF` | NaN            | `NotANumber`         | `not-a-number`       |
//! | `0x0800`| `0x00800000` | NRes           | `NotAtResolution`    | `error`              |
//! | `0x07FE`| `0x007FFFFE` | +INF           | `PositiveInfinity`   | `positive-infinity`  |
//! | `0x0802`| `0x00800002` | -INF           | `NegativeInfinity`   | `negative-infinity`  |
//! | `0x0801`| `0x00800001` | reserved (RFU) | `Error`              | `error`              |

use crate::model::{AbsentReason, Decimal, Measured};

/// Decodes a 16-bit SFLOAT from its two little-endian bytes.
pub fn sfloat(raw: u16) -> Measured {
    match raw {
        0x07FF => Measured::Absent(AbsentReason::NotANumber),
        0x0800 => Measured::Absent(AbsentReason::NotAtResolution),
        0x07FE => Measured::Absent(AbsentReason::PositiveInfinity),
        0x0802 => Measured::Absent(AbsentReason::NegativeInfinity),
        0x0801 => Measured::Absent(AbsentReason::Error),
        _ => {
            // Sign-extend the 4-bit exponent and the 12-bit mantissa.
            let exponent = ((raw as i16) >> 12) as i8;
            let mantissa = (((raw << 4) as i16) >> 4) as i64;
            Measured::Value(Decimal::new(mantissa, exponent))
        }
    }
}

/// Decodes a 32-bit FLOAT from its four little-endian bytes.
pub fn float(raw: u32) -> Measured {
    match raw {
        0x007F_FFFF => Measured::Absent(AbsentReason::NotANumber),
        0x0080_0000 => Measured::Absent(AbsentReason::NotAtResolution),
        0x007F_FFFE => Measured::Absent(AbsentReason::PositiveInfinity),
        0x0080_0002 => Measured::Absent(AbsentReason::NegativeInfinity),
        0x0080_0001 => Measured::Absent(AbsentReason::Error),
        _ => {
            let exponent = ((raw as i32) >> 24) as i8;
            let mantissa = (((raw << 8) as i32) >> 8) as i64;
            Measured::Value(Decimal::new(mantissa, exponent))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(m: i64, e: i8) -> Measured {
        Measured::Value(Decimal::new(m, e))
    }

    /// Vectors from the HL7 FHIR Personal Health Device IG, page "MDER FLOATs and SFLOATs"
    /// (input/pagecontent/MderFLOATsandSFLOATs.md in github.com/HL7/phd): hex, exponent,
    /// mantissa and the FHIR rendering.
    #[test]
    fn sfloat_matches_the_phd_ig_table() {
        let table: &[(u16, Measured, &str)] = &[
            (0x0002, value(2, 0), "2"),
            (0xF014, value(20, -1), "2.0"),
            (0xE0C8, value(200, -2), "2.00"),
            (0x1002, value(2, 1), "20"),
            (0x2002, value(2, 2), "200"),
            (0x00C8, value(200, 0), "200"),
            (0x04D2, value(1234, 0), "1234"),
            (0x0B2E, value(-1234, 0), "-1234"),
        ];
        for (raw, expected, text) in table {
            let got = sfloat(*raw);
            assert_eq!(got, *expected, "{raw:#06x}");
            if let Measured::Value(d) = got {
                assert_eq!(d.to_string(), *text, "{raw:#06x}");
            }
        }
    }

    /// Same source as above, FLOAT half of the table.
    #[test]
    fn float_matches_the_phd_ig_table() {
        let table: &[(u32, Measured, &str)] = &[
            (0x0000_0002, value(2, 0), "2"),
            (0xFF00_0014, value(20, -1), "2.0"),
            (0xFE00_00C8, value(200, -2), "2.00"),
            (0x0100_0002, value(2, 1), "20"),
            (0x0200_0002, value(2, 2), "200"),
            (0x0000_00C8, value(200, 0), "200"),
            (0x0000_04D2, value(1234, 0), "1234"),
            (0x00FF_FB2E, value(-1234, 0), "-1234"),
        ];
        for (raw, expected, text) in table {
            let got = float(*raw);
            assert_eq!(got, *expected, "{raw:#010x}");
            if let Measured::Value(d) = got {
                assert_eq!(d.to_string(), *text, "{raw:#010x}");
            }
        }
    }

    /// Special values, from the same PHD IG page and IEEE 11073-20601 §F.8.
    #[test]
    fn special_values_are_absent_never_numbers() {
        use AbsentReason::*;
        let s: &[(u16, AbsentReason)] = &[
            (0x07FF, NotANumber),
            (0x0800, NotAtResolution),
            (0x07FE, PositiveInfinity),
            (0x0802, NegativeInfinity),
            (0x0801, Error),
        ];
        for (raw, reason) in s {
            assert_eq!(sfloat(*raw), Measured::Absent(*reason), "{raw:#06x}");
        }
        let f: &[(u32, AbsentReason)] = &[
            (0x007F_FFFF, NotANumber),
            (0x0080_0000, NotAtResolution),
            (0x007F_FFFE, PositiveInfinity),
            (0x0080_0002, NegativeInfinity),
            (0x0080_0001, Error),
        ];
        for (raw, reason) in f {
            assert_eq!(float(*raw), Measured::Absent(*reason), "{raw:#010x}");
        }
    }

    #[test]
    fn special_mantissas_with_a_nonzero_exponent_are_ordinary_numbers() {
        // 0x17FF: exponent 1, mantissa 2047.
        assert_eq!(sfloat(0x17FF), value(2047, 1));
        // 0xF800: exponent -1, mantissa -2048.
        assert_eq!(sfloat(0xF800), value(-2048, -1));
        assert_eq!(float(0x017F_FFFF), value(8_388_607, 1));
    }

    #[test]
    fn every_sfloat_decodes_without_panicking() {
        for raw in 0..=u16::MAX {
            let _ = sfloat(raw);
        }
    }
}
