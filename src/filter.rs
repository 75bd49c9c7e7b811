//! Event filters: compiled once at load into a small tree with pre-parsed operands, then
//! evaluated against each event's `data` (`field`) and a raw event's attributes (`attr`).

use chrono::DateTime;
use serde_json::Value as Json;
use serde_yaml::Value;

use crate::yaml::{Issues, Section, as_list, describe, index, join, kind};

/// A compiled filter; `Filter::All(vec![])` (the empty filter) matches everything.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Every child matches.
    All(Vec<Filter>),
    /// At least one child matches.
    Any(Vec<Filter>),
    /// The child does not match.
    Not(Box<Filter>),
    /// One operator applied to one field.
    Condition(Condition),
}

/// `field` or `attr` + operator.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    target: Target,
    op: Op,
    ignore_case: bool,
}

/// What a condition looks at.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    /// A path into `data`.
    Field(FieldPath),
    /// A raw event's attribute (`hookrelay-attr-NAME`); its value is a string.
    Attr(String),
}

/// What a filter sees of an event.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// `data` parsed, when it is JSON (`None`: every `field` is absent).
    pub data: Option<&'a Json>,
    /// A raw event's attributes, sorted by name (empty for an envelope event).
    pub attributes: &'a [(String, String)],
}

impl<'a> Subject<'a> {
    /// An envelope event's data, without attributes.
    pub fn data(data: &'a Json) -> Subject<'a> {
        Subject {
            data: Some(data),
            attributes: &[],
        }
    }
}

/// Where a condition (or an ordering key) looks in `data`.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldPath {
    /// `sender.id`, `items.0.sku`.
    Dotted(Vec<String>),
    /// `/sender/id` (RFC 6901).
    Pointer(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Equals(Json),
    In(Vec<Json>),
    Contains(Json),
    Range {
        from: Option<Bound>,
        to: Option<Bound>,
    },
    Exists(bool),
}

/// A pre-parsed range bound.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bound {
    /// Nanoseconds since the Unix epoch.
    Instant(i128),
    Number(f64),
}

const CONDITION_KEYS: &[&str] = &[
    "field",
    "attr",
    "equals",
    "in",
    "contains",
    "from",
    "to",
    "exists",
    "ignore_case",
];
const OPERATORS: &[&str] = &["equals", "in", "contains", "from", "to", "exists"];

impl Filter {
    /// The filter that matches every event.
    pub fn everything() -> Filter {
        Filter::All(Vec::new())
    }

    /// Compiles a filter from its YAML form, recording every problem under `path`.
    pub fn compile(v: &Value, path: &str, issues: &mut Issues) -> Option<Filter> {
        let Value::Mapping(map) = v else {
            issues.push(path, format!("expected a mapping, found {}", kind(v)));
            return None;
        };
        if map.is_empty() {
            return Some(Filter::everything());
        }
        let combinator = ["all", "any", "not"]
            .into_iter()
            .find(|k| map.contains_key(*k));
        if let Some(name) = combinator {
            let section = Section::new(Some(v), path, &[name], issues);
            let inner = section.get(name)?;
            let inner_path = join(path, name);
            return match name {
                "not" => {
                    Filter::compile(inner, &inner_path, issues).map(|f| Filter::Not(Box::new(f)))
                }
                _ => {
                    let items = as_list(inner, &inner_path, issues)?;
                    if name == "any" && items.is_empty() {
                        // Likely a translated "any of nothing": it would silently match nothing.
                        issues.push(&inner_path, "is empty, so nothing can match");
                        return None;
                    }
                    let before = issues.0.len();
                    let children: Vec<Filter> = items
                        .iter()
                        .enumerate()
                        .filter_map(|(i, item)| {
                            Filter::compile(item, &index(&inner_path, i), issues)
                        })
                        .collect();
                    if issues.0.len() != before {
                        return None;
                    }
                    Some(if name == "all" {
                        Filter::All(children)
                    } else {
                        Filter::Any(children)
                    })
                }
            };
        }
        Condition::compile(v, path, issues).map(Filter::Condition)
    }

