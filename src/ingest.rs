//! Ingest on `listen.app`: `POST /v1/events`. An event is parsed once, matched against the
//! registry, handed to the store, and answered `202` only once the store holds it.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use serde_json::value::RawValue;
use tower_http::limit::RequestBodyLimitLayer;

use crate::catalog::Catalog;
use crate::config::Limits;
use crate::dispatch::{Dispatcher, Route};
use crate::event::{Event, EventError};
use crate::http_error::{HttpError, no_such_endpoint, unauthorized};
use crate::metrics::Metrics;
use crate::store::{Accepted, Admission, Delivery, Store, StoreError, rfc3339};
use crate::subscription::Secret;

/// What the ingest handler needs.
#[derive(Clone)]
pub struct IngestState {
    /// Subscriptions in force.
    pub catalog: Arc<Catalog>,
    /// Where accepted events go.
    pub store: Arc<dyn Store>,
    /// Pumps to wake after a commit.
    pub dispatcher: Dispatcher,
    /// Counters.
    pub metrics: Metrics,
    /// Request limits.
    pub limits: Limits,
}

/// Routes of the app listener.
pub fn router(state: IngestState, token: Option<Secret>) -> Router {
    let metrics = state.metrics.clone();
    let mut router = Router::new()
        // Body limits refuse oversize bodies by Content-Length before reading them.
        .route(
            "/v1/events",
            post(post_event).layer(RequestBodyLimitLayer::new(state.limits.max_body)),
        )
        .route(
            "/v1/events/batch",
            post(post_batch).layer(RequestBodyLimitLayer::new(state.limits.max_batch_body)),
        )
        .route("/v1/events/{id}", get(event_status))
        .fallback(no_such_endpoint);
    if let Some(token) = token {
        let metrics = metrics.clone();
        // Before the body is read: an unauthenticated client cannot make the relay buffer.
        router = router.layer(axum::middleware::from_fn(move |req, next| {
            require_bearer(token.clone(), metrics.clone(), req, next)
        }));
    }
    router
        .with_state(Arc::new(state))
        // Counts the body limits' refusals like the handlers' own.
        .layer(axum::middleware::from_fn(move |req, next| {
            count_layer_refusals(metrics.clone(), req, next)
        }))
}

/// Counts `413`s answered by the body-limit layer (the handlers count their own, in JSON).
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

/// Lets requests with the ingest token through; counts and refuses the others.
async fn require_bearer(token: Secret, metrics: Metrics, req: Request, next: Next) -> Response {
    if token.is_bearer_of(req.headers()) {
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
    unauthorized()
}

async fn post_event(
    State(state): State<Arc<IngestState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        require_json(&headers)?;
        let body = read_body(body, state.limits.max_body, "limits.max_body").await?;
        let (event, raw) = Event::parse(&body).map_err(|e| event_error(e, ""))?;
        let matched = state.catalog.registry().matching(&event.event_type, raw);
        let id = event.id.clone();
        let admissions = store(&state, vec![Accepted::new(event, matched.clone())]).await?;
        Ok::<_, HttpError>(match admissions.into_iter().next() {
            Some(Admission::Duplicate { subscriptions }) => (
                StatusCode::OK,
                Json(json!({ "id": id, "subscriptions": subscriptions, "duplicate": true })),
            ),
            _ => (
                StatusCode::ACCEPTED,
                Json(json!({ "id": id, "subscriptions": names(&matched) })),
            ),
        })
    }
    .await;
    respond(&state.metrics, result)
}

