//! Ingest on `listen.app`: `POST /v1/events`. An event is parsed once, matched against the
//! registry, handed to the store, and answered `202` only once the store holds it.

mod schema;
pub mod settings;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::value::RawValue;
use tower_http::limit::RequestBodyLimitLayer;
use utoipa::openapi::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::catalog::Catalog;
use crate::deliver::via::{self, Via, ViaError};
use crate::dispatch::{Dispatcher, Lane, Route};
use crate::event::{self, Event, EventError, RawMeta};
use crate::inbound::auth::require_bearer;
use crate::inbound::body::{
    BadBody, BodyTooLarge, NotJson, is_json, malformed, read_body, require_json,
};
use crate::inbound::error::{ErrorBody, HttpError, no_such_endpoint};
use crate::inbound::limits::Limits;
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::store::{Accepted, Admission, Delivery, DeliveryId, NewDelivery, Store, StoreError};
use crate::subscription::DeliveryOrder;
use crate::time::rfc3339;
use schema::{
    BatchReceipt, Envelope, EventView, LoopDetected, Receipt, StoreRefused, Unauthorized,
};

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
    let mut router: Router<Arc<IngestState>> =
        routes(state.limits.max_body, state.limits.max_batch_body)
            .fallback(no_such_endpoint)
            .into();
    if let Some(token) = token {
        let metrics = metrics.clone();
        // Before the body is read: an unauthenticated client cannot make the relay buffer.
        router = router.layer(require_bearer(token, move |_: &Request| {
            count_refusal(&metrics, "unauthorized")
        }));
    }
    router
        .with_state(Arc::new(state))
        // One middleware around the token check and the body limits, so their refusals
        // are timed and counted too.
        .layer(axum::middleware::from_fn(move |req, next| {
            observe(metrics.clone(), req, next)
        }))
}

/// Observes `hookrelay_ingest_duration_seconds` for the two ingest posts, and counts the
/// `413`s answered by the body-limit layer (the handlers count their own, in JSON).
async fn observe(metrics: Metrics, req: Request, next: Next) -> Response {
    let posted = req.method() == Method::POST
        && matches!(req.uri().path(), "/v1/events" | "/v1/events/batch");
    // Observed when dropped: a request cut off by limits.request_timeout (or left by its
    // client) counts with the time it had, not as nothing.
    let _timer = posted.then(|| metrics.ingest_duration.start_timer());
    let response = next.run(req).await;
    let from_layer = !response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && from_layer {
        count_refusal(&metrics, "too_large");
    }
    response
}

/// The app listener's routes, each with its OpenAPI description (a route cannot be added
/// without one); state and auth come in [`router`].
fn routes(max_body: usize, max_batch_body: usize) -> OpenApiRouter<Arc<IngestState>> {
    OpenApiRouter::default()
        // Body limits refuse oversize bodies by Content-Length before reading them.
        .routes(routes!(post_event).layer(RequestBodyLimitLayer::new(max_body)))
        .routes(routes!(post_batch).layer(RequestBodyLimitLayer::new(max_batch_body)))
        .routes(routes!(event_status))
}

/// The OpenAPI description of the app listener (body limits do not show in it).
pub(crate) fn openapi() -> OpenApi {
    let mut doc = routes(0, 0).into_openapi();
    // A raw event may have an empty body (its type and attributes are in headers); the
    // annotation cannot say so, since the envelope's schema is not optional.
    if let Some(utoipa::openapi::RefOr::T(body)) = doc
        .paths
        .paths
        .get_mut("/v1/events")
        .and_then(|item| item.post.as_mut())
        .and_then(|op| op.request_body.as_mut())
    {
        body.required = Some(utoipa::openapi::Required::False);
    }
    doc
}

/// Counts a refused request, once: `hookrelay_events_rejected_total{reason}` (the received
/// events count only events that got in, accepted or duplicate).
fn count_refusal(metrics: &Metrics, reason: &str) {
    metrics.events_rejected.with_label_values(&[reason]).inc();
}

