//! Schemas of the subscription as responses show it, for the OpenAPI description only: the
//! document as sent (YAML spellings included, so looser than the input schemas in `input`),
//! without secrets. These types describe it and are never built; their doc comments are the
//! descriptions clients read.
#![allow(dead_code)]

use serde_json::Value;
use utoipa::ToSchema;

/// A duration in humantime form, such as `250ms`, `10s`, `5m`, `72h` or `1h30m`.
#[derive(ToSchema)]
#[schema(as = Duration, example = "10s")]
pub struct DurationText(String);

/// A subscription name: `[a-z0-9_-]{1,64}`, not `_api`; immutable once created.
#[derive(ToSchema)]
#[schema(as = SubscriptionName, pattern = "^[a-z0-9_-]{1,64}$", example = "billing")]
pub struct Name(String);

/// Where a subscription is declared.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The config file: read-only through the API.
    Config,
    /// This API; kept in the store.
    Api,
}

/// How a subscription gets its events: `push` (default) POSTs each to `url`; `pull` keeps
/// them in a FIFO queue that a consumer takes from `/v1/subscriptions/{id}/notifications`,
/// and has none of the push-only fields (`url`, `retries`, `timeout`, `success_code`,
/// `backoff`, `rate_limit`, `max_in_flight`, `auth`, `headers`, `encoding`, `signing`,
/// `ordering`); `email` mails each to `email.to` with the push rules for retries and
/// ordering, but none of the HTTP-only fields (`url`, `success_code`, `auth`, `headers`,
/// `signing`, `encoding`).
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Delivered to `url`.
    Push,
    /// Queued for a consumer.
    Pull,
    /// Mailed through `email.smtp`.
    Email,
}

/// How the SMTP connection is secured: `starttls` (default; STARTTLS required), `tls`
/// (SMTPS) or `none` (plain text). Certificates are always verified.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain text.
    None,
    /// Upgraded with STARTTLS.
    Starttls,
    /// TLS from the first byte.
    Tls,
}

/// Recipients: one address, or a list of 1 to 50.
#[derive(ToSchema)]
#[serde(untagged)]
pub enum Recipients {
    /// One address.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// An e-mail subscription's settings (`mode: email` only), as responses show them: never the
/// SMTP password.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    /// Recipients, 1 to 50 (`a@example.com` or `Name <a@example.com>`).
    to: Recipients,
    /// Sender address.
    from: String,
    /// Subject with `{type}` and `{id}` placeholders; default `{type} {id}`.
    subject_template: Option<String>,
    smtp: Smtp,
}

/// The SMTP server, as responses show it: no password.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Smtp {
    /// Host name or address.
    host: String,
    /// Port; default by `tls`: 25, 587 or 465.
    port: Option<u16>,
    tls: Option<SmtpTls>,
    /// SMTP AUTH user name.
    username: Option<String>,
}

/// `explicit` (default): a notification stays queued until acknowledged (at least once).
/// `auto`: taking it consumes it (at most once).
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Ack {
    /// Acknowledged by id.
    Explicit,
    /// Consumed when taken.
    Auto,
}

/// Settings of a pull subscription (`mode: pull` only), as responses show them: never the
/// `token`.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullSettings {
    ack: Option<Ack>,
    /// `explicit` only: how long a taken, unacknowledged notification is hidden before it is
    /// handed out again; `0s`..`12h`, default `30s` (`0s` hides nothing).
    visibility_timeout: Option<DurationText>,
    /// A notification not consumed or acknowledged this long after acceptance expires;
    /// `1s`..`365d`, default `72h` (replaces `storage.ttl` for this subscription).
    ttl: Option<DurationText>,
}

/// A filter on the event's `data`: a condition, or `all`, `any` or `not` over filters. An
/// empty object matches everything.
#[derive(ToSchema)]
#[serde(untagged)]
#[schema(example = json!({"all": [{"field": "currency", "in": ["EUR", "USD"]},
                                  {"not": {"field": "test", "equals": true}}]}))]
