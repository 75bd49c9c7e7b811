//! Typed reads from a parsed YAML tree that record every problem with its path instead of
//! stopping at the first one (serde stops at the first error; operators want them all).

pub mod positions;

use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use serde_yaml::{Mapping, Value};

pub use positions::{Position, Positions};

/// One problem found in a configuration or subscription document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Where the problem is, e.g. `subscriptions[2].retries`.
    pub path: String,
    /// What is wrong with it, e.g. `42 is out of range 0..=20`.
    pub reason: String,
    /// Whether the problem is the key itself (unknown, repeated) or its value.
    pub target: Target,
    /// Where in the text, when the document was read with positions.
    pub position: Option<Position>,
}

/// What part of an entry an issue is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The key, e.g. an unknown field.
    Key,
    /// The value, or a missing value.
    Value,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// Collects issues while a document is read.
#[derive(Debug, Default)]
pub struct Issues(pub Vec<Issue>, Typing);

/// Whether scalars may stand for other types, as YAML's unquoted and `${VAR}` values need.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Typing {
    /// YAML: `"12"` reads as a number, `12` or `true` as a string.
    #[default]
    Lenient,
    /// JSON: every scalar has its own type.
    Strict,
}

impl Issues {
    /// Issues of a JSON document, whose scalars must have their own type (`Typing::Strict`).
    pub fn json() -> Issues {
        Issues(Vec::new(), Typing::Strict)
    }

    fn strict(&self) -> bool {
        self.1 == Typing::Strict
    }

    /// Records one problem at `path`.
    pub fn push(&mut self, path: &str, reason: impl Into<String>) {
        self.0.push(Issue {
            path: path.to_string(),
            reason: reason.into(),
            target: Target::Value,
            position: None,
        });
    }

