//! Pull delivery: `/v1/subscriptions/{id}/notifications`, the FIFO queue of a `mode: pull`
//! subscription. Consumers take the oldest notifications (one, or up to 100 with the count
//! still waiting), optionally long-polling, and acknowledge them by id (`ack: explicit`).
//! These routes sit outside the `api.token` layer: a subscription's `pull.token` is enough
//! for them, and their timeout leaves room for the longest wait.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::Engine;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use utoipa::openapi::OpenApi;
use utoipa::{IntoResponses, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiState;
use super::responses::{StoreUnavailable, UnknownSubscription, unavailable, unknown_subscription};
use crate::inbound::body::{BadBody, BodyTooLarge, NotJson, malformed, read_body, require_json};
use crate::inbound::error::{ErrorBody, HttpError};
use crate::metrics::FinalOutcome;
use crate::store::{DeliveryId, Notification, PullMode};
use crate::subscription::{AckMode, PullSettings, Subscription};
use crate::time::{now_ms, rfc3339};

/// Longest long poll (`?wait=`).
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Most notifications in one list call.
const MAX_LIMIT: usize = 100;

/// The pull routes (served with a timeout above [`MAX_WAIT`]).
pub fn router(state: ApiState) -> Router {
    Router::from(routes()).with_state(state)
}

/// The pull routes, each with its OpenAPI description (a route cannot be added without one).
fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::default()
        .routes(routes!(next))
        .routes(routes!(list))
        .routes(routes!(ack))
}

/// The OpenAPI description of the pull routes.
pub(crate) fn openapi() -> OpenApi {
    routes().into_openapi()
}

/// `401` of the pull routes.
// Only describes the response: `authorize` answers it.
#[derive(IntoResponses)]
#[response(
    status = 401,
    description = "The bearer token is missing or wrong (`unauthorized`). Needed: the subscription's `pull.token` or `api.token` when it has a `pull.token`; otherwise `api.token` when set. Without a valid token an unknown subscription is `401` too, not `404`.",
    headers(("WWW-Authenticate" = String, description = "`Bearer`"))
)]
#[allow(dead_code)]
struct PullUnauthorized(ErrorBody<'static>);

/// `409` of the pull routes.
const PUSHED: &str =
    "The subscription is pushed to its url (`mode: push`), not pulled (`conflict`).";
/// `500` of the pull routes.
const PULL_FAILED: &str = "The pull failed unexpectedly (`internal`); see the relay's log.";

/// The pull subscription `key` names, once the caller may use it: its `pull.token` (or
/// `api.token`) when one is set. Without a valid token nothing tells whether it exists.
fn authorize(
    state: &ApiState,
    key: &str,
    headers: &HeaderMap,
) -> Result<(Arc<Subscription>, PullSettings), HttpError> {
    let api_ok = state.token.as_ref().is_none_or(|t| t.is_bearer_of(headers));
    let Some(sub) = state.catalog.find(key) else {
        return Err(if api_ok {
            unknown_subscription(key)
        } else {
            HttpError::unauthorized()
        });
    };
    let pull_token = sub.pull().and_then(|p| p.token.as_ref());
    let allowed = match pull_token {
        Some(t) => t.is_bearer_of(headers) || (state.token.is_some() && api_ok),
        None => api_ok,
    };
    if !allowed {
        return Err(HttpError::unauthorized());
    }
    let Some(settings) = sub.pull().cloned() else {
        return Err(HttpError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "subscription {:?} is pushed to its url, not pulled (mode: push)",
                sub.name
            ),
        ));
    };
    Ok((sub, settings))
}

/// An integer, also written with a zero fraction (`8.0`), as JSON Schema's `integer` allows.
fn integer(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        let f = v.as_f64()?;
        // ±2^63 are out of range as floats: `as` would saturate a value just beyond either
        // end to i64::MIN or i64::MAX. (i64::MIN written as an integer is `as_i64` above.)
        (f.fract() == 0.0 && f > i64::MIN as f64 && f < i64::MAX as f64).then_some(f as i64)
    })
}

