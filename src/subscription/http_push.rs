//! The HTTP push channel's settings: URL, success statuses, credentials, extra headers,
//! signing keys and body encoding.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use serde_yaml::Value;

pub(super) use super::http_url::parse_url;
use super::oauth2::parse_oauth2;
use super::{Auth, Encoding, FinalStatuses, SuccessCodes};
use crate::secret::{Secret, TOKEN_RULE, is_token};
use crate::signing::SigningKey;
use crate::yaml::{Issues, Section, as_integer, as_list, as_string, describe, index, kind};

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

pub(super) fn parse_success(v: &Value, path: &str, issues: &mut Issues) -> Option<SuccessCodes> {
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

/// One `final_statuses` entry: a status or a class such as `"4xx"`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FinalEntry {
    Code(u16),
    Class(u16),
}

impl FinalEntry {
    fn show(self) -> String {
        match self {
            FinalEntry::Code(c) => c.to_string(),
            FinalEntry::Class(c) => format!("\"{c}xx\""),
        }
    }
}

/// `final_statuses`: a list of statuses and classes, none of them a success code, none
/// listed twice (a status inside a listed class counts as listed, except 408 and 429,
/// which a class leaves retryable).
pub(super) fn parse_final(
    v: &Value,
    path: &str,
    success: &SuccessCodes,
    issues: &mut Issues,
) -> FinalStatuses {
    let mut out = FinalStatuses::default();
    let Some(items) = as_list(v, path, issues) else {
        return out;
    };
    let mut seen: Vec<FinalEntry> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = index(path, i);
        let entry = match item {
            Value::String(s) if s.len() == 3 && s.ends_with("xx") => match s[..1].parse::<u16>() {
                Ok(c @ 1..=5) => FinalEntry::Class(c),
                _ => {
                    issues.push(&at, format!("{s:?} is not a class from \"1xx\" to \"5xx\""));
                    continue;
                }
            },
            Value::String(s) if s.trim().parse::<u64>().is_err() => {
                issues.push(
                    &at,
                    format!("{s:?} is not a status code or a class such as \"4xx\""),
                );
                continue;
            }
            other => match as_integer(other, &at, &(100..=599), issues) {
                Some(c) => FinalEntry::Code(c as u16),
                None => continue,
            },
        };
        let covered = seen.iter().find(|e| match (**e, entry) {
            (a, b) if a == b => true,
            (FinalEntry::Class(c), FinalEntry::Code(s))
            | (FinalEntry::Code(s), FinalEntry::Class(c)) => {
                s / 100 == c && !matches!(s, 408 | 429)
            }
            _ => false,
        });
        if let Some(earlier) = covered {
            issues.push(
                &at,
                format!("{} is listed twice (with {})", entry.show(), earlier.show()),
            );
            continue;
        }
        let statuses = match entry {
            FinalEntry::Code(c) => c..=c,
            FinalEntry::Class(c) => c * 100..=c * 100 + 99,
        };
        let both: Vec<u16> = statuses
            .filter(|s| success.contains(*s))
            .filter(|s| matches!(entry, FinalEntry::Code(_)) || !matches!(s, 408 | 429))
            .collect();
        if let Some(first) = both.first() {
            issues.push(
                &at,
                format!(
                    "{} contradicts success_code: {first} would be both delivered and final",
                    entry.show()
                ),
            );
            continue;
        }
        seen.push(entry);
        match entry {
            FinalEntry::Code(c) => out.codes.push(c),
            FinalEntry::Class(c) => out.classes.push(c),
        }
    }
    out
}

pub(super) fn parse_auth(s: &Section<'_>, issues: &mut Issues) -> Option<Auth> {
    if !s.has("auth") {
        return None;
    }
    let a = s.section("auth", &["basic", "bearer", "oauth2"], issues);
    let given = ["basic", "bearer", "oauth2"].map(|k| a.has(k));
    match given.iter().filter(|g| **g).count() {
        0 => {
            issues.push(a.path(), "needs basic, bearer or oauth2");
            return None;
        }
        1 => {}
        _ => {
            issues.push(a.path(), "use one of basic, bearer or oauth2");
            return None;
        }
    }
    if a.has("oauth2") {
        return parse_oauth2(&a, issues).map(|o| Auth::OAuth2(Arc::new(o)));
    }
    match (a.get("basic"), a.get("bearer")) {
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
            if !is_token(&token) {
                issues.push(&a.at("bearer"), TOKEN_RULE);
                return None;
            }
            Some(Auth::Bearer(Secret::new(token)))
        }
        _ => None,
    }
}

/// Most signing secrets at once (rotation needs two; a few more cover slow rollouts).
const MAX_SIGNING_SECRETS: usize = 10;

pub(super) fn parse_signing(s: &Section<'_>, issues: &mut Issues) -> Vec<SigningKey> {
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

pub(super) fn parse_headers(
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

/// Longest form field name.
const MAX_FORM_FIELD: usize = 128;

pub(super) fn parse_encoding(s: &Section<'_>, issues: &mut Issues) -> Encoding {
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
