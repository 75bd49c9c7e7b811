//! The catalog: every subscription in force, from the config and from the API. It owns the
//! registry that ingest matches against (swapped atomically, so matching never waits for a
//! change), keeps API subscriptions in the store, and starts and stops their pumps.
//!
//! A change is stored first, then its pump started (or stopped), then the registry's index
//! updated and swapped in, so the next matched event already sees it. The index is
//! persistent: a change edits it in O(log n) and publishes a copy that shares every node.

mod load;
mod sync;

pub use load::load;
pub use sync::keep_in_sync;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::dispatch::{Dispatcher, Lane};
use crate::matching::{Matcher, Place};
use crate::metrics::{FinalOutcome, Metrics};
use crate::store::{Store, StoreError};
use crate::subscription::{self, SHARED_METRIC_LABEL, Source, Subscription};
use crate::time::now_ms;
pub use load::Policy;
use load::stored;

/// API subscriptions that may have their own metric series; the rest share `_api`.
pub const MAX_OWN_METRICS: usize = 100;

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The name (or id) is in use.
    #[error("the name {0:?} is already in use")]
    NameTaken(String),
    /// The store found the name in use (a subscription left out at startup holds it).
    #[error("{0}")]
    StoredNameTaken(String),
    /// `api.max_subscriptions` reached.
    #[error("api.max_subscriptions ({0}) subscriptions are registered already")]
    Full(usize),
    /// Too many subscriptions with their own metric series.
    #[error("at most {MAX_OWN_METRICS} API subscriptions may have metrics: true")]
    MetricsFull,
    /// The subscription comes from the config file.
    #[error("subscription {0:?} is declared in the config file; change the YAML instead")]
    ReadOnly(String),
    /// No such subscription.
    #[error("no subscription {0:?}")]
    NotFound(String),
    /// A reloaded config declares a name that an API subscription uses.
    #[error(
        "subscriptions[{index}].name: {name:?} is already used by a subscription registered through the API (id {id}); rename one"
    )]
    ApiNameClash {
        /// Position in the config's list.
        index: usize,
        /// The name.
        name: String,
        /// The API subscription's id.
        id: String,
    },
    /// The store refused the change.
    #[error(transparent)]
    Store(StoreError),
}

/// What a config reload changed, by subscription name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConfigChange {
    /// New names: started.
    pub added: Vec<String>,
    /// Names whose settings changed: their pumps restarted.
    pub changed: Vec<String>,
    /// Names gone: stopped, their undelivered deliveries kept as orphaned.
    pub removed: Vec<String>,
    /// Deliveries orphaned by the removals.
    pub orphaned: u64,
    /// Orphans resumed because their subscription came back.
    pub resumed: u64,
}

impl From<StoreError> for CatalogError {
    fn from(e: StoreError) -> CatalogError {
        match e {
            StoreError::Conflict(message) => CatalogError::StoredNameTaken(message),
            other => CatalogError::Store(other),
        }
    }
}

/// The subscriptions in force and the means to change them.
pub struct Catalog {
    matcher: ArcSwap<Matcher<Arc<Lane>>>,
    state: Mutex<State>,
    /// Serialises replace and delete, so the store and memory apply them in one order.
    edits: tokio::sync::Mutex<()>,
    /// `State::version` of the registry in force.
    published: AtomicU64,
    store: Arc<dyn Store>,
    /// Seal the secrets of stored specs and check the destinations of those another relay
    /// stored (`sync`).
    policy: Policy,
    dispatcher: Dispatcher,
    metrics: Metrics,
    max_subscriptions: usize,
}

/// The API subscriptions read from the store at startup.
#[derive(Debug, Default)]
pub struct ApiLoaded {
    /// Valid ones, in force.
    pub subscriptions: Vec<Arc<Subscription>>,
    /// The (id, name) of those left out (no longer valid, or a secret that cannot be read):
    /// their names stay taken, and they can be deleted.
    pub left_out: Vec<(String, String)>,
}

/// The authoritative set, changed under a short lock.
struct State {
    config: Vec<Arc<Subscription>>,
    /// API subscriptions by id (UUIDv7, so in creation order).
    api: BTreeMap<String, Arc<Subscription>>,
    /// Every name and id in use or being created, with the id it belongs to.
    taken: HashMap<String, String>,
    own_metrics: usize,
    /// Creates between their reservation and their entry in `api`.
    creating: usize,
    /// Stored API subscriptions left out at startup (no longer valid), by id: their names
    /// stay taken, and they can be deleted.
    left_out: HashMap<String, String>,
    version: u64,
    /// The index of `config` and `api` with their lanes, as of `version`: edited with each
    /// change, then published as a copy.
    index: Matcher<Arc<Lane>>,
}

