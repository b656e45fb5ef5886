//! The dispatcher: one task per webhook claims its due deliveries and sends
//! each with at most [`IN_FLIGHT`] requests in flight, so one slow or dead
//! receiver never holds up another's deliveries (nor a run: runs only write
//! outbox rows).
//!
//! A worker wakes when a commit enqueued for its webhook, when its earliest
//! pending delivery falls due, when one of its requests ends, or every
//! [`POLL`] (a store shared with other processes). Claims carry a lease of
//! [`LEASE`]: a process that dies mid-attempt leaves its deliveries to be
//! claimed again once the lease lapses, and pending ones are simply due
//! after a restart. Delivery is therefore at least once; receivers
//! deduplicate on `webhook-id`, the event's id.
//!
//! The workers and their requests run on the engine's webhook runtime
//! (`EngineBuilder::webhook_runtime`; the server's has a thread of a lower
//! scheduling priority, so deliveries take the CPU only when runs leave it).
//! Their writes are committed where every write is, on the store's own
//! runtime, so a low-priority thread never commits the runs' writes.
//!
//! A delivery still costs the store a commit and the receiver a request at
//! normal priority. So while runs are in flight and the machine has no CPU
//! to spare (`cpu`: three quarters busy at normal priority), a worker gives
//! way to them and claims at most a batch ([`CLAIM_BATCH`]) a second
//! ([`GIVE_WAY_MAX`]); once no run is in flight, or the CPU has room again,
//! it claims as fast as its slots free.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use aegis_config::Webhook;
use aegis_history::{
    Delivery, DeliveryAttempt, DeliveryClaim, DeliveryOutcome, DeliveryResult, NewDelivery, Write,
};
use jiff::Timestamp;
use tokio::sync::{Notify, Semaphore};

use crate::event::{EventData, WebhookFailed};
use crate::ledger::RunRef;
use crate::state::Inner;
use crate::webhook::WEBHOOK_FAILED;
use crate::webhook::sign::{aegis_signature, standard_signature};

/// Requests in flight per webhook.
pub(crate) const IN_FLIGHT: usize = 16;

/// How long one attempt may take (SPEC section 6).
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// How many deliveries one claim takes at most (queued for the slots).
const CLAIM_BATCH: usize = 4 * IN_FLIGHT;

/// How long a claim holds a delivery: longer than a full queue takes to
/// send even when every attempt times out (`CLAIM_BATCH / IN_FLIGHT + 1`
/// rounds of [`ATTEMPT_TIMEOUT`]).
const LEASE: Duration = Duration::from_secs(120);

/// The longest a worker sleeps without looking at the store.
const POLL: Duration = Duration::from_secs(5);

/// The longest delay between two attempts (SPEC section 6).
pub(crate) const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);

/// How much of a response body is read (and dropped) so that the
/// connection can be reused.
const DRAIN_BYTES: usize = 64 * 1024;

/// The longest a worker goes without claiming while it gives way to runs
/// (runs in flight on a saturated machine): deliveries still progress, a
/// batch a second.
const GIVE_WAY_MAX: Duration = Duration::from_secs(1);

/// How long delivered rows stay in the delivery log.
const KEEP_DELIVERED: Duration = Duration::from_secs(7 * 24 * 3600);

/// How often delivered rows older than [`KEEP_DELIVERED`] are deleted.
const PRUNE_INTERVAL: Duration = Duration::from_secs(600);

/// Starts a worker per configured webhook, and the delivery log's
/// retention, on the engine's runtime. They end with the engine.
pub(crate) fn spawn(inner: &Arc<Inner>, cpu_counters: Option<std::path::PathBuf>) {
    let outbox = Arc::clone(inner.ledger.outbox());
    if outbox.webhooks().is_empty() {
        return;
    }
    let client = match client() {
        Ok(client) => client,
        Err(err) => {
            log::error!("webhooks are not delivered: cannot build their HTTP client: {err}");
            return;
        }
    };
    let gauge = Arc::new(crate::cpu::Gauge::new(cpu_counters));
    let workers: Vec<Worker> = (0..outbox.webhooks().len())
        .filter_map(|index| u32::try_from(index).ok())
        .map(|index| Worker {
            inner: Arc::downgrade(inner),
            outbox: Arc::clone(&outbox),
            index,
            client: client.clone(),
            slots: Arc::new(Semaphore::new(IN_FLIGHT)),
            done: Arc::new(Notify::new()),
            gauge: Arc::clone(&gauge),
        })
        .collect();
    let history = Arc::clone(&inner.history);
    inner.webhook_runtime().spawn(async move {
        // One process uses this store: the claims of one that died (kill -9
        // mid-attempt) are released rather than waited out.
        match history.release_delivery_claims().await {
            Ok(0) => {}
            Ok(n) => log::info!("webhooks: {n} deliveries claimed by a previous process resume"),
            Err(err) => log::warn!("webhooks: cannot release earlier claims: {err}"),
        }
        // This task runs on the webhook runtime, so the workers do too.
        for worker in workers {
            tokio::spawn(worker.run());
        }
    });
    let weak = Arc::downgrade(inner);
    inner.webhook_runtime().spawn(async move {
        let mut ticks = tokio::time::interval(PRUNE_INTERVAL);
        loop {
            ticks.tick().await;
            let Some(inner) = weak.upgrade() else { return };
            if inner.closing() {
                return;
            }
            let before = Timestamp::now() - signed(KEEP_DELIVERED);
            match inner.history.prune_deliveries(before).await {
                Ok(0) => {}
                Ok(n) => log::debug!("webhook delivery log: {n} delivered rows deleted"),
                Err(err) => log::warn!("cannot prune the webhook delivery log: {err}"),
            }
        }
    });
}

