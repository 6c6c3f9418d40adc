//! Serial end-to-end pieces: the gateway config for a serial port forwarding to the FHIR
//! test upstream, the device simulator (`vitalbridge sim serial`) as a child process, and
//! what the simulator's firmware readings must become at the upstream.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::gateway::binary;
use crate::pki::TestPki;

/// The firmware simulator's device serial number (its device id at the gateway).
pub const SIM_SERIAL: &str = "SIM-SERIAL-0001";

/// Gateway config: one serial port `bed-1` at `port` speaking `protocol` (`extra_port` is
/// appended to its table), FHIR uplink to `upstream_url`, the simulated firmware device bound
/// to patient `p-serial`, and any other device (a line device) to the same patient as the
/// hub's default (without a patient its readings would be held, not sent).
pub fn serial_to_fhir(
    data_dir: &Path,
    port: &Path,
    extra_port: &str,
    upstream_url: &str,
    pki: &TestPki,
) -> String {
    format!(
        r#"[gateway]
id = "e2e-serial"
data_dir = "{data}"

[[sources.serial]]
name = "bed-1"
path = "{port}"
reconnect_max_ms = 1000
{extra_port}

{uplink}
[[devices]]
id = "{SIM_SERIAL}"
patient_system = "urn:oid:1.2.3"
patient_id = "p-serial"

[default_patient]
system = "urn:oid:1.2.3"
id = "p-serial"
"#,
        data = data_dir.display(),
        port = port.display(),
        uplink = crate::scenario::fhir_uplink(upstream_url, pki, 200),
    )
}

/// `vitalbridge sim serial` running as a child process. Killed on drop.
pub struct SimProcess {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl SimProcess {
    /// Starts the simulator on `port` with extra `args` (e.g. `--count 100`), logging into
    /// `dir`.
    pub fn start(dir: &Path, port: &Path, args: &[&str]) -> io::Result<Self> {
        let stdout = dir.join("sim.out");
        let stderr = dir.join("sim.log");
        let child = Command::new(binary())
            .args(["sim", "serial", "--port"])
            .arg(port)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?)
            .spawn()?;
        Ok(Self {
            child,
            stdout,
            stderr,
        })
    }

    /// Waits up to `timeout` for it to finish: its exit status and its summary line.
    pub async fn wait(&mut self, timeout: Duration) -> Option<(ExitStatus, String)> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
                return Some((status, out));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// What it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sequence number in an Observation identifier (`…-seq{n}`).
pub fn sequence_of(observation: &Value) -> Option<u32> {
    observation["identifier"][0]["value"]
        .as_str()?
        .rsplit_once("-seq")?
        .1
        .parse()
        .ok()
}

/// What the firmware simulator's reading `seq` must be at the upstream: (MDC code, value
/// text; components joined by `/`), per the table in `ingest/serial/simulator.rs`, written
/// out again here so that a mistake on either side shows.
pub fn expected_firmware_value(seq: u32) -> (&'static str, String) {
    match seq % 4 {
        0 => ("150456", format!("{}", 90 + seq % 10)),
        1 => ("149530", format!("{}", 60 + seq % 40)),
        2 => {
            let tenths = 360 + seq % 20;
            ("150364", format!("{}.{}", tenths / 10, tenths % 10))
        }
        _ => {
            let (sys, dia) = (110 + seq % 30, 70 + seq % 20);
            ("150020", format!("{sys}/{dia}/{}", (sys + 2 * dia) / 3))
        }
    }
}

/// (MDC code, value text) of an Observation at the upstream.
pub fn observed_value(o: &Value) -> (String, String) {
    let mdc = o["code"]["coding"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["system"] == "urn:iso:std:iso:11073:10101")
        })
        .and_then(|c| c["code"].as_str())
        .unwrap_or_default()
        .to_owned();
    let value = match o["component"].as_array() {
        Some(parts) => parts
            .iter()
            .map(|c| c["valueQuantity"]["value"].to_string())
            .collect::<Vec<_>>()
            .join("/"),
        None => o["valueQuantity"]["value"].to_string(),
    };
    (mdc, value)
}

/// Checks that `observations` are exactly the firmware simulator's readings
/// `first..first + count`, each once, with the right code, value, subject and test-data
/// label; returns every difference (empty when all is well).
pub fn check_firmware_readings(observations: &[Value], first: u32, count: u32) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeMap::new();
    for o in observations {
        let Some(seq) = sequence_of(o) else {
            problems.push(format!("no sequence number in {}", o["identifier"]));
            continue;
        };
        *seen.entry(seq).or_insert(0) += 1;
        let (mdc, value) = observed_value(o);
        let (want_mdc, want_value) = expected_firmware_value(seq);
        if mdc != want_mdc || value != want_value {
            problems.push(format!(
                "seq {seq}: got {mdc} {value}, expected {want_mdc} {want_value}"
            ));
        }
        if o["subject"]["identifier"]["value"] != "p-serial" {
            problems.push(format!("seq {seq}: subject {}", o["subject"]));
        }
        if o["meta"]["security"][0]["code"] != "HTEST" {
            problems.push(format!("seq {seq}: not labelled test data"));
        }
    }
    for seq in first..first + count {
        match seen.get(&seq) {
            None => problems.push(format!("seq {seq} missing")),
            Some(1) => {}
            Some(n) => problems.push(format!("seq {seq} stored {n} times")),
        }
    }
    if observations.len() != count as usize {
        problems.push(format!(
            "{} Observations for {count} readings",
            observations.len()
        ));
    }
    problems.truncate(20);
    problems
}

/// The last value of `key=N` in the gateway's final serial statistics line.
pub fn final_stat(log: &str, key: &str) -> Option<u64> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("serial port statistics (final)"))?;
    let needle = format!(" {key}=");
    let at = line.find(&needle)? + needle.len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