impl State {
    /// Puts an API subscription into the index with its lane (one without is left out).
    fn index_api(&mut self, sub: &Arc<Subscription>, lane: Option<Arc<Lane>>) {
        match lane {
            Some(lane) => self.index.insert(Place::api(sub), sub.clone(), lane),
            None => {
                no_lane(sub);
                self.index.remove(&Place::api(sub));
            }
        }
    }

    /// Replaces the config's subscriptions in the index, each with its lane.
    fn index_config(&mut self, lanes: Vec<Option<Arc<Lane>>>) {
        self.index.clear_config();
        for (i, (sub, lane)) in self.config.iter().zip(lanes).enumerate() {
            match lane {
                Some(lane) => self.index.insert(Place::Config(i), sub.clone(), lane),
                None => no_lane(sub),
            }
        }
    }

    fn find(&self, id_or_name: &str) -> Option<Arc<Subscription>> {
        let id = self.taken.get(id_or_name)?;
        self.api
            .get(id)
            .or_else(|| self.config.iter().find(|s| s.id == *id))
            .cloned()
    }
}

impl Catalog {
    /// The catalog of `config` subscriptions plus the API ones read from the store; the
    /// caller has checked that their names do not collide. `policy.keys` seal the secrets of
    /// the API subscriptions it stores.
    pub fn new(
        config: Vec<Arc<Subscription>>,
        api: ApiLoaded,
        store: Arc<dyn Store>,
        policy: Policy,
        dispatcher: Dispatcher,
        metrics: Metrics,
        max_subscriptions: usize,
    ) -> Catalog {
        let mut state = State {
            config,
            api: BTreeMap::new(),
            taken: HashMap::new(),
            own_metrics: 0,
            creating: 0,
            left_out: HashMap::new(),
            version: 0,
            index: Matcher::default(),
        };
        let ApiLoaded {
            subscriptions: api,
            left_out,
        } = api;
        for sub in state.config.iter().chain(api.iter()) {
            state.taken.insert(sub.id.clone(), sub.id.clone());
            state.taken.insert(sub.name.clone(), sub.id.clone());
        }
        for sub in api {
            state.own_metrics += usize::from(sub.own_metrics);
            state.api.insert(sub.id.clone(), sub);
        }
        for (id, name) in left_out {
            state.taken.insert(id.clone(), id.clone());
            state.taken.insert(name.clone(), id.clone());
            state.left_out.insert(id, name);
        }
        let subs = state.config.iter().chain(state.api.values()).cloned();
        state.index = Matcher::new(lanes(&dispatcher, subs.collect()));
        let catalog = Catalog {
            matcher: ArcSwap::from_pointee(state.index.clone()),
            published: AtomicU64::new(state.version),
            state: Mutex::new(state),
            edits: tokio::sync::Mutex::new(()),
            store,
            policy,
            dispatcher,
            metrics,
            max_subscriptions,
        };
        catalog.count();
        catalog
    }

    /// Sets `hookrelay_subscriptions{source}` from the state.
    fn count(&self) {
        let (config, api) = {
            let state = self.lock();
            (state.config.len(), state.api.len())
        };
        let gauge = &self.metrics.subscriptions;
        gauge.with_label_values(&["config"]).set(config as i64);
        gauge.with_label_values(&["api"]).set(api as i64);
    }

    /// The registry in force; cheap (no lock, no copy).
    pub fn matcher(&self) -> arc_swap::Guard<Arc<Matcher<Arc<Lane>>>> {
        self.matcher.load()
    }

