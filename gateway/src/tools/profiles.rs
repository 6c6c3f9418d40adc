//! `vitalbridge profiles …`: try a profile on a captured sample, and make, sign, verify,
//! install, list and roll back signed profile packs ([`crate::packs`]). Each function
//! returns the text to print; installs, refusals and rollbacks are written to the audit log
//! here, so every way of calling them is audited.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::config::Config;
use crate::fhir;
use crate::model::{DeviceId, DeviceRef, Reading};
use crate::ops::audit::{Audit, Event};
use crate::packs::{self, store, Refusal, TrustedKey, Verified};
use crate::profile::{ble, json, line, FrameContext};

/// The keys `[[profiles.trusted_keys]]` lists.
pub fn trusted_keys(config: &Config) -> Vec<TrustedKey> {
    packs::trusted_keys(config)
}

/// The packs directory of `config`.
pub fn packs_dir(config: &Config) -> PathBuf {
    config.profiles.packs_dir(&config.gateway.data_dir)
}

fn summary(v: &Verified) -> String {
    format!(
        "{} (key {}, created {}): {} files verified",
        v.manifest.label(),
        v.manifest.key_id,
        v.manifest.created,
        v.files.len()
    )
}

fn refused(audit: &Audit, pack: &Path, r: &Refusal) {
    audit.record(Event::PackRefused {
        pack: &pack.display().to_string(),
        refusal: r.kind(),
        reason: &r.to_string(),
    });
}

/// `profiles verify`: the checks of an install (the version too, unless `dir` is the
/// active pack itself), without installing.
pub fn verify(
    config: &Config,
    dir: &Path,
    audit: &Audit,
    progress: packs::Progress<'_>,
) -> Result<String, Refusal> {
    let keys = trusted_keys(config);
    let checked =
        packs::verify(dir, &keys, config.profiles.max_pack_bytes, progress).and_then(|v| {
            let packs = packs_dir(config);
            let is_active = store::active_dir(&packs)
                .and_then(|a| a.canonicalize().ok())
                .is_some_and(|a| dir.canonicalize().ok() == Some(a));
            match store::active(&packs) {
                Some(a)
                    if !is_active
                        && packs::parse_version(&v.manifest.version)
                            <= packs::parse_version(&a.manifest.version) =>
                {
                    Err(Refusal::Older {
                        new: v.manifest.version.clone(),
                        installed: a.manifest.version,
                    })
                }
                _ => Ok(v),
            }
        });
    checked
        .map(|v| format!("ok: {}", summary(&v)))
        .inspect_err(|r| refused(audit, dir, r))
}

/// `profiles install`: verify, then activate atomically.
pub fn install(
    config: &Config,
    dir: &Path,
    audit: &Audit,
    progress: packs::Progress<'_>,
) -> Result<String, Refusal> {
    let packs = packs_dir(config);
    match store::install(
        &packs,
        dir,
        &trusted_keys(config),
        config.profiles.max_pack_bytes,
        progress,
    ) {
        Ok((v, previous)) => {
            let previous = previous.map(|p| p.label());
            audit.record(Event::PackInstalled {
                name: &v.manifest.name,
                version: &v.manifest.version,
                key_id: &v.manifest.key_id,
                previous: previous.as_deref(),
            });
            Ok(format!(
                "installed and active: {}{}",
                summary(&v),
                previous
                    .map(|p| format!("; replaced {p}"))
                    .unwrap_or_default()
            ))
        }
        Err(r) => {
            refused(audit, dir, &r);
            Err(r)
        }
    }
}

/// `profiles rollback`.
pub fn rollback(config: &Config, to: Option<&str>, audit: &Audit) -> Result<String, Refusal> {
    let packs = packs_dir(config);
    let (now, from) = store::rollback(
        &packs,
        to,
        &trusted_keys(config),
        config.profiles.max_pack_bytes,
    )
    .inspect_err(|r| refused(audit, &packs, r))?;
    audit.record(Event::PackRolledBack {
        from: &from.label(),
        to: &now.manifest.label(),
    });
    Ok(format!(
        "rolled back: {} is active again (was {})",
        now.manifest.label(),
        from.label()
    ))
}

