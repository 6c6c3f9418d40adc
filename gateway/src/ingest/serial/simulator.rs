//! The device side of a serial link, for `vitalbridge sim serial`: a simulated device that
//! speaks the firmware protocol or a line protocol on a port. Tests drive the gateway with
//! it over pseudo-terminals; a technician runs it on a laptop at the far end of a cable to
//! check the cable, the adapter and the gateway's configuration.
//!
//! **Firmware** (`--protocol firmware`): behaves like `firmware/examples/device.rs`. After
//! opening the port it writes `00`, a `Hello` and a `TimeRequest`, then measures every
//! interval into the firmware crate's [`Outbox`], sends what is due, and removes what the
//! gateway acknowledges; a `Nack(Unidentified)` makes it say `Hello` again and resend; a
//! lost port is reopened and everything held is resent. It stops when it has measured
//! `count` readings and all are acknowledged. Reading `n` (its sequence number) is, by
//! `n % 4`:
//!
//! | `n % 4` | metric (MDC) | value |
//! | --- | --- | --- |
//! | 0 | SpO2 (150456) | `90 + n % 10` % |
//! | 1 | pulse rate (149530) | `60 + n % 40` /min |
//! | 2 | body temperature (150364) | `(360 + n % 20) × 10⁻¹` Cel |
//! | 3 | blood pressure (150020) | systolic `110 + n % 30`, diastolic `70 + n % 20`, mean `(sys + 2·dia) / 3` mm[Hg] |
//!
//! with the device time of the moment it was measured and the test-data status bit set
//! (the gateway labels them `HTEST`), so a simulator on a live gateway is never mistaken for
//! a patient.
//!
//! **Line** (`--protocol line --profile ID`): prints lines in the profile's format, made
//! from the profile's documented examples: each line is an example with its time stamp
//! replaced by the simulated device clock (one second apart at least, so every line is a
//! distinct measurement) and its numbers varied in their last digit. Line devices get no
//! answers; it stops after `count` lines.
//!
//! **The port**: a path that does not exist ends the run at once with an error, and a port
//! that exists but does not open (not a serial device, no permission, in use) after
//! [`OPEN_ATTEMPTS`] tries; both name the path and what is wrong. Once the port was open,
//! losing it is a pulled cable: it is reopened until it is back.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use vitalbridge_firmware::accumulator::FrameAccumulator;
use vitalbridge_firmware::gateway::{encode_to_vec, unix_millis};
use vitalbridge_firmware::message::{
    Component, DeviceTime, Heartbeat, Hello, Message, NackReason, Reading, Status, TimeRequest,
    Unit, Value,
};
use vitalbridge_firmware::outbox::{Outbox, RetryPolicy};

use super::port::{self, PortError, Settings};
use crate::error_chain::Chain;
use crate::profile::line::{Decoded, LineProfile};

/// Readings the simulated device holds while the gateway is away.
const OUTBOX_CAPACITY: usize = 256;
/// How often a firmware device sends a heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(30);
/// Wait between attempts to open the port.
const REOPEN: Duration = Duration::from_millis(250);
/// Attempts to open a port that was never open before the simulator gives up (5 s): a
/// mistyped or unusable port is reported and ends the run instead of being retried forever.
/// A port that was open and is lost is reopened until it is back, as a device would.
pub const OPEN_ATTEMPTS: u32 = 20;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The port to write to.
    pub port: PathBuf,
    /// Its settings.
    pub settings: Settings,
    /// Firmware or line.
    pub protocol: SimProtocol,
    /// Readings (firmware) or lines (line) to produce; 0 = until stopped.
    pub count: u64,
    /// Time between measurements.
    pub interval: Duration,
}

/// The protocol the simulated device speaks.
#[derive(Debug, Clone)]
pub enum SimProtocol {
    /// Vitalbridge firmware frames.
    Firmware {
        /// The device's serial number (its id at the gateway).
        serial: String,
        /// The first sequence number (a real device persists it across reboots).
        first_seq: u32,
        /// Resend a reading not acknowledged within this long.
        ack_timeout: Duration,
    },
    /// Lines in a profile's format.
    Line(Box<LineProfile>),
}