/// The client deliveries use: rustls, no proxy from the environment,
/// redirects never followed (a 3xx is a failed attempt), 15 s per attempt.
fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("aegis-webhooks/", env!("CARGO_PKG_VERSION")))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .timeout(ATTEMPT_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
}

fn signed(duration: Duration) -> jiff::SignedDuration {
    jiff::SignedDuration::try_from(duration).unwrap_or(jiff::SignedDuration::MAX)
}

/// One webhook's dispatcher.
struct Worker {
    inner: Weak<Inner>,
    outbox: Arc<crate::webhook::Outbox>,
    index: u32,
    client: reqwest::Client,
    /// One permit per request in flight.
    slots: Arc<Semaphore>,
    /// Told when a request ends (a slot is free again).
    done: Arc<Notify>,
    /// Whether the machine has CPU to spare (shared by the workers).
    gauge: Arc<crate::cpu::Gauge>,
}

impl Worker {
    async fn run(self) {
        let Some(wake) = self.outbox.wake(self.index as usize) else { return };
        // Claimed deliveries waiting for a slot: claiming in batches keeps
        // the claims (write transactions) far fewer than the deliveries.
        let mut queue: VecDeque<Delivery> = VecDeque::new();
        let mut last_claim: Option<Instant> = None;
        let mut gave_way = false;
        loop {
            let Some(inner) = self.inner.upgrade() else { return };
            if inner.closing() {
                // Claims still queued lapse with their lease.
                return;
            }
            while self.slots.available_permits() > 0 {
                let Some(delivery) = queue.pop_front() else { break };
                self.start(&inner, delivery);
            }
            let mut claimed_any = false;
            let under_load = self.runs_want_the_cpu(&inner);
            if under_load != gave_way {
                gave_way = under_load;
                log::debug!(
                    "webhook {}: {}",
                    self.index,
                    if under_load {
                        "runs in flight on a saturated machine: deliveries give way, a batch a second"
                    } else {
                        "deliveries no longer give way to runs"
                    }
                );
            }
            // While giving way, how long until the next claim.
            let hold = last_claim
                .filter(|_| under_load)
                .and_then(|at| GIVE_WAY_MAX.checked_sub(at.elapsed()))
                .filter(|hold| !hold.is_zero());
            let giving_way = hold.is_some();
            if !giving_way && queue.len() < IN_FLIGHT {
                last_claim = Some(Instant::now());
                let now = Timestamp::now();
                let claim = DeliveryClaim {
                    webhook: self.index,
                    now,
                    until: now + signed(LEASE),
                    limit: u32::try_from(CLAIM_BATCH - queue.len()).unwrap_or(1),
                };
                match inner.history.claim_deliveries(&claim).await {
                    Ok(claimed) => {
                        claimed_any = !claimed.is_empty();
                        queue.extend(claimed);
                    }
                    Err(err) => {
                        log::warn!("webhook {}: cannot claim deliveries: {err}", self.index)
                    }
                }
            }
            if claimed_any && self.slots.available_permits() > 0 {
                continue;
            }
            if !queue.is_empty() {
                // Every slot is busy: go on when one frees.
                drop(inner);
                self.done.notified().await;
                continue;
            }
            if let Some(hold) = hold {
                drop(inner);
                tokio::time::sleep(hold).await;
                continue;
            }
            let next = match inner.history.next_delivery_due(self.index).await {
                Ok(next) => next,
                Err(err) => {
                    log::warn!("webhook {}: cannot read the outbox: {err}", self.index);
                    None
                }
            };
            drop(inner);
            let wait = next
                .map(|at| at.duration_since(Timestamp::now()))
                .map_or(POLL, |d| Duration::try_from(d).unwrap_or(Duration::ZERO).min(POLL));
            if wait.is_zero() && self.slots.available_permits() > 0 {
                // Due now (a lease lapsed, or due while we looked): go on.
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                () = wake.notified() => {}
                () = self.done.notified() => {}
                () = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {}
            }
        }
    }

