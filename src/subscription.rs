//! Subscriptions as the relay runs them: validated value types, one enum per choice, so an
//! invalid subscription cannot be built. Parsing lives in `parse` (shared by the config file
//! and the API), the declared document in `spec`, the e-mail channel's settings in `email`.

mod control;
pub mod email;
mod http_push;
mod http_url;
mod oauth2;
mod parse;
mod spec;
#[cfg(test)]
pub(crate) mod tests;
mod tls;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use reqwest::Url;
use serde_json::Value as Json;

use crate::backoff::Backoff;
use crate::filter::{FieldPath, Filter};
use crate::secret::Secret;
use crate::signing::SigningKey;
pub use control::{CircuitSettings, OnGone};
pub use email::EmailSettings;
pub use oauth2::{ClientAuthStyle, OAuth2Settings};
pub use parse::valid_name;
pub use spec::{Spec, forget_moved_secrets, keep_secrets, open_secrets, unkept_secrets};
pub use tls::{Files, TlsSettings, TlsSources};

/// Metric label shared by API subscriptions without their own series.
pub const SHARED_METRIC_LABEL: &str = "_api";

/// The attempts `subs` may have in flight at once, all together (pull subscriptions have
/// none).
pub fn push_slots<'a>(subs: impl IntoIterator<Item = &'a Subscription>) -> usize {
    subs.into_iter()
        .filter_map(|s| s.push().map(|p| p.max_in_flight))
        .sum()
}

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
    /// Event types it selects.
    pub events: Vec<EventPattern>,
    /// Condition on the event's data.
    pub filter: Filter,
    /// How notifications reach the subscriber.
    pub channel: Channel,
}

/// How a subscription's notifications reach the subscriber; each channel carries only what
/// it uses.
#[derive(Debug, Clone)]
pub enum Channel {
    /// Pushed as HTTP POSTs (`mode: push`, the default).
    Http {
        /// Retries, timeout, limits and order of the attempts.
        push: PushSettings,
        /// Where and how the POST goes.
        http: Arc<HttpSettings>,
    },
    /// Pushed as mails over SMTP (`mode: email`).
    Email {
        /// Retries, timeout, limits and order of the attempts.
        push: PushSettings,
        /// Recipients, sender, subject and server.
        email: Arc<EmailSettings>,
    },
    /// Polled by consumers from a queue (`mode: pull`), never pushed.
    Pull(PullSettings),
}

/// How a push subscription's attempts are made and repeated (HTTP and e-mail alike).
#[derive(Debug, Clone)]
pub struct PushSettings {
    /// Retries after the first attempt.
    pub retries: u32,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Spacing of retries.
    pub backoff: Backoff,
    /// Optional outbound rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Concurrent attempts at most (the ceiling, when adaptive).
    pub max_in_flight: usize,
    /// Whether the limit stays at `max_in_flight` or adapts to the receiver's latency.
    pub concurrency: Concurrency,
    /// Whether deliveries wait for earlier ones (of the same key).
    pub ordering: DeliveryOrder,
    /// Its circuit breaker; `None` when `circuit: off`.
    pub circuit: Option<CircuitSettings>,
    /// What a `410 Gone` does (HTTP only).
    pub on_gone: OnGone,
    /// `paused: true`: starts paused unless the store holds a state set through the API.
    pub paused: bool,
}

/// Where an HTTP push subscription's POST goes and what it carries.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Where deliveries are POSTed.
    pub url: Url,
    /// Statuses that count as delivered.
    pub success: SuccessCodes,
    /// Statuses that fail a delivery at once (`final_statuses`).
    pub final_statuses: FinalStatuses,
    /// Credentials sent with every attempt.
    pub auth: Option<Auth>,
    /// Extra headers sent with every attempt.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Keys every attempt is signed with (Standard Webhooks), in the configured order.
    pub signing: Vec<SigningKey>,
    /// How each attempt's body carries the event.
    pub encoding: Encoding,
    /// Client certificate, private CA and checked name (`https` URLs only).
    pub tls: Option<Arc<TlsSettings>>,
}

