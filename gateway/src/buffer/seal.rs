//! Encryption at rest of everything the buffer keeps about a patient.
//!
//! Every buffered reading and every dead letter is sealed with an AEAD before it reaches
//! SQLite, and the columns SQLite must compare (a reading's identifier for deduplication, a
//! bad payload's content for "dead-lettered once") hold keyed hashes instead of text. So
//! `buffer.db`, its WAL and any page SQLite frees hold no patient identifier or value in
//! clear, and a copy of the data directory without the key reveals nothing but counts,
//! times (receive times, and each reading's own time to the second, which begins its key:
//! `buffer/rows.rs`) and device keys.
//!
//! # The key file
//! 32 random bytes, written either raw (exactly 32 bytes) or as 64 hexadecimal digits
//! (surrounding whitespace ignored: `vitalbridge buffer-key new FILE` writes this form). It
//! must be readable by the gateway's user only (the rules of [`crate::keyfile`]) and must
//! not live under `data_dir`: a key beside the data it protects protects nothing. Under
//! systemd it is a credential (`LoadCredentialEncrypted=`, sealed to the TPM2 where the hub
//! has one), see `systemd/README.md`.
//!
//! # What is derived from it
//! HKDF-SHA256 (salt `vitalbridge buffer v1`) expands the key file's 32 bytes into:
//! - `seal`: a ChaCha20-Poly1305 key (chosen over AES-GCM because many ARM hubs have no AES
//!   instructions, where ChaCha20 is several times faster and constant-time in software);
//! - `dedup`: an HMAC-SHA256 key for the keyed hashes (truncated to 16 bytes);
//! - `id`: 8 bytes that name the key without revealing it. The buffer records the id of the
//!   key its rows are sealed with (table `meta`); a different key is refused at open, before
//!   anything is read or deleted.
//!
//! # A sealed value
//! `[1 byte format = 1][12 bytes random nonce][ciphertext][16 bytes Poly1305 tag]`. The
//! caller's associated data binds a value to where it belongs (a reading body to its row's
//! dedup hash), so rows cannot be swapped undetected. Random 96-bit nonces keep the chance of
//! a repeat below 2^-32 for the first 2^32 values sealed under one key; rotate the key long
//! before a hub seals that many (at 1,000 readings/s, 50 days; a home hub takes centuries).

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ring::aead::{self, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};

/// Format byte of a sealed value.
const FORMAT: u8 = 1;
/// Bytes a sealed value adds to its plaintext.
pub const OVERHEAD: usize = 1 + NONCE_LEN + 16;
/// Length of a key file's key.
pub const KEY_LEN: usize = 32;
/// Length of a keyed hash.
pub const DEDUP_LEN: usize = 16;
/// Largest key file read (a hex key with a newline and some whitespace is far smaller).
const MAX_KEY_FILE: u64 = 1024;
/// HKDF salt: changes only with an incompatible scheme.
const SALT: &[u8] = b"vitalbridge buffer v1";

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file does not exist.
    #[error("the buffer key file {} does not exist", .0.display())]
    Missing(PathBuf),
    /// The key file cannot be read or created.
    #[error("cannot use the buffer key file {}", .path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Others may read the key.
    #[error(transparent)]
    Permissions(#[from] crate::keyfile::KeyFileError),
    /// The file does not hold a key.
    #[error(
        "the buffer key file {} holds no key: it must be 32 bytes, or 64 hexadecimal digits \
         (create one with `vitalbridge buffer-key new FILE`)",
        .0.display()
    )]
    Format(PathBuf),
}

/// A sealed value could not be opened: damaged, or sealed under another key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sealed value is damaged or was sealed with another key")]
pub struct OpenError;

/// The 8-byte name of a key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The buffer's key: seals and opens values and makes keyed hashes.
pub struct BufferKey {
    seal: LessSafeKey,
    dedup: hmac::Key,
    id: KeyId,
}

impl fmt::Debug for BufferKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BufferKey({})", self.id)
    }
}

/// An HKDF output length.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn derive<const N: usize>(prk: &hkdf::Prk, info: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    // Cannot fail: N is far below HKDF-SHA256's limit of 255 × 32 bytes.
    if let Ok(okm) = prk.expand(&[info], Len(N)) {
        let _ = okm.fill(&mut out);
    }
    out
}

