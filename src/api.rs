//! The management API on `listen.api`: subscriptions (in [`subscriptions`]), release of dead
//! letters, dead letters one by one, attempt histories (`attempts`), replay (`replay`) and
//! the queue figures per subscription (`queue`).
//! Guarded by `api.token` when set.

mod attempts;
pub mod notifications;
pub mod openapi;
mod queue;
mod replay;
mod responses;
pub mod settings;
mod subscriptions;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::catalog::Catalog;
use crate::deliver::destination::DestinationGuard;
use crate::dispatch::Dispatcher;
use crate::inbound::auth::require_bearer;
use crate::inbound::body::{BadBody, BodyTooLarge, is_json, read_body};
use crate::inbound::error::{ErrorBody, HttpError, no_such_endpoint};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::store::{DeliveryId, DeliveryQuery, DeliveryState, DeliveryView, Release, Store};
use crate::time::now_ms;
use responses::{
    StoreUnavailable, Unauthorized, UnknownSubscription, unavailable, unknown_subscription,
};

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

/// Routes of the API listener; with a `token`, every request but the OpenAPI document needs it.
pub fn router(state: ApiState, token: Option<Secret>) -> Router {
    let mut router: Router<ApiState> = guarded().fallback(no_such_endpoint).into();
    if let Some(token) = token {
        // Before the body is read: an unauthenticated client cannot make the relay buffer.
        router = router.layer(require_bearer(token, |req: &Request| {
            tracing::info!(method = %req.method(), path = req.uri().path(), "API request refused: missing or wrong bearer token");
        }));
    }
    router
        .with_state(state)
        .merge(Router::from(open().with_state(())))
}

/// The routes behind `api.token`, each with its OpenAPI description (a route cannot be
/// added without one). The pull routes are in [`notifications::router`].
fn guarded() -> OpenApiRouter<ApiState> {
    OpenApiRouter::default()
        .routes(routes!(subscriptions::create, subscriptions::list))
        .routes(routes!(
            subscriptions::show,
            subscriptions::replace,
            subscriptions::patch,
            subscriptions::remove
        ))
        .routes(routes!(subscriptions::pause::pause))
        .routes(routes!(subscriptions::pause::resume))
        .routes(routes!(release))
        .routes(routes!(list))
        .routes(routes!(retry))
        .routes(routes!(remove))
        .routes(routes!(attempts::attempts))
        .routes(routes!(replay::replay_event))
        .routes(routes!(replay::replay_range))
        .routes(routes!(queue::queue))
}

/// The routes open to all.
fn open() -> OpenApiRouter {
    OpenApiRouter::default().routes(routes!(get_openapi))
}

/// The OpenAPI description of the api listener, pull routes included.
pub(crate) fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = guarded().into_openapi();
    doc.merge(open().into_openapi());
    doc.merge(notifications::openapi());
    doc
}

/// This OpenAPI document.
///
/// Describes every endpoint of all three listeners (each path names its listener's default
/// address in `servers`). Never needs a token.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "api",
    operation_id = "getOpenApi",
    responses(
        (status = 200, description = "The OpenAPI document.", content_type = "application/json", body = Object),
    )
)]
async fn get_openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi::json(),
    )
        .into_response()
}

/// The optional body of a release.
// Only describes it: `release` reads the body by hand.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ReleaseRequest {
    /// Release only this subscription's (by id or name); omitted or `null`: every
    /// subscription's.
    #[schema(example = "billing")]
    subscription: Option<String>,
}

/// What a release did.
#[derive(Serialize, ToSchema)]
struct Released {
    /// Deliveries put back to `pending`.
    released: u64,
}

/// Release dead letters.
///
/// Puts every `failed` and `expired` delivery back to `pending` with a fresh retry budget
/// (`budget_used` starts over; `attempts` and the attempt history are kept), for one
/// subscription or all of them. At most once per `release.min_interval` per scope.
/// Deliveries of subscriptions that no longer exist are left alone.
#[utoipa::path(
    post,
    path = "/v1/deliveries/release",
    tag = "api",
    operation_id = "releaseDeliveries",
    security(("apiToken" = []), ()),
    request_body(
        content = Option<ReleaseRequest>,
        content_type = "application/json",
        description = "Optional: an empty body releases every subscription's dead letters.",
        example = json!({"subscription": "billing"}),
    ),
    responses(
        (status = 202, description = "Released.", body = Released, example = json!({"released": 12})),
        BadBody,
        Unauthorized,
        UnknownSubscription,
        BodyTooLarge,
        (status = 415, description = "A body is sent but its content type is not JSON (`unsupported_media_type`).", body = ErrorBody),
        (status = 422, description = "The body is not `{\"subscription\": \"name\"}` (`invalid_release`).", body = ErrorBody),
        (status = 429, description = "This scope was released less than `release.min_interval` ago (`too_soon`).", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until the scope may be released again."))),
        StoreUnavailable,
    )
)]
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
        // `null` is no scope, as the document's optional body allows.
        match obj.map(|o| o.get("subscription")) {
            _ if v.is_null() => None,
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
    let known = state.catalog.matcher().names();
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
            Ok((StatusCode::ACCEPTED, Json(Released { released: n })).into_response())
        }
        Release::TooSoon { next_allowed_ms } => Err(too_soon(
            next_allowed_ms,
            now,
            "this scope was released less than release.min_interval ago",
        )),
    }
}