async fn post_batch(
    State(state): State<Arc<IngestState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        require_json(&headers)?;
        let body = read_body(body, state.limits.max_batch_body, "limits.max_batch_body").await?;
        let elements: Vec<&RawValue> =
            serde_json::from_slice(&body).map_err(|e| match e.classify() {
                serde_json::error::Category::Data => HttpError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_batch",
                    "the body must be a JSON array of event envelopes",
                ),
                _ => malformed(&e),
            })?;
        if elements.len() > state.limits.max_batch {
            return Err(HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "{} events is more than limits.max_batch ({})",
                    elements.len(),
                    state.limits.max_batch
                ),
            ));
        }
        let mut batch = Vec::with_capacity(elements.len());
        for (i, raw) in elements.iter().enumerate() {
            // Each element is a slice of the shared body buffer, parsed like a single event.
            let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
            let element = body.slice(start..start + raw.get().len());
            let (event, data) =
                Event::parse(&element).map_err(|e| event_error(e, &format!("[{i}]")))?;
            let subscriptions = state.catalog.registry().matching(&event.event_type, data);
            batch.push(Accepted::new(event, subscriptions));
        }
        let summary: Vec<(String, Vec<Arc<str>>)> = batch
            .iter()
            .map(|a| (a.event.id.clone(), a.subscriptions.clone()))
            .collect();
        let admissions = store(&state, batch).await?;
        let results: Vec<serde_json::Value> = summary
            .iter()
            .zip(admissions)
            .map(|((id, matched), admission)| match admission {
                Admission::Duplicate { subscriptions } => {
                    json!({ "id": id, "subscriptions": subscriptions, "duplicate": true })
                }
                Admission::Stored(_) => json!({ "id": id, "subscriptions": names(matched) }),
            })
            .collect();
        Ok((StatusCode::ACCEPTED, Json(json!({ "results": results }))))
    }
    .await;
    respond(&state.metrics, result)
}

/// Counts the request's outcome and turns it into a response.
fn respond(
    metrics: &Metrics,
    result: Result<(StatusCode, Json<serde_json::Value>), HttpError>,
) -> Response {
    match result {
        // Accepted events are counted where they are stored, one by one (batches too).
        Ok((status, body)) => (status, body).into_response(),
        Err(error) => {
            let reason = match error.status() {
                StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                StatusCode::SERVICE_UNAVAILABLE => "busy",
                _ => "invalid",
            };
            metrics.events_rejected.with_label_values(&[reason]).inc();
            metrics
                .events_received
                .with_label_values(&["rejected"])
                .inc();
            error.into_response()
        }
    }
}

fn names(subs: &[Arc<str>]) -> Vec<&str> {
    subs.iter().map(|n| &**n).collect()
}

/// Hands events to the store; `202` is only answered after this returns.
async fn store(
    state: &Arc<IngestState>,
    batch: Vec<Accepted>,
) -> Result<Vec<Admission>, HttpError> {
    let state = state.clone();
    // A task of its own: once the store has the job, the hand-off below must happen even if
    // the client goes away or the request times out, or deliveries stored as claimed would
    // wait for a restart.
    tokio::spawn(async move { commit_and_hand_off(&state, batch).await })
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "ingest task failed");
            Err(HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the relay cannot store events right now; retry shortly",
            )
            .retry_after(1))
        })
}

