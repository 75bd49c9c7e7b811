//! The pump of a push subscription: takes claimed deliveries from its queue, waits until the
//! attempt stack is ready (rate limit, caps), spawns each attempt, and records its outcome:
//! delivered, a retry at a time the backoff gives, or failed. Before each attempt it asks the
//! subscription's control: while paused or open, what it holds goes back to the store
//! unsent (no attempt counted). A `410 Gone` pauses the subscription (`on_gone: pause`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

use super::Dispatcher;
use super::breaker::Admit;
use super::control::Control;
use crate::deliver::AttemptService;
use crate::deliver::verdict::{Verdict, stack_error};
use crate::store::{Attempted, ClaimToken, Completed, Delivery, DeliveryId, Outcome, Store};
use crate::subscription::{DeliveryOrder, OnGone, PushSettings, Subscription};
use crate::time::now_ms;

/// The first pause before recording an outcome again after the store refused it; it
/// doubles up to `OUTCOME_PAUSE_MAX`.
const OUTCOME_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between tries to record an outcome.
const OUTCOME_PAUSE_MAX: Duration = Duration::from_secs(5);
/// How long a pump stopping with the relay waits for deliveries on their way into its queue.
const DRAIN_WAIT: Duration = Duration::from_secs(1);
/// The same for a pump retired at run time; senders finish within one store call.
const RETIRE_DRAIN_WAIT: Duration = Duration::from_secs(60);

/// Sends the claimed deliveries of one subscription.
pub(super) struct Pump {
    /// The subscription's breaker and pause.
    pub(super) control: Arc<Control>,
    /// Its subscription.
    pub(super) sub: Arc<Subscription>,
    /// How its attempts are repeated.
    pub(super) push: Arc<PushSettings>,
    /// Where outcomes are recorded.
    pub(super) store: Arc<dyn Store>,
    /// Its final-outcome counters.
    pub(super) outcomes: Arc<FinalCounters>,
    /// Wakes the feeder (shared with the lane).
    pub(super) wake: Arc<Notify>,
    /// Stops this pump (also cancelled when the relay stops).
    pub(super) shutdown: CancellationToken,
    /// Cancelled when the relay stops.
    pub(super) relay_stopping: CancellationToken,
    /// Where attempts run, so shutdown can wait for them.
    pub(super) attempts: TaskTracker,
    /// Pauses the subscription after a `410 Gone`.
    pub(super) dispatcher: Dispatcher,
}

