//! Delivery encodings: what body and content type an attempt carries for a subscription's
//! `encoding` (raw, envelope or form).

use base64::Engine;
use bytes::Bytes;
use http::HeaderValue;
use serde::Serialize;
use serde::ser::SerializeMap;

use crate::store::Delivery;
use crate::subscription::Encoding;
use crate::time::rfc3339;

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

/// The body and `Content-Type` of an attempt of `delivery` under `encoding`.
pub fn encode(encoding: &Encoding, delivery: &Delivery) -> (Bytes, HeaderValue) {
    match encoding {
        Encoding::Raw => (delivery.data.clone(), content_type(delivery)),
        Encoding::Envelope => (envelope(delivery), HeaderValue::from_static(JSON)),
        Encoding::Form { field } => (form(field, &delivery.data), HeaderValue::from_static(FORM)),
    }
}

/// The stored content type: a raw event's own, `application/json` for an envelope event's data.
fn content_type(delivery: &Delivery) -> HeaderValue {
    match delivery.raw.as_deref() {
        None => HeaderValue::from_static(JSON),
        // Validated as header-safe at ingest; the fallback is for rows written otherwise.
        Some(raw) => HeaderValue::from_str(&raw.content_type)
            .unwrap_or_else(|_| HeaderValue::from_static(crate::event::OCTET_STREAM)),
    }
}

/// The members of an envelope before `data`.
#[derive(Serialize)]
struct Head<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    received_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Attributes::is_empty")]
    attributes: Attributes<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
}

/// A raw event's attributes as a JSON object.
struct Attributes<'a>(&'a [(String, String)]);

impl Attributes<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Attributes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// `{"id", "type", "received_at", "data"}`: an envelope event's data embedded as JSON; a raw
/// body as a string, or `data_base64` when it is not UTF-8, with `content_type` (and
/// `attributes` when it has some).
fn envelope(d: &Delivery) -> Bytes {
    let mut head = Head {
        id: &d.event_id,
        event_type: &d.event_type,
        received_at: rfc3339(d.received_at_ms),
        content_type: None,
        attributes: Attributes(&[]),
        data: None,
        data_base64: None,
    };
    let mut out = Vec::with_capacity(d.data.len() + 160);
    match d.raw.as_deref() {
        Some(raw) => {
            head.content_type = Some(&raw.content_type);
            head.attributes = Attributes(&raw.attributes);
            match std::str::from_utf8(&d.data) {
                Ok(text) => head.data = Some(text),
                Err(_) => {
                    head.data_base64 =
                        Some(base64::engine::general_purpose::STANDARD.encode(&d.data))
                }
            }
            // Serializing strings and a map of strings cannot fail.
            let _ = serde_json::to_writer(&mut out, &head);
        }
        None => {
            // The data is JSON (checked at ingest): splice its bytes in as they are
            // rather than parsing and re-serializing them.
            let _ = serde_json::to_writer(&mut out, &head);
            out.pop(); // the closing brace
            out.extend_from_slice(b",\"data\":");
            out.extend_from_slice(&d.data);
            out.push(b'}');
        }
    }
    Bytes::from(out)
}

/// `FIELD=DATA`, both percent-encoded by `form_urlencoded` (bytes that are not UTF-8 too).
fn form(field: &str, data: &[u8]) -> Bytes {
    let mut out = String::with_capacity(field.len() + 1 + data.len() * 3 / 2);
    out.extend(form_urlencoded::byte_serialize(field.as_bytes()));
    out.push('=');
    out.extend(form_urlencoded::byte_serialize(data));
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::RawMeta;

    fn delivery(data: &'static [u8], raw: Option<RawMeta>) -> Delivery {
        Delivery {
            id: 1,
            subscription: Arc::from("s"),
            event_id: Arc::from("e-1"),
            event_type: Arc::from("doc.signed"),
            data: Bytes::from_static(data),
            raw: raw.map(Arc::new),
            attempts: 0,
            budget_used: 0,
            received_at_ms: 1_700_000_000_123,
            token: 0,
        }
    }

    fn xml() -> RawMeta {
        RawMeta {
            content_type: "application/xml; charset=utf-8".into(),
            attributes: vec![("zone".into(), "eu".into())],
        }
    }

    #[test]
    fn raw_keeps_bytes_and_content_type() {
        let d = delivery("<a>é</a>".as_bytes(), Some(xml()));
        let (body, ct) = encode(&Encoding::Raw, &d);
        assert_eq!(&body[..], "<a>é</a>".as_bytes());
        assert_eq!(ct, "application/xml; charset=utf-8");
        let (body, ct) = encode(&Encoding::Raw, &delivery(b"{\"a\": 1}", None));
        assert_eq!(
            (&body[..], ct.to_str().unwrap()),
            (&b"{\"a\": 1}"[..], JSON)
        );
    }

    #[test]
    fn envelopes() {
        let (body, ct) = encode(&Encoding::Envelope, &delivery(b"{\"a\": 1.50}", None));
        assert_eq!(ct, JSON);
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"id":"e-1","type":"doc.signed","received_at":"2023-11-14T22:13:20.123Z","data":{"a": 1.50}}"#
        );
        let (body, _) = encode(
            &Encoding::Envelope,
            &delivery("<a>é</a>".as_bytes(), Some(xml())),
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["data"], "<a>é</a>");
        assert_eq!(v["content_type"], "application/xml; charset=utf-8");
        assert_eq!(v["attributes"], serde_json::json!({"zone": "eu"}));
        assert!(v.get("data_base64").is_none());
        let (body, _) = encode(&Encoding::Envelope, &delivery(&[0xff, 0x00], Some(xml())));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["data_base64"], "/wA=");
        assert!(v.get("data").is_none());
    }

    #[test]
    fn form_round_trips() {
        let xml_body = "<req a=\"1&2\">é + ü=</req>\n";
        let d = delivery(xml_body.as_bytes(), Some(xml()));
        let (body, ct) = encode(
            &Encoding::Form {
                field: "request".into(),
            },
            &d,
        );
        assert_eq!(ct, FORM);
        let pairs: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        assert_eq!(pairs, [("request".to_string(), xml_body.to_string())]);
    }
}
