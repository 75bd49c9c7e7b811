//! Dispatch: per subscription, a feeder claims due deliveries from the store and a pump sends
//! each through the subscription's attempt stack, writing the outcome back (delivered, retry
//! at a time, or failed). New deliveries skip the store round trip: ingest stores them as
//! claimed and hands them to the pump's queue after the commit, when it has room. Each pump
//! only waits on its own subscriber, so a slow or dead receiver never delays another's.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

use crate::config::Delivery as DeliveryConfig;
use crate::deliver::{self, AttemptService, DeliverError, Transport, Verdict};
use crate::destination::DestinationGuard;
use crate::email::Mailer;
use crate::metrics::Metrics;
use crate::store::{Delivery, Outcome, Store};
use crate::subscription::{DeliveryOrder, Source, Subscription};
use crate::time::now_ms;

/// Longest a feeder sleeps without re-reading its next due time (a safety net: wake-ups and
/// the due time do the work).
const IDLE_RECHECK: Duration = Duration::from_secs(30);
/// Pause after a store error before trying again.
const STORE_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// Tries to record one attempt's outcome before leaving it to the next start.
const OUTCOME_TRIES: u32 = 60;
/// How long a pump stopping with the relay waits for deliveries on their way into its queue.
const DRAIN_WAIT: Duration = Duration::from_secs(1);
/// The same for a pump retired at run time; senders finish within one store call.
const RETIRE_DRAIN_WAIT: Duration = Duration::from_secs(60);

/// Handle to the running pumps; pumps come and go as subscriptions are added and removed.
#[derive(Clone)]
pub struct Dispatcher {
    pumps: Arc<RwLock<HashMap<Arc<str>, Arc<PumpHandle>>>>,
    shared: Arc<Shared>,
}

/// What every pump is built from.
struct Shared {
    store: Arc<dyn Store>,
    metrics: Metrics,
    /// Client of config subscriptions.
    client: reqwest::Client,
    /// Client of API subscriptions: resolves names through the destination guard.
    guarded_client: reqwest::Client,
    /// Checks the SMTP servers of API e-mail subscriptions at each connection.
    guard: Arc<DestinationGuard>,
    global: Arc<Semaphore>,
    shutdown: CancellationToken,
    attempts: TaskTracker,
}

/// How ingest reaches one subscription's pump and feeder (shared: a lookup clones one Arc).
struct PumpHandle {
    /// Tells the feeder that deliveries wait in the store (kept when the pump is replaced);
    /// for a pull subscription, wakes every long poll waiting on it.
    wake: Arc<Notify>,
    /// The pump's queue of claimed deliveries; `None` for a pull subscription (no pump).
    queue: Option<mpsc::Sender<Delivery>>,
    /// `hookrelay_events_matched_total` of this subscription, resolved once.
    matched: IntCounter,
    /// Stops this pump and its feeder.
    stop: CancellationToken,
    /// A pull subscription's `pull.ttl`, in ms.
    ttl_ms: Option<i64>,
    /// An ordered subscription's deliveries are never handed over in memory: the store
    /// decides which one of a key goes next.
    ordering: DeliveryOrder,
}

/// A reserved place in a pump's queue.
pub type HandoffSlot = mpsc::OwnedPermit<Delivery>;

impl Dispatcher {
    /// Starts a feeder and a pump per subscription; they stop when `shutdown` is cancelled,
    /// leaving attempts already sent to finish on `attempts`.
    pub fn start(
        subs: &[Arc<Subscription>],
        store: Arc<dyn Store>,
        metrics: &Metrics,
        config: &DeliveryConfig,
        guard: Arc<DestinationGuard>,
        shutdown: CancellationToken,
        attempts: TaskTracker,
    ) -> Result<Dispatcher, DeliverError> {
        let dispatcher = Dispatcher {
            pumps: Arc::default(),
            shared: Arc::new(Shared {
                store,
                metrics: metrics.clone(),
                client: deliver::client(config, None)?,
                guarded_client: deliver::client(config, Some(guard.clone()))?,
                guard,
                global: Arc::new(Semaphore::new(config.max_in_flight_total)),
                shutdown,
                attempts,
            }),
        };
        for sub in subs {
            dispatcher.add(sub.clone());
        }
        Ok(dispatcher)
    }

