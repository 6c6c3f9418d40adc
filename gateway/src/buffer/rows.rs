//! What the buffer's rows hold, sealed: a reading's body and a dead letter's envelope.
//!
//! # `readings`
//! `dedup` = the keyed hash of [`Reading::identifier`] in domain `reading` (16 bytes; the
//! UNIQUE column that stores a retransmission once), `body` = [`codec`] bytes sealed with
//! the `dedup` bytes as associated data.
//!
//! # `dead_letters`
//! `dedup` = for a `payload` row, the keyed hash (domain `payload`) of the origin and the
//! payload's SHA-256, so the same bad payload redelivered a thousand times is one row (its
//! `seen` count goes up); for a `reading` row, the reading's own `dedup`. `body` = the
//! envelope below, sealed with associated data `dead-letter`:
//!
//! ```text
//! [1 byte version = 1]
//! 4 × [u32 LE length][bytes]: origin, reason, identifier (empty: none), content
//! [u64 LE size of the whole original][32 bytes SHA-256 of the whole original]
//! ```
//! `content` is a payload's first [`crate::pipeline::MAX_KEPT_PAYLOAD`] bytes, or a reading's
//! [`codec`] body. The origin (a topic may name a patient), the reason (a server's
//! diagnostics may quote a value) and the identifier (it embeds the patient's) are all inside.

use super::codec::{self, CodecError};
use super::seal::{BufferKey, DEDUP_LEN};
use crate::model::Reading;
use crate::pipeline::Rejected;

/// Keyed-hash domain of reading identifiers.
const READING: &[u8] = b"reading";
/// Keyed-hash domain of bad payloads.
const PAYLOAD: &[u8] = b"payload";
/// Associated data of dead-letter envelopes.
const DEAD_LETTER_AAD: &[u8] = b"dead-letter";
/// Envelope format version.
const ENVELOPE_VERSION: u8 = 1;

/// A reading ready for the `readings` table.
pub struct SealedReading {
    /// Keyed hash of the identifier.
    pub dedup: [u8; DEDUP_LEN],
    /// Sealed codec body.
    pub body: Vec<u8>,
}

/// The keyed hash of a reading identifier.
pub fn reading_dedup(key: &BufferKey, identifier: &str) -> [u8; DEDUP_LEN] {
    key.dedup(READING, identifier.as_bytes())
}

/// Seals a reading for the `readings` table.
pub fn seal_reading(key: &BufferKey, r: &Reading) -> SealedReading {
    let dedup = reading_dedup(key, &r.identifier());
    let body = key.seal(&dedup, &codec::encode(r));
    SealedReading { dedup, body }
}

/// Opens a `readings` row: its plain codec bytes.
pub fn open_reading_bytes(
    key: &BufferKey,
    dedup: &[u8],
    body: &[u8],
) -> Result<Vec<u8>, CodecError> {
    key.open(dedup, body).map_err(CodecError::Sealed)
}

/// Opens and decodes a `readings` row, checking that the body belongs to its `dedup`.
pub fn open_reading(key: &BufferKey, dedup: &[u8], body: &[u8]) -> Result<Reading, CodecError> {
    let reading = codec::decode(&open_reading_bytes(key, dedup, body)?)?;
    if reading_dedup(key, &reading.identifier()) != dedup {
        return Err(CodecError::Body(
            "the body does not match its row's identifier".into(),
        ));
    }
    Ok(reading)
}

/// A dead letter's envelope, in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Where it came from (`mqtt:<topic>`, `serial:<port>`, `uplink:<name>`).
    pub origin: String,
    /// Why it is here.
    pub reason: String,
    /// A reading's identifier (reading rows only).
    pub identifier: Option<String>,
    /// A payload's kept prefix, or a reading's codec body.
    pub content: Vec<u8>,
    /// Size of the whole original.
    pub size: u64,
    /// SHA-256 of the whole original.
    pub sha256: [u8; 32],
}

impl Envelope {
    /// The envelope of a payload a source could not decode.
    pub fn of_payload(r: &Rejected) -> Self {
        Self {
            origin: r.origin.clone(),
            reason: r.reason.clone(),
            identifier: None,
            content: r.payload.clone(),
            size: r.size,
            sha256: r.sha256,
        }
    }

