//! The line profiles the gateway knows: those shipped in the binary, plus any in a
//! configured directory.
//!
//! The shipped profiles are the `device-profiles/line-*.toml` files, embedded at build time
//! ([`BUILT_IN`]), so a gateway needs no extra files to read those devices. A directory
//! (`sources.serial[].profiles_dir`) adds profiles, and a file there whose id equals a
//! built-in one replaces it — how a site fixes or adapts a profile without a new release.
//! Only `line-*.toml` files in the directory are read, each of at most
//! [`crate::limits::MAX_PROFILE_FILE_BYTES`]; each must be valid, and its id must equal its
//! file name.

use std::path::Path;

use super::schema::{ProfileError, ProfileFile};
use super::LineProfile;

/// The shipped line profiles: (file name, TOML text).
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "line-masimo-rad8.toml",
        include_str!("../../../../device-profiles/line-masimo-rad8.toml"),
    ),
    (
        "line-nonin-ascii.toml",
        include_str!("../../../../device-profiles/line-nonin-ascii.toml"),
    ),
];

/// Line profiles by id.
#[derive(Debug, Clone)]
pub struct Registry {
    profiles: Vec<LineProfile>,
}

impl Registry {
    /// The built-in profiles only.
    pub fn built_in() -> Result<Self, ProfileError> {
        let mut registry = Self {
            profiles: Vec::new(),
        };
        for (name, text) in BUILT_IN {
            registry.insert(load(text, name)?);
        }
        Ok(registry)
    }

    /// The built-in profiles, then those in `dir` (which replace built-in ones of the same id).
    pub fn load(dir: Option<&Path>) -> Result<Self, ProfileError> {
        let mut registry = Self::built_in()?;
        let Some(dir) = dir else {
            return Ok(registry);
        };
        let io = |path: &Path, source: std::io::Error| ProfileError::Io {
            path: path.display().to_string(),
            source,
        };
        let files = crate::limits::profile_files(dir, "line-").map_err(|e| io(dir, e))?;
        for path in files {
            let text =
                crate::limits::read_file_in_dir(dir, &path, crate::limits::MAX_PROFILE_FILE_BYTES)
                    .map_err(|e| io(&path, e))?;
            let name = path.display().to_string();
            let profile = load(&text, &name)?;
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            if profile.id != stem {
                return Err(ProfileError::Invalid {
                    source_name: name,
                    key: "id".into(),
                    message: format!("is {:?} but the file is named {stem}.toml", profile.id),
                });
            }
            registry.insert(profile);
        }
        Ok(registry)
    }

    fn insert(&mut self, profile: LineProfile) {
        self.profiles.retain(|p| p.id != profile.id);
        self.profiles.push(profile);
    }

    /// The profile with this id.
    pub fn get(&self, id: &str) -> Result<&LineProfile, ProfileError> {
        self.profiles
            .iter()
            .find(|p| p.id == id)
            .ok_or_else(|| ProfileError::Unknown {
                id: id.to_owned(),
                known: self.ids().join(", "),
            })
    }

    /// Every id, sorted.
    pub fn ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.profiles.iter().map(|p| p.id.as_str()).collect();
        ids.sort_unstable();
        ids
    }
}

fn load(text: &str, name: &str) -> Result<LineProfile, ProfileError> {
    ProfileFile::from_toml(text, name)?.compile(name)
}