    /// Starts the pump of a subscription, replacing (and stopping) one of the same name.
    /// Deliveries the old pump had claimed but not sent go back to the store for the new one.
    pub fn add(&self, sub: Arc<Subscription>) {
        let shared = &self.shared;
        let mut pumps = self.pumps.write().unwrap_or_else(|e| e.into_inner());
        let previous = pumps.remove(sub.name.as_str());
        let wake = previous
            .as_ref()
            .map_or_else(|| Arc::new(Notify::new()), |p| p.wake.clone());
        let stop = shared.shutdown.child_token();
        let label = sub.metric_label();
        let matched = shared.metrics.events_matched.with_label_values(&[label]);
        if sub.pull.is_some() {
            // Pulled, not pushed: no pump; the handle only counts matches and wakes pollers.
            pumps.insert(
                Arc::from(sub.name.as_str()),
                Arc::new(PumpHandle {
                    wake,
                    queue: None,
                    matched,
                    stop,
                    ttl_ms: sub.pull.as_ref().map(|p| p.ttl.as_millis() as i64),
                    ordering: DeliveryOrder::None,
                }),
            );
            drop(pumps);
            if let Some(old) = previous {
                old.stop.cancel();
            }
            return;
        }
        // Bounded: when full, new deliveries stay pending in the store for the feeder.
        let (queue, claimed) = mpsc::channel((sub.max_in_flight * 4).max(256));
        pumps.insert(
            Arc::from(sub.name.as_str()),
            Arc::new(PumpHandle {
                wake: wake.clone(),
                queue: Some(queue.clone()),
                matched,
                stop: stop.clone(),
                ttl_ms: None,
                ordering: sub.ordering.clone(),
            }),
        );
        drop(pumps);
        if let Some(old) = previous {
            old.stop.cancel();
        }
        let feeder = Feeder {
            sub: sub.clone(),
            store: shared.store.clone(),
            wake: wake.clone(),
            queue,
            shutdown: stop.clone(),
        };
        tokio::spawn(feeder.run());
        let transport = match (&sub.email, sub.source) {
            (Some(email), source) => {
                let guard = (source == Source::Api).then(|| shared.guard.clone());
                Transport::Smtp(Arc::new(Mailer::new(email, guard, sub.timeout)))
            }
            (None, Source::Config) => Transport::Http(shared.client.clone()),
            (None, Source::Api) => Transport::Http(shared.guarded_client.clone()),
        };
        let service = deliver::stack(&sub, transport, shared.global.clone(), &shared.metrics);
        let pump = Pump {
            store: shared.store.clone(),
            outcomes: Arc::new(FinalCounters {
                delivered: shared
                    .metrics
                    .deliveries
                    .with_label_values(&[label, "delivered"]),
                failed: shared
                    .metrics
                    .deliveries
                    .with_label_values(&[label, "failed"]),
            }),
            sub,
            wake,
            shutdown: stop,
            relay_stopping: shared.shutdown.clone(),
            attempts: shared.attempts.clone(),
        };
        tokio::spawn(pump.run(service, claimed));
    }

    /// Stops the pump of a removed subscription; attempts already sent finish.
    pub fn remove(&self, name: &str) {
        let removed = self
            .pumps
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        if let Some(p) = removed {
            p.stop.cancel();
        }
    }

    /// Runs `f` on a subscription's pump under the read lock (no handle is cloned).
    fn with_pump<T>(&self, name: &str, f: impl FnOnce(&Arc<PumpHandle>) -> T) -> Option<T> {
        self.pumps
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(f)
    }

    /// Tells a subscription's feeder (or its long polls) that new deliveries are waiting.
    pub fn wake(&self, subscription: &str) {
        self.with_pump(subscription, |p| p.wake());
    }

    /// Cancelled when the relay stops (long polls end then).
    pub fn stopping(&self) -> CancellationToken {
        self.shared.shutdown.clone()
    }

    /// What a long poll on a pull subscription waits on: notified when notifications arrive.
    pub fn arrivals(&self, subscription: &str) -> Option<Arc<Notify>> {
        self.with_pump(subscription, |p| p.wake.clone())
    }

    /// Everything ingest needs of `subscription`'s pump for one new delivery, in one lookup:
    /// a reserved place in its queue if there is room, its ttl, and how to report the commit.
    pub fn route(&self, subscription: &str) -> Option<Route> {
        self.with_pump(subscription, |p| Route {
            slot: p
                .queue
                .clone()
                .filter(|_| p.ordering == DeliveryOrder::None)
                .and_then(|q| q.try_reserve_owned().ok()),
            ttl_ms: p.ttl_ms,
            handle: p.clone(),
        })
    }
}

impl PumpHandle {
    /// A push feeder is one waiter; a pull queue may have many long polls.
    fn wake(&self) {
        match self.queue {
            Some(_) => self.wake.notify_one(),
            None => self.wake.notify_waiters(),
        }
    }
}

/// A new delivery's way to its pump, looked up once before the commit.
pub struct Route {
    /// A reserved place in the pump's queue, when it had room.
    pub slot: Option<HandoffSlot>,
    /// The delivery's own ttl (a pull subscription's), in ms.
    pub ttl_ms: Option<i64>,
    handle: Arc<PumpHandle>,
}

