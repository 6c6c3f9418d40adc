//! The vendor JSON profiles a gateway uses: those shipped in the binary, plus the
//! `json-*.toml` files of a directory (an installed profile pack), which replace shipped
//! ones of the same id or add new ones.
//!
//! A [`ProfileSet`] is immutable once built; the MQTT source holds it behind a handle that
//! a reload swaps whole, so one message is always decoded by one set.

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use serde_json::Value as Json;
use time::OffsetDateTime;

use super::schema::{ProfileError, ProfileFile};
use super::{DecodeError, JsonProfile};
use crate::model::{PatientRef, Reading};

/// The shipped vendor profiles: (file name, TOML text).
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "json-dexcom-egv.toml",
        include_str!("../../../../device-profiles/json-dexcom-egv.toml"),
    ),
    (
        "json-openmhealth-bp.toml",
        include_str!("../../../../device-profiles/json-openmhealth-bp.toml"),
    ),
    (
        "json-withings-getmeas.toml",
        include_str!("../../../../device-profiles/json-withings-getmeas.toml"),
    ),
];

/// A set of vendor profiles, sorted by id.
#[derive(Debug, Clone, Default)]
pub struct ProfileSet {
    profiles: Vec<Arc<JsonProfile>>,
}

/// Checks one file's text and builds its profile.
pub fn load(text: &str, file: &str) -> Result<JsonProfile, ProfileError> {
    ProfileFile::from_toml(text, file)?.compile(text, file)
}

impl ProfileSet {
    /// The shipped profiles only.
    pub fn built_in() -> Result<Self, ProfileError> {
        let mut set = Self::default();
        for (name, text) in BUILT_IN {
            set.insert(load(text, name)?);
        }
        Ok(set)
    }

    /// The shipped profiles, then those in `dir` (which replace shipped ones of the same
    /// id). Only `json-*.toml` files are read, each with
    /// [`crate::limits::read_file_in_dir`] (regular files inside `dir`, at most
    /// [`crate::limits::MAX_PROFILE_FILE_BYTES`]); each must load, and its id must equal its
    /// file name.
    pub fn load(dir: Option<&Path>) -> Result<Self, ProfileError> {
        let mut set = Self::built_in()?;
        let Some(dir) = dir else { return Ok(set) };
        let io = |path: &Path, e: std::io::Error| ProfileError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let files = crate::limits::profile_files(dir, "json-").map_err(|e| io(dir, e))?;
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
                    file: name,
                    line: Some(1),
                    key: "id".into(),
                    message: format!("is {:?} but the file is named {stem}.toml", profile.id),
                });
            }
            set.insert(profile);
        }
        Ok(set)
    }

    /// The shipped profiles, then the `json-*.toml` files among `files` ((file name, text),
    /// e.g. a verified pack's), which replace shipped ones of the same id. Each must load and
    /// be named after its id.
    pub fn with_files(files: &[(String, String)]) -> Result<Self, ProfileError> {
        let mut set = Self::built_in()?;
        for (name, text) in files {
            if !(name.starts_with("json-") && name.ends_with(".toml")) {
                continue;
            }
            let profile = load(text, name)?;
            if format!("{}.toml", profile.id) != *name {
                return Err(ProfileError::Invalid {
                    file: name.clone(),
                    line: Some(1),
                    key: "id".into(),
                    message: format!("is {:?} but the file is named {name}", profile.id),
                });
            }
            set.insert(profile);
        }
        Ok(set)
    }

    fn insert(&mut self, profile: JsonProfile) {
        self.profiles.retain(|p| p.id != profile.id);
        self.profiles.push(Arc::new(profile));
        self.profiles.sort_by(|a, b| a.id.cmp(&b.id));
    }

    /// The profiles, by id.
    pub fn profiles(&self) -> &[Arc<JsonProfile>] {
        &self.profiles
    }

    /// The profile with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<JsonProfile>> {
        self.profiles.iter().find(|p| p.id == id)
    }

    /// Whether some profile claims `topic` (else the canonical format applies).
    pub fn claims(&self, topic: &str) -> bool {
        self.profiles.iter().any(|p| p.claims(topic))
    }

    /// Decodes a message that arrived on `topic`: `None` when no profile claims the topic
    /// (the canonical format applies), else the readings of the first profile, by id, that
    /// claims the topic and whose `match` conditions the message meets.
    pub fn decode(
        &self,
        topic: &str,
        payload: &[u8],
        received_at: OffsetDateTime,
        binding: &dyn Fn(&str, Option<u8>) -> Option<PatientRef>,
    ) -> Option<Result<Vec<Reading>, DecodeError>> {
        let candidates: Vec<&Arc<JsonProfile>> =
            self.profiles.iter().filter(|p| p.claims(topic)).collect();
        if candidates.is_empty() {
            return None;
        }
        let message: Json = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(e) => {
                return Some(Err(DecodeError::Json(format!(
                    "syntax error at line {}, column {}",
                    e.line(),
                    e.column()
                ))))
            }
        };
        Some(match candidates.iter().find(|p| p.matches(&message)) {
            Some(p) => p.decode(topic, &message, received_at, binding),
            None => Err(DecodeError::NoProfile(
                candidates
                    .iter()
                    .map(|p| p.label())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        })
    }
}

/// The profile set in use, shared by the MQTT source and the reload that replaces it.
///
/// A reader takes the whole set ([`SharedProfiles::current`]) and decodes with it; a reload
/// swaps in a new set at once ([`SharedProfiles::replace`]). A message is thus decoded by one
/// set from start to end, never half by the old profiles and half by the new, and readings
/// already decoded keep the profile (and version) that decoded them.
#[derive(Debug, Clone, Default)]
pub struct SharedProfiles(Arc<RwLock<Arc<ProfileSet>>>);

impl SharedProfiles {
    /// A handle holding `set`.
    pub fn new(set: ProfileSet) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(set))))
    }

    /// The set in use now.
    pub fn current(&self) -> Arc<ProfileSet> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes `set` the one in use.
    pub fn replace(&self, set: ProfileSet) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
    }
}
