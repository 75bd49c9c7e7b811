//! Replay: an event delivered again to its subscriptions (or named ones), and every event
//! of a time range delivered again to one subscription, each as new deliveries with a
//! fresh retry budget and the event's own `webhook-id`. Push subscriptions only: a pull
//! subscription's consumers hold their notifications themselves.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::responses::{
    StoreUnavailable, Unauthorized, UnknownSubscription, push_subscription, unavailable,
};
use super::{ApiState, too_soon};
use crate::inbound::body::{BadBody, BodyTooLarge, malformed, read_body, require_json};
use crate::inbound::error::{ErrorBody, HttpError};
use crate::store::{DeliveryId, Release, Replayed};
use crate::time::now_ms;

/// The optional body of an event's replay.
// Only describes it: `replay_event` reads the body by hand.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ReplayRequest {
    /// Push subscriptions to deliver to, by id or name (also ones the event did not match);
    /// omitted or `null`: every subscription that has a delivery of the event.
    #[schema(example = json!(["billing"]), min_items = 1)]
    subscriptions: Option<Vec<String>>,
}

/// A new delivery of a replay.
#[derive(Serialize, ToSchema)]
struct ReplayedDelivery {
    /// The new delivery's id.
    #[schema(value_type = i64)]
    id: DeliveryId,
    /// Its subscription.
    #[schema(example = "billing")]
    subscription: String,
}

/// A subscription of the event left out of a default replay.
#[derive(Serialize, ToSchema)]
struct Skipped {
    /// Its name.
    subscription: String,
    /// Why: `gone` (no longer configured) or `pull` (a pull subscription).
    #[schema(example = "gone")]
    reason: &'static str,
}

/// What an event's replay queued.
#[derive(Serialize, ToSchema)]
struct EventReplayed {
    /// One per subscription delivered to again, `pending` now.
    deliveries: Vec<ReplayedDelivery>,
    /// Subscriptions of the event a default replay left out.
    skipped: Vec<Skipped>,
}

/// Replay an event.
///
/// Creates a new delivery of the event to each named push subscription (default: every
/// subscription that has a delivery of it), delivered or not, pending now with a fresh retry
/// budget and ttl, unordered. The receiver gets the event's own `webhook-id` again. The
/// event must still be stored (`storage.retention`).
#[utoipa::path(
    post,
    path = "/v1/events/{id}/replay",
    tag = "api",
    operation_id = "replayEvent",
    security(("apiToken" = []), ()),
    params(("id" = String, Path, description = "The event id.")),
    request_body(
        content = Option<ReplayRequest>,
        content_type = "application/json",
        description = "Optional: an empty body replays to every subscription that has a delivery of the event.",
        example = json!({"subscriptions": ["billing"]}),
    ),
    responses(
        (status = 202, description = "New deliveries queued.", body = EventReplayed,
            example = json!({"deliveries": [{"id": 812, "subscription": "billing"}], "skipped": []})),
        BadBody,
        Unauthorized,
        (status = 404, description = "Unknown event, or pruned after `storage.retention` and so no longer replayable (`not_found`).", body = ErrorBody),
        BodyTooLarge,
        (status = 415, description = "A body is sent but its content type is not JSON (`unsupported_media_type`).", body = ErrorBody),
        (status = 422, description = "The body is not `{\"subscriptions\": [...]}`, or names a subscription that does not exist or is a pull subscription (`invalid_replay`); `fields` names each (`subscriptions[i]`).", body = ErrorBody),
        StoreUnavailable,
    )
)]
pub(super) async fn replay_event(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let body = read_body(body, state.max_body, "limits.max_body").await?;
    let named = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        require_json(&headers)?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| malformed(&e))?;
        named_subscriptions(&state, &v)?
    };
    let not_found = || {
        HttpError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no event {id:?}: unknown, or pruned after storage.retention and no longer replayable"
            ),
        )
    };
    let mut skipped = Vec::new();
    let names = match named {
        Some(names) => names,
        None => {
            let Some(status) = state.store.event_status(&id).await.map_err(unavailable)? else {
                return Err(not_found());
            };
            let mut names: Vec<String> = Vec::new();
            for d in status.deliveries {
                if names.contains(&d.subscription)
                    || skipped
                        .iter()
                        .any(|s: &Skipped| s.subscription == d.subscription)
                {
                    continue;
                }
                match state.catalog.find(&d.subscription) {
                    Some(sub) if sub.push().is_some() => names.push(d.subscription),
                    Some(_) => skipped.push(Skipped {
                        subscription: d.subscription,
                        reason: "pull",
                    }),
                    None => skipped.push(Skipped {
                        subscription: d.subscription,
                        reason: "gone",
                    }),
                }
            }
            names
        }
    };
    let replayed = state
        .store
        .replay(id.clone(), names.clone(), now_ms())
        .await
        .map_err(unavailable)?;
    let Replayed::Queued(ids) = replayed else {
        return Err(not_found());
    };
    for name in &names {
        state.dispatcher.wake(name);
    }
    tracing::info!(
        event_id = id.as_str(),
        deliveries = ids.len(),
        "event replayed"
    );
    let deliveries = ids
        .into_iter()
        .zip(names)
        .map(|(id, subscription)| ReplayedDelivery { id, subscription })
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(EventReplayed {
            deliveries,
            skipped,
        }),
    )
        .into_response())
}