/// Post one event.
///
/// Answered `202` only once the store holds the event and its deliveries. An event that
/// matches no subscription is answered `202` too, with `"subscriptions": []`. An `id` the
/// store already holds (events are kept at least `storage.retention`) is not stored or
/// delivered again: the answer is `200` with the first result and `"duplicate": true`.
///
/// With a `hookrelay-event-type` header the post is a raw event: the body, of any content
/// type (JSON too), is the event's data, stored and delivered byte for byte with its
/// content type (`application/octet-stream` when absent), and the headers give its id and
/// attributes.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "app",
    operation_id = "postEvent",
    security(("ingestToken" = []), ()),
    params(
        ("hookrelay-event-type" = Option<String>, Header, pattern = "^[A-Za-z0-9._:-]{1,128}$",
            description = "Makes the post a raw event of this type: the body is its data, whatever its content type."),
        ("hookrelay-event-id" = Option<String>, Header, pattern = "^[A-Za-z0-9._:-]{1,128}$",
            description = "A raw event's id (without it, a UUIDv7); an id the store holds already makes the post a duplicate."),
        ("hookrelay-via" = Option<String>, Header,
            description = "Set by relays on their deliveries: the ids of the relays the event passed. A post naming this relay, or one that passed 8 relays, is refused with `508`; a raw event keeps the path (as the attribute `hookrelay-via`) for its own deliveries."),
        ("hookrelay-attr-NAME" = Option<String>, Header,
            description = "A raw event's attribute, for filters (`{attr: NAME, ...}`): any number of headers `hookrelay-attr-` + a name `[a-z0-9_-]{1,64}`, at most 32, each value visible ASCII (no tab or other control character) up to 512 bytes."),
    ),
    request_body(
        content(
            (Envelope = "application/json",
                example = json!({"type": "invoice.paid", "id": "inv-42-paid", "data": {"invoice": "in_42"}})),
            (String = "*/*", example = "<notification><domain>example.org</domain></notification>"),
        ),
        description = "An event envelope (any `application/*+json` content type is accepted too), or, with `hookrelay-event-type`, a raw event's body of any content type (empty too).",
    ),
    responses(
        (status = 202, description = "Stored, with a delivery for each matched subscription.", body = Receipt,
            example = json!({"id": "inv-42-paid", "subscriptions": ["billing", "audit"]})),
        (status = 200, description = "A duplicate: the store holds this id already; nothing was stored again.", body = Receipt,
            example = json!({"id": "inv-42-paid", "subscriptions": ["billing", "audit"], "duplicate": true})),
        BadBody,
        Unauthorized,
        BodyTooLarge,
        (status = 415, description = "The content type is not JSON and there is no `hookrelay-event-type` header (`unsupported_media_type`).", body = ErrorBody),
        (status = 422, description = "JSON, but not a valid envelope (`invalid_event`); `fields` names every member at fault, all at once (missing, invalid, given twice, unknown (`envelope`), or `data` nested deeper than `limits.max_depth`), `headers.<name>` for a raw event's header, `body` for a raw JSON body deeper than `limits.max_depth`.", body = ErrorBody,
            example = json!({"error": {"code": "invalid_event", "message": "type: missing; data: must not be null", "fields": [{"field": "type", "reason": "missing"}, {"field": "data", "reason": "must not be null"}]}})),
        StoreRefused,
        LoopDetected,
    )
)]
async fn post_event(
    State(state): State<Arc<IngestState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let via = came_via(&state, &headers)?;
        let (event, matched) = if event::is_raw(&headers) {
            // A raw event: the body is its data, whatever its content type.
            let body = read_body(body, state.limits.max_body, "limits.max_body").await?;
            let mut event = Event::from_raw(&headers, body).map_err(|e| event_error(e, ""))?;
            event
                .check_depth(state.limits.max_depth)
                .map_err(|e| event_error(e, ""))?;
            // Its deliveries carry the path on, so a loop through other relays ends too.
            if let Some(raw) = event.raw.as_mut() {
                via.record(Arc::make_mut(raw));
            }
            let meta = event.raw.as_deref().expect("a raw event");
            let json = meta.is_json().then_some(&event.data[..]);
            let matched = state.catalog.matcher().matching_raw(
                &event.event_type,
                json,
                &meta.attributes,
            );
            (event, matched)
        } else {
            if let Some(name) = event::raw_header(&headers) {
                return Err(HttpError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_event",
                    format!("headers.{name}: goes with {} (a raw event) only; an envelope has no id or attributes in headers", event::TYPE_HEADER),
                )
                .field(
                    format!("headers.{name}"),
                    format!("only with {}", event::TYPE_HEADER),
                ));
            }
            if !is_json(&headers) {
                return Err(HttpError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "content-type must be application/json, or name the event type in a hookrelay-event-type header to send the body as a raw event",
                ));
            }
            let body = read_body(body, state.limits.max_body, "limits.max_body").await?;
            let (event, raw) = Event::parse(&body).map_err(|e| event_error(e, ""))?;
            event
                .check_depth(state.limits.max_depth)
                .map_err(|e| event_error(e, ""))?;
            let matched = state.catalog.matcher().matching(&event.event_type, raw);
            (event, matched)
        };
        let id = event.id.clone();
        let receipt = names(&matched);
        let admissions = store(&state, vec![Matched { event, lanes: matched }]).await?;
        Ok::<_, HttpError>(match admissions.into_iter().next() {
            Some(Admission::Duplicate { subscriptions }) => {
                (StatusCode::OK, Json(Receipt::new(&id, subscriptions, true)))
            }
            _ => (StatusCode::ACCEPTED, Json(Receipt::new(&id, receipt, false))),
        })
    }
    .await;
    respond(&state.metrics, result)
}

