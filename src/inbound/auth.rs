//! The bearer check of a listener: a request validation layer that runs before any body is
//! read, so an unauthenticated client cannot make the relay buffer.

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use tower_http::validate_request::{ValidateRequest, ValidateRequestHeaderLayer};

use super::error::unauthorized;
use crate::secret::Secret;

/// Lets requests that carry `Authorization: Bearer <token>` through (compared in constant
/// time) and answers the others `401` with `WWW-Authenticate: Bearer`. `refused` sees each
/// refused request first, to count or log it.
pub fn require_bearer<F>(token: Secret, refused: F) -> ValidateRequestHeaderLayer<Bearer<F>>
where
    F: Fn(&Request) + Clone,
{
    ValidateRequestHeaderLayer::custom(Bearer { token, refused })
}

/// The check [`require_bearer`] runs on each request.
#[derive(Clone)]
pub struct Bearer<F> {
    token: Secret,
    refused: F,
}

impl<F: Fn(&Request)> ValidateRequest<Body> for Bearer<F> {
    type ResponseBody = Body;

    fn validate(&mut self, request: &mut Request) -> Result<(), Response> {
        if self.token.is_bearer_of(request.headers()) {
            return Ok(());
        }
        (self.refused)(request);
        Err(unauthorized())
    }
}
