//! `POST /v1/subscriptions/{id}/pause` and `/resume`: operational state kept in the store,
//! not in the document, so config subscriptions can be paused too.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::super::ApiState;
use super::super::responses::{
    StoreUnavailable, Unauthorized, UnknownSubscription, push_subscription, unavailable,
    unknown_subscription,
};
use super::schema::Subscription as SubscriptionView;
use super::view;
use crate::inbound::error::{ErrorBody, HttpError};

/// Pause a subscription.
///
/// Nothing is sent until it is resumed; events keep matching and queueing (ttl still
/// applies). Kept in the store: it holds across restarts and, on PostgreSQL, on every relay
/// within a second. Answered `200` if it was paused already.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{id}/pause",
    tag = "api",
    operation_id = "pauseSubscription",
    security(("apiToken" = []), ()),
    params(("id" = String, Path, description = "Subscription id or name.")),
    responses(
        (status = 200, description = "Paused; `delivery.state` is `paused`.", body = SubscriptionView),
        Unauthorized,
        UnknownSubscription,
        (status = 409, description = "A pull subscription has no delivery state (`conflict`).", body = ErrorBody),
        StoreUnavailable,
    )
)]
pub async fn pause(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Response, HttpError> {
    set(state, key, true).await
}

/// Resume a subscription.
///
/// Its queued deliveries go out in order, at its rate limit, with a closed breaker. Answered
/// `200` if it was not paused.
#[utoipa::path(
    post,
    path = "/v1/subscriptions/{id}/resume",
    tag = "api",
    operation_id = "resumeSubscription",
    security(("apiToken" = []), ()),
    params(("id" = String, Path, description = "Subscription id or name.")),
    responses(
        (status = 200, description = "Resumed.", body = SubscriptionView),
        Unauthorized,
        UnknownSubscription,
        (status = 409, description = "A pull subscription has no delivery state (`conflict`).", body = ErrorBody),
        StoreUnavailable,
    )
)]
pub async fn resume(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Response, HttpError> {
    set(state, key, false).await
}

async fn set(state: ApiState, key: String, paused: bool) -> Result<Response, HttpError> {
    let sub = push_subscription(&state.catalog, &key, |_| {
        "a pull subscription has no delivery state to pause or resume".into()
    })?;
    // On its own task: a client that gives up does not leave the store and the relay apart.
    let dispatcher = state.dispatcher.clone();
    let name = sub.name.clone();
    let done = tokio::spawn(async move { dispatcher.set_paused(&name, paused, "api").await })
        .await
        .map_err(|_| {
            HttpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the change failed; see the relay's log",
            )
        })?;
    done.map_err(unavailable)?
        .ok_or_else(|| unknown_subscription(&key))?;
    Ok(axum::Json(view(&state, &sub)).into_response())
}
