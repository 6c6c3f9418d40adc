//! Consistent Overhead Byte Stuffing (COBS), which removes every `0x00` from a frame body so
//! that `0x00` can delimit frames on the wire.
//!
//! # Format
//!
//! The body is cut at each `0x00` into groups. Each group is written as one *code* byte
//! followed by its non-zero bytes, where code = 1 + the number of those bytes; the `0x00`
//! that ended the group is implied. A run of 254 non-zero bytes without a `0x00` is written
//! with code `0xFF`, which implies no `0x00`; the run goes on in the next group. The last
//! group implies no `0x00` either (the body did not end with one).
//!
//! This encoder never writes an empty trailing group: a body whose last group is a full
//! 254-byte `0xFF` group ends there (the decoder also accepts a trailing `01`). The empty
//! body encodes as `01`. Worked examples:
//!
//! | body | encoded |
//! | --- | --- |
//! | (empty) | `01` |
//! | `00` | `01 01` |
//! | `11 22 00 33` | `03 11 22 02 33` |
//! | `11 00 00` | `02 11 01 01` |
//!
//! Encoding adds at most `1 + len / 254` bytes ([`max_encoded_len`]). Decoding needs no
//! extra space and can run in place ([`decode_in_place`]).
//!
//! Hand-written on purpose: postcard's `Cobs` flavor writes an empty group after a final
//! full group (a different frame on the wire), and the `cobs` crate it uses needs guards
//! for three edge cases and is larger on a Cortex-M; the crate README ("What it builds on")
//! has the details and numbers.

/// Most bytes [`encode`] writes for a body of `len` bytes.
pub const fn max_encoded_len(len: usize) -> usize {
    len + len / 254 + 1
}

/// The input was not valid COBS: a `0x00` inside it, or a code byte pointing past its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CobsError;

/// `dst` is too small for the encoded body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DstTooSmall;

/// COBS-encodes `src` into `dst`, returning the number of bytes written. Writes no
/// delimiter.
pub fn encode(src: &[u8], dst: &mut [u8]) -> Result<usize, DstTooSmall> {
    let mut code_at = 0; // where the current group's code byte goes
    let mut out = 1; // where the next data byte goes
    let mut code: u8 = 1;
    if dst.is_empty() {
        return Err(DstTooSmall);
    }
    for (i, &byte) in src.iter().enumerate() {
        if byte == 0 {
            dst[code_at] = code;
            code_at = out;
            out += 1;
            code = 1;
            if code_at >= dst.len() {
                return Err(DstTooSmall);
            }
            continue;
        }
        *dst.get_mut(out).ok_or(DstTooSmall)? = byte;
        out += 1;
        code += 1;
        if code == 0xFF {
            dst[code_at] = code;
            if i + 1 == src.len() {
                // The full group ends the body: no empty trailing group.
                return Ok(out);
            }
            code_at = out;
            out += 1;
            code = 1;
            if code_at >= dst.len() {
                return Err(DstTooSmall);
            }
        }
    }
    dst[code_at] = code;
    Ok(out)
}

/// Decodes COBS bytes (without the delimiter) in place; the body is `buf[..n]` for the
/// returned `n`.
pub fn decode_in_place(buf: &mut [u8]) -> Result<usize, CobsError> {
    let mut read = 0;
    let mut write = 0;
    while read < buf.len() {
        let code = buf[read];
        if code == 0 {
            return Err(CobsError);
        }
        read += 1;
        let run = usize::from(code - 1);
        let end = read.checked_add(run).ok_or(CobsError)?;
        let data = buf.get(read..end).ok_or(CobsError)?;
        if data.contains(&0) {
            return Err(CobsError);
        }
        buf.copy_within(read..end, write);
        write += run;
        read = end;
        if code != 0xFF && read < buf.len() {
            // The implied zero that ended this group (write < read, so it is in bounds).
            buf[write] = 0;
            write += 1;
        }
    }
    Ok(write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(src: &[u8]) -> std::vec::Vec<u8> {
        let mut dst = std::vec![0u8; max_encoded_len(src.len())];
        let n = encode(src, &mut dst).expect("sized by max_encoded_len");
        dst.truncate(n);
        dst
    }

    fn dec(src: &[u8]) -> Result<std::vec::Vec<u8>, CobsError> {
        let mut buf = src.to_vec();
        let n = decode_in_place(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    #[test]
    fn module_doc_examples_hold() {
        let cases: &[(&[u8], &[u8])] = &[
            (&[], &[0x01]),
            (&[0x00], &[0x01, 0x01]),
            (&[0x11, 0x22, 0x00, 0x33], &[0x03, 0x11, 0x22, 0x02, 0x33]),
            (&[0x11, 0x00, 0x00], &[0x02, 0x11, 0x01, 0x01]),
        ];
        for (body, encoded) in cases {
            assert_eq!(enc(body), *encoded, "encoding {body:02x?}");
            assert_eq!(dec(encoded).unwrap(), *body, "decoding {encoded:02x?}");
        }
    }

    #[test]
    fn a_full_group_at_the_end_gets_no_trailing_group() {
        let body = [0x42u8; 254];
        let encoded = enc(&body);
        assert_eq!(encoded.len(), 255);
        assert_eq!(encoded[0], 0xFF);
        assert_eq!(dec(&encoded).unwrap(), body);
        // The decoder also accepts the variant with an empty trailing group.
        let mut with_trailer = encoded.clone();
        with_trailer.push(0x01);
        assert_eq!(dec(&with_trailer).unwrap(), body);
    }

    #[test]
    fn a_full_group_followed_by_a_zero() {
        let mut body = std::vec![0x42u8; 254];
        body.push(0);
        let encoded = enc(&body);
        assert_eq!(&encoded[255..], &[0x01, 0x01]);
        assert_eq!(dec(&encoded).unwrap(), body);
    }

    #[test]
    fn rejects_zero_bytes_and_overlong_codes() {
        assert_eq!(dec(&[0x03, 0x11, 0x00]), Err(CobsError));
        assert_eq!(dec(&[0x05, 0x11, 0x22]), Err(CobsError));
        assert_eq!(dec(&[0x00]), Err(CobsError));
    }

    #[test]
    fn too_small_destination_is_an_error_not_a_panic() {
        for body in [&[][..], &[0u8, 0, 0][..], &[1u8; 300][..]] {
            for size in 0..max_encoded_len(body.len()) {
                let mut dst = std::vec![0u8; size];
                let needed = enc(body).len();
                let result = encode(body, &mut dst);
                if size < needed {
                    assert_eq!(result, Err(DstTooSmall), "size {size}");
                } else {
                    assert_eq!(result, Ok(needed));
                }
            }
        }
    }

    proptest! {
        #[test]
        fn round_trips_and_never_contains_zero(body in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let encoded = enc(&body);
            prop_assert!(!encoded.contains(&0));
            prop_assert!(encoded.len() <= max_encoded_len(body.len()));
            prop_assert_eq!(dec(&encoded).unwrap(), body);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = dec(&bytes);
        }
    }
}
