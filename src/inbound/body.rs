//! Request bodies as the handlers of every listener read them: bounded by a limit, declared
//! JSON, and parsed with errors in the one shape.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use utoipa::IntoResponses;

use super::error::{ErrorBody, HttpError};
use crate::media_type;

/// Reads the body up to `limit` bytes (the `setting` named in the error); more is `413`.
pub async fn read_body(body: Body, limit: usize, setting: &str) -> Result<Bytes, HttpError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if s.is::<http_body_util::LengthLimitError>() {
                return HttpError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("request body is larger than {setting} ({limit} bytes)"),
                );
            }
            source = s.source();
        }
        HttpError::new(
            StatusCode::BAD_REQUEST,
            "unreadable_body",
            "could not read the request body",
        )
    })
}

/// True when the request declares a JSON body ([`media_type::is_json`]).
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(media_type::is_json)
}

/// `415` unless the body is declared JSON.
pub fn require_json(headers: &HeaderMap) -> Result<(), HttpError> {
    if is_json(headers) {
        Ok(())
    } else {
        Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "content-type must be application/json",
        ))
    }
}

/// `400` for a body that is not JSON.
pub fn malformed(e: &serde_json::Error) -> HttpError {
    HttpError::new(
        StatusCode::BAD_REQUEST,
        "malformed_json",
        format!(
            "malformed JSON at line {}, column {}: {}",
            e.line(),
            e.column(),
            {
                let m = e.to_string();
                m.rfind(" at line ")
                    .map_or(m.clone(), |i| m[..i].to_string())
            }
        ),
    )
}

/// `400` of a route that reads a JSON body ([`read_body`], [`malformed`]).
// Only describes the response, for the OpenAPI document.
#[derive(IntoResponses)]
#[response(
    status = 400,
    description = "The body is not JSON (`malformed_json`) or could not be read (`unreadable_body`)."
)]
#[allow(dead_code)]
pub struct BadBody(ErrorBody<'static>);

/// `413` of a route whose body is bounded by `limits.max_body` ([`read_body`]).
// Only describes the response, for the OpenAPI document.
#[derive(IntoResponses)]
#[response(
    status = 413,
    description = "The body is larger than `limits.max_body` (`too_large`)."
)]
#[allow(dead_code)]
pub struct BodyTooLarge(ErrorBody<'static>);

/// `415` of a route that takes only JSON ([`require_json`]).
// Only describes the response, for the OpenAPI document.
#[derive(IntoResponses)]
#[response(
    status = 415,
    description = "The content type is not JSON (`unsupported_media_type`)."
)]
#[allow(dead_code)]
pub struct NotJson(ErrorBody<'static>);

#[cfg(test)]
mod tests {
    use super::*;

    fn with_type(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_bytes(value).unwrap(),
        );
        headers
    }

    #[test]
    fn a_body_is_json_when_its_content_type_says_so() {
        assert!(is_json(&with_type(b"application/json")));
        assert!(is_json(&with_type(
            b"Application/Problem+JSON; charset=utf-8"
        )));
        assert!(!is_json(&HeaderMap::new()));
        assert!(!is_json(&with_type(b"text/plain")));
        // No subtype before the suffix: not a media type.
        assert!(!is_json(&with_type(b"application/+json")));
        assert!(!is_json(&with_type(b"application/json\xff")));
        assert!(require_json(&with_type(b"text/json")).is_err());
    }
}
