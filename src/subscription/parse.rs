//! Validation of a subscription document, shared by the config file and the API: every
//! problem is recorded with its path, and only a valid document becomes a [`Subscription`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;
use serde_yaml::Value;

use super::control::{parse_circuit, parse_on_gone};
use super::http_push::{
    parse_auth, parse_encoding, parse_final, parse_headers, parse_signing, parse_success, parse_url,
};
use super::tls::{Files, parse_tls};
use super::{
    AckMode, Channel, Concurrency, DeliveryOrder, EmailSettings, EventPattern, HttpSettings,
    PullSettings, PushSettings, RateLimit, SHARED_METRIC_LABEL, Source, Spec, Subscription,
    SuccessCodes,
};
use crate::backoff::{Backoff, Curve};
use crate::filter::{FieldPath, Filter};
use crate::secret::{Secret, TOKEN_RULE, is_token};
use crate::yaml::{Issues, Section, as_duration, as_float, as_list, as_string, describe, index};

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
    "final_statuses",
    "backoff",
    "rate_limit",
    "max_in_flight",
    "auth",
    "headers",
    "signing",
    "ordering",
    "encoding",
    "circuit",
    "on_gone",
    "paused",
    "tls",
];

/// Keys that only push subscriptions may have.
const PUSH_KEYS: &[&str] = &[
    "url",
    "encoding",
    "retries",
    "timeout",
    "success_code",
    "final_statuses",
    "backoff",
    "rate_limit",
    "max_in_flight",
    "auth",
    "headers",
    "signing",
    "ordering",
    "circuit",
    "on_gone",
    "paused",
    "tls",
];

/// Push keys that make no sense for e-mail (HTTP only).
const HTTP_KEYS: &[&str] = &[
    "url",
    "success_code",
    "final_statuses",
    "auth",
    "headers",
    "signing",
    "encoding",
    "on_gone",
    "tls",
];

/// Extra keys of a subscription registered through the API.
const API_KEYS: &[&str] = &["metrics"];