    /// True when the event satisfies the filter.
    pub fn matches(&self, event: &Subject<'_>) -> bool {
        match self {
            Filter::All(children) => children.iter().all(|c| c.matches(event)),
            Filter::Any(children) => children.iter().any(|c| c.matches(event)),
            Filter::Not(child) => !child.matches(event),
            Filter::Condition(c) => c.matches(event),
        }
    }

    /// True when some condition looks into `data` (`field`), so `data` must be parsed.
    pub fn reads_data(&self) -> bool {
        match self {
            Filter::All(children) | Filter::Any(children) => {
                children.iter().any(Filter::reads_data)
            }
            Filter::Not(child) => child.reads_data(),
            Filter::Condition(c) => matches!(c.target, Target::Field(_)),
        }
    }

    /// True when the filter accepts every event without looking at it.
    pub fn is_everything(&self) -> bool {
        matches!(self, Filter::All(c) if c.is_empty())
    }
}

impl Condition {
    fn compile(v: &Value, path: &str, issues: &mut Issues) -> Option<Condition> {
        let before = issues.0.len();
        let s = Section::new(Some(v), path, CONDITION_KEYS, issues);
        let target = match (s.has("field"), s.has("attr")) {
            (true, true) => {
                issues.push(path, "has both field and attr; a condition looks at one");
                None
            }
            (false, true) => s.string("attr", issues).and_then(|a| {
                if crate::event::valid_attr_name(&a) {
                    Some(Target::Attr(a))
                } else {
                    issues.push(
                        &s.at("attr"),
                        format!("{a:?} is not an attribute name ([a-z0-9_-]{{1,64}}, as in hookrelay-attr-NAME)"),
                    );
                    None
                }
            }),
            (_, false) => match s.string("field", issues) {
                Some(f) => FieldPath::parse(&f, &s.at("field"), issues).map(Target::Field),
                None => {
                    if !s.has("field") {
                        issues.push(
                            &s.at("field"),
                            "missing (a condition needs `field` or `attr`, or use all/any/not)",
                        );
                    }
                    None
                }
            },
        };
        let ignore_case = s.boolean("ignore_case", false, issues);
        let present: Vec<&str> = OPERATORS.iter().copied().filter(|k| s.has(k)).collect();
        let is_range = !present.is_empty() && present.iter().all(|k| *k == "from" || *k == "to");
        let op = if present.is_empty() {
            issues.push(
                path,
                format!("needs one operator: {}", OPERATORS.join(", ")),
            );
            None
        } else if present.len() > 1 && !is_range {
            issues.push(
                path,
                format!(
                    "has several operators ({}); use one per condition and combine with all/any",
                    present.join(", ")
                ),
            );
            None
        } else if is_range {
            compile_range(&s, issues)
        } else {
            let key = present[0];
            let at = s.at(key);
            let operand = s.get(key)?;
            match key {
                "equals" => scalar(operand, &at, issues).map(Op::Equals),
                "contains" => scalar(operand, &at, issues).map(Op::Contains),
                "in" => {
                    let items = as_list(operand, &at, issues)?;
                    if items.is_empty() {
                        issues.push(&at, "is empty, so nothing can match");
                        return None;
                    }
                    let values: Vec<Json> = items
                        .iter()
                        .enumerate()
                        .filter_map(|(i, item)| scalar(item, &index(&at, i), issues))
                        .collect();
                    (values.len() == items.len()).then_some(Op::In(values))
                }
                _ => crate::yaml::as_bool(operand, &at, issues).map(Op::Exists),
            }
        };
        if ignore_case && matches!(op, Some(Op::Range { .. }) | Some(Op::Exists(_))) {
            issues.push(
                &s.at("ignore_case"),
                "applies only to equals, in and contains",
            );
        }
        if issues.0.len() != before {
            return None;
        }
        let target = target?;
        let op = match op? {
            // Attribute values are text: a number or boolean operand compares as its text.
            op if matches!(target, Target::Attr(_)) => text_operands(op),
            op => op,
        };
        let op = match op {
            op if ignore_case => lowercase_operands(op),
            op => op,
        };
        Some(Condition {
            target,
            op,
            ignore_case,
        })
    }

