//! The running gateway's side of packs: load the active pack's vendor JSON profiles at
//! start, and again whenever `current` names another pack (an install or a rollback), with
//! no restart and nothing lost or doubled.
//!
//! Each load verifies the pack again (signature, hashes, every profile) and builds the
//! profile set from the bytes it verified. Only a set that loads whole replaces the one in
//! use ([`SharedProfiles::replace`]); otherwise the previous set stays, and the audit log,
//! the log and the status page say why. The MQTT source takes the set once per batch of
//! messages, so a message is decoded by one set, and a message is acknowledged only once its
//! readings are stored, whichever set decoded them.
//!
//! Line and BLE profiles in a pack are checked like the others, but those sources read
//! their `profiles_dir` at start: point it at `<packs_dir>/current` and restart to use them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{store, verify, TrustedKey};
use crate::ops::audit::{Audit, Event};
use crate::ops::metrics::Metrics;
use crate::profile::json::{ProfileSet, SharedProfiles};

/// What a load produced.
#[derive(Debug)]
pub struct Loaded {
    /// The profile set.
    pub set: ProfileSet,
    /// `name version` of the pack, `None` when no pack is active.
    pub pack: Option<String>,
}

/// Loads the profiles of the pack `current` names (the shipped ones only when none is
/// active). The error is (what was tried, why it failed).
pub fn load_active(
    packs: &Path,
    keys: &[TrustedKey],
    max_bytes: u64,
) -> Result<Loaded, (String, String)> {
    let Some(dir) = store::active_dir(packs) else {
        let set = ProfileSet::built_in().map_err(|e| ("built-in".to_owned(), e.to_string()))?;
        return Ok(Loaded { set, pack: None });
    };
    let tried = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let verified = verify(&dir, keys, max_bytes, &mut |_, _| {})
        .map_err(|r| (tried.clone(), r.to_string()))?;
    let label = verified.manifest.label();
    let set =
        ProfileSet::with_files(&verified.files).map_err(|e| (label.clone(), e.to_string()))?;
    Ok(Loaded {
        set,
        pack: Some(label),
    })
}

/// Whether a load happens as the gateway starts or while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// At start: only a pack's profiles are audited (the shipped ones are no event).
    Start,
    /// A reload: every outcome is audited.
    Reload,
}

/// Applies a load's outcome: swaps the set in, or keeps the previous one; logs and reports
/// it either way, and audits it (at start, only when a pack was loaded or refused).
pub fn apply(
    outcome: Result<Loaded, (String, String)>,
    when: When,
    shared: &SharedProfiles,
    metrics: &Metrics,
    audit: &Audit,
) {
    match outcome {
        Ok(loaded) => {
            let n = loaded.set.profiles().len();
            let labels: Vec<String> = loaded.set.profiles().iter().map(|p| p.label()).collect();
            shared.replace(loaded.set);
            tracing::info!(
                pack = loaded.pack.as_deref().unwrap_or("(none)"),
                profiles = n,
                "vendor JSON profiles loaded"
            );
            if when == When::Reload || loaded.pack.is_some() {
                audit.record(Event::ProfilesReloaded {
                    pack: loaded.pack.as_deref(),
                    profiles: n,
                });
            }
            metrics.set_profiles(loaded.pack, labels, None);
        }
        Err((tried, reason)) => {
            tracing::error!(pack = %tried, reason = %reason, "profile pack not loaded; the previous profiles stay in use");
            audit.record(Event::ProfilesReloadFailed {
                pack: &tried,
                reason: &reason,
            });
            metrics.set_profiles_error(format!("{tried}: {reason}"));
        }
    }
}

/// What [`watch`] needs.
pub struct Watch {
    /// The packs directory.
    pub packs: PathBuf,
    /// The trusted keys.
    pub keys: Vec<TrustedKey>,
    /// `profiles.max_pack_bytes`.
    pub max_bytes: u64,
    /// How often to look at `current`.
    pub every: Duration,
    /// The set in use.
    pub shared: SharedProfiles,
    /// Where the status goes.
    pub metrics: Arc<Metrics>,
    /// The audit log.
    pub audit: Audit,
}

/// Looks at `current` every `every` until `shutdown`, and loads the pack it names whenever
/// that changes (once per change: a pack that fails is not retried until `current` changes
/// again).
pub async fn watch(w: Watch, shutdown: CancellationToken) {
    let target = |p: &Path| std::fs::read_link(p.join(store::CURRENT)).ok();
    let mut seen = target(&w.packs);
    let mut ticks = tokio::time::interval(w.every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let now = target(&w.packs);
        if now == seen {
            continue;
        }
        seen = now;
        let (packs, keys, max) = (w.packs.clone(), w.keys.clone(), w.max_bytes);
        let outcome = tokio::task::spawn_blocking(move || load_active(&packs, &keys, max))
            .await
            .unwrap_or_else(|e| Err(("(load task)".into(), e.to_string())));
        apply(outcome, When::Reload, &w.shared, &w.metrics, &w.audit);
    }
}