pub enum Filter {
    /// Every filter matches.
    All {
        #[schema(no_recursion)]
        all: Vec<Filter>,
    },
    /// At least one filter matches.
    Any {
        #[schema(no_recursion)]
        any: Vec<Filter>,
    },
    /// The filter does not match.
    Not {
        #[schema(no_recursion)]
        not: Box<Filter>,
    },
    /// One condition.
    Condition(Condition),
}

/// A `field` or an `attr` (exactly one) and one operator: `equals`, `in`, `contains`,
/// `from`/`to` or `exists`.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Where to look in `data`: a dotted path (`sender.id`, `items.0.sku`) or a JSON pointer
    /// (`/sender/id`). A raw event's data is looked into only when its content type is JSON.
    #[schema(example = "sender.id")]
    field: Option<String>,
    /// A raw event's attribute (the `NAME` of a `hookrelay-attr-NAME` header,
    /// `[a-z0-9_-]{1,64}`); its value is a string, and number or boolean operands compare as
    /// their text. Envelope events have no attributes.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$", example = "zone")]
    attr: Option<String>,
    /// Matches when the field equals this scalar.
    equals: Option<Value>,
    /// Matches when the field equals one of these scalars.
    #[serde(rename = "in")]
    one_of: Option<Vec<Value>>,
    /// Matches when the field (a string or an array) contains this scalar.
    contains: Option<Value>,
    /// Inclusive lower bound: a number, or an RFC 3339 time.
    from: Option<Value>,
    /// Inclusive upper bound: a number, or an RFC 3339 time.
    to: Option<Value>,
    /// Matches when the field is present (`true`) or absent (`false`).
    exists: Option<bool>,
    /// Compare strings case-insensitively.
    ignore_case: Option<bool>,
}

/// How each attempt carries the event (push only): `raw` (default: the data or body as
/// received, with its content type), `envelope` (JSON `{"id", "type", "received_at",
/// "data"}`; a raw event's body as a string, or `data_base64` when it is not UTF-8, with
/// `content_type` and `attributes`), or `{"form": {"field": NAME}}`
/// (`application/x-www-form-urlencoded` with the data in that field).
#[derive(ToSchema)]
#[serde(untagged)]
#[schema(example = json!({"form": {"field": "request"}}))]
pub enum Encoding {
    /// `raw` or `envelope`.
    Named(EncodingName),
    /// A form with the data in one field.
    Form {
        /// The form's field.
        form: FormEncoding,
    },
}

/// `raw` or `envelope`.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EncodingName {
    /// The data as received.
    Raw,
    /// A JSON envelope around the data.
    Envelope,
}

/// The field of a form encoding.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FormEncoding {
    /// The field's name, 1 to 128 bytes without control characters.
    #[schema(min_length = 1, max_length = 128, example = "request")]
    field: String,
}

/// A status, 100..=599, or a class of statuses such as `"2xx"`.
#[derive(ToSchema)]
#[serde(untagged)]
pub enum StatusCode {
    /// One status, 100..=599.
    Code(u16),
    /// A class: `"1xx"` to `"5xx"`.
    Class(String),
}

/// Statuses that count as delivered: one, or a list of them; default `"2xx"`.
#[derive(ToSchema)]
#[serde(untagged)]
#[schema(example = json!([200, 202]))]
pub enum SuccessCode {
    /// One status or class.
    One(StatusCode),
    /// Several (at least one).
    Many(Vec<StatusCode>),
}

/// Spacing of retries: `schedule`, or the exponential `initial`/`max`/`multiplier` (not
/// both). Default schedule: 5s, 5m, 30m, 2h, 5h, 10h, the last step repeating. Every delay
/// gets ±20% jitter.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// Delays before each retry, 1 to 20 of them, each `0s`..`24h`; the last repeats.
    #[schema(min_items = 1, max_items = 20)]
    schedule: Option<Vec<DurationText>>,
    /// First delay, `1ms`..`24h`; default `5s`.
    initial: Option<DurationText>,
    /// Largest delay, `1ms`..`7d`, not below `initial`; default `1h`.
    max: Option<DurationText>,
    /// Growth per retry, 1..=100; default 2.
    #[schema(minimum = 1, maximum = 100)]
    multiplier: Option<f64>,
    /// Least delay after a 429 or a timeout, `0s`..`24h`; default `60s`.
    overload_floor: Option<DurationText>,
}

