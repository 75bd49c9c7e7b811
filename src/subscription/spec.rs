//! The subscription document as declared: kept with its secrets for the store, shown
//! without them (the API's view and `Debug`), and refilled from the stored one when a client
//! sends back what it was shown.

use std::fmt;

use serde_json::Value as Json;

use super::Subscription;
use crate::time::rfc3339;

/// A subscription document as declared, secrets included. Its `Debug` shows the redacted
/// view, so logging a subscription cannot leak a credential.
#[derive(Clone, PartialEq)]
pub struct Spec(pub(super) Json);

impl Spec {
    /// The document with its secrets; only for storing it.
    pub fn expose(&self) -> &Json {
        &self.0
    }

    /// The document without secrets: passwords, tokens and header values are removed; their
    /// objects stay (a header's value shows as `{}`).
    pub fn redacted(&self) -> Json {
        let mut doc = self.0.clone();
        // Custom headers often carry API keys, so their values count as secrets too.
        if let Some(headers) = doc.get_mut("headers").and_then(Json::as_object_mut) {
            for value in headers.values_mut() {
                *value = Json::Object(Default::default());
            }
        }
        if let Some(pull) = doc.get_mut("pull").and_then(Json::as_object_mut) {
            pull.remove("token");
        }
        if let Some(smtp) = doc
            .get_mut("email")
            .and_then(|e| e.get_mut("smtp"))
            .and_then(Json::as_object_mut)
        {
            smtp.remove("password");
        }
        if let Some(secrets) = doc
            .get_mut("signing")
            .and_then(|s| s.get_mut("secrets"))
            .and_then(Json::as_array_mut)
        {
            for secret in secrets {
                *secret = Json::Object(Default::default());
            }
        }
        if let Some(auth) = doc.get_mut("auth").and_then(Json::as_object_mut) {
            if let Some(basic) = auth.get_mut("basic").and_then(Json::as_object_mut) {
                basic.remove("password");
            }
            if let Some(bearer) = auth.get_mut("bearer") {
                *bearer = Json::Object(Default::default());
            }
        }
        doc
    }
}

impl fmt::Debug for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.redacted())
    }
}

/// Fills secrets omitted from `doc` (a password left out of `auth.basic`, an empty
/// `auth.bearer` object, a header whose value is `{}`, a `pull.token` left out) from
/// `stored`, so a client can send back what it was shown; `"token": null` removes the pull
/// token. A merge patch already carries the stored token (or removed it on purpose), so it
/// passes `refill_pull_token: false`.
pub fn keep_secrets(doc: &mut Json, stored: &Json, refill_pull_token: bool) {
    if let Some(headers) = doc.get_mut("headers").and_then(Json::as_object_mut) {
        let stored_headers = stored.get("headers").and_then(Json::as_object);
        for (name, value) in headers.iter_mut() {
            let kept = stored_headers.and_then(|h| {
                h.iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v)
            });
            if value.as_object().is_some_and(|o| o.is_empty())
                && let Some(kept) = kept.filter(|v| v.is_string())
            {
                *value = kept.clone();
            }
        }
    }
    // A signing secret shown as `{}` keeps the stored secret at the same position.
    if let Some(secrets) = doc
        .get_mut("signing")
        .and_then(|s| s.get_mut("secrets"))
        .and_then(Json::as_array_mut)
    {
        let stored_secrets = stored
            .get("signing")
            .and_then(|s| s.get("secrets"))
            .and_then(Json::as_array);
        for (i, secret) in secrets.iter_mut().enumerate() {
            if secret.as_object().is_some_and(|o| o.is_empty())
                && let Some(kept) = stored_secrets
                    .and_then(|s| s.get(i))
                    .filter(|v| v.is_string())
            {
                *secret = kept.clone();
            }
        }
    }
    // An SMTP password left out (as the API shows it) keeps the stored one while the
    // username stays the same.
    let stored_smtp = stored.get("email").and_then(|e| e.get("smtp"));
    if let Some(smtp) = doc
        .get_mut("email")
        .and_then(|e| e.get_mut("smtp"))
        .and_then(Json::as_object_mut)
        && !smtp.contains_key("password")
        && smtp.get("username").is_some()
        && smtp.get("username") == stored_smtp.and_then(|s| s.get("username"))
        && let Some(password) = stored_smtp.and_then(|s| s.get("password"))
    {
        smtp.insert("password".into(), password.clone());
    }
    let stored_token = stored.get("pull").and_then(|p| p.get("token"));
    // A pull subscription sent back without its `pull` object keeps its token too.
    if refill_pull_token
        && doc.get("mode").and_then(Json::as_str) == Some("pull")
        && doc.get("pull").is_none()
        && let (Some(token), Some(map)) = (stored_token, doc.as_object_mut())
    {
        map.insert("pull".into(), serde_json::json!({ "token": token }));
    }
    if let Some(pull) = doc.get_mut("pull").and_then(Json::as_object_mut) {
        match pull.get("token") {
            // An explicit null removes the token.
            Some(Json::Null) => {
                pull.remove("token");
            }
            Some(_) => {}
            None => {
                if let Some(token) = stored_token.filter(|_| refill_pull_token) {
                    pull.insert("token".into(), token.clone());
                }
            }
        }
    }
    let stored_auth = stored.get("auth");
    let Some(auth) = doc.get_mut("auth").and_then(Json::as_object_mut) else {
        return;
    };
    if let Some(basic) = auth.get_mut("basic").and_then(Json::as_object_mut)
        && !basic.contains_key("password")
        && let Some(password) = stored_auth
            .and_then(|a| a.get("basic"))
            .and_then(|b| b.get("password"))
    {
        basic.insert("password".into(), password.clone());
    }
    if let Some(bearer) = auth.get_mut("bearer")
        && bearer.as_object().is_some_and(|o| !o.contains_key("token"))
        && let Some(token) = stored_auth.and_then(|a| a.get("bearer")).and_then(|b| {
            b.as_str()
                .map(|t| Json::String(t.into()))
                .or_else(|| b.get("token").cloned())
        })
    {
        *bearer = serde_json::json!({ "token": token });
    }
}

impl Subscription {
    /// The API's view: the document as declared without secrets, plus id, name and source.
    pub fn view(&self) -> Json {
        let mut doc = match self.spec.redacted() {
            Json::Object(map) => map,
            _ => Default::default(),
        };
        doc.insert("id".into(), self.id.clone().into());
        doc.insert("name".into(), self.name.clone().into());
        doc.insert("source".into(), self.source.as_str().into());
        if let Some((created, updated)) = self.changed {
            doc.insert("created_at".into(), rfc3339(created).into());
            doc.insert("updated_at".into(), rfc3339(updated).into());
        }
        Json::Object(doc)
    }
}
