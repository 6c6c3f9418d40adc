//! One connection to one device: discover, set up time, subscribe, fetch stored records,
//! and turn every notification into committed readings.
//!
//! # Order of a session
//!
//! 1. Discover; pick the profile (configured, else by advertised or discovered service).
//! 2. Read Device Information model and manufacturer names (0x2A24, 0x2A29) if present
//!    (printable, at most [`crate::limits::MAX_NAME_LEN`] bytes; a longer one is not used).
//! 3. **Clock.** If the profile uses Current Time and the device has 0x2A2B, read it: the
//!    difference to the gateway's clock is the session's clock offset, put on every reading as
//!    [`crate::model::Reading::clock_offset`] (the raw device time stays the reading's
//!    `device_time` and its identifier). Differences within [`CLOCK_TOLERANCE`] are the
//!    one-second resolution of a Date Time plus link latency, and are not corrections.
//! 4. Take the notification stream, then subscribe to every characteristic the profile names
//!    for subscription (and the Record Access Control Point when it uses RACP).
//! 5. **Stored records (glucose).** Ask the meter for the records after the highest
//!    sequence number already in the buffer ([`racp::Request::after`]). A measurement that
//!    announces a context is held until its context (same sequence number) arrives, and both
//!    are committed in one transaction; the next measurement or the end of the procedure
//!    commits a measurement whose context never came. A disconnection drops only what was
//!    not committed, which the next session asks for again: nothing missed, nothing fetched
//!    twice. Records arrive in ascending sequence order, so committed records are always
//!    a prefix of what was asked for.
//! 6. **Setting the clock.** When the device lets the gateway write 0x2A2B, its clock is off
//!    (or was never set: a "not known" date) and `set_device_clock` is on, the gateway writes its own time (UTC) once the stored
//!    measurements are in — after the RACP procedure ends, or [`Timing::clock_settle`] after
//!    subscribing for devices that send stored measurements right after subscription (cuffs,
//!    scales) — and reads the clock again for the measurements that follow. Measurements the
//!    device stamped before the write keep the offset measured before it.
//! 7. Every value is decoded with the characteristic's decoder and committed through
//!    [`Ingest::commit`]; one that does not decode is dead-lettered through
//!    [`Ingest::reject`] with the decoder's error (it names the field, never a value).
//!
//! A device that disconnects (a cuff that connected to deliver one measurement) ends the
//! session normally; so does the end of a glucose meter's record transfer, after which the
//! gateway disconnects (a meter sends nothing unless asked).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::central::{format_address, Address, BleError, GattCharacteristic, Link, Notification};
use super::profiles::Profiles;
use super::SessionEnv;
use crate::error_chain::Chain;
use crate::limits::MAX_NAME_LEN;
use crate::model::{hex_upper, DeviceId, DeviceRef, Reading};
use crate::ops::metrics::Metrics;
use crate::pipeline::CommitError;
use crate::profile::ble::glucose::{attach_context, GlucoseContext, GlucoseMeasurement};
use crate::profile::ble::profile_file::BleProfile;
use crate::profile::ble::{datetime, racp, Decoder};
use crate::profile::FrameContext;

/// Current Time characteristic.
pub const CURRENT_TIME: u16 = 0x2A2B;
/// Record Access Control Point characteristic.
pub const RACP: u16 = 0x2A52;
/// Device Information: Model Number String.
pub const MODEL_NUMBER: u16 = 0x2A24;
/// Device Information: Manufacturer Name String.
pub const MANUFACTURER_NAME: u16 = 0x2A29;

/// Device clock differences up to this are not corrected (Date Time has one-second
/// resolution; reading it takes a link round trip).
pub const CLOCK_TOLERANCE: time::Duration = time::Duration::seconds(2);

/// How a session ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The device went away (for most cuffs and scales, the normal end).
    Disconnected,
    /// The gateway fetched everything the device had (a glucose meter's transfer ended) and
    /// disconnects.
    Completed,
    /// The gateway is shutting down.
    Shutdown,
}

type BoxedWrite<'a> = Pin<Box<dyn Future<Output = Result<(), BleError>> + Send + 'a>>;

/// A glucose measurement waiting for its context.
struct PendingGlucose {
    sequence: u16,
    readings: Vec<Reading>,
}

