//! Wiring: binds the three listeners, builds the store, registry, dispatcher and routers,
//! serves until the shutdown future resolves, then drains within the grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::http::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{BoxError, ServiceBuilder};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::api::{self, ApiState};
use crate::catalog::{Catalog, CatalogError, Policy};
use crate::config::{Config, Listen};
use crate::deliver::destination::DestinationGuard;
use crate::deliver::http_post::DeliverError;
use crate::dispatch::Dispatcher;
use crate::inbound::error::json_errors;
use crate::inbound::listener::{self, ConnectionMetrics};
use crate::inbound::requests::RequestCounters;
use crate::ingest::{self, IngestState};
use crate::metrics::{FinalOutcome, Metrics, SeriesSet};
use crate::ops::{self, OpsState, Readiness};
use crate::reload::Reloader;
use crate::store::settings::StorageLocation;
use crate::store::{Opened, Store, StoreError, WriterMetrics};
use crate::subscription::{DeliveryOrder, SHARED_METRIC_LABEL, Subscription};

/// Why the relay could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({which}): {source}")]
    Bind {
        /// Which listener.
        which: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The outbound client could not be built.
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A subscription in the config has the name of one registered through the API.
    #[error("{0}")]
    NameConflict(String),
}

/// A relay with its listeners bound, ready to run.
pub struct Relay {
    config: Config,
    /// The file the config came from, reloaded on SIGHUP and (with `reload.watch`) on change.
    config_path: Option<std::path::PathBuf>,
    app: TcpListener,
    api: TcpListener,
    ops: TcpListener,
}