impl Route {
    /// The subscription's ordering, which gives the delivery its key.
    pub fn ordering(&self) -> &DeliveryOrder {
        &self.handle.ordering
    }

    /// After the commit: counts the match, then hands the delivery to the pump, or tells the
    /// feeder (or the long polls) that it waits in the store.
    /// `delivery` is only built when it is handed over.
    pub fn deliver(self, delivery: impl FnOnce() -> Delivery) {
        self.handle.matched.inc();
        match self.slot {
            Some(slot) => {
                slot.send(delivery());
            }
            None => self.handle.wake(),
        }
    }
}

/// Moves due deliveries from the store into the pump's queue, as room frees up.
struct Feeder {
    sub: Arc<Subscription>,
    store: Arc<dyn Store>,
    wake: Arc<Notify>,
    queue: mpsc::Sender<Delivery>,
    shutdown: CancellationToken,
}

impl Feeder {
    async fn run(self) {
        let name = self.sub.name.as_str();
        let batch = self.sub.max_in_flight.max(32);
        loop {
            // Room first, so nothing claimed ever waits outside the bounded queue.
            let first = tokio::select! {
                p = self.queue.reserve() => match p { Ok(p) => p, Err(_) => return },
                _ = self.shutdown.cancelled() => return,
            };
            let mut slots = vec![first];
            while slots.len() < batch {
                match self.queue.try_reserve() {
                    Ok(p) => slots.push(p),
                    Err(_) => break,
                }
            }
            match self.store.claim_due(name, now_ms(), slots.len()).await {
                Ok(due) => {
                    let full = due.len() == slots.len();
                    for (slot, delivery) in slots.drain(..).zip(due) {
                        slot.send(delivery);
                    }
                    if !full {
                        drop(slots);
                        self.idle().await;
                    }
                }
                Err(e) => {
                    tracing::warn!(subscription = name, error = %e, "cannot claim deliveries");
                    drop(slots);
                    tokio::select! {
                        _ = tokio::time::sleep(STORE_ERROR_PAUSE) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Returns when new work is signalled, a retry falls due, or on shutdown. Without a
    /// signal it only re-reads the due time (on the read connection) now and then, so idle
    /// subscriptions cost no writes however many there are.
    async fn idle(&self) {
        loop {
            let next_due = self.store.next_due_ms(&self.sub.name).await.ok().flatten();
            let now = now_ms();
            let wait = match next_due {
                Some(at) if at <= now => return,
                Some(at) => Duration::from_millis((at - now) as u64).min(IDLE_RECHECK),
                None => IDLE_RECHECK,
            };
            tokio::select! {
                _ = self.wake.notified() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }
}

/// Sends the claimed deliveries of one subscription.
struct Pump {
    sub: Arc<Subscription>,
    store: Arc<dyn Store>,
    outcomes: Arc<FinalCounters>,
    wake: Arc<Notify>,
    /// Stops this pump (also cancelled when the relay stops).
    shutdown: CancellationToken,
    /// Cancelled when the relay stops.
    relay_stopping: CancellationToken,
    attempts: TaskTracker,
}

impl Pump {
    /// `service` is kept out of `self`: it is `Send` but not `Sync`, and `self` is borrowed
    /// across awaits.
    async fn run(self, service: AttemptService, mut claimed: mpsc::Receiver<Delivery>) {
        let name = self.sub.name.as_str();
        loop {
            // Biased towards stopping: once a pump is stopped (its subscription deleted or
            // replaced), nothing more leaves through it.
            let delivery = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                d = claimed.recv() => match d { Some(d) => d, None => break },
            };
            // Wait for a rate-limit token and a concurrency slot before sending it.
            let mut service = service.clone();
            let ready = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => None,
                r = service.ready() => Some(r.map(|_| ())),
            };
            let Some(ready) = ready.filter(|_| !self.shutdown.is_cancelled()) else {
                self.unclaim(vec![delivery.id]).await;
                break;
            };
            let req = deliver::outbound(&self.sub, &delivery, delivery.attempts + 1);
            let outcome = self.recorder(delivery);
            match ready {
                Ok(()) => {
                    let call = service.call(req);
                    self.attempts.spawn(async move {
                        outcome
                            .finish(call.await.unwrap_or_else(deliver::stack_error))
                            .await;
                    });
                }
                Err(e) => outcome.finish(deliver::stack_error(e)).await,
            }
        }
        // Deliveries claimed but never sent go back to the queue.
        claimed.close();
        let mut ids = Vec::new();
        // `recv` also waits for slots reserved before the close (a feeder or an ingest request
        // between its commit and its hand-off), so those are returned too. A pump replaced or
        // removed at run time waits for all of them (its senders are gone once they are used);
        // when the relay stops, the next start returns whatever is left in flight.
        let wait = if self.relay_stopping.is_cancelled() {
            DRAIN_WAIT
        } else {
            RETIRE_DRAIN_WAIT
        };
        while let Ok(Some(d)) = tokio::time::timeout(wait, claimed.recv()).await {
            ids.push(d.id);
        }
        tracing::debug!(subscription = name, returned = ids.len(), "pump stopped");
        self.unclaim(ids).await;
        // A replacement pump shares `wake`: its feeder picks the returned deliveries up.
        self.wake.notify_one();
    }

    async fn unclaim(&self, ids: Vec<crate::store::DeliveryId>) {
        if !ids.is_empty()
            && let Err(e) = self.store.unclaim(ids).await
        {
            tracing::warn!(subscription = self.sub.name.as_str(), error = %e, "cannot return unsent deliveries");
        }
    }

    fn recorder(&self, delivery: Delivery) -> Recorder {
        Recorder {
            sub: self.sub.clone(),
            delivery,
            store: self.store.clone(),
            counters: self.outcomes.clone(),
            wake: self.wake.clone(),
        }
    }
}

/// Final-outcome counters of one subscription, resolved once.
struct FinalCounters {
    delivered: IntCounter,
    failed: IntCounter,
}

/// Turns one classified attempt into the store's next step for the delivery.
struct Recorder {
    sub: Arc<Subscription>,
    delivery: Delivery,
    store: Arc<dyn Store>,
    counters: Arc<FinalCounters>,
    wake: Arc<Notify>,
}

impl Recorder {
    async fn finish(self, attempt: Verdict) {
        let number = self.delivery.attempts + 1;
        let outcome = decide(&self.sub, number, &attempt, now_ms(), fastrand::f64());
        let name = self.sub.name.as_str();
        let event_id = &*self.delivery.event_id;
        // Recorded before anything is counted; a store that fails for a while is retried, so a
        // delivery is not left in flight until the next restart.
        let mut tries = 0;
        while let Err(e) = self.store.complete(self.delivery.id, outcome.clone()).await {
            tries += 1;
            if tries >= OUTCOME_TRIES {
                // It stays in flight; the next start makes it pending again (at-least-once).
                tracing::error!(subscription = name, event_id, error = %e, "cannot record attempt outcome; giving up");
                return;
            }
            tracing::warn!(subscription = name, event_id, error = %e, "cannot record attempt outcome; retrying");
            tokio::time::sleep(STORE_ERROR_PAUSE).await;
        }
        match &outcome {
            Outcome::Delivered { status } => {
                self.counters.delivered.inc();
                tracing::debug!(
                    subscription = name,
                    event_id,
                    attempt = number,
                    status,
                    "delivered"
                );
            }
            Outcome::Retry { at_ms, error, .. } => {
                tracing::info!(
                    subscription = name,
                    event_id,
                    attempt = number,
                    error = error.as_str(),
                    retry_in_ms = at_ms - now_ms(),
                    "attempt failed; retry scheduled"
                );
            }
            Outcome::Failed { error, .. } => {
                self.counters.failed.inc();
                tracing::warn!(
                    subscription = name,
                    event_id,
                    attempts = number,
                    error = error.as_str(),
                    "delivery failed; kept as a dead letter"
                );
            }
        }
        if matches!(outcome, Outcome::Retry { .. }) || self.sub.ordering != DeliveryOrder::None {
            // The feeder's next due time may have moved earlier, or (ordered) the next
            // delivery of this key was released by this final outcome.
            self.wake.notify_one();
        }
    }
}

/// The store's next step after attempt `number` (1-based); `unit` is a random draw for jitter.
pub fn decide(
    sub: &Subscription,
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
        Verdict::Retryable { .. } if number > sub.retries => Outcome::Failed {
            status: attempt.status(),
            error: match attempt {
                Verdict::Retryable { error, .. } => format!("{error} (after {number} attempts)"),
                _ => unreachable!(),
            },
        },
        Verdict::Retryable {
            status,
            pressure,
            retry_after,
            error,
            ..
        } => {
            let delay = sub.backoff.delay(number, *pressure, *retry_after, unit);
            Outcome::Retry {
                at_ms: now_ms + delay.as_millis() as i64,
                status: status.map(|s| s.as_u16()),
                error: error.clone(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Pressure;
    use http::StatusCode;

    fn sub(retries: u32) -> Subscription {
        let yaml = format!(
            "{{name: a, url: 'http://h/', events: [x], retries: {retries}, backoff: {{schedule: [1s, 10s]}}}}"
        );
        let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        Subscription::parse(&v, "", &mut Default::default()).unwrap()
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
        assert!(matches!(
            decide(&sub(0), 1, &failed_attempt(), 0, 0.5),
            Outcome::Failed { .. }
        ));
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
