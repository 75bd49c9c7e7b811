//! The layer that adds a subscription's `Authorization` header to each HTTP attempt, marked
//! sensitive so that no layer can log it.

use std::task::{Context, Poll};

use base64::Engine;
use http::HeaderValue;
use http::header::AUTHORIZATION;
use tower::{Layer, Service};

use crate::subscription::Auth;

/// Adds the subscription's `Authorization` header.
#[derive(Clone)]
pub struct AuthLayer {
    value: HeaderValue,
}

impl AuthLayer {
    /// The layer for `auth`; `None` for OAuth2, whose header comes from `oauth2::OAuth2Layer`.
    pub fn new(auth: &Auth) -> Option<Self> {
        let text = match auth {
            Auth::Basic { username, password } => {
                let raw = format!("{username}:{}", password.expose());
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                )
            }
            Auth::Bearer(token) => format!("Bearer {}", token.expose()),
            Auth::OAuth2(_) => return None,
        };
        // Validated at load; an impossible value degrades to no header rather than a panic.
        let mut value =
            HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""));
        value.set_sensitive(true);
        Some(AuthLayer { value })
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = SetAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SetAuth {
            inner,
            value: self.value.clone(),
        }
    }
}

/// Service made by [`AuthLayer`].
#[derive(Clone)]
pub struct SetAuth<S> {
    inner: S,
    value: HeaderValue,
}

impl<S: Service<reqwest::Request>> Service<reqwest::Request> for SetAuth<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: reqwest::Request) -> Self::Future {
        if !self.value.is_empty() {
            req.headers_mut().insert(AUTHORIZATION, self.value.clone());
        }
        self.inner.call(req)
    }
}
