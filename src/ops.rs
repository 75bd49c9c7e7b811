//! The ops listener: `/healthz` (alive), `/readyz` (serving), `/metrics` (Prometheus).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::catalog::Catalog;
use crate::inbound::error::{ErrorBody, HttpError, no_such_endpoint};
use crate::metrics::Metrics;
use crate::store::Store;

/// Readiness latch: set once config is loaded, the store open and listeners up; cleared when
/// shutdown starts so the kubelet stops routing before the relay stops.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the relay ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// True when ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the ops endpoints read.
#[derive(Clone)]
pub struct OpsState {
    /// Metrics to render.
    pub metrics: Metrics,
    /// Store, for queue gauges at scrape time.
    pub store: Arc<dyn Store>,
    /// Subscriptions whose gauges are refreshed.
    pub catalog: Arc<Catalog>,
    /// The readiness latch.
    pub readiness: Readiness,
}

/// Routes of the ops listener.
pub fn router(state: OpsState) -> Router {
    Router::from(routes().fallback(no_such_endpoint)).with_state(state)
}

/// The ops routes, each with its OpenAPI description (a route cannot be added without one).
fn routes() -> OpenApiRouter<OpsState> {
    OpenApiRouter::default()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// The OpenAPI description of the ops listener.
pub(crate) fn openapi() -> OpenApi {
    routes().into_openapi()
}

/// A probe's answer.
#[derive(Serialize, ToSchema)]
struct Probe {
    /// `ok` (`/healthz`) or `ready` (`/readyz`).
    #[schema(example = "ok")]
    status: &'static str,
    /// `/readyz` only, while the store refuses new events: why (the disk is full, or the
    /// store is above `storage.max_size`). The relay stays ready meanwhile: it still
    /// answers, delivers what it holds and frees space, and the app gets `503` with
    /// `Retry-After` from ingest.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "the disk is full")]
    store: Option<&'static str>,
}

/// Liveness: the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    operation_id = "healthz",
    responses((status = 200, description = "Alive.", body = Probe, example = json!({"status": "ok"}))),
)]
async fn healthz() -> Json<Probe> {
    Json(Probe {
        status: "ok",
        store: None,
    })
}

/// Readiness: the relay takes traffic.
///
/// Ready once the config is loaded, the store open and the listeners up; not ready again
/// from the start of shutdown, or when the store has stopped.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    operation_id = "readyz",
    responses(
        (status = 200, description = "Ready. While the store refuses new events (full disk, size limit), still ready, with the reason in `store`.", body = Probe, example = json!({"status": "ready"})),
        (status = 503, description = "Starting, shutting down, or the store has stopped (`not_ready`).", body = ErrorBody),
    ),
)]
async fn readyz(State(state): State<OpsState>) -> Response {
    if !state.readiness.get() {
        HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "starting or shutting down",
        )
        .into_response()
    } else if !state.store.healthy() {
        HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the store has stopped",
        )
        .into_response()
    } else {
        Json(Probe {
            status: "ready",
            store: state.store.refusing(),
        })
        .into_response()
    }
}

/// Prometheus metrics.
///
/// Queue gauges are read from the store at scrape time.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    operation_id = "metrics",
    responses(
        (status = 200, description = "The Prometheus text exposition format.", body = String,
            content_type = "text/plain; version=0.0.4; charset=utf-8"),
    ),
)]
async fn metrics(State(state): State<OpsState>) -> Response {
    state
        .metrics
        .store_writable
        .set(i64::from(state.store.refusing().is_none()));
    state.metrics.store_up.set(i64::from(state.store.up()));
    state.metrics.replicas.set(state.store.replicas() as i64);
    // Queue gauges are read from the store at scrape time, so they are never stale.
    match state.store.stats().await {
        Ok(stats) => {
            let registry = state.catalog.matcher();
            let subs = registry.all().map(|s| &**s);
            state.metrics.set_queue_stats(subs, &stats);
        }
        Err(e) => tracing::warn!(error = %e, "cannot read queue figures for /metrics"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
