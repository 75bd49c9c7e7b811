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

    /// True when `headers` carry `Authorization: Bearer <this secret>` (constant time). The
    /// scheme is case-insensitive (RFC 9110 11.1): `bearer` and `BEARER` count too.
    pub fn is_bearer_of(&self, headers: &http::HeaderMap) -> bool {
        let given = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, token)| token.trim_start_matches(' '));
        bool::from(subtle::ConstantTimeEq::ct_eq(
            given.as_bytes(),
            self.0.as_bytes(),
        ))
    }
}

/// What a token may hold, for the refusal: [`is_token`] in words.
pub const TOKEN_RULE: &str =
    "must be visible ASCII characters only, no spaces or control characters, and not empty";

/// True when `s` can be a bearer token: one or more visible ASCII characters (`!` to `~`).
/// A space, a control character or a non-ASCII one could never match: the check compares
/// the `Authorization` header's value, and an HTTP client trims or refuses those.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let secret = Secret::new("s3cret".into());
        let with = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
            secret.is_bearer_of(&headers)
        };
        for ok in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "Bearer  s3cret",
        ] {
            assert!(with(ok), "{ok}");
        }
        for bad in [
            "Bearer S3CRET",
            "Basic s3cret",
            "Bearers3cret",
            "s3cret",
            "Bearer",
        ] {
            assert!(!with(bad), "{bad}");
        }
        assert!(!secret.is_bearer_of(&http::HeaderMap::new()));
    }

    #[test]
    fn tokens_are_visible_ascii_without_spaces() {
        for ok in ["s3cret", "a.b-c_d~!", "Zm9vYmFy+/=="] {
            assert!(is_token(ok), "{ok}");
        }
        for bad in [
            "",
            "two words",
            "tab\there",
            "bell\u{7}",
            "t\u{f6}ken",
            "del\u{7f}",
        ] {
            assert!(!is_token(bad), "{bad:?}");
        }
    }
}
