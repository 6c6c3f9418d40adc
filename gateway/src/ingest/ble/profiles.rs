//! The device profiles the BLE source uses: the `device-profiles/ble-*.toml` files compiled
//! into the binary ([`crate::profile::ble::profile_file::BUILTIN`]), plus those of
//! `[sources.ble] profiles_dir` when set. A file in the directory replaces the built-in
//! profile with the same `id` (a field update without a new binary) or adds a new one.
//!
//! Only this source reads these files; serial and line-protocol profiles have their own
//! loader.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::profile::ble::profile_file::{self, BleProfile, ProfileError};

/// Why the profiles of `profiles_dir` cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfilesError {
    /// The directory cannot be listed, or holds more than
    /// [`crate::limits::MAX_PROFILE_FILES`] profile files.
    #[error("sources.ble.profiles_dir {}", .dir.display())]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A profile file cannot be read (or is over its size limit).
    #[error("cannot read {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A profile file is not a valid profile.
    #[error("device profile {}", .path.display())]
    Profile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: ProfileError,
    },
}

/// The profiles, in a fixed order: built-in ones first (overridden in place), then new ones
/// from the directory by file name.
#[derive(Debug, Clone)]
pub struct Profiles(Vec<Arc<BleProfile>>);

impl Profiles {
    /// The built-in profiles only.
    pub fn builtin() -> Self {
        Self(profile_file::builtin().into_iter().map(Arc::new).collect())
    }

    /// The built-in profiles overridden and extended by the `ble-*.toml` files in `dir`.
    /// A file that does not load is an error naming the file.
    pub fn load(dir: Option<&Path>) -> Result<Self, ProfilesError> {
        let mut profiles = Self::builtin();
        let Some(dir) = dir else {
            return Ok(profiles);
        };
        let paths =
            crate::limits::profile_files(dir, "ble-").map_err(|source| ProfilesError::Dir {
                dir: dir.to_path_buf(),
                source,
            })?;
        for path in paths {
            let text =
                crate::limits::read_file_in_dir(dir, &path, crate::limits::MAX_PROFILE_FILE_BYTES)
                    .map_err(|source| ProfilesError::Read {
                        path: path.clone(),
                        source,
                    })?;
            let profile =
                BleProfile::from_toml(&text).map_err(|source| ProfilesError::Profile {
                    path: path.clone(),
                    source,
                })?;
            profiles.insert(profile);
        }
        Ok(profiles)
    }

    /// Adds a profile, replacing one with the same id.
    pub fn insert(&mut self, profile: BleProfile) {
        let profile = Arc::new(profile);
        match self.0.iter_mut().find(|p| p.id == profile.id) {
            Some(slot) => *slot = profile,
            None => self.0.push(profile),
        }
    }

    /// The profile with this id.
    pub fn by_id(&self, id: &str) -> Option<Arc<BleProfile>> {
        self.0.iter().find(|p| p.id == id).cloned()
    }

    /// The first profile for one of these (advertised or discovered) services.
    pub fn for_services(&self, services: &[u16]) -> Option<Arc<BleProfile>> {
        self.0
            .iter()
            .find(|p| p.service_uuid().is_some_and(|s| services.contains(&s)))
            .cloned()
    }

    /// Every profile.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<BleProfile>> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_cover_every_standard_service() {
        let p = Profiles::builtin();
        for (service, id) in [
            (0x1810, "ble-blood-pressure"),
            (0x180D, "ble-heart-rate"),
            (0x1809, "ble-thermometer"),
            (0x1808, "ble-glucose"),
            (0x1822, "ble-pulse-oximeter"),
            (0x181D, "ble-weight-scale"),
            (0x181B, "ble-body-composition"),
        ] {
            assert_eq!(p.for_services(&[0x180F, service]).unwrap().id, id);
            assert!(p.by_id(id).is_some());
        }
        assert!(p.for_services(&[0x180F]).is_none());
    }

    #[test]
    fn a_directory_file_replaces_the_builtin_profile_with_its_id_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let hr = profile_file::BUILTIN
            .iter()
            .find(|(n, _)| *n == "ble-heart-rate.toml")
            .unwrap()
            .1;
        let renamed = hr.replace("name = \"Heart Rate Service\"", "name = \"Site HR\"");
        assert_ne!(renamed, hr, "the test edits the profile name");
        std::fs::write(dir.path().join("ble-heart-rate.toml"), &renamed).unwrap();
        std::fs::write(dir.path().join("README.txt"), "not a profile").unwrap();
        let p = Profiles::load(Some(dir.path())).unwrap();
        assert_eq!(p.by_id("ble-heart-rate").unwrap().name, "Site HR");
        assert_eq!(p.iter().count(), Profiles::builtin().iter().count());

        std::fs::write(dir.path().join("ble-broken.toml"), "id = 3").unwrap();
        let err = Profiles::load(Some(dir.path())).unwrap_err();
        assert!(err.to_string().contains("ble-broken.toml"), "{err}");
    }

    #[test]
    fn a_huge_file_in_the_directory_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("ble-huge.toml")).unwrap();
        file.set_len(crate::limits::MAX_PROFILE_FILE_BYTES + 1)
            .unwrap();
        let err = Profiles::load(Some(dir.path())).unwrap_err();
        assert!(err.to_string().contains("ble-huge.toml"), "{err}");
        let chain = crate::error_chain::Chain(&err).to_string();
        assert!(chain.contains("larger than 1048576 bytes"), "{chain}");
    }
}