impl Relay {
    /// Binds the listeners named in the config (port 0 picks a free port).
    pub async fn bind(config: Config) -> Result<Relay, ServerError> {
        let bind = |which: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind {
                    which,
                    addr,
                    source,
                })
        };
        let app = bind("listen.app", config.listen.app).await?;
        let api = bind("listen.api", config.listen.api).await?;
        let ops = bind("listen.ops", config.listen.ops).await?;
        Ok(Relay {
            config,
            config_path: None,
            app,
            api,
            ops,
        })
    }

    /// Reloads the config from `path` on SIGHUP and, unless `reload.watch` is off, whenever
    /// the file changes.
    pub fn reload_from(mut self, path: impl Into<std::path::PathBuf>) -> Relay {
        self.config_path = Some(path.into());
        self
    }

    /// The addresses actually bound.
    pub fn local_addrs(&self) -> Listen {
        let addr = |l: &TcpListener| l.local_addr().expect("bound listener has an address");
        Listen {
            app: addr(&self.app),
            api: addr(&self.api),
            ops: addr(&self.ops),
        }
    }

    /// Serves until `shutdown` resolves; then stops accepting, lets attempts in flight finish
    /// within `shutdown.grace`, and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let addrs = self.local_addrs();
        let config = self.config;
        let metrics = Metrics::new();
        // The file lock is held until `run` returns, not by the store: tasks finishing after
        // shutdown may hold the store a little longer, and a restart in the same process
        // must not fail.
        let Opened { store, lock: _lock } = crate::store::open(
            &config.storage,
            WriterMetrics {
                commit_duration: metrics.store_commit_duration.clone(),
                batch_size: metrics.store_batch_size.clone(),
            },
        )
        .await?;
        let guard = Arc::new(DestinationGuard::new(
            config.api.allowed_destinations.clone(),
            &addrs.addrs(),
        ));
        let config_subs: Vec<Arc<Subscription>> =
            config.subscriptions.iter().cloned().map(Arc::new).collect();
        let keys = &config.storage.encryption_keys;
        if keys.is_empty() && !matches!(config.storage.location, StorageLocation::Memory) {
            tracing::warn!(
                "API subscription secrets are stored unencrypted; set storage.encryption_keys"
            );
        }
        // Read before the subscriptions, so a change made meanwhile is found by the resync.
        let revision = store.catalog_revision().await?;
        let loaded = crate::catalog::load(store.as_ref(), &config_subs, &guard, keys)
            .await
            .map_err(|e| match e {
                CatalogError::Store(e) => ServerError::Store(e),
                other => ServerError::NameConflict(other.to_string()),
            })?;
        let api_subs = loaded.subscriptions.clone();
        metrics.init_subscription(SHARED_METRIC_LABEL, SeriesSet::SHARED);
        for sub in config_subs.iter().chain(&api_subs) {
            if sub.own_metrics {
                metrics.init_own_series(sub);
            }
        }
        let all: Vec<Arc<Subscription>> = config_subs.iter().chain(&api_subs).cloned().collect();
        let known = all.iter().map(|s| s.name.clone()).collect();
        // Before orphaning: relays starting together leave each other's names alone.
        store
            .declare(config_subs.iter().map(|s| s.name.clone()).collect())
            .await?;
        let (orphaned, resumed) = store.sync_subscriptions(known).await?;
        if orphaned + resumed > 0 {
            tracing::info!(
                orphaned,
                resumed,
                "deliveries of removed subscriptions are kept as orphaned"
            );
        }

        // Deliveries still waiting in key order for a subscription that is no longer ordered.
        let unordered = all
            .iter()
            .filter(|s| *s.ordering() == DeliveryOrder::None)
            .map(|s| s.name.clone())
            .collect();
        store.clear_ordering(unordered).await?;

        let stop = CancellationToken::new();
        let attempts = TaskTracker::new();
        let pauses = store.pause_states().await?;
        let dispatcher = Dispatcher::start(
            &all,
            pauses,
            store.clone(),
            &metrics,
            &config.delivery,
            guard.clone(),
            stop.clone(),
            attempts.clone(),
        )?;
        let catalog = Arc::new(Catalog::new(
            config_subs,
            loaded,
            store.clone(),
            Policy {
                keys: keys.clone(),
                guard: guard.clone(),
            },
            dispatcher.clone(),
            metrics.clone(),
            config.api.max_subscriptions,
        ));
        let readiness = Readiness::default();
        metrics
            .config_last_reload_success
            .set(crate::time::now_ms() as f64 / 1000.0);
        let reload = match self.config_path {
            Some(path) => Reloader::new(path, config.clone(), catalog.clone(), metrics.clone())
                .spawn(stop.clone()),
            None => "off",
        };

        if let (Some(revision), StorageLocation::Postgres(pg)) =
            (revision, &config.storage.location)
        {
            tokio::spawn(crate::catalog::keep_in_sync(
                catalog.clone(),
                revision,
                pg.sync_interval,
                stop.clone(),
            ));
        }

        tokio::spawn(housekeeping(
            store.clone(),
            metrics.clone(),
            catalog.clone(),
            stop.clone(),
        ));

        let app = ingest::router(
            IngestState {
                catalog: catalog.clone(),
                store: store.clone(),
                dispatcher: dispatcher.clone(),
                metrics: metrics.clone(),
                limits: config.limits,
            },
            config.ingest.token.clone(),
        );
        // Each router sets its own body limits (ingest counts its refusals).
        let api_state = ApiState {
            store: store.clone(),
            catalog: catalog.clone(),
            dispatcher,
            guard,
            metrics: metrics.clone(),
            token: config.api.token.clone(),
            release_min_interval: config.release_min_interval,
            max_body: config.limits.max_body,
        };
        // Long polls may wait up to MAX_WAIT: their routes get that much more time.
        let slots = || Arc::new(Semaphore::new(config.limits.max_concurrent_requests));
        // Their own budget: waiting long polls must not lock the management API out.
        let pulls = harden(
            api::notifications::router(api_state.clone())
                .layer(RequestBodyLimitLayer::new(config.limits.max_body)),
            slots(),
            config.limits.request_timeout + api::notifications::MAX_WAIT,
        );
        let api = api::router(api_state, config.api.token.clone())
            .layer(RequestBodyLimitLayer::new(config.limits.max_body));
        let ops = ops::router(OpsState {
            metrics: metrics.clone(),
            store: store.clone(),
            catalog: catalog.clone(),
            readiness: readiness.clone(),
        })
        .layer(RequestBodyLimitLayer::new(config.limits.max_body));

        let mut servers = Vec::new();
        let timeout = config.limits.request_timeout;
        let api = harden(api, slots(), timeout).merge(pulls);
        let app = harden(app, slots(), timeout);
        let ops = harden(ops, slots(), timeout);
        let listeners = [
            ("app", self.app, app),
            ("api", self.api, api),
            ("ops", self.ops, ops),
        ];
        for (name, listener, router) in listeners {
            // Outermost: every answer is counted once, as the client got it.
            let router =
                router.layer(RequestCounters::new(metrics.http_requests.clone(), name).layer());
            let counted = ConnectionMetrics {
                open: metrics.connections.with_label_values(&[name]),
                refused: metrics.connections_refused.with_label_values(&[name]),
            };
            servers.push(tokio::spawn(listener::serve(
                name,
                listener,
                router,
                config.limits,
                counted,
                stop.clone(),
            )));
        }

        readiness.set(true);
        tracing::info!(
            app = %addrs.app,
            api = %addrs.api,
            ops = %addrs.ops,
            store = %config.storage.location.describe(),
            subscriptions = catalog.matcher().len(),
            reload,
            "hookrelay listening"
        );

        shutdown.await;
        tracing::info!(grace = ?config.shutdown_grace, "shutting down: no new events; finishing attempts in flight");
        readiness.set(false);
        stop.cancel();
        attempts.close();
        if tokio::time::timeout(config.shutdown_grace, attempts.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                abandoned = attempts.len(),
                "grace period over; attempts still in flight are abandoned and stay queued"
            );
        }
        for server in servers {
            if tokio::time::timeout(config.limits.request_timeout, server)
                .await
                .is_err()
            {
                tracing::warn!("a listener did not drain in time");
            }
        }
        // Claims still held (never attempted, or attempts abandoned) go to the other relays
        // sharing the store now rather than when their leases run out.
        match store.leave().await {
            Ok(0) => {}
            Ok(returned) => tracing::info!(
                returned,
                "claims handed back for the other relays sharing the store"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand claims back; they are taken over when their leases run out")
            }
        }
        tracing::info!("hookrelay stopped");
        Ok(())
    }
}

