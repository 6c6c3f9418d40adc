//! One uplink worker: lease → send → settle, forever. `in_flight` workers run at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use time::OffsetDateTime;

use super::{Cause, Outcome, SendError, Transport};
use crate::backoff::Backoff;
use crate::buffer::{Destination, Leased, Store};
use crate::error_chain::Chain;
use crate::model::Reading;
use crate::ops::audit::{Audit, Event};
use crate::ops::metrics::Metrics;

/// Worker settings.
#[derive(Debug, Clone, Copy)]
pub struct BatcherConfig {
    /// Readings per batch.
    pub batch_size: usize,
    /// How long a batch that is not full waits for company, counted from its oldest
    /// reading's arrival at the gateway: fewer, fuller requests at steady rates, for at most
    /// this much added latency. Zero: send whatever is there at once.
    pub linger: Duration,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

/// The most readings per request a destination was seen to take after refusing more, shared
/// by its workers (0: nothing learned). It only ever goes down, and lasts until the gateway
/// restarts.
#[derive(Debug, Default)]
pub struct LearnedLimit(AtomicUsize);

impl LearnedLimit {
    /// The learned limit, if any.
    pub fn get(&self) -> Option<usize> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// Learns `rows` when it is below what was known; says whether it was.
    fn learn(&self, rows: usize) -> bool {
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            if rows == 0 || (current != 0 && current <= rows) {
                return false;
            }
            match self
                .0
                .compare_exchange(current, rows, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }
}

/// The two halves of a batch refused as a whole. If both pass, the refusal was the request's
/// size, not a reading in it, and the larger half is a size the destination takes.
#[derive(Debug)]
struct Probe {
    /// The refused batch's size.
    refused: usize,
    /// Halves not yet answered.
    left: AtomicUsize,
    /// A half was refused too: a reading is at fault (or the halves are still too large).
    failed: AtomicBool,
    /// The larger half that passed.
    passed: AtomicUsize,
}

impl Probe {
    fn new(refused: usize) -> Arc<Self> {
        Arc::new(Probe {
            refused,
            left: AtomicUsize::new(2),
            failed: AtomicBool::new(false),
            passed: AtomicUsize::new(0),
        })
    }

    /// Records one half's answer; `Some(size)` once both halves passed.
    fn answered(&self, rows: usize, passed: bool) -> Option<usize> {
        if passed {
            self.passed.fetch_max(rows, Ordering::Relaxed);
        } else {
            self.failed.store(true, Ordering::Relaxed);
        }
        let last = self.left.fetch_sub(1, Ordering::Relaxed) == 1;
        (last && !self.failed.load(Ordering::Relaxed)).then(|| self.passed.load(Ordering::Relaxed))
    }
}

/// How long an idle worker sleeps before looking again even without a commit signal.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Where a worker reports outcomes: counters and health, and the audit log.
struct Report<'a> {
    /// The destination in the buffer this worker delivers to.
    destination: &'a Destination,
    metrics: &'a Metrics,
    audit: &'a Audit,
    /// The transport's name.
    uplink: &'static str,
    /// `uplink:<name>`: dead-letter origin and audit peer.
    origin: &'a str,
}

impl Report<'_> {
    /// Dead-letters `rows` (id, reason) with a cause for the audit log.
    async fn dead_letter(&self, store: &Store, rows: &[(i64, String)], cause: &str) {
        match store.dead_letter(self.destination, self.origin, rows).await {
            Ok(()) => {
                self.metrics
                    .uplink_dead_lettered(self.uplink, rows.len() as u64);
                self.audit.record(Event::ReadingsDeadLettered {
                    uplink: self.origin,
                    count: rows.len(),
                    cause,
                });
            }
            Err(e) => {
                tracing::error!(error = %Chain(&e), "cannot dead-letter rows; they stay queued")
            }
        }
    }
}