/// Post a batch of events.
///
/// All or nothing: when any element is invalid the answer is `422` naming it (`[i].field`)
/// and nothing is stored. Otherwise the whole batch is committed in one transaction and
/// answered `202`, one result per element, in order; duplicates are flagged per element (an
/// id repeated inside the batch is a duplicate of its first occurrence).
#[utoipa::path(
    post,
    path = "/v1/events/batch",
    tag = "app",
    operation_id = "postEventBatch",
    security(("ingestToken" = []), ()),
    request_body(
        content = Vec<Envelope>,
        content_type = "application/json",
        description = "A JSON array of event envelopes, at most `limits.max_batch` (default 500).",
        example = json!([{"type": "invoice.paid", "id": "inv-43-paid", "data": {"invoice": "in_43"}},
                         {"type": "invoice.paid", "id": "inv-42-paid", "data": {"invoice": "in_42"}}]),
    ),
    responses(
        (status = 202, description = "Stored; one result per element, in order.", body = BatchReceipt,
            example = json!({"results": [{"id": "inv-43-paid", "subscriptions": ["billing"]},
                                         {"id": "inv-42-paid", "subscriptions": ["billing"], "duplicate": true}]})),
        BadBody,
        Unauthorized,
        (status = 413, description = "The body is larger than `limits.max_batch_body`, or has more than `limits.max_batch` events (`too_large`).", body = ErrorBody),
        NotJson,
        (status = 422, description = "JSON but not an array (`invalid_batch`), or an element is not a valid envelope (`invalid_event`, with `fields` such as `[1].type`, or `[1].data` nested deeper than `limits.max_depth`).", body = ErrorBody),
        StoreRefused,
        LoopDetected,
    )
)]
async fn post_batch(
    State(state): State<Arc<IngestState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        // Envelopes keep no path: a batch is checked, not carried on.
        came_via(&state, &headers)?;
        if let Some(name) = event::raw_header(&headers) {
            return Err(HttpError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_event",
                "raw events are posted one per request to /v1/events",
            )
            .field(format!("headers.{name}"), "not accepted on a batch"));
        }
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
            let (event, data) = Event::parse(&element)
                .and_then(|(event, data)| {
                    event.check_depth(state.limits.max_depth)?;
                    Ok((event, data))
                })
                .map_err(|e| event_error(e, &format!("[{i}]")))?;
            let lanes = state.catalog.matcher().matching(&event.event_type, data);
            batch.push(Matched { event, lanes });
        }
        let summary: Vec<(String, Vec<String>)> = batch
            .iter()
            .map(|m| (m.event.id.clone(), names(&m.lanes)))
            .collect();
        let admissions = store(&state, batch).await?;
        let results: Vec<Receipt> = summary
            .iter()
            .zip(admissions)
            .map(|((id, matched), admission)| match admission {
                Admission::Duplicate { subscriptions } => Receipt::new(id, subscriptions, true),
                Admission::Stored(_) => Receipt::new(id, matched.clone(), false),
            })
            .collect();
        Ok((StatusCode::ACCEPTED, Json(BatchReceipt { results })))
    }
    .await;
    respond(&state.metrics, result)
}

