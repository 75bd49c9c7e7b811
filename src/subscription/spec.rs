//! The subscription document as declared: kept with its secrets for the store, shown
//! without them (the API's view and `Debug`), and refilled from the stored one when a client
//! sends back what it was shown.

use std::fmt;

use serde_json::Value as Json;

use super::Subscription;
use crate::secret::{Keyring, KeyringError};
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
        for (path, hide) in SECRETS {
            match (hide, path.split_last()) {
                (Hide::Remove, Some((Step::Key(key), parent))) => {
                    visit(&mut doc, parent, &mut |v| {
                        if let Some(map) = v.as_object_mut() {
                            map.remove(*key);
                        }
                    })
                }
                // A `null` stays: it shows a member left out, not a secret.
                _ => visit(&mut doc, path, &mut |v| {
                    if !v.is_null() {
                        *v = Json::Object(Default::default())
                    }
                }),
            }
        }
        doc
    }

    /// The document to store: with keys, every secret string becomes
    /// `{"$enc": "v1:<key id>:..."}`; without, the document as it is.
    pub fn sealed(&self, keys: &Keyring) -> Result<Json, KeyringError> {
        let mut doc = self.0.clone();
        if keys.is_empty() {
            return Ok(doc);
        }
        let mut result = Ok(());
        for (path, _) in SECRETS {
            visit(&mut doc, path, &mut |v| seal_strings(v, keys, &mut result));
        }
        result.map(|()| doc)
    }
}

/// The key that marks a sealed secret in a stored document.
const SEALED: &str = "$enc";

/// One step towards secrets in a subscription document.
#[derive(Clone, Copy)]
enum Step {
    /// The value under a key of an object.
    Key(&'static str),
    /// Every value of an object.
    Values,
    /// Every item of a list.
    Items,
}

/// How the API's view hides a secret.
#[derive(Clone, Copy)]
enum Hide {
    /// The key is left out.
    Remove,
    /// The value shows as `{}`, so a client can send it back to keep it.
    Empty,
}

/// Where secrets sit in a subscription document: the one list that the API's view
/// (`redacted`), encryption at rest (`sealed`, `open_secrets`) and, checked by a test,
/// `keep_secrets` follow.
const SECRETS: &[(&[Step], Hide)] = &[
    // Custom headers often carry API keys, so their values count as secrets too.
    (&[Step::Key("headers"), Step::Values], Hide::Empty),
    (&[Step::Key("pull"), Step::Key("token")], Hide::Remove),
    (
        &[Step::Key("email"), Step::Key("smtp"), Step::Key("password")],
        Hide::Remove,
    ),
    (
        &[Step::Key("signing"), Step::Key("secrets"), Step::Items],
        Hide::Empty,
    ),
    (
        &[Step::Key("auth"), Step::Key("basic"), Step::Key("password")],
        Hide::Remove,
    ),
    // A string, or `{"token": ...}`.
    (&[Step::Key("auth"), Step::Key("bearer")], Hide::Empty),
    (
        &[
            Step::Key("auth"),
            Step::Key("oauth2"),
            Step::Key("client_secret"),
        ],
        Hide::Remove,
    ),
    // Inline PEM of the client certificate's private key.
    (&[Step::Key("tls"), Step::Key("client_key")], Hide::Remove),
];

/// Calls `f` on every value at `path` in `doc`.
fn visit(doc: &mut Json, path: &[Step], f: &mut dyn FnMut(&mut Json)) {
    match path.split_first() {
        None => f(doc),
        Some((Step::Key(key), rest)) => {
            if let Some(v) = doc.get_mut(*key) {
                visit(v, rest, f);
            }
        }
        Some((Step::Values, rest)) => {
            for v in doc.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
                visit(v, rest, f);
            }
        }
        Some((Step::Items, rest)) => {
            for v in doc.as_array_mut().into_iter().flatten() {
                visit(v, rest, f);
            }
        }
    }
}

/// Seals every string in `v` (a secret, or an object holding one); keeps the first error.
fn seal_strings(v: &mut Json, keys: &Keyring, result: &mut Result<(), KeyringError>) {
    match v {
        Json::String(plain) => match keys.seal(plain) {
            Some(Ok(sealed)) => *v = serde_json::json!({ SEALED: sealed }),
            Some(Err(e)) => keep_first(result, e),
            None => {}
        },
        Json::Object(map) => map.values_mut().for_each(|v| seal_strings(v, keys, result)),
        Json::Array(items) => items.iter_mut().for_each(|v| seal_strings(v, keys, result)),
        _ => {}
    }
}

