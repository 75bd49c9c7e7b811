//! A delivery's attempt history: every attempt, oldest first.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::responses::{StoreUnavailable, Unauthorized, unavailable};
use super::{ApiState, parse_id};
use crate::inbound::error::{ErrorBody, HttpError};
use crate::store::{AttemptView, DeliveryId};

/// A delivery's attempts.
#[derive(Serialize, ToSchema)]
struct AttemptList<'a> {
    /// Delivery id.
    #[schema(value_type = i64)]
    id: DeliveryId,
    /// Every attempt, oldest first (the numbers of a pull subscription's hand-outs are
    /// counted in `attempts` but not listed).
    attempts: Vec<AttemptView<'a>>,
}

/// A delivery's attempts.
///
/// Every attempt of the delivery, oldest first, with its time, duration, status, result and
/// error. Kept as long as the delivery (`storage.retention` after it finished).
#[utoipa::path(
    get,
    path = "/v1/deliveries/{id}/attempts",
    tag = "api",
    operation_id = "listDeliveryAttempts",
    security(("apiToken" = []), ()),
    params(("id" = i64, Path, description = "Delivery id.")),
    responses(
        (status = 200, description = "The attempts, oldest first.", body = AttemptList),
        Unauthorized,
        (status = 404, description = "No such delivery, or pruned after `storage.retention` (`not_found`).", body = ErrorBody),
        StoreUnavailable,
    )
)]
pub(super) async fn attempts(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let n = parse_id(&id)?;
    let Some(all) = state.store.attempts(n).await.map_err(unavailable)? else {
        return Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no delivery {n} (unknown, or pruned after storage.retention)"),
        ));
    };
    Ok(Json(AttemptList {
        id: n,
        attempts: all.iter().map(|a| a.view()).collect(),
    })
    .into_response())
}
