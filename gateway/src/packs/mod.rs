//! Signed device-profile packs: how profile files reach a hub in the field, and how the hub
//! knows that nobody but the holders of a trusted key changed them.
//!
//! # A pack
//!
//! A directory with the profile files (`json-*.toml`, `line-*.toml`, `ble-*.toml`), a
//! manifest and its signature, and nothing else:
//!
//! ```text
//! site-pack/
//!   manifest.toml     what the pack is (below)
//!   manifest.sig      the Ed25519 signature of manifest.toml's exact bytes: 128 hex digits
//!   json-acme-bp.toml
//!   line-acme-spo2.toml
//! ```
//!
//! ```toml
//! format = 1                          # this format; a newer one is refused
//! name = "site-a"                     # lower-case letters, digits, dashes (at most 64)
//! version = "1.4.0"                   # dot-separated numbers; installs only go up
//! created = "2026-03-01T10:00:00Z"    # RFC 3339
//! key_id = "biomed-2026"              # which trusted key signed it
//!
//! [[files]]                           # every file of the pack, each once
//! path = "json-acme-bp.toml"          # a plain file name: no directories
//! bytes = 1834
//! sha256 = "9f2c…"                    # 64 lower-case hex digits
//! ```
//!
//! Keys: the signing key stays off the hub, as a PKCS#8 (DER) Ed25519 private key —
//! `vitalbridge profiles keygen` writes one (mode 0600) and prints its public key, or
//! `openssl genpkey -algorithm ed25519 -outform DER -out key.pk8`. A hub trusts the raw
//! 32-byte public keys listed in `[[profiles.trusted_keys]]` (64 hex digits, with the id a
//! manifest names).
//!
//! # Verification ([`verify`])
//!
//! In this order, each failure a [`Refusal`] that names what is wrong: a manifest and a
//! signature are present (else *unsigned*); the manifest parses, is small and of a known
//! format; its key id is trusted; the signature verifies over the manifest's bytes with that
//! key (else *signed over another manifest*, or the manifest changed); every listed path is
//! a plain file name of a profile (no `/`, no `..`); the pack is within the size limits; the
//! directory holds exactly the listed files, each a regular file (no extra, none missing, no
//! links); each file has the listed size and SHA-256 (else *changed after signing*); and
//! every profile in it loads ([`crate::profile`]'s checks, examples included).
//!
//! # Installed packs ([`store`])
//!
//! Under the packs directory (`[profiles] packs_dir`, default `<data_dir>/packs`):
//! `store/<name>-<version>/` holds each installed pack as verified, and the symbolic link
//! `current` names the active one. Installing writes the new pack into a temporary
//! directory, syncs it, renames it into `store/`, then replaces `current` by renaming a new
//! link over it, and syncs the directory: a crash or power cut at any point leaves `current`
//! naming the old pack or the new one, complete either way. The gateway verifies the active
//! pack again whenever it loads it.

pub mod live;
pub mod store;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ring::signature::{self, Ed25519KeyPair, KeyPair};
use serde::Deserialize;

use crate::limits::{read_file_in_dir, MAX_CODE_LEN, MAX_PROFILE_FILE_BYTES};

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.toml";
/// The signature's file name.
pub const SIGNATURE: &str = "manifest.sig";
/// The manifest format this gateway writes and reads.
pub const FORMAT: u32 = 1;
/// Largest manifest, in bytes.
pub const MAX_MANIFEST_BYTES: u64 = 256 * 1024;
/// Most files in a pack.
pub const MAX_FILES: usize = 256;
/// Largest pack by default (all its files), in bytes.
pub const DEFAULT_MAX_PACK_BYTES: u64 = 16 * 1024 * 1024;

/// A public key a hub trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// The id manifests name it by.
    pub id: String,
    /// The raw Ed25519 public key.
    pub public: [u8; 32],
}