/// What one worker works with.
pub struct Worker<T> {
    /// The buffer.
    pub store: Store,
    /// The destination in the buffer this worker delivers to.
    pub destination: Destination,
    /// How it delivers.
    pub transport: Arc<T>,
    /// Batch size, linger, retry delays.
    pub config: BatcherConfig,
    /// Counters and health.
    pub metrics: Arc<Metrics>,
    /// The audit log.
    pub audit: Audit,
    /// Shared by the destination's workers: one fills a batch at a time, so that at steady
    /// rates the batches are full rather than split between workers.
    pub collecting: Arc<tokio::sync::Mutex<()>>,
    /// The request size the destination was seen to take, shared by its workers.
    pub learned: Arc<LearnedLimit>,
    /// Cancelled when the gateway stops.
    pub shutdown: CancellationToken,
}

/// Runs one worker until `shutdown`. A batch being sent when shutdown comes is finished (its
/// transport has its own timeout); a batch waiting to retry is released at once.
pub async fn run<T: Transport>(worker: Worker<T>) {
    let Worker {
        store,
        destination,
        transport,
        config,
        metrics,
        audit,
        collecting,
        learned,
        shutdown,
    } = worker;
    let mut commits = store.subscribe_commits();
    let origin = format!("uplink:{}", transport.name());
    let report = Report {
        destination: &destination,
        metrics: &metrics,
        audit: &audit,
        uplink: transport.name(),
        origin: &origin,
    };
    while !shutdown.is_cancelled() {
        let leased = {
            let _turn = collecting.lock().await;
            collect(&store, &destination, &config, &mut commits, &shutdown).await
        };
        if leased.is_empty() {
            continue;
        }
        let (good, broken): (Vec<Leased>, Vec<Leased>) =
            leased.into_iter().partition(|l| l.reading.is_ok());
        if !broken.is_empty() {
            let rows: Vec<(i64, String)> = broken
                .iter()
                .map(|l| {
                    (
                        l.id,
                        l.reading
                            .as_ref()
                            .err()
                            .map(|e| Chain(e).to_string())
                            .unwrap_or_default(),
                    )
                })
                .collect();
            tracing::error!(
                rows = rows.len(),
                "stored readings cannot be decoded; dead-lettering them"
            );
            report.dead_letter(&store, &rows, "undecodable_row").await;
        }
        let rows: Vec<(i64, Reading)> = good
            .into_iter()
            .filter_map(|l| l.reading.ok().map(|r| (l.id, r)))
            .collect();
        deliver(
            &store,
            transport.as_ref(),
            &config,
            &report,
            &learned,
            rows,
            &shutdown,
        )
        .await;
    }
}

/// Leases a batch for `destination`: what is there, and while the batch is not full and its
/// oldest reading arrived less than `config.linger` ago, what comes next. Empty when there is
/// nothing to send (after waiting a little for a commit), or on shutdown.
async fn collect(
    store: &Store,
    destination: &Destination,
    config: &BatcherConfig,
    commits: &mut tokio::sync::watch::Receiver<u64>,
    shutdown: &CancellationToken,
) -> Vec<Leased> {
    let mut batch: Vec<Leased> = Vec::new();
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        commits.borrow_and_update();
        match store
            .lease(destination, config.batch_size - batch.len())
            .await
        {
            Ok(more) => batch.extend(more),
            Err(e) => {
                tracing::error!(error = %Chain(&e), "cannot lease from buffer");
                if batch.is_empty() {
                    sleep_or_cancel(IDLE_POLL, shutdown).await;
                }
                return batch;
            }
        }
        if batch.len() >= config.batch_size || (config.linger.is_zero() && !batch.is_empty()) {
            return batch;
        }
        if batch.is_empty() {
            tokio::select! {
                _ = commits.changed() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = shutdown.cancelled() => {}
            }
            return batch;
        }
        let deadline = *deadline.get_or_insert_with(|| {
            let now = OffsetDateTime::now_utc();
            let oldest = batch
                .iter()
                .filter_map(|l| l.reading.as_ref().ok().map(|r| r.received_at))
                .min()
                .unwrap_or(now);
            let waited = (now - oldest).unsigned_abs();
            tokio::time::Instant::now() + config.linger.saturating_sub(waited)
        });
        tokio::select! {
            _ = commits.changed() => {}
            _ = tokio::time::sleep_until(deadline) => return batch,
            _ = shutdown.cancelled() => return batch,
        }
    }
}