/// The relays a post passed (`hookrelay-via`); `508` when it went round a loop through this
/// relay or passed too many, before anything is read or stored.
fn came_via(state: &IngestState, headers: &HeaderMap) -> Result<Via, HttpError> {
    // Built only on a refusal: every post passes through here.
    let refuse = |status, code, e: ViaError| {
        let message = e.to_string();
        let reason = message
            .strip_prefix(&format!("{}: ", via::HEADER))
            .unwrap_or(&message)
            .to_string();
        HttpError::new(status, code, message).field(format!("headers.{}", via::HEADER), reason)
    };
    let via = Via::from_headers(headers)
        .map_err(|e| refuse(StatusCode::UNPROCESSABLE_ENTITY, "invalid_event", e))?;
    via.check(state.dispatcher.relay_id())
        .map_err(|e| refuse(StatusCode::LOOP_DETECTED, "loop_detected", e))?;
    Ok(via)
}

/// Counts the request's outcome and turns it into a response.
fn respond<T: Serialize>(
    metrics: &Metrics,
    result: Result<(StatusCode, Json<T>), HttpError>,
) -> Response {
    match result {
        // Accepted events are counted where they are stored, one by one (batches too).
        Ok((status, body)) => (status, body).into_response(),
        Err(error) => {
            let reason = match error.status() {
                StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                StatusCode::SERVICE_UNAVAILABLE => "busy",
                StatusCode::LOOP_DETECTED => "loop",
                _ => "invalid",
            };
            count_refusal(metrics, reason);
            error.into_response()
        }
    }
}

/// The names of the matched subscriptions, for the receipt.
fn names(lanes: &[Arc<Lane>]) -> Vec<String> {
    lanes.iter().map(|l| l.name().to_string()).collect()
}

/// An event and the lanes of the subscriptions it matched, on its way to the store.
struct Matched {
    event: Event,
    lanes: Vec<Arc<Lane>>,
}

/// What a new delivery's hand-over needs of its event once the event went to the store.
struct Handoff {
    event_id: Arc<str>,
    event_type: Arc<str>,
    data: bytes::Bytes,
    received_at_ms: i64,
    raw: Option<Arc<RawMeta>>,
}

impl Handoff {
    fn of(event: &Event) -> Handoff {
        Handoff {
            event_id: Arc::from(event.id.as_str()),
            event_type: Arc::from(event.event_type.as_str()),
            data: event.data.clone(),
            received_at_ms: event.received_at_ms,
            raw: event.raw.clone(),
        }
    }

    /// The claimed delivery `id` of this event to `subscription`, as its pump takes it.
    fn delivery(&self, id: DeliveryId, subscription: Arc<str>) -> Delivery {
        Delivery {
            id,
            subscription,
            event_id: self.event_id.clone(),
            event_type: self.event_type.clone(),
            data: self.data.clone(),
            raw: self.raw.clone(),
            attempts: 0,
            budget_used: 0,
            received_at_ms: self.received_at_ms,
            // Its first claim: stored claimed with the event.
            token: 1,
        }
    }
}

/// Hands events to the store; `202` is only answered after this returns.
async fn store(state: &Arc<IngestState>, batch: Vec<Matched>) -> Result<Vec<Admission>, HttpError> {
    let state = state.clone();
    // A task of its own: once the store has the job, the hand-off below must happen even if
    // the client goes away or the request times out, or deliveries stored as claimed would
    // wait for a restart.
    tokio::spawn(async move { commit_and_hand_off(&state, batch).await })
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "ingest task failed");
            Err(HttpError::store_unavailable(
                "the relay cannot store events right now; retry shortly",
            ))
        })
}

