//! The management API on `listen.api`: subscriptions (in [`subscriptions`]), release of dead
//! letters, and dead letters one by one. Guarded by `api.token` when set.

pub mod notifications;
mod subscriptions;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::catalog::{Catalog, CatalogError};
use crate::destination::DestinationGuard;
use crate::dispatch::Dispatcher;
use crate::event::now_ms;
use crate::http_error::{HttpError, no_such_endpoint, unauthorized};
use crate::ingest::{is_json, read_body};
use crate::metrics::Metrics;
use crate::store::{DeliveryId, DeliveryQuery, DeliveryState, Release, Store, StoreError};
use crate::subscription::Secret;

/// Largest page of the delivery list.
const MAX_PAGE: usize = 1000;

/// What the API handlers need.
#[derive(Clone)]
pub struct ApiState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Subscriptions in force, and the means to change them.
    pub catalog: Arc<Catalog>,
    /// Pumps to wake after a release.
    pub dispatcher: Dispatcher,
    /// Where API subscriptions may deliver.
    pub guard: Arc<DestinationGuard>,
    /// Counters (pull delivery counts its own).
    pub metrics: Metrics,
    /// `api.token`.
    pub token: Option<Secret>,
    /// `release.min_interval`.
    pub release_min_interval: Duration,
    /// Largest request body.
    pub max_body: usize,
}

/// The OpenAPI description of this listener.
const OPENAPI: &str = include_str!("api/openapi.json");

/// Routes of the API listener; with a `token`, every request but the OpenAPI document needs it.
pub fn router(state: ApiState, token: Option<Secret>) -> Router {
    let mut router = Router::new()
        .route(
            "/v1/subscriptions",
            post(subscriptions::create).get(subscriptions::list),
        )
        .route(
            "/v1/subscriptions/{id}",
            get(subscriptions::show)
                .put(subscriptions::replace)
                .patch(subscriptions::patch)
                .delete(subscriptions::remove),
        )
        .route("/v1/deliveries/release", post(release))
        .route("/v1/deliveries", get(list))
        .route("/v1/deliveries/{id}/retry", post(retry))
        .route("/v1/deliveries/{id}", delete(remove))
        .fallback(no_such_endpoint)
        .with_state(state);
    if let Some(token) = token {
        // Before the body is read: an unauthenticated client cannot make the relay buffer.
        router = router.layer(axum::middleware::from_fn(move |req, next| {
            require_bearer(token.clone(), req, next)
        }));
    }
    router.route("/v1/openapi.json", get(openapi))
}

/// `GET /v1/openapi.json`, open to all: it holds no data.
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn require_bearer(token: Secret, req: Request, next: Next) -> Response {
    if token.is_bearer_of(req.headers()) {
        return next.run(req).await;
    }
    tracing::info!(method = %req.method(), path = req.uri().path(), "API request refused: missing or wrong bearer token");
    unauthorized()
}

impl From<CatalogError> for HttpError {
    fn from(e: CatalogError) -> HttpError {
        match e {
            CatalogError::NotFound(key) => unknown_subscription(&key),
            CatalogError::Store(e) => unavailable(e),
            CatalogError::NameTaken(_)
            | CatalogError::StoredNameTaken(_)
            | CatalogError::Full(_)
            | CatalogError::MetricsFull
            | CatalogError::ReadOnly(_)
            | CatalogError::ApiNameClash { .. } => {
                HttpError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
        }
    }
}

fn unavailable(e: StoreError) -> HttpError {
    tracing::warn!(error = %e, "store request failed");
    HttpError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the store cannot answer right now; retry shortly",
    )
    .retry_after(1)
}

/// `404` for a subscription id or name that names none.
fn unknown_subscription(name: &str) -> HttpError {
    HttpError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no subscription {name:?}"),
    )
}

