//! Noticing that the configuration changed between two starts, for the audit log.
//!
//! The fingerprint is the SHA-256 of the *effective* configuration: the parsed [`Config`] with
//! every default applied, as Rust's `Debug` formatting spells it, so a comment or whitespace
//! edit is not a change but any setting is, including one that changed because an upgrade
//! brought a new default. Each top-level table is hashed too, so the audit line can say which
//! changed. The fingerprint of the last start is kept in `<data_dir>/config-fingerprint.json`:
//!
//! ```json
//! {"sha256": "<hex>", "sections": {"gateway": "<hex>", "buffer": "<hex>", ...}}
//! ```
//!
//! Only hashes are kept and logged, never the configuration itself (it binds devices to
//! patients).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// File in the data directory holding the last start's fingerprint.
pub const STATE_FILE: &str = "config-fingerprint.json";

/// Hashes of a configuration and of each of its top-level tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// SHA-256 of the whole effective configuration, lower-case hex.
    pub sha256: String,
    /// SHA-256 per top-level table.
    pub sections: BTreeMap<String, String>,
}

fn sha256_hex(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The fingerprint of `config`.
pub fn fingerprint(config: &Config) -> Fingerprint {
    let sections = [
        ("gateway", format!("{:?}", config.gateway)),
        ("buffer", format!("{:?}", config.buffer)),
        ("sources", format!("{:?}", config.sources)),
        ("uplink", format!("{:?}", config.uplink)),
        ("devices", format!("{:?}", config.devices)),
        ("default_patient", format!("{:?}", config.default_patient)),
        ("clinical", format!("{:?}", config.clinical)),
        ("ops", format!("{:?}", config.ops)),
    ]
    .into_iter()
    .map(|(name, text)| (name.to_owned(), sha256_hex(&text)))
    .collect();
    Fingerprint {
        sha256: sha256_hex(&format!("{config:?}")),
        sections,
    }
}

impl Fingerprint {
    /// The tables whose hash differs from `previous` (`other` when only a table this version
    /// does not list separately changed).
    pub fn changed_sections(&self, previous: &Fingerprint) -> Vec<String> {
        let mut changed: Vec<String> = self
            .sections
            .iter()
            .filter(|(name, hash)| previous.sections.get(*name) != Some(hash))
            .map(|(name, _)| name.clone())
            .collect();
        if changed.is_empty() && self.sha256 != previous.sha256 {
            changed.push("other".to_owned());
        }
        changed
    }
}

/// The fingerprint the last start stored in `data_dir`, if any (an unreadable or oversized
/// file counts as none: the change is then reported as a first start). A file an older
/// version left open to group or others is restricted to its owner.
pub fn previous(data_dir: &Path) -> Option<Fingerprint> {
    let path = data_dir.join(STATE_FILE);
    let text = crate::limits::read_capped(&path, crate::limits::MAX_STATE_FILE_BYTES).ok()?;
    let _ = crate::fsmode::restrict_path(&path);
    serde_json::from_str(&text).ok()
}

/// Stores `fingerprint` as this start's (written to a temporary file, owner only, then
/// renamed).
pub fn store(data_dir: &Path, fingerprint: &Fingerprint) -> std::io::Result<()> {
    let text = serde_json::to_string(fingerprint).map_err(std::io::Error::other)?;
    crate::fsmode::replace_private_file(&data_dir.join(STATE_FILE), (text + "\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_do_not_change_the_fingerprint_but_settings_do() {
        let a = Config::from_toml("[uplink]\nbatch_size = 100\n").unwrap();
        let b = Config::from_toml("# a comment\n[uplink]\nbatch_size = 100 # same\n").unwrap();
        let c = Config::from_toml("[uplink]\nbatch_size = 200\n").unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a).sha256, fingerprint(&c).sha256);
        assert_eq!(
            fingerprint(&c).changed_sections(&fingerprint(&a)),
            ["uplink"]
        );
        assert_eq!(fingerprint(&a).sha256.len(), 64);
    }

    #[test]
    fn the_fingerprint_survives_a_round_trip_through_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(previous(dir.path()), None);
        let f = fingerprint(&Config::default());
        store(dir.path(), &f).unwrap();
        assert_eq!(previous(dir.path()), Some(f));
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir.path().join(STATE_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
}
