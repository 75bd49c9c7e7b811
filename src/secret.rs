//! Secrets (passwords, tokens, keys): kept out of `Debug` and logs, compared in constant time.

use std::fmt;

mod keyring;

pub use keyring::{KEY_LEN, Keyring, KeyringError, valid_id};

/// A secret string whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: String) -> Self {
        Secret(s)
    }

    /// The secret itself; call only where it is sent.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when `headers` carry `Authorization: Bearer <this secret>` (constant time).
    pub fn is_bearer_of(&self, headers: &http::HeaderMap) -> bool {
        let given = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        bool::from(subtle::ConstantTimeEq::ct_eq(
            given.as_bytes(),
            self.0.as_bytes(),
        ))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}