impl Pump {
    /// `service` is kept out of `self`: it is `Send` but not `Sync`, and `self` is borrowed
    /// across awaits.
    /// `build` makes attempt number `n` (1-based) of a delivery: the channel's request.
    pub(super) async fn run<R: Send + 'static>(
        self,
        service: AttemptService<R>,
        mut claimed: mpsc::Receiver<Delivery>,
        build: impl Fn(&Delivery, u32) -> R + Send,
    ) {
        let name = self.sub.name.as_str();
        // An attempt keeps a permit until its outcome is recorded, so attempts whose outcomes
        // wait for the store are bounded too (`3 × max_in_flight` beyond those in flight): a slow
        // store slows the pump down instead of piling finished attempts up in memory.
        let recording = Arc::new(Semaphore::new(self.push.max_in_flight * 4));
        loop {
            // Biased towards stopping: once a pump is stopped (its subscription deleted or
            // replaced), nothing more leaves through it.
            let permit = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                p = recording.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            let delivery = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                d = claimed.recv() => match d { Some(d) => d, None => break },
            };
            // Paused or open: back to the store at once, without waiting for a slot.
            if self.control.holding() {
                self.hold(delivery, &mut claimed).await;
                continue;
            }
            // Wait for a rate-limit token and a concurrency slot before sending it.
            let mut service = service.clone();
            let ready = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => None,
                r = service.ready() => Some(r.map(|_| ())),
            };
            let Some(ready) = ready.filter(|_| !self.shutdown.is_cancelled()) else {
                self.unclaim(vec![(delivery.id, delivery.token)]).await;
                break;
            };
            // Asked last, just before sending: a half-open breaker lets one probe through.
            let probe = match self.control.admit() {
                Admit::Send { probe } => probe,
                Admit::Hold => {
                    drop(service);
                    self.hold(delivery, &mut claimed).await;
                    continue;
                }
            };
            // Numbered among all its attempts (the `hookrelay-attempt` header).
            let req = build(&delivery, delivery.attempts + 1);
            let outcome = self.recorder(delivery, probe);
            // Timed from the send to the verdict, for the attempt's history.
            let (at_ms, started) = (now_ms(), Instant::now());
            match ready {
                Ok(()) => {
                    let call = service.call(req);
                    self.attempts.spawn(async move {
                        let verdict = call.await.unwrap_or_else(stack_error);
                        outcome.finish(verdict, at_ms, started).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    outcome.finish(stack_error(e), at_ms, started).await;
                    drop(permit);
                }
            }
        }
        // Deliveries claimed but never sent go back to the queue.
        claimed.close();
        let mut ids = Vec::new();
        // `recv` also waits for slots reserved before the close (a feeder or an ingest request
        // between its commit and its hand-off), so those are returned too. A pump replaced or
        // removed at run time waits for all of them (its senders are gone once they are used);
        // when the relay stops, whatever is left in flight goes back when the store is left
        // (a shared store), or at the next start.
        let wait = if self.relay_stopping.is_cancelled() {
            DRAIN_WAIT
        } else {
            RETIRE_DRAIN_WAIT
        };
        while let Ok(Some(d)) = tokio::time::timeout(wait, claimed.recv()).await {
            ids.push((d.id, d.token));
        }
        tracing::debug!(subscription = name, returned = ids.len(), "pump stopped");
        self.unclaim(ids).await;
        // A replacement pump shares `wake`: its feeder picks the returned deliveries up.
        self.wake.notify_one();
    }

    /// Returns `first` and whatever else the queue holds to the store, unsent.
    async fn hold(&self, first: Delivery, claimed: &mut mpsc::Receiver<Delivery>) {
        let mut ids = vec![(first.id, first.token)];
        while let Ok(d) = claimed.try_recv() {
            ids.push((d.id, d.token));
        }
        self.unclaim(ids).await;
    }

    /// Returns unsent deliveries to the queue, trying again with backoff while the store
    /// cannot take them (they would stay in flight until the next start or their lease);
    /// only the relay stopping ends the tries.
    async fn unclaim(&self, ids: Vec<(DeliveryId, ClaimToken)>) {
        if ids.is_empty() {
            return;
        }
        let mut pause = OUTCOME_PAUSE;
        while let Err(e) = self.store.unclaim(ids.clone()).await {
            let name = self.sub.name.as_str();
            if self.relay_stopping.is_cancelled() {
                tracing::warn!(subscription = name, error = %e, "cannot return unsent deliveries; the relay is stopping, they go back at the next start or when their lease ends");
                return;
            }
            tracing::warn!(subscription = name, error = %e, retry_in_ms = pause.as_millis() as u64, "cannot return unsent deliveries; retrying");
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.relay_stopping.cancelled() => {}
            }
            pause = (pause * 2).min(OUTCOME_PAUSE_MAX);
        }
    }

    fn recorder(&self, delivery: Delivery, probe: bool) -> Recorder {
        Recorder {
            control: self.control.clone(),
            probe,
            dispatcher: self.dispatcher.clone(),
            sub: self.sub.clone(),
            push: self.push.clone(),
            delivery,
            store: self.store.clone(),
            counters: self.outcomes.clone(),
            wake: self.wake.clone(),
            relay_stopping: self.relay_stopping.clone(),
        }
    }
}

/// Final-outcome counters of one subscription, resolved once.
pub(super) struct FinalCounters {
    /// `hookrelay_deliveries_total{outcome="delivered"}`.
    pub(super) delivered: IntCounter,
    /// `hookrelay_deliveries_total{outcome="failed"}`.
    pub(super) failed: IntCounter,
}

