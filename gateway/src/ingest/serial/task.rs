//! The task that owns one serial port: open it (again and again), read, hand the bytes to
//! the protocol session, and perform what the session asks.
//!
//! ```text
//!              ┌──────────── read loop (this task) ─────────────┐
//!  port ──read─►  session.receive ─► Send ──try_send──► writer task ──write──► port
//!              │                  └► Commit/Reject ──spawn──► commit task ── Ingest
//!              │  session.committed ◄──────── join ───────────┘     │
//!              └────────────────────────────────────────────────────┘
//! ```
//!
//! - The loop never awaits the buffer or a write: commits run as tasks in a `JoinSet` whose
//!   results the loop takes like any other event, and answers go to a bounded queue that a
//!   writer task drains (a full queue drops the answer; the device resends). When
//!   [`MAX_IN_FLIGHT`] commits are running the loop stops reading until one finishes —
//!   backpressure onto the port, never a deadlock, since commits need nothing from the loop.
//! - When the device disappears (read error or end of stream; on Linux an unplugged USB
//!   adapter or a closed pty reads as `EIO`), the port is closed and reopened with the
//!   gateway's backoff ([`crate::backoff`]) from [`RECONNECT_INITIAL`] to the configured
//!   maximum, resolving a USB id afresh each time. Commits in flight keep running and their results still reach
//!   the session.
//! - On shutdown the task stops reading and answering, and gives commits in flight
//!   [`SHUTDOWN_DRAIN`] to finish: a line device's readings exist nowhere else, so its held
//!   commits keep retrying meanwhile (the buffer writer runs until every source has ended,
//!   and the uplink until the writer has, so a full buffer can still make room). Then held
//!   work gets one last attempt, answered within [`SHUTDOWN_LAST_TRY`]; whatever is still
//!   not stored is lost, and each lost reading and undecodable line is counted
//!   ([`Metrics::input_lost`]), audited (`input_lost`) and logged by count. The whole drain
//!   stays within the time `lib.rs` gives a source to stop. Then the task logs its counters.
//!
//! Logs carry the port name, path, counters and error kinds; never a value.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_serial::SerialStream;
use tokio_util::sync::CancellationToken;
use vitalbridge_firmware::gateway::encode_to_vec;

use super::lines::LineSession;
use super::port;
use super::session::Session;
use super::{Action, BatchId, CommitOutcome, Protocol, SerialSource};
use crate::backoff::Backoff;
use crate::error_chain::Chain;
use crate::ingest::SourceContext;
use crate::ops::audit::{Audit, Event};
use crate::ops::metrics::Metrics;
use crate::pipeline::{CommitError, Ingest};

/// Commits (or dead letters) running at once per port before the loop stops reading.
pub const MAX_IN_FLIGHT: usize = 64;
/// Answers queued for the writer; beyond this they are dropped (the device resends).
const WRITE_QUEUE: usize = 64;
/// Bytes read at once.
const READ_BUFFER: usize = 4096;
/// The ceiling of the first wait before reopening a port.
pub const RECONNECT_INITIAL: Duration = Duration::from_millis(250);
/// A connection that lasted this long resets the backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// Delay before retrying a held commit the buffer refused.
const COMMIT_RETRY: Duration = Duration::from_millis(250);
/// How long commits in flight may finish after shutdown begins (held ones retrying).
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);
/// After the drain, how long held work's last attempt may take to be answered. The drain
/// and this stay within `lib.rs`'s grace for a source to stop (5 s).
pub const SHUTDOWN_LAST_TRY: Duration = Duration::from_secs(1);
/// How often counters are logged while they change.
const STATS_INTERVAL: Duration = Duration::from_secs(60);

/// A protocol session of either kind.
enum Driver {
    Firmware(Box<Session>),
    Line(Box<LineSession>),
}

impl Driver {
    fn receive(&mut self, bytes: &[u8], now: OffsetDateTime) -> Vec<Action> {
        match self {
            Driver::Firmware(s) => s.receive(bytes, now),
            Driver::Line(s) => s.receive(bytes, now),
        }
    }

    fn committed(&mut self, batch: BatchId, outcome: CommitOutcome) -> Vec<Action> {
        match self {
            Driver::Firmware(s) => s.committed(batch, outcome),
            Driver::Line(s) => s.committed(batch, outcome),
        }
    }

    fn reconnected(&mut self) {
        match self {
            Driver::Firmware(s) => s.reconnected(),
            Driver::Line(s) => s.reconnected(),
        }
    }

    /// Bad frames or lines seen so far, for the metrics.
    fn bad(&self) -> u64 {
        match self {
            Driver::Firmware(s) => s.stats().bad_frames,
            Driver::Line(s) => s.stats().bad_lines,
        }
    }

