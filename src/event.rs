//! Events as the app sends them: the JSON envelope, parsed once, with `data` kept as the exact
//! bytes the app sent so deliveries carry them byte for byte.

use crate::json_depth;
use crate::media_type;
use crate::time::{new_id, now_ms};
use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, header};
use serde::Deserialize;
use serde_json::value::RawValue;

/// An accepted event.
#[derive(Debug, Clone)]
pub struct Event {
    /// The app's id, or a new lowercase UUIDv7.
    pub id: String,
    /// Event type, e.g. `envelope.completed`.
    pub event_type: String,
    /// The `data` value exactly as received.
    pub data: Bytes,
    /// Acceptance time, milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// `None` for an envelope event (`data` is JSON, `application/json`); for a raw event,
    /// its content type and attributes (`data` is the request body).
    pub raw: Option<Arc<RawMeta>>,
}

/// What a raw event carries besides its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMeta {
    /// The body's content type as received (`application/octet-stream` when absent).
    pub content_type: String,
    /// `hookrelay-attr-NAME` values, sorted by name; names are `[a-z0-9_-]`.
    pub attributes: Vec<(String, String)>,
}

impl RawMeta {
    /// True when the body is declared JSON (`application/json` or `+json`), so filters on
    /// `field` can look into it.
    pub fn is_json(&self) -> bool {
        media_type::is_json(&self.content_type)
    }
}

/// Why an envelope was refused; each maps to one HTTP status at the ingest edge.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// Not JSON at all (400).
    #[error("malformed JSON at line {line}, column {column}: {message}")]
    Malformed {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser saw.
        message: String,
    },
    /// JSON, but not a valid envelope (422): every problem found, in the body's order.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
}

