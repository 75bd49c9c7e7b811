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
            let inner_path = join(path, name);
            // A null combinator is a mistake, never a filter left out.
            let Some(inner) = section.get(name) else {
                let expected = if name == "not" {
                    "a filter"
                } else {
                    "a list of filters"
                };
                issues.push(&inner_path, format!("expected {expected}, found null"));
                return None;
            };
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
        // Even `false`: a flag that cannot apply is a mistake, whatever its value.
        if s.has("ignore_case") && matches!(op, Some(Op::Range { .. }) | Some(Op::Exists(_))) {
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
mod tests;