/// The names of the push subscriptions a replay body lists (by id or name), each once, in
/// order; `None` when it lists none (`null`, `{}`, `{"subscriptions": null}`: the default).
/// Every problem is named in `fields`.
fn named_subscriptions(
    state: &ApiState,
    v: &serde_json::Value,
) -> Result<Option<Vec<String>>, HttpError> {
    if v.is_null() {
        return Ok(None);
    }
    let invalid = || {
        HttpError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_replay",
            "the body may only be {\"subscriptions\": [\"name\", ...]}",
        )
    };
    let obj = v
        .as_object()
        .filter(|o| o.keys().all(|k| k == "subscriptions"))
        .ok_or_else(|| {
            invalid().field(
                "subscriptions",
                "the body must be an object whose only member is subscriptions",
            )
        })?;
    let list = match obj.get("subscriptions") {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::Array(list)) if !list.is_empty() => list,
        _ => {
            return Err(invalid().field(
                "subscriptions",
                "must be a non-empty array of subscription ids or names",
            ));
        }
    };
    let mut error = HttpError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_replay",
        "a named subscription cannot be replayed to",
    );
    let mut names: Vec<String> = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let field = format!("subscriptions[{i}]");
        let Some(key) = item.as_str() else {
            error = error.field(field, "must be a string");
            continue;
        };
        match state.catalog.find(key) {
            None => error = error.field(field, format!("no subscription {key:?}")),
            Some(sub) if sub.push().is_none() => {
                error = error.field(
                    field,
                    format!(
                        "{key:?} is a pull subscription; replay delivers to push subscriptions only"
                    ),
                )
            }
            Some(sub) => {
                if !names.contains(&sub.name) {
                    names.push(sub.name.clone());
                }
            }
        }
    }
    if error.has_fields() {
        return Err(error);
    }
    Ok(Some(names))
}

/// The body of a bulk replay.
// Only describes it: `replay_range` reads the body by hand.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RangeRequest {
    /// Replay events received at or after this time (RFC 3339).
    #[schema(format = DateTime, example = "2026-11-22T08:00:00Z")]
    from: String,
    /// Replay events received before this time (RFC 3339); after `from`.
    #[schema(format = DateTime, example = "2026-11-22T09:30:00Z")]
    to: String,
}

/// What a bulk replay queued.
#[derive(Serialize, ToSchema)]
struct RangeReplayed {
    /// New deliveries queued, one per event.
    queued: u64,
}

