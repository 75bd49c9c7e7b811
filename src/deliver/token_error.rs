//! Why an OAuth2 token could not be had: the error of `oauth2::TokenSource`, which
//! `verdict::classify` turns into an `auth_error` attempt. Its own file so the verdict does
//! not depend on the token source.

use std::time::Duration;

use crate::yaml::fmt_duration;

/// Why no token could be had; each becomes an `auth_error` attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The endpoint refused with an RFC 6749 §5.2 error (`invalid_client`, ...).
    #[error("oauth2: token endpoint answered {status} {error}{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Refused {
        /// The answer's status.
        status: u16,
        /// Its `error` code.
        error: String,
        /// Its `error_description`, clipped.
        description: Option<String>,
        /// Its `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// Another failing status, without an error we can show (its body is never echoed).
    #[error("oauth2: token endpoint answered {status}")]
    Status {
        /// The answer's status.
        status: u16,
        /// Its `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// No answer: connection, TLS or the destination guard.
    #[error("oauth2: cannot reach the token endpoint: {0}")]
    Unreachable(String),
    /// A success answer without a usable bearer token.
    #[error("oauth2: the token endpoint's answer holds no usable token ({0})")]
    Malformed(String),
    /// No answer within the fetch's share of the attempt timeout.
    #[error("oauth2: no answer from the token endpoint within {}", fmt_duration(*.0))]
    TimedOut(Duration),
}

impl TokenError {
    /// The token endpoint's status, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            TokenError::Refused { status, .. } | TokenError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The token endpoint's `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TokenError::Refused { retry_after, .. } | TokenError::Status { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
}