/// Stores the batch; deliveries whose pump has room are stored as claimed and handed to it
/// in memory after the commit, the others are left for the feeder.
async fn commit_and_hand_off(
    state: &IngestState,
    mut batch: Vec<Accepted>,
) -> Result<Vec<Admission>, HttpError> {
    let mut routes: Vec<Vec<Option<Route>>> = Vec::with_capacity(batch.len());
    let mut events = Vec::with_capacity(batch.len());
    for a in &mut batch {
        let found: Vec<Option<Route>> = a
            .subscriptions
            .iter()
            .map(|s| state.dispatcher.route(s))
            .collect();
        a.handed_off = found
            .iter()
            .map(|r| r.as_ref().is_some_and(|r| r.slot.is_some()))
            .collect();
        a.ttl_ms = found
            .iter()
            .map(|r| r.as_ref().and_then(|r| r.ttl_ms))
            .collect();
        routes.push(found);
        events.push((
            Arc::<str>::from(a.event.id.as_str()),
            Arc::<str>::from(a.event.event_type.as_str()),
            a.event.data.clone(),
            a.event.received_at_ms,
            a.subscriptions.clone(),
        ));
    }
    let admissions = state.store.accept(batch).await.map_err(|e| {
        tracing::warn!(error = %e, "event refused: the store cannot take it");
        let message = match e {
            StoreError::Busy(_) => "the relay's queue is full; retry shortly",
            _ => "the relay cannot store events right now; retry shortly",
        };
        HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            message,
        )
        .retry_after(1)
    })?;
    for (((event_id, event_type, data, received_at_ms, subs), admission), found) in
        events.into_iter().zip(&admissions).zip(routes)
    {
        let Admission::Stored(ids) = admission else {
            state
                .metrics
                .events_received
                .with_label_values(&["duplicate"])
                .inc();
            continue;
        };
        state
            .metrics
            .events_received
            .with_label_values(&["accepted"])
            .inc();
        for ((subscription, id), route) in subs.into_iter().zip(ids).zip(found) {
            if let Some(route) = route {
                route.deliver(|| Delivery {
                    id: *id,
                    subscription,
                    event_id: event_id.clone(),
                    event_type: event_type.clone(),
                    data: data.clone(),
                    attempts: 0,
                    received_at_ms,
                });
            }
        }
    }
    Ok(admissions)
}

/// `415` unless the body is declared JSON.
pub fn require_json(headers: &HeaderMap) -> Result<(), HttpError> {
    if is_json(headers) {
        Ok(())
    } else {
        Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "content-type must be application/json",
        ))
    }
}

/// `400` for a body that is not JSON.
pub fn malformed(e: &serde_json::Error) -> HttpError {
    HttpError::new(
        StatusCode::BAD_REQUEST,
        "malformed_json",
        format!(
            "malformed JSON at line {}, column {}: {}",
            e.line(),
            e.column(),
            {
                let m = e.to_string();
                m.rfind(" at line ")
                    .map_or(m.clone(), |i| m[..i].to_string())
            }
        ),
    )
}

/// Maps an envelope error; `prefix` names the element of a batch (`[3]`).
fn event_error(e: EventError, prefix: &str) -> HttpError {
    match e {
        EventError::Malformed { .. } => {
            HttpError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string())
        }
        EventError::Invalid { field, message } => {
            let reason = message
                .strip_prefix(&format!("{field}: "))
                .unwrap_or(&message)
                .to_string();
            let (field, message) = if prefix.is_empty() {
                (field.to_string(), message)
            } else {
                (
                    format!("{prefix}.{field}"),
                    format!("event {prefix}: {message}"),
                )
            };
            HttpError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_event", message)
                .field(field, reason)
        }
    }
}

/// `GET /v1/events/{id}`: the event and where each of its deliveries stands.
async fn event_status(State(state): State<Arc<IngestState>>, Path(id): Path<String>) -> Response {
    match state.store.event_status(&id).await {
        Ok(Some(status)) => Json(json!({
            "id": status.id,
            "type": status.event_type,
            "received_at": rfc3339(status.received_at_ms),
            "deliveries": status.deliveries.iter().map(|d| {
                let mut v = d.to_json();
                if let Some(o) = v.as_object_mut() {
                    // Already at the top level.
                    o.remove("event_id");
                    o.remove("type");
                    o.remove("received_at");
                }
                v
            }).collect::<Vec<_>>(),
        }))
        .into_response(),
        Ok(None) => HttpError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no event {id:?} (unknown, or pruned after storage.retention)"),
        )
        .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read event status");
            HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the store cannot answer right now; retry shortly",
            )
            .retry_after(1)
            .into_response()
        }
    }
}

/// `application/json` or any `+json` type, parameters allowed.
pub fn is_json(headers: &HeaderMap) -> bool {
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

/// Reads the body up to `limit` bytes (the `setting` named in the error); more is `413`.
pub async fn read_body(body: Body, limit: usize, setting: &str) -> Result<Bytes, HttpError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return HttpError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("request body is larger than {setting} ({limit} bytes)"),
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