/// What a simulation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SimSummary {
    /// Readings measured (firmware) or lines written (line).
    pub produced: u64,
    /// Readings acknowledged by the gateway (firmware only).
    pub acknowledged: u64,
    /// Frames or lines written, resends included.
    pub frames_sent: u64,
    /// Times the port was (re)opened.
    pub connections: u64,
}

/// Why the simulator stopped early.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The line profile has no example to build lines from.
    #[error("profile {0} has no example line with readings to simulate")]
    NoExamples(String),
    /// The port does not exist: nothing to wait for.
    #[error(transparent)]
    NoPort(PortError),
    /// The port never opened.
    #[error("gave up after {attempts} attempts")]
    GaveUp {
        /// How many.
        attempts: u32,
        /// Why the last one failed.
        #[source]
        last: PortError,
    },
}

/// Reading number `seq` of the firmware simulator (see the module table), taken at `time`.
pub fn firmware_reading(seq: u32, time: DeviceTime) -> Reading {
    let unit = |u: &str| Unit::try_from(u).unwrap_or_default();
    // Every operand is below 400, so the conversions cannot fail.
    let m = |modulus: u32| i32::try_from(seq % modulus).unwrap_or(0);
    let mut reading = match seq % 4 {
        0 => Reading::new(time, 150_456, Value::decimal(90 + m(10), 0), unit("%")),
        1 => Reading::new(time, 149_530, Value::decimal(60 + m(40), 0), unit("/min")),
        2 => Reading::new(time, 150_364, Value::decimal(360 + m(20), -1), unit("Cel")),
        _ => {
            let (sys, dia) = (110 + m(30), 70 + m(20));
            let mut r = Reading::new(time, 150_020, Value::decimal(0, 0), unit("mm[Hg]"));
            r.value = None;
            r.components = [
                (150_021, sys),
                (150_022, dia),
                (150_023, (sys + 2 * dia) / 3),
            ]
            .into_iter()
            .map(|(metric, v)| Component {
                metric,
                value: Value::decimal(v, 0),
            })
            .collect();
            r
        }
    };
    reading.status = Status::TEST_DATA;
    reading
}

/// Runs the simulation until it is done or `stop` is cancelled.
pub async fn run(options: SimOptions, stop: CancellationToken) -> Result<SimSummary, SimError> {
    match options.protocol.clone() {
        SimProtocol::Firmware {
            serial,
            first_seq,
            ack_timeout,
        } => run_firmware(&options, &serial, first_seq, ack_timeout, stop).await,
        SimProtocol::Line(profile) => run_line(&options, &profile, stop).await,
    }
}

/// Opens the port, retrying until it opens or `stop` (`Ok(None)`). A port never open before
/// (`reopen` false) that does not exist is an error at once, and one that does not open
/// within [`OPEN_ATTEMPTS`] an error then; a lost port is waited for.
async fn open(
    options: &SimOptions,
    reopen: bool,
    stop: &CancellationToken,
) -> Result<Option<tokio_serial::SerialStream>, SimError> {
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match port::open(&options.port, options.settings) {
            Ok(stream) => {
                tracing::info!(port = %options.port.display(), "simulator: port open");
                return Ok(Some(stream));
            }
            Err(e) if !reopen && e.is_missing() => return Err(SimError::NoPort(e)),
            Err(last) if !reopen && attempts >= OPEN_ATTEMPTS => {
                return Err(SimError::GaveUp { attempts, last })
            }
            Err(e) if attempts == 1 => {
                tracing::warn!(error = %Chain(&e), "simulator: cannot open the port; retrying");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(REOPEN) => {}
            _ = stop.cancelled() => return Ok(None),
        }
    }
}

