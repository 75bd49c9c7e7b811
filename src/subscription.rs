//! Subscriptions: their validated form, and the registry that matches events to them through
//! an index by event type, so matching never scans subscriptions whose types cannot match.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use reqwest::Url;
use serde_json::Value as Json;
use serde_json::value::RawValue;
use serde_yaml::Value;

use crate::backoff::{Backoff, Curve};
use crate::destination::DestinationGuard;
use crate::email::EmailSettings;
use crate::filter::{FieldPath, Filter, Subject};
use crate::secret::Secret;
use crate::signing::SigningKey;
use crate::yaml::{
    Issues, Section, as_duration, as_float, as_integer, as_list, as_string, describe, index, kind,
};

/// Keys a subscription entry may have.
const KEYS: &[&str] = &[
    "name",
    "mode",
    "pull",
    "url",
    "email",
    "events",
    "filter",
    "retries",
    "timeout",
    "success_code",
    "backoff",
    "rate_limit",
    "max_in_flight",
    "auth",
    "headers",
    "signing",
    "ordering",
    "encoding",
];

/// Keys that only push subscriptions may have.
const PUSH_KEYS: &[&str] = &[
    "url",
    "encoding",
    "retries",
    "timeout",
    "success_code",
    "backoff",
    "rate_limit",
    "max_in_flight",
    "auth",
    "headers",
    "signing",
    "ordering",
];

/// Push keys that make no sense for e-mail (HTTP only).
const HTTP_KEYS: &[&str] = &[
    "url",
    "success_code",
    "auth",
    "headers",
    "signing",
    "encoding",
];

/// Extra keys of a subscription registered through the API.
const API_KEYS: &[&str] = &["metrics"];

/// Metric label shared by API subscriptions without their own series.
pub const SHARED_METRIC_LABEL: &str = "_api";

/// Headers the relay sets itself; a subscription may not override them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "user-agent",
];
const RESERVED_PREFIXES: &[&str] = &["webhook-", "hookrelay-"];

/// Where a subscription was declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The YAML file; read-only through the API.
    Config,
    /// Registered through the API and kept in the store.
    Api,
}

impl Source {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Api => "api",
        }
    }
}

/// A validated subscription, as the relay runs it.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Stable id: the name for config subscriptions, a UUIDv7 for API ones.
    pub id: String,
    /// Unique name, `[a-z0-9_-]{1,64}`; used in metric labels.
    pub name: String,
    /// Where it was declared.
    pub source: Source,
    /// Whether it has its own metric series (config ones always do).
    pub own_metrics: bool,
    /// Creation and last change, ms since the epoch (API subscriptions).
    pub changed: Option<(i64, i64)>,
    /// The document as declared, secrets included; shown only through [`Subscription::view`].
    pub spec: Spec,
    /// Where deliveries are POSTed; `None` for pull and e-mail subscriptions.
    pub url: Option<Url>,
    /// Where deliveries are mailed; `Some` for an e-mail subscription (`mode: email`).
    pub email: Option<Arc<EmailSettings>>,
    /// Pull settings; `Some` for a pull subscription (polled, never pushed).
    pub pull: Option<PullSettings>,
    /// Event types it selects.
    pub events: Vec<EventPattern>,
    /// Condition on the event's data.
    pub filter: Filter,
    /// Retries after the first attempt.
    pub retries: u32,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Statuses that count as delivered.
    pub success: SuccessCodes,
    /// Spacing of retries.
    pub backoff: Backoff,
    /// Optional outbound rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Concurrent attempts at most.
    pub max_in_flight: usize,
    /// Credentials sent with every attempt.
    pub auth: Option<Auth>,
    /// Extra headers sent with every attempt.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Keys every attempt is signed with (Standard Webhooks), in the configured order.
    pub signing: Vec<SigningKey>,
    /// Whether deliveries wait for earlier ones (of the same key).
    pub ordering: DeliveryOrder,
    /// How each attempt's body carries the event.
    pub encoding: Encoding,
}

/// The delivery order of a push subscription.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum DeliveryOrder {
    /// No order: deliveries go out in parallel (the default).
    #[default]
    None,
    /// One at a time, in acceptance order.
    Fifo,
    /// In acceptance order per value of this field of `data`; different values in parallel.
    Key(FieldPath),
}

impl DeliveryOrder {
    /// The ordering key of an event (`data` parsed, if it is JSON); `None` when unordered.
    /// Events without the field share one key, the empty string (a value's key is its JSON
    /// text, never empty).
    pub fn key_of(&self, data: Option<&Json>) -> Option<String> {
        match self {
            DeliveryOrder::None => None,
            DeliveryOrder::Fifo => Some(String::new()),
            DeliveryOrder::Key(path) => Some(
                data.and_then(|d| path.resolve(d))
                    .map(Json::to_string)
                    .unwrap_or_default(),
            ),
        }
    }
}

/// How a push subscription's attempts carry the event (`encoding`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Encoding {
    /// The data as received: an envelope event's `data` (JSON), a raw event's body with its
    /// content type.
    #[default]
    Raw,
    /// A JSON envelope: `{"id", "type", "received_at", "data"}`; a raw event's body goes in
    /// as a string (or `data_base64` when it is not UTF-8), with `content_type`.
    Envelope,
    /// `application/x-www-form-urlencoded` with the data in one field.
    Form {
        /// The field's name.
        field: String,
    },
}

/// Longest form field name.
const MAX_FORM_FIELD: usize = 128;

fn parse_encoding(s: &Section<'_>, issues: &mut Issues) -> Encoding {
    let Some(v) = s.get("encoding") else {
        return Encoding::Raw;
    };
    let at = s.at("encoding");
    match v {
        Value::String(text) if text == "raw" => Encoding::Raw,
        Value::String(text) if text == "envelope" => Encoding::Envelope,
        Value::Mapping(_) => {
            let e = s.section("encoding", &["form"], issues);
            let Some(form) = e.get("form") else {
                issues.push(&at, "needs form (or use raw or envelope)");
                return Encoding::Raw;
            };
            if !matches!(form, Value::Mapping(_)) {
                issues.push(
                    &e.at("form"),
                    format!(
                        "expected a mapping such as {{field: request}}, found {}",
                        kind(form)
                    ),
                );
                return Encoding::Raw;
            }
            let f = e.section("form", &["field"], issues);
            let Some(field) = f
                .required("field", issues)
                .and_then(|v| as_string(v, &f.at("field"), issues))
            else {
                return Encoding::Raw;
            };
            if field.is_empty()
                || field.len() > MAX_FORM_FIELD
                || field.chars().any(char::is_control)
            {
                issues.push(
                    &f.at("field"),
                    format!(
                        "{field:?} must be 1 to {MAX_FORM_FIELD} bytes without control characters"
                    ),
                );
            }
            Encoding::Form { field }
        }
        other => {
            issues.push(
                &at,
                format!(
                    "{} is not raw, envelope or {{form: {{field: NAME}}}}",
                    describe(other)
                ),
            );
            Encoding::Raw
        }
    }
}