/// Where the RACP procedure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Racp {
    /// Not used for this device.
    Unused,
    /// Request written (or being written); records arriving.
    InProgress,
    /// The meter ended the procedure.
    Done,
}

/// Runs one session over a connected `link` (see the module doc).
pub(super) async fn run<L: Link>(
    link: &L,
    address: Address,
    configured_profile: Option<Arc<BleProfile>>,
    advertised: &[u16],
    profiles: &Profiles,
    env: &SessionEnv,
    link_lost: &CancellationToken,
) -> Result<SessionEnd, BleError> {
    let timing = env.timing;
    let chars = bounded(timing.connect_timeout, "service discovery", link.discover()).await?;
    let discovered: Vec<u16> = chars.iter().map(|c| c.service).collect();
    let profile = configured_profile
        .or_else(|| profiles.for_services(advertised))
        .or_else(|| profiles.for_services(&discovered))
        .ok_or_else(|| {
            BleError::operation(
                "profile selection",
                "the device offers no service a device profile names; set `profile`",
            )
        })?;
    let key = hex_upper(&address);
    let find = |uuid: u16| chars.iter().find(|c| c.uuid == uuid).copied();

    let model = read_text(link, find(MODEL_NUMBER), "model number", &key).await;
    let manufacturer = read_text(link, find(MANUFACTURER_NAME), "manufacturer name", &key).await;
    let device = DeviceRef {
        id: DeviceId::Bluetooth(address),
        profile: profile.id.clone(),
        model,
        manufacturer,
    };

    let current_time = find(CURRENT_TIME).filter(|_| profile.uses_current_time());
    let clock = match current_time {
        Some(c) if c.properties.read => read_clock(link, &key).await,
        _ => Clock::default(),
    };
    let mut clock_offset = clock.offset;
    let clock_writable = env.set_device_clock && current_time.is_some_and(|c| c.properties.write);

    let mut notifications = link.notifications().await?;
    let subscriptions = profile.subscriptions();
    for (uuid, decoder) in &subscriptions {
        match find(*uuid) {
            Some(c) if c.properties.notify || c.properties.indicate => {
                link.subscribe(*uuid).await?
            }
            Some(_) => tracing::warn!(
                device = %key,
                characteristic = format!("{uuid:04X}"),
                "characteristic can neither notify nor indicate; not subscribed"
            ),
            None if required(&profile, *uuid) => tracing::warn!(
                device = %key,
                characteristic = format!("{uuid:04X}"),
                decoder = decoder.name(),
                "device lacks a characteristic its profile requires"
            ),
            None => {}
        }
    }
    let mut racp_state = Racp::Unused;
    let mut racp_write: Option<BoxedWrite<'_>> = None;
    // RACP resumes by sequence number, which only glucose records have (a PLX meter's stored
    // spot-checks have none to resume from, so they are not fetched).
    let sequenced = subscriptions
        .iter()
        .any(|(_, d)| *d == Decoder::GlucoseMeasurement);
    if profile.uses_racp() && sequenced {
        match find(RACP) {
            Some(_) => {
                link.subscribe(RACP).await?;
                let last = match env.ingest.last_sequence(&key).await {
                    Ok(last) => last,
                    Err(CommitError::Closed) => return Ok(SessionEnd::Shutdown),
                    Err(e) => return Err(BleError::operation("buffer query", e)),
                };
                let request = racp::Request::after(last);
                tracing::info!(device = %key, ?request, "asking the meter for stored records");
                racp_write = Some(Box::pin(link.write(RACP, request.encode())));
                racp_state = Racp::InProgress;
            }
            None => tracing::warn!(
                device = %key,
                "device has no Record Access Control Point; only live measurements arrive"
            ),
        }
    }
    tracing::info!(
        device = %key,
        profile = %profile.id,
        subscriptions = subscriptions.len(),
        clock_offset_ms = clock_offset.map(|d| d.whole_milliseconds() as i64),
        "BLE device connected"
    );

    // When to set the device clock: after the stored data is in (RACP end, or settle time).
    let needs_setting = clock_writable && clock.needs_setting;
    let mut set_clock_at: Option<Instant> =
        (needs_setting && racp_state == Racp::Unused).then(|| Instant::now() + timing.clock_settle);

    let mut state = State {
        device,
        key: key.clone(),
        decoders: subscriptions,
        pending: None,
        env,
    };
    let end = loop {
        let clock_due = async {
            match set_clock_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let write_done = async {
            match racp_write.as_mut() {
                Some(w) => w.await,
                None => std::future::pending().await,
            }
        };
        // Values already received come first (`biased`, notifications polled first): BlueZ
        // confirmed each indication to the device when it arrived, so the device has
        // forgotten it. A device that hangs up right after its measurement (a cuff, a
        // scale) is reported gone while its values may still wait here; ending the session
        // on that report first lost them.
        tokio::select! {
            biased;
            n = notifications.recv() => {
                let Some(n) = n else { break SessionEnd::Disconnected };
                let ctx = FrameContext {
                    device: state.device.clone(),
                    patient: None,
                    received_at: OffsetDateTime::now_utc(),
                    clock_offset,
                    time_sync: clock_offset.map(|_| crate::model::TimeSync::BleCurrentTime),
                };
                match state.handle(n, &ctx, &mut racp_state).await {
                    Ok(Some(Racp::Done)) if needs_setting && set_clock_at.is_none() => {
                        set_clock_at = Some(Instant::now());
                    }
                    Ok(_) => {}
                    Err(CommitError::Closed) => break SessionEnd::Shutdown,
                    Err(e) => return Err(BleError::operation("buffer commit", e)),
                }
            }
            _ = env.shutdown.cancelled() => break SessionEnd::Shutdown,
            _ = link_lost.cancelled() => break SessionEnd::Disconnected,
            result = write_done => {
                racp_write = None;
                // The meter refused the request (or the link failed): retry with backoff.
                result?;
            }
            _ = clock_due => {
                set_clock_at = None;
                clock_offset = set_clock(link, &key, clock_offset).await;
            }
        }
        // A meter sends records only when asked: once the transfer (and the clock setting)
        // is done, let it go back to sleep.
        if racp_state == Racp::Done && set_clock_at.is_none() && racp_write.is_none() {
            break SessionEnd::Completed;
        }
    };
    // A measurement still waiting for its context is not committed: it was not confirmed
    // complete, and the next session asks for it again.
    if let Some(p) = state.pending.take() {
        tracing::info!(device = %key, sequence = p.sequence, "uncommitted glucose record will be fetched again");
    }
    Ok(end)
}

/// Whether a characteristic is mandatory in the profile.
fn required(profile: &BleProfile, uuid: u16) -> bool {
    profile.characteristics.iter().any(|c| {
        c.required && crate::profile::ble::parse_characteristic(&c.uuid).ok() == Some(uuid)
    })
}

/// Runs `f` for at most `limit`.
async fn bounded<T>(
    limit: Duration,
    what: &'static str,
    f: impl Future<Output = Result<T, BleError>>,
) -> Result<T, BleError> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| BleError::Timeout(what))?
}

