//! The file uplink: FHIR NDJSON (one resource per line), the default destination.
//!
//! Layout of the output directory, following the FHIR Bulk Data convention of one resource
//! type per file:
//! - `Observation-NNNNNN.ndjson`: Observations, appended batch by batch; a new file (next
//!   number) starts when the current one reaches `rotate_bytes`.
//! - `Device.ndjson`: each measuring Device and the gateway Device, written the first time
//!   this process sees it. Observations reference them as `Device/<id>`.
//!
//! A batch is acknowledged only after its lines are written and `fsync`ed. A crash between the
//! fsync and the buffer delete writes those lines again on restart; consumers de-duplicate by
//! `Observation.identifier`, which is the same for both copies.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value as Json;

use super::{Outcome, SendError, Transport};
use crate::fhir::{self, Gateway};
use crate::model::Reading;

struct State {
    dir: PathBuf,
    rotate_bytes: u64,
    index: u32,
    file: Option<(File, u64)>,
    devices_written: HashSet<String>,
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
    /// Creates the directory if needed and continues after the highest existing file number.
    pub fn new(dir: &Path, rotate_bytes: u64, gateway: Gateway) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut index = 0;
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
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
                devices_written: HashSet::new(),
            })),
        })
    }

    fn render(&self, rows: &[(i64, &Reading)], state: &mut State) -> (Vec<u8>, Vec<u8>) {
        let mut devices = Vec::new();
        let mut observations = Vec::new();
        let gw = fhir::gateway_device(&self.gateway);
        let gw_ref = format!("Device/{}", uuid_of(&gw.full_url));
        let mut new_device = |d: fhir::DeviceIdentifier, out: &mut Vec<u8>| {
            if state.devices_written.insert(d.full_url.clone()) {
                let mut resource = d.resource;
                resource["id"] = Json::String(uuid_of(&d.full_url).to_owned());
                line(out, &resource);
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
                &fhir::Observation::new(r, &identifier, dev_ref, &gw_ref),
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
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
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
        let f = OpenOptions::new().create(true).append(true).open(&path)?;
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
                guard.devices_written.clear();
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
        tls: false,
    }
}
