//! Installed packs: `store/<name>-<version>/` and the `current` link (see the module docs
//! of [`super`] for why every crash leaves one whole pack active).

use std::path::{Path, PathBuf};

use super::{parse_version, verify, Manifest, Refusal, TrustedKey, Verified, MANIFEST, SIGNATURE};

/// The link naming the active pack.
pub const CURRENT: &str = "current";
/// Where installed packs are kept.
pub const STORE: &str = "store";
/// Prefix of the directory an install writes before it renames it into the store.
const INCOMING: &str = ".incoming-";
/// The new link an install writes before it renames it over `current`.
const CURRENT_NEW: &str = "current.new";

/// For the crash tests only: with `VITALBRIDGE_TEST_INSTALL_STOP=<step>` in the environment,
/// an install says `stopping at <step>` on stderr and waits there to be killed. The steps,
/// in order: `file-written` (the first file of the new pack written), `incoming-synced`
/// (the new pack written and synced, not yet in the store), `stored` (renamed into the
/// store, `current` unchanged), `link-written` (the new link written, not yet renamed),
/// `switched` (the link renamed over `current`, the directory not yet synced).
pub const TEST_STOP_VAR: &str = "VITALBRIDGE_TEST_INSTALL_STOP";

fn test_stop(step: &str) {
    if std::env::var(TEST_STOP_VAR).as_deref() == Ok(step) {
        eprintln!("stopping at {step}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
    }
}

/// An installed pack.
#[derive(Debug, Clone)]
pub struct Installed {
    /// Its directory in the store.
    pub dir: PathBuf,
    /// Its manifest (as stored: checked again whenever it is used).
    pub manifest: Manifest,
    /// Whether `current` names it.
    pub active: bool,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Refusal {
    Refusal::Io(format!("{what} {}: {e}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<(), Refusal> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync", dir, e))
}

/// The directory `current` names, if any.
pub fn active_dir(packs: &Path) -> Option<PathBuf> {
    let target = std::fs::read_link(packs.join(CURRENT)).ok()?;
    Some(packs.join(target))
}

/// The manifest of the active pack, as stored (unverified: for display).
pub fn active(packs: &Path) -> Option<Installed> {
    let dir = active_dir(packs)?;
    let text =
        crate::limits::read_file_in_dir(&dir, &dir.join(MANIFEST), super::MAX_MANIFEST_BYTES)
            .ok()?;
    Some(Installed {
        dir,
        manifest: Manifest::parse(&text).ok()?,
        active: true,
    })
}

/// Every pack in the store, oldest version first.
pub fn list(packs: &Path) -> Vec<Installed> {
    let active = active_dir(packs);
    let Ok(entries) = std::fs::read_dir(packs.join(STORE)) else {
        return Vec::new();
    };
    let mut all: Vec<Installed> = entries
        .filter_map(|e| {
            let dir = e.ok()?.path();
            let text = crate::limits::read_file_in_dir(
                &dir,
                &dir.join(MANIFEST),
                super::MAX_MANIFEST_BYTES,
            )
            .ok()?;
            let manifest = Manifest::parse(&text).ok()?;
            Some(Installed {
                active: active.as_deref() == Some(dir.as_path()),
                dir,
                manifest,
            })
        })
        .collect();
    all.sort_by_key(|p| parse_version(&p.manifest.version));
    all
}

/// Removes what an interrupted install left behind (an incoming directory, a new link).
fn clean(packs: &Path) {
    let _ = std::fs::remove_file(packs.join(CURRENT_NEW));
    if let Ok(entries) = std::fs::read_dir(packs) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(INCOMING) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Verifies the pack in `src` and makes it the active one, if it is newer than the active
/// pack. Returns the verified pack and the manifest of the pack it replaced.
pub fn install(
    packs: &Path,
    src: &Path,
    keys: &[TrustedKey],
    max_bytes: u64,
    progress: super::Progress<'_>,
) -> Result<(Verified, Option<Manifest>), Refusal> {
    let pack = verify(src, keys, max_bytes, progress)?;
    let previous = active(packs).map(|p| p.manifest);
    if let Some(prev) = &previous {
        if parse_version(&pack.manifest.version) <= parse_version(&prev.version) {
            return Err(Refusal::Older {
                new: pack.manifest.version.clone(),
                installed: prev.version.clone(),
            });
        }
    }
    crate::fsmode::create_private_dir_all(&packs.join(STORE))
        .map_err(|e| io("create", packs, e))?;
    clean(packs);
    let incoming = packs.join(format!(
        "{INCOMING}{}-{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos()
    ));
    write_pack(&incoming, &pack)?;
    test_stop("incoming-synced");
    let name = format!("{}-{}", pack.manifest.name, pack.manifest.version);
    let stored = packs.join(STORE).join(&name);
    if stored.exists() {
        // An earlier install of this very version that was rolled back from (or stopped
        // before its switch): replaced by the copy just verified.
        std::fs::remove_dir_all(&stored).map_err(|e| io("remove", &stored, e))?;
    }
    std::fs::rename(&incoming, &stored).map_err(|e| io("rename", &stored, e))?;
    sync_dir(&packs.join(STORE))?;
    test_stop("stored");
    switch(packs, &Path::new(STORE).join(&name))?;
    Ok((pack, previous))
}

/// Writes a verified pack into `dir` (created 0700, files 0600) and syncs it all.
fn write_pack(dir: &Path, pack: &Verified) -> Result<(), Refusal> {
    crate::fsmode::create_private_dir_all(dir).map_err(|e| io("create", dir, e))?;
    let mut first = true;
    let all = pack
        .files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .chain([
            (MANIFEST, pack.manifest_text.as_str()),
            (SIGNATURE, pack.signature_text.as_str()),
        ]);
    for (name, text) in all {
        let path = dir.join(name);
        crate::fsmode::write_private_file(&path, text.as_bytes())
            .map_err(|e| io("write", &path, e))?;
        if first {
            test_stop("file-written");
            first = false;
        }
    }
    sync_dir(dir)
}

/// Points `current` at `target` (relative to `packs`) atomically: a new link renamed over
/// the old one, then the directory synced.
fn switch(packs: &Path, target: &Path) -> Result<(), Refusal> {
    let new = packs.join(CURRENT_NEW);
    let _ = std::fs::remove_file(&new);
    std::os::unix::fs::symlink(target, &new).map_err(|e| io("link", &new, e))?;
    test_stop("link-written");
    std::fs::rename(&new, packs.join(CURRENT)).map_err(|e| io("rename", &new, e))?;
    test_stop("switched");
    sync_dir(packs)
}

/// Makes an older installed pack active again: `to` names its version, or by default the
/// newest one older than the active pack. It is verified again first (against the keys
/// trusted now). Returns (the pack now active, the one it replaced).
pub fn rollback(
    packs: &Path,
    to: Option<&str>,
    keys: &[TrustedKey],
    max_bytes: u64,
) -> Result<(Verified, Manifest), Refusal> {
    let Some(current) = active(packs) else {
        return Err(Refusal::Io(
            "no pack is active: nothing to roll back".into(),
        ));
    };
    let now = parse_version(&current.manifest.version);
    let target = list(packs)
        .into_iter()
        .rfind(|p| {
            !p.active
                && match to {
                    Some(v) => p.manifest.version == v,
                    None => parse_version(&p.manifest.version) < now,
                }
        })
        .ok_or_else(|| {
            Refusal::Io(match to {
                Some(v) => format!("no installed pack has version {v}"),
                None => format!(
                    "no installed pack is older than the active {}",
                    current.manifest.label()
                ),
            })
        })?;
    let pack = verify(&target.dir, keys, max_bytes, &mut |_, _| {})?;
    clean(packs);
    let name = target
        .dir
        .file_name()
        .map(PathBuf::from)
        .ok_or_else(|| Refusal::Io("bad store entry".into()))?;
    switch(packs, &Path::new(STORE).join(name))?;
    Ok((pack, current.manifest))
}