/// A Device Information string (`what`, e.g. "model number") of device `key`.
async fn read_text<L: Link>(
    link: &L,
    c: Option<GattCharacteristic>,
    what: &'static str,
    key: &str,
) -> Option<String> {
    let c = c.filter(|c| c.properties.read)?;
    let bytes = link.read(c.uuid).await.ok()?;
    match device_text(&bytes) {
        Ok(text) => text,
        Err(limit) => {
            tracing::warn!(
                device = %key,
                characteristic = what,
                limit,
                "device information string longer than its limit; not used"
            );
            None
        }
    }
}

/// A Device Information string as the FHIR Device gets it: control characters (such as the
/// NUL padding of fixed-size fields) removed, trimmed; `None` when blank. Longer than
/// [`MAX_NAME_LEN`] bytes it is refused (`Err` with the limit) rather than cut, since a cut
/// name would be another name.
fn device_text(bytes: &[u8]) -> Result<Option<String>, usize> {
    let text: String = String::from_utf8_lossy(bytes)
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let text = text.trim();
    if text.len() > MAX_NAME_LEN {
        return Err(MAX_NAME_LEN);
    }
    Ok((!text.is_empty()).then(|| text.to_owned()))
}

/// What reading a device's Current Time told.
#[derive(Debug, Clone, Copy, Default)]
struct Clock {
    /// The correction (gateway − device) beyond [`CLOCK_TOLERANCE`]; `None` within it, or
    /// when the device does not know the time.
    offset: Option<time::Duration>,
    /// The clock is off, or not set at all ("not known" date): worth setting.
    needs_setting: bool,
}