/// A subscription document as declared, secrets included. Its `Debug` shows the redacted
/// view, so logging a subscription cannot leak a credential.
#[derive(Clone, PartialEq)]
pub struct Spec(Json);

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

/// An event type selector: exact, prefix glob (`a.*`), or everything (`*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPattern {
    /// Exactly this type.
    Exact(String),
    /// Types starting with this text (the glob without its `*`).
    Prefix(String),
    /// Every type.
    Any,
}

/// How a pull subscription's notifications are consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// A notification stays until acknowledged (at-least-once).
    Explicit,
    /// Pulling consumes it (at-most-once).
    Auto,
}

/// Settings of a pull subscription.
#[derive(Debug, Clone)]
pub struct PullSettings {
    /// How pulled notifications are consumed.
    pub ack: AckMode,
    /// Explicit mode: how long a pulled, un-acked notification stays hidden (0: not at all).
    pub visibility_timeout: Duration,
    /// Not consumed by then: expired.
    pub ttl: Duration,
    /// Bearer token for the notification endpoints, instead of `api.token`.
    pub token: Option<Secret>,
}

/// Outbound rate limit: a steady rate with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained attempts per second (fractions allowed).
    pub per_second: f64,
    /// Attempts that may go at once after a quiet period.
    pub burst: u32,
}

/// Statuses counted as success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuccessCodes(Vec<(u16, u16)>);

/// Credentials for a subscriber.
#[derive(Clone)]
pub enum Auth {
    /// HTTP basic authentication.
    Basic {
        /// User name (not secret).
        username: String,
        /// Password.
        password: Secret,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Auth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

impl Default for SuccessCodes {
    fn default() -> Self {
        SuccessCodes::default_2xx()
    }
}

impl SuccessCodes {
    /// Any 2xx.
    pub fn default_2xx() -> Self {
        SuccessCodes(vec![(200, 299)])
    }

    /// True when `status` counts as delivered.
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status))
    }
}

impl EventPattern {
    fn parse(text: &str, path: &str, issues: &mut Issues) -> Option<EventPattern> {
        if text == "*" {
            return Some(EventPattern::Any);
        }
        let (body, glob) = match text.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (text, false),
        };
        let valid_chars = body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
        if body.is_empty() || !valid_chars || body.len() > 128 {
            issues.push(
                path,
                format!("{text:?} is not an event type pattern (an exact type, a prefix glob such as \"envelope.*\", or \"*\")"),
            );
            return None;
        }
        Some(if glob {
            EventPattern::Prefix(body.to_string())
        } else {
            EventPattern::Exact(body.to_string())
        })
    }

    /// True when `event_type` is selected by this pattern.
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            EventPattern::Any => true,
            EventPattern::Exact(t) => t == event_type,
            EventPattern::Prefix(p) => event_type.starts_with(p.as_str()),
        }
    }
}

/// True when `name` is a valid subscription name.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Where a document being validated comes from.
enum Origin<'a> {
    Config,
    Api { id: &'a str, changed: (i64, i64) },
}

impl Subscription {
    /// Validates one subscription entry of the config, recording every problem under `path`.
    pub fn parse(v: &Value, path: &str, issues: &mut Issues) -> Option<Subscription> {
        let spec = serde_json::to_value(v).unwrap_or(Json::Null);
        Subscription::validate(v, spec, path, Origin::Config, issues)
    }

    /// Validates a subscription sent to the API (field paths are relative to the document).
    /// `name` defaults to `id`; `changed` is (created, updated) in ms since the epoch.
    pub fn from_api(
        doc: Json,
        id: &str,
        changed: (i64, i64),
        issues: &mut Issues,
    ) -> Option<Subscription> {
        let v: Value = match serde_yaml::to_value(&doc) {
            Ok(v) => v,
            Err(e) => {
                issues.push("", format!("cannot read the document: {e}"));
                return None;
            }
        };
        Subscription::validate(&v, doc, "", Origin::Api { id, changed }, issues)
    }

    /// The label of its metric series: its name, or the shared `_api` label.
    pub fn metric_label(&self) -> &str {
        if self.own_metrics {
            &self.name
        } else {
            SHARED_METRIC_LABEL
        }
    }

    /// Where deliveries go, for logs: the URL, `(pull)`, or the SMTP server of e-mail
    /// (recipients are left out).
    pub fn target(&self) -> String {
        match (&self.url, &self.email) {
            (Some(url), _) => url.to_string(),
            (None, Some(email)) => format!("email via {}:{}", email.smtp.host, email.smtp.port),
            (None, None) => "(pull)".to_string(),
        }
    }