    /// The subscription with this id or name.
    pub fn find(&self, id_or_name: &str) -> Option<Arc<Subscription>> {
        self.lock().find(id_or_name)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new API subscription; it receives the next matching event.
    pub async fn create(&self, sub: Subscription) -> Result<Arc<Subscription>, CatalogError> {
        let sub = Arc::new(sub);
        {
            let mut state = self.lock();
            for key in [&sub.name, &sub.id] {
                if state.taken.contains_key(key.as_str()) {
                    return Err(CatalogError::NameTaken(key.clone()));
                }
            }
            if state.api.len() + state.creating >= self.max_subscriptions {
                return Err(CatalogError::Full(self.max_subscriptions));
            }
            if sub.own_metrics && state.own_metrics >= MAX_OWN_METRICS {
                return Err(CatalogError::MetricsFull);
            }
            // Reserved now, so a concurrent create of the same name loses at once.
            state.taken.insert(sub.name.clone(), sub.id.clone());
            state.taken.insert(sub.id.clone(), sub.id.clone());
            state.own_metrics += usize::from(sub.own_metrics);
            state.creating += 1;
        }
        let saved = match stored(&sub, &self.policy.keys) {
            Ok(row) => self.store.save_subscription(row).await,
            Err(e) => Err(e),
        };
        if let Err(e) = saved {
            let mut state = self.lock();
            state.taken.remove(&sub.name);
            state.taken.remove(&sub.id);
            state.own_metrics -= usize::from(sub.own_metrics);
            state.creating -= 1;
            return Err(e.into());
        }
        if sub.own_metrics {
            self.metrics.init_own_series(&sub);
        }
        self.dispatcher.add(sub.clone());
        let lane = self.dispatcher.lane(&sub.name);
        let version = {
            let mut state = self.lock();
            state.creating -= 1;
            state.api.insert(sub.id.clone(), sub.clone());
            state.index_api(&sub, lane);
            state.version += 1;
            state.version
        };
        self.publish(version);
        self.count();
        tracing::info!(
            subscription = sub.name.as_str(),
            id = sub.id.as_str(),
            destination = sub.target(),
            "subscription created"
        );
        Ok(sub)
    }

    /// Replaces an API subscription with `make(current)` (same id and name); its pump
    /// restarts with the new settings. Read, change and write happen under one lock, so
    /// concurrent updates apply one after the other and none is lost.
    pub async fn update<E: From<CatalogError>>(
        &self,
        key: &str,
        make: impl FnOnce(&Subscription) -> Result<Subscription, E>,
    ) -> Result<Arc<Subscription>, E> {
        let _edit = self.edits.lock().await;
        let old = self
            .find(key)
            .ok_or_else(|| CatalogError::NotFound(key.to_string()))?;
        if old.source == Source::Config {
            return Err(CatalogError::ReadOnly(old.name.clone()).into());
        }
        let sub = Arc::new(make(&old)?);
        {
            let mut state = self.lock();
            if sub.own_metrics && !old.own_metrics {
                if state.own_metrics >= MAX_OWN_METRICS {
                    return Err(CatalogError::MetricsFull.into());
                }
                state.own_metrics += 1;
            }
        }
        let saved = match stored(&sub, &self.policy.keys) {
            Ok(row) => self.store.save_subscription(row).await,
            Err(e) => Err(e),
        };
        if let Err(e) = saved {
            if sub.own_metrics && !old.own_metrics {
                self.lock().own_metrics -= 1;
            }
            return Err(CatalogError::from(e).into());
        }
        if sub.own_metrics {
            self.metrics.init_own_series(&sub);
        }
        if *sub.ordering() == subscription::DeliveryOrder::None
            && *old.ordering() != subscription::DeliveryOrder::None
        {
            self.unorder(vec![sub.name.clone()]).await;
        }
        self.dispatcher.add(sub.clone());
        let lane = self.dispatcher.lane(&sub.name);
        let version = {
            let mut state = self.lock();
            if old.own_metrics && !sub.own_metrics {
                state.own_metrics -= 1;
            }
            state.api.insert(sub.id.clone(), sub.clone());
            state.index_api(&sub, lane);
            state.version += 1;
            state.version
        };
        self.publish(version);
        // After the publish, as for a delete: a scrape until then still uses the old label.
        if old.own_metrics && !sub.own_metrics {
            self.metrics.remove_subscription(&old.name);
        }
        // Long polls on the old version see the change and end.
        self.dispatcher.wake(&sub.name);
        tracing::info!(
            subscription = sub.name.as_str(),
            id = sub.id.as_str(),
            destination = sub.target(),
            "subscription changed"
        );
        Ok(sub)
    }

    /// Deletes an API subscription and cancels its undelivered deliveries; `Ok(None)` when
    /// there was none.
    pub async fn delete(&self, id_or_name: &str) -> Result<Option<u64>, CatalogError> {
        let _edit = self.edits.lock().await;
        let Some(sub) = self.find(id_or_name) else {
            return self.delete_left_out(id_or_name).await;
        };
        if sub.source == Source::Config {
            return Err(CatalogError::ReadOnly(sub.name.clone()));
        }
        // Stored first: from its commit on, events matched by the old registry are stored
        // as cancelled deliveries, so nothing is left pending for a pump that is gone.
        let cancelled = self
            .store
            .delete_subscription(sub.id.clone(), sub.name.clone(), now_ms())
            .await?;
        let arrivals = self.dispatcher.arrivals(&sub.name);
        self.dispatcher.remove(&sub.name);
        let version = {
            let mut state = self.lock();
            state.api.remove(&sub.id);
            state.index.remove(&Place::api(&sub));
            state.taken.remove(&sub.id);
            state.taken.remove(&sub.name);
            state.own_metrics -= usize::from(sub.own_metrics);
            state.version += 1;
            state.version
        };
        self.publish(version);
        self.count();
        // Long polls on it see it gone and end.
        if let Some(arrivals) = arrivals {
            arrivals.notify_waiters();
        }
        // Counted under the shared label: a deleted subscription's own series go away.
        self.metrics
            .count_final(SHARED_METRIC_LABEL, FinalOutcome::Cancelled, cancelled);
        if sub.own_metrics {
            self.metrics.remove_subscription(&sub.name);
        }
        tracing::info!(
            subscription = sub.name.as_str(),
            id = sub.id.as_str(),
            cancelled,
            "subscription deleted; its undelivered deliveries are cancelled"
        );
        Ok(Some(cancelled))
    }

    /// Replaces the config's subscriptions with those of a reloaded file. Unchanged ones run
    /// on untouched; a changed one gets a new pump (attempts in flight finish under their old
    /// settings, queued deliveries go out under the new); new ones start; removed ones stop
    /// and their undelivered deliveries are kept as orphaned, resumed if the name returns.
    pub async fn replace_config(
        &self,
        new: Vec<Subscription>,
    ) -> Result<ConfigChange, CatalogError> {
        let _edit = self.edits.lock().await;
        let old = self.lock().config.clone();
        let mut change = ConfigChange::default();
        let mut next = Vec::with_capacity(new.len());
        for sub in new {
            match old.iter().find(|o| o.name == sub.name) {
                Some(o) if o.same_run(&sub) => next.push(o.clone()),
                Some(_) => {
                    change.changed.push(sub.name.clone());
                    next.push(Arc::new(sub));
                }
                None => {
                    change.added.push(sub.name.clone());
                    next.push(Arc::new(sub));
                }
            }
        }
        change.removed = old
            .iter()
            .filter(|o| !next.iter().any(|n| n.name == o.name))
            .map(|o| o.name.clone())
            .collect();
        {
            // Checked and reserved under one lock, so a concurrent API create cannot take a
            // name in between.
            let mut state = self.lock();
            for (index, sub) in next.iter().enumerate() {
                if let Some(id) = state.taken.get(&sub.name)
                    && !old.iter().any(|o| o.id == *id)
                {
                    return Err(CatalogError::ApiNameClash {
                        index,
                        name: sub.name.clone(),
                        id: id.clone(),
                    });
                }
            }
            for name in &change.added {
                state.taken.insert(name.clone(), name.clone());
            }
        }
        if !change.added.is_empty() || !change.removed.is_empty() {
            // Declared first: relays sharing the store keep the new names in force.
            let names = next.iter().map(|s| s.name.clone()).collect();
            let stored = match self.store.declare(names).await {
                Ok(()) => {
                    self.store
                        .retire_subscriptions(change.removed.clone(), change.added.clone())
                        .await
                }
                Err(e) => Err(e),
            };
            match stored {
                Ok((orphaned, resumed)) => (change.orphaned, change.resumed) = (orphaned, resumed),
                Err(e) => {
                    let mut state = self.lock();
                    for name in &change.added {
                        state.taken.remove(name);
                    }
                    return Err(e.into());
                }
            }
        }
        // New or changed subscriptions without ordering: nothing of theirs may wait in key
        // order any more (orphans just resumed included).
        let unordered: Vec<String> = next
            .iter()
            .filter(|s| *s.ordering() == subscription::DeliveryOrder::None)
            .filter(|s| change.added.contains(&s.name) || change.changed.contains(&s.name))
            .map(|s| s.name.clone())
            .collect();
        if !unordered.is_empty() {
            self.unorder(unordered).await;
        }
        let mut gone_waiters = Vec::new();
        for name in &change.removed {
            gone_waiters.extend(self.dispatcher.arrivals(name));
            self.dispatcher.remove(name);
        }
        for sub in next.iter().filter(|s| change.added.contains(&s.name)) {
            self.metrics.init_own_series(sub);
            self.dispatcher.add(sub.clone());
        }
        for sub in next.iter().filter(|s| change.changed.contains(&s.name)) {
            // Its kind may have changed: the old kind's series go.
            self.metrics.init_own_series(sub);
            self.dispatcher.add(sub.clone());
        }
        let config_lanes = next.iter().map(|s| self.dispatcher.lane(&s.name)).collect();
        let version = {
            let mut state = self.lock();
            for name in &change.removed {
                state.taken.remove(name);
            }
            state.config = next;
            state.index_config(config_lanes);
            state.version += 1;
            state.version
        };
        self.publish(version);
        self.count();
        for name in &change.removed {
            self.metrics.remove_subscription(name);
        }
        // Long polls see their subscription changed or gone, and end.
        for name in &change.changed {
            self.dispatcher.wake(name);
        }
        for waiters in gone_waiters {
            waiters.notify_waiters();
        }
        Ok(change)
    }

    /// Lifts key order from subscriptions that lost their ordering. Best effort: if the
    /// store fails, the next start does it.
    async fn unorder(&self, names: Vec<String>) {
        if let Err(e) = self.store.clear_ordering(names).await {
            tracing::warn!(error = %e, "cannot release deliveries waiting in key order; the next start will");
        }
    }

    /// Deletes a stored subscription that was left out at startup, if `key` names one.
    async fn delete_left_out(&self, key: &str) -> Result<Option<u64>, CatalogError> {
        let found = {
            let state = self.lock();
            let id = state.taken.get(key).cloned();
            id.and_then(|id| state.left_out.get(&id).map(|name| (id, name.clone())))
        };
        let Some((id, name)) = found else {
            return Ok(None);
        };
        let cancelled = self
            .store
            .delete_subscription(id.clone(), name.clone(), now_ms())
            .await?;
        let mut state = self.lock();
        state.left_out.remove(&id);
        state.taken.remove(&id);
        state.taken.remove(&name);
        drop(state);
        self.metrics
            .count_final(SHARED_METRIC_LABEL, FinalOutcome::Cancelled, cancelled);
        tracing::info!(
            subscription = name.as_str(),
            id = id.as_str(),
            cancelled,
            "subscription (left out at startup) deleted"
        );
        Ok(Some(cancelled))
    }

    /// The metric label for deliveries of the subscription named `name`: its own label,
    /// `_api` for API subscriptions left out, or the name itself for one gone from the config.
    pub fn metric_label_of(&self, name: &str) -> String {
        let state = self.lock();
        match state.find(name) {
            Some(sub) => sub.metric_label().to_string(),
            None if state.taken.contains_key(name) => SHARED_METRIC_LABEL.to_string(),
            None => name.to_string(),
        }
    }

    /// Makes the registry reflect at least `version`: a copy of the state's index (cheap: it
    /// shares every node) swapped in. Under the state lock, so copies are swapped in version
    /// order and a change made meanwhile is in the copy or publishes its own.
    fn publish(&self, version: u64) {
        let old = {
            let state = self.lock();
            if self.published.load(Ordering::Acquire) >= version {
                return;
            }
            let old = self.matcher.swap(Arc::new(state.index.clone()));
            self.published.store(state.version, Ordering::Release);
            old
        };
        // Outside the lock. It frees only the nodes the changes since replaced (a reader that
        // still holds it frees them instead), so it no longer needs a thread of its own.
        drop(old);
    }
}

/// Pairs each subscription with its lane. Every subscription in force has one (its lane is
/// added before the index is updated); one without would match nothing, so it is logged.
fn lanes(
    dispatcher: &Dispatcher,
    subs: Vec<Arc<Subscription>>,
) -> Vec<(Arc<Subscription>, Arc<Lane>)> {
    subs.into_iter()
        .filter_map(|sub| match dispatcher.lane(&sub.name) {
            Some(lane) => Some((sub, lane)),
            None => {
                no_lane(&sub);
                None
            }
        })
        .collect()
}

/// Logs a subscription left out of matching for want of a lane.
fn no_lane(sub: &Subscription) {
    tracing::error!(
        subscription = sub.name.as_str(),
        "subscription has no dispatch lane; left out of matching"
    );
}