/// True when `name` is a valid subscription name.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Where a document being validated comes from.
enum Origin<'a> {
    Config(Files<'a>),
    Api { id: &'a str, changed: (i64, i64) },
}

impl Subscription {
    /// Validates one subscription entry of the config, recording every problem under `path`;
    /// `files` says where the file paths it names (TLS material) resolve.
    pub fn parse(
        v: &Value,
        path: &str,
        files: &Files<'_>,
        issues: &mut Issues,
    ) -> Option<Subscription> {
        let spec = serde_json::to_value(v).unwrap_or(Json::Null);
        Subscription::validate(v, spec, path, Origin::Config(*files), issues)
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

    fn validate(
        v: &Value,
        spec: Json,
        path: &str,
        origin: Origin<'_>,
        issues: &mut Issues,
    ) -> Option<Subscription> {
        let before = issues.0.len();
        let keys: Vec<&str> = match origin {
            Origin::Config(_) => KEYS.to_vec(),
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
            Origin::Config(_) => true,
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
        let final_statuses = match s.get("final_statuses") {
            None => Default::default(),
            Some(v) => parse_final(v, &s.at("final_statuses"), &success, issues),
        };
        let rate_limit = parse_rate_limit(&s, issues);
        let (max_in_flight, concurrency) = parse_max_in_flight(&s, issues);
        let auth = parse_auth(&s, issues);
        let headers = parse_headers(&s, auth.is_some(), issues);
        let signing = parse_signing(&s, issues);
        let ordering = parse_ordering(&s, issues);
        let encoding = parse_encoding(&s, issues);
        let circuit = parse_circuit(&s, issues);
        let on_gone = parse_on_gone(&s, issues);
        let paused = s.boolean("paused", false, issues);
        let files = match origin {
            Origin::Config(files) => files,
            Origin::Api { .. } => Files::INLINE_ONLY,
        };
        let tls = parse_tls(&s, &files, issues).map(Arc::new);
        if let Some(u) = &url
            && s.has("tls")
            && u.scheme() != "https"
        {
            issues.push(&s.at("tls"), "applies to https URLs only");
        }

        if issues.0.len() != before {
            return None;
        }
        let name = name?;
        let (id, source, changed) = match origin {
            Origin::Config(_) => (name.clone(), Source::Config, None),
            Origin::Api { id, changed } => (id.to_string(), Source::Api, Some(changed)),
        };
        let push = PushSettings {
            retries,
            timeout,
            backoff,
            rate_limit,
            max_in_flight,
            concurrency,
            ordering,
            circuit,
            on_gone,
            paused,
        };
        let channel = match (url, email, pull) {
            (Some(url), None, None) => Channel::Http {
                push,
                http: Arc::new(HttpSettings {
                    url,
                    success,
                    final_statuses,
                    auth,
                    headers,
                    signing,
                    encoding,
                    tls,
                }),
            },
            (None, Some(email), None) => Channel::Email { push, email },
            (None, None, Some(pull)) => Channel::Pull(pull),
            // Each mode yields exactly its own settings or records an issue.
            _ => return None,
        };
        Some(Subscription {
            id,
            name,
            source,
            own_metrics,
            changed,
            spec: Spec(spec),
            events: events?,
            filter: filter?,
            channel,
        })
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
        && !is_token(t)
    {
        issues.push(&p.at("token"), TOKEN_RULE);
    }
    Some(PullSettings {
        ack,
        visibility_timeout,
        ttl,
        token: token.map(Secret::new),
    })
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
            // The floor keeps the period between attempts (1 / rate) a representable duration.
            p if (0.0001..=1_000_000.0).contains(&p) => Some(p),
            p => {
                issues.push(&at, format!("{p} is out of range 0.0001..=1000000"));
                None
            }
        }
    });
    let burst = r.integer("burst", 1..=100_000, 1, issues) as u32;
    per_second.map(|per_second| RateLimit { per_second, burst })
}

/// Ceiling of `max_in_flight: auto` when no `max` is given.
const AUTO_MAX_IN_FLIGHT: u64 = 64;

/// `max_in_flight`: a fixed `N` (default 8), `auto` (adaptive up to 64) or
/// `{auto: true, max: N}`.
fn parse_max_in_flight(s: &Section<'_>, issues: &mut Issues) -> (usize, Concurrency) {
    const RANGE: std::ops::RangeInclusive<u64> = 1..=1024;
    match s.get("max_in_flight") {
        Some(Value::String(t)) if t == "auto" => (AUTO_MAX_IN_FLIGHT as usize, Concurrency::Auto),
        Some(Value::Mapping(_)) => {
            let m = s.section("max_in_flight", &["auto", "max"], issues);
            if !m.has("auto") {
                issues.push(
                    m.path(),
                    "needs auto: true (or write a number for a fixed limit)",
                );
            } else if !m.boolean("auto", false, issues) {
                issues.push(
                    &m.at("auto"),
                    "must be true; for a fixed limit write max_in_flight: N",
                );
            }
            let max = m.integer("max", RANGE, AUTO_MAX_IN_FLIGHT, issues);
            (max as usize, Concurrency::Auto)
        }
        Some(Value::String(t)) if t.trim().parse::<u64>().is_err() => {
            issues.push(
                &s.at("max_in_flight"),
                format!("{t:?} is not a number, auto or {{auto: true, max: N}}"),
            );
            (8, Concurrency::Fixed)
        }
        _ => (
            s.integer("max_in_flight", RANGE, 8, issues) as usize,
            Concurrency::Fixed,
        ),
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
            if o.get("key").is_none() {
                issues.push(&o.at("key"), "missing: a field path such as sender.id");
                return DeliveryOrder::None;
            }
            o.string("key", issues)
                .and_then(|text| FieldPath::parse(&text, &o.at("key"), issues))
                .map_or(DeliveryOrder::None, DeliveryOrder::Key)
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