    /// Why the guard refuses this subscription's destination: the field and the reason.
    pub fn check_destination(&self, guard: &DestinationGuard) -> Result<(), (String, String)> {
        if let Some(url) = &self.url {
            guard.check_url(url).map_err(|r| ("url".to_string(), r))?;
        }
        if let Some(email) = &self.email {
            guard
                .check_host(&email.smtp.host, email.smtp.port)
                .map_err(|r| ("email.smtp.host".to_string(), r))?;
        }
        Ok(())
    }

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
            doc.insert("created_at".into(), crate::time::rfc3339(created).into());
            doc.insert("updated_at".into(), crate::time::rfc3339(updated).into());
        }
        Json::Object(doc)
    }

    fn validate(
        v: &Value,
        spec: Json,
        path: &str,
        origin: Origin<'_>,
        issues: &mut Issues,
    ) -> Option<Subscription> {
        let before = issues.0.len();
        let keys: Vec<&str> = match origin {
            Origin::Config => KEYS.to_vec(),
            Origin::Api { .. } => KEYS.iter().chain(API_KEYS).copied().collect(),
        };
        let s = Section::new(Some(v), path, &keys, issues);
        if !matches!(v, Value::Mapping(_)) {
            return None;
        }

        let name = match (&origin, s.get("name")) {
            (Origin::Api { id, .. }, None) => Some(id.to_string()),
            _ => s
                .required("name", issues)
                .and_then(|v| as_string(v, &s.at("name"), issues)),
        };
        if let Some(n) = &name
            && !valid_name(n)
        {
            issues.push(
                &s.at("name"),
                format!("{n:?} must match [a-z0-9_-]{{1,64}}"),
            );
        }
        if name.as_deref() == Some(SHARED_METRIC_LABEL) {
            issues.push(
                &s.at("name"),
                format!(
                    "{SHARED_METRIC_LABEL:?} is reserved (the metric label of API subscriptions)"
                ),
            );
        }
        let own_metrics = match origin {
            Origin::Config => true,
            Origin::Api { .. } => s.boolean("metrics", false, issues),
        };

        let mode = match s.string("mode", issues).as_deref() {
            None | Some("push") => "push",
            Some("pull") => "pull",
            Some("email") => "email",
            Some(other) => {
                issues.push(
                    &s.at("mode"),
                    format!("{other:?} is not push, pull or email"),
                );
                "push"
            }
        };
        if mode != "pull" && s.has("pull") {
            issues.push(&s.at("pull"), "applies to mode: pull only");
        }
        if mode != "email" && s.has("email") {
            issues.push(&s.at("email"), "applies to mode: email only");
        }
        let (url, pull, email) = match mode {
            "pull" => {
                for key in PUSH_KEYS.iter().filter(|k| s.has(k)) {
                    issues.push(
                        &s.at(key),
                        "applies to push subscriptions only (this one has mode: pull)",
                    );
                }
                (None, parse_pull(&s, issues), None)
            }
            "email" => {
                for key in HTTP_KEYS.iter().filter(|k| s.has(k)) {
                    issues.push(
                        &s.at(key),
                        "applies to HTTP push subscriptions only (this one has mode: email)",
                    );
                }
                let email = EmailSettings::parse(&s, issues).map(Arc::new);
                (None, None, email)
            }
            _ => {
                let url = s
                    .required("url", issues)
                    .and_then(|v| as_string(v, &s.at("url"), issues))
                    .and_then(|u| parse_url(&u, &s.at("url"), issues));
                (url, None, None)
            }
        };

        let events = s.required("events", issues).and_then(|v| {
            let at = s.at("events");
            let items = as_list(v, &at, issues)?;
            if items.is_empty() {
                issues.push(&at, "must list at least one event type (\"*\" for all)");
                return None;
            }
            let patterns: Vec<EventPattern> = items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let p = index(&at, i);
                    as_string(item, &p, issues).and_then(|t| EventPattern::parse(&t, &p, issues))
                })
                .collect();
            (patterns.len() == items.len()).then_some(patterns)
        });

        let filter = match s.get("filter") {
            None => Some(Filter::everything()),
            Some(f) => Filter::compile(f, &s.at("filter"), issues),
        };

        let backoff = parse_backoff(&s, issues);
        let default_retries = match &backoff.curve {
            Curve::Schedule(steps) => steps.len() as u64,
            Curve::Exponential { .. } => 6,
        };
        let retries = s.integer("retries", 0..=20, default_retries.min(20), issues) as u32;
        let timeout = s.duration(
            "timeout",
            Duration::from_millis(100)..=Duration::from_secs(60),
            Duration::from_secs(10),
            issues,
        );
        let success = match s.get("success_code") {
            None => SuccessCodes::default_2xx(),
            Some(v) => parse_success(v, &s.at("success_code"), issues)
                .unwrap_or_else(SuccessCodes::default_2xx),
        };
        let rate_limit = parse_rate_limit(&s, issues);
        let max_in_flight = s.integer("max_in_flight", 1..=1024, 8, issues) as usize;
        let auth = parse_auth(&s, issues);
        let headers = parse_headers(&s, auth.is_some(), issues);
        let signing = parse_signing(&s, issues);
        let ordering = parse_ordering(&s, issues);
        let encoding = parse_encoding(&s, issues);

        if issues.0.len() != before {
            return None;
        }
        let name = name?;
        let (id, source, changed) = match origin {
            Origin::Config => (name.clone(), Source::Config, None),
            Origin::Api { id, changed } => (id.to_string(), Source::Api, Some(changed)),
        };
        Some(Subscription {
            id,
            name,
            source,
            own_metrics,
            changed,
            spec: Spec(spec),
            url,
            email,
            pull,
            events: events?,
            filter: filter?,
            retries,
            timeout,
            success,
            backoff,
            rate_limit,
            max_in_flight,
            auth,
            headers,
            signing,
            ordering,
            encoding,
        })
    }
}

fn parse_pull(s: &Section<'_>, issues: &mut Issues) -> Option<PullSettings> {
    let p = s.section(
        "pull",
        &["ack", "visibility_timeout", "ttl", "token"],
        issues,
    );
    let ack = match p.string("ack", issues).as_deref() {
        None | Some("explicit") => AckMode::Explicit,
        Some("auto") => AckMode::Auto,
        Some(other) => {
            issues.push(&p.at("ack"), format!("{other:?} is not explicit or auto"));
            AckMode::Explicit
        }
    };
    let visibility_timeout = p.duration(
        "visibility_timeout",
        Duration::ZERO..=Duration::from_secs(12 * 3600),
        Duration::from_secs(30),
        issues,
    );
    let ttl = p.duration(
        "ttl",
        Duration::from_secs(1)..=Duration::from_secs(365 * 86_400),
        Duration::from_secs(72 * 3600),
        issues,
    );
    let token = p.string("token", issues);
    if let Some(t) = &token
        && (t.is_empty() || HeaderValue::from_str(&format!("Bearer {t}")).is_err())
    {
        issues.push(
            &p.at("token"),
            "must be a non-empty token of visible ASCII characters",
        );
    }
    Some(PullSettings {
        ack,
        visibility_timeout,
        ttl,
        token: token.map(Secret::new),
    })
}

fn parse_url(text: &str, path: &str, issues: &mut Issues) -> Option<Url> {
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

fn parse_success(v: &Value, path: &str, issues: &mut Issues) -> Option<SuccessCodes> {
    let one = |v: &Value, path: &str, issues: &mut Issues| -> Option<(u16, u16)> {
        if let Value::String(s) = v {
            let class = s.strip_suffix("xx").and_then(|d| d.parse::<u16>().ok());
            if let Some(c @ 1..=5) = class
                && s.len() == 3
            {
                return Some((c * 100, c * 100 + 99));
            }
            if s.parse::<u64>().is_err() {
                issues.push(
                    path,
                    format!("{s:?} is not a status code or a class such as \"2xx\""),
                );
                return None;
            }
        }
        as_integer(v, path, &(100..=599), issues).map(|c| (c as u16, c as u16))
    };
    match v {
        Value::Sequence(items) if items.is_empty() => {
            issues.push(path, "must list at least one status");
            None
        }
        Value::Sequence(items) => {
            let codes: Vec<(u16, u16)> = items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| one(item, &index(path, i), issues))
                .collect();
            (codes.len() == items.len()).then_some(SuccessCodes(codes))
        }
        other => one(other, path, issues).map(|c| SuccessCodes(vec![c])),
    }
}

