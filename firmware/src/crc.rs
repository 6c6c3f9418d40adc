//! CRC-32 used to protect every frame.
//!
//! # Parameters
//!
//! The frame check is **CRC-32/ISO-HDLC**, the CRC of zlib, PNG, Ethernet and most
//! "CRC-32" helpers and hardware units:
//!
//! | parameter | value |
//! | --- | --- |
//! | width | 32 bits |
//! | polynomial | `0x04C11DB7` (normal form; `0xEDB88320` reflected) |
//! | init | `0xFFFFFFFF` |
//! | reflect input / output | yes / yes |
//! | xorout | `0xFFFFFFFF` |
//! | check (CRC of ASCII `123456789`) | `0xCBF43926` |
//!
//! On the wire the 32-bit result is written **little-endian** (least significant byte
//! first), after the bytes it covers. What it covers is defined in [`crate::frame`]: the
//! protocol version byte and the postcard payload, i.e. everything in the frame body before
//! the CRC itself. A useful property for receivers: running the same CRC over the body
//! *including* its little-endian CRC gives the constant residue `0x2144DF1C`.
//!
//! The implementation is the [`crc`](::crc) crate's, with the catalogue entry
//! `CRC_32_ISO_HDLC` (the parameters above): a 256-entry table built at compile time
//! (1 KiB of flash), one table lookup per byte. For data that arrives in pieces, use
//! [`CRC32`]`.digest()`.

use ::crc::{Crc, CRC_32_ISO_HDLC};

/// CRC-32/ISO-HDLC, with its lookup table. A `static`, so the table exists once in flash.
pub static CRC32: Crc<u32> = Crc::<u32>::new(&CRC_32_ISO_HDLC);

/// CRC-32/ISO-HDLC of `bytes` in one call.
pub fn crc32(bytes: &[u8]) -> u32 {
    CRC32.checksum(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn check_value_matches_the_catalogue() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(
            (
                CRC_32_ISO_HDLC.width,
                CRC_32_ISO_HDLC.poly,
                CRC_32_ISO_HDLC.init,
                CRC_32_ISO_HDLC.refin,
                CRC_32_ISO_HDLC.refout,
                CRC_32_ISO_HDLC.xorout,
            ),
            (32, 0x04C1_1DB7, 0xFFFF_FFFF, true, true, 0xFFFF_FFFF)
        );
    }

    #[test]
    fn empty_input_is_zero() {
        assert_eq!(crc32(&[]), 0);
    }

    #[test]
    fn body_with_its_crc_appended_leaves_the_residue() {
        let mut body = b"vitalbridge".to_vec();
        let crc = crc32(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        // Residue before xorout is 0xDEBB20E3; after xorout it is 0x2144DF1C.
        assert_eq!(crc32(&body), 0x2144_DF1C);
    }

    /// Bit by bit, straight from the parameters: what the table must agree with.
    fn bitwise(data: &[u8]) -> u32 {
        let mut register = 0xFFFF_FFFFu32;
        for &byte in data {
            register ^= u32::from(byte);
            for _ in 0..8 {
                let lsb = register & 1;
                register >>= 1;
                if lsb != 0 {
                    register ^= 0xEDB8_8320;
                }
            }
        }
        register ^ 0xFFFF_FFFF
    }

    proptest! {
        #[test]
        fn agrees_with_the_definition_bit_by_bit(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            prop_assert_eq!(crc32(&data), bitwise(&data));
        }

        #[test]
        fn incremental_equals_one_shot(data in proptest::collection::vec(any::<u8>(), 0..300), split in 0usize..300) {
            let split = split.min(data.len());
            let mut digest = CRC32.digest();
            digest.update(&data[..split]);
            digest.update(&data[split..]);
            prop_assert_eq!(digest.finalize(), crc32(&data));
        }
    }
}
