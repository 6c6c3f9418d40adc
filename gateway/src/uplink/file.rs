//! The file uplink: FHIR NDJSON (one resource per line), the default destination.
//!
//! Layout of the output directory, following the FHIR Bulk Data convention of one resource
//! type per file:
//! - `Observation-NNNNNN.ndjson`: Observations, appended batch by batch; a new file (next
//!   number) starts when the current one reaches `rotate_bytes`.
//! - `Device.ndjson`: each measuring Device and the gateway Device, written once: a line is
//!   appended only when it is not already in the file (the lines there are read at start, up
//!   to [`DEVICE_FILE_READ_LIMIT`] bytes), so restarts do not repeat them; a Device that
//!   changed (a new gateway version) gets a new line. Observations reference them as
//!   `Device/<id>`.
//!
//! The directory is created with mode 0700 and every file with 0600 ([`crate::fsmode`]): they
//! hold patient data. Existing files of the directory open to group or others are restricted
//! to their owner when the transport starts, and the log says so.
//!
//! A batch is acknowledged only after its lines are written and `fsync`ed. A crash between the
//! fsync and the buffer delete writes those lines again on restart; consumers de-duplicate by
//! `Observation.identifier`, which is the same for both copies.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value as Json;

use super::{Cause, Outcome, SendError, Transport};
use crate::fhir::{self, Gateway};
use crate::fsmode;
use crate::model::Reading;

/// The most of an existing `Device.ndjson` read at start to know what is written already;
/// a larger file is not read (its Devices may then be written once more).
pub const DEVICE_FILE_READ_LIMIT: u64 = 16 * 1024 * 1024;

struct State {
    dir: PathBuf,
    rotate_bytes: u64,
    index: u32,
    file: Option<(File, u64)>,
    /// The Device lines in `Device.ndjson` (without their newline).
    devices_written: HashSet<Vec<u8>>,
}

/// The lines of an existing `Device.ndjson`, if it is there and not too large.
fn devices_in(dir: &Path) -> HashSet<Vec<u8>> {
    let path = dir.join("Device.ndjson");
    match std::fs::metadata(&path) {
        Ok(m) if m.len() <= DEVICE_FILE_READ_LIMIT => std::fs::read(&path)
            .map(|bytes| {
                bytes
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect()
            })
            .unwrap_or_default(),
        _ => HashSet::new(),
    }
}

/// Writes NDJSON files.
pub struct FileTransport {
    gateway: Gateway,
    state: Arc<Mutex<State>>,
}

fn uuid_of(full_url: &str) -> &str {
    full_url.strip_prefix("urn:uuid:").unwrap_or(full_url)
}

impl FileTransport {
    /// Creates the directory if needed (owner only), restricts existing output files to
    /// their owner, and continues after the highest existing file number.
    pub fn new(dir: &Path, rotate_bytes: u64, gateway: Gateway) -> std::io::Result<Self> {
        fsmode::create_private_dir_all(dir)?;
        let mut index = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".ndjson") && entry.file_type()?.is_file() {
                fsmode::restrict_path(&entry.path())?;
            }
            if let Some(n) = name
                .strip_prefix("Observation-")
                .and_then(|s| s.strip_suffix(".ndjson"))
            {
                if let Ok(n) = n.parse::<u32>() {
                    index = index.max(n);
                }
            }
        }
        Ok(Self {
            gateway,
            state: Arc::new(Mutex::new(State {
                dir: dir.into(),
                rotate_bytes,
                index: index.max(1),
                file: None,
                devices_written: devices_in(dir),
            })),
        })
    }

    fn render(&self, rows: &[(i64, &Reading)], state: &mut State) -> (Vec<u8>, Vec<u8>) {
        let mut devices = Vec::new();
        let mut observations = Vec::new();
        let gw = fhir::gateway_device(&self.gateway);
        let gw_ref = format!("Device/{}", uuid_of(&gw.full_url));
        let mut new_device = |d: fhir::DeviceIdentifier, out: &mut Vec<u8>| {
            let mut resource = d.resource;
            resource["id"] = Json::String(uuid_of(&d.full_url).to_owned());
            let mut text = Vec::new();
            line(&mut text, &resource);
            text.pop();
            if !state.devices_written.contains(&text) {
                out.extend_from_slice(&text);
                out.push(b'\n');
                state.devices_written.insert(text);
            }
        };
        new_device(gw, &mut devices);
        // The batch's distinct devices and their references (a batch holds a handful).
        let mut refs: Vec<(&crate::model::DeviceRef, String)> = Vec::new();
        for (_, r) in rows {
            let dev_ref = match refs.iter().find(|(d, _)| *d == &r.device) {
                Some((_, dev_ref)) => dev_ref,
                None => {
                    let d = fhir::device(&r.device);
                    let dev_ref = format!("Device/{}", uuid_of(&d.full_url));
                    new_device(d, &mut devices);
                    refs.push((&r.device, dev_ref));
                    &refs[refs.len() - 1].1
                }
            };
            let identifier = r.identifier();
            line(
                &mut observations,
                &fhir::Observation::new_with(
                    r,
                    &identifier,
                    dev_ref,
                    &gw_ref,
                    None,
                    self.gateway.convert_units,
                ),
            );
        }
        (devices, observations)
    }
}

fn line(out: &mut Vec<u8>, value: &impl serde::Serialize) {
    // Serializing these types cannot fail: every map key is a string.
    let _ = serde_json::to_writer(&mut *out, value);
    out.push(b'\n');
}

fn append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = fsmode::open_private_append(path)?;
    f.write_all(bytes)?;
    f.sync_data()
}