/// Stores the batch; deliveries whose pump has room are stored as claimed and handed to it
/// in memory after the commit, the others are left for the feeder.
async fn commit_and_hand_off(
    state: &IngestState,
    batch: Vec<Matched>,
) -> Result<Vec<Admission>, HttpError> {
    let mut accepted = Vec::with_capacity(batch.len());
    let mut handoffs = Vec::with_capacity(batch.len());
    for Matched { event, lanes } in batch {
        let routes: Vec<Route> = lanes.iter().map(Lane::route).collect();
        // Parsed once per event, and only when an ordered subscription needs a key.
        let data: Option<serde_json::Value> = routes
            .iter()
            .any(|r| *r.ordering() != DeliveryOrder::None)
            .then(|| serde_json::from_slice(&event.data).ok())
            .flatten();
        let deliveries = routes
            .iter()
            .map(|r| NewDelivery {
                subscription: r.name().clone(),
                handed_off: r.slot.is_some(),
                ttl_ms: r.ttl_ms(),
                ordering_key: r.ordering().key_of(data.as_ref()),
                attempt_timeout: r.attempt_timeout(),
                pulled: r.pulled(),
            })
            .collect();
        handoffs.push((Handoff::of(&event), routes));
        accepted.push(Accepted::new(event, deliveries));
    }
    let batch = accepted;
    let admissions = state.store.accept(batch).await.map_err(|e| {
        tracing::warn!(error = %e, "event refused: the store cannot take it");
        let message = match e {
            StoreError::Busy(_) => "the relay's queue is full; retry shortly",
            _ => "the relay cannot store events right now; retry shortly",
        };
        HttpError::store_unavailable(message)
    })?;
    for ((event, routes), admission) in handoffs.into_iter().zip(&admissions) {
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
        for (route, id) in routes.into_iter().zip(ids) {
            let subscription = route.name().clone();
            route.hand_over(|| event.delivery(*id, subscription));
        }
    }
    Ok(admissions)
}

/// Maps an envelope error; `prefix` names the element of a batch (`[3]`).
fn event_error(e: EventError, prefix: &str) -> HttpError {
    match e {
        EventError::Malformed { .. } => {
            HttpError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string())
        }
        EventError::Invalid(ref problems) => {
            let message = if prefix.is_empty() {
                e.to_string()
            } else {
                format!("event {prefix}: {e}")
            };
            let mut error =
                HttpError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_event", message);
            for p in problems {
                let field = if prefix.is_empty() {
                    p.field.to_string()
                } else {
                    format!("{prefix}.{}", p.field)
                };
                error = error.field(field, p.reason.clone());
            }
            error
        }
    }
}

/// Where the deliveries of an event stand.
///
/// Known for `storage.retention` after acceptance.
#[utoipa::path(
    get,
    path = "/v1/events/{id}",
    tag = "app",
    operation_id = "getEvent",
    security(("ingestToken" = []), ()),
    params(("id" = String, Path, description = "The event id.")),
    responses(
        (status = 200, description = "The event and its deliveries.", body = EventView),
        Unauthorized,
        (status = 404, description = "Unknown event id, or pruned after `storage.retention` (`not_found`).", body = ErrorBody),
        (status = 503, description = "The store cannot answer now (`store_unavailable`).", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait: `1`."))),
    )
)]
async fn event_status(State(state): State<Arc<IngestState>>, Path(id): Path<String>) -> Response {
    match state.store.event_status(&id).await {
        Ok(Some(status)) => Json(EventView {
            id: &status.id,
            event_type: &status.event_type,
            received_at: rfc3339(status.received_at_ms),
            content_type: status.raw.as_deref().map(|r| r.content_type.as_str()),
            attributes: status.raw.as_deref().map(|r| {
                r.attributes
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect()
            }),
            deliveries: status.deliveries.iter().map(|d| d.status()).collect(),
        })
        .into_response(),
        Ok(None) => HttpError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no event {id:?} (unknown, or pruned after storage.retention)"),
        )
        .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read event status");
            HttpError::store_unavailable("the store cannot answer right now; retry shortly")
                .into_response()
        }
    }
}