    /// Whether runs are in flight and the machine has no CPU to spare: then
    /// a worker gives way to them and claims at most a batch every
    /// [`GIVE_WAY_MAX`]. Deliveries cost the store a commit and the receiver
    /// a request at normal priority, which the dispatcher's own low priority
    /// does not cover.
    fn runs_want_the_cpu(&self, inner: &Inner) -> bool {
        !inner.idle() && self.gauge.saturated()
    }

    /// Sends one claimed delivery on a task of its own, in a slot.
    fn start(&self, inner: &Arc<Inner>, delivery: Delivery) {
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            // Claimed more than the free slots (cannot happen: one worker
            // claims per webhook); the lease returns it to the outbox.
            return;
        };
        let Some(webhook) = self.outbox.webhooks().get(self.index as usize).cloned() else {
            return;
        };
        let inner = Arc::clone(inner);
        let client = self.client.clone();
        let done = Arc::clone(&self.done);
        let index = self.index;
        inner.webhook_runtime().clone().spawn(async move {
            deliver(&inner, &client, index, &webhook, delivery).await;
            drop(permit);
            done.notify_one();
        });
    }
}

/// What one attempt ended with.
struct Answer {
    status_code: Option<u16>,
    error: Option<String>,
    retry_after: Option<Duration>,
}

/// Makes one attempt and records it with its outcome.
async fn deliver(
    inner: &Arc<Inner>,
    client: &reqwest::Client,
    index: u32,
    webhook: &Webhook,
    delivery: Delivery,
) {
    let Delivery { enqueued: delivery, attempt_count, .. } = delivery;
    let attempt_no = attempt_count.saturating_add(1);
    let at = Timestamp::now();
    let started = Instant::now();
    let answer = send(client, webhook, &delivery, at).await;
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let outcome = match answer.status_code {
        Some(code) if (200..300).contains(&code) => DeliveryOutcome::Delivered,
        Some(410) => DeliveryOutcome::Gone,
        _ if attempt_no >= webhook.max_attempts() => DeliveryOutcome::Failed,
        _ => {
            let delay = next_delay(webhook.retry_delay(), attempt_no, answer.retry_after);
            DeliveryOutcome::Retry { at: Timestamp::now() + signed(delay) }
        }
    };
    let result = DeliveryResult {
        id: delivery.id.clone(),
        attempt: DeliveryAttempt {
            attempt: attempt_no,
            at,
            status_code: answer.status_code,
            error: answer.error.clone(),
            duration_ms,
        },
        outcome,
    };
    log::debug!(
        "run_id={}: webhook {index} delivery {} attempt {attempt_no}: {:?} ({:?})",
        delivery.run_id,
        delivery.id,
        answer.status_code,
        outcome
    );
    let record = Write::RecordDeliveryAttempt(result);
    let recorded = if outcome == DeliveryOutcome::Failed && delivery.event_type != WEBHOOK_FAILED {
        give_up(inner, index, webhook, &delivery, attempt_no, &answer, record).await
    } else {
        inner.history.commit(vec![record]).await
    };
    if let Err(err) = recorded {
        // The claim lapses and the attempt is made again.
        log::error!(
            "run_id={}: cannot record webhook delivery {}: {err}",
            delivery.run_id,
            delivery.id
        );
    }
}

/// Records the last failed attempt with a `webhook.failed` event for the
/// run, in one commit through the ledger (the event may itself match
/// webhooks). A delivery carrying `webhook.failed` never raises another.
async fn give_up(
    inner: &Arc<Inner>,
    index: u32,
    webhook: &Webhook,
    delivery: &NewDelivery,
    attempts: u32,
    answer: &Answer,
    record: Write,
) -> aegis_history::Result<()> {
    let error = match (&answer.error, answer.status_code) {
        (Some(error), _) => error.clone(),
        (None, Some(code)) => format!("status {code}"),
        (None, None) => "no answer".to_owned(),
    };
    log::warn!(
        "run_id={}: webhook {index} gave up on event {} ({}) after {attempts} attempts: {error}",
        delivery.run_id,
        delivery.event_id,
        delivery.event_type
    );
    let data = WebhookFailed {
        webhook: index,
        url: webhook.shown_url(),
        delivery_id: delivery.id.clone(),
        event_id: delivery.event_id.clone(),
        event_type: delivery.event_type.clone(),
        attempts,
        status_code: answer.status_code,
        error,
    };
    let run = RunRef {
        id: delivery.run_id.clone(),
        workflow: workflow_of(&delivery.envelope),
        request_id: None,
    };
    let committed = inner
        .ledger
        .commit_detached(&run, vec![record.clone()], vec![EventData::WebhookFailed(data)])
        .await;
    match committed {
        Ok(_) => Ok(()),
        Err(aegis_history::Error::RunNotFound { .. }) => {
            // Retention deleted the run: the failure is in the log only.
            inner.history.commit(vec![record]).await
        }
        Err(err) => Err(err),
    }
}