fn keep_first(result: &mut Result<(), KeyringError>, e: KeyringError) {
    if result.is_ok() {
        *result = Err(e);
    }
}

/// Opens the sealed secrets of a stored document in place; plaintext ones (stored before a
/// key was set) stay as they are.
pub fn open_secrets(doc: &mut Json, keys: &Keyring) -> Result<(), KeyringError> {
    let mut result = Ok(());
    for (path, _) in SECRETS {
        visit(doc, path, &mut |v| open_sealed(v, keys, &mut result));
    }
    result
}

fn open_sealed(v: &mut Json, keys: &Keyring, result: &mut Result<(), KeyringError>) {
    match v {
        Json::Object(map) if map.len() == 1 && map.contains_key(SEALED) => {
            let opened = match &map[SEALED] {
                Json::String(sealed) => keys.open(sealed),
                _ => Err(KeyringError::Malformed),
            };
            match opened {
                Ok(plain) => *v = Json::String(plain),
                Err(e) => keep_first(result, e),
            }
        }
        Json::Object(map) => map.values_mut().for_each(|v| open_sealed(v, keys, result)),
        Json::Array(items) => items.iter_mut().for_each(|v| open_sealed(v, keys, result)),
        _ => {}
    }
}

impl fmt::Debug for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.redacted())
    }
}

/// After a merge patch, which starts from the stored document with its secrets: a secret
/// whose destination the patch moved without giving it again is dropped, as a PUT would not
/// keep it (the OAuth2 client secret when `token_url` or `client_id` changed, the SMTP
/// password when `host` or `username` did), so it is never sent somewhere new; the change
/// is then refused as keeping a secret the subscription does not have.
pub fn forget_moved_secrets(doc: &mut Json, stored: &Json, patch: &Json) {
    for (at, moved_by, secret) in [
        (
            ["auth", "oauth2"],
            ["token_url", "client_id"],
            "client_secret",
        ),
        (["email", "smtp"], ["host", "username"], "password"),
    ] {
        let section = |d: &Json| d.get(at[0]).and_then(|v| v.get(at[1])).cloned();
        let given = section(patch).is_some_and(|p| p.get(secret).is_some());
        let (Some(now), Some(before)) = (section(doc), section(stored)) else {
            continue;
        };
        if !given
            && moved_by.iter().any(|k| now.get(*k) != before.get(*k))
            && let Some(obj) = doc
                .get_mut(at[0])
                .and_then(|v| v.get_mut(at[1]))
                .and_then(Json::as_object_mut)
        {
            obj.remove(secret);
        }
    }
}

/// Fills secrets omitted from `doc` (a password left out of `auth.basic`, an empty
/// `auth.bearer` object, an `auth.oauth2.client_secret` left out for the same endpoint and
/// client, a header whose value is `{}`, a `pull.token` or `tls.client_key` left out) from
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
    // host and username stay the same: never sent to another server.
    let stored_smtp = stored.get("email").and_then(|e| e.get("smtp"));
    if let Some(smtp) = doc
        .get_mut("email")
        .and_then(|e| e.get_mut("smtp"))
        .and_then(Json::as_object_mut)
        && !smtp.contains_key("password")
        && smtp.get("username").is_some()
        && smtp.get("username") == stored_smtp.and_then(|s| s.get("username"))
        && smtp.get("host") == stored_smtp.and_then(|s| s.get("host"))
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
    // A client key left out keeps the stored one while a certificate is given; the key check
    // catches a key kept for a new certificate it does not fit.
    if let Some(tls) = doc.get_mut("tls").and_then(Json::as_object_mut)
        && !tls.contains_key("client_key")
        && tls.get("client_cert").is_some_and(|c| !c.is_null())
        && let Some(key) = stored.get("tls").and_then(|t| t.get("client_key"))
    {
        tls.insert("client_key".into(), key.clone());
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
    // An OAuth2 client secret left out keeps the stored one only for the same token
    // endpoint and client: a changed `token_url` must not get the stored secret.
    let stored_oauth2 = stored_auth.and_then(|a| a.get("oauth2"));
    if let Some(oauth2) = auth.get_mut("oauth2").and_then(Json::as_object_mut)
        && !oauth2.contains_key("client_secret")
        && let Some(stored) = stored_oauth2
        && ["token_url", "client_id"]
            .iter()
            .all(|k| oauth2.get(*k).is_some() && oauth2.get(*k) == stored.get(*k))
        && let Some(secret) = stored.get("client_secret")
    {
        oauth2.insert("client_secret".into(), secret.clone());
    }
}