/// Reads Current Time and works out the correction.
async fn read_clock<L: Link>(link: &L, key: &str) -> Clock {
    let bytes = match link.read(CURRENT_TIME).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(device = %key, error = %Chain(&e), "cannot read the device clock");
            return Clock::default();
        }
    };
    let now = OffsetDateTime::now_utc();
    match datetime::current_time(&bytes) {
        Ok(Some(device_now)) => {
            let offset = now - device_now;
            let off = offset.abs() > CLOCK_TOLERANCE;
            Clock {
                offset: off.then_some(offset),
                needs_setting: off,
            }
        }
        // The device's clock was never set (e.g. new batteries): its time stamps say "not
        // known" and readings get the receive time, until the clock is set.
        Ok(None) => Clock {
            offset: None,
            needs_setting: true,
        },
        Err(e) => {
            tracing::warn!(device = %key, error = %Chain(&e), "device clock value does not decode");
            Clock::default()
        }
    }
}

/// Writes the gateway's time to the device and reads the clock again; returns the offset for
/// what the device measures from now on.
async fn set_clock<L: Link>(
    link: &L,
    key: &str,
    before: Option<time::Duration>,
) -> Option<time::Duration> {
    let Some(value) = datetime::encode_current_time(OffsetDateTime::now_utc()) else {
        return before;
    };
    match link.write(CURRENT_TIME, value.to_vec()).await {
        Ok(()) => {
            tracing::info!(
                device = %key,
                corrected_ms = before.map(|d| d.whole_milliseconds() as i64),
                "device clock set"
            );
            read_clock(link, key).await.offset
        }
        Err(e) => {
            tracing::warn!(device = %key, error = %Chain(&e), "device refused the clock setting; correcting its times instead");
            before
        }
    }
}

/// What a session keeps between notifications.
struct State<'a> {
    device: DeviceRef,
    key: String,
    /// The profile's subscriptions: characteristic → decoder.
    decoders: Vec<(u16, Decoder)>,
    pending: Option<PendingGlucose>,
    env: &'a SessionEnv,
}