    /// Whether bad input is kept as a dead-letter row (a line that does not decode), so it is
    /// counted there and not again as discarded.
    fn dead_letters_bad_input(&self) -> bool {
        matches!(self, Driver::Line(_))
    }

    /// The kind of the latest bad input, for a log line.
    fn last_error(&mut self) -> Option<&'static str> {
        match self {
            Driver::Firmware(s) => s.take_last_error(),
            Driver::Line(s) => s.take_last_error(),
        }
    }

    fn log_stats(&self, port: &str, message: &str) {
        match self {
            Driver::Firmware(s) => {
                let st = s.stats();
                tracing::info!(
                    port,
                    frames = st.frames,
                    bad_frames = st.bad_frames,
                    oversize = st.oversize,
                    cobs = st.cobs,
                    too_short = st.too_short,
                    bad_crc = st.bad_crc,
                    unsupported_version = st.unsupported_version,
                    decode = st.decode,
                    readings = st.readings,
                    retransmissions = st.retransmissions,
                    rejected = st.rejected,
                    unidentified = st.unidentified,
                    refused = st.refused,
                    time_requests = st.time_requests,
                    "{message}"
                );
            }
            Driver::Line(s) => {
                let st = s.stats();
                tracing::info!(
                    port,
                    lines = st.lines,
                    ignored = st.ignored,
                    bad_lines = st.bad_lines,
                    readings = st.readings,
                    "{message}"
                );
            }
        }
    }
}

/// Everything a commit task needs.
#[derive(Clone)]
struct Committer {
    ingest: Ingest,
    /// Cancelled at the end of the shutdown drain: held work stops retrying after one last
    /// attempt.
    give_up: CancellationToken,
    origin: String,
}

/// Held work (a line device's: it cannot be sent again) whose commit has not ended, by
/// batch, and what of it was lost.
#[derive(Debug, Default)]
struct Held {
    /// Batch → (readings, undecodable payloads) in flight.
    in_flight: HashMap<BatchId, (u64, u64)>,
    /// Readings that ended without being stored.
    lost_readings: u64,
    /// Undecodable payloads that ended without being dead-lettered.
    lost_payloads: u64,
}

impl Held {
    /// A commit task for `action` is starting.
    fn started(&mut self, action: &Action) {
        match action {
            Action::Commit {
                batch,
                readings,
                hold: true,
            } => {
                self.in_flight.insert(*batch, (readings.len() as u64, 0));
            }
            Action::Reject {
                batch, hold: true, ..
            } => {
                self.in_flight.insert(*batch, (0, 1));
            }
            _ => {}
        }
    }

    /// Batch `batch` ended with `outcome`.
    fn ended(&mut self, batch: BatchId, outcome: CommitOutcome) {
        if let Some((readings, payloads)) = self.in_flight.remove(&batch) {
            if outcome != CommitOutcome::Stored {
                self.lost_readings += readings;
                self.lost_payloads += payloads;
            }
        }
    }

    /// Everything still in flight is lost: its task is being dropped without an answer a
    /// full second after its last attempt began. (Should the writer, stuck that long, still
    /// store one later, it is stored once and counted as lost too: never the other way.)
    fn abandon(&mut self) {
        for (_, (readings, payloads)) in self.in_flight.drain() {
            self.lost_readings += readings;
            self.lost_payloads += payloads;
        }
    }
}

impl Committer {
    /// Runs a commit or dead letter to its end.
    async fn run(self, action: Action) -> (BatchId, CommitOutcome) {
        let (batch, hold) = match &action {
            Action::Commit { batch, hold, .. } | Action::Reject { batch, hold, .. } => {
                (*batch, *hold)
            }
            Action::Send(_) => return (0, CommitOutcome::Closed),
        };
        loop {
            let result = match &action {
                Action::Commit { readings, .. } => {
                    self.ingest.commit(readings.clone()).await.map(|_| ())
                }
                Action::Reject {
                    reason, payload, ..
                } => {
                    self.ingest
                        .reject(self.origin.clone(), reason.clone(), payload)
                        .await
                }
                Action::Send(_) => Ok(()),
            };
            match result {
                Ok(()) => return (batch, CommitOutcome::Stored),
                Err(CommitError::Closed) => return (batch, CommitOutcome::Closed),
                // Held work retries through shutdown too: the writer keeps running until
                // every source has ended.
                Err(
                    CommitError::Full { .. }
                    | CommitError::LowSpace { .. }
                    | CommitError::Storage(_),
                ) if hold && !self.give_up.is_cancelled() => {
                    tokio::select! {
                        _ = tokio::time::sleep(COMMIT_RETRY) => {}
                        _ = self.give_up.cancelled() => {}
                    }
                }
                Err(_) => return (batch, CommitOutcome::Refused),
            }
        }
    }
}