/// Replay a time range to one subscription.
///
/// Creates a new delivery to this push subscription of every stored event received in
/// `[from, to)` that matched it (delivered or not), pending now with a fresh retry budget
/// and ttl, for a receiver that lost data. At most once per `release.min_interval` per
/// subscription, like a release. Events pruned after `storage.retention` are not replayed.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{id}/replay",
    tag = "api",
    operation_id = "replaySubscription",
    security(("apiToken" = []), ()),
    params(("id" = String, Path, description = "The subscription's id or name.")),
    request_body(
        content = RangeRequest,
        content_type = "application/json",
        example = json!({"from": "2026-11-22T08:00:00Z", "to": "2026-11-22T09:30:00Z"}),
    ),
    responses(
        (status = 202, description = "Queued.", body = RangeReplayed, example = json!({"queued": 1520})),
        BadBody,
        Unauthorized,
        UnknownSubscription,
        (status = 409, description = "A pull subscription: replay delivers to push subscriptions only (`conflict`).", body = ErrorBody),
        BodyTooLarge,
        (status = 415, description = "The content type is not JSON (`unsupported_media_type`).", body = ErrorBody),
        (status = 422, description = "The body is not `{\"from\", \"to\"}` with RFC 3339 times, `from` before `to` (`invalid_replay`); `fields` names each.", body = ErrorBody),
        (status = 429, description = "This subscription was replayed less than `release.min_interval` ago (`too_soon`).", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until it may be replayed again."))),
        StoreUnavailable,
    )
)]
pub(super) async fn replay_range(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, HttpError> {
    let sub = push_subscription(&state.catalog, &key, |name| {
        format!("{name:?} is a pull subscription; replay delivers to push subscriptions only")
    })?;
    let body = read_body(body, state.max_body, "limits.max_body").await?;
    require_json(&headers)?;
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| malformed(&e))?;
    let (from_ms, to_ms) = range(&v)?;
    let now = now_ms();
    let min = state.release_min_interval.as_millis() as i64;
    match state
        .store
        .replay_range(sub.name.clone(), from_ms, to_ms, now, min)
        .await
        .map_err(unavailable)?
    {
        Release::Released(n) => {
            tracing::info!(
                subscription = sub.name.as_str(),
                queued = n,
                "time range replayed"
            );
            state.dispatcher.wake(&sub.name);
            Ok((StatusCode::ACCEPTED, Json(RangeReplayed { queued: n })).into_response())
        }
        Release::TooSoon { next_allowed_ms } => Err(too_soon(
            next_allowed_ms,
            now,
            "this subscription was replayed less than release.min_interval ago",
        )),
    }
}

/// `from` and `to` of a bulk replay, ms since the epoch; every problem named.
fn range(v: &serde_json::Value) -> Result<(i64, i64), HttpError> {
    let mut error = HttpError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_replay",
        "the body must be {\"from\": RFC 3339, \"to\": RFC 3339}",
    );
    let Some(obj) = v.as_object() else {
        return Err(error.field("", "must be an object"));
    };
    for k in obj.keys().filter(|k| *k != "from" && *k != "to") {
        error = error.field(k.clone(), "unknown field");
    }
    let mut time = |name: &str| match obj.get(name).map(|t| t.as_str().map(parse_time)) {
        Some(Some(Some(ms))) => Some(ms),
        None => {
            error = error.clone().field(name, "required");
            None
        }
        _ => {
            error = error
                .clone()
                .field(name, "must be an RFC 3339 time, e.g. 2026-11-22T08:00:00Z");
            None
        }
    };
    let (from, to) = (time("from"), time("to"));
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        error = error.field("to", "must be after from");
    }
    match (from, to) {
        (Some(from), Some(to)) if !error.has_fields() => Ok((from, to)),
        _ => Err(error),
    }
}

/// An RFC 3339 time as ms since the epoch.
fn parse_time(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_whole() {
        let ok = range(
            &serde_json::json!({"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T00:00:01+00:00"}),
        );
        assert_eq!(ok.unwrap(), (1_767_225_600_000, 1_767_225_601_000));
        let bad = range(&serde_json::json!({"from": "yesterday", "x": 1})).unwrap_err();
        let fields: Vec<_> = bad.fields().iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["x", "from", "to"]);
        let reversed = range(
            &serde_json::json!({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}),
        )
        .unwrap_err();
        assert_eq!(reversed.fields()[0].field, "to");
    }
}