/// Where `doc`, after [`keep_secrets`], still asks to keep a secret that was never stored: a
/// `{}` header value, signing secret or bearer, or a basic or SMTP password, OAuth2 client
/// secret or TLS client key left out.
pub fn unkept_secrets(doc: &Json) -> Vec<String> {
    let empty = |v: &Json| v.as_object().is_some_and(|o| o.is_empty());
    let mut found = Vec::new();
    if let Some(headers) = doc.get("headers").and_then(Json::as_object) {
        for (name, _) in headers.iter().filter(|(_, v)| empty(v)) {
            found.push(format!("headers.{name}"));
        }
    }
    let secrets = doc.get("signing").and_then(|s| s.get("secrets"));
    for (i, _) in secrets
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter(|(_, v)| empty(v))
    {
        found.push(format!("signing.secrets[{i}]"));
    }
    let auth = doc.get("auth");
    if auth.and_then(|a| a.get("bearer")).is_some_and(empty) {
        found.push("auth.bearer".into());
    }
    if let Some(basic) = auth.and_then(|a| a.get("basic")).and_then(Json::as_object)
        && basic.get("password").is_none_or(Json::is_null)
    {
        found.push("auth.basic.password".into());
    }
    if let Some(oauth2) = auth.and_then(|a| a.get("oauth2")).and_then(Json::as_object)
        && oauth2.get("client_secret").is_none_or(Json::is_null)
    {
        found.push("auth.oauth2.client_secret".into());
    }
    let smtp = doc.get("email").and_then(|e| e.get("smtp"));
    if smtp
        .and_then(|s| s.get("username"))
        .is_some_and(|u| !u.is_null())
        && smtp
            .and_then(|s| s.get("password"))
            .is_none_or(Json::is_null)
    {
        found.push("email.smtp.password".into());
    }
    let tls = doc.get("tls");
    if tls
        .and_then(|t| t.get("client_cert"))
        .is_some_and(|c| !c.is_null())
        && tls
            .and_then(|t| t.get("client_key"))
            .is_none_or(Json::is_null)
    {
        found.push("tls.client_key".into());
    }
    found
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A document with a secret at every path in `SECRETS`.
    fn every_secret() -> Json {
        json!({
            "url": "https://example.com/hook",
            "headers": {"X-Api-Key": "header-secret", "X-Other": "header-secret-2"},
            "auth": {"basic": {"username": "u", "password": "basic-secret"},
                     "bearer": {"token": "bearer-secret"},
                     "oauth2": {"token_url": "https://idp.example/token", "client_id": "c",
                                "client_secret": "oauth2-secret"}},
            "signing": {"secrets": ["whsec-secret-1", "whsec-secret-2"]},
            "email": {"to": ["a@example.com"], "smtp": {"host": "mail", "username": "u",
                      "password": "smtp-secret"}},
            "pull": {"token": "pull-secret"},
            "tls": {"client_cert": "-----BEGIN CERTIFICATE-----",
                    "client_key": "-----BEGIN PRIVATE KEY-----tls-key-secret"},
            "filter": {"data.kind": "not-a-secret"}
        })
    }

    const PLAINTEXTS: &[&str] = &[
        "header-secret",
        "basic-secret",
        "bearer-secret",
        "oauth2-secret",
        "whsec-secret",
        "smtp-secret",
        "pull-secret",
        "tls-key-secret",
    ];

    fn ring(keys: &[(&str, u8)]) -> Keyring {
        Keyring::new(
            keys.iter()
                .map(|(id, b)| (id.to_string(), [*b; crate::secret::KEY_LEN]))
                .collect(),
        )
    }

    #[test]
    fn a_null_secret_member_shows_as_null_and_unkept_ones_are_named() {
        let doc = serde_json::json!({"auth": {"basic": {"username": "u"}, "bearer": null},
            "headers": {"x-a": {}, "x-b": "v"}, "signing": {"secrets": ["whsec_x", {}]},
            "email": {"smtp": {"username": "relay"}}, "tls": {"client_cert": "c"}});
        let shown = Spec(doc.clone()).redacted();
        assert_eq!(shown["auth"]["bearer"], Json::Null);
        assert_eq!(
            unkept_secrets(&doc),
            [
                "headers.x-a",
                "signing.secrets[1]",
                "auth.basic.password",
                "email.smtp.password",
                "tls.client_key"
            ]
        );
        assert!(unkept_secrets(&every_secret()).is_empty());
    }

    #[test]
    fn one_list_of_secret_paths_drives_the_view_the_refill_and_the_sealing() {
        let doc = every_secret();
        // Every path names something in the sample, so a path added to the list must be
        // added here, and so is checked against `keep_secrets` below.
        for (path, _) in SECRETS {
            let mut found = 0;
            visit(&mut doc.clone(), path, &mut |_| found += 1);
            assert!(found > 0, "the sample has nothing at a secret path");
        }
        let shown = Spec(doc.clone()).redacted().to_string();
        for plain in PLAINTEXTS {
            assert!(!shown.contains(plain), "{plain} shown in {shown}");
        }
        assert!(shown.contains("not-a-secret"));
        // What the API shows, sent back, keeps every stored secret.
        let mut sent_back = Spec(doc.clone()).redacted();
        keep_secrets(&mut sent_back, &doc, true);
        assert_eq!(sent_back, doc);
    }

    #[test]
    fn an_oauth2_secret_is_kept_only_for_the_same_endpoint_and_client() {
        let stored = every_secret();
        let shown = Spec(stored.clone()).redacted();
        assert!(shown["auth"]["oauth2"].get("client_secret").is_none());
        for (key, other) in [
            ("token_url", "https://attacker.example/token"),
            ("client_id", "d"),
        ] {
            let mut doc = shown.clone();
            doc["auth"]["oauth2"][key] = other.into();
            keep_secrets(&mut doc, &stored, true);
            assert!(
                doc["auth"]["oauth2"].get("client_secret").is_none(),
                "{key}"
            );
            assert!(unkept_secrets(&doc).contains(&"auth.oauth2.client_secret".to_string()));
        }
        let mut doc = shown.clone();
        doc["auth"]["oauth2"]["client_secret"] = "new-secret".into();
        keep_secrets(&mut doc, &stored, true);
        assert_eq!(doc["auth"]["oauth2"]["client_secret"], "new-secret");
    }

    #[test]
    fn a_tls_key_is_kept_only_beside_a_certificate() {
        let stored = json!({"tls": {"client_cert": "c", "client_key": "k"}});
        let mut with_cert = json!({"tls": {"client_cert": "c2"}});
        keep_secrets(&mut with_cert, &stored, true);
        assert_eq!(with_cert["tls"]["client_key"], "k");
        // Without a certificate there is nothing for the key to serve: not refilled.
        let mut ca_only = json!({"tls": {"ca": "r"}});
        keep_secrets(&mut ca_only, &stored, true);
        assert_eq!(ca_only, json!({"tls": {"ca": "r"}}));
        assert!(unkept_secrets(&ca_only).is_empty());
    }

    #[test]
    fn sealed_specs_hold_no_secret_and_open_to_the_original() {
        let doc = every_secret();
        let keys = ring(&[("k1", 1)]);
        let mut stored = Spec(doc.clone()).sealed(&keys).unwrap();
        let text = stored.to_string();
        for plain in PLAINTEXTS {
            assert!(!text.contains(plain), "{plain} in {text}");
        }
        assert_eq!(stored["auth"]["basic"]["username"], "u");
        assert_eq!(stored["filter"]["data.kind"], "not-a-secret");
        assert!(
            stored["pull"]["token"]["$enc"]
                .as_str()
                .unwrap()
                .starts_with("v1:k1:")
        );
        open_secrets(&mut stored, &keys).unwrap();
        assert_eq!(stored, doc);
    }

    #[test]
    fn without_keys_specs_are_stored_as_they_are() {
        let doc = every_secret();
        assert_eq!(Spec(doc.clone()).sealed(&Keyring::default()).unwrap(), doc);
        // Plaintext rows stored before a key was set still load once one is.
        let mut plain = doc.clone();
        open_secrets(&mut plain, &ring(&[("k1", 1)])).unwrap();
        assert_eq!(plain, doc);
    }

    #[test]
    fn rotation_and_unknown_keys() {
        let doc = every_secret();
        let mut old = Spec(doc.clone()).sealed(&ring(&[("old", 1)])).unwrap();
        let rotated = ring(&[("new", 2), ("old", 1)]);
        let resealed = Spec(doc.clone()).sealed(&rotated).unwrap();
        assert!(resealed.to_string().contains("v1:new:"));
        assert!(!resealed.to_string().contains("v1:old:"));
        let mut unknown = old.clone();
        assert_eq!(
            open_secrets(&mut unknown, &ring(&[("new", 2)])),
            Err(KeyringError::UnknownKey("old".into()))
        );
        open_secrets(&mut old, &rotated).unwrap();
        assert_eq!(old, doc);
    }
}
