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
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{ApiState, unknown_subscription};
use crate::event::now_ms;
use crate::http_error::HttpError;
use crate::ingest::{malformed, read_body, require_json};
use crate::store::{DeliveryId, Notification, PullMode, rfc3339};
use crate::subscription::{AckMode, PullSettings, Subscription};

/// Longest long poll (`?wait=`).
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Most notifications in one list call.
const MAX_LIMIT: usize = 100;

/// The pull routes (served with a timeout above [`MAX_WAIT`]).
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/subscriptions/{id}/notifications/next", get(next))
        .route("/v1/subscriptions/{id}/notifications", get(list))
        .route("/v1/subscriptions/{id}/notifications/ack", post(ack))
        .with_state(state)
}

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
    let pull_token = sub.pull.as_ref().and_then(|p| p.token.as_ref());
    let allowed = match pull_token {
        Some(t) => t.is_bearer_of(headers) || (state.token.is_some() && api_ok),
        None => api_ok,
    };
    if !allowed {
        return Err(HttpError::unauthorized());
    }
    let Some(settings) = sub.pull.clone() else {
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
    let wait = match q.get("wait").map(|w| humantime::parse_duration(w)) {
        None => Duration::ZERO,
        Some(Ok(w)) if w <= MAX_WAIT => w,
        Some(_) => {
            error = error.field("wait", "must be a duration of at most 30s, such as 20s");
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
            .map_err(super::unavailable)?
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
            .deliveries
            .with_label_values(&[label, "delivered"])
            .inc_by(taken.len() as u64);
    }
}

/// A notification as consumers see it.
#[derive(Serialize)]
struct View<'a> {
    id: DeliveryId,
    event_id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    received_at: String,
    /// The event's data, byte for byte; a body that is not JSON comes as a JSON string.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Box<RawValue>>,
    /// A body that is not UTF-8, in base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
}

fn view(n: &Notification) -> View<'_> {
    let text = std::str::from_utf8(&n.data).ok();
    // JSON as is; other text as a JSON string (quoting a str cannot fail).
    let data = text.and_then(|t| {
        RawValue::from_string(t.to_string())
            .or_else(|_| RawValue::from_string(serde_json::to_string(t).unwrap_or_default()))
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
    }
}

/// The answer of the list call.
#[derive(Serialize)]
struct List<'a> {
    notifications: Vec<View<'a>>,
    remaining: u64,
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

/// `GET /v1/subscriptions/{id}/notifications/next[?wait=20s]`: the oldest, or `204`.
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

/// `GET /v1/subscriptions/{id}/notifications?limit=N[&wait=20s]`: up to N, oldest first,
/// and how many remain.
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

/// `POST /v1/subscriptions/{id}/notifications/ack` with `{"ids": [...]}`.
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
        .and_then(|a| a.iter().map(Value::as_i64).collect());
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
        return Ok(Json(json!({ "acked": 0, "unknown": [] })).into_response());
    }
    let asked = ids.len();
    let unknown = state
        .store
        .ack(sub.name.clone(), ids, now_ms())
        .await
        .map_err(super::unavailable)?;
    let acked = (asked - unknown.len()) as u64;
    state
        .metrics
        .deliveries
        .with_label_values(&[sub.metric_label(), "delivered"])
        .inc_by(acked);
    Ok(Json(json!({ "acked": acked, "unknown": unknown })).into_response())
}