fn write_batch(state: &mut State, devices: &[u8], observations: &[u8]) -> std::io::Result<()> {
    if !devices.is_empty() {
        append(&state.dir.join("Device.ndjson"), devices)?;
    }
    if let Some((_, size)) = &state.file {
        if *size >= state.rotate_bytes {
            state.file = None;
            state.index += 1;
        }
    }
    if state.file.is_none() {
        let path = state
            .dir
            .join(format!("Observation-{:06}.ndjson", state.index));
        let f = fsmode::open_private_append(&path)?;
        let size = f.metadata()?.len();
        state.file = Some((f, size));
    }
    if let Some((f, size)) = &mut state.file {
        f.write_all(observations)?;
        f.sync_data()?;
        *size += observations.len() as u64;
    }
    Ok(())
}

impl Transport for FileTransport {
    fn name(&self) -> &'static str {
        "file"
    }

    async fn send(&self, rows: &[(i64, &Reading)]) -> Result<Vec<Outcome>, SendError> {
        let state = self.state.clone();
        let (devices, observations) = {
            let mut guard = state
                .lock()
                .map_err(|_| transient("file uplink state poisoned"))?;
            self.render(rows, &mut guard)
        };
        let n = rows.len();
        let result = tokio::task::spawn_blocking(move || {
            let mut guard = state
                .lock()
                .map_err(|_| std::io::Error::other("file uplink state poisoned"))?;
            let r = write_batch(&mut guard, &devices, &observations);
            if r.is_err() {
                // Devices may not have reached the disk: write them again next time.
                guard.devices_written = devices_in(&guard.dir);
                guard.file = None;
            }
            r
        })
        .await
        .map_err(|e| transient(&format!("file writer task failed: {e}")))?;
        match result {
            Ok(()) => Ok(vec![Outcome::Delivered; n]),
            Err(e) => Err(transient(&format!("cannot write NDJSON: {e}"))),
        }
    }
}

fn transient(reason: &str) -> SendError {
    SendError::Transient {
        reason: reason.to_owned(),
        retry_after: None,
        cause: Cause::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn gateway() -> Gateway {
        Gateway {
            id: "gw".into(),
            version: "0".into(),
            convert_units: None,
        }
    }

    /// The bug report: Device.ndjson repeated the same Devices after every restart.
    #[test]
    fn devices_already_in_the_file_are_not_written_again_after_a_restart() {
        use crate::model::{DeviceId, DeviceRef};
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out");
        use crate::model::{Decimal, Measured, Quantity, Value};
        let reading = Reading {
            device: DeviceRef {
                id: DeviceId::Other("SIM-BP-0001".into()),
                profile: "sim".into(),
                model: None,
                manufacturer: None,
            },
            patient: Some(crate::model::PatientRef::Reference("Patient/1".into())),
            metric: crate::profile::catalog::HEART_RATE,
            value: Value::Quantity(Quantity {
                value: Measured::Value(Decimal::integer(60)),
                unit: "/min".into(),
            }),
            device_time: None,
            clock_offset: None,
            received_at: time::OffsetDateTime::UNIX_EPOCH,
            duration: None,
            sequence: None,
            status: vec![],
            device_user: None,
            bedside: None,
            time_sync: None,
        };
        for _ in 0..3 {
            let t = FileTransport::new(&dir, 1 << 20, gateway()).unwrap();
            let mut state = t.state.lock().unwrap();
            let (devices, observations) = t.render(&[(1, &reading)], &mut state);
            write_batch(&mut state, &devices, &observations).unwrap();
        }
        let text = std::fs::read_to_string(dir.join("Device.ndjson")).unwrap();
        assert_eq!(
            text.lines().count(),
            2,
            "the gateway and the device, once: {text}"
        );
        // A Device that changed (a new gateway version) is written again.
        let newer = Gateway {
            version: "1".into(),
            ..gateway()
        };
        let t = FileTransport::new(&dir, 1 << 20, newer).unwrap();
        let mut state = t.state.lock().unwrap();
        let (devices, _) = t.render(&[(1, &reading)], &mut state);
        assert_eq!(String::from_utf8(devices).unwrap().lines().count(), 1);
    }

    #[test]
    fn output_is_owner_only_and_earlier_files_open_to_others_are_restricted() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out");
        let t = FileTransport::new(&dir, 4096, gateway()).unwrap();
        assert_eq!(mode(&dir), 0o700);
        {
            let mut state = t.state.lock().unwrap();
            write_batch(&mut state, b"{}\n", b"{}\n").unwrap();
        }
        for name in ["Device.ndjson", "Observation-000001.ndjson"] {
            assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        }

        // Files an older version left readable by everyone: restricted at start, kept whole.
        let loose = std::fs::Permissions::from_mode(0o644);
        for name in ["Device.ndjson", "Observation-000001.ndjson"] {
            std::fs::set_permissions(dir.join(name), loose.clone()).unwrap();
        }
        std::fs::write(dir.join("Observation-000007.ndjson"), "{}\n").unwrap();
        std::fs::set_permissions(dir.join("Observation-000007.ndjson"), loose).unwrap();
        let t = FileTransport::new(&dir, 4096, gateway()).unwrap();
        for name in [
            "Device.ndjson",
            "Observation-000001.ndjson",
            "Observation-000007.ndjson",
        ] {
            assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        }
        assert_eq!(t.state.lock().unwrap().index, 7);
        assert_eq!(
            std::fs::read_to_string(dir.join("Observation-000001.ndjson")).unwrap(),
            "{}\n"
        );
    }
}
