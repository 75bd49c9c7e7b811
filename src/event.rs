//! Events as the app sends them: the JSON envelope, parsed once, with `data` kept as the exact
//! bytes the app sent so deliveries carry them byte for byte.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
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
    /// JSON, but not a valid envelope (422).
    #[error("{message}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The envelope's members, values left unparsed; a JSON object is required.
type Members<'a> = Vec<(std::borrow::Cow<'a, str>, &'a RawValue)>;

/// True when `s` may be an event id or type: `[A-Za-z0-9._:-]{1,128}` (they travel in headers).
pub fn valid_token(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A new event id: a lowercase UUIDv7, so ids sort by creation time.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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
                    "the body must be a JSON object with type and data",
                ));
            }
        };
        let (mut event_type, mut id, mut data) = (None, None, None);
        for (key, value) in members {
            match key.as_ref() {
                "type" => event_type = Some(value),
                "id" => id = Some(value),
                "data" => data = Some(value),
                other => {
                    return Err(EventError::Invalid {
                        field: "envelope",
                        message: format!("unknown member {other:?} (expected type, id, data)"),
                    });
                }
            }
        }
        let token = |field: &'static str, raw: &RawValue| -> Result<String, EventError> {
            match serde_json::from_str::<String>(raw.get()) {
                Ok(t) if valid_token(&t) => Ok(t),
                _ => Err(invalid(
                    field,
                    &format!("{field}: must be a string matching [A-Za-z0-9._:-]{{1,128}}"),
                )),
            }
        };
        let event_type = match event_type {
            None => return Err(invalid("type", "type: missing")),
            Some(raw) => token("type", raw)?,
        };
        let id = match id {
            None => new_id(),
            Some(raw) => token("id", raw)?,
        };
        let raw = match data {
            None => return Err(invalid("data", "data: missing")),
            Some(raw) if raw.get() == "null" => {
                return Err(invalid("data", "data: must not be null"));
            }
            Some(raw) => raw,
        };
        // `raw` borrows from `body`: slice the shared buffer instead of copying.
        let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
        let data = body.slice(start..start + raw.get().len());
        Ok((
            Event {
                id,
                event_type,
                data,
                received_at_ms: now_ms(),
            },
            raw,
        ))
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

fn invalid(field: &'static str, message: &str) -> EventError {
    EventError::Invalid {
        field,
        message: message.to_string(),
    }
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
            ("[1]", "envelope"),
        ];
        for (body, field) in cases {
            match parse(body) {
                Err(EventError::Invalid { field: f, .. }) => assert_eq!(f, field, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        let long = format!(r#"{{"type":"{}","data":1}}"#, "a".repeat(129));
        assert!(parse(&long).is_err());
    }
}
