//! The error answers that the api listener's routes share: how each is made, and its row
//! in the OpenAPI document (the rows only describe; the handlers answer with an `HttpError`).

use axum::http::StatusCode;
use utoipa::IntoResponses;

use crate::catalog::CatalogError;
use crate::inbound::error::{ErrorBody, HttpError};
use crate::store::StoreError;

impl From<CatalogError> for HttpError {
    fn from(e: CatalogError) -> HttpError {
        match e {
            CatalogError::NotFound(key) => unknown_subscription(&key),
            CatalogError::Store(e) => unavailable(e),
            CatalogError::NameTaken(_)
            | CatalogError::StoredNameTaken(_)
            | CatalogError::Full(_)
            | CatalogError::MetricsFull
            | CatalogError::ReadOnly(_)
            | CatalogError::ApiNameClash { .. } => {
                HttpError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
        }
    }
}

/// `503` when the store fails (logged).
pub(super) fn unavailable(e: StoreError) -> HttpError {
    tracing::warn!(error = %e, "store request failed");
    HttpError::store_unavailable("the store cannot answer right now; retry shortly")
}

/// `404` for a subscription id or name that names none.
pub(super) fn unknown_subscription(name: &str) -> HttpError {
    HttpError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no subscription {name:?}"),
    )
}

/// The push subscription `key` (id or name): `404` when unknown, `409` (`conflict`,
/// saying `why`) for a pull subscription.
pub(super) fn push_subscription(
    catalog: &crate::catalog::Catalog,
    key: &str,
    why: impl FnOnce(&str) -> String,
) -> Result<std::sync::Arc<crate::subscription::Subscription>, HttpError> {
    let sub = catalog.find(key).ok_or_else(|| unknown_subscription(key))?;
    if sub.push().is_none() {
        return Err(HttpError::new(
            StatusCode::CONFLICT,
            "conflict",
            why(&sub.name),
        ));
    }
    Ok(sub)
}

/// `401` on the api listener.
#[derive(IntoResponses)]
#[response(
    status = 401,
    description = "`api.token` is set and the bearer token is missing or wrong (`unauthorized`).",
    headers(("WWW-Authenticate" = String, description = "`Bearer`"))
)]
#[allow(dead_code)]
pub(super) struct Unauthorized(ErrorBody<'static>);

/// `404` for a subscription id or name that names none.
#[derive(IntoResponses)]
#[response(
    status = 404,
    description = "No subscription has that id or name (`not_found`)."
)]
#[allow(dead_code)]
pub(super) struct UnknownSubscription(ErrorBody<'static>);

/// `503` when the store fails.
#[derive(IntoResponses)]
#[response(
    status = 503,
    description = "The store cannot answer now (`store_unavailable`); retry after `Retry-After`.",
    headers(("Retry-After" = u64, description = "Seconds to wait: `1`."))
)]
#[allow(dead_code)]
pub(super) struct StoreUnavailable(ErrorBody<'static>);
