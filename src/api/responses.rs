//! The error rows that the api listener's routes share in the OpenAPI document. They only
//! describe responses: the handlers answer with an `HttpError`.

use utoipa::IntoResponses;

use crate::inbound::error::ErrorBody;

/// `401` on the api listener.
#[derive(IntoResponses)]
#[response(
    status = 401,
    description = "`api.token` is set and the bearer token is missing or wrong (`unauthorized`).",
    headers(("WWW-Authenticate" = String, description = "`Bearer`"))
)]
#[allow(dead_code)]
pub struct Unauthorized(ErrorBody<'static>);

/// `404` for a subscription id or name that names none.
#[derive(IntoResponses)]
#[response(
    status = 404,
    description = "No subscription has that id or name (`not_found`)."
)]
#[allow(dead_code)]
pub struct UnknownSubscription(ErrorBody<'static>);

/// `503` when the store fails.
#[derive(IntoResponses)]
#[response(
    status = 503,
    description = "The store cannot answer now (`store_unavailable`); retry after `Retry-After`.",
    headers(("Retry-After" = u64, description = "Seconds to wait: `1`."))
)]
#[allow(dead_code)]
pub struct StoreUnavailable(ErrorBody<'static>);
