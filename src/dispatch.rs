//! Dispatch: per push subscription, a feeder claims due deliveries from the store and a pump
//! sends each through the subscription's attempt stack, writing the outcome back (delivered,
//! retry at a time, or failed). New deliveries skip the store round trip: ingest stores them
//! as claimed and hands them to the pump's queue after the commit, when it has room. Each
//! pump only waits on its own subscriber, so a slow or dead receiver never delays another's.
//! A pull subscription has a lane too, without feeder or pump: it wakes the long polls.
//! On a store shared by several relays, `pickup` takes over lapsed claims and wakes the
//! feeders of subscriptions with work another relay handed back, and the long polls of pull
//! subscriptions with notifications another relay accepted.

mod breaker;
mod control;
mod feeder;
mod pauses;
mod pickup;
mod pump;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::deliver::allowance::Allowance;
use crate::deliver::destination::{DestinationGuard, Lookup, Policy};
use crate::deliver::email::{self, Mailer};
use crate::deliver::http_post::{self, Clients, DeliverError};
use crate::deliver::oauth2::{TokenCounters, TokenSource};
use crate::deliver::rate_limit::Relays;
use crate::deliver::settings::DeliverySettings;
use crate::deliver::{self, AttemptService, Caps, via};
use crate::metrics::{FinalOutcome, Metrics, OAUTH2_REQUEST_RESULTS, SeriesSet};
use crate::store::{Delivery, PauseState, Store, StoreError};
use crate::subscription::{
    Auth, Channel, DeliveryOrder, HttpSettings, PushSettings, Source, Subscription, TlsSettings,
    push_slots,
};
pub use control::ControlState;
use control::{Control, Paused};
use feeder::Feeder;
use pauses::Pauses;
pub use pump::decide;
use pump::{FinalCounters, Pump};

/// Pause after a store error before trying again.
const STORE_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Handle to the running lanes; they come and go as subscriptions are added and removed.
#[derive(Clone)]
pub struct Dispatcher {
    lanes: Arc<RwLock<HashMap<Arc<str>, Arc<Lane>>>>,
    shared: Arc<Shared>,
}

/// What every pump is built from.
struct Shared {
    store: Arc<dyn Store>,
    metrics: Metrics,
    /// HTTP clients; API subscriptions' resolve through the whole destination guard.
    clients: Clients,
    /// Resolves and checks the SMTP servers of e-mail subscriptions at each connection.
    lookup: Lookup,
    /// This relay's id in `hookrelay-via`, new at each start.
    relay_id: Arc<str>,
    /// The slots API subscriptions share (`delivery.api_max_in_flight`).
    api_pool: Arc<Semaphore>,
    /// The most of `api_pool` one API subscription may hold.
    api_share: usize,
    /// The live relays on the store, which share every rate limit (1 unless shared).
    relays: Relays,
    /// The pause states kept in the store.
    pauses: Pauses,
    shutdown: CancellationToken,
    attempts: TaskTracker,
}

/// How new deliveries reach one subscription's consumer: its pump's queue and feeder (push),
/// or its long polls (pull). Shared: a lookup clones one Arc.
pub struct Lane {
    /// The subscription's name.
    name: Arc<str>,
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
    /// A push subscription's attempt timeout (zero for pull), which a claim outlasts.
    timeout: Duration,
    /// A push subscription's breaker and pause (new with each lane: the breaker starts
    /// closed, the pause comes from the store or the document).
    control: Option<Arc<Control>>,
}

/// A reserved place in a pump's queue.
pub type HandoffSlot = mpsc::OwnedPermit<Delivery>;