/// A `wait`: whole seconds or milliseconds (`20s`, `1500ms`) up to 30s; what the document's
/// `pattern` for it allows, no more.
fn parse_wait(text: &str) -> Option<Duration> {
    let (digits, unit) = match text.strip_suffix("ms") {
        Some(d) => (d, Duration::from_millis(1)),
        None => (text.strip_suffix('s')?, Duration::from_secs(1)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = digits.parse().ok()?;
    unit.checked_mul(n).filter(|w| *w <= MAX_WAIT)
}

/// Reads `wait` (a duration up to 30s) and `limit` (where allowed) from the query.
fn params(q: &HashMap<String, String>, with_limit: bool) -> Result<(Duration, usize), HttpError> {
    let mut error = HttpError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_query",
        "invalid query parameters",
    );
    let mut bad = false;
    for key in q.keys() {
        if key != "wait" && !(with_limit && key == "limit") {
            error = error.field(key.clone(), "unknown parameter");
            bad = true;
        }
    }
    let wait = match q.get("wait").map(|w| parse_wait(w)) {
        None => Duration::ZERO,
        Some(Some(w)) => w,
        Some(None) => {
            error = error.field(
                "wait",
                "must be whole seconds or milliseconds up to 30s, such as 20s or 1500ms",
            );
            bad = true;
            Duration::ZERO
        }
    };
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 1,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            error = error.field("limit", format!("must be 1..={MAX_LIMIT}"));
            bad = true;
            1
        }
    };
    if bad { Err(error) } else { Ok((wait, limit)) }
}

/// Pulls up to `limit`; with a `wait`, holds an empty answer until something arrives or the
/// wait ends.
async fn take(
    state: &ApiState,
    sub: &Arc<Subscription>,
    settings: &PullSettings,
    limit: usize,
    wait: Duration,
) -> Result<(Vec<Notification>, u64), HttpError> {
    let mode = match settings.ack {
        AckMode::Auto => PullMode::Consume,
        AckMode::Explicit => PullMode::Hide(settings.visibility_timeout.as_millis() as i64),
    };
    let deadline = tokio::time::Instant::now() + wait;
    let arrivals = state.dispatcher.arrivals(&sub.name);
    let stopping = state.dispatcher.stopping();
    loop {
        // A subscription changed or deleted meanwhile (mode, token, a new one of that name)
        // ends the poll: its queue is no longer the one this caller was let into.
        let current = state.catalog.find(&sub.id);
        if !current.is_some_and(|c| Arc::ptr_eq(&c, sub)) {
            return Ok((Vec::new(), 0));
        }
        // Registered before the store is asked, so an arrival in between is not missed.
        let notified = arrivals.as_ref().map(|n| n.notified());
        let mut notified = std::pin::pin!(notified);
        if let Some(n) = notified.as_mut().as_pin_mut() {
            n.enable();
        }
        // On its own task, counted there: a caller that goes away mid-pull (auto mode
        // consumes at the commit) still leaves the count right.
        let pulled = {
            let (state, sub, settings) = (state.clone(), sub.clone(), settings.clone());
            tokio::spawn(async move {
                let pulled = state
                    .store
                    .pull(sub.name.clone(), now_ms(), limit, mode)
                    .await;
                if let Ok(p) = &pulled {
                    count(&state, &sub, &settings, &p.notifications);
                }
                pulled
            })
            .await
            .map_err(|_| {
                HttpError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the pull failed; see the relay's log",
                )
            })?
            .map_err(unavailable)?
        };
        let done = tokio::time::Instant::now() >= deadline || stopping.is_cancelled();
        if !pulled.notifications.is_empty() || done {
            return Ok((pulled.notifications, pulled.remaining));
        }
        // A hidden notification coming back counts as an arrival too.
        let wake_at = pulled.next_visible_ms.map_or(deadline, |at| {
            let after = Duration::from_millis((at - now_ms()).max(0) as u64);
            deadline.min(tokio::time::Instant::now() + after)
        });
        // Woken by an arrival, the end of the wait, or the relay stopping (one more pull
        // then answers).
        let arrival = async {
            match notified.as_mut().as_pin_mut() {
                Some(n) => n.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = arrival => {}
            _ = tokio::time::sleep_until(wake_at) => {}
            _ = stopping.cancelled() => {}
        }
    }
}