/// `POST /v1/deliveries/release`, optional body `{"subscription": "name"}`.
async fn release(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let body = read_body(body, state.max_body, "limits.max_body").await?;
    let scope = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        if !is_json(&headers) {
            return Err(HttpError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "content-type must be application/json",
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("malformed JSON: {e}"),
            )
        })?;
        let obj = v
            .as_object()
            .filter(|o| o.keys().all(|k| k == "subscription"));
        match obj.map(|o| o.get("subscription")) {
            Some(None) | Some(Some(serde_json::Value::Null)) => None,
            Some(Some(serde_json::Value::String(s))) => Some(s.clone()),
            _ => {
                return Err(HttpError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_release",
                    "the body may only be {\"subscription\": \"name\"}",
                )
                .field("subscription", "must be a subscription name"));
            }
        }
    };
    // The scope may name a subscription by id or by name; the store knows names.
    let scope = match scope {
        None => None,
        Some(key) => match state.catalog.find(&key) {
            Some(sub) => Some(sub.name.clone()),
            None => return Err(unknown_subscription(&key)),
        },
    };
    let known = state.catalog.registry().names();
    let now = now_ms();
    let min = state.release_min_interval.as_millis() as i64;
    match state
        .store
        .release(scope.clone(), known.clone(), now, min)
        .await
        .map_err(unavailable)?
    {
        Release::Released(n) => {
            tracing::info!(
                scope = scope.as_deref().unwrap_or("*"),
                released = n,
                "dead letters released"
            );
            for name in &known {
                state.dispatcher.wake(name);
            }
            Ok((StatusCode::ACCEPTED, Json(json!({ "released": n }))).into_response())
        }
        Release::TooSoon { next_allowed_ms } => {
            let wait = ((next_allowed_ms - now).max(0) as u64)
                .div_ceil(1000)
                .max(1);
            Err(HttpError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_soon",
                format!(
                    "this scope was released less than release.min_interval ago; retry in {wait}s"
                ),
            )
            .retry_after(wait))
        }
    }
}

/// `GET /v1/deliveries?state=failed&subscription=NAME&limit=N&after=ID`, oldest first.
async fn list(
    State(state): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, HttpError> {
    let mut error = HttpError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_query",
        "invalid query parameters",
    );
    let mut bad = false;
    let known_params = ["state", "subscription", "limit", "after"];
    for key in q.keys().filter(|k| !known_params.contains(&k.as_str())) {
        error = error.field(key.clone(), "unknown parameter");
        bad = true;
    }
    let st = match q.get("state").map(String::as_str) {
        None => DeliveryState::Failed,
        Some(s) => DeliveryState::parse(s).unwrap_or_else(|| {
            error = error.clone().field("state", "must be one of pending, in_flight, delivered, failed, expired, orphaned, cancelled");
            bad = true;
            DeliveryState::Failed
        }),
    };
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => {
            error = error
                .clone()
                .field("limit", format!("must be 1..={MAX_PAGE}"));
            bad = true;
            100
        }
    };
    let after = match q.get("after").map(|a| a.parse::<DeliveryId>()) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(_)) => {
            error = error.clone().field("after", "must be a delivery id");
            bad = true;
            None
        }
    };
    if bad {
        return Err(error);
    }
    let page = state
        .store
        .deliveries(DeliveryQuery {
            state: st,
            // By id or name; an unknown one may be a deleted subscription's name.
            subscription: q.get("subscription").map(|key| {
                state
                    .catalog
                    .find(key)
                    .map_or_else(|| key.clone(), |s| s.name.clone())
            }),
            after,
            limit,
        })
        .await
        .map_err(unavailable)?;
    let next_after = (page.len() == limit)
        .then(|| page.last().map(|d| d.id))
        .flatten();
    Ok(Json(json!({
        "deliveries": page.iter().map(|d| d.to_json()).collect::<Vec<_>>(),
        "next_after": next_after,
    }))
    .into_response())
}

fn parse_id(id: &str) -> Result<DeliveryId, HttpError> {
    id.parse().map_err(|_| {
        HttpError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no delivery {id:?}"),
        )
    })
}

/// `POST /v1/deliveries/{id}/retry`: one dead letter back to pending.
async fn retry(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let n = parse_id(&id)?;
    let known = state.catalog.registry().names();
    let before = state
        .store
        .retry_delivery(n, now_ms(), known.clone())
        .await
        .map_err(unavailable)?;
    match before {
        None => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no delivery {n}"),
        )),
        Some((DeliveryState::Failed | DeliveryState::Expired, sub)) if !known.contains(&sub) => {
            Err(HttpError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("delivery {n} belongs to {sub:?}, which is no longer configured"),
            ))
        }
        Some((DeliveryState::Failed | DeliveryState::Expired, sub)) => {
            state.dispatcher.wake(&sub);
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "id": n, "state": "pending" })),
            )
                .into_response())
        }
        Some((other, _)) => Err(HttpError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "delivery {n} is {}; only failed or expired deliveries can be retried",
                other.as_str()
            ),
        )),
    }
}

/// `DELETE /v1/deliveries/{id}`: drops a delivery that is not pending or in flight.
async fn remove(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let n = parse_id(&id)?;
    match state.store.delete_delivery(n).await.map_err(unavailable)? {
        None => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no delivery {n}"),
        )),
        Some(DeliveryState::Pending | DeliveryState::InFlight) => Err(HttpError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("delivery {n} is still being delivered"),
        )),
        Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}