/// An outbound rate limit; attempts wait for it, none is dropped.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Attempts per second, 0.0001 to 1000000.
    #[schema(minimum = 0.0001, maximum = 1000000)]
    per_second: f64,
    /// Attempts allowed at once above the rate, 1..=100000; default 1.
    #[schema(minimum = 1, maximum = 100000)]
    burst: Option<u32>,
}

/// Credentials sent with every attempt, as responses show them: no password, and `bearer`
/// as `{}`.
#[derive(ToSchema)]
#[serde(untagged)]
pub enum Auth {
    /// HTTP basic.
    Basic {
        /// The user name only.
        basic: BasicAuthView,
    },
    /// A bearer token, not shown.
    Bearer {
        /// Always `{}`.
        #[schema(value_type = Object)]
        bearer: Value,
    },
}

/// HTTP basic credentials, without the password.
#[derive(ToSchema)]
pub struct BasicAuthView {
    /// User name.
    username: String,
}

/// A subscription as the API shows it: the document as sent (defaults not filled in),
/// without secrets, plus `id`, `name`, `source` and, for API subscriptions, `created_at`
/// and `updated_at`.
#[derive(ToSchema)]
#[schema(example = json!({"id": "01a20511-fa50-7c2e-9b41-3d5e8f0a6c17", "name": "crm",
    "source": "api", "url": "http://127.0.0.1:9000/crm", "events": ["customer.*"], "retries": 3,
    "auth": {"bearer": {}}, "created_at": "2026-11-22T21:03:14.000Z",
    "updated_at": "2026-11-22T21:03:14.000Z"}))]
pub struct Subscription {
    /// A lowercase UUIDv7 for API subscriptions; the name for config ones.
    #[schema(read_only)]
    id: String,
    name: Name,
    #[schema(read_only)]
    source: Source,
    mode: Option<Mode>,
    /// Where attempts are POSTed (push only).
    #[schema(format = "uri")]
    url: Option<String>,
    pull: Option<PullSettings>,
    email: Option<EmailSettings>,
    /// Event types it selects: exact types, prefix globs (`invoice.*`) or `*`.
    #[schema(example = json!(["invoice.paid", "customer.*"]))]
    events: Vec<String>,
    filter: Option<Filter>,
    /// Retries after the first attempt, 0..=20; default the schedule's length (6 for an
    /// exponential backoff).
    retries: Option<u32>,
    /// Per-attempt timeout, `100ms`..`60s`; default `10s`.
    timeout: Option<DurationText>,
    success_code: Option<SuccessCode>,
    backoff: Option<Backoff>,
    rate_limit: Option<RateLimit>,
    max_in_flight: Option<MaxInFlight>,
    /// Statuses that fail a delivery at once (push only): statuses and classes such as
    /// `"4xx"` (a class leaves 408 and 429 retryable unless they are named); default none.
    #[schema(example = json!([400, 404, "5xx"]))]
    final_statuses: Option<Vec<StatusCode>>,
    auth: Option<Auth>,
    encoding: Option<Encoding>,
    /// Names of the extra headers sent with every attempt; values are secret and show as `{}`.
    #[schema(value_type = Option<Object>)]
    headers: Option<Value>,
    /// Standard Webhooks signing; each secret shows as `{}`.
    #[schema(value_type = Option<Object>, example = json!({"secrets": [{}]}))]
    signing: Option<Value>,
    ordering: Option<Ordering>,
    circuit: Option<Circuit>,
    on_gone: Option<OnGone>,
    /// Starts paused (push and e-mail) while no state is stored through the API.
    paused: Option<bool>,
    /// Push and e-mail: the delivery state now, on this relay.
    #[schema(read_only)]
    delivery: Option<DeliveryControl>,
    /// API subscriptions: whether it has its own metric series.
    metrics: Option<bool>,
    /// API subscriptions: when it was created (RFC 3339, UTC).
    #[schema(read_only, format = DateTime)]
    created_at: Option<String>,
    /// API subscriptions: when it last changed (RFC 3339, UTC).
    #[schema(read_only, format = DateTime)]
    updated_at: Option<String>,
}