    fn matches(&self, event: &Subject<'_>) -> bool {
        match &self.target {
            Target::Field(field) => match event.data.and_then(|d| field.resolve(d)) {
                Some(value) => self.matches_value(value),
                None => matches!(self.op, Op::Exists(false)),
            },
            Target::Attr(name) => {
                match event
                    .attributes
                    .binary_search_by(|(n, _)| n.as_str().cmp(name))
                {
                    Ok(i) => self.matches_text(&event.attributes[i].1),
                    Err(_) => matches!(self.op, Op::Exists(false)),
                }
            }
        }
    }

    /// An attribute's value against the operator (operands are strings, see `text_operands`).
    fn matches_text(&self, value: &str) -> bool {
        let ic = self.ignore_case;
        let eq = |expected: &Json| match expected {
            Json::String(e) if ic => value.to_lowercase() == *e,
            Json::String(e) => value == e,
            _ => false,
        };
        match &self.op {
            Op::Exists(want) => *want,
            Op::Equals(expected) => eq(expected),
            Op::In(options) => options.iter().any(eq),
            Op::Contains(Json::String(n)) if ic => value.to_lowercase().contains(n.as_str()),
            Op::Contains(Json::String(n)) => value.contains(n.as_str()),
            Op::Contains(_) => false,
            Op::Range { from, to } => {
                let bound = from.or(*to).expect("a range has a bound");
                let actual = match bound {
                    Bound::Instant(_) => parse_instant(value).map(Bound::Instant),
                    Bound::Number(_) => value
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|n| n.is_finite())
                        .map(Bound::Number),
                };
                let Some(actual) = actual else { return false };
                from.is_none_or(|f| le(f, actual)) && to.is_none_or(|t| le(actual, t))
            }
        }
    }

    fn matches_value(&self, value: &Json) -> bool {
        let ic = self.ignore_case;
        match &self.op {
            Op::Exists(want) => *want,
            Op::Equals(expected) => scalar_eq(value, expected, ic),
            Op::In(options) => match value {
                Json::Array(items) => items
                    .iter()
                    .any(|item| options.iter().any(|o| scalar_eq(item, o, ic))),
                _ => options.iter().any(|o| scalar_eq(value, o, ic)),
            },
            Op::Contains(needle) => match (value, needle) {
                (Json::String(hay), Json::String(n)) if ic => {
                    hay.to_lowercase().contains(n.as_str())
                }
                (Json::String(hay), Json::String(n)) => hay.contains(n.as_str()),
                (Json::Array(items), _) => items.iter().any(|item| scalar_eq(item, needle, ic)),
                _ => false,
            },
            Op::Range { from, to } => {
                let bound = from.or(*to).expect("a range has a bound");
                let actual = match (bound, value) {
                    (Bound::Instant(_), Json::String(s)) => parse_instant(s).map(Bound::Instant),
                    (Bound::Number(_), Json::Number(n)) => n.as_f64().map(Bound::Number),
                    _ => None,
                };
                let Some(actual) = actual else { return false };
                from.is_none_or(|f| le(f, actual)) && to.is_none_or(|t| le(actual, t))
            }
        }
    }
}

fn compile_range(s: &Section<'_>, issues: &mut Issues) -> Option<Op> {
    let mut bound = |key: &str| -> Option<Option<Bound>> {
        let Some(v) = s.get(key) else {
            return Some(None);
        };
        let at = s.at(key);
        let parsed = match v {
            Value::String(text) => parse_instant(text).map(Bound::Instant),
            Value::Number(n) => n.as_f64().map(Bound::Number),
            _ => None,
        };
        if parsed.is_none() {
            issues.push(
                &at,
                format!(
                    "{} is not an RFC 3339 timestamp (2023-02-16T00:00:00Z) or a number",
                    describe(v)
                ),
            );
            return None;
        }
        Some(parsed)
    };
    let (from, to) = (bound("from"), bound("to"));
    let (from, to) = (from?, to?);
    match (from, to) {
        (Some(Bound::Instant(_)), Some(Bound::Number(_)))
        | (Some(Bound::Number(_)), Some(Bound::Instant(_))) => {
            issues.push(
                s.path(),
                "from and to must both be timestamps or both be numbers",
            );
            None
        }
        (Some(f), Some(t)) if le(t, f) && f != t => {
            issues.push(s.path(), "from is after to, so nothing can match");
            None
        }
        _ => Some(Op::Range { from, to }),
    }
}

