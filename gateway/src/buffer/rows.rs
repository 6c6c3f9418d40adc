//! What the buffer's rows hold, sealed: a reading's body and a dead letter's envelope.
//!
//! # `readings`
//! `dedup` = the reading's key (the UNIQUE column that stores a retransmission once), 22
//! bytes: the reading's identity time ([`Reading::identity_time`], the device time as
//! reported, else the receive time) in whole Unix seconds, 6 bytes big-endian (clamped to
//! 0 ..= 2⁴⁸ − 1), then the keyed hash of [`Reading::identifier`] in domain `reading`
//! (16 bytes). `body` = [`codec`] bytes sealed with the `dedup` bytes as associated data.
//! The same key is the `unbound` table's `dedup` and what the memory of delivered readings
//! holds (migration 0006).
//!
//! The time comes first so that keys made together sort together: readings arrive, are
//! stored, delivered and remembered at about the time they were taken, so each commit's new
//! keys land on a few neighbouring pages of each index instead of one random page per
//! reading (a random page is a 4 KiB write to the WAL and again at the checkpoint). The
//! time is to the second and is no patient data; `received_ms` is in clear beside it.
//!
//! Rows written before schema 6 carry the 16-byte hash alone; [`open_reading`] accepts
//! both, and opening a database of schema 6 gives its pending rows the 22-byte key
//! (`buffer/open.rs`).
//!
//! # `dead_letters`
//! `dedup` = for a `payload` row, the keyed hash (domain `payload`) of the origin and the
//! payload's SHA-256, so the same bad payload redelivered a thousand times is one row (its
//! `seen` count goes up); for a `reading` row, the keyed hash of the reading's identifier
//! (the last 16 bytes of its `readings.dedup`). `body` = the
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

/// Bytes of the identity time that begins a reading's key.
const TIME_LEN: usize = 6;

/// Length of a reading's key (`readings.dedup`): the identity time, then the hash.
pub const READING_KEY_LEN: usize = TIME_LEN + DEDUP_LEN;

/// A reading ready for the `readings` table.
pub struct SealedReading {
    /// The reading's key ([`reading_key`]).
    pub dedup: [u8; READING_KEY_LEN],
    /// Sealed codec body.
    pub body: Vec<u8>,
}

/// The keyed hash of a reading identifier.
pub fn reading_dedup(key: &BufferKey, identifier: &str) -> [u8; DEDUP_LEN] {
    key.dedup(READING, identifier.as_bytes())
}

/// A reading's key: its identity time in seconds (6 bytes big-endian), then the keyed hash
/// of its identifier.
pub fn reading_key(key: &BufferKey, r: &Reading) -> [u8; READING_KEY_LEN] {
    with_time(r, &reading_dedup(key, &r.identifier()))
}

fn with_time(r: &Reading, hash: &[u8; DEDUP_LEN]) -> [u8; READING_KEY_LEN] {
    let secs = r.identity_time().unix_timestamp().clamp(0, (1 << 48) - 1) as u64;
    let mut out = [0u8; READING_KEY_LEN];
    out[..TIME_LEN].copy_from_slice(&secs.to_be_bytes()[8 - TIME_LEN..]);
    out[TIME_LEN..].copy_from_slice(hash);
    out
}

/// Seals a reading for the `readings` table.
pub fn seal_reading(key: &BufferKey, r: &Reading) -> SealedReading {
    let dedup = reading_key(key, r);
    let body = key.seal_with(&dedup, 192, |out| codec::encode_into(r, out));
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

/// Opens and decodes a `readings` row. The body belongs to its `dedup` (a reading's key, or
/// the hash alone in a row written before schema 6) because that is the associated data it
/// was sealed with: a body moved under another row's key does not open. The key is not
/// computed again from the reading: that would cost a keyed hash per delivered reading,
/// protect against no one without the buffer key, and refuse every waiting row should a later
/// version change how identifiers are written.
pub fn open_reading(key: &BufferKey, dedup: &[u8], body: &[u8]) -> Result<Reading, CodecError> {
    codec::decode(&open_reading_bytes(key, dedup, body)?)
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
    fn a_reading_key_is_its_identity_time_in_seconds_then_the_hash_of_its_identifier() {
        let k = key();
        let r = codec::tests::sample();
        let key = reading_key(&k, &r);
        // 2026-01-02 03:04:05.678 -05:00, the device time as reported.
        let secs: u64 = 1_767_341_045;
        assert_eq!(key[..6], secs.to_be_bytes()[2..]);
        assert_eq!(key[6..], reading_dedup(&k, &r.identifier()));
        // Readings taken later sort after it, whatever their hash.
        for later in 1..50 {
            let mut next = r.clone();
            next.device_time = Some(r.device_time.unwrap() + time::Duration::seconds(later));
            assert!(reading_key(&k, &next) > key, "{later}");
        }
        // Without a device clock, the receive time; a time before 1970 clamps to 0.
        let mut no_clock = r.clone();
        no_clock.device_time = None;
        assert_eq!(
            reading_key(&k, &no_clock)[..6],
            1_767_341_047u64.to_be_bytes()[2..]
        );
        no_clock.received_at = time::OffsetDateTime::UNIX_EPOCH - time::Duration::days(1);
        assert_eq!(reading_key(&k, &no_clock)[..6], [0; 6]);
    }

    #[test]
    fn a_row_opens_under_its_key_or_its_schema_5_hash_and_under_no_other() {
        let k = key();
        let r = codec::tests::sample();
        let sealed = seal_reading(&k, &r);
        assert_eq!(open_reading(&k, &sealed.dedup, &sealed.body).unwrap(), r);
        // As schema 5 wrote it: the hash alone, also the associated data.
        let hash = reading_dedup(&k, &r.identifier());
        let old = k.seal(&hash, &codec::encode(&r));
        assert_eq!(open_reading(&k, &hash, &old).unwrap(), r);
        // A body moved under another reading's key, or its schema-5 hash, does not open.
        let mut other = r.clone();
        other.sequence = Some(100);
        let other_key = reading_key(&k, &other);
        assert!(open_reading(&k, &other_key, &sealed.body).is_err());
        assert!(open_reading(&k, &hash, &sealed.body).is_err());
        let mut wrong_time = sealed.dedup;
        wrong_time[5] ^= 1;
        assert!(open_reading(&k, &wrong_time, &sealed.body).is_err());
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