impl State<'_> {
    /// Handles one notification. Returns the RACP state when the procedure ended.
    async fn handle(
        &mut self,
        n: Notification,
        ctx: &FrameContext,
        racp_state: &mut Racp,
    ) -> Result<Option<Racp>, CommitError> {
        if n.characteristic == RACP {
            match racp::Response::parse(&n.value) {
                Ok(racp::Response::Code { code, .. }) => {
                    self.flush_pending().await?;
                    *racp_state = Racp::Done;
                    if code.is_ok() {
                        tracing::info!(device = %self.key, outcome = code.name(), "stored records fetched");
                    } else {
                        tracing::warn!(device = %self.key, outcome = code.name(), "the meter ended the record transfer with an error");
                    }
                    return Ok(Some(Racp::Done));
                }
                Ok(racp::Response::NumberOfRecords(_)) => {}
                Err(e) => {
                    tracing::warn!(device = %self.key, error = %Chain(&e), "RACP response does not decode")
                }
            }
            return Ok(None);
        }
        let Some(&(_, decoder)) = self.decoders.iter().find(|(u, _)| *u == n.characteristic) else {
            tracing::debug!(device = %self.key, characteristic = format!("{:04X}", n.characteristic), "notification from a characteristic the profile does not name");
            return Ok(None);
        };
        match decoder {
            Decoder::GlucoseMeasurement => match GlucoseMeasurement::parse(&n.value) {
                Ok(m) => {
                    self.flush_pending().await?;
                    let readings = m.to_readings(ctx);
                    if m.context_follows {
                        self.pending = Some(PendingGlucose {
                            sequence: m.sequence,
                            readings,
                        });
                        Ok(None)
                    } else {
                        self.commit(readings).await.map(|()| None)
                    }
                }
                Err(e) => self.reject(&n, &e).await.map(|()| None),
            },
            Decoder::GlucoseMeasurementContext => match GlucoseContext::parse(&n.value) {
                Ok(c) => {
                    let mut context = c.to_readings(ctx);
                    match self.pending.take() {
                        Some(p) if p.sequence == c.sequence => {
                            let mut all = p.readings;
                            attach_context(&all, &mut context);
                            all.extend(context);
                            self.commit(all).await.map(|()| None)
                        }
                        other => {
                            if let Some(p) = other {
                                self.commit(p.readings).await?;
                            }
                            self.commit(context).await.map(|()| None)
                        }
                    }
                }
                Err(e) => self.reject(&n, &e).await.map(|()| None),
            },
            _ => match decoder.decode(&n.value, ctx) {
                Ok(readings) => self.commit(readings).await.map(|()| None),
                Err(e) => self.reject(&n, &e).await.map(|()| None),
            },
        }
    }

    async fn flush_pending(&mut self) -> Result<(), CommitError> {
        match self.pending.take() {
            Some(p) => self.commit(p.readings).await,
            None => Ok(()),
        }
    }

    /// Assigns patients and commits; retries while the buffer is full.
    async fn commit(&self, mut readings: Vec<Reading>) -> Result<(), CommitError> {
        if readings.is_empty() {
            return Ok(());
        }
        let bindings = &self.env.bindings;
        let mut unassigned = None;
        for r in &mut readings {
            r.patient = bindings.patient_for(&self.key, r.device_user);
            if r.patient.is_none() && bindings.is_shared(&self.key) {
                unassigned = Some(r.device_user);
            }
        }
        if let Some(user) = unassigned {
            tracing::warn!(
                device = %self.key,
                user,
                "measurement from a shared device's unbound user: stored without a patient"
            );
        }
        loop {
            match self.env.ingest.commit(readings.clone()).await {
                Ok(c) => {
                    Metrics::add(&self.env.metrics.readings_in, c.readings as u64);
                    return Ok(());
                }
                Err(
                    CommitError::Full { .. }
                    | CommitError::LowSpace { .. }
                    | CommitError::Storage(_),
                ) => {
                    Metrics::add(&self.env.metrics.buffer_full, 1);
                    tokio::select! {
                        _ = tokio::time::sleep(self.env.timing.commit_retry) => {}
                        _ = self.env.shutdown.cancelled() => return Err(CommitError::Closed),
                    }
                }
                Err(CommitError::Closed) => return Err(CommitError::Closed),
            }
        }
    }

    async fn reject(
        &self,
        n: &Notification,
        e: &crate::profile::ble::DecodeError,
    ) -> Result<(), CommitError> {
        let origin = format!(
            "ble:{}/{:04X}",
            format_address_key(&self.device),
            n.characteristic
        );
        loop {
            match self
                .env
                .ingest
                .reject(origin.clone(), e.to_string(), &n.value)
                .await
            {
                Ok(()) => {
                    Metrics::add(&self.env.metrics.payloads_rejected, 1);
                    tracing::warn!(
                        device = %self.key,
                        characteristic = format!("{:04X}", n.characteristic),
                        incomplete = e.is_incomplete(),
                        "BLE value does not decode; dead-lettered"
                    );
                    return Ok(());
                }
                Err(
                    CommitError::Full { .. }
                    | CommitError::LowSpace { .. }
                    | CommitError::Storage(_),
                ) => {
                    tokio::select! {
                        _ = tokio::time::sleep(self.env.timing.commit_retry) => {}
                        _ = self.env.shutdown.cancelled() => return Err(CommitError::Closed),
                    }
                }
                Err(CommitError::Closed) => return Err(CommitError::Closed),
            }
        }
    }
}

fn format_address_key(d: &DeviceRef) -> String {
    match &d.id {
        DeviceId::Bluetooth(a) => format_address(a),
        other => other.key(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_information_strings_are_cleaned_and_over_long_ones_refused() {
        assert_eq!(device_text(b"BP-100\0\0\0"), Ok(Some("BP-100".into())));
        assert_eq!(device_text(b"  Acme\r\n"), Ok(Some("Acme".into())));
        assert_eq!(device_text(b"\0\0"), Ok(None));
        assert_eq!(
            device_text(&[b'M'; MAX_NAME_LEN]),
            Ok(Some("M".repeat(MAX_NAME_LEN)))
        );
        // A BLE attribute may hold 512 bytes.
        assert_eq!(device_text(&[b'M'; 512]), Err(MAX_NAME_LEN));
    }
}