/// Turns one classified attempt into the store's next step for the delivery.
struct Recorder {
    control: Arc<Control>,
    /// The half-open breaker's probe.
    probe: bool,
    dispatcher: Dispatcher,
    sub: Arc<Subscription>,
    push: Arc<PushSettings>,
    delivery: Delivery,
    store: Arc<dyn Store>,
    counters: Arc<FinalCounters>,
    wake: Arc<Notify>,
    relay_stopping: CancellationToken,
}

impl Recorder {
    /// Records the verdict of the attempt sent at `at_ms` (`started` on the monotonic clock).
    async fn finish(self, attempt: Verdict, at_ms: i64, started: Instant) {
        let attempted = Attempted {
            at_ms,
            // At least 1 µs: an attempt takes time, however little.
            duration_us: (started.elapsed().as_micros() as i64).max(1),
            result: attempt.result_label(),
        };
        // Its number among all attempts, for logs; the budget counts since the last release.
        let number = self.delivery.attempts + 1;
        let spent = self.delivery.budget_used + 1;
        self.control.record(&attempt, self.probe);
        let name = self.sub.name.as_str();
        let outcome = match gone(&self.push, &attempt) {
            // The delivery stays queued for when the subscription is resumed.
            Some(error) => {
                self.dispatcher
                    .pause_for_gone(&self.control, name, &self.relay_stopping)
                    .await;
                Outcome::Retry {
                    at_ms: now_ms(),
                    status: Some(410),
                    error,
                }
            }
            None => decide(&self.push, spent, &attempt, now_ms(), fastrand::f64()),
        };
        let event_id = &*self.delivery.event_id;
        // Recorded before anything is counted. A store that cannot take it (the database
        // unreachable) is tried again with backoff until it does, so the delivery does not
        // stay in flight until the next start; only the relay stopping ends the tries (the
        // delivery is then attempted again: at-least-once). One outcome per attempt in
        // flight waits here, so the wait is bounded by the subscription's caps.
        let mut pause = OUTCOME_PAUSE;
        let (id, token) = (self.delivery.id, self.delivery.token);
        let completed = loop {
            match self
                .store
                .complete(id, token, outcome.clone(), attempted)
                .await
            {
                Ok(completed) => break completed,
                Err(e) if self.relay_stopping.is_cancelled() => {
                    tracing::error!(subscription = name, event_id, error = %e, "cannot record attempt outcome; the relay is stopping, the delivery will be attempted again");
                    return;
                }
                Err(e) => {
                    tracing::warn!(subscription = name, event_id, error = %e, retry_in_ms = pause.as_millis() as u64, "cannot record attempt outcome; retrying");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.relay_stopping.cancelled() => {}
            }
            pause = (pause * 2).min(OUTCOME_PAUSE_MAX);
        };
        if completed == Completed::Fenced {
            // This relay's claim lapsed (it could not renew it in time) and another relay
            // claimed the delivery since: its outcome counts, not this one.
            tracing::debug!(
                subscription = name,
                event_id,
                attempt = number,
                "attempt outcome not recorded: the claim was taken over by another relay"
            );
            return;
        }
        // Of this attempt; the three lines below carry it so one grep finds slow receivers.
        let duration_ms = attempted.duration_us as f64 / 1000.0;
        match &outcome {
            Outcome::Delivered { status } => {
                self.counters.delivered.inc();
                tracing::debug!(
                    subscription = name,
                    event_id,
                    attempt = number,
                    status,
                    duration_ms,
                    "delivered"
                );
            }
            Outcome::Retry {
                at_ms,
                status,
                error,
            } => {
                tracing::info!(
                    subscription = name,
                    event_id,
                    attempt = number,
                    status,
                    duration_ms,
                    error = error.as_str(),
                    retry_in_ms = at_ms - now_ms(),
                    "attempt failed; retry scheduled"
                );
            }
            Outcome::Failed { status, error } => {
                self.counters.failed.inc();
                tracing::warn!(
                    subscription = name,
                    event_id,
                    attempts = number,
                    status,
                    duration_ms,
                    error = error.as_str(),
                    "delivery failed; kept as a dead letter"
                );
            }
        }
        if matches!(outcome, Outcome::Retry { .. }) || self.push.ordering != DeliveryOrder::None {
            // The feeder's next due time may have moved earlier, or (ordered) the next
            // delivery of this key was released by this final outcome.
            self.wake.notify_one();
        }
    }
}

/// The error of a `410 Gone` that pauses the subscription (`on_gone: pause`).
fn gone(push: &PushSettings, attempt: &Verdict) -> Option<String> {
    match attempt {
        Verdict::Permanent {
            result: "http_error",
            status,
            error,
        } if push.on_gone == OnGone::Pause && *status == http::StatusCode::GONE => {
            Some(error.clone())
        }
        _ => None,
    }
}

/// The store's next step after attempt `number` (1-based) of the retry budget; `unit` is a
/// random draw for jitter.
pub fn decide(
    push: &PushSettings,
    number: u32,
    attempt: &Verdict,
    now_ms: i64,
    unit: f64,
) -> Outcome {
    match attempt {
        Verdict::Delivered(status) => Outcome::Delivered {
            status: status.as_u16(),
        },
        Verdict::Permanent { status, error, .. } => Outcome::Failed {
            status: Some(status.as_u16()),
            error: error.clone(),
        },
        Verdict::Retryable { status, error, .. } if number > push.retries => Outcome::Failed {
            status: status.map(|s| s.as_u16()),
            error: format!("{error} (after {})", attempts(number)),
        },
        Verdict::Retryable {
            status,
            pressure,
            retry_after,
            error,
            ..
        } => {
            let delay = push.backoff.delay(number, *pressure, *retry_after, unit);
            Outcome::Retry {
                at_ms: now_ms + delay.as_millis() as i64,
                status: status.map(|s| s.as_u16()),
                error: error.clone(),
            }
        }
    }
}

/// "1 attempt", "3 attempts".
fn attempts(n: u32) -> String {
    if n == 1 {
        "1 attempt".into()
    } else {
        format!("{n} attempts")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Pressure;
    use http::StatusCode;

    fn sub(retries: u32) -> PushSettings {
        let yaml = format!(
            "{{name: a, url: 'http://h/', events: [x], retries: {retries}, backoff: {{schedule: [1s, 10s]}}}}"
        );
        let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let sub = Subscription::parse(
            &v,
            "",
            &crate::subscription::Files::CONFIG,
            &mut Default::default(),
        )
        .unwrap();
        sub.push().unwrap().clone()
    }

    fn failed_attempt() -> Verdict {
        Verdict::Retryable {
            result: "http_error",
            status: Some(StatusCode::INTERNAL_SERVER_ERROR),
            pressure: Pressure::Normal,
            retry_after: None,
            error: "HTTP 500".into(),
        }
    }

    #[test]
    fn retries_follow_the_schedule_until_spent() {
        let s = sub(2);
        assert_eq!(
            decide(&s, 1, &failed_attempt(), 0, 0.5),
            Outcome::Retry {
                at_ms: 1000,
                status: Some(500),
                error: "HTTP 500".into()
            }
        );
        assert!(matches!(
            decide(&s, 2, &failed_attempt(), 0, 0.5),
            Outcome::Retry { at_ms: 10_000, .. }
        ));
        assert!(matches!(
            decide(&s, 3, &failed_attempt(), 0, 0.5),
            Outcome::Failed {
                status: Some(500),
                ..
            }
        ));
    }

    #[test]
    fn zero_retries_means_one_attempt() {
        assert_eq!(
            decide(&sub(0), 1, &failed_attempt(), 0, 0.5),
            Outcome::Failed {
                status: Some(500),
                error: "HTTP 500 (after 1 attempt)".into()
            }
        );
        assert_eq!(
            decide(&sub(1), 2, &failed_attempt(), 0, 0.5),
            Outcome::Failed {
                status: Some(500),
                error: "HTTP 500 (after 2 attempts)".into()
            }
        );
    }

    #[test]
    fn gone_fails_at_once() {
        let gone = Verdict::Permanent {
            result: "http_error",
            status: StatusCode::GONE,
            error: "gone".into(),
        };
        assert!(matches!(
            decide(&sub(5), 1, &gone, 0, 0.5),
            Outcome::Failed {
                status: Some(410),
                ..
            }
        ));
    }
}
