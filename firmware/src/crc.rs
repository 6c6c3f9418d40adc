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
//! The implementation is a 256-entry table built at compile time (1 KiB of flash), one
//! table lookup per byte.

/// The reflected form of the CRC-32/ISO-HDLC polynomial `0x04C11DB7`.
const POLY_REFLECTED: u32 = 0xEDB8_8320;

/// One entry per byte value: the CRC register after shifting that byte through.
static TABLE: [u32; 256] = build_table();

const fn build_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ POLY_REFLECTED
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

/// An incremental CRC-32/ISO-HDLC computation, for data that arrives in pieces.
#[derive(Debug, Clone, Copy)]
pub struct Crc32 {
    /// The running register, before the final xor.
    state: u32,
}

impl Crc32 {
    /// A fresh computation (register = init `0xFFFFFFFF`).
    pub const fn new() -> Self {
        Self { state: 0xFFFF_FFFF }
    }

    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut c = self.state;
        for &b in bytes {
            c = TABLE[usize::from((c as u8) ^ b)] ^ (c >> 8);
        }
        self.state = c;
    }

    /// The CRC of everything fed so far (after xorout).
    pub const fn finish(&self) -> u32 {
        self.state ^ 0xFFFF_FFFF
    }
}

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

/// CRC-32/ISO-HDLC of `bytes` in one call.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = Crc32::new();
    crc.update(bytes);
    crc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn check_value_matches_the_catalogue() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
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

    proptest! {
        #[test]
        fn agrees_with_an_independent_implementation(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let reference = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
            prop_assert_eq!(crc32(&data), reference.checksum(&data));
        }

        #[test]
        fn incremental_equals_one_shot(data in proptest::collection::vec(any::<u8>(), 0..300), split in 0usize..300) {
            let split = split.min(data.len());
            let mut crc = Crc32::new();
            crc.update(&data[..split]);
            crc.update(&data[split..]);
            prop_assert_eq!(crc.finish(), crc32(&data));
        }
    }
}