fn le(a: Bound, b: Bound) -> bool {
    match (a, b) {
        (Bound::Instant(a), Bound::Instant(b)) => a <= b,
        (Bound::Number(a), Bound::Number(b)) => a <= b,
        _ => false,
    }
}

fn parse_instant(s: &str) -> Option<i128> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| i128::from(t.timestamp()) * 1_000_000_000 + i128::from(t.timestamp_subsec_nanos()))
}

/// An operand: a string, number or boolean.
fn scalar(v: &Value, path: &str, issues: &mut Issues) -> Option<Json> {
    match v {
        Value::String(s) => Some(Json::String(s.clone())),
        Value::Bool(b) => Some(Json::Bool(*b)),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(Json::from(i))
            } else if let Some(u) = n.as_u64() {
                Some(Json::from(u))
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(Json::Number)
            }
        }
        other => {
            issues.push(
                path,
                format!(
                    "expected a string, number or boolean, found {}",
                    kind(other)
                ),
            );
            None
        }
    }
}

/// Operands as text, for attributes: `3` becomes `"3"`, `true` becomes `"true"`.
fn text_operands(op: Op) -> Op {
    let text = |v: Json| match v {
        Json::String(s) => Json::String(s),
        other => Json::String(other.to_string()),
    };
    match op {
        Op::Equals(v) => Op::Equals(text(v)),
        Op::Contains(v) => Op::Contains(text(v)),
        Op::In(vs) => Op::In(vs.into_iter().map(text).collect()),
        other => other,
    }
}

fn lowercase_operands(op: Op) -> Op {
    let lower = |v: Json| match v {
        Json::String(s) => Json::String(s.to_lowercase()),
        other => other,
    };
    match op {
        Op::Equals(v) => Op::Equals(lower(v)),
        Op::Contains(v) => Op::Contains(lower(v)),
        Op::In(vs) => Op::In(vs.into_iter().map(lower).collect()),
        other => other,
    }
}

/// Scalar equality; numbers compare by value (1 == 1.0); `expected` is pre-lowercased for `ic`.
fn scalar_eq(actual: &Json, expected: &Json, ic: bool) -> bool {
    match (actual, expected) {
        (Json::String(a), Json::String(e)) if ic => a.to_lowercase() == *e,
        (Json::String(a), Json::String(e)) => a == e,
        (Json::Number(a), Json::Number(e)) => match (a.as_i64(), e.as_i64()) {
            (Some(a), Some(e)) => a == e,
            _ => a.as_f64() == e.as_f64(),
        },
        (Json::Bool(a), Json::Bool(e)) => a == e,
        _ => false,
    }
}

impl FieldPath {
    /// Parses a dotted path or a JSON Pointer; a problem is recorded at `path`.
    pub fn parse(text: &str, path: &str, issues: &mut Issues) -> Option<FieldPath> {
        if text.starts_with('/') {
            return Some(FieldPath::Pointer(text.to_string()));
        }
        let segments: Vec<String> = text.split('.').map(str::to_string).collect();
        if text.is_empty() || segments.iter().any(String::is_empty) {
            issues.push(
                path,
                format!("{text:?} is not a field path (use dots, e.g. sender.id, or a JSON Pointer such as /sender/id)"),
            );
            return None;
        }
        Some(FieldPath::Dotted(segments))
    }