fn parse_backoff(s: &Section<'_>, issues: &mut Issues) -> Backoff {
    let b = s.section(
        "backoff",
        &["initial", "max", "multiplier", "schedule", "overload_floor"],
        issues,
    );
    let day = Duration::from_secs(86_400);
    let mut backoff = Backoff::default();
    backoff.overload_floor = b.duration(
        "overload_floor",
        Duration::ZERO..=day,
        backoff.overload_floor,
        issues,
    );
    let exponential = ["initial", "max", "multiplier"].iter().any(|k| b.has(k));
    if let Some(schedule) = b.get("schedule") {
        if exponential {
            issues.push(
                b.path(),
                "use either schedule or initial/max/multiplier, not both",
            );
        }
        let at = b.at("schedule");
        if let Some(items) = as_list(schedule, &at, issues) {
            if items.is_empty() || items.len() > 20 {
                issues.push(
                    &at,
                    format!("must list 1..=20 delays, found {}", items.len()),
                );
            }
            let range = Duration::ZERO..=day;
            let steps: Vec<Duration> = items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| as_duration(item, &index(&at, i), &range, issues))
                .collect();
            if !steps.is_empty() {
                backoff.curve = Curve::Schedule(steps);
            }
        }
    } else if exponential {
        let initial = b.duration(
            "initial",
            Duration::from_millis(1)..=day,
            Duration::from_secs(5),
            issues,
        );
        let max = b.duration(
            "max",
            Duration::from_millis(1)..=day * 7,
            Duration::from_secs(3600),
            issues,
        );
        let multiplier = match b.get("multiplier") {
            None => 2.0,
            Some(v) => match as_float(v, &b.at("multiplier"), issues) {
                Some(m) if (1.0..=100.0).contains(&m) => m,
                Some(m) => {
                    issues.push(&b.at("multiplier"), format!("{m} is out of range 1..=100"));
                    2.0
                }
                None => 2.0,
            },
        };
        if max < initial {
            issues.push(&b.at("max"), "must not be below initial");
        }
        backoff.curve = Curve::Exponential {
            initial,
            max,
            multiplier,
        };
    }
    backoff
}

fn parse_rate_limit(s: &Section<'_>, issues: &mut Issues) -> Option<RateLimit> {
    if !s.has("rate_limit") {
        return None;
    }
    let r = s.section("rate_limit", &["per_second", "burst"], issues);
    let per_second = r.required("per_second", issues).and_then(|v| {
        let at = r.at("per_second");
        match as_float(v, &at, issues)? {
            p if p > 0.0 && p <= 1_000_000.0 => Some(p),
            p => {
                issues.push(&at, format!("{p} must be above 0 and at most 1000000"));
                None
            }
        }
    });
    let burst = r.integer("burst", 1..=100_000, 1, issues) as u32;
    per_second.map(|per_second| RateLimit { per_second, burst })
}

fn parse_auth(s: &Section<'_>, issues: &mut Issues) -> Option<Auth> {
    if !s.has("auth") {
        return None;
    }
    let a = s.section("auth", &["basic", "bearer"], issues);
    match (a.get("basic"), a.get("bearer")) {
        (Some(_), Some(_)) => {
            issues.push(a.path(), "use either basic or bearer, not both");
            None
        }
        (Some(_), None) => {
            let b = a.section("basic", &["username", "password"], issues);
            let username = b
                .required("username", issues)
                .and_then(|v| as_string(v, &b.at("username"), issues));
            let password = b
                .required("password", issues)
                .and_then(|v| as_string(v, &b.at("password"), issues));
            if let Some(u) = &username
                && u.contains(':')
            {
                issues.push(&b.at("username"), "must not contain ':'");
                return None;
            }
            Some(Auth::Basic {
                username: username?,
                password: Secret::new(password?),
            })
        }
        (None, Some(v)) => {
            // A string, or `{token: ...}` (the shape the API shows, without the token).
            let token = match v {
                Value::Mapping(_) => {
                    let b = a.section("bearer", &["token"], issues);
                    let token = b.required("token", issues)?;
                    as_string(token, &b.at("token"), issues)?
                }
                _ => as_string(v, &a.at("bearer"), issues)?,
            };
            if token.is_empty() || HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
                issues.push(
                    &a.at("bearer"),
                    "must be a non-empty token of visible ASCII characters",
                );
                return None;
            }
            Some(Auth::Bearer(Secret::new(token)))
        }
        (None, None) => {
            issues.push(a.path(), "needs basic or bearer");
            None
        }
    }
}

fn parse_ordering(s: &Section<'_>, issues: &mut Issues) -> DeliveryOrder {
    let at = s.at("ordering");
    match s.get("ordering") {
        None => DeliveryOrder::None,
        Some(Value::String(mode)) if mode == "none" => DeliveryOrder::None,
        Some(Value::String(mode)) if mode == "fifo" => DeliveryOrder::Fifo,
        Some(Value::Mapping(_)) => {
            let o = s.section("ordering", &["key"], issues);
            match o.string("key", issues) {
                Some(text) => FieldPath::parse(&text, &o.at("key"), issues)
                    .map_or(DeliveryOrder::None, DeliveryOrder::Key),
                None => {
                    issues.push(&o.at("key"), "missing: a field path such as sender.id");
                    DeliveryOrder::None
                }
            }
        }
        Some(other) => {
            issues.push(
                &at,
                format!(
                    "expected none, fifo or {{key: FIELD}}, found {}",
                    describe(other)
                ),
            );
            DeliveryOrder::None
        }
    }
}

/// Most signing secrets at once (rotation needs two; a few more cover slow rollouts).
const MAX_SIGNING_SECRETS: usize = 10;

fn parse_signing(s: &Section<'_>, issues: &mut Issues) -> Vec<SigningKey> {
    if s.get("signing").is_none() {
        return Vec::new();
    }
    let sg = s.section("signing", &["secrets"], issues);
    let at = sg.at("secrets");
    let Some(v) = sg.get("secrets") else {
        issues.push(&at, "missing: a list of whsec_ secrets");
        return Vec::new();
    };
    let Some(items) = as_list(v, &at, issues) else {
        return Vec::new();
    };
    if items.is_empty() || items.len() > MAX_SIGNING_SECRETS {
        issues.push(
            &at,
            format!(
                "needs 1 to {MAX_SIGNING_SECRETS} secrets, found {}",
                items.len()
            ),
        );
        return Vec::new();
    }
    let mut keys = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = index(&at, i);
        if let Some(text) = as_string(item, &path, issues) {
            match SigningKey::parse(&text) {
                Ok(key) => keys.push(key),
                Err(reason) => issues.push(&path, reason),
            }
        }
    }
    keys
}