/// Why a pack is refused. Each names the problem; none quotes a profile's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No manifest.
    #[error("not a pack: no {MANIFEST} in {0}")]
    NoManifest(String),
    /// No signature.
    #[error("unsigned: no {SIGNATURE} (sign it with `vitalbridge profiles sign`)")]
    Unsigned,
    /// The manifest does not parse or breaks a rule.
    #[error("manifest: {0}")]
    Manifest(String),
    /// Signed with a key the hub does not trust.
    #[error("signed with key {0:?}, which this hub does not trust (trusted: {1})")]
    UnknownKey(String, String),
    /// The signature does not verify.
    #[error("the signature does not match the manifest: signed over another manifest, or the manifest changed after signing")]
    BadSignature,
    /// A listed path is not a plain file name inside the pack.
    #[error("file {0:?} escapes the pack directory (only plain file names are allowed)")]
    Escapes(String),
    /// A listed file is not a profile.
    #[error("file {0:?} is not a profile (json-*.toml, line-*.toml or ble-*.toml)")]
    NotAProfile(String),
    /// Too large.
    #[error("oversized: {0}")]
    Oversized(String),
    /// A file in the directory that the manifest does not list.
    #[error("extra file {0:?}: not in the manifest")]
    Extra(String),
    /// A listed file that is not there.
    #[error("missing file {0:?}: listed in the manifest")]
    Missing(String),
    /// A file that cannot be read safely.
    #[error("file {0:?}: {1}")]
    Unreadable(String, String),
    /// A file whose size or hash differs from the manifest's.
    #[error("file {0:?} changed after signing (its SHA-256 differs from the manifest's)")]
    Changed(String),
    /// A profile of the pack does not load.
    #[error("profile {0:?} does not load: {1}")]
    BadProfile(String, String),
    /// Not newer than the active pack.
    #[error("version {new} is not newer than the installed {installed} (go back only with `vitalbridge profiles rollback`)")]
    Older {
        /// This pack's version.
        new: String,
        /// The active pack's.
        installed: String,
    },
    /// The packs directory could not be used.
    #[error("packs directory: {0}")]
    Io(String),
}

impl Refusal {
    /// A short stable label for the audit log and counting.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::NoManifest(_) => "no_manifest",
            Refusal::Unsigned => "unsigned",
            Refusal::Manifest(_) => "bad_manifest",
            Refusal::UnknownKey(..) => "unknown_key",
            Refusal::BadSignature => "bad_signature",
            Refusal::Escapes(_) => "path_escapes",
            Refusal::NotAProfile(_) => "not_a_profile",
            Refusal::Oversized(_) => "oversized",
            Refusal::Extra(_) => "extra_file",
            Refusal::Missing(_) => "missing_file",
            Refusal::Unreadable(..) => "unreadable_file",
            Refusal::Changed(_) => "changed_after_signing",
            Refusal::BadProfile(..) => "bad_profile",
            Refusal::Older { .. } => "older_version",
            Refusal::Io(_) => "io",
        }
    }
}

/// The manifest as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version ([`FORMAT`]).
    pub format: u32,
    /// The pack's name.
    pub name: String,
    /// Its version: dot-separated numbers.
    pub version: String,
    /// When it was made (RFC 3339).
    pub created: String,
    /// The id of the key that signs it.
    pub key_id: String,
    /// Its files.
    #[serde(default)]
    pub files: Vec<FileEntry>,
}

/// One `[[files]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// A plain file name.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// Its SHA-256, lower-case hex.
    pub sha256: String,
}

/// A version: its numbers, compared in order (`1.10` is newer than `1.9`).
pub fn parse_version(text: &str) -> Option<Vec<u64>> {
    if text.is_empty() || text.len() > 32 {
        return None;
    }
    text.split('.')
        .map(|n| {
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse::<u64>().ok())
                .flatten()
        })
        .collect()
}

/// Whether `text` is a valid pack name or key id: 1 to 64 lower-case letters, digits, dashes.
pub fn valid_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_CODE_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether a manifest path is a plain file name of a profile; `Err` says which refusal.
fn check_path(path: &str) -> Result<(), Refusal> {
    let plain = !path.is_empty()
        && path.len() <= MAX_CODE_LEN
        && path != "."
        && path != ".."
        && !path.contains(['/', '\\', '\0'])
        && !path.starts_with('.');
    if !plain {
        return Err(Refusal::Escapes(path.to_owned()));
    }
    let profile = ["json-", "line-", "ble-"]
        .iter()
        .any(|p| path.starts_with(p))
        && path.ends_with(".toml")
        && path
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
    if !profile {
        return Err(Refusal::NotAProfile(path.to_owned()));
    }
    Ok(())
}