impl Dispatcher {
    /// Starts a lane per subscription; pumps stop when `shutdown` is cancelled, leaving
    /// attempts already sent to finish on `attempts`. `pauses` are the store's pause states.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        subs: &[Arc<Subscription>],
        pauses: Vec<PauseState>,
        store: Arc<dyn Store>,
        metrics: &Metrics,
        settings: &DeliverySettings,
        guard: Arc<DestinationGuard>,
        shutdown: CancellationToken,
        attempts: TaskTracker,
    ) -> Result<Dispatcher, DeliverError> {
        let lookup = Lookup::new(guard, settings.hosts.clone());
        // Config subscriptions have their own slots (validated against the total); the API
        // ones share what is kept beside them.
        let config_slots = push_slots(
            subs.iter()
                .map(|s| &**s)
                .filter(|s| s.source == Source::Config),
        );
        let api_pool = settings.api_pool(config_slots);
        if api_pool == 0 {
            tracing::warn!(
                max_in_flight_total = settings.max_in_flight_total,
                config_slots,
                "no slots are left for API subscriptions: they cannot deliver; raise delivery.max_in_flight_total"
            );
        }
        let relays = Arc::new(AtomicU64::new(store.replicas().max(1)));
        let dispatcher = Dispatcher {
            lanes: Arc::default(),
            shared: Arc::new(Shared {
                store,
                metrics: metrics.clone(),
                clients: Clients::new(settings, lookup.clone())?,
                lookup,
                relay_id: via::new_relay_id().into(),
                api_pool: Arc::new(Semaphore::new(api_pool)),
                api_share: DeliverySettings::api_share(api_pool),
                relays,
                pauses: Pauses::new(pauses),
                shutdown,
                attempts,
            }),
        };
        for sub in subs {
            dispatcher.add(sub.clone());
        }
        if dispatcher.shared.store.shared() {
            tokio::spawn(pickup::run(dispatcher.clone()));
        }
        Ok(dispatcher)
    }

    /// Starts the lane of a subscription, replacing (and stopping) one of the same name.
    /// Deliveries the old pump had claimed but not sent go back to the store for the new one.
    pub fn add(&self, sub: Arc<Subscription>) {
        let shared = &self.shared;
        let label = sub.metric_label();
        match &sub.channel {
            Channel::Pull(pull) => {
                // Pulled, not pushed: no pump; the lane counts matches and wakes pollers.
                self.install(
                    &sub,
                    None,
                    Some(pull.ttl.as_millis() as i64),
                    DeliveryOrder::None,
                    Duration::ZERO,
                );
            }
            Channel::Http { push, http } => {
                self.watch_certificate(&sub, http.tls.as_deref());
                let sender = shared
                    .clients
                    .sender(policy(&sub), &http.url, http.tls.as_ref());
                let token = self.token_source(&sub, push, http);
                let service = deliver::http_stack(
                    label,
                    SeriesSet::of(&sub.channel),
                    push,
                    http,
                    (sender, token),
                    self.caps(&sub, push),
                    &shared.metrics,
                );
                let http = http.clone();
                let relay = shared.relay_id.clone();
                self.start_pump(&sub, push, service, move |d, n| {
                    http_post::request(&http, d, n, &relay)
                });
            }
            Channel::Email { push, email } => {
                let mailer = Arc::new(Mailer::new(
                    email,
                    shared.lookup.clone(),
                    policy(&sub),
                    push.timeout,
                ));
                let service = deliver::email_stack(
                    label,
                    SeriesSet::of(&sub.channel),
                    push,
                    mailer,
                    self.caps(&sub, push),
                    &shared.metrics,
                );
                let email = email.clone();
                self.start_pump(&sub, push, service, move |d, n| {
                    email::message(&email, d, n)
                });
            }
        }
    }

    /// The OAuth2 tokens of an HTTP subscription with `auth.oauth2`, for the life of its lane.
    /// Each fetch gets three quarters of the attempt timeout, so a slow token endpoint ends
    /// as an `auth_error` that names it rather than as a plain timeout.
    fn token_source(
        &self,
        sub: &Subscription,
        push: &PushSettings,
        http: &HttpSettings,
    ) -> Option<Arc<TokenSource>> {
        let Some(Auth::OAuth2(settings)) = &http.auth else {
            return None;
        };
        let shared = &self.shared;
        let label = sub.metric_label();
        let [ok, failed] = OAUTH2_REQUEST_RESULTS.map(|result| {
            shared
                .metrics
                .oauth2_token_requests
                .with_label_values(&[label, result])
        });
        Some(Arc::new(TokenSource::new(
            settings.clone(),
            shared
                .clients
                .sender(policy(sub), &settings.token_url, None),
            push.timeout * 3 / 4,
            &sub.name,
            TokenCounters { ok, failed },
        )))
    }

    /// The concurrency a push subscription is held to: its own `max_in_flight` for a config
    /// subscription; for an API one, at most its share of the pool the API ones share.
    /// Its limit shows in `hookrelay_delivery_concurrency_limit` when it has its own series.
    fn caps(&self, sub: &Subscription, push: &PushSettings) -> Caps {
        let gauge = sub.own_metrics.then(|| {
            self.shared
                .metrics
                .concurrency_limit
                .with_label_values(&[sub.metric_label()])
        });
        let allowance = |max| Allowance::new(max, push.concurrency, gauge.clone());
        match sub.source {
            Source::Config => Caps {
                allowance: allowance(push.max_in_flight),
                pool: None,
                relays: self.shared.relays.clone(),
            },
            Source::Api => Caps {
                allowance: allowance(push.max_in_flight.min(self.shared.api_share)),
                pool: Some(self.shared.api_pool.clone()),
                relays: self.shared.relays.clone(),
            },
        }
    }

    /// Starts the feeder and pump of a push subscription around its attempt `service`.
    fn start_pump<R: Send + 'static>(
        &self,
        sub: &Arc<Subscription>,
        push: &PushSettings,
        service: AttemptService<R>,
        build: impl Fn(&Delivery, u32) -> R + Send + 'static,
    ) {
        let shared = &self.shared;
        // Bounded: when full, new deliveries stay pending in the store for the feeder.
        let (queue, claimed) = mpsc::channel((push.max_in_flight * 4).max(256));
        let (wake, stop, control) = self.install(
            sub,
            Some(queue.clone()),
            None,
            push.ordering.clone(),
            push.timeout,
        );
        let control = control.expect("a push lane has a control");
        let feeder = Feeder {
            control: control.clone(),
            sub: sub.clone(),
            batch: push.max_in_flight.max(32),
            timeout: push.timeout,
            store: shared.store.clone(),
            wake: wake.clone(),
            queue,
            shutdown: stop.clone(),
        };
        tokio::spawn(feeder.run());
        let label = sub.metric_label();
        let pump = Pump {
            control,
            sub: sub.clone(),
            push: Arc::new(push.clone()),
            store: shared.store.clone(),
            outcomes: Arc::new(FinalCounters {
                delivered: shared.metrics.finals(label, FinalOutcome::Delivered),
                failed: shared.metrics.finals(label, FinalOutcome::Failed),
            }),
            wake,
            shutdown: stop,
            relay_stopping: shared.shutdown.clone(),
            attempts: shared.attempts.clone(),
            dispatcher: self.clone(),
        };
        tokio::spawn(pump.run(service, claimed, build));
    }

    /// Puts a subscription's new lane in place and stops the one it replaces (whose wake-up
    /// it keeps); returns the wake-up, the new lane's stop token and, for a push
    /// subscription, its control.
    fn install(
        &self,
        sub: &Subscription,
        queue: Option<mpsc::Sender<Delivery>>,
        ttl_ms: Option<i64>,
        ordering: DeliveryOrder,
        timeout: Duration,
    ) -> (Arc<Notify>, CancellationToken, Option<Arc<Control>>) {
        let shared = &self.shared;
        let mut lanes = self.lanes.write().unwrap_or_else(|e| e.into_inner());
        let previous = lanes.remove(sub.name.as_str());
        let wake = previous
            .as_ref()
            .map_or_else(|| Arc::new(Notify::new()), |p| p.wake.clone());
        // A new breaker, closed; the pause comes from the store (or the document).
        let control = sub.push().map(|push| {
            Arc::new(Control::new(
                Arc::from(sub.name.as_str()),
                push.circuit,
                push.paused,
                shared.pauses.wanted(&sub.name, push.paused),
                sub.own_metrics.then_some(&shared.metrics),
            ))
        });
        let stop = shared.shutdown.child_token();
        let matched = shared
            .metrics
            .events_matched
            .with_label_values(&[sub.metric_label()]);
        let name: Arc<str> = Arc::from(sub.name.as_str());
        lanes.insert(
            name.clone(),
            Arc::new(Lane {
                name,
                wake: wake.clone(),
                queue,
                matched,
                stop: stop.clone(),
                ttl_ms,
                ordering,
                timeout,
                control: control.clone(),
            }),
        );
        drop(lanes);
        if let Some(old) = previous {
            old.stop.cancel();
        }
        (wake, stop, control)
    }

    /// Publishes when `sub`'s client certificate expires (subscriptions with their own series)
    /// and warns when that is within 30 days or past.
    fn watch_certificate(&self, sub: &Subscription, tls: Option<&TlsSettings>) {
        // Only where its SeriesSet holds the gauge; otherwise `Metrics::prune` removes it.
        if sub.own_metrics
            && SeriesSet::of(&sub.channel).client_cert
            && let Some(at) = tls.and_then(|t| t.not_after)
        {
            self.shared
                .metrics
                .client_cert_expiry
                .with_label_values(&[&sub.name])
                .set(at as f64);
        }
        let now = crate::time::now_ms() / 1000;
        if let Some(warning) = tls.and_then(|t| t.expiry_warning(now)) {
            tracing::warn!(subscription = %sub.name, "{warning}");
        }
    }

    /// Stops the lane of a removed subscription; attempts already sent finish.
    pub fn remove(&self, name: &str) {
        let removed = self
            .lanes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        if let Some(p) = removed {
            p.stop.cancel();
            if p.control.is_some() {
                for state in crate::metrics::DELIVERY_STATES {
                    let _ = self
                        .shared
                        .metrics
                        .subscription_state
                        .remove_label_values(&[name, state]);
                }
            }
        }
    }

    /// Runs `f` on a subscription's lane under the read lock (no handle is cloned).
    fn with_lane<T>(&self, name: &str, f: impl FnOnce(&Arc<Lane>) -> T) -> Option<T> {
        self.lanes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(f)
    }

    /// Tells a subscription's feeder (or its long polls) that new deliveries are waiting.
    pub fn wake(&self, subscription: &str) {
        self.with_lane(subscription, |p| p.wake());
    }

    /// Cancelled when the relay stops (long polls end then).
    pub fn stopping(&self) -> CancellationToken {
        self.shared.shutdown.clone()
    }

    /// What a long poll on a pull subscription waits on: notified when notifications arrive.
    pub fn arrivals(&self, subscription: &str) -> Option<Arc<Notify>> {
        self.with_lane(subscription, |p| p.wake.clone())
    }

    /// The lane of `subscription`, which the catalog pairs with it in the matcher.
    pub fn lane(&self, subscription: &str) -> Option<Arc<Lane>> {
        self.with_lane(subscription, Arc::clone)
    }

    /// A push subscription's delivery state (`None` for pull or unknown ones).
    pub fn delivery_state(&self, subscription: &str) -> Option<ControlState> {
        self.with_lane(subscription, |l| l.control.as_ref().map(|c| c.state()))
            .flatten()
    }

    /// Pauses (`paused`) or resumes a push subscription for `reason`: kept in the store
    /// first, then applied here (other relays on a shared store follow within a second).
    /// A subscription already in that state is left as it is (its reason and stored state
    /// too). `Ok(None)` when it has no delivery state (pull, or unknown).
    pub async fn set_paused(
        &self,
        subscription: &str,
        paused: bool,
        reason: &str,
    ) -> Result<Option<ControlState>, StoreError> {
        let Some(control) = self.control(subscription) else {
            return Ok(None);
        };
        if control.is_paused() == paused {
            return Ok(Some(control.state()));
        }
        let _writing = self.shared.pauses.writing();
        self.keep_pause(subscription, paused, reason).await?;
        if paused {
            control.pause(Paused {
                reason: reason.to_string(),
            });
        } else {
            control.resume(reason);
        }
        Ok(Some(control.state()))
    }

    /// Pauses a subscription at once for a `410 Gone`, then keeps the pause in the store,
    /// trying again with backoff until it is kept or `stopping` (re-reads of the store cannot
    /// undo it meanwhile). Nothing when it was paused already.
    pub(super) async fn pause_for_gone(
        &self,
        control: &Control,
        subscription: &str,
        stopping: &CancellationToken,
    ) {
        let _writing = self.shared.pauses.writing();
        if !control.pause(Paused {
            reason: "gone".into(),
        }) {
            return;
        }
        let mut wait = Duration::from_millis(100);
        while let Err(e) = self.keep_pause(subscription, true, "gone").await {
            if stopping.is_cancelled() {
                tracing::warn!(subscription, error = %e, "cannot keep the pause after 410 Gone in the store; the relay is stopping");
                return;
            }
            tracing::warn!(subscription, error = %e, retry_in_ms = wait.as_millis() as u64, "cannot keep the pause after 410 Gone in the store; retrying");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopping.cancelled() => {}
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// Writes a pause state to the store and takes it as this relay's own.
    async fn keep_pause(
        &self,
        subscription: &str,
        paused: bool,
        reason: &str,
    ) -> Result<(), StoreError> {
        let row = PauseState {
            name: subscription.to_string(),
            paused,
            reason: reason.to_string(),
            since_ms: crate::time::now_ms(),
        };
        self.shared.store.set_pause_state(row.clone()).await?;
        self.shared.pauses.local(row);
        Ok(())
    }

    /// A push subscription's control.
    fn control(&self, subscription: &str) -> Option<Arc<Control>> {
        self.with_lane(subscription, |l| l.control.clone())
            .flatten()
    }

    /// Takes the pause states another relay may have changed (a shared store).
    async fn sync_pauses(&self) -> Result<(), StoreError> {
        let pauses = &self.shared.pauses;
        let epoch = pauses.epoch();
        let rows = self.shared.store.pause_states().await?;
        if !pauses.replace(rows, epoch) {
            return Ok(());
        }
        let lanes: Vec<Arc<Lane>> = self
            .lanes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for lane in lanes {
            if let Some(control) = &lane.control {
                control.settle(pauses.wanted(&lane.name, control.in_document()));
            }
        }
        Ok(())
    }

    /// This relay's id in `hookrelay-via` (random at each start).
    pub fn relay_id(&self) -> &str {
        &self.shared.relay_id
    }
}

/// The destination rules of a subscription: config ones are trusted but for own listeners.
fn policy(sub: &Subscription) -> Policy {
    match sub.source {
        Source::Config => Policy::OwnListeners,
        Source::Api => Policy::Guarded,
    }
}

impl Lane {
    /// The subscription's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Everything ingest needs for one new delivery on this lane: a reserved place in the
    /// pump's queue if there is room (never for ordered subscriptions), and how to report the
    /// commit.
    pub fn route(self: &Arc<Self>) -> Route {
        Route {
            // Never while paused or not closed: the delivery waits in the store.
            slot: self
                .queue
                .clone()
                .filter(|_| self.ordering == DeliveryOrder::None)
                .filter(|_| self.control.as_ref().is_none_or(|c| c.flowing()))
                .and_then(|q| q.try_reserve_owned().ok()),
            lane: self.clone(),
        }
    }

    /// A push feeder is one waiter; a pull queue may have many long polls.
    fn wake(&self) {
        match self.queue {
            Some(_) => self.wake.notify_one(),
            None => self.wake.notify_waiters(),
        }
    }
}

/// A new delivery's way to its lane, taken before the commit.
pub struct Route {
    /// A reserved place in the pump's queue, when it had room.
    pub slot: Option<HandoffSlot>,
    lane: Arc<Lane>,
}

impl Route {
    /// The subscription's name.
    pub fn name(&self) -> &Arc<str> {
        &self.lane.name
    }

    /// The delivery's own ttl (a pull subscription's), in ms.
    pub fn ttl_ms(&self) -> Option<i64> {
        self.lane.ttl_ms
    }

    /// The subscription's ordering, which gives the delivery its key.
    pub fn ordering(&self) -> &DeliveryOrder {
        &self.lane.ordering
    }

    /// The subscription's attempt timeout (zero for pull), which the claim of a delivery
    /// handed over outlasts.
    pub fn attempt_timeout(&self) -> Duration {
        self.lane.timeout
    }

    /// The delivery goes to a pull subscription's queue (its lane has no pump).
    pub fn pulled(&self) -> bool {
        self.lane.queue.is_none()
    }

    /// After the commit: counts the match, then hands the delivery to the pump, or tells the
    /// feeder (or the long polls) that it waits in the store.
    /// `delivery` is only built when it is handed over.
    pub fn hand_over(self, delivery: impl FnOnce() -> Delivery) {
        self.lane.matched.inc();
        match self.slot {
            Some(slot) => {
                slot.send(delivery());
            }
            None => self.lane.wake(),
        }
    }
}