/// `429` (`too_soon`) with `Retry-After` until `next_allowed_ms`.
fn too_soon(next_allowed_ms: i64, now: i64, why: &str) -> HttpError {
    let wait = ((next_allowed_ms - now).max(0) as u64)
        .div_ceil(1000)
        .max(1);
    HttpError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_soon",
        format!("{why}; retry in {wait}s"),
    )
    .retry_after(wait)
}

/// A page of deliveries.
#[derive(Serialize, ToSchema)]
struct DeliveryPage<'a> {
    /// Oldest first.
    deliveries: Vec<DeliveryView<'a>>,
    /// Pass as `after` for the next page; `null` on the last page.
    #[schema(required = true, value_type = Option<i64>)]
    next_after: Option<DeliveryId>,
}

/// List deliveries in one state.
///
/// Oldest first (by id), in pages: pass `next_after` back as `after` for the next one.
#[utoipa::path(
    get,
    path = "/v1/deliveries",
    tag = "api",
    operation_id = "listDeliveries",
    security(("apiToken" = []), ()),
    params(
        ("state" = Option<DeliveryState>, Query, description = "Only deliveries in this state; default `failed`."),
        ("subscription" = Option<String>, Query, description = "Only this subscription's, by id or name (a deleted subscription's name works too)."),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 1000, description = "Page size; default 100."),
        ("after" = Option<i64>, Query, description = "Only deliveries with a greater id: the previous page's `next_after`."),
    ),
    responses(
        (status = 200, description = "A page of deliveries.", body = DeliveryPage),
        Unauthorized,
        (status = 422, description = "A query parameter is invalid or unknown (`invalid_query`); `fields` names each.", body = ErrorBody),
        StoreUnavailable,
    )
)]
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
            let every: Vec<&str> = DeliveryState::ALL.map(DeliveryState::as_str).into();
            error = error
                .clone()
                .field("state", format!("must be one of {}", every.join(", ")));
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
    Ok(Json(DeliveryPage {
        deliveries: page.iter().map(|d| d.view()).collect(),
        next_after,
    })
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

/// A delivery put back in the queue.
#[derive(Serialize, ToSchema)]
struct Requeued {
    /// Delivery id.
    #[schema(value_type = i64)]
    id: DeliveryId,
    /// Always `pending`.
    #[schema(example = "pending")]
    state: DeliveryState,
}

/// Retry one dead letter.
///
/// Puts one `failed` or `expired` delivery back to `pending` with a fresh retry budget
/// (`budget_used` starts over; `attempts` and the attempt history are kept).
#[utoipa::path(
    post,
    path = "/v1/deliveries/{id}/retry",
    tag = "api",
    operation_id = "retryDelivery",
    security(("apiToken" = []), ()),
    params(("id" = i64, Path, description = "Delivery id.")),
    responses(
        (status = 202, description = "Back to `pending`.", body = Requeued),
        Unauthorized,
        (status = 404, description = "No such delivery (`not_found`).", body = ErrorBody),
        (status = 409, description = "The delivery is not `failed` or `expired`, or its subscription no longer exists (`conflict`).", body = ErrorBody),
        StoreUnavailable,
    )
)]
async fn retry(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let n = parse_id(&id)?;
    let known = state.catalog.matcher().names();
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
                Json(Requeued {
                    id: n,
                    state: DeliveryState::Pending,
                }),
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

/// Delete one delivery.
///
/// Drops a delivery that is not `pending` or `in_flight` (typically a dead letter).
#[utoipa::path(
    delete,
    path = "/v1/deliveries/{id}",
    tag = "api",
    operation_id = "deleteDelivery",
    security(("apiToken" = []), ()),
    params(("id" = i64, Path, description = "Delivery id.")),
    responses(
        (status = 204, description = "Deleted."),
        Unauthorized,
        (status = 404, description = "No such delivery (`not_found`).", body = ErrorBody),
        (status = 409, description = "The delivery is `pending` or `in_flight` (`conflict`).", body = ErrorBody),
        StoreUnavailable,
    )
)]
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