impl BufferKey {
    /// The key derived from a key file's 32 bytes.
    pub fn from_bytes(master: &[u8; KEY_LEN]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(master);
        let seal_key: [u8; 32] = derive(&prk, b"seal");
        let dedup_key: [u8; 32] = derive(&prk, b"dedup");
        let id: [u8; 8] = derive(&prk, b"key-id");
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &seal_key)
            .expect("a 32-byte key is valid for ChaCha20-Poly1305");
        Self {
            seal: LessSafeKey::new(unbound),
            dedup: hmac::Key::new(hmac::HMAC_SHA256, &dedup_key),
            id: KeyId(id),
        }
    }

    /// Reads a key file, refusing one that others may read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeyError::Missing(path.into()))
            }
            Err(source) => {
                return Err(KeyError::Io {
                    path: path.into(),
                    source,
                })
            }
        };
        if !meta.is_file() || meta.len() > MAX_KEY_FILE {
            return Err(KeyError::Format(path.into()));
        }
        crate::keyfile::check_private(path)?;
        let bytes = std::fs::read(path).map_err(|source| KeyError::Io {
            path: path.into(),
            source,
        })?;
        parse_key(&bytes)
            .map(|k| Self::from_bytes(&k))
            .ok_or_else(|| KeyError::Format(path.into()))
    }

    /// Creates a new random key file at `path` (mode 0600, its directory 0700 if it must be
    /// created); fails if the file exists.
    pub fn create(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.into(),
            source,
        };
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| io(std::io::Error::other("no system randomness")))?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        file.write_all(format!("{hex}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io)?;
        Ok(Self::from_bytes(&key))
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Seals `plaintext`, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        self.seal_with(aad, plaintext.len(), |out| out.extend_from_slice(plaintext))
    }

    /// Seals what `write` appends to the buffer it is given (about `len` bytes), bound to
    /// `aad`: the plaintext is written where it is sealed, not copied there.
    pub(super) fn seal_with(
        &self,
        aad: &[u8],
        len: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Vec<u8> {
        let nonce = random_nonce();
        let mut out = Vec::with_capacity(len + OVERHEAD);
        out.push(FORMAT);
        out.extend_from_slice(&nonce);
        write(&mut out);
        let tag = self
            .seal
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                &mut out[1 + NONCE_LEN..],
            )
            .expect("ChaCha20-Poly1305 seals any buffer shorter than 256 GiB");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Opens a value sealed with this key and `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < OVERHEAD || sealed[0] != FORMAT {
            return Err(OpenError);
        }
        let nonce =
            Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN]).map_err(|_| OpenError)?;
        let mut body = sealed[1 + NONCE_LEN..].to_vec();
        let plain = self
            .seal
            .open_in_place(nonce, aead::Aad::from(aad), &mut body)
            .map_err(|_| OpenError)?;
        let n = plain.len();
        body.truncate(n);
        Ok(body)
    }

    /// A keyed hash of `data` in `domain` (so equal bytes in two roles hash apart).
    pub fn dedup(&self, domain: &[u8], data: &[u8]) -> [u8; DEDUP_LEN] {
        let mut ctx = hmac::Context::with_key(&self.dedup);
        ctx.update(&(domain.len() as u32).to_le_bytes());
        ctx.update(domain);
        ctx.update(data);
        let tag = ctx.sign();
        let mut out = [0u8; DEDUP_LEN];
        out.copy_from_slice(&tag.as_ref()[..DEDUP_LEN]);
        out
    }
}

/// Nonces drawn from the system's randomness at a time: one `getrandom` system call per
/// this many sealed values instead of one each (it was one of the ten system calls a reading
/// cost). The bytes are the same randomness, handed out in order and never twice.
const NONCES_PER_DRAW: usize = 256;

/// A fresh random nonce, from this thread's pool of random bytes (refilled when used up).
fn random_nonce() -> [u8; NONCE_LEN] {
    struct Pool {
        bytes: [u8; NONCE_LEN * NONCES_PER_DRAW],
        used: usize,
    }
    thread_local! {
        static POOL: std::cell::RefCell<Pool> = const {
            std::cell::RefCell::new(Pool {
                bytes: [0; NONCE_LEN * NONCES_PER_DRAW],
                used: NONCE_LEN * NONCES_PER_DRAW,
            })
        };
    }
    POOL.with_borrow_mut(|pool| {
        if pool.used == pool.bytes.len() {
            // The system's randomness does not fail on Linux once booted; if it ever did, the
            // old bytes would be handed out again, so refuse to go on rather than seal with
            // a repeated nonce.
            SystemRandom::new()
                .fill(&mut pool.bytes)
                .expect("the system random number generator failed");
            pool.used = 0;
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&pool.bytes[pool.used..pool.used + NONCE_LEN]);
        pool.used += NONCE_LEN;
        nonce
    })
}

/// A key file's key: exactly 32 bytes, or 64 hex digits with optional surrounding whitespace.
fn parse_key(bytes: &[u8]) -> Option<[u8; KEY_LEN]> {
    let text = std::str::from_utf8(bytes).ok().map(str::trim);
    if let Some(hex) = text.filter(|t| t.len() == KEY_LEN * 2) {
        let mut key = [0u8; KEY_LEN];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        return Some(key);
    }
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> BufferKey {
        BufferKey::from_bytes(&[b; KEY_LEN])
    }

    #[test]
    fn a_sealed_value_opens_with_the_same_key_and_aad_only() {
        let k = key(1);
        let sealed = k.seal(b"row-1", b"spo2 97 %");
        assert_eq!(sealed.len(), 9 + OVERHEAD);
        assert!(!sealed.windows(2).any(|w| w == b"97"), "no plaintext");
        assert_eq!(k.open(b"row-1", &sealed).unwrap(), b"spo2 97 %");
        assert_eq!(k.open(b"row-2", &sealed), Err(OpenError));
        assert_eq!(key(2).open(b"row-1", &sealed), Err(OpenError));
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert_eq!(k.open(b"row-1", &flipped), Err(OpenError));
        assert_eq!(k.open(b"row-1", &sealed[..10]), Err(OpenError));
        assert_eq!(k.open(b"row-1", &[]), Err(OpenError));
    }

    #[test]
    fn sealing_twice_gives_different_bytes() {
        let k = key(1);
        assert_ne!(k.seal(b"", b"x"), k.seal(b"", b"x"));
    }

    /// Nonces come from a pool refilled every [`NONCES_PER_DRAW`]: none repeats across
    /// refills, on one thread or several.
    #[test]
    fn no_nonce_repeats_across_refills_and_threads() {
        let nonces = |n: usize| {
            let k = key(1);
            (0..n)
                .map(|_| k.seal(b"", b"x")[1..1 + NONCE_LEN].to_vec())
                .collect::<Vec<_>>()
        };
        let mut all = nonces(NONCES_PER_DRAW * 5 + 3);
        let other = std::thread::spawn(move || nonces(NONCES_PER_DRAW * 2));
        all.extend(other.join().unwrap());
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        assert!(all.iter().all(|nonce| nonce.iter().any(|&b| b != 0)));
    }

    #[test]
    fn keyed_hashes_depend_on_key_domain_and_data() {
        let (a, b) = (key(1), key(2));
        assert_eq!(a.dedup(b"id", b"x"), a.dedup(b"id", b"x"));
        assert_ne!(a.dedup(b"id", b"x"), b.dedup(b"id", b"x"));
        assert_ne!(a.dedup(b"id", b"x"), a.dedup(b"payload", b"x"));
        assert_ne!(a.dedup(b"id", b"x"), a.dedup(b"id", b"y"));
        // The domain's length is hashed too: no ambiguity between domain and data.
        assert_ne!(a.dedup(b"ab", b"c"), a.dedup(b"a", b"bc"));
    }

    #[test]
    fn key_ids_differ_per_key_and_reveal_nothing_of_it() {
        assert_eq!(key(1).id(), key(1).id());
        assert_ne!(key(1).id(), key(2).id());
        assert_ne!(key(1).id().0, [1u8; 8]);
        assert_eq!(key(1).id().to_string().len(), 16);
    }

    #[test]
    fn key_files_hold_raw_or_hex_keys() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let k = parse_key(format!("  {hex}\n").as_bytes()).unwrap();
        assert_eq!(k[1], 0x11);
        assert_eq!(k[31], 0xff);
        assert_eq!(parse_key(&[7u8; 32]), Some([7u8; 32]));
        for bad in [&b""[..], b"short", &[0u8; 31], &[0u8; 33], b"zz"] {
            assert_eq!(parse_key(bad), None);
        }
        assert_eq!(parse_key(&hex.replace('0', "g").into_bytes()), None);
    }

    #[test]
    fn a_created_key_file_is_private_hex_and_loads_as_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/buffer.key");
        let created = BufferKey::create(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim().len(), 64);
        assert_eq!(BufferKey::load(&path).unwrap().id(), created.id());
        assert!(matches!(BufferKey::create(&path), Err(KeyError::Io { .. })));
    }

    #[test]
    fn a_key_file_others_may_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buffer.key");
        std::fs::write(&path, [3u8; 32]).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = BufferKey::load(&path).unwrap_err();
        assert!(matches!(e, KeyError::Permissions(_)), "{e}");
        assert!(matches!(
            BufferKey::load(&dir.path().join("none")),
            Err(KeyError::Missing(_))
        ));
    }
}