fn parse_headers(
    s: &Section<'_>,
    has_auth: bool,
    issues: &mut Issues,
) -> Vec<(HeaderName, HeaderValue)> {
    let Some(v) = s.get("headers") else {
        return Vec::new();
    };
    let at = s.at("headers");
    let Value::Mapping(map) = v else {
        issues.push(
            &at,
            format!(
                "expected a mapping of header names to values, found {}",
                kind(v)
            ),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in map {
        let key = describe(k).trim_matches('"').to_string();
        let path = format!("{at}.{key}");
        let Ok(name) = HeaderName::from_bytes(key.as_bytes()) else {
            issues.push(&path, "is not a valid header name");
            continue;
        };
        let lower = name.as_str();
        if RESERVED_HEADERS.contains(&lower)
            || RESERVED_PREFIXES.iter().any(|p| lower.starts_with(p))
        {
            issues.push(&path, "is set by the relay and cannot be overridden");
            continue;
        }
        if lower == "authorization" && has_auth {
            issues.push(&path, "conflicts with auth; set one or the other");
            continue;
        }
        let Some(text) = as_string(v, &path, issues) else {
            continue;
        };
        match HeaderValue::from_str(&text) {
            Ok(mut value) => {
                // Custom headers often carry API keys: keep every value out of logs.
                value.set_sensitive(true);
                out.push((name, value));
            }
            Err(_) => issues.push(&path, "is not a valid header value"),
        }
    }
    out
}

/// The subscriptions in force, indexed by event type for matching. It is immutable: a change
/// builds a new one, swapped in atomically.
#[derive(Debug, Default)]
pub struct Registry {
    subs: Vec<Arc<Subscription>>,
    /// `subs[i].name`, shared, so matching an event allocates no names.
    names: Vec<Arc<str>>,
    exact: HashMap<String, Vec<usize>>,
    prefixes: HashMap<String, Vec<usize>>,
    /// Distinct prefix lengths, so a lookup probes only lengths that exist.
    prefix_lens: Vec<usize>,
    wildcard: Vec<usize>,
}

impl Registry {
    /// Builds the index.
    pub fn new(subs: Vec<Arc<Subscription>>) -> Self {
        let mut r = Registry {
            names: subs.iter().map(|s| Arc::from(s.name.as_str())).collect(),
            subs,
            ..Registry::default()
        };
        for (i, sub) in r.subs.iter().enumerate() {
            for pattern in &sub.events {
                match pattern {
                    EventPattern::Any => r.wildcard.push(i),
                    EventPattern::Exact(t) => r.exact.entry(t.clone()).or_default().push(i),
                    EventPattern::Prefix(p) => {
                        r.prefixes.entry(p.clone()).or_default().push(i);
                        if !r.prefix_lens.contains(&p.len()) {
                            r.prefix_lens.push(p.len());
                        }
                    }
                }
            }
        }
        r.prefix_lens.sort_unstable();
        r
    }

    /// All subscriptions: the config's in order, then the API's.
    pub fn all(&self) -> &[Arc<Subscription>] {
        &self.subs
    }

    /// Indices of the subscriptions whose event patterns select `event_type`, ascending.
    pub fn candidates(&self, event_type: &str) -> Vec<usize> {
        let mut out: Vec<usize> = self.wildcard.clone();
        if let Some(ids) = self.exact.get(event_type) {
            out.extend_from_slice(ids);
        }
        for &len in &self.prefix_lens {
            if len > event_type.len() {
                break;
            }
            if let Some(ids) = event_type.get(..len).and_then(|p| self.prefixes.get(p)) {
                out.extend_from_slice(ids);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Names of every subscription, in configuration order.
    pub fn names(&self) -> Vec<String> {
        self.names.iter().map(|n| n.to_string()).collect()
    }

    /// Names of the subscriptions an envelope event goes to; `data` is parsed only if a
    /// candidate has a filter that looks into it.
    pub fn matching(&self, event_type: &str, data: &RawValue) -> Vec<Arc<str>> {
        self.select(event_type, || serde_json::from_str(data.get()).ok(), &[])
    }

    /// Names of the subscriptions a raw event goes to. `json` is its body when that is
    /// declared JSON (parsed only if a filter looks into `data`); `attributes` are sorted.
    pub fn matching_raw(
        &self,
        event_type: &str,
        json: Option<&[u8]>,
        attributes: &[(String, String)],
    ) -> Vec<Arc<str>> {
        self.select(
            event_type,
            || json.and_then(|j| serde_json::from_slice(j).ok()),
            attributes,
        )
    }

    fn select(
        &self,
        event_type: &str,
        parse: impl Fn() -> Option<Json>,
        attributes: &[(String, String)],
    ) -> Vec<Arc<str>> {
        let candidates = self.candidates(event_type);
        let mut parsed: Option<Option<Json>> = None;
        candidates
            .into_iter()
            .filter(|&i| {
                let filter = &self.subs[i].filter;
                if filter.is_everything() {
                    return true;
                }
                let data = if filter.reads_data() {
                    parsed.get_or_insert_with(&parse).as_ref()
                } else {
                    None
                };
                filter.matches(&Subject { data, attributes })
            })
            .map(|i| self.names[i].clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Subscription, Vec<String>> {
        let v: Value = serde_yaml::from_str(yaml).unwrap();
        let mut issues = Issues::default();
        let s = Subscription::parse(&v, "subscriptions[0]", &mut issues);
        if issues.is_empty() {
            Ok(s.unwrap())
        } else {
            Err(issues.0.iter().map(|i| i.to_string()).collect())
        }
    }

    fn sub(name: &str, events: &[&str]) -> Subscription {
        let list = events
            .iter()
            .map(|e| format!("{e:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        parse(&format!(
            "{{name: {name}, url: 'http://127.0.0.1:1/', events: [{list}]}}"
        ))
        .unwrap()
    }

    #[test]
    fn defaults() {
        let s = sub("a", &["x"]);
        assert_eq!(s.retries, 6);
        assert_eq!(s.timeout, Duration::from_secs(10));
        assert_eq!(s.max_in_flight, 8);
        assert!(s.success.contains(204) && !s.success.contains(300));
        assert!(s.rate_limit.is_none());
        assert_eq!(s.backoff, Backoff::default());
    }

    #[test]
    fn schedule_length_sets_default_retries() {
        let s = parse("{name: a, url: 'http://h/', events: [x], backoff: {schedule: [1s, 2s]}}")
            .unwrap();
        assert_eq!(s.retries, 2);
    }

    #[test]
    fn success_code_forms() {
        let s = parse("{name: a, url: 'http://h/', events: [x], success_code: 200}").unwrap();
        assert!(s.success.contains(200) && !s.success.contains(204));
        let s =
            parse("{name: a, url: 'http://h/', events: [x], success_code: [200, '3xx']}").unwrap();
        assert!(s.success.contains(200) && s.success.contains(302) && !s.success.contains(201));
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let errors = parse(
            "{name: Bad Name, url: 'ftp://h/', events: [], retries: 42, timeout: 50ms,
              success_code: 700, max_in_flight: 0, rate_limit: {per_second: 0},
              auth: {basic: {username: u}}, headers: {webhook-id: x}, colour: red}",
        )
        .unwrap_err();
        let expected = [
            "subscriptions[0].colour: unknown field",
            "subscriptions[0].name: \"Bad Name\" must match [a-z0-9_-]{1,64}",
            "subscriptions[0].url: scheme \"ftp\" is not http or https",
            "subscriptions[0].events: must list at least one event type",
            "subscriptions[0].retries: 42 is out of range 0..=20",
            "subscriptions[0].timeout: 50ms is out of range 100ms..=1m",
            "subscriptions[0].success_code: 700 is out of range 100..=599",
            "subscriptions[0].rate_limit.per_second: 0 must be above 0",
            "subscriptions[0].max_in_flight: 0 is out of range 1..=1024",
            "subscriptions[0].auth.basic.password: missing",
            "subscriptions[0].headers.webhook-id: is set by the relay",
        ];
        for e in expected {
            assert!(
                errors.iter().any(|got| got.starts_with(e)),
                "missing {e:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    }

    #[test]
    fn missing_required_fields() {
        let errors = parse("{}").unwrap_err();
        assert_eq!(
            errors,
            vec![
                "subscriptions[0].name: missing",
                "subscriptions[0].url: missing",
                "subscriptions[0].events: missing"
            ]
        );
    }

    #[test]
    fn credentials_in_url_are_refused() {
        let errors = parse("{name: a, url: 'http://u:p@h/', events: [x]}").unwrap_err();
        assert!(
            errors[0].contains("must not carry credentials"),
            "{errors:?}"
        );
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let s = parse("{name: a, url: 'http://h/', events: [x], auth: {basic: {username: u, password: hunter2}}}").unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        let s = parse("{name: a, url: 'http://h/', events: [x], auth: {bearer: tok-123}}").unwrap();
        assert!(!format!("{s:?}").contains("tok-123"));
    }

    #[test]
    fn api_documents_default_the_name_and_hide_secrets() {
        let doc = serde_json::json!({
            "url": "http://h/", "events": ["x"], "metrics": true,
            "auth": {"basic": {"username": "u", "password": "pw-1"}},
            "headers": {"x-api-key": "key-1"}
        });
        let mut issues = Issues::default();
        let id = "0190f3c4-0000-7000-8000-000000000000";
        let s = Subscription::from_api(doc, id, (1, 2), &mut issues).unwrap();
        assert!(issues.is_empty());
        assert_eq!(
            (s.name.as_str(), s.source, s.own_metrics),
            (id, Source::Api, true)
        );
        let view = s.view();
        assert_eq!(
            view["auth"],
            serde_json::json!({"basic": {"username": "u"}})
        );
        assert_eq!(view["source"], "api");
        assert_eq!(view["headers"], serde_json::json!({"x-api-key": {}}));
        for secret in ["pw-1", "key-1"] {
            assert!(!view.to_string().contains(secret));
            assert!(!format!("{s:?}").contains(secret));
        }
        // `metrics` is an API field only.
        assert!(parse("{name: a, url: 'http://h/', events: [x], metrics: true}").is_err());
        // The reserved label is no name.
        let mut issues = Issues::default();
        let doc = serde_json::json!({"name": "_api", "url": "http://h/", "events": ["x"]});
        assert!(Subscription::from_api(doc, id, (1, 1), &mut issues).is_none());
        assert_eq!(issues.0[0].path, "name");
    }

    #[test]
    fn omitted_secrets_are_kept_from_the_stored_document() {
        let stored = serde_json::json!({"auth": {"basic": {"username": "u", "password": "pw"}}});
        let mut doc = serde_json::json!({"auth": {"basic": {"username": "v"}}});
        keep_secrets(&mut doc, &stored, true);
        assert_eq!(
            doc["auth"]["basic"],
            serde_json::json!({"username": "v", "password": "pw"})
        );
        for stored in [
            serde_json::json!({"auth": {"bearer": "tok"}}),
            serde_json::json!({"auth": {"bearer": {"token": "tok"}}}),
        ] {
            let mut doc = serde_json::json!({"auth": {"bearer": {}}});
            keep_secrets(&mut doc, &stored, true);
            assert_eq!(doc["auth"]["bearer"], serde_json::json!({"token": "tok"}));
        }
        // A secret that is given wins; a different auth kind takes nothing.
        let mut doc = serde_json::json!({"auth": {"basic": {"username": "u", "password": "new"}}});
        keep_secrets(&mut doc, &stored, true);
        assert_eq!(doc["auth"]["basic"]["password"], "new");
        let mut doc = serde_json::json!({"auth": {"bearer": {}}});
        keep_secrets(&mut doc, &stored, true);
        assert_eq!(doc["auth"]["bearer"], serde_json::json!({}));
        let s = parse("{name: a, url: 'http://h/', events: [x], auth: {bearer: {token: t-1}}}")
            .unwrap();
        assert!(matches!(s.auth, Some(Auth::Bearer(ref t)) if t.expose() == "t-1"));
    }

    #[test]
    fn ordering_is_none_fifo_or_a_key() {
        let s = parse("{name: o, url: 'http://h/', events: [x]}").unwrap();
        assert_eq!(s.ordering, DeliveryOrder::None);
        assert_eq!(s.ordering.key_of(None), None);
        let s = parse("{name: o, url: 'http://h/', events: [x], ordering: fifo}").unwrap();
        assert_eq!(s.ordering.key_of(None), Some(String::new()));
        let s =
            parse("{name: o, url: 'http://h/', events: [x], ordering: {key: sender.id}}").unwrap();
        let data = serde_json::json!({"sender": {"id": "s-1"}});
        assert_eq!(s.ordering.key_of(Some(&data)), Some("\"s-1\"".into()));
        let number = serde_json::json!({"sender": {"id": 7}});
        assert_eq!(s.ordering.key_of(Some(&number)), Some("7".into()));
        // Without the field (or not JSON): the one shared key.
        assert_eq!(
            s.ordering.key_of(Some(&serde_json::json!({}))),
            Some(String::new())
        );
        assert_eq!(s.ordering.key_of(None), Some(String::new()));

        for (yaml, expected) in [
            (
                "ordering: sideways",
                "subscriptions[0].ordering: expected none, fifo or {key: FIELD}",
            ),
            (
                "ordering: {key: 'a..b'}",
                "subscriptions[0].ordering.key: \"a..b\" is not a field path",
            ),
            ("ordering: {}", "subscriptions[0].ordering.key: missing"),
            (
                "ordering: {key: a, by: b}",
                "subscriptions[0].ordering.by: unknown field",
            ),
        ] {
            let errors = parse(&format!(
                "{{name: o, url: 'http://h/', events: [x], {yaml}}}"
            ))
            .unwrap_err();
            assert!(
                errors.iter().any(|e| e.starts_with(expected)),
                "{yaml}: {errors:?}"
            );
        }
        let errors = parse("{name: p, mode: pull, events: [x], ordering: fifo}").unwrap_err();
        assert_eq!(
            errors,
            [
                "subscriptions[0].ordering: applies to push subscriptions only (this one has mode: pull)"
            ]
        );
    }

    #[test]
    fn email_subscriptions() {
        let s = parse(
            "{name: m, mode: email, events: [x], retries: 2,
              email: {to: [ops@example.com, 'On Call <oncall@example.com>'], from: relay@example.com,
                      smtp: {host: smtp.example.com}}}",
        )
        .unwrap();
        assert!(s.url.is_none() && s.pull.is_none());
        let email = s.email.as_ref().unwrap();
        assert_eq!(email.to.len(), 2);
        assert_eq!(email.to[1].email.to_string(), "oncall@example.com");
        assert_eq!(email.from.email.to_string(), "relay@example.com");
        assert_eq!(email.subject.render("t", "i"), "t i");
        assert_eq!(
            (email.smtp.port, email.smtp.tls),
            (587, crate::email::TlsMode::Starttls)
        );
        assert!(email.smtp.credentials.is_none());
        assert_eq!(s.retries, 2);
        for (tls, port) in [("none", 25), ("starttls", 587), ("tls", 465)] {
            let s = parse(&format!(
                "{{name: m, mode: email, events: [x], email: {{to: a@b.c, from: r@b.c,
                   smtp: {{host: h, tls: {tls}}}}}}}"
            ))
            .unwrap();
            assert_eq!(s.email.unwrap().smtp.port, port, "{tls}");
        }
        let s = parse(
            "{name: m, mode: email, events: [x], email: {to: [a@b.c], from: r@b.c,
              subject_template: '[{type}] {id}',
              smtp: {host: h, port: 2525, tls: none, username: u, password: secret-pw}}}",
        )
        .unwrap();
        let email = s.email.as_ref().unwrap();
        assert_eq!(email.subject.render("a.b", "e1"), "[a.b] e1");
        assert_eq!(email.smtp.port, 2525);
        assert_eq!(email.smtp.credentials.as_ref().unwrap().0, "u");
        assert!(!format!("{s:?}").contains("secret-pw"), "{s:?}");
        let view = s.view().to_string();
        assert!(
            !view.contains("secret-pw") && view.contains("\"username\":\"u\""),
            "{view}"
        );

        let errors = parse(
            "{name: m, mode: email, url: 'http://h/', success_code: 200, headers: {x-a: b},
              auth: {bearer: t}, signing: {secrets: []}, pull: {}, events: [x],
              email: {to: ['not an address', ok@b.c], from: '', subject_template: '{type} {name}',
                      bcc: x, smtp: {host: 'bad host', port: 0, tls: ssl, username: u}}}",
        )
        .unwrap_err();
        let expected = [
            "subscriptions[0].url: applies to HTTP push subscriptions only",
            "subscriptions[0].success_code: applies to HTTP push subscriptions only",
            "subscriptions[0].headers: applies to HTTP push subscriptions only",
            "subscriptions[0].auth: applies to HTTP push subscriptions only",
            "subscriptions[0].signing: applies to HTTP push subscriptions only",
            "subscriptions[0].pull: applies to mode: pull only",
            "subscriptions[0].email.bcc: unknown field",
            "subscriptions[0].email.to[0]: \"not an address\" is not an e-mail address",
            "subscriptions[0].email.from: \"\" is not an e-mail address",
            "subscriptions[0].email.subject_template: unknown placeholder {name}",
            "subscriptions[0].email.smtp.host: \"bad host\" is not a host name",
            "subscriptions[0].email.smtp.port: 0 is out of range",
            "subscriptions[0].email.smtp.tls: \"ssl\" is not none, starttls or tls",
            "subscriptions[0].email.smtp.password: missing",
            "subscriptions[0].signing.secrets: needs 1 to 10 secrets",
        ];
        for e in expected {
            assert!(
                errors.iter().any(|got| got.starts_with(e)),
                "missing {e:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");

        let many: Vec<String> = (0..51).map(|i| format!("r{i}@b.c")).collect();
        let errors = parse(&format!(
            "{{name: m, mode: email, events: [x], email: {{to: [{}], from: r@b.c, smtp: {{host: h}}}}}}",
            many.join(",")
        ))
        .unwrap_err();
        assert_eq!(
            errors,
            ["subscriptions[0].email.to: must list 1..=50 recipients, found 51"]
        );
        let errors = parse("{name: m, mode: email, events: [x]}").unwrap_err();
        assert_eq!(errors, ["subscriptions[0].email: missing"]);
        let errors =
            parse("{name: m, mode: email, events: [x], email: {to: [], from: r@b.c}}").unwrap_err();
        assert_eq!(
            errors,
            [
                "subscriptions[0].email.to: must list 1..=50 recipients, found 0",
                "subscriptions[0].email.smtp: missing"
            ]
        );
        let errors =
            parse("{name: m, url: 'http://h/', events: [x], email: {to: [a@b.c]}}").unwrap_err();
        assert_eq!(
            errors,
            ["subscriptions[0].email: applies to mode: email only"]
        );
    }

    #[test]
    fn smtp_password_is_kept_while_the_username_stays() {
        let stored = serde_json::json!({"mode": "email", "email": {"smtp": {"host": "h", "username": "u", "password": "pw"}}});
        let mut doc = Spec(stored.clone()).redacted();
        assert!(doc["email"]["smtp"].get("password").is_none());
        keep_secrets(&mut doc, &stored, true);
        assert_eq!(doc, stored);
        let mut other =
            serde_json::json!({"mode": "email", "email": {"smtp": {"host": "h", "username": "v"}}});
        keep_secrets(&mut other, &stored, true);
        assert!(other["email"]["smtp"].get("password").is_none());
    }

    #[test]
    fn pull_subscriptions() {
        let s = parse("{name: p, mode: pull, events: [x]}").unwrap();
        let pull = s.pull.unwrap();
        assert!(s.url.is_none());
        assert_eq!(pull.ack, AckMode::Explicit);
        assert_eq!(pull.visibility_timeout, Duration::from_secs(30));
        assert_eq!(pull.ttl, Duration::from_secs(72 * 3600));
        assert!(pull.token.is_none());
        let s = parse(
            "{name: p, mode: pull, events: [x], pull: {ack: auto, visibility_timeout: 0s, ttl: 1h, token: t}}",
        )
        .unwrap();
        let pull = s.pull.unwrap();
        assert_eq!(
            (pull.ack, pull.visibility_timeout),
            (AckMode::Auto, Duration::ZERO)
        );
        assert_eq!(format!("{:?}", pull.token), "Some(<redacted>)");

        let errors = parse(
            "{name: p, mode: pull, url: 'http://h/', events: [x], retries: 2,
              pull: {ack: maybe, visibility_timeout: 13h, ttl: 0s, token: '', extra: 1}}",
        )
        .unwrap_err();
        let expected = [
            "subscriptions[0].url: applies to push subscriptions only",
            "subscriptions[0].retries: applies to push subscriptions only",
            "subscriptions[0].pull.extra: unknown field",
            "subscriptions[0].pull.ack: \"maybe\" is not explicit or auto",
            "subscriptions[0].pull.visibility_timeout: 13h is out of range",
            "subscriptions[0].pull.ttl: 0s is out of range",
            "subscriptions[0].pull.token: must be a non-empty token",
        ];
        for e in expected {
            assert!(
                errors.iter().any(|got| got.starts_with(e)),
                "missing {e:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        let errors =
            parse("{name: p, mode: poll, url: 'http://h/', events: [x], pull: {}}").unwrap_err();
        assert_eq!(
            errors,
            [
                "subscriptions[0].mode: \"poll\" is not push, pull or email",
                "subscriptions[0].pull: applies to mode: pull only"
            ]
        );
    }

    #[test]
    fn bad_event_patterns() {
        let errors = parse("{name: a, url: 'http://h/', events: ['a*b', 'x y', '']}").unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0]
                .starts_with("subscriptions[0].events[0]: \"a*b\" is not an event type pattern")
        );
    }

    #[test]
    fn index_yields_only_subscriptions_whose_types_can_match() {
        let mut subs = vec![
            sub("exact", &["invoice.paid"]),
            sub("glob", &["envelope.*"]),
            sub("all", &["*"]),
            sub("both", &["envelope.*", "envelope.completed"]),
            sub("short", &["e*"]),
        ];
        for i in 0..1000 {
            subs.push(sub(&format!("other-{i}"), &[&format!("other.{i}")]));
        }
        let r = Registry::new(subs.into_iter().map(Arc::new).collect());
        let names = |t: &str| -> Vec<String> {
            r.candidates(t)
                .into_iter()
                .map(|i| r.all()[i].name.clone())
                .collect()
        };
        assert_eq!(
            names("envelope.completed"),
            ["glob", "all", "both", "short"]
        );
        assert_eq!(names("invoice.paid"), ["exact", "all"]);
        assert_eq!(names("invoice.paid.extra"), ["all"]);
        assert_eq!(names("other.7"), ["all", "other-7"]);
        assert_eq!(names("envelope"), ["all", "short"]);
        assert_eq!(r.candidates("nothing").len(), 1);
    }

    #[test]
    fn matching_applies_filters() {
        let with_filter =
            parse("{name: f, url: 'http://h/', events: [x], filter: {field: status, equals: ok}}")
                .unwrap();
        let r = Registry::new(vec![Arc::new(with_filter), Arc::new(sub("plain", &["x"]))]);
        let data = RawValue::from_string(r#"{"status":"ok"}"#.into()).unwrap();
        assert_eq!(r.matching("x", &data).len(), 2);
        let data = RawValue::from_string(r#"{"status":"no"}"#.into()).unwrap();
        let names: Vec<_> = r
            .matching("x", &data)
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(names, ["plain"]);
    }

    #[test]
    fn raw_events_match_by_attributes_and_json_bodies() {
        let by_attr =
            parse("{name: zone, url: 'http://h/', events: [x], filter: {attr: zone, equals: eu}}")
                .unwrap();
        let by_field =
            parse("{name: total, url: 'http://h/', events: [x], filter: {field: total, from: 10}}")
                .unwrap();
        let r = Registry::new(vec![Arc::new(by_attr), Arc::new(by_field)]);
        let eu = [("zone".to_string(), "eu".to_string())];
        let names = |v: Vec<Arc<str>>| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(names(r.matching_raw("x", None, &eu)), ["zone"]);
        assert_eq!(
            names(r.matching_raw("x", Some(br#"{"total": 12}"#), &[])),
            ["total"]
        );
        // A body that does not parse has no fields.
        assert!(
            r.matching_raw("x", Some(b"<total>12</total>"), &[])
                .is_empty()
        );
        let data = RawValue::from_string(r#"{"zone":"eu"}"#.into()).unwrap();
        assert!(r.matching("x", &data).is_empty());
    }

    #[test]
    fn encodings() {
        let with = |e: &str| {
            parse(&format!(
                "{{name: e, url: 'http://h/', events: [x], encoding: {e}}}"
            ))
        };
        assert_eq!(sub("d", &["x"]).encoding, Encoding::Raw);
        assert_eq!(with("raw").unwrap().encoding, Encoding::Raw);
        assert_eq!(with("envelope").unwrap().encoding, Encoding::Envelope);
        assert_eq!(
            with("{form: {field: request}}").unwrap().encoding,
            Encoding::Form {
                field: "request".into()
            }
        );
        let cases = [
            (
                "xml",
                "subscriptions[0].encoding: \"xml\" is not raw, envelope or",
            ),
            (
                "{form: {}}",
                "subscriptions[0].encoding.form.field: missing",
            ),
            (
                "{form: request}",
                "subscriptions[0].encoding.form: expected a mapping",
            ),
            (
                "{form: {field: ''}}",
                "subscriptions[0].encoding.form.field: \"\" must be",
            ),
            (
                "{form: {field: a, x: 1}}",
                "subscriptions[0].encoding.form.x: unknown",
            ),
            ("{json: {}}", "subscriptions[0].encoding.json: unknown"),
        ];
        for (e, expected) in cases {
            let errors = with(e).expect_err(e);
            assert!(
                errors.iter().any(|m| m.starts_with(expected)),
                "{e}: {errors:?}"
            );
        }
        let errors = parse("{name: p, mode: pull, events: [x], encoding: envelope}").unwrap_err();
        assert!(
            errors[0].starts_with("subscriptions[0].encoding: applies to push"),
            "{errors:?}"
        );
    }
}