/// Expires overdue deliveries and prunes old rows, off the hot path, until stopped.
async fn housekeeping(
    store: Arc<dyn Store>,
    metrics: Metrics,
    catalog: Arc<Catalog>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        match store.housekeeping(crate::time::now_ms()).await {
            Ok(report) => {
                for (sub, n) in &report.expired {
                    let label = catalog.metric_label_of(sub);
                    metrics.count_final(&label, FinalOutcome::Expired, *n);
                    tracing::warn!(
                        subscription = sub.as_str(),
                        expired = n,
                        "deliveries expired undelivered (storage.ttl)"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "store housekeeping failed"),
        }
    }
}

/// How often expiry and pruning run.
const HOUSEKEEPING_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The inbound middleware every listener gets (body limits and the fallback are per router,
/// so a router's auth covers its unknown paths too). Layers listed first see the request first.
/// `slots` is the listener's concurrency budget: one semaphore shared by every route, because
/// `Router::layer` builds a separate service per route.
fn harden(router: Router, slots: Arc<Semaphore>, timeout: std::time::Duration) -> Router {
    router
        .layer(
            ServiceBuilder::new()
                // Spans and timings for every request, including refused ones.
                .layer(TraceLayer::new_for_http())
                // Turns load shedding into a 503 answer.
                .layer(HandleErrorLayer::new(|_: BoxError| async {
                    StatusCode::SERVICE_UNAVAILABLE
                }))
                // Refuse at once when saturated instead of queueing without bound.
                .load_shed()
                .layer(GlobalConcurrencyLimitLayer::with_semaphore(slots))
                // Bounds every request, so a stuck client or store cannot hold a slot forever.
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    timeout,
                )),
        )
        // Outermost, so errors made by any layer above leave in the JSON error shape.
        .layer(axum::middleware::map_response(json_errors))
}