async fn run_firmware(
    options: &SimOptions,
    serial: &str,
    first_seq: u32,
    ack_timeout: Duration,
    stop: CancellationToken,
) -> Result<SimSummary, SimError> {
    let hello = Hello {
        system_id: None,
        serial: serial.try_into().unwrap_or_default(),
        manufacturer: "Vitalbridge simulator".try_into().unwrap_or_default(),
        model: "sim-serial".try_into().unwrap_or_default(),
        firmware: env!("CARGO_PKG_VERSION").try_into().unwrap_or_default(),
        profile: "vitalbridge-sim-serial".try_into().unwrap_or_default(),
    };
    let policy = RetryPolicy {
        ack_timeout_ms: u32::try_from(ack_timeout.as_millis()).unwrap_or(u32::MAX),
        nack_backoff_ms: 2_000,
    };
    let mut outbox: Outbox<OUTBOX_CAPACITY> = Outbox::new(first_seq, policy);
    let mut summary = SimSummary::default();
    let boot = Instant::now();
    let mut next_measurement = Instant::now();
    let mut last_heartbeat = Instant::now();
    'connections: loop {
        let Some(stream) = open(options, summary.connections > 0, &stop).await? else {
            break;
        };
        summary.connections += 1;
        let (mut rx, mut tx) = tokio::io::split(stream);
        let mut accumulator = FrameAccumulator::new();
        outbox.resend_all();
        let mut hello_due = true;
        let mut buf = [0u8; 512];
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            let done = options.count > 0 && summary.produced >= options.count && outbox.is_empty();
            if done || stop.is_cancelled() {
                break 'connections;
            }
            let mut out: Vec<u8> = Vec::new();
            if hello_due {
                hello_due = false;
                out.push(0);
                out.extend(encode_to_vec(&hello.clone().into()).unwrap_or_default());
                let request = TimeRequest {
                    token: boot.elapsed().as_millis() as u32,
                    device_time: DeviceTime::UnixMillis(unix_millis(std::time::SystemTime::now())),
                };
                out.extend(encode_to_vec(&request.into()).unwrap_or_default());
            }
            let now = Instant::now();
            while (options.count == 0 || summary.produced < options.count)
                && now >= next_measurement
                && !outbox.is_full()
            {
                let time = DeviceTime::UnixMillis(unix_millis(std::time::SystemTime::now()));
                if outbox
                    .push(firmware_reading(outbox.next_seq(), time))
                    .is_ok()
                {
                    summary.produced += 1;
                }
                next_measurement += options.interval;
            }
            let mono = boot.elapsed().as_millis() as u64;
            while let Some(batch) = outbox.poll(mono) {
                out.extend(encode_to_vec(&batch.into()).unwrap_or_default());
                summary.frames_sent += 1;
            }
            if last_heartbeat.elapsed() >= HEARTBEAT {
                last_heartbeat = Instant::now();
                let heartbeat = Heartbeat {
                    uptime_secs: boot.elapsed().as_secs() as u32,
                    pending: u16::try_from(outbox.len()).unwrap_or(u16::MAX),
                    device_time: DeviceTime::UnixMillis(unix_millis(std::time::SystemTime::now())),
                };
                out.extend(encode_to_vec(&heartbeat.into()).unwrap_or_default());
            }
            if !out.is_empty() && tx.write_all(&out).await.is_err() {
                tracing::warn!("simulator: port lost; reopening");
                continue 'connections;
            }
            tokio::select! {
                read = rx.read(&mut buf) => match read {
                    Ok(0) | Err(_) => {
                        tracing::warn!("simulator: port lost; reopening");
                        tokio::select! {
                            _ = tokio::time::sleep(REOPEN) => {}
                            _ = stop.cancelled() => {}
                        }
                        continue 'connections;
                    }
                    Ok(n) => {
                        let mono = boot.elapsed().as_millis() as u64;
                        for message in accumulator.frames(&buf[..n]).flatten() {
                            match message {
                                Message::Ack(ack) => {
                                    summary.acknowledged += outbox.handle_ack(&ack) as u64;
                                }
                                Message::Nack(nack) if nack.reason == NackReason::Unidentified => {
                                    hello_due = true;
                                    outbox.resend_all();
                                }
                                Message::Nack(nack) => {
                                    outbox.handle_nack(&nack, mono);
                                }
                                _ => {}
                            }
                        }
                    }
                },
                _ = tick.tick() => {}
                _ = stop.cancelled() => {}
            }
        }
    }
    Ok(summary)
}