    /// The envelope of a reading an uplink gave up on, from its codec bytes.
    pub fn of_reading(
        origin: &str,
        reason: &str,
        identifier: Option<String>,
        body: Vec<u8>,
    ) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &body);
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest.as_ref());
        Self {
            origin: origin.to_owned(),
            reason: reason.to_owned(),
            identifier,
            size: body.len() as u64,
            content: body,
            sha256,
        }
    }

    /// Serializes and seals the envelope.
    pub fn seal(&self, key: &BufferKey) -> Vec<u8> {
        let identifier = self.identifier.as_deref().unwrap_or("");
        let fields: [&[u8]; 4] = [
            self.origin.as_bytes(),
            self.reason.as_bytes(),
            identifier.as_bytes(),
            &self.content,
        ];
        let mut out =
            Vec::with_capacity(1 + 16 + fields.iter().map(|f| f.len()).sum::<usize>() + 40);
        out.push(ENVELOPE_VERSION);
        for f in fields {
            out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            out.extend_from_slice(f);
        }
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.sha256);
        key.seal(DEAD_LETTER_AAD, &out)
    }

    /// Opens and parses a sealed envelope.
    pub fn open(key: &BufferKey, sealed: &[u8]) -> Result<Self, CodecError> {
        let plain = key
            .open(DEAD_LETTER_AAD, sealed)
            .map_err(CodecError::Sealed)?;
        Self::parse(&plain).ok_or_else(|| CodecError::Body("malformed dead-letter envelope".into()))
    }

    fn parse(bytes: &[u8]) -> Option<Self> {
        let (&version, mut rest) = bytes.split_first()?;
        if version != ENVELOPE_VERSION {
            return None;
        }
        let mut field = || -> Option<&[u8]> {
            let (len, tail) = rest.split_first_chunk::<4>()?;
            let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
            let (value, tail) = (tail.get(..len)?, tail.get(len..)?);
            rest = tail;
            Some(value)
        };
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
        let origin = text(field()?)?;
        let reason = text(field()?)?;
        let identifier = text(field()?)?;
        let content = field()?.to_vec();
        let (size, tail) = rest.split_first_chunk::<8>()?;
        let sha256: [u8; 32] = tail.try_into().ok()?;
        Some(Self {
            origin,
            reason,
            identifier: (!identifier.is_empty()).then_some(identifier),
            content,
            size: u64::from_le_bytes(*size),
            sha256,
        })
    }
}

/// The dedup hash of a bad payload: the same bytes from the same origin are one row.
pub fn payload_dedup(key: &BufferKey, r: &Rejected) -> [u8; DEDUP_LEN] {
    let mut data = Vec::with_capacity(r.origin.len() + 1 + 32);
    data.extend_from_slice(r.origin.as_bytes());
    data.push(0);
    data.extend_from_slice(&r.sha256);
    key.dedup(PAYLOAD, &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> BufferKey {
        BufferKey::from_bytes(&[9; 32])
    }

    #[test]
    fn envelopes_round_trip_and_hide_their_text() {
        let k = key();
        let rejected = Rejected::new(
            "mqtt:ward/patient-4711".into(),
            "value: not a number".into(),
            b"{\"patient\":\"4711\",\"value\":\"x\"}",
        );
        let env = Envelope::of_payload(&rejected);
        let sealed = env.seal(&k);
        for clear in [&b"4711"[..], b"not a number", b"patient"] {
            assert!(!sealed.windows(clear.len()).any(|w| w == clear));
        }
        assert_eq!(Envelope::open(&k, &sealed).unwrap(), env);
        let reading =
            Envelope::of_reading("uplink:fhir", "422", Some("A-1".into()), b"{}".to_vec());
        assert_eq!(Envelope::open(&k, &reading.seal(&k)).unwrap(), reading);
        assert!(Envelope::open(&BufferKey::from_bytes(&[1; 32]), &sealed).is_err());
    }

    #[test]
    fn malformed_envelopes_are_errors_not_panics() {
        for bytes in [
            &[][..],
            &[1],
            &[2, 0, 0, 0, 0],
            &[1, 255, 255, 255, 255],
            &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ] {
            assert_eq!(Envelope::parse(bytes), None);
        }
    }

    #[test]
    fn the_same_payload_from_the_same_origin_has_one_dedup_hash() {
        let k = key();
        let a = Rejected::new("mqtt:t".into(), "x".into(), b"garbage");
        let b = Rejected::new("mqtt:t".into(), "other reason".into(), b"garbage");
        let c = Rejected::new("mqtt:u".into(), "x".into(), b"garbage");
        assert_eq!(payload_dedup(&k, &a), payload_dedup(&k, &b));
        assert_ne!(payload_dedup(&k, &a), payload_dedup(&k, &c));
    }
}