/// The workflow named by an envelope (empty when it names none).
fn workflow_of(envelope: &str) -> String {
    serde_json::from_str::<serde_json::Value>(envelope)
        .ok()
        .and_then(|v| v.get("workflow").and_then(|w| w.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

/// Sends the delivery once: the envelope as body, Standard Webhooks headers,
/// signed afresh for this attempt when the webhook has a secret.
async fn send(
    client: &reqwest::Client,
    webhook: &Webhook,
    delivery: &NewDelivery,
    at: Timestamp,
) -> Answer {
    let timestamp = at.as_second();
    let mut request = client
        .post(webhook.url().clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &delivery.event_id)
        .header("webhook-timestamp", timestamp.to_string());
    if let Some(key) = webhook.signing_key() {
        request = request
            .header(
                "webhook-signature",
                standard_signature(&key, &delivery.event_id, timestamp, &delivery.envelope),
            )
            .header("X-Aegis-Signature", aegis_signature(&key, &delivery.envelope));
    }
    match request.body(delivery.envelope.clone()).send().await {
        Ok(mut response) => {
            let status = response.status();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, Timestamp::now()));
            let mut drained = 0;
            while drained < DRAIN_BYTES {
                match response.chunk().await {
                    Ok(Some(chunk)) => drained += chunk.len(),
                    _ => break,
                }
            }
            let error = (!status.is_success()).then(|| match status.as_u16() {
                300..=399 => format!(
                    "status {} (redirects are not followed{})",
                    status.as_u16(),
                    response
                        .headers()
                        .get(reqwest::header::LOCATION)
                        .and_then(|l| l.to_str().ok())
                        .map(|l| format!("; location {l}"))
                        .unwrap_or_default()
                ),
                code => format!("status {code}"),
            });
            Answer { status_code: Some(status.as_u16()), error, retry_after }
        }
        Err(err) => Answer { status_code: None, error: Some(describe(&err)), retry_after: None },
    }
}

/// A request error as the delivery log shows it.
fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        format!("timed out after {} s", ATTEMPT_TIMEOUT.as_secs())
    } else if err.is_connect() {
        "connection failed".to_owned()
    } else {
        let mut text = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

/// `Retry-After` as delay seconds or an HTTP date.
pub(crate) fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    Some(Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO))
}

/// The delay before attempt `attempt + 1`: `retry_delay` doubled for each
/// attempt after the first, capped at an hour, shortened by jitter of at
/// most half; a `Retry-After` replaces it, up to the same cap.
pub(crate) fn next_delay(base: Duration, attempt: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(after) = retry_after {
        return after.min(MAX_RETRY_DELAY);
    }
    let doublings = attempt.saturating_sub(1).min(32);
    let full = base.saturating_mul(1u32 << doublings.min(31)).min(MAX_RETRY_DELAY);
    full.mul_f64(1.0 - fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_jitter_of_at_most_half_and_cap_at_an_hour() {
        let base = Duration::from_millis(200);
        for attempt in 1..=6 {
            let full = base * (1 << (attempt - 1));
            for _ in 0..100 {
                let delay = next_delay(base, attempt, None);
                assert!(delay <= full && delay >= full / 2, "{attempt}: {delay:?}");
            }
        }
        assert!(next_delay(Duration::from_secs(5), 40, None) <= MAX_RETRY_DELAY);
        assert!(next_delay(Duration::from_secs(5), 40, None) >= MAX_RETRY_DELAY / 2);
        assert_eq!(next_delay(base, 1, Some(Duration::from_secs(7))), Duration::from_secs(7));
        assert_eq!(next_delay(base, 1, Some(Duration::from_secs(86_400))), MAX_RETRY_DELAY);
    }

    #[test]
    fn retry_after_forms() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 00:00:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(parse_retry_after("Wed, 31 Dec 2025 00:00:10 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn the_workflow_of_an_envelope() {
        assert_eq!(workflow_of(r#"{"workflow":"ci","x":1}"#), "ci");
        assert_eq!(workflow_of("not json"), "");
    }
}