/// Counts consumed (auto) and handed-out-again notifications.
fn count(state: &ApiState, sub: &Subscription, settings: &PullSettings, taken: &[Notification]) {
    let label = sub.metric_label();
    let again = taken.iter().filter(|n| n.redelivered).count() as u64;
    if again > 0 {
        state
            .metrics
            .pull_redelivered
            .with_label_values(&[label])
            .inc_by(again);
    }
    if settings.ack == AckMode::Auto && !taken.is_empty() {
        state
            .metrics
            .count_final(label, FinalOutcome::Delivered, taken.len() as u64);
    }
}

/// A notification: one event for a pull subscription.
#[derive(Serialize, ToSchema)]
#[schema(as = Notification)]
struct View<'a> {
    /// Its id (a delivery id); acknowledge it with this.
    #[schema(value_type = i64)]
    id: DeliveryId,
    /// The event id.
    #[schema(example = "inv-42-paid")]
    event_id: &'a str,
    /// The event type.
    #[serde(rename = "type")]
    #[schema(example = "invoice.paid")]
    event_type: &'a str,
    /// When the relay accepted the event (RFC 3339, UTC).
    #[schema(format = DateTime)]
    received_at: String,
    /// The event's data, byte for byte; data that is not JSON comes as a JSON string.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>, nullable = false)]
    data: Option<Box<RawValue>>,
    /// Instead of `data`, for data that is not UTF-8: in base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(content_encoding = "base64", nullable = false)]
    data_base64: Option<String>,
    /// A raw event's content type; absent for an envelope event (`application/json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "application/xml")]
    content_type: Option<&'a str>,
    /// A raw event's attributes by name; absent for an envelope event.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<std::collections::HashMap<String, String>>, nullable = false)]
    attributes: Option<std::collections::BTreeMap<&'a str, &'a str>>,
}

fn view(n: &Notification) -> View<'_> {
    let text = std::str::from_utf8(&n.data).ok();
    let raw = n.raw.as_deref();
    // JSON as is; other text as a JSON string (quoting a str cannot fail). A raw body is
    // embedded as JSON only when it is declared JSON, so XML or text always comes as the
    // string of its exact text.
    let embed = raw.is_none_or(|r| r.is_json());
    let data = text.and_then(|t| {
        let quoted = || RawValue::from_string(serde_json::to_string(t).unwrap_or_default());
        if embed {
            RawValue::from_string(t.to_string()).or_else(|_| quoted())
        } else {
            quoted()
        }
        .ok()
    });
    View {
        id: n.id,
        event_id: &n.event_id,
        event_type: &n.event_type,
        received_at: rfc3339(n.received_at_ms),
        data_base64: text
            .is_none()
            .then(|| base64::engine::general_purpose::STANDARD.encode(&n.data)),
        data,
        content_type: raw.map(|r| r.content_type.as_str()),
        attributes: raw.map(|r| {
            r.attributes
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect()
        }),
    }
}

/// Notifications taken, and how many remain.
#[derive(Serialize, ToSchema)]
#[schema(as = NotificationList)]
struct List<'a> {
    /// Oldest first; at most `limit`.
    notifications: Vec<View<'a>>,
    /// Notifications still available after this call (hidden ones not counted).
    remaining: u64,
}

/// The body of an acknowledgement.
// Only describes it: `ack` reads the body by hand.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct AckRequest {
    /// Notification ids, in any order; at most 1000.
    #[schema(max_items = 1000, example = json!([41, 42]))]
    ids: Vec<i64>,
}

/// What an acknowledgement did.
#[derive(Serialize, ToSchema)]
struct AckResult {
    /// Notifications acknowledged by this call.
    acked: u64,
    /// Ids not waiting for an acknowledgement: unknown, another subscription's, never
    /// pulled, already acknowledged, or expired. Not an error.
    #[schema(value_type = Vec<i64>)]
    unknown: Vec<DeliveryId>,
}