impl Subscription {
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
        match &self.channel {
            Channel::Http { http, .. } => http.url.to_string(),
            Channel::Email { email, .. } => {
                format!("email via {}:{}", email.smtp.host, email.smtp.port)
            }
            Channel::Pull(_) => "(pull)".to_string(),
        }
    }

    /// True when a running lane can stay as it is for `other`: the same document and the
    /// same TLS material (a certificate file rotated under the same YAML differs).
    pub fn same_run(&self, other: &Subscription) -> bool {
        let digest = |s: &Subscription| s.http().and_then(|h| h.tls.as_ref()).map(|t| t.digest);
        self.spec == other.spec && digest(self) == digest(other)
    }

    /// How attempts are made, for a push subscription (HTTP or e-mail).
    pub fn push(&self) -> Option<&PushSettings> {
        match &self.channel {
            Channel::Http { push, .. } | Channel::Email { push, .. } => Some(push),
            Channel::Pull(_) => None,
        }
    }

    /// The HTTP settings of an HTTP push subscription.
    pub fn http(&self) -> Option<&HttpSettings> {
        match &self.channel {
            Channel::Http { http, .. } => Some(http),
            _ => None,
        }
    }

    /// The e-mail settings of an e-mail subscription.
    pub fn email(&self) -> Option<&Arc<EmailSettings>> {
        match &self.channel {
            Channel::Email { email, .. } => Some(email),
            _ => None,
        }
    }

    /// The queue settings of a pull subscription.
    pub fn pull(&self) -> Option<&PullSettings> {
        match &self.channel {
            Channel::Pull(pull) => Some(pull),
            _ => None,
        }
    }

    /// The delivery order (always none for a pull subscription).
    pub fn ordering(&self) -> &DeliveryOrder {
        const NONE: &DeliveryOrder = &DeliveryOrder::None;
        self.push().map_or(NONE, |p| &p.ordering)
    }
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

/// Statuses that fail a delivery at once, without retries (`final_statuses`): exact codes,
/// and classes (`4`, from `"4xx"`) that never cover 408 and 429 unless those are named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinalStatuses {
    codes: Vec<u16>,
    classes: Vec<u16>,
}

impl FinalStatuses {
    /// True when an answer with `status` fails the delivery at once.
    pub fn contains(&self, status: u16) -> bool {
        self.codes.contains(&status)
            || (!matches!(status, 408 | 429) && self.classes.contains(&(status / 100)))
    }

    /// True when no status is final (besides the relay's own rules).
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty() && self.classes.is_empty()
    }
}

/// How a push subscription's concurrency limit is set (`max_in_flight`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Concurrency {
    /// `max_in_flight: N`: up to N, halved while the receiver times out or cannot be reached.
    #[default]
    Fixed,
    /// `max_in_flight: auto` or `{auto: true, max: N}`: an AIMD controller on latency and
    /// failures moves the limit within 1..=N.
    Auto,
}

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
    /// `Authorization: Bearer` with tokens from an OAuth2 token endpoint.
    OAuth2(Arc<OAuth2Settings>),
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
            Auth::OAuth2(o) => f
                .debug_struct("OAuth2")
                .field("token_url", &o.token_url.as_str())
                .field("client_id", &o.client_id)
                .field("client_secret", &"<redacted>")
                .finish(),
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

/// As configured: `200`, `2xx`, or a list such as `200, 202 or 3xx`.
impl std::fmt::Display for SuccessCodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<String> = self
            .0
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{}xx", lo / 100)
                }
            })
            .collect();
        match shown.split_last() {
            Some((last, rest)) if !rest.is_empty() => write!(f, "{} or {last}", rest.join(", ")),
            _ => f.write_str(&shown.join(", ")),
        }
    }
}

impl EventPattern {
    /// True when `event_type` is selected by this pattern.
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            EventPattern::Any => true,
            EventPattern::Exact(t) => t == event_type,
            EventPattern::Prefix(p) => event_type.starts_with(p.as_str()),
        }
    }
}