impl Manifest {
    /// Parses and checks a manifest's text (before its signature is checked: the key id
    /// says which key to check it with, so this parser sees unsigned input and is fuzzed).
    pub fn parse(text: &str) -> Result<Self, Refusal> {
        let m: Manifest =
            toml::from_str(text).map_err(|e| Refusal::Manifest(e.message().trim().to_owned()))?;
        let bad = |m: &str| Err(Refusal::Manifest(m.to_owned()));
        if m.format != FORMAT {
            return bad(&format!(
                "format {} is not {FORMAT}: made by a newer version of vitalbridge?",
                m.format
            ));
        }
        if !valid_name(&m.name) {
            return bad("`name` must be 1 to 64 lower-case letters, digits and dashes");
        }
        if parse_version(&m.version).is_none() {
            return bad("`version` must be dot-separated numbers, e.g. 1.4.0");
        }
        if m.created.len() > 64
            || time::OffsetDateTime::parse(
                &m.created,
                &time::format_description::well_known::Rfc3339,
            )
            .is_err()
        {
            return bad("`created` must be an RFC 3339 time");
        }
        if !valid_name(&m.key_id) {
            return bad("`key_id` must be 1 to 64 lower-case letters, digits and dashes");
        }
        if m.files.len() > MAX_FILES {
            return Err(Refusal::Oversized(format!("more than {MAX_FILES} files")));
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &m.files {
            check_path(&f.path)?;
            if !seen.insert(f.path.as_str()) {
                return bad(&format!("file {:?} is listed twice", f.path));
            }
            if f.sha256.len() != 64
                || !f
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                return bad(&format!(
                    "file {:?}: `sha256` must be 64 lower-case hex digits",
                    f.path
                ));
            }
        }
        Ok(m)
    }

    /// The manifest's text, as [`pack`] writes it.
    pub fn to_toml(&self) -> String {
        let mut out = format!(
            "format = {}\nname = {:?}\nversion = {:?}\ncreated = {:?}\nkey_id = {:?}\n",
            self.format, self.name, self.version, self.created, self.key_id
        );
        for f in &self.files {
            out.push_str(&format!(
                "\n[[files]]\npath = {:?}\nbytes = {}\nsha256 = {:?}\n",
                f.path, f.bytes, f.sha256
            ));
        }
        out
    }