/// axum answers HEAD with the GET handler; a pull must not consume what nobody receives.
fn refuse_head(method: &Method) -> Result<(), HttpError> {
    if method == Method::HEAD {
        return Err(HttpError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "HEAD would take notifications without returning them; use GET",
        ));
    }
    Ok(())
}

/// Take the oldest notification of a pull subscription.
///
/// First in, first out by acceptance. With `pull.ack: auto` taking it consumes it (at most
/// once). With `explicit` it stays queued until acknowledged, hidden for
/// `pull.visibility_timeout`, then handed out again. A long poll (`wait`) ends early when a
/// notification arrives, the subscription changes or goes, or the relay stops. `HEAD` is
/// refused (`405`).
#[utoipa::path(
    get,
    path = "/v1/subscriptions/{id}/notifications/next",
    tag = "api",
    operation_id = "takeNextNotification",
    security(("apiToken" = []), ("pullToken" = []), ()),
    params(
        ("id" = String, Path, description = "Subscription id or name."),
        ("wait" = Option<String>, Query, example = "20s",
            pattern = "^0*([0-9]|[12][0-9]|30)s$|^0*([0-9]{1,4}|[12][0-9]{4}|30000)ms$",
            description = "Long poll: when nothing is available, wait up to this long (whole seconds or milliseconds, at most `30s`: `20s`, `1500ms`) for a notification; default no wait."),
    ),
    responses(
        (status = 200, description = "The oldest available notification.", body = View),
        (status = 204, description = "Nothing available (after the wait, if any)."),
        PullUnauthorized,
        UnknownSubscription,
        (status = 409, description = PUSHED, body = ErrorBody),
        (status = 422, description = "A query parameter is invalid or unknown (`invalid_query`); `fields` names each.", body = ErrorBody),
        (status = 500, description = PULL_FAILED, body = ErrorBody),
        StoreUnavailable,
    )
)]
async fn next(
    State(state): State<ApiState>,
    method: Method,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    refuse_head(&method)?;
    let (sub, settings) = authorize(&state, &key, &headers)?;
    let (wait, _) = params(&q, false)?;
    let (taken, _) = take(&state, &sub, &settings, 1, wait).await?;
    Ok(match taken.first() {
        Some(n) => Json(view(n)).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// Take up to `limit` notifications of a pull subscription.
///
/// Oldest first, with the count still available; same rules as `next`. An empty queue is
/// `200` with an empty list. `HEAD` is refused (`405`).
#[utoipa::path(
    get,
    path = "/v1/subscriptions/{id}/notifications",
    tag = "api",
    operation_id = "takeNotifications",
    security(("apiToken" = []), ("pullToken" = []), ()),
    params(
        ("id" = String, Path, description = "Subscription id or name."),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 100,
            description = "Most notifications to take, 1..=100; default 1."),
        ("wait" = Option<String>, Query, example = "20s",
            pattern = "^0*([0-9]|[12][0-9]|30)s$|^0*([0-9]{1,4}|[12][0-9]{4}|30000)ms$",
            description = "Long poll: when nothing is available, wait up to this long (whole seconds or milliseconds, at most `30s`: `20s`, `1500ms`) for a notification; default no wait."),
    ),
    responses(
        (status = 200, description = "The notifications taken (maybe none) and how many remain.", body = List),
        PullUnauthorized,
        UnknownSubscription,
        (status = 409, description = PUSHED, body = ErrorBody),
        (status = 422, description = "A query parameter is invalid or unknown (`invalid_query`); `fields` names each.", body = ErrorBody),
        (status = 500, description = PULL_FAILED, body = ErrorBody),
        StoreUnavailable,
    )
)]
async fn list(
    State(state): State<ApiState>,
    method: Method,
    Path(key): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    refuse_head(&method)?;
    let (sub, settings) = authorize(&state, &key, &headers)?;
    let (wait, limit) = params(&q, true)?;
    let (taken, remaining) = take(&state, &sub, &settings, limit, wait).await?;
    Ok(Json(List {
        notifications: taken.iter().map(view).collect(),
        remaining,
    })
    .into_response())
}

