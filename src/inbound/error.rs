//! The one error shape of every listener: `{"error": {"code", "message", "fields"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response, on every listener.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    /// The error.
    error: &'a HttpError,
}

/// An HTTP error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(
    as = ErrorDetail,
    description = "A stable code, a message, and the fields at fault if any."
)]
pub struct HttpError {
    #[serde(skip)]
    status: StatusCode,
    #[serde(skip)]
    retry_after: Option<u64>,
    #[serde(skip)]
    bearer_challenge: bool,
    /// A stable machine-readable code, e.g. `not_found`, `invalid_subscription`, `too_large`.
    #[schema(value_type = String, example = "invalid_event")]
    code: &'static str,
    /// What went wrong, for people.
    #[schema(example = "type: missing")]
    message: String,
    /// Every invalid field, for validation errors; absent otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    fields: Vec<FieldError>,
}

/// One invalid field.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, ToSchema)]
pub struct FieldError {
    /// Path of the field, e.g. `type`, `retries` or `[1].type` (an element of a batch).
    #[schema(example = "type")]
    pub field: String,
    /// Why it is invalid.
    pub reason: String,
}

impl HttpError {
    /// An error with a status, a stable machine code and a human message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        HttpError {
            status,
            retry_after: None,
            bearer_challenge: false,
            code,
            message: message.into(),
            fields: Vec::new(),
        }
    }

    /// Adds an invalid field.
    pub fn field(mut self, field: impl Into<String>, reason: impl Into<String>) -> Self {
        self.fields.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
        self
    }

    /// Whether any invalid field was added.
    pub fn has_fields(&self) -> bool {
        !self.fields.is_empty()
    }

    /// The invalid fields added.
    pub fn fields(&self) -> &[FieldError] {
        &self.fields
    }

    /// Asks the client to retry after `secs` seconds.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// `503` (`store_unavailable`) with `Retry-After: 1`: the store cannot take or answer
    /// the request now.
    pub fn store_unavailable(message: impl Into<String>) -> Self {
        HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            message,
        )
        .retry_after(1)
    }

    /// `401` with `WWW-Authenticate: Bearer`.
    pub fn unauthorized() -> Self {
        HttpError {
            bearer_challenge: true,
            ..HttpError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token",
            )
        }
    }

    /// The status it is answered with.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

/// The fallback of every router: `404` in the JSON shape.
pub async fn no_such_endpoint() -> HttpError {
    HttpError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// `401` with `WWW-Authenticate: Bearer`, for a missing or wrong token.
pub fn unauthorized() -> Response {
    HttpError::unauthorized().into_response()
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(ErrorBody { error: &self })).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.bearer_challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Rewrites error responses made by middleware (timeouts, body limits, load shedding, unknown
/// routes) into the JSON error shape, so clients parse one format whatever answered.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such endpoint"),
        StatusCode::METHOD_NOT_ALLOWED => {
            ("method_not_allowed", "method not allowed on this endpoint")
        }
        StatusCode::PAYLOAD_TOO_LARGE => (
            "too_large",
            "request body is larger than limits.max_body (limits.max_batch_body for batches)",
        ),
        StatusCode::REQUEST_TIMEOUT => {
            ("timeout", "request took longer than limits.request_timeout")
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            ("unavailable", "the relay is overloaded; retry shortly")
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("unsupported_media_type", "expected application/json")
        }
        _ => ("error", status.canonical_reason().unwrap_or("error")),
    };
    let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
    let mut rewritten = HttpError::new(status, code, message).into_response();
    if let Some(v) = retry_after {
        rewritten.headers_mut().insert(header::RETRY_AFTER, v);
    } else if status == StatusCode::SERVICE_UNAVAILABLE {
        rewritten
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn store_unavailable_asks_for_a_retry_in_a_second() {
        let response = HttpError::store_unavailable("busy; retry shortly").into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(
            &body[..],
            br#"{"error":{"code":"store_unavailable","message":"busy; retry shortly"}}"#
        );
    }
}