/// One thing wrong with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The offending field (`type`, `envelope` for the body as a whole, or
    /// `headers.hookrelay-event-type` for a raw event).
    pub field: Cow<'static, str>,
    /// What is wrong, e.g. `missing`.
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `envelope` is no member: its reasons read as sentences of their own.
        if self.field == "envelope" {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

/// The envelope's members, values left unparsed; a JSON object is required.
type Members<'a> = Vec<(std::borrow::Cow<'a, str>, &'a RawValue)>;

/// True when `s` may be an event id or type: `[A-Za-z0-9._:-]{1,128}` (they travel in headers).
pub fn is_id_or_type(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

impl Event {
    /// Parses an envelope from a request body.
    pub fn parse(body: &Bytes) -> Result<(Event, &RawValue), EventError> {
        let top: &RawValue = serde_json::from_slice(body).map_err(|e| EventError::Malformed {
            line: e.line(),
            column: e.column(),
            message: strip_position(&e.to_string()),
        })?;
        let members: Members<'_> = match serde_json::from_str::<MembersMap<'_>>(top.get()) {
            Ok(m) => m.0,
            Err(_) => {
                return Err(invalid(
                    "envelope",
                    "the body must be a JSON object with type and data".into(),
                ));
            }
        };
        // Every problem is collected; an empty Vec does not allocate, so a valid envelope
        // costs nothing more than when the first problem ended the parse.
        let mut problems: Vec<Problem> = Vec::new();
        let (mut event_type, mut id, mut data) = (None, None, None);
        // type, id, data given more than once; unknown members seen. The answer stays small
        // however many members a hostile body holds: each is looked at once.
        let mut repeated = [false; 3];
        let mut unknown = 0usize;
        for (key, value) in members {
            // Names compared unescaped: `"typ\u0065"` is `type` too.
            let (index, member, slot) = match key.as_ref() {
                "type" => (0, "type", &mut event_type),
                "id" => (1, "id", &mut id),
                "data" => (2, "data", &mut data),
                other => {
                    unknown += 1;
                    if unknown <= MAX_UNKNOWN_LISTED {
                        problems.push(problem(
                            "envelope",
                            format!(
                                "unknown member {:?} (expected type, id, data)",
                                clip_name(other)
                            ),
                        ));
                    }
                    continue;
                }
            };
            // Parsers disagree on which of two values wins: refuse rather than guess.
            if slot.replace(value).is_some() && !repeated[index] {
                repeated[index] = true;
                problems.push(problem(member, "given more than once".into()));
            }
        }
        if unknown > MAX_UNKNOWN_LISTED {
            problems.push(problem(
                "envelope",
                format!("and {} more unknown members", unknown - MAX_UNKNOWN_LISTED),
            ));
        }
        // A repeated member is already reported; its values are not judged.
        let event_type = match event_type {
            None => {
                problems.push(problem("type", "missing".into()));
                None
            }
            Some(_) if repeated[0] => None,
            Some(raw) => token("type", raw, &mut problems),
        };
        let id = match id {
            Some(raw) if !repeated[1] => token("id", raw, &mut problems),
            _ => None,
        };
        let raw = match data {
            None => {
                problems.push(problem("data", "missing".into()));
                None
            }
            Some(_) if repeated[2] => None,
            Some(raw) if raw.get() == "null" => {
                problems.push(problem("data", "must not be null".into()));
                None
            }
            Some(raw) => Some(raw),
        };
        let (Some(event_type), Some(raw), true) = (event_type, raw, problems.is_empty()) else {
            return Err(EventError::Invalid(problems));
        };
        let id = id.unwrap_or_else(new_id);
        // `raw` borrows from `body`: slice the shared buffer instead of copying.
        let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
        let data = body.slice(start..start + raw.get().len());
        Ok((
            Event {
                id,
                event_type,
                data,
                received_at_ms: now_ms(),
                raw: None,
            },
            raw,
        ))
    }
}

impl Event {
    /// Refuses data that filters would read nested deeper than `max_depth`
    /// (`limits.max_depth`): an envelope's `data`, a raw event's body declared JSON. Deeper
    /// data would pass a parser's own recursion limit and silently match no filter.
    pub fn check_depth(&self, max_depth: usize) -> Result<(), EventError> {
        let field = match self.raw.as_deref() {
            None => "data",
            Some(meta) if meta.is_json() => "body",
            // Opaque bytes: no filter reads them.
            Some(_) => return Ok(()),
        };
        if json_depth::exceeds(&self.data, max_depth) {
            return Err(invalid(
                field,
                format!("nests arrays and objects deeper than limits.max_depth ({max_depth})"),
            ));
        }
        Ok(())
    }
}

/// The header that makes a post a raw event, and names its type.
pub const TYPE_HEADER: &str = "hookrelay-event-type";
/// A raw event's optional id.
pub const ID_HEADER: &str = "hookrelay-event-id";
/// Prefix of a raw event's attribute headers (`hookrelay-attr-NAME`).
pub const ATTR_PREFIX: &str = "hookrelay-attr-";
/// Attributes one raw event may carry at most.
pub const MAX_ATTRIBUTES: usize = 32;
/// Longest attribute name (after the prefix).
pub const MAX_ATTR_NAME: usize = 64;
/// Longest attribute value, in bytes.
pub const MAX_ATTR_VALUE: usize = 512;
/// Longest content type of a raw event, in bytes.
pub const MAX_CONTENT_TYPE: usize = 256;
/// The content type stored for a raw event posted without one.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// True when `name` may be an attribute name: `[a-z0-9_-]{1,64}`.
pub fn valid_attr_name(name: &str) -> bool {
    (1..=MAX_ATTR_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// True when the request is a raw event (it carries `hookrelay-event-type`).
pub fn is_raw(headers: &HeaderMap) -> bool {
    headers.contains_key(TYPE_HEADER)
}

/// The first raw event header (`hookrelay-event-*`, `hookrelay-attr-*`) of a request, so
/// one sent with an envelope is refused rather than silently ignored.
pub fn raw_header(headers: &HeaderMap) -> Option<&str> {
    headers
        .keys()
        .map(|k| k.as_str())
        .find(|k| *k == TYPE_HEADER || *k == ID_HEADER || k.starts_with(ATTR_PREFIX))
}

impl Event {
    /// A raw event: `body` as is, described by the `hookrelay-*` headers and its content type.
    pub fn from_raw(headers: &HeaderMap, body: Bytes) -> Result<Event, EventError> {
        let bad = |name: &str, reason: String| {
            EventError::Invalid(vec![Problem {
                field: Cow::Owned(format!("headers.{name}")),
                reason,
            }])
        };
        // One value at most; header-safe text.
        let single = |name: &str| -> Result<Option<&str>, EventError> {
            let mut values = headers.get_all(name).iter();
            let Some(first) = values.next() else {
                return Ok(None);
            };
            if values.next().is_some() {
                return Err(bad(name, "given more than once".into()));
            }
            first
                .to_str()
                .map(Some)
                .map_err(|_| bad(name, "must be visible ASCII".into()))
        };
        let token = |name: &str| -> Result<Option<String>, EventError> {
            match single(name)? {
                None => Ok(None),
                Some(t) if is_id_or_type(t) => Ok(Some(t.to_string())),
                Some(_) => Err(bad(name, "must match [A-Za-z0-9._:-]{1,128}".into())),
            }
        };
        let event_type = token(TYPE_HEADER)?.ok_or_else(|| bad(TYPE_HEADER, "missing".into()))?;
        let id = token(ID_HEADER)?.unwrap_or_else(new_id);
        let content_type = match single(header::CONTENT_TYPE.as_str())? {
            None => OCTET_STREAM.to_string(),
            Some(ct) if ct.trim().is_empty() => OCTET_STREAM.to_string(),
            Some(ct) if ct.len() > MAX_CONTENT_TYPE => {
                return Err(bad(
                    "content-type",
                    format!("is longer than {MAX_CONTENT_TYPE} bytes"),
                ));
            }
            Some(ct) => ct.trim().to_string(),
        };
        let mut attributes: Vec<(String, String)> = Vec::new();
        for (name, value) in headers {
            let Some(attr) = name.as_str().strip_prefix(ATTR_PREFIX) else {
                continue;
            };
            let name = name.as_str();
            if !valid_attr_name(attr) {
                return Err(bad(
                    name,
                    format!("attribute names must match [a-z0-9_-]{{1,{MAX_ATTR_NAME}}}"),
                ));
            }
            if attributes.len() == MAX_ATTRIBUTES {
                return Err(bad(
                    name,
                    format!("more than {MAX_ATTRIBUTES} hookrelay-attr-* headers"),
                ));
            }
            let Ok(text) = value.to_str() else {
                return Err(bad(name, "must be visible ASCII".into()));
            };
            // `to_str` lets a tab through; filters and receivers expect one line of text.
            if text.bytes().any(|b| b.is_ascii_control()) {
                return Err(bad(
                    name,
                    "must not hold control characters (a tab included)".into(),
                ));
            }
            if text.len() > MAX_ATTR_VALUE {
                return Err(bad(name, format!("is longer than {MAX_ATTR_VALUE} bytes")));
            }
            if attributes.iter().any(|(n, _)| n == attr) {
                return Err(bad(name, "given more than once".into()));
            }
            attributes.push((attr.to_string(), text.to_string()));
        }
        attributes.sort_unstable();
        Ok(Event {
            id,
            event_type,
            data: body,
            received_at_ms: now_ms(),
            raw: Some(Arc::new(RawMeta {
                content_type,
                attributes,
            })),
        })
    }
}

/// Deserializes a JSON object into its members in order, values unparsed.
struct MembersMap<'a>(Members<'a>);

impl<'de> Deserialize<'de> for MembersMap<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = MembersMap<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) =
                    map.next_entry::<std::borrow::Cow<'de, str>, &'de RawValue>()?
                {
                    out.push((k, v));
                }
                Ok(MembersMap(out))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// An id or type member's text, or a problem recorded.
fn token(field: &'static str, raw: &RawValue, problems: &mut Vec<Problem>) -> Option<String> {
    match serde_json::from_str::<String>(raw.get()) {
        Ok(t) if is_id_or_type(&t) => Some(t),
        _ => {
            problems.push(problem(
                field,
                "must be a string matching [A-Za-z0-9._:-]{1,128}".into(),
            ));
            None
        }
    }
}

/// Unknown members named one by one in an answer; the rest are counted.
const MAX_UNKNOWN_LISTED: usize = 8;

/// A member name as an answer echoes it: at most 64 characters.
fn clip_name(name: &str) -> Cow<'_, str> {
    match name.char_indices().nth(64) {
        Some((end, _)) => Cow::Owned(format!("{}...", &name[..end])),
        None => Cow::Borrowed(name),
    }
}

fn problem(field: &'static str, reason: String) -> Problem {
    Problem {
        field: Cow::Borrowed(field),
        reason,
    }
}

/// A refusal with one problem.
fn invalid(field: &'static str, reason: String) -> EventError {
    EventError::Invalid(vec![problem(field, reason)])
}

/// serde_json appends " at line L column C"; the HTTP error reports the position separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Event, EventError> {
        Event::parse(&Bytes::copy_from_slice(s.as_bytes())).map(|(e, _)| e)
    }

    #[test]
    fn keeps_data_bytes_exactly() {
        let e = parse(r#"{"type":"a.b","data": {"x" : 1.50, "y":"\u00e9"} }"#).unwrap();
        assert_eq!(&e.data[..], br#"{"x" : 1.50, "y":"\u00e9"}"#);
        assert_eq!(e.event_type, "a.b");
        assert_eq!(e.id.len(), 36);
    }

    #[test]
    fn app_id_is_kept() {
        assert_eq!(
            parse(r#"{"type":"t","id":"ord-1:x","data":[]}"#)
                .unwrap()
                .id,
            "ord-1:x"
        );
    }

    #[test]
    fn refusals() {
        let malformed = parse("{\"type\": \"t\",\n \"data\": }").unwrap_err();
        assert!(
            matches!(malformed, EventError::Malformed { line: 2, .. }),
            "{malformed:?}"
        );
        let cases = [
            (r#"{"data":{}}"#, "type"),
            (r#"{"type":"a b","data":{}}"#, "type"),
            (r#"{"type":"t","id":"","data":{}}"#, "id"),
            (r#"{"type":"t","data":null}"#, "data"),
            (r#"{"type":"t"}"#, "data"),
            (r#"{"type":5,"data":{}}"#, "type"),
            (r#"{"type":"t","data":{},"dta":1}"#, "envelope"),
            (r#"{"type":"t","type":"u","data":{}}"#, "type"),
            (r#"{"type":"t","id":"a","id":"a","data":{}}"#, "id"),
            (r#"{"type":"t","data":1,"data":2}"#, "data"),
            ("[1]", "envelope"),
        ];
        for (body, field) in cases {
            match parse(body) {
                Err(EventError::Invalid(p)) => assert_eq!(p[0].field, *field, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        let long = format!(r#"{{"type":"{}","data":1}}"#, "a".repeat(129));
        assert!(parse(&long).is_err());
    }

    #[test]
    fn every_problem_of_an_envelope_is_listed() {
        let found = |body: &str| match parse(body) {
            Err(e @ EventError::Invalid(_)) => {
                let EventError::Invalid(p) = &e else {
                    unreachable!()
                };
                let fields: Vec<String> = p.iter().map(|p| p.to_string()).collect();
                (fields, e.to_string())
            }
            other => panic!("{body}: {other:?}"),
        };
        let (fields, message) = found(r#"{"id":"a b","colour":1,"data":null}"#);
        assert_eq!(
            fields,
            [
                r#"unknown member "colour" (expected type, id, data)"#,
                "type: missing",
                "id: must be a string matching [A-Za-z0-9._:-]{1,128}",
                "data: must not be null",
            ]
        );
        assert_eq!(message, fields.join("; "));
        // A member given three times is one problem, and its values are not judged.
        let (fields, _) = found(r#"{"type":1,"type":2,"type":3}"#);
        assert_eq!(fields, ["type: given more than once", "data: missing"]);
        let (fields, _) = found("{}");
        assert_eq!(fields, ["type: missing", "data: missing"]);
    }

    #[test]
    fn a_hostile_envelope_gets_a_short_answer() {
        // Thousands of unknown members and repeats: eight named, the rest counted, each
        // repeat reported once, long names clipped.
        let mut body = String::from("{");
        for i in 0..5000 {
            body.push_str(&format!(r#""m{i}":0,"id":0,"#));
        }
        body.push_str(&format!(r#""{}":0,"type":"a","data":1}}"#, "n".repeat(500)));
        let Err(EventError::Invalid(p)) = parse(&body) else {
            panic!("accepted")
        };
        let fields: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        assert_eq!(fields.len(), 10, "{fields:?}");
        assert_eq!(
            fields[0],
            r#"unknown member "m0" (expected type, id, data)"#
        );
        assert_eq!(fields[2], "id: given more than once");
        assert_eq!(fields[9], "and 4993 more unknown members");
        let long = parse(&format!(
            r#"{{"{}":0,"type":"a","data":1}}"#,
            "n".repeat(500)
        ));
        let Err(EventError::Invalid(p)) = long else {
            panic!("accepted")
        };
        assert_eq!(
            p[0].to_string(),
            format!(
                "unknown member \"{}...\" (expected type, id, data)",
                "n".repeat(64)
            )
        );
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            );
        }
        h
    }

    #[test]
    fn raw_events_keep_the_body_and_read_the_headers() {
        let body = Bytes::from_static("<a>é</a>".as_bytes());
        let e = Event::from_raw(
            &headers(&[
                ("hookrelay-event-type", "doc.signed"),
                ("hookrelay-event-id", "d-1"),
                ("content-type", "application/xml; charset=utf-8"),
                ("hookrelay-attr-zone", "eu"),
                ("hookrelay-attr-channel", "registrar"),
            ]),
            body.clone(),
        )
        .unwrap();
        assert_eq!(
            (e.id.as_str(), e.event_type.as_str()),
            ("d-1", "doc.signed")
        );
        assert_eq!(e.data, body);
        let raw = e.raw.unwrap();
        assert_eq!(raw.content_type, "application/xml; charset=utf-8");
        assert!(!raw.is_json());
        assert_eq!(
            raw.attributes,
            [
                ("channel".into(), "registrar".into()),
                ("zone".into(), "eu".into())
            ]
        );
        let e = Event::from_raw(&headers(&[("hookrelay-event-type", "t")]), Bytes::new()).unwrap();
        assert_eq!(e.raw.unwrap().content_type, OCTET_STREAM);
        assert_eq!(e.id.len(), 36);
    }

    #[test]
    fn raw_header_refusals_name_the_header() {
        let long_value = "v".repeat(MAX_ATTR_VALUE + 1);
        let many: Vec<(String, String)> = (0..=MAX_ATTRIBUTES)
            .map(|i| (format!("hookrelay-attr-a{i}"), "x".to_string()))
            .collect();
        let mut many: Vec<(&str, &str)> =
            many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        many.push(("hookrelay-event-type", "t"));
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (
                vec![("hookrelay-event-type", "a b")],
                "headers.hookrelay-event-type",
            ),
            (
                vec![("hookrelay-event-type", "t"), ("hookrelay-event-type", "u")],
                "headers.hookrelay-event-type",
            ),
            (
                vec![("hookrelay-event-type", "t"), ("hookrelay-event-id", "")],
                "headers.hookrelay-event-id",
            ),
            (
                vec![
                    ("hookrelay-event-type", "t"),
                    ("hookrelay-attr-x", "\u{e9}"),
                ],
                "headers.hookrelay-attr-x",
            ),
            (
                vec![("hookrelay-event-type", "t"), ("hookrelay-attr-x", "a\tb")],
                "headers.hookrelay-attr-x",
            ),
            (
                vec![
                    ("hookrelay-event-type", "t"),
                    ("hookrelay-attr-x", &long_value),
                ],
                "headers.hookrelay-attr-x",
            ),
            (
                vec![("hookrelay-event-type", "t"), ("hookrelay-attr-a.b", "1")],
                "headers.hookrelay-attr-a.b",
            ),
            (
                vec![("hookrelay-event-type", "t"), ("hookrelay-attr-", "1")],
                "headers.hookrelay-attr-",
            ),
            (
                vec![
                    ("hookrelay-event-type", "t"),
                    ("hookrelay-attr-x", "1"),
                    ("hookrelay-attr-x", "2"),
                ],
                "headers.hookrelay-attr-x",
            ),
            (many, "headers.hookrelay-attr-a"),
        ];
        for (pairs, expected) in cases {
            match Event::from_raw(&headers(&pairs), Bytes::new()) {
                Err(EventError::Invalid(p)) => {
                    assert!(p[0].field.starts_with(expected), "{pairs:?}: {p:?}")
                }
                other => panic!("{pairs:?}: {other:?}"),
            }
        }
    }
}
