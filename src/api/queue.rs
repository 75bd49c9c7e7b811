//! The queue per subscription: depth, in flight, oldest, dead letters (`GET /v1/queue`), read
//! from the same one-statement figures the Prometheus gauges use.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiState;
use super::responses::{StoreUnavailable, Unauthorized, unavailable};
use crate::inbound::error::{ErrorBody, HttpError};
use crate::store::QueueStats;
use crate::time::rfc3339;

/// Every subscription's queue.
#[derive(Serialize, ToSchema)]
struct Queues {
    /// The subscriptions in force in configuration order (the config's, then the API's),
    /// then any other name the store still holds deliveries of, by name.
    subscriptions: Vec<Queue>,
}

/// One subscription's queue.
#[derive(Serialize, ToSchema)]
struct Queue {
    /// Subscription name.
    #[schema(example = "billing")]
    subscription: String,
    /// Deliveries not finished: `pending`, `in_flight` and `waiting`.
    depth: u64,
    /// Of them, those claimed for an attempt now (`in_flight`).
    in_flight: u64,
    /// When the oldest of them was accepted; `null` when there is none.
    #[schema(required = true, example = "2026-11-22T20:58:50.730Z")]
    oldest_at: Option<String>,
    /// `failed` deliveries kept (dead letters).
    dead_letters: u64,
    /// `orphaned` deliveries, kept for a subscription no longer in force.
    orphaned: u64,
}

impl Queue {
    fn new(subscription: String, s: QueueStats) -> Queue {
        Queue {
            subscription,
            depth: s.depth,
            in_flight: s.in_flight,
            oldest_at: s.oldest_ms.map(rfc3339),
            dead_letters: s.dead_letters,
            orphaned: s.orphaned,
        }
    }
}

/// Queue figures per subscription.
///
/// For every subscription in force, and every other name the store still holds unfinished,
/// failed or orphaned deliveries of: the deliveries not yet finished, those of them in flight,
/// the oldest one's acceptance time, the dead letters and the orphans. On PostgreSQL the
/// figures are those of every relay sharing the schema.
#[utoipa::path(
    get,
    path = "/v1/queue",
    tag = "api",
    operation_id = "getQueue",
    security(("apiToken" = []), ()),
    responses(
        (status = 200, description = "The figures, one entry per subscription.", body = Queues,
            example = json!({"subscriptions": [{"subscription": "billing", "depth": 3, "in_flight": 1,
                "oldest_at": "2026-11-22T20:58:50.730Z", "dead_letters": 2, "orphaned": 0}]})),
        Unauthorized,
        (status = 422, description = "A query parameter was given; the route takes none (`invalid_query`).", body = ErrorBody),
        StoreUnavailable,
    )
)]
pub(super) async fn queue(
    State(state): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, HttpError> {
    if !q.is_empty() {
        let mut error = HttpError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            "this route takes no query parameters",
        );
        for key in q.keys() {
            error = error.field(key.clone(), "unknown parameter");
        }
        return Err(error);
    }
    let mut stats = state.store.stats().await.map_err(unavailable)?;
    let mut subscriptions: Vec<Queue> = state
        .catalog
        .matcher()
        .names()
        .into_iter()
        .map(|name| {
            let figures = stats.remove(&name).unwrap_or_default();
            Queue::new(name, figures)
        })
        .collect();
    let mut others: Vec<(String, QueueStats)> = stats.into_iter().collect();
    others.sort_by(|a, b| a.0.cmp(&b.0));
    subscriptions.extend(others.into_iter().map(|(name, s)| Queue::new(name, s)));
    Ok(Json(Queues { subscriptions }).into_response())
}
