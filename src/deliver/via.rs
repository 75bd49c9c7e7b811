//! The `hookrelay-via` header: the relays an event has passed, so that no chain of
//! subscriptions, host names or proxies can deliver an event round a loop.
//!
//! Every HTTP delivery carries the ids of the relays the event passed, ending with this
//! relay's own id (random at each start). Ingest refuses (`508`) a post that names its own id,
//! so a loop through this relay stops after one round whatever names or proxies it takes,
//! before it can multiply by fan-out; and one that already passed [`MAX_HOPS`] relays, which
//! bounds loops through relays whose ids changed (a restart) and long chains. Relays chained
//! on purpose keep working up to that length. A path, not a bare counter: a counter alone
//! would let a self-loop run [`MAX_HOPS`] rounds, multiplied by every looping subscription
//! at each one.
//!
//! The path travels with the event as the reserved raw-event attribute [`ATTRIBUTE`]: a
//! relay's deliveries always arrive as raw events (they carry `hookrelay-event-type`), and
//! the store keeps a raw event's attributes, so the path survives retries and restarts.

use std::fmt::Write as _;

use http::{HeaderMap, HeaderValue};

use crate::event::RawMeta;

/// The header naming the relays a delivery's event passed, oldest first.
pub const HEADER: &str = "hookrelay-via";
/// The raw-event attribute that keeps an ingested event's path.
pub const ATTRIBUTE: &str = "hookrelay-via";
/// Relays an event may pass; a post that has passed this many is refused.
pub const MAX_HOPS: usize = 8;
/// Longest relay id accepted in the header.
const MAX_ID: usize = 64;

/// The relays a post passed, as its `hookrelay-via` header names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Via(Vec<String>);

/// Why a post's `hookrelay-via` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViaError {
    /// Not a comma-separated list of ids.
    #[error("{HEADER}: must be a comma-separated list of relay ids [A-Za-z0-9_-]{{1,{MAX_ID}}}")]
    Malformed,
    /// This relay delivered the event itself.
    #[error("{HEADER}: this relay delivered the event itself (a delivery loop)")]
    Loop,
    /// The event passed too many relays.
    #[error(
        "{HEADER}: the event passed {0} relays, the most is {MAX_HOPS} (a delivery loop or too long a chain)"
    )]
    TooManyHops(usize),
}

/// A new relay id: 16 random hex digits, so two relays (or two starts) differ.
pub fn new_relay_id() -> String {
    // The last 16 digits of a UUIDv7 are random (62 bits; the timestamp is in the first).
    let id = uuid::Uuid::now_v7().simple().to_string();
    id[16..].to_string()
}

impl Via {
    /// The relays named by every `hookrelay-via` header of a request (HTTP list syntax: the
    /// values of repeated headers join with commas, as proxies may fold them).
    pub fn from_headers(headers: &HeaderMap) -> Result<Via, ViaError> {
        let mut ids = Vec::new();
        for value in headers.get_all(HEADER) {
            let text = value.to_str().map_err(|_| ViaError::Malformed)?;
            for id in text.split(',').map(str::trim).filter(|id| !id.is_empty()) {
                if !valid_id(id) {
                    return Err(ViaError::Malformed);
                }
                ids.push(id.to_string());
            }
        }
        Ok(Via(ids))
    }

    /// Whether relay `own` may ingest the post: not when it names `own`, or has passed
    /// [`MAX_HOPS`] relays.
    pub fn check(&self, own: &str) -> Result<(), ViaError> {
        if self.0.iter().any(|id| id == own) {
            return Err(ViaError::Loop);
        }
        if self.0.len() >= MAX_HOPS {
            return Err(ViaError::TooManyHops(self.0.len()));
        }
        Ok(())
    }

    /// Records the path on an ingested raw event, replacing any attribute of that name the
    /// sender set (the header alone says where the event came from).
    pub fn record(&self, raw: &mut RawMeta) {
        raw.attributes.retain(|(name, _)| name != ATTRIBUTE);
        if !self.0.is_empty() {
            raw.attributes
                .push((ATTRIBUTE.to_string(), self.0.join(",")));
            raw.attributes.sort_unstable();
        }
    }
}

/// The `hookrelay-via` value of a delivery by relay `own`: the path its event came with
/// (kept when ingested), then `own`.
pub fn outgoing(raw: Option<&RawMeta>, own: &str) -> Option<HeaderValue> {
    let mut value = String::new();
    let path = raw.and_then(|r| r.attributes.iter().find(|(n, _)| n == ATTRIBUTE));
    if let Some((_, path)) = path {
        // Stored by `record`, so already valid ids; checked again rather than trusted.
        for id in path.split(',').filter(|id| valid_id(id)) {
            let _ = write!(value, "{id},");
        }
    }
    value.push_str(own);
    HeaderValue::from_str(&value).ok()
}

/// True when `id` may be a relay id in the header.
fn valid_id(id: &str) -> bool {
    (1..=MAX_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(HEADER, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn parses_lists_and_folded_headers() {
        assert_eq!(Via::from_headers(&HeaderMap::new()), Ok(Via::default()));
        assert_eq!(
            Via::from_headers(&headers(&["a1, b2", "c3"])),
            Ok(Via(vec!["a1".into(), "b2".into(), "c3".into()]))
        );
        assert_eq!(
            Via::from_headers(&headers(&[" , a1,"])),
            Ok(Via(vec!["a1".into()]))
        );
        for bad in ["a b", "a;b", "ä", &"x".repeat(65)] {
            let mut h = HeaderMap::new();
            h.insert(HEADER, HeaderValue::from_bytes(bad.as_bytes()).unwrap());
            assert_eq!(Via::from_headers(&h), Err(ViaError::Malformed), "{bad}");
        }
    }

    #[test]
    fn refuses_own_id_and_too_many_hops() {
        let own = "0123456789abcdef";
        assert_eq!(Via::default().check(own), Ok(()));
        let via = Via::from_headers(&headers(&["other", own])).unwrap();
        assert_eq!(via.check(own), Err(ViaError::Loop));
        let seven: Vec<String> = (0..MAX_HOPS - 1).map(|i| format!("r{i}")).collect();
        assert_eq!(Via(seven.clone()).check(own), Ok(()));
        let mut eight = seven;
        eight.push("r9".into());
        assert_eq!(Via(eight).check(own), Err(ViaError::TooManyHops(MAX_HOPS)));
    }

    #[test]
    fn path_is_kept_on_the_event_and_extended_on_delivery() {
        let mut raw = RawMeta {
            content_type: "text/plain".into(),
            attributes: vec![
                (ATTRIBUTE.into(), "forged".into()),
                ("zone".into(), "eu".into()),
            ],
        };
        // Without the header the sender's attribute of that name is dropped.
        Via::default().record(&mut raw);
        assert_eq!(raw.attributes, vec![("zone".into(), "eu".into())]);
        assert_eq!(outgoing(Some(&raw), "me").unwrap(), "me");
        Via(vec!["a".into(), "b".into()]).record(&mut raw);
        assert_eq!(outgoing(Some(&raw), "me").unwrap(), "a,b,me");
        assert_eq!(outgoing(None, "me").unwrap(), "me");
    }

    #[test]
    fn relay_ids_are_valid_and_differ() {
        let (a, b) = (new_relay_id(), new_relay_id());
        assert!(valid_id(&a) && a.len() == 16, "{a}");
        assert_ne!(a, b);
    }
}