    /// The value at this path; JSON `null` counts as absent.
    pub fn resolve<'a>(&self, data: &'a Json) -> Option<&'a Json> {
        let found = match self {
            FieldPath::Pointer(p) => data.pointer(p),
            FieldPath::Dotted(segments) => segments.iter().try_fold(data, |node, seg| match node {
                Json::Object(map) => map.get(seg),
                Json::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            }),
        };
        // A JSON null is treated as absent: "missing field never matches".
        found.filter(|v| !v.is_null())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(yaml: &str) -> Result<Filter, Vec<String>> {
        let v: Value = serde_yaml::from_str(yaml).unwrap();
        let mut issues = Issues::default();
        let f = Filter::compile(&v, "filter", &mut issues);
        if issues.is_empty() {
            Ok(f.unwrap())
        } else {
            Err(issues.0.iter().map(|i| i.to_string()).collect())
        }
    }

    /// (filter, data, expected) rows.
    fn check(rows: &[(&str, Json, bool)]) {
        for (filter, data, expected) in rows {
            let f = compile(filter).unwrap_or_else(|e| panic!("{filter}: {e:?}"));
            assert_eq!(
                f.matches(&Subject::data(data)),
                *expected,
                "filter {filter} on {data}"
            );
        }
    }

    /// (filter, attributes, expected) rows, for a raw event without JSON data.
    type Attrs<'a> = &'a [(&'a str, &'a str)];

    fn check_attrs(rows: &[(&str, Attrs<'_>, bool)]) {
        for (filter, attrs, expected) in rows {
            let f = compile(filter).unwrap_or_else(|e| panic!("{filter}: {e:?}"));
            let mut attributes: Vec<(String, String)> = attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            attributes.sort();
            let subject = Subject {
                data: None,
                attributes: &attributes,
            };
            assert_eq!(
                f.matches(&subject),
                *expected,
                "filter {filter} on {attrs:?}"
            );
        }
    }

    #[test]
    fn attributes() {
        let zone: &[(&str, &str)] = &[
            ("zone", "EU-West"),
            ("prio", "3"),
            ("at", "2024-05-01T00:00:00Z"),
        ];
        check_attrs(&[
            ("{attr: zone, equals: EU-West}", zone, true),
            ("{attr: zone, equals: eu-west}", zone, false),
            (
                "{attr: zone, equals: eu-west, ignore_case: true}",
                zone,
                true,
            ),
            ("{attr: zone, in: [us, EU-West]}", zone, true),
            ("{attr: zone, in: [us, eu]}", zone, false),
            ("{attr: zone, contains: West}", zone, true),
            (
                "{attr: zone, contains: west, ignore_case: true}",
                zone,
                true,
            ),
            ("{attr: zone, exists: true}", zone, true),
            ("{attr: other, exists: false}", zone, true),
            ("{attr: other, equals: x}", zone, false),
            ("{attr: prio, equals: 3}", zone, true),
            ("{attr: prio, in: [1, 3]}", zone, true),
            ("{attr: prio, from: 2, to: 5}", zone, true),
            ("{attr: prio, from: 4}", zone, false),
            ("{attr: zone, from: 4}", zone, false),
            ("{attr: at, from: '2024-01-01T00:00:00Z'}", zone, true),
            ("{not: {attr: zone, equals: EU-West}}", zone, false),
            // `field` looks into data only: a raw event without JSON data has no fields.
            ("{field: zone, exists: false}", zone, true),
            ("{field: zone, equals: EU-West}", zone, false),
            (
                "{all: [{attr: zone, exists: true}, {field: x, exists: false}]}",
                zone,
                true,
            ),
        ]);
        // Envelope events have no attributes.
        check(&[("{attr: zone, exists: false}", json!({"zone": "eu"}), true)]);
        assert!(!compile("{attr: a, equals: 1}").unwrap().reads_data());
        assert!(
            compile("{any: [{attr: a, equals: 1}, {field: b, equals: 1}]}")
                .unwrap()
                .reads_data()
        );
    }

    #[test]
    fn equals() {
        check(&[
            (
                "{field: status, equals: COMPLETED}",
                json!({"status": "COMPLETED"}),
                true,
            ),
            (
                "{field: status, equals: COMPLETED}",
                json!({"status": "completed"}),
                false,
            ),
            (
                "{field: status, equals: COMPLETED, ignore_case: true}",
                json!({"status": "completed"}),
                true,
            ),
            ("{field: n, equals: 3}", json!({"n": 3}), true),
            ("{field: n, equals: 3}", json!({"n": 3.0}), true),
            ("{field: n, equals: 3}", json!({"n": "3"}), false),
            ("{field: ok, equals: true}", json!({"ok": true}), true),
            ("{field: a.b, equals: x}", json!({"a": {"b": "x"}}), true),
            (
                "{field: items.1.sku, equals: y}",
                json!({"items": [{"sku": "x"}, {"sku": "y"}]}),
                true,
            ),
            (
                "{field: /a~1b/c, equals: x}",
                json!({"a/b": {"c": "x"}}),
                true,
            ),
            ("{field: missing, equals: x}", json!({}), false),
            ("{field: a.b, equals: x}", json!({"a": "scalar"}), false),
        ]);
    }

    #[test]
    fn in_list_and_arrays() {
        check(&[
            (
                "{field: status, in: [COMPLETED, CANCELLED]}",
                json!({"status": "CANCELLED"}),
                true,
            ),
            (
                "{field: status, in: [COMPLETED, CANCELLED]}",
                json!({"status": "WAITING"}),
                false,
            ),
            (
                "{field: labels, in: [urgent]}",
                json!({"labels": ["x", "urgent"]}),
                true,
            ),
            (
                "{field: labels, in: [urgent]}",
                json!({"labels": []}),
                false,
            ),
            (
                "{field: labels, in: [URGENT], ignore_case: true}",
                json!({"labels": ["Urgent"]}),
                true,
            ),
            ("{field: code, in: [1, 2]}", json!({"code": 2}), true),
        ]);
    }

    #[test]
    fn contains() {
        check(&[
            (
                "{field: subject, contains: contract}",
                json!({"subject": "new contract 7"}),
                true,
            ),
            (
                "{field: subject, contains: contract}",
                json!({"subject": "New Contract"}),
                false,
            ),
            (
                "{field: subject, contains: contract, ignore_case: true}",
                json!({"subject": "New CONTRACT"}),
                true,
            ),
            (
                "{field: tags, contains: b}",
                json!({"tags": ["a", "b"]}),
                true,
            ),
            (
                "{field: tags, contains: c}",
                json!({"tags": ["a", "b"]}),
                false,
            ),
            ("{field: n, contains: '1'}", json!({"n": 12}), false),
        ]);
    }

    #[test]
    fn ranges() {
        let from_to = "{field: at, from: '2023-02-16T00:00:00Z', to: '2023-03-01T00:00:00Z'}";
        check(&[
            (from_to, json!({"at": "2023-02-16T00:00:00Z"}), true),
            (from_to, json!({"at": "2023-03-01T00:00:00Z"}), true),
            (from_to, json!({"at": "2023-02-15T23:59:59.999Z"}), false),
            (from_to, json!({"at": "2023-03-01T02:00:00+03:00"}), true),
            (from_to, json!({"at": "2023-03-01T00:00:00.001Z"}), false),
            (from_to, json!({"at": "not a date"}), false),
            (from_to, json!({"at": 5}), false),
            (
                "{field: at, from: '2023-02-16T00:00:00Z'}",
                json!({"at": "2030-01-01T00:00:00Z"}),
                true,
            ),
            (
                "{field: amount, from: 10, to: 20.5}",
                json!({"amount": 20.5}),
                true,
            ),
            (
                "{field: amount, from: 10, to: 20.5}",
                json!({"amount": 9}),
                false,
            ),
            ("{field: amount, to: 0}", json!({"amount": -3}), true),
            ("{field: amount, from: 10}", json!({"amount": "11"}), false),
        ]);
    }

    #[test]
    fn exists() {
        check(&[
            ("{field: a, exists: true}", json!({"a": 0}), true),
            ("{field: a, exists: true}", json!({"a": null}), false),
            ("{field: a, exists: false}", json!({}), true),
            ("{field: a, exists: false}", json!({"a": "x"}), false),
        ]);
    }

    #[test]
    fn combinators() {
        let f = "
all:
  - { field: status, in: [COMPLETED, CANCELLED] }
  - any:
      - { field: labels, in: [urgent] }
      - not: { field: scope, equals: outbox }
";
        check(&[
            (f, json!({"status": "COMPLETED", "scope": "inbox"}), true),
            (f, json!({"status": "COMPLETED", "scope": "outbox"}), false),
            (
                f,
                json!({"status": "COMPLETED", "scope": "outbox", "labels": ["urgent"]}),
                true,
            ),
            (f, json!({"status": "WAITING", "scope": "inbox"}), false),
            ("{}", json!({"anything": 1}), true),
            ("{all: []}", json!(1), true),
            ("{not: {field: a, exists: true}}", json!({}), true),
        ]);
    }

    /// The document platform's callback filter (seeds/002), field by field.
    #[test]
    fn document_platform_callback_filter() {
        let f = "
all:
  - { field: label, in: [finance, legal] }
  - { field: status, in: [COMPLETED, CANCELLED] }
  - { field: subject, contains: договір, ignore_case: true }
  - { field: receiveDate, from: '2023-02-16T12:34:26.606Z', to: '2023-03-16T00:00:00Z' }
  - { field: expireDate, from: '2023-04-01T00:00:00Z', to: '2023-12-31T23:59:59Z' }
  - { field: template, in: [3fa85f64-5717-4562-b3fc-2c963f66afa6] }
  - { field: sender.id, in: [9b2d7e1c-0000-4000-8000-000000000001] }
  - { field: scope, in: [inbox] }
";
        let base = json!({
            "label": ["finance"],
            "status": "COMPLETED",
            "subject": "Додаткова угода до Договір №5",
            "receiveDate": "2023-02-20T10:00:00.000Z",
            "expireDate": "2023-06-01T00:00:00Z",
            "template": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
            "sender": {"id": "9b2d7e1c-0000-4000-8000-000000000001"},
            "scope": "inbox"
        });
        let filter = compile(f).unwrap();
        assert!(filter.matches(&Subject::data(&base)));
        let changes: &[(&str, Json)] = &[
            ("label", json!(["hr"])),
            ("status", json!("WAITING")),
            ("subject", json!("рахунок")),
            ("receiveDate", json!("2023-02-16T12:34:26.605Z")),
            ("expireDate", json!("2024-01-01T00:00:00Z")),
            ("template", json!("00000000-0000-0000-0000-000000000000")),
            ("sender", json!({"id": "someone-else"})),
            ("scope", json!("outbox")),
        ];
        for (field, value) in changes {
            let mut data = base.clone();
            data[*field] = value.clone();
            assert!(
                !filter.matches(&Subject::data(&data)),
                "changing {field} must stop the match"
            );
            data.as_object_mut().unwrap().remove(*field);
            assert!(
                !filter.matches(&Subject::data(&data)),
                "without {field} nothing matches"
            );
        }
        // An empty filter matches everything, as in the platform.
        assert!(compile("{}").unwrap().matches(&Subject::data(&json!({}))));
    }

    #[test]
    fn compile_errors_name_the_path() {
        let cases: &[(&str, &str)] = &[
            (
                "{field: at, from: yesterday}",
                "filter.from: \"yesterday\" is not an RFC 3339 timestamp",
            ),
            (
                "{field: at, from: 1, to: '2023-01-01T00:00:00Z'}",
                "filter: from and to must both be",
            ),
            ("{field: at, from: 5, to: 1}", "filter: from is after to"),
            ("{field: a}", "filter: needs one operator"),
            (
                "{field: a, equals: 1, contains: 2}",
                "filter: has several operators (equals, contains)",
            ),
            ("{equals: 1}", "filter.field: missing"),
            (
                "{field: a, attr: b, equals: 1}",
                "filter: has both field and attr",
            ),
            (
                "{attr: B, equals: 1}",
                "filter.attr: \"B\" is not an attribute name",
            ),
            (
                "{field: a, equals: [1]}",
                "filter.equals: expected a string, number or boolean, found a list",
            ),
            (
                "{field: a, exists: true, ignore_case: true}",
                "filter.ignore_case: applies only to",
            ),
            (
                "{field: 'a..b', equals: 1}",
                "filter.field: \"a..b\" is not a field path",
            ),
            (
                "{all: [{field: a, equals: 1}, {field: b, frm: 1}]}",
                "filter.all[1].frm: unknown field",
            ),
            (
                "{any: {field: a}}",
                "filter.any: expected a list, found a mapping",
            ),
            ("{not: {field: a, in: x}}", "filter.not.in: expected a list"),
            (
                "{field: a, in: []}",
                "filter.in: is empty, so nothing can match",
            ),
            ("{any: []}", "filter.any: is empty, so nothing can match"),
            ("[1]", "filter: expected a mapping, found a list"),
        ];
        for (yaml, expected) in cases {
            let errors = compile(yaml).expect_err(yaml);
            assert!(
                errors.iter().any(|e| e.starts_with(expected)),
                "{yaml}: {errors:?} should include {expected}"
            );
        }
    }
}
