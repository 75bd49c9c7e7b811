//! Ingest on `listen.app`: `POST /v1/events`. An event is parsed once, matched against the
//! registry, handed to the store, and answered `202` only once the store holds it.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use subtle::ConstantTimeEq;
use tower_http::limit::RequestBodyLimitLayer;

use crate::dispatch::Dispatcher;
use crate::event::{Event, EventError};
use crate::http_error::HttpError;
use crate::metrics::Metrics;
use crate::store::{Accepted, Store, StoreError};
use crate::subscription::{Registry, Secret};

/// What the ingest handler needs.
#[derive(Clone)]
pub struct IngestState {
    /// Subscriptions in force.
    pub registry: Arc<Registry>,
    /// Where accepted events go.
    pub store: Arc<dyn Store>,
    /// Pumps to wake after a commit.
    pub dispatcher: Dispatcher,
    /// Counters.
    pub metrics: Metrics,
    /// `limits.max_body`.
    pub max_body: usize,
}

/// Routes of the app listener.
pub fn router(state: IngestState, token: Option<Secret>) -> Router {
    let metrics = state.metrics.clone();
    let mut router = Router::new()
        .route("/v1/events", post(post_event))
        // Refuses oversize bodies by Content-Length before reading them.
        .layer(RequestBodyLimitLayer::new(state.max_body));
    if let Some(token) = token {
        let metrics = metrics.clone();
        // Before the body is read: an unauthenticated client cannot make the relay buffer.
        router = router.layer(axum::middleware::from_fn(move |req, next| {
            require_bearer(token.clone(), metrics.clone(), req, next)
        }));
    }
    router
        .with_state(state)
        // Counts the body limit's refusals like the handler's own.
        .layer(axum::middleware::from_fn(move |req, next| {
            count_layer_refusals(metrics.clone(), req, next)
        }))
}

/// Counts `413`s answered by the body-limit layer (the handler counts its own, in JSON).
async fn count_layer_refusals(metrics: Metrics, req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let from_layer = !response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && from_layer {
        metrics
            .events_rejected
            .with_label_values(&["too_large"])
            .inc();
        metrics
            .events_received
            .with_label_values(&["rejected"])
            .inc();
    }
    response
}

/// Checks `Authorization: Bearer <token>` in constant time.
async fn require_bearer(token: Secret, metrics: Metrics, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) {
        return next.run(req).await;
    }
    metrics
        .events_rejected
        .with_label_values(&["unauthorized"])
        .inc();
    metrics
        .events_received
        .with_label_values(&["rejected"])
        .inc();
    let mut response = HttpError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or wrong bearer token",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

async fn post_event(State(state): State<IngestState>, headers: HeaderMap, body: Body) -> Response {
    match accept(&state, &headers, body).await {
        Ok(response) => {
            state
                .metrics
                .events_received
                .with_label_values(&["accepted"])
                .inc();
            response
        }
        Err(error) => {
            let reason = match error.status() {
                StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                StatusCode::SERVICE_UNAVAILABLE => "busy",
                _ => "invalid",
            };
            state
                .metrics
                .events_rejected
                .with_label_values(&[reason])
                .inc();
            state
                .metrics
                .events_received
                .with_label_values(&["rejected"])
                .inc();
            error.into_response()
        }
    }
}

async fn accept(
    state: &IngestState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    if !is_json(headers) {
        return Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "content-type must be application/json",
        ));
    }
    let body = read_body(body, state.max_body).await?;
    let (event, raw) = Event::parse(&body).map_err(|e| match e {
        EventError::Malformed { .. } => {
            HttpError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string())
        }
        EventError::Invalid { field, ref message } => {
            let reason = message
                .strip_prefix(&format!("{field}: "))
                .unwrap_or(message)
                .to_string();
            HttpError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_event",
                message.clone(),
            )
            .field(field, reason)
        }
    })?;
    let matched = state.registry.matching(&event.event_type, raw);
    let names: Vec<Arc<str>> = matched.iter().map(|s| Arc::from(s.name.as_str())).collect();
    let id = event.id.clone();
    state
        .store
        .accept(vec![Accepted {
            event,
            subscriptions: names.clone(),
        }])
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "event refused: store cannot take it");
            let message = match e {
                StoreError::Busy(_) => "the relay's queue is full; retry shortly",
                StoreError::Unavailable(_) => {
                    "the relay cannot store events right now; retry shortly"
                }
            };
            HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                message,
            )
            .retry_after(1)
        })?;
    for name in &names {
        state
            .metrics
            .events_matched
            .with_label_values(&[name])
            .inc();
        state.dispatcher.wake(name);
    }
    let names: Vec<&str> = names.iter().map(|n| &**n).collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id, "subscriptions": names })),
    )
        .into_response())
}

/// `application/json` or any `+json` type, parameters allowed.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Reads the body up to `limit` bytes; more is `413`.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, HttpError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return HttpError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("request body is larger than limits.max_body ({limit} bytes)"),
                );
            }
            source = s.source();
        }
        HttpError::new(
            StatusCode::BAD_REQUEST,
            "unreadable_body",
            "could not read the request body",
        )
    })
}