    /// `name version`, for messages.
    pub fn label(&self) -> String {
        format!("{} {}", self.name, self.version)
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from hex digits (either case), or `None`.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// SHA-256, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// A verified pack: its manifest and its files' contents, as checked.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The manifest.
    pub manifest: Manifest,
    /// The manifest's exact bytes.
    pub manifest_text: String,
    /// The signature file's text.
    pub signature_text: String,
    /// (file name, content), in manifest order.
    pub files: Vec<(String, String)>,
}

/// What [`verify`] reports as it goes (files checked of all), for a progress display.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

/// Verifies the pack in `dir` against `keys` (see the module docs for the checks), with at
/// most `max_bytes` of files.
pub fn verify(
    dir: &Path,
    keys: &[TrustedKey],
    max_bytes: u64,
    progress: Progress<'_>,
) -> Result<Verified, Refusal> {
    let manifest_path = dir.join(MANIFEST);
    let read = |name: &str, max: u64| {
        read_file_in_dir(dir, &dir.join(name), max)
            .map_err(|e| Refusal::Unreadable(name.to_owned(), e.to_string()))
    };
    if std::fs::symlink_metadata(&manifest_path).is_err() {
        return Err(Refusal::NoManifest(dir.display().to_string()));
    }
    let manifest_text = read(MANIFEST, MAX_MANIFEST_BYTES)?;
    if std::fs::symlink_metadata(dir.join(SIGNATURE)).is_err() {
        return Err(Refusal::Unsigned);
    }
    let signature_text = read(SIGNATURE, 1024)?;
    let manifest = Manifest::parse(&manifest_text)?;
    let key = keys
        .iter()
        .find(|k| k.id == manifest.key_id)
        .ok_or_else(|| {
            Refusal::UnknownKey(
                manifest.key_id.clone(),
                if keys.is_empty() {
                    "none configured in [[profiles.trusted_keys]]".into()
                } else {
                    keys.iter()
                        .map(|k| k.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            )
        })?;
    let signature = unhex(&signature_text)
        .filter(|s| s.len() == 64)
        .ok_or(Refusal::BadSignature)?;
    signature::UnparsedPublicKey::new(&signature::ED25519, &key.public)
        .verify(manifest_text.as_bytes(), &signature)
        .map_err(|_| Refusal::BadSignature)?;
    let total: u64 = manifest
        .files
        .iter()
        .map(|f| f.bytes)
        .fold(0, u64::saturating_add);
    if total > max_bytes {
        return Err(Refusal::Oversized(format!(
            "{total} bytes of files, more than the {max_bytes} allowed ([profiles] max_pack_bytes)"
        )));
    }
    if let Some(f) = manifest
        .files
        .iter()
        .find(|f| f.bytes > MAX_PROFILE_FILE_BYTES)
    {
        return Err(Refusal::Oversized(format!(
            "file {:?} is larger than {MAX_PROFILE_FILE_BYTES} bytes",
            f.path
        )));
    }
    let listed: BTreeMap<&str, &FileEntry> = manifest
        .files
        .iter()
        .map(|f| (f.path.as_str(), f))
        .collect();
    let entries = std::fs::read_dir(dir).map_err(|e| Refusal::Io(e.to_string()))?;
    let mut count = 0usize;
    for entry in entries {
        let entry = entry.map_err(|e| Refusal::Io(e.to_string()))?;
        count += 1;
        if count > MAX_FILES + 2 {
            return Err(Refusal::Oversized(format!(
                "more than {MAX_FILES} files in the directory"
            )));
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == MANIFEST || name == SIGNATURE {
            continue;
        }
        if !listed.contains_key(name.as_str()) {
            return Err(Refusal::Extra(name));
        }
        let kind = entry.file_type().map_err(|e| Refusal::Io(e.to_string()))?;
        if !kind.is_file() {
            return Err(Refusal::Unreadable(
                name,
                "not a regular file (links are not allowed in a pack)".into(),
            ));
        }
    }
    let mut files = Vec::with_capacity(manifest.files.len());
    let n = manifest.files.len();
    for (i, f) in manifest.files.iter().enumerate() {
        let path = dir.join(&f.path);
        if std::fs::symlink_metadata(&path).is_err() {
            return Err(Refusal::Missing(f.path.clone()));
        }
        let text = read(&f.path, MAX_PROFILE_FILE_BYTES)?;
        if text.len() as u64 != f.bytes || sha256_hex(text.as_bytes()) != f.sha256 {
            return Err(Refusal::Changed(f.path.clone()));
        }
        files.push((f.path.clone(), text));
        progress(i + 1, n);
    }
    for (name, text) in &files {
        check_profile(name, text).map_err(|e| Refusal::BadProfile(name.clone(), e))?;
    }
    Ok(Verified {
        manifest,
        manifest_text,
        signature_text,
        files,
    })
}

/// Why making, signing or keying a pack failed: the authoring side, run off the hub.
#[derive(Debug, thiserror::Error)]
pub enum AuthoringError {
    /// A file or directory could not be read or written.
    #[error("{}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The source directory holds no profile file.
    #[error("{}: no profile files (json-*, line-*, ble-*.toml)", .0.display())]
    NoProfiles(PathBuf),
    /// A profile file does not load as the gateway would load it.
    #[error("{name} does not load: {reason}")]
    Profile {
        /// The file name.
        name: String,
        /// What its loader said.
        reason: String,
    },
    /// The manifest is not one the gateway reads.
    #[error("{MANIFEST}")]
    Manifest(#[source] Refusal),
    /// The manifest's creation time cannot be written.
    #[error("the creation time")]
    Created(#[source] time::error::Format),
    /// The key file holds no PKCS#8 (DER) Ed25519 private key.
    #[error("{}: not a PKCS#8 (DER) Ed25519 private key", .0.display())]
    NotAKey(PathBuf),
    /// The system's random generator failed.
    #[error("cannot generate a key")]
    KeyGeneration,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> AuthoringError + '_ {
    move |source| AuthoringError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Loads one profile file as the gateway would.
pub(crate) fn check_profile(name: &str, text: &str) -> Result<(), String> {
    let stem = name.trim_end_matches(".toml");
    if name.starts_with("json-") {
        let p = crate::profile::json::registry::load(text, name).map_err(|e| e.to_string())?;
        if p.id != stem {
            return Err(format!("its id {:?} is not its file name", p.id));
        }
    } else if name.starts_with("line-") {
        let p = crate::profile::line::schema::ProfileFile::from_toml(text, name)
            .and_then(|f| f.compile(name))
            .map_err(|e| e.to_string())?;
        if p.id != stem {
            return Err(format!("its id {:?} is not its file name", p.id));
        }
    } else {
        crate::profile::ble::profile_file::BleProfile::from_toml(text)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Writes a pack: copies the profile files of `src` (every `json-`, `line-` and `ble-*.toml`
/// file) into `out` (created, must not exist) with an unsigned manifest. Returns the
/// manifest.
pub fn pack(
    src: &Path,
    out: &Path,
    name: &str,
    version: &str,
    key_id: &str,
    created: time::OffsetDateTime,
) -> Result<Manifest, AuthoringError> {
    let mut names: Vec<String> = std::fs::read_dir(src)
        .map_err(io_at(src))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| check_path(n).is_ok())
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(AuthoringError::NoProfiles(src.to_path_buf()));
    }
    let mut files = Vec::new();
    let mut contents = Vec::new();
    for n in &names {
        let path = src.join(n);
        let text = read_file_in_dir(src, &path, MAX_PROFILE_FILE_BYTES).map_err(io_at(&path))?;
        check_profile(n, &text).map_err(|reason| AuthoringError::Profile {
            name: n.clone(),
            reason,
        })?;
        files.push(FileEntry {
            path: n.clone(),
            bytes: text.len() as u64,
            sha256: sha256_hex(text.as_bytes()),
        });
        contents.push((n.clone(), text));
    }
    let manifest = Manifest {
        format: FORMAT,
        name: name.to_owned(),
        version: version.to_owned(),
        created: created
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(AuthoringError::Created)?,
        key_id: key_id.to_owned(),
        files,
    };
    let text = manifest.to_toml();
    Manifest::parse(&text).map_err(AuthoringError::Manifest)?;
    std::fs::create_dir(out).map_err(io_at(out))?;
    for (n, t) in &contents {
        let path = out.join(n);
        std::fs::write(&path, t).map_err(io_at(&path))?;
    }
    let path = out.join(MANIFEST);
    std::fs::write(&path, &text).map_err(io_at(&path))?;
    Ok(manifest)
}

/// Signs the manifest of the pack in `dir` with the PKCS#8 Ed25519 key in `key_file`,
/// writing `manifest.sig`. Returns the public key (hex) that verifies it.
pub fn sign(dir: &Path, key_file: &Path) -> Result<String, AuthoringError> {
    let key = read_key(key_file)?;
    let manifest = dir.join(MANIFEST);
    let text = read_file_in_dir(dir, &manifest, MAX_MANIFEST_BYTES).map_err(io_at(&manifest))?;
    Manifest::parse(&text).map_err(AuthoringError::Manifest)?;
    let signature = key.sign(text.as_bytes());
    let path = dir.join(SIGNATURE);
    std::fs::write(&path, format!("{}\n", hex(signature.as_ref()))).map_err(io_at(&path))?;
    Ok(hex(key.public_key().as_ref()))
}

/// Reads a PKCS#8 (DER) Ed25519 private key.
pub fn read_key(path: &Path) -> Result<Ed25519KeyPair, AuthoringError> {
    let der = std::fs::read(path).map_err(io_at(path))?;
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .map_err(|_| AuthoringError::NotAKey(path.to_path_buf()))
}

/// Makes a new signing key at `path` (mode 0600, must not exist); returns its public key
/// (hex).
pub fn keygen(path: &Path) -> Result<String, AuthoringError> {
    let rng = ring::rand::SystemRandom::new();
    let der = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| AuthoringError::KeyGeneration)?;
    let key =
        Ed25519KeyPair::from_pkcs8(der.as_ref()).map_err(|_| AuthoringError::KeyGeneration)?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_at(path))?;
    file.write_all(der.as_ref())
        .and_then(|()| file.sync_all())
        .map_err(io_at(path))?;
    Ok(hex(key.public_key().as_ref()))
}

/// The keys `[[profiles.trusted_keys]]` lists (a malformed one is left out: `check-config`
/// names it).
pub fn trusted_keys(config: &crate::config::Config) -> Vec<TrustedKey> {
    config
        .profiles
        .trusted_keys
        .iter()
        .filter_map(|k| {
            Some(TrustedKey {
                id: k.id.clone(),
                public: parse_public_key(&k.ed25519)?,
            })
        })
        .collect()
}

/// Parses a trusted key's public key (64 hex digits).
pub fn parse_public_key(text: &str) -> Option<[u8; 32]> {
    unhex(text)?.try_into().ok()
}

#[cfg(test)]
mod tests;
