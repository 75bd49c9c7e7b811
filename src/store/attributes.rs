//! A raw event's attributes as both stores keep them: a JSON object of strings, or NULL
//! when it has none.

use std::sync::Arc;

use crate::event::RawMeta;

/// The stored text of `attributes`; `None` when there are none.
pub(crate) fn to_json(attributes: &[(String, String)]) -> Option<String> {
    if attributes.is_empty() {
        return None;
    }
    let map: serde_json::Map<String, serde_json::Value> = attributes
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    Some(serde_json::Value::Object(map).to_string())
}

/// A raw event's metadata from its stored content type and attributes; `None` (no content
/// type) for an envelope event.
pub(crate) fn raw_meta(
    content_type: Option<String>,
    attributes: Option<String>,
) -> Option<Arc<RawMeta>> {
    let content_type = content_type?;
    let attributes = match attributes {
        None => Vec::new(),
        Some(text) => {
            let map: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&text).unwrap_or_default();
            map.into_iter()
                .filter_map(|(k, v)| match v {
                    serde_json::Value::String(v) => Some((k, v)),
                    _ => None,
                })
                .collect()
        }
    };
    Some(Arc::new(RawMeta {
        content_type,
        attributes,
    }))
}