/// Acknowledge notifications of a pull subscription.
///
/// Acknowledged notifications are delivered and never handed out again. Any notification
/// of this subscription that was taken and is still queued can be acknowledged, in any
/// order. With `pull.ack: auto` nothing is done: `{"acked": 0, "unknown": []}`.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{id}/notifications/ack",
    tag = "api",
    operation_id = "ackNotifications",
    security(("apiToken" = []), ("pullToken" = []), ()),
    params(("id" = String, Path, description = "Subscription id or name.")),
    request_body(content = AckRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "What was acknowledged.", body = AckResult,
            example = json!({"acked": 1, "unknown": [42]})),
        BadBody,
        PullUnauthorized,
        UnknownSubscription,
        (status = 409, description = PUSHED, body = ErrorBody),
        BodyTooLarge,
        NotJson,
        (status = 422, description = "The body is not `{\"ids\": [integers]}` or lists more than 1000 ids (`invalid_ack`).", body = ErrorBody),
        StoreUnavailable,
    )
)]
async fn ack(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let (sub, settings) = authorize(&state, &key, &headers)?;
    require_json(&headers)?;
    let body = read_body(body, state.max_body, "limits.max_body").await?;
    let doc: Value = serde_json::from_slice(&body).map_err(|e| malformed(&e))?;
    let ids: Option<Vec<DeliveryId>> = doc
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.get("ids"))
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(integer).collect());
    let Some(ids) = ids.filter(|ids| ids.len() <= 1000) else {
        return Err(HttpError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_ack",
            "the body must be {\"ids\": [notification ids]}, at most 1000 of them",
        )
        .field("ids", "must be a list of at most 1000 notification ids"));
    };
    if settings.ack == AckMode::Auto {
        // Pulling consumed them already.
        return Ok(Json(AckResult {
            acked: 0,
            unknown: Vec::new(),
        })
        .into_response());
    }
    let asked = ids.len();
    let unknown = state
        .store
        .ack(sub.name.clone(), ids, now_ms())
        .await
        .map_err(unavailable)?;
    let acked = (asked - unknown.len()) as u64;
    state
        .metrics
        .count_final(sub.metric_label(), FinalOutcome::Delivered, acked);
    Ok(Json(AckResult { acked, unknown }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The `wait` parameter's pattern in the document: 0s..=30s or 0ms..=30000ms.
    const WAIT_PATTERN: &str = "^0*([0-9]|[12][0-9]|30)s$|^0*([0-9]{1,4}|[12][0-9]{4}|30000)ms$";

    #[test]
    fn wait_takes_what_the_documented_pattern_allows() {
        let doc: Value = serde_json::from_str(crate::api::openapi::json()).unwrap();
        for path in ["notifications", "notifications/next"] {
            let params =
                &doc["paths"][format!("/v1/subscriptions/{{id}}/{path}")]["get"]["parameters"];
            let wait = params
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "wait");
            assert_eq!(wait.unwrap()["schema"]["pattern"], WAIT_PATTERN, "{path}");
        }
        for (text, ms) in [
            ("0s", 0),
            ("20s", 20_000),
            ("030s", 30_000),
            ("1500ms", 1500),
        ] {
            assert_eq!(parse_wait(text), Some(Duration::from_millis(ms)), "{text}");
        }
        for text in [
            "", "s", "ms", "31s", "30001ms", "1m", "20 s", "+5s", "20sec", "1.5s",
        ] {
            assert_eq!(parse_wait(text), None, "{text}");
        }
    }

    #[test]
    fn ack_ids_are_integers_with_or_without_a_zero_fraction() {
        for (v, want) in [
            (json!(8), Some(8)),
            (json!(8.0), Some(8)),
            (json!(-4.0), Some(-4)),
            (json!(8.5), None),
            (json!(9.3e18), None),
            (json!("8"), None),
            (serde_json::from_str("-9223372036854775809").unwrap(), None),
            (
                serde_json::from_str("-9223372036854775808").unwrap(),
                Some(i64::MIN),
            ),
        ] {
            assert_eq!(integer(&v), want, "{v}");
        }
    }
}
