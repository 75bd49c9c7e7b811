//! `auth.oauth2`: the OAuth2 client-credentials grant (RFC 6749 §4.4) a subscription's
//! tokens come from. Parsed and checked here; fetched and cached by `deliver::oauth2`.

use reqwest::Url;
use serde_yaml::Value;
use url::Host;

use super::http_url::parse_url;
use crate::secret::Secret;
use crate::yaml::{Issues, Section, as_list, as_string, describe, index};

/// Keys of `auth.oauth2`.
const KEYS: &[&str] = &[
    "token_url",
    "client_id",
    "client_secret",
    "scopes",
    "audience",
    "auth_style",
];

/// Where and how a subscription gets its bearer tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Settings {
    /// The token endpoint: https, or http to a loopback address.
    pub token_url: Url,
    /// The client's id (not secret).
    pub client_id: String,
    /// The client's secret.
    pub client_secret: Secret,
    /// Scopes asked for, sent space-separated; none when empty.
    pub scopes: Vec<String>,
    /// The `audience` form field some providers need.
    pub audience: Option<String>,
    /// How the client authenticates to the token endpoint.
    pub style: ClientAuthStyle,
}

/// How the client's id and secret reach the token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClientAuthStyle {
    /// `Authorization: Basic` (RFC 6749 §2.3.1), which every provider must accept.
    #[default]
    Basic,
    /// `client_id` and `client_secret` form fields, for providers that take only those.
    Body,
}

/// Parses `auth.oauth2` under `a` (the `auth` section).
pub(super) fn parse_oauth2(a: &Section<'_>, issues: &mut Issues) -> Option<OAuth2Settings> {
    let o = a.section("oauth2", KEYS, issues);
    let before = issues.0.len();
    let token_url = o.required("token_url", issues).and_then(|v| {
        let at = o.at("token_url");
        let url = parse_url(&as_string(v, &at, issues)?, &at, issues)?;
        if url.scheme() != "https" && !is_loopback(&url) {
            issues.push(&at, "must be https (http only to a loopback address)");
            return None;
        }
        Some(url)
    });
    let client_id = o.required("client_id", issues).and_then(|v| {
        let id = as_string(v, &o.at("client_id"), issues)?;
        if id.is_empty() || id.chars().any(char::is_control) {
            issues.push(
                &o.at("client_id"),
                "must not be empty or hold control characters",
            );
            return None;
        }
        Some(id)
    });
    let client_secret = o.required("client_secret", issues).and_then(|v| {
        let secret = as_string(v, &o.at("client_secret"), issues)?;
        if secret.is_empty() {
            issues.push(&o.at("client_secret"), "must not be empty");
            return None;
        }
        Some(Secret::new(secret))
    });
    let scopes = o.get("scopes").map_or_else(Vec::new, |v| {
        let at = o.at("scopes");
        let items = as_list(v, &at, issues).unwrap_or_default();
        let mut scopes = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let Some(scope) = as_string(item, &index(&at, i), issues) else {
                continue;
            };
            if is_scope(&scope) {
                scopes.push(scope);
            } else {
                issues.push(
                    &index(&at, i),
                    format!("{scope:?} is not a scope (no spaces, quotes or backslashes)"),
                );
            }
        }
        scopes
    });
    let audience = o.string("audience", issues);
    if audience
        .as_deref()
        .is_some_and(|a| a.is_empty() || a.chars().any(char::is_control))
    {
        issues.push(
            &o.at("audience"),
            "must not be empty or hold control characters",
        );
    }
    let style = match o.get("auth_style") {
        None => ClientAuthStyle::Basic,
        Some(Value::String(s)) if s == "basic" => ClientAuthStyle::Basic,
        Some(Value::String(s)) if s == "body" => ClientAuthStyle::Body,
        Some(other) => {
            issues.push(
                &o.at("auth_style"),
                format!("{} is not basic or body", describe(other)),
            );
            ClientAuthStyle::Basic
        }
    };
    if issues.0.len() != before {
        return None;
    }
    Some(OAuth2Settings {
        token_url: token_url?,
        client_id: client_id?,
        client_secret: client_secret?,
        scopes,
        audience,
        style,
    })
}

/// True when `url` names a loopback address (or `localhost`), where plain http cannot be
/// read on the wire.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// An RFC 6749 §3.3 scope-token: `%x21 / %x23-5B / %x5D-7E`, at least one.
fn is_scope(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_tokens_follow_rfc_6749() {
        assert!(is_scope("webhooks.write"));
        assert!(is_scope("api://x/.default"));
        for bad in ["", "a b", "a\"b", "a\\b", "é"] {
            assert!(!is_scope(bad), "{bad:?}");
        }
    }

    #[test]
    fn plain_http_only_to_loopback() {
        for ok in [
            "http://127.0.0.1:9/t",
            "http://[::1]/t",
            "http://localhost/t",
        ] {
            assert!(is_loopback(&Url::parse(ok).unwrap()), "{ok}");
        }
        for no in ["http://10.0.0.1/t", "http://idp.example/t"] {
            assert!(!is_loopback(&Url::parse(no).unwrap()), "{no}");
        }
    }
}