/// Concurrent attempts at most: a fixed `N` (1..=1024; default 8), `auto`, or
/// `{"auto": true, "max": N}` (adapted to the receiver's latency and failures within
/// 1..=`max`, default 64).
#[derive(ToSchema)]
#[serde(untagged)]
pub enum MaxInFlight {
    /// A fixed limit.
    Fixed(u32),
    /// `auto`.
    Auto(String),
    /// Adaptive with a ceiling.
    Adaptive {
        /// Always `true`.
        auto: bool,
        /// The ceiling; default 64.
        max: Option<u32>,
    },
}

/// Delivery order (push only): `none` (default, fully parallel), `fifo` (one at a time, in
/// acceptance order), or `{"key": FIELD}` (in acceptance order per value of that field of
/// `data`; different values in parallel; events without the field share one key). While a
/// key's oldest delivery is retrying, the later ones of that key wait; once it succeeds,
/// fails for good or expires, the next one goes.
#[derive(ToSchema)]
#[serde(untagged)]
#[schema(example = json!({"key": "sender.id"}))]
pub enum Ordering {
    /// `none` or `fifo`.
    #[schema(example = "fifo")]
    Mode(OrderingMode),
    /// Per value of a field: a dotted path or a JSON Pointer.
    Key {
        /// The field of `data` whose value is the key.
        key: String,
    },
}

/// `none` or `fifo`.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderingMode {
    /// Fully parallel.
    None,
    /// One at a time, in acceptance order.
    Fifo,
}

/// A JSON Merge Patch (RFC 7396) of the stored subscription document: objects merge member
/// by member, `null` removes a member, any other value replaces it.
#[derive(ToSchema)]
#[schema(example = json!({"events": ["customer.*", "invoice.paid"], "retries": null}))]
pub struct SubscriptionPatch(std::collections::HashMap<String, Value>);

/// The circuit breaker (push and e-mail): `off`, or its settings; on by default.
#[derive(ToSchema)]
#[serde(untagged)]
pub enum Circuit {
    /// `off`.
    Off(String),
    /// Its settings.
    Settings(CircuitSettings),
}

/// A circuit breaker's settings.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitSettings {
    /// `false` turns it off; default `true`.
    enabled: Option<bool>,
    /// Consecutive failed attempts that open it, 1..=1000; default 5.
    failures: Option<u32>,
    /// A streak of failures older than this starts again, `100ms`..`1h`; default `30s`.
    window: Option<DurationText>,
    /// Open this long before one probe, `100ms`..`1h`; default `30s`.
    cool_down: Option<DurationText>,
    /// The longest cool-down after failed probes, `100ms`..`24h`; default `10m`.
    max_cool_down: Option<DurationText>,
    /// Also opens it when this share of the attempts in a `window` failed, above 0 and at
    /// most 1; default none (off).
    #[schema(exclusive_minimum = 0, maximum = 1)]
    failure_ratio: Option<f64>,
    /// Attempts in a window before `failure_ratio` counts, 1..=100000; default 20; only
    /// with `failure_ratio`.
    #[schema(minimum = 1, maximum = 100000)]
    min_attempts: Option<u32>,
}

/// What a `410 Gone` does (HTTP push): `pause` (default) or `fail`.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnGone {
    /// Pauses the subscription; the delivery stays queued.
    Pause,
    /// Fails the delivery.
    Fail,
}

/// A push subscription's delivery state on the relay that answers (each relay has its own
/// breaker; a pause holds on all).
#[derive(ToSchema)]
pub struct DeliveryControl {
    state: DeliveryControlState,
    /// When it entered this state (RFC 3339, UTC).
    #[schema(format = DateTime)]
    since: String,
    /// Why: `failures`, `failure_ratio`, `probe_failed`, `cool_down`, `probe_succeeded`, `api`, `gone`,
    /// `config`, `resumed`.
    reason: Option<String>,
    /// The last failed attempt's error.
    last_error: Option<String>,
}

/// `active` (attempts go out), `open` (the breaker holds them), `half_open` (one probe is
/// out) or `paused`.
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryControlState {
    /// Attempts go out.
    Active,
    /// The breaker holds them.
    Open,
    /// One probe is out.
    HalfOpen,
    /// Paused.
    Paused,
}
