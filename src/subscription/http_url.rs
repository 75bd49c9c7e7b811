//! The URLs a subscription sends to (its `url`, an OAuth2 `token_url`): http or https, with
//! a host and without credentials.

use reqwest::Url;

use crate::yaml::Issues;

/// `text` as a URL the relay may send to, or the reason under `path`.
pub(super) fn parse_url(text: &str, path: &str, issues: &mut Issues) -> Option<Url> {
    let url = match Url::parse(text) {
        Ok(u) => u,
        Err(e) => {
            issues.push(path, format!("{text:?} is not a URL: {e}"));
            return None;
        }
    };
    if !matches!(url.scheme(), "http" | "https") {
        issues.push(
            path,
            format!("scheme {:?} is not http or https", url.scheme()),
        );
        return None;
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Credentials in a URL end up in logs; auth keeps them secret.
        issues.push(path, "must not carry credentials; use auth.basic instead");
        return None;
    }
    if url.host().is_none() {
        issues.push(path, "has no host");
        return None;
    }
    Some(url)
}