/// `profiles list`.
pub fn list(config: &Config) -> String {
    let packs = packs_dir(config);
    let all = store::list(&packs);
    if all.is_empty() {
        return format!(
            "no pack installed in {} (the built-in profiles are in use)",
            packs.display()
        );
    }
    let mut out = String::from("active\tname\tversion\tkey\tcreated\tfiles\n");
    for p in all {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\n",
            if p.active { "*" } else { "" },
            p.manifest.name,
            p.manifest.version,
            p.manifest.key_id,
            p.manifest.created,
            p.manifest.files.len()
        ));
    }
    out.trim_end().to_owned()
}

/// What `profiles test` decodes.
#[derive(Debug, Clone)]
pub struct TestRequest<'a> {
    /// A profile file, or the id of a built-in profile.
    pub profile: &'a str,
    /// The captured sample.
    pub sample: &'a Path,
    /// MQTT topic the sample arrived on (JSON profiles; default: the profile's first
    /// example's).
    pub topic: Option<&'a str>,
    /// The characteristic (BLE profiles; default: the profile's first subscribed one).
    pub characteristic: Option<&'a str>,
}

/// Why `profiles test` could not decode the sample.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// The profile or the sample file cannot be read.
    #[error("{}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Neither a file nor a built-in profile id.
    #[error("{0}: no such file, and no built-in profile has that id")]
    NoSuchProfile(String),
    /// The profile does not load (its loader's message, naming the file and key).
    #[error("{0}")]
    Profile(String),
    /// An option does not fit the profile (`--topic`, `--characteristic`).
    #[error("{0}")]
    Option(String),
    /// The sample does not decode with the profile (the decoder's message, naming the line).
    #[error("{0}")]
    Sample(String),
}

fn read_at(path: &Path) -> impl FnOnce(std::io::Error) -> TestError + '_ {
    move |source| TestError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// The profile's text and file name: a path, or a built-in id.
fn profile_text(profile: &str) -> Result<(String, String), TestError> {
    let path = Path::new(profile);
    if path.exists() {
        let text = crate::limits::read_capped(path, crate::limits::MAX_PROFILE_FILE_BYTES)
            .map_err(read_at(path))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok((name, text));
    }
    let file = format!("{profile}.toml");
    json::registry::BUILT_IN
        .iter()
        .chain(line::registry::BUILT_IN)
        .find(|(n, _)| **n == file)
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .or_else(|| {
            ble::profile_file::BUILTIN
                .iter()
                .find(|(n, _)| **n == file)
                .map(|(n, t)| (n.to_string(), t.to_string()))
        })
        .ok_or_else(|| TestError::NoSuchProfile(profile.to_owned()))
}

/// The FHIR Observations of `readings`, one JSON object per line.
fn observations(readings: &[Reading]) -> Vec<String> {
    let gateway = fhir::Gateway {
        id: "vitalbridge-profiles-test".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        convert_units: None,
    };
    let gateway_url = fhir::gateway_device(&gateway).full_url;
    readings
        .iter()
        .map(|r| fhir::observation(r, &fhir::device(&r.device).full_url, &gateway_url).to_string())
        .collect()
}

fn render(readings: &[Reading]) -> String {
    let mut out = String::from("readings:\n");
    for r in readings {
        out.push_str(&format!(
            "  {} device={} time={}\n",
            json::describe(r),
            r.device.id.key(),
            r.device_time
                .map(crate::model::format_time)
                .unwrap_or_else(|| "(receive time)".into())
        ));
    }
    out.push_str("observations:\n");
    for o in observations(readings) {
        out.push_str(&o);
        out.push('\n');
    }
    out.trim_end().to_owned()
}

