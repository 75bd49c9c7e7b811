//! The catalog: every subscription in force, from the config and from the API. It owns the
//! registry that ingest matches against (swapped atomically, so matching never waits for a
//! change), keeps API subscriptions in the store, and starts and stops their pumps.
//!
//! A change is stored first, then its pump started (or stopped), then the registry rebuilt,
//! so the next matched event already sees it. Rebuilds are coalesced: when many creates
//! arrive at once, one rebuild publishes them all.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::dispatch::Dispatcher;
use crate::event::now_ms;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError, StoredSubscription};
use crate::subscription::{Registry, SHARED_METRIC_LABEL, Source, Subscription};

/// API subscriptions that may have their own metric series; the rest share `_api`.
pub const MAX_OWN_METRICS: usize = 100;

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The name (or id) is in use.
    #[error("the name {0:?} is already in use")]
    NameTaken(String),
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
    /// The store refused the change.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The subscriptions in force and the means to change them.
pub struct Catalog {
    registry: ArcSwap<Registry>,
    state: Mutex<State>,
    /// Serialises replace and delete, so the store and memory apply them in one order.
    edits: tokio::sync::Mutex<()>,
    /// Serialises rebuilds of the registry.
    publishing: tokio::sync::Mutex<()>,
    /// `State::version` of the registry in force.
    published: AtomicU64,
    store: Arc<dyn Store>,
    dispatcher: Dispatcher,
    metrics: Metrics,
    max_subscriptions: usize,
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
    version: u64,
}

impl State {
    fn snapshot(&self) -> (Vec<Arc<Subscription>>, u64) {
        let subs = self
            .config
            .iter()
            .chain(self.api.values())
            .cloned()
            .collect();
        (subs, self.version)
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
    /// The catalog of `config` subscriptions plus `api` ones (validated by the caller); the
    /// caller has checked that their names do not collide.
    pub fn new(
        config: Vec<Arc<Subscription>>,
        api: Vec<Arc<Subscription>>,
        store: Arc<dyn Store>,
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
            version: 0,
        };
        for sub in state.config.iter().chain(api.iter()) {
            state.taken.insert(sub.id.clone(), sub.id.clone());
            state.taken.insert(sub.name.clone(), sub.id.clone());
        }
        for sub in api {
            state.own_metrics += usize::from(sub.own_metrics);
            state.api.insert(sub.id.clone(), sub);
        }
        let (subs, version) = state.snapshot();
        Catalog {
            registry: ArcSwap::from_pointee(Registry::new(subs)),
            state: Mutex::new(state),
            edits: tokio::sync::Mutex::new(()),
            publishing: tokio::sync::Mutex::new(()),
            published: AtomicU64::new(version),
            store,
            dispatcher,
            metrics,
            max_subscriptions,
        }
    }

    /// The registry in force; cheap (no lock, no copy).
    pub fn registry(&self) -> arc_swap::Guard<Arc<Registry>> {
        self.registry.load()
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
        if let Err(e) = self.store.save_subscription(stored(&sub)).await {
            let mut state = self.lock();
            state.taken.remove(&sub.name);
            state.taken.remove(&sub.id);
            state.own_metrics -= usize::from(sub.own_metrics);
            state.creating -= 1;
            return Err(e.into());
        }
        if sub.own_metrics {
            self.metrics.init_subscription(&sub.name);
        }
        self.dispatcher.add(sub.clone());
        let version = {
            let mut state = self.lock();
            state.creating -= 1;
            state.api.insert(sub.id.clone(), sub.clone());
            state.version += 1;
            state.version
        };
        self.publish(version).await;
        tracing::info!(subscription = sub.name.as_str(), id = sub.id.as_str(), url = %sub.url, "subscription created");
        Ok(sub)
    }

    /// Replaces an API subscription (same id and name); its pump restarts with the new settings.
    pub async fn replace(&self, sub: Subscription) -> Result<Arc<Subscription>, CatalogError> {
        let _edit = self.edits.lock().await;
        let sub = Arc::new(sub);
        let old = {
            let mut state = self.lock();
            let old = state
                .find(&sub.id)
                .ok_or_else(|| CatalogError::NotFound(sub.id.clone()))?;
            if old.source == Source::Config {
                return Err(CatalogError::ReadOnly(old.name.clone()));
            }
            if sub.own_metrics && !old.own_metrics {
                if state.own_metrics >= MAX_OWN_METRICS {
                    return Err(CatalogError::MetricsFull);
                }
                state.own_metrics += 1;
            }
            old
        };
        if let Err(e) = self.store.save_subscription(stored(&sub)).await {
            if sub.own_metrics && !old.own_metrics {
                self.lock().own_metrics -= 1;
            }
            return Err(e.into());
        }
        if sub.own_metrics {
            self.metrics.init_subscription(&sub.name);
        }
        self.dispatcher.add(sub.clone());
        let version = {
            let mut state = self.lock();
            if old.own_metrics && !sub.own_metrics {
                state.own_metrics -= 1;
            }
            state.api.insert(sub.id.clone(), sub.clone());
            state.version += 1;
            state.version
        };
        if old.own_metrics && !sub.own_metrics {
            self.metrics.remove_subscription(&old.name);
        }
        self.publish(version).await;
        tracing::info!(subscription = sub.name.as_str(), id = sub.id.as_str(), url = %sub.url, "subscription changed");
        Ok(sub)
    }

    /// Deletes an API subscription and cancels its undelivered deliveries; `Ok(None)` when
    /// there was none.
    pub async fn delete(&self, id_or_name: &str) -> Result<Option<u64>, CatalogError> {
        let _edit = self.edits.lock().await;
        let Some(sub) = self.find(id_or_name) else {
            return Ok(None);
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
        self.dispatcher.remove(&sub.name);
        let version = {
            let mut state = self.lock();
            state.api.remove(&sub.id);
            state.taken.remove(&sub.id);
            state.taken.remove(&sub.name);
            state.own_metrics -= usize::from(sub.own_metrics);
            state.version += 1;
            state.version
        };
        self.publish(version).await;
        // Counted under the shared label: a deleted subscription's own series go away.
        self.metrics
            .deliveries
            .with_label_values(&[SHARED_METRIC_LABEL, "cancelled"])
            .inc_by(cancelled);
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

    /// Makes the registry reflect at least `version`; one rebuild serves every change made
    /// while the previous one ran.
    async fn publish(&self, version: u64) {
        let _publishing = self.publishing.lock().await;
        if self.published.load(Ordering::Acquire) >= version {
            return;
        }
        let (subs, latest) = self.lock().snapshot();
        // Off the runtime: with thousands of subscriptions an index build takes milliseconds.
        let registry = tokio::task::spawn_blocking(move || Registry::new(subs))
            .await
            .expect("building the registry does not panic");
        self.registry.store(Arc::new(registry));
        self.published.store(latest, Ordering::Release);
    }
}

/// What the store keeps of an API subscription.
fn stored(sub: &Subscription) -> StoredSubscription {
    let (created_at_ms, updated_at_ms) = sub.changed.unwrap_or((0, 0));
    StoredSubscription {
        id: sub.id.clone(),
        name: sub.name.clone(),
        spec: sub.spec.expose().to_string(),
        created_at_ms,
        updated_at_ms,
    }
}