    /// Records one problem with the key at `path` rather than its value.
    pub fn push_key(&mut self, path: &str, reason: impl Into<String>) {
        self.push(path, reason);
        if let Some(last) = self.0.last_mut() {
            last.target = Target::Key;
        }
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `parent.key`, or `key` at the root.
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[index]`.
pub fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// Short name of a YAML value's kind, for "expected X, found Y" messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A mapping whose keys are checked against the known ones; unknown keys are issues.
pub struct Section<'a> {
    map: Option<&'a Mapping>,
    path: String,
}

impl<'a> Section<'a> {
    /// Reads `v` as a mapping with exactly the `known` keys (an absent value is an empty section).
    pub fn new(v: Option<&'a Value>, path: &str, known: &[&str], issues: &mut Issues) -> Self {
        let map = match v {
            None | Some(Value::Null) => None,
            Some(Value::Mapping(m)) => {
                for key in m.keys() {
                    match key.as_str() {
                        Some(k) if known.contains(&k) => {}
                        Some(k) => issues.push_key(&join(path, k), unknown_field(k, known)),
                        None => {
                            issues.push(path, format!("keys must be strings, found {}", kind(key)))
                        }
                    }
                }
                Some(m)
            }
            Some(other) => {
                issues.push(path, format!("expected a mapping, found {}", kind(other)));
                None
            }
        };
        Section {
            map,
            path: path.to_string(),
        }
    }

    /// The section's own path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Path of one of its keys.
    pub fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value under `key`; an explicit `null` counts as absent.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map
            .and_then(|m| m.get(key))
            .filter(|v| !matches!(v, Value::Null))
    }

    /// True when the key is present and not null.
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// A sub-section under `key`.
    pub fn section(&self, key: &str, known: &[&str], issues: &mut Issues) -> Section<'a> {
        Section::new(self.get(key), &self.at(key), known, issues)
    }

    /// A required value: records `missing` when absent.
    pub fn required(&self, key: &str, issues: &mut Issues) -> Option<&'a Value> {
        let v = self.get(key);
        if v.is_none() {
            issues.push(&self.at(key), "missing");
        }
        v
    }

    /// A string (numbers and booleans are taken as their text, as YAML users expect).
    pub fn string(&self, key: &str, issues: &mut Issues) -> Option<String> {
        self.get(key)
            .and_then(|v| as_string(v, &self.at(key), issues))
    }

    /// A boolean, or `default` when absent.
    pub fn boolean(&self, key: &str, default: bool, issues: &mut Issues) -> bool {
        match self.get(key) {
            None => default,
            Some(v) => as_bool(v, &self.at(key), issues).unwrap_or(default),
        }
    }

    /// An integer within `range`, or `default` when absent.
    pub fn integer(
        &self,
        key: &str,
        range: RangeInclusive<u64>,
        default: u64,
        issues: &mut Issues,
    ) -> u64 {
        match self.get(key) {
            None => default,
            Some(v) => as_integer(v, &self.at(key), &range, issues).unwrap_or(default),
        }
    }

    /// A duration (`10s`, `500ms`, `1h`) within `range`, or `default` when absent.
    pub fn duration(
        &self,
        key: &str,
        range: RangeInclusive<Duration>,
        default: Duration,
        issues: &mut Issues,
    ) -> Duration {
        match self.get(key) {
            None => default,
            Some(v) => as_duration(v, &self.at(key), &range, issues).unwrap_or(default),
        }
    }

    /// A byte size (`1MiB`, `512KiB`, or a plain number of bytes) within `range`.
    pub fn size(
        &self,
        key: &str,
        range: RangeInclusive<u64>,
        default: u64,
        issues: &mut Issues,
    ) -> u64 {
        match self.get(key) {
            None => default,
            Some(v) => as_size(v, &self.at(key), &range, issues).unwrap_or(default),
        }
    }
}

/// Names the nearest known key when `key` looks like a typo of it.
fn unknown_field(key: &str, known: &[&str]) -> String {
    let expected = known.join(", ");
    // Within a third of the length (at least one edit): `retires`, `time_out`, `Retries`.
    let nearest = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(&key.to_lowercase(), k), *k))
        .filter(|(d, k)| *d <= (k.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d);
    match nearest {
        Some((_, k)) => format!("unknown field, did you mean {k}? (expected one of: {expected})"),
        None => format!("unknown field (expected one of: {expected})"),
    }
}

/// Reads a scalar as text.
pub fn as_string(v: &Value, path: &str, issues: &mut Issues) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if !issues.strict() => Some(n.to_string()),
        Value::Bool(b) if !issues.strict() => Some(b.to_string()),
        other => {
            issues.push(path, format!("expected a string, found {}", kind(other)));
            None
        }
    }
}

/// Reads a boolean (`"true"`/`"false"` strings too, since `${VAR}` expands to text).
pub fn as_bool(v: &Value, path: &str, issues: &mut Issues) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s == "true" && !issues.strict() => Some(true),
        Value::String(s) if s == "false" && !issues.strict() => Some(false),
        other => {
            issues.push(
                path,
                format!("expected true or false, found {}", describe(other)),
            );
            None
        }
    }
}

/// Reads a non-negative integer within `range` (digit strings too, for `${VAR}`).
pub fn as_integer(
    v: &Value,
    path: &str,
    range: &RangeInclusive<u64>,
    issues: &mut Issues,
) -> Option<u64> {
    let n = match v {
        // `3.0` is a whole number too (JSON Schema's `integer` allows it).
        Value::Number(n) => n.as_u64().or_else(|| {
            let f = n.as_f64()?;
            (f.fract() == 0.0 && (0.0..u64::MAX as f64).contains(&f)).then_some(f as u64)
        }),
        Value::String(s) if !issues.strict() => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if range.contains(&n) => Some(n),
        Some(n) => {
            issues.push(
                path,
                format!("{n} is out of range {}..={}", range.start(), range.end()),
            );
            None
        }
        None => {
            let reason = match v {
                Value::Number(n) => {
                    format!("{n} is out of range {}..={}", range.start(), range.end())
                }
                other => format!("expected a whole number, found {}", describe(other)),
            };
            issues.push(path, reason);
            None
        }
    }
}

/// Reads a float (digit strings too).
pub fn as_float(v: &Value, path: &str, issues: &mut Issues) -> Option<f64> {
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if !issues.strict() => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match n {
        Some(f) if f.is_finite() => Some(f),
        Some(f) => {
            issues.push(path, format!("expected a finite number, found {f}"));
            None
        }
        None => {
            issues.push(path, format!("expected a number, found {}", describe(v)));
            None
        }
    }
}

/// Reads a duration such as `10s`, `250ms`, `1h 30m` within `range`.
pub fn as_duration(
    v: &Value,
    path: &str,
    range: &RangeInclusive<Duration>,
    issues: &mut Issues,
) -> Option<Duration> {
    let parsed = match v {
        Value::String(s) => humantime::parse_duration(s.trim()).ok(),
        Value::Number(n) if n.as_u64() == Some(0) && !issues.strict() => Some(Duration::ZERO),
        _ => None,
    };
    match parsed {
        Some(d) if range.contains(&d) => Some(d),
        Some(d) => {
            issues.push(
                path,
                format!(
                    "{} is out of range {}..={}",
                    fmt_duration(d),
                    fmt_duration(*range.start()),
                    fmt_duration(*range.end())
                ),
            );
            None
        }
        None => {
            issues.push(
                path,
                format!(
                    "expected a duration such as 10s, 500ms or 1h, found {}",
                    describe(v)
                ),
            );
            None
        }
    }
}

/// Reads a byte size within `range`.
pub fn as_size(
    v: &Value,
    path: &str,
    range: &RangeInclusive<u64>,
    issues: &mut Issues,
) -> Option<u64> {
    let parsed = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s
            .trim()
            .parse::<bytesize::ByteSize>()
            .ok()
            .map(|b| b.as_u64()),
        _ => None,
    };
    match parsed {
        Some(n) if range.contains(&n) => Some(n),
        Some(n) => {
            issues.push(
                path,
                format!(
                    "{n} bytes is out of range {}..={} bytes",
                    range.start(),
                    range.end()
                ),
            );
            None
        }
        None => {
            issues.push(
                path,
                format!(
                    "expected a size such as 1MiB or 65536, found {}",
                    describe(v)
                ),
            );
            None
        }
    }
}

/// Reads a list, recording an issue when the value is something else.
pub fn as_list<'a>(v: &'a Value, path: &str, issues: &mut Issues) -> Option<&'a [Value]> {
    match v {
        Value::Sequence(s) => Some(s),
        other => {
            issues.push(path, format!("expected a list, found {}", kind(other)));
            None
        }
    }
}

/// A value for an error message: scalars quoted as written, containers by kind.
pub fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => kind(other).to_string(),
    }
}

/// Formats a duration compactly (`100ms`, `60s`, `1h`).
pub fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(s: &str) -> Value {
        serde_yaml::from_str(s).unwrap()
    }

    #[test]
    fn unknown_keys_and_ranges_are_all_reported() {
        let v = yaml("retries: 42\ntimeout: 50ms\nbogus: 1\n");
        let mut issues = Issues::default();
        let s = Section::new(
            Some(&v),
            "subscriptions[2]",
            &["retries", "timeout"],
            &mut issues,
        );
        s.integer("retries", 0..=20, 6, &mut issues);
        s.duration(
            "timeout",
            Duration::from_millis(100)..=Duration::from_secs(60),
            Duration::from_secs(10),
            &mut issues,
        );
        let text: Vec<String> = issues.0.iter().map(|i| i.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "subscriptions[2].bogus: unknown field (expected one of: retries, timeout)",
                "subscriptions[2].retries: 42 is out of range 0..=20",
                "subscriptions[2].timeout: 50ms is out of range 100ms..=1m",
            ]
        );
    }

    #[test]
    fn a_mistyped_key_names_the_nearest_known_one() {
        let v = yaml("retires: 1\nTimeout: 2s\nrt: 3\n");
        let mut issues = Issues::default();
        Section::new(Some(&v), "s", &["retries", "timeout"], &mut issues);
        let text: Vec<String> = issues.0.iter().map(|i| i.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "s.retires: unknown field, did you mean retries? (expected one of: retries, timeout)",
                "s.Timeout: unknown field, did you mean timeout? (expected one of: retries, timeout)",
                "s.rt: unknown field (expected one of: retries, timeout)",
            ]
        );
        assert!(issues.0.iter().all(|i| i.target == Target::Key));
    }

    #[test]
    fn strings_from_env_expansion_read_as_numbers() {
        let v = yaml("retries: '5'\nflag: 'true'\nsize: 1MiB\n");
        let mut issues = Issues::default();
        let s = Section::new(Some(&v), "", &["retries", "flag", "size"], &mut issues);
        assert_eq!(s.integer("retries", 0..=20, 6, &mut issues), 5);
        assert!(s.boolean("flag", false, &mut issues));
        assert_eq!(s.size("size", 1..=u64::MAX, 1, &mut issues), 1024 * 1024);
        assert!(issues.is_empty(), "{issues:?}");
    }

    #[test]
    fn wrong_kinds_are_named() {
        let v = yaml("retries: many\ntimeout: [1]\n");
        let mut issues = Issues::default();
        let s = Section::new(Some(&v), "x", &["retries", "timeout"], &mut issues);
        s.integer("retries", 0..=20, 6, &mut issues);
        s.duration(
            "timeout",
            Duration::ZERO..=Duration::MAX,
            Duration::ZERO,
            &mut issues,
        );
        assert_eq!(
            issues.0[0].reason,
            "expected a whole number, found \"many\""
        );
        assert_eq!(
            issues.0[1].reason,
            "expected a duration such as 10s, 500ms or 1h, found a list"
        );
    }
}
