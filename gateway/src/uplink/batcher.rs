//! One uplink worker: lease → send → settle, forever. `in_flight` workers run at once.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use time::OffsetDateTime;

use super::{Backoff, Outcome, SendError, Transport};
use crate::buffer::{Destination, Leased, Store};
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
            Err(e) => tracing::error!(error = %e, "cannot dead-letter rows; they stay queued"),
        }
    }
}

/// The audit cause of a refusal: `http_NNN` from the status the reason starts with (the
/// transports put it first, optionally after `HTTP `), else `refused`. Only that leading
/// token is read: the rest is the server's OperationOutcome text, which may quote a value.
fn refusal_cause(reason: &str) -> String {
    let first = reason.strip_prefix("HTTP ").unwrap_or(reason);
    let token = first
        .split(|c: char| c.is_whitespace() || c == ':')
        .next()
        .unwrap_or("");
    match token.parse::<u16>() {
        Ok(status @ 100..=599) if token.len() == 3 => format!("http_{status}"),
        _ => "refused".to_owned(),
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
                            .map(ToString::to_string)
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
                tracing::error!(error = %e, "cannot lease from buffer");
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

/// Sends one leased batch until every row is delivered or dead-lettered, or shutdown.
async fn deliver<T: Transport>(
    store: &Store,
    transport: &T,
    config: &BatcherConfig,
    report: &Report<'_>,
    rows: Vec<(i64, Reading)>,
    shutdown: &CancellationToken,
) {
    // Work list of sub-batches; a permanently refused batch is split until the culprit is alone.
    let mut work = vec![rows];
    while let Some(mut batch) = work.pop() {
        let mut backoff = Backoff::new(config.retry_initial, config.retry_max);
        while !batch.is_empty() {
            let refs: Vec<(i64, &Reading)> = batch.iter().map(|(id, r)| (*id, r)).collect();
            let delay = match transport.send(&refs).await {
                Ok(outcomes) => {
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
                            Outcome::Rejected(reason) => rejected.push((id, reason)),
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
                            tracing::error!(error = %e, "cannot delete delivered rows; they will be resent (idempotent)")
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
                        for row in rejected {
                            let cause = refusal_cause(&row.1);
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
                    backoff.next_delay(None)
                }
                Err(SendError::Transient {
                    reason,
                    retry_after,
                    tls,
                }) => {
                    report.metrics.uplink_failed(
                        report.uplink,
                        if tls { "tls" } else { "transient" },
                        &reason,
                    );
                    if tls {
                        Metrics::add(&report.metrics.tls_failures, 1);
                        report.audit.record(Event::TlsFailure {
                            peer: report.origin,
                            reason: &reason,
                        });
                    }
                    let delay = backoff.next_delay(retry_after);
                    tracing::warn!(
                        transport = transport.name(),
                        rows = batch.len(),
                        attempt = backoff.attempts(),
                        retry_in_ms = delay.as_millis() as u64,
                        "send failed: {reason}"
                    );
                    delay
                }
                Err(SendError::Refused(reason)) => {
                    report.metrics.uplink_answered(report.uplink);
                    if batch.len() == 1 {
                        tracing::warn!(
                            transport = transport.name(),
                            "destination refused a reading; dead-lettered"
                        );
                        let (id, _) = batch.remove(0);
                        let cause = refusal_cause(&reason);
                        report.dead_letter(store, &[(id, reason)], &cause).await;
                    } else {
                        tracing::info!(
                            transport = transport.name(),
                            rows = batch.len(),
                            "batch refused; splitting it to isolate the refused reading"
                        );
                        let second = batch.split_off(batch.len() / 2);
                        work.push(second);
                        work.push(std::mem::take(&mut batch));
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
            let ids: Vec<i64> = work.iter().flatten().map(|(id, _)| *id).collect();
            store.release(report.destination, &ids).await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::refusal_cause;

    #[test]
    fn the_audit_cause_is_the_http_status_the_reason_starts_with() {
        assert_eq!(
            refusal_cause("422 Unprocessable Entity: error: bad unit"),
            "http_422"
        );
        assert_eq!(refusal_cause("HTTP 400 Bad Request: error: x"), "http_400");
        assert_eq!(refusal_cause("no status here"), "refused");
        assert_eq!(refusal_cause("12345 is not a status"), "refused");
        // A status that is not one: nothing from the diagnostics that follow.
        assert_eq!(
            refusal_cause("4220: error: heart rate 180 out of range"),
            "refused"
        );
        assert_eq!(refusal_cause("42: value 37.5 too high"), "refused");
        assert_eq!(refusal_cause("error: value 120 refused"), "refused");
    }
}