async fn sleep_or_cancel(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.cancelled() => false,
    }
}

/// Rows still to send, and the probe they answer, if they are half of a refused batch.
type Part = (Vec<(i64, Reading)>, Option<Arc<Probe>>);

/// Sends one leased batch until every row is delivered or dead-lettered, or shutdown.
async fn deliver<T: Transport>(
    store: &Store,
    transport: &T,
    config: &BatcherConfig,
    report: &Report<'_>,
    learned: &LearnedLimit,
    rows: Vec<(i64, Reading)>,
    shutdown: &CancellationToken,
) {
    // Work list of sub-batches; a permanently refused batch is split until the culprit is
    // alone. The halves of a split carry their probe; the rest of a batch cut to fit a
    // request carries none.
    let mut work: Vec<Part> = vec![(rows, None)];
    while let Some((mut batch, mut probe)) = work.pop() {
        let mut backoff = Backoff::new(config.retry_initial, config.retry_max);
        {
            let refs: Vec<(i64, &Reading)> = batch.iter().map(|(id, r)| (*id, r)).collect();
            let fits = transport
                .fit(&refs)
                .min(learned.get().unwrap_or(usize::MAX))
                .max(1);
            if fits < batch.len() {
                let rest = batch.split_off(fits);
                work.push((rest, None));
            }
        }
        while !batch.is_empty() {
            let refs: Vec<(i64, &Reading)> = batch.iter().map(|(id, r)| (*id, r)).collect();
            let sent = refs.len();
            let delay = match transport.send(&refs).await {
                Ok(outcomes) => {
                    if let Some(p) = probe.take() {
                        if let Some(size) = p.answered(sent, true) {
                            if learned.learn(size) {
                                tracing::info!(
                                    transport = transport.name(),
                                    refused = p.refused,
                                    took = size,
                                    "the destination refused a request of {} readings and took {size}: sending at most {size} per request from now on",
                                    p.refused
                                );
                            }
                        }
                    }
                    report.metrics.uplink_answered(report.uplink);
                    let mut delivered = Vec::new();
                    let mut received: Vec<OffsetDateTime> = Vec::new();
                    let mut rejected = Vec::new();
                    let mut again = Vec::new();
                    let mut retry_reason = None;
                    for ((id, reading), outcome) in batch.into_iter().zip(outcomes) {
                        match outcome {
                            Outcome::Delivered => {
                                delivered.push(id);
                                received.push(reading.received_at);
                            }
                            Outcome::Rejected(refusal) => rejected.push((id, refusal)),
                            Outcome::Retry(reason) => {
                                retry_reason = Some(reason);
                                again.push((id, reading));
                            }
                        }
                    }
                    match store.ack(report.destination, &delivered).await {
                        // Count the rows this ack removed: a row another worker already
                        // delivered (after its lease ran out) is not counted twice.
                        Ok(n) => {
                            let n = usize::try_from(n).unwrap_or(usize::MAX).min(received.len());
                            report
                                .metrics
                                .uplink_delivered(report.uplink, &received[..n]);
                        }
                        Err(e) => {
                            tracing::error!(error = %Chain(&e), "cannot delete delivered rows; they will be resent (idempotent)")
                        }
                    }
                    if !rejected.is_empty() {
                        tracing::warn!(
                            transport = transport.name(),
                            rows = rejected.len(),
                            "destination refused readings; dead-lettered"
                        );
                        // Entries refused one by one may have different statuses.
                        let mut by_cause: Vec<(String, Vec<(i64, String)>)> = Vec::new();
                        for (id, refusal) in rejected {
                            let cause = refusal.cause();
                            let row = (id, refusal.reason);
                            match by_cause.iter_mut().find(|(c, _)| *c == cause) {
                                Some((_, rows)) => rows.push(row),
                                None => by_cause.push((cause, vec![row])),
                            }
                        }
                        for (cause, rows) in by_cause {
                            report.dead_letter(store, &rows, &cause).await;
                        }
                    }
                    batch = again;
                    if batch.is_empty() {
                        break;
                    }
                    report.metrics.uplink_retried(report.uplink);
                    tracing::warn!(
                        transport = transport.name(),
                        rows = batch.len(),
                        reason = retry_reason.as_deref().unwrap_or(""),
                        "entries not stored; retrying"
                    );
                    backoff.next_delay()
                }
                Err(SendError::Transient {
                    reason,
                    retry_after,
                    cause,
                }) => {
                    report
                        .metrics
                        .uplink_failed(report.uplink, cause.kind(), &reason);
                    match cause {
                        Cause::Tls(label) => {
                            report.metrics.tls_failed(report.origin, label);
                            report.audit.record(Event::TlsFailure {
                                peer: report.origin,
                                cause: label,
                                reason: &reason,
                            });
                        }
                        Cause::Auth(label) => {
                            report.metrics.uplink_auth_failed(report.uplink, label);
                            report.audit.record(Event::AuthFailure {
                                uplink: report.uplink,
                                cause: label,
                                reason: &reason,
                            });
                        }
                        Cause::Other => {}
                    }
                    let delay = backoff.next_delay_at_least(retry_after);
                    tracing::warn!(
                        transport = transport.name(),
                        rows = batch.len(),
                        attempt = backoff.attempts(),
                        retry_in_ms = delay.as_millis() as u64,
                        "send failed: {reason}"
                    );
                    delay
                }
                Err(SendError::Refused(refusal)) => {
                    report.metrics.uplink_answered(report.uplink);
                    if let Some(p) = probe.take() {
                        p.answered(sent, false);
                    }
                    if batch.len() == 1 {
                        tracing::warn!(
                            transport = transport.name(),
                            "destination refused a reading; dead-lettered"
                        );
                        let (id, _) = batch.remove(0);
                        let cause = refusal.cause();
                        report
                            .dead_letter(store, &[(id, refusal.reason)], &cause)
                            .await;
                    } else {
                        tracing::info!(
                            transport = transport.name(),
                            rows = batch.len(),
                            "batch refused; splitting it to isolate the refused reading"
                        );
                        // Only a refusal a size limit answers with (400: Medplum and
                        // others; 413: proxies) is probed; a conflict (409, 412) is not
                        // about size.
                        let halves = matches!(refusal.status, Some(400 | 413))
                            .then(|| Probe::new(batch.len()));
                        let second = batch.split_off(batch.len() / 2);
                        work.push((second, halves.clone()));
                        work.push((std::mem::take(&mut batch), halves));
                    }
                    break;
                }
            };
            if !sleep_or_cancel(delay, shutdown).await {
                let ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
                store.release(report.destination, &ids).await;
                break;
            }
        }
        if shutdown.is_cancelled() {
            let ids: Vec<i64> = work
                .iter()
                .flat_map(|(rows, _)| rows)
                .map(|(id, _)| *id)
                .collect();
            store.release(report.destination, &ids).await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{LearnedLimit, Probe};

    #[test]
    fn a_size_is_learned_only_when_both_halves_pass() {
        // Both halves of a refused 16 pass: the size was the problem; 8 is what passed.
        let p = Probe::new(16);
        assert_eq!(p.answered(8, true), None);
        assert_eq!(p.answered(8, true), Some(8));
        // One half refused: a reading is at fault, nothing is learned.
        let p = Probe::new(16);
        assert_eq!(p.answered(8, false), None);
        assert_eq!(p.answered(8, true), None);
        let p = Probe::new(5);
        assert_eq!(p.answered(3, true), None);
        assert_eq!(p.answered(2, false), None);
        // Uneven halves: the larger one passed.
        let p = Probe::new(7);
        assert_eq!(p.answered(3, true), None);
        assert_eq!(p.answered(4, true), Some(4));
    }

    #[test]
    fn the_learned_limit_only_goes_down() {
        let l = LearnedLimit::default();
        assert_eq!(l.get(), None);
        assert!(l.learn(8));
        assert!(!l.learn(12));
        assert_eq!(l.get(), Some(8));
        assert!(l.learn(3));
        assert!(!l.learn(0));
        assert_eq!(l.get(), Some(3));
    }
}