/// Why a connection ended.
enum End {
    Shutdown,
    Lost(String),
}

impl SerialSource {
    /// Serves the port until `shutdown`, then drains its commits (see the module doc).
    pub async fn run(self, ctx: SourceContext) {
        let SourceContext {
            ingest,
            bindings,
            metrics,
            audit,
            shutdown,
        } = ctx;
        let mut driver = match &self.protocol {
            Protocol::Firmware => Driver::Firmware(Box::new(Session::new(bindings))),
            Protocol::Line {
                profile,
                device,
                utc_offset,
            } => Driver::Line(Box::new(LineSession::new(
                (**profile).clone(),
                device.clone(),
                *utc_offset,
                bindings,
            ))),
        };
        let committer = Committer {
            ingest,
            give_up: CancellationToken::new(),
            origin: self.origin(),
        };
        let mut commits: JoinSet<(BatchId, CommitOutcome)> = JoinSet::new();
        let mut held = Held::default();
        let mut backoff = Backoff::new(RECONNECT_INITIAL, self.reconnect_max);
        let mut reported_unavailable = false;
        tracing::info!(port = %self.name, target = %self.target, settings = %self.settings, "serial source started");
        loop {
            let opened = port::resolve(&self.target, &self.roots)
                .and_then(|path| port::open(&path, self.settings).map(|s| (path, s)));
            match opened {
                Ok((path, stream)) => {
                    reported_unavailable = false;
                    tracing::info!(port = %self.name, path = %path.display(), "serial port open");
                    driver.reconnected();
                    let opened_at = Instant::now();
                    let end = self
                        .connection(
                            stream,
                            &mut driver,
                            (&mut commits, &mut held),
                            &committer,
                            (&metrics, &shutdown),
                        )
                        .await;
                    match end {
                        End::Shutdown => break,
                        End::Lost(why) => {
                            tracing::warn!(port = %self.name, path = %path.display(), reason = %why, "serial device disconnected; reopening");
                            driver.log_stats(&self.name, "serial port statistics");
                        }
                    }
                    if opened_at.elapsed() >= STABLE_CONNECTION {
                        backoff.reset();
                    }
                }
                Err(e) => {
                    if reported_unavailable {
                        tracing::debug!(port = %self.name, error = %Chain(&e), "serial port still unavailable");
                    } else {
                        tracing::warn!(port = %self.name, error = %Chain(&e), "serial port unavailable; retrying with backoff");
                        reported_unavailable = true;
                    }
                }
            }
            // Wait before reopening, still taking commit results (their answers have no
            // port to go to; the device resends and is answered from the dedupe).
            let wait = tokio::time::sleep(backoff.next_delay());
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    _ = shutdown.cancelled() => break,
                    Some(done) = commits.join_next() => {
                        if let Ok((batch, outcome)) = done {
                            held.ended(batch, outcome);
                            let _ = driver.committed(batch, outcome);
                        }
                    }
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        // Let commits in flight finish: for a line device they are the only copy.
        if !drain(&mut commits, &mut held, &mut driver, SHUTDOWN_DRAIN).await {
            committer.give_up.cancel();
            drain(&mut commits, &mut held, &mut driver, SHUTDOWN_LAST_TRY).await;
        }
        // Dropping the set aborts what is left: it was never answered.
        commits.abort_all();
        held.abandon();
        self.report_lost(&held, committer.ingest.source(), &metrics, &audit);
        driver.log_stats(&self.name, "serial port statistics (final)");
    }

    /// Counts, audits and logs what the port could not store (by count only).
    fn report_lost(&self, held: &Held, source: &str, metrics: &Metrics, audit: &Audit) {
        let (readings, payloads) = (held.lost_readings, held.lost_payloads);
        if readings == 0 && payloads == 0 {
            return;
        }
        metrics.input_lost(source, readings, payloads);
        audit.record(Event::InputLost {
            source,
            origin: &self.origin(),
            readings,
            payloads,
        });
        tracing::error!(
            port = %self.name,
            readings,
            undecodable_lines = payloads,
            "readings from this port were not stored before the gateway stopped (the buffer stayed full or failing) and the device cannot send them again: they are lost"
        );
    }

    /// Serves one open connection until the device is lost or shutdown begins.
    async fn connection(
        &self,
        stream: SerialStream,
        driver: &mut Driver,
        (commits, held): (&mut JoinSet<(BatchId, CommitOutcome)>, &mut Held),
        committer: &Committer,
        (metrics, shutdown): (&Metrics, &CancellationToken),
    ) -> End {
        let (mut reader, writer) = tokio::io::split(stream);
        let (answers, queue) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
        let writer = tokio::spawn(write_loop(writer, queue));
        let mut buf = vec![0u8; READ_BUFFER];
        let mut warned_bad_input = false;
        let mut stats_tick = tokio::time::interval(STATS_INTERVAL);
        stats_tick.tick().await;
        let mut bad_at_last_log = driver.bad();
        let end = loop {
            let actions = tokio::select! {
                _ = shutdown.cancelled() => break End::Shutdown,
                read = reader.read(&mut buf), if commits.len() < MAX_IN_FLIGHT => match read {
                    Ok(0) => break End::Lost("end of stream".into()),
                    Err(e) => break End::Lost(e.to_string()),
                    Ok(n) => {
                        let bad_before = driver.bad();
                        let actions = driver.receive(&buf[..n], OffsetDateTime::now_utc());
                        let bad = driver.bad() - bad_before;
                        if bad > 0 {
                            if !driver.dead_letters_bad_input() {
                                metrics.input_discarded(committer.ingest.source(), bad);
                            }
                            if let Some(kind) = driver.last_error() {
                                if warned_bad_input {
                                    tracing::debug!(port = %self.name, kind, "bad serial input");
                                } else {
                                    warned_bad_input = true;
                                    tracing::warn!(port = %self.name, kind, "bad serial input (noise, wrong settings, or a truncated frame); counted, further ones at debug level");
                                }
                            }
                        }
                        actions
                    }
                },
                Some(done) = commits.join_next() => match done {
                    Ok((batch, outcome)) => {
                        held.ended(batch, outcome);
                        driver.committed(batch, outcome)
                    }
                    Err(_) => Vec::new(),
                },
                _ = stats_tick.tick() => {
                    if driver.bad() != bad_at_last_log {
                        bad_at_last_log = driver.bad();
                        driver.log_stats(&self.name, "serial port statistics");
                    }
                    Vec::new()
                }
            };
            for action in actions {
                match action {
                    Action::Send(message) => {
                        let Ok(bytes) = encode_to_vec(&message) else {
                            continue;
                        };
                        if answers.try_send(bytes).is_err() {
                            tracing::debug!(port = %self.name, "answer dropped: the device is not reading; it will resend");
                        }
                    }
                    work => {
                        held.started(&work);
                        commits.spawn(committer.clone().run(work));
                    }
                }
            }
        };
        drop(answers);
        // The writer ends when its queue closes; a write blocked by flow control is cut, so
        // the port is really closed before it is reopened.
        let abort = writer.abort_handle();
        if tokio::time::timeout(Duration::from_millis(200), writer)
            .await
            .is_err()
        {
            abort.abort();
            tracing::debug!(port = %self.name, "writer did not finish; dropped");
        }
        end
    }
}

/// Takes the results of commits in flight until none is left (`true`) or `limit` passed.
async fn drain(
    commits: &mut JoinSet<(BatchId, CommitOutcome)>,
    held: &mut Held,
    driver: &mut Driver,
    limit: Duration,
) -> bool {
    tokio::time::timeout(limit, async {
        while let Some(done) = commits.join_next().await {
            if let Ok((batch, outcome)) = done {
                held.ended(batch, outcome);
                let _ = driver.committed(batch, outcome);
            }
        }
    })
    .await
    .is_ok()
}

async fn write_loop(mut port: WriteHalf<SerialStream>, mut queue: mpsc::Receiver<Vec<u8>>) {
    while let Some(bytes) = queue.recv().await {
        if port.write_all(&bytes).await.is_err() {
            // The read side sees the same failure and reconnects.
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(batch: BatchId, readings: usize, hold: bool) -> Action {
        let reading = crate::profile::canonical::decode(
            br#"{"device":"d","metric":"spo2","value":97}"#,
            OffsetDateTime::UNIX_EPOCH,
            &|_, _| None,
        )
        .unwrap()
        .remove(0);
        Action::Commit {
            batch,
            readings: vec![reading; readings],
            hold,
        }
    }

    #[test]
    fn held_work_that_ends_unstored_or_unanswered_is_counted_as_lost() {
        let mut held = Held::default();
        held.started(&commit(1, 3, true));
        held.started(&commit(2, 3, true));
        held.started(&commit(3, 2, false));
        held.started(&Action::Reject {
            batch: 4,
            reason: "r".into(),
            payload: vec![1],
            hold: true,
        });
        held.started(&commit(5, 3, true));
        held.ended(1, CommitOutcome::Stored);
        held.ended(2, CommitOutcome::Refused);
        // Not held: the device sends it again.
        held.ended(3, CommitOutcome::Refused);
        held.ended(4, CommitOutcome::Closed);
        assert_eq!((held.lost_readings, held.lost_payloads), (3, 1));
        held.abandon();
        assert_eq!((held.lost_readings, held.lost_payloads), (6, 1));
        assert!(held.in_flight.is_empty());
    }
}