/// `profiles test PROFILE SAMPLE`: decodes the sample as the gateway would with that
/// profile, and renders the readings and the Observations it would send. A JSON profile
/// reads the sample as one MQTT payload; a line profile as lines of text; a BLE profile as
/// one characteristic value in hex per line.
pub fn test(request: &TestRequest<'_>) -> Result<String, TestError> {
    let (name, text) = profile_text(request.profile)?;
    let sample = crate::limits::read_capped(request.sample, crate::limits::MAX_PROFILE_FILE_BYTES)
        .map_err(read_at(request.sample))?;
    if name.starts_with("json-") {
        let profile =
            json::registry::load(&text, &name).map_err(|e| TestError::Profile(e.to_string()))?;
        let topic = request
            .topic
            .map(str::to_owned)
            .or_else(|| profile.examples.first().map(|e| e.topic.clone()))
            .unwrap_or_else(|| profile.topics[0].replace('+', "sample").replace("/#", ""));
        if !profile.claims(&topic) {
            return Err(TestError::Option(format!(
                "topic {topic:?} is not one of the profile's topics"
            )));
        }
        let message: serde_json::Value = serde_json::from_str(&sample).map_err(|e| {
            TestError::Sample(format!(
                "sample: not JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        if !profile.matches(&message) {
            return Err(TestError::Sample(
                "sample: does not meet the profile's `match` conditions".into(),
            ));
        }
        let readings = profile
            .decode(&topic, &message, OffsetDateTime::now_utc(), &|_, _| None)
            .map_err(|e| TestError::Sample(e.to_string()))?;
        return Ok(render(&readings));
    }
    if name.starts_with("line-") {
        let profile = line::schema::ProfileFile::from_toml(&text, &name)
            .and_then(|f| f.compile(&name))
            .map_err(|e| TestError::Profile(e.to_string()))?;
        let mut readings = Vec::new();
        for (i, l) in sample.lines().enumerate() {
            match profile.decode_example(l) {
                Ok(line::Decoded::Readings(r)) => readings.extend(r),
                Ok(line::Decoded::Ignored) => {}
                Err(e) => return Err(TestError::Sample(format!("sample line {}: {e}", i + 1))),
            }
        }
        return Ok(render(&readings));
    }
    let profile = ble::profile_file::BleProfile::from_toml(&text)
        .map_err(|e| TestError::Profile(e.to_string()))?;
    let decoder = match request.characteristic {
        Some(c) => {
            let uuid = ble::parse_characteristic(c)
                .map_err(|e| TestError::Option(format!("--characteristic: {e}")))?;
            profile
                .decoders()
                .into_iter()
                .find(|(u, _)| *u == uuid)
                .ok_or_else(|| {
                    TestError::Option(format!("--characteristic: the profile has no 0x{uuid:04X}"))
                })?
        }
        None => profile.subscriptions().into_iter().next().ok_or_else(|| {
            TestError::Option(
                "the profile subscribes to no characteristic: give --characteristic".into(),
            )
        })?,
    };
    let ctx = FrameContext {
        device: DeviceRef {
            id: DeviceId::Other("vitalbridge-profiles-test".into()),
            profile: profile.id.clone(),
            model: None,
            manufacturer: None,
        },
        patient: None,
        received_at: OffsetDateTime::now_utc(),
        clock_offset: None,
        time_sync: None,
    };
    let mut readings = Vec::new();
    for (i, l) in sample
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at_line =
            |e: &dyn std::fmt::Display| TestError::Sample(format!("sample line {}: {e}", i + 1));
        let bytes = crate::tools::decode::parse_hex(l).map_err(|e| at_line(&e))?;
        readings.extend(decoder.1.decode(&bytes, &ctx).map_err(|e| at_line(&e))?);
    }
    Ok(render(&readings))
}