async fn run_line(
    options: &SimOptions,
    profile: &LineProfile,
    stop: CancellationToken,
) -> Result<SimSummary, SimError> {
    let templates = line_templates(profile);
    if templates.is_empty() {
        return Err(SimError::NoExamples(profile.id.clone()));
    }
    let mut summary = SimSummary::default();
    let mut clock: Option<OffsetDateTime> = None;
    'connections: loop {
        let Some(mut stream) = open(options, summary.connections > 0, &stop).await? else {
            break;
        };
        summary.connections += 1;
        let mut tick = tokio::time::interval(options.interval);
        loop {
            if (options.count > 0 && summary.produced >= options.count) || stop.is_cancelled() {
                break 'connections;
            }
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break 'connections,
            }
            // A device clock that never repeats a second: at least one second per line.
            let now = OffsetDateTime::now_utc()
                .replace_millisecond(0)
                .unwrap_or(OffsetDateTime::now_utc());
            let t = match clock {
                Some(last) if now <= last => last + time::Duration::seconds(1),
                _ => now,
            };
            let i = summary.produced as usize;
            let line = simulated_line(profile, &templates[i % templates.len()], i, t);
            let mut bytes = line.into_bytes();
            bytes.extend_from_slice(b"\r\n");
            if stream.write_all(&bytes).await.is_err() {
                tracing::warn!("simulator: port lost; reopening");
                continue 'connections;
            }
            clock = Some(t);
            summary.produced += 1;
            summary.frames_sent += 1;
        }
    }
    Ok(summary)
}

/// Example lines that decode to readings with no status flags: the shapes to imitate.
pub fn line_templates(profile: &LineProfile) -> Vec<String> {
    profile
        .examples
        .iter()
        .filter(|e| {
            matches!(
                profile.decode_example(&e.line),
                Ok(Decoded::Readings(r)) if !r.is_empty() && r.iter().all(|r| r.status.is_empty())
            )
        })
        .map(|e| e.line.clone())
        .collect()
}

/// `template` with its time stamp set to `t` and its numbers varied by `i`.
pub fn simulated_line(
    profile: &LineProfile,
    template: &str,
    i: usize,
    t: OffsetDateTime,
) -> String {
    let Ok(fields) = profile.fields(template) else {
        return template.to_owned();
    };
    let mut replacements: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    if let Some((time_fields, format)) = profile.time_fields() {
        // The layout joins the fields with one space; split the formatted time the same way.
        let text = format.format(t);
        let mut parts = text.split(' ');
        for name in time_fields {
            if let (Some((_, range)), Some(part)) =
                (fields.iter().find(|(n, _)| n == name), parts.next())
            {
                replacements.push((range.clone(), part.to_owned()));
            }
        }
    }
    for (name, absent) in profile.metric_fields() {
        let Some((_, range)) = fields.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        let text = &template[range.clone()];
        if absent.iter().any(|a| a == text.trim()) {
            continue;
        }
        replacements.push((range.clone(), vary(text, i)));
    }
    replacements.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut line = template.to_owned();
    for (range, text) in replacements {
        line.replace_range(range, &text);
    }
    line
}

/// Adds `i % 3` to the last digit of a number written in `text`, keeping its width; leaves it
/// unchanged when that would not fit.
fn vary(text: &str, i: usize) -> String {
    let mut digits: Vec<u8> = text.bytes().collect();
    let Some(last) = digits.iter().rposition(u8::is_ascii_digit) else {
        return text.to_owned();
    };
    let d = digits[last] - b'0' + (i % 3) as u8;
    if d > 9 {
        return text.to_owned();
    }
    digits[last] = b'0' + d;
    String::from_utf8(digits).unwrap_or_else(|_| text.to_owned())
}
