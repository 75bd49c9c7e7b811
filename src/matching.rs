//! Matching: which subscriptions an event goes to. An index by event type (exact types, prefix
//! globs probed only at the prefix lengths that exist, wildcards) narrows the candidates, so
//! matching never scans subscriptions whose types cannot match; then their filters decide.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value as Json;
use serde_json::value::RawValue;

use crate::filter::Subject;
use crate::subscription::{EventPattern, Subscription};

/// The subscriptions in force, indexed by event type for matching, each with its target `T`:
/// what a match yields (the relay's is the subscription's dispatch lane, which carries
/// everything ingest needs to store and hand over a delivery, so nothing is looked up again).
/// It is immutable: a change builds a new one, swapped in atomically.
#[derive(Debug)]
pub struct Matcher<T> {
    subs: Vec<Arc<Subscription>>,
    /// `targets[i]` is what a match of `subs[i]` yields.
    targets: Vec<T>,
    /// `subs[i].name`, shared, so listing names allocates none.
    names: Vec<Arc<str>>,
    exact: HashMap<String, Vec<usize>>,
    prefixes: HashMap<String, Vec<usize>>,
    /// Distinct prefix lengths, so a lookup probes only lengths that exist.
    prefix_lens: Vec<usize>,
    wildcard: Vec<usize>,
}

impl Matcher<Arc<str>> {
    /// An index whose matches yield the subscriptions' names.
    pub fn by_name(subs: Vec<Arc<Subscription>>) -> Self {
        Matcher::new(subs.into_iter().map(|s| {
            let name = Arc::from(s.name.as_str());
            (s, name)
        }))
    }
}

impl<T: Clone> Matcher<T> {
    /// Builds the index of `entries`, each a subscription and its target.
    pub fn new(entries: impl IntoIterator<Item = (Arc<Subscription>, T)>) -> Self {
        let (subs, targets): (Vec<_>, Vec<_>) = entries.into_iter().unzip();
        let mut r = Matcher {
            names: subs.iter().map(|s| Arc::from(s.name.as_str())).collect(),
            subs,
            targets,
            exact: HashMap::new(),
            prefixes: HashMap::new(),
            prefix_lens: Vec::new(),
            wildcard: Vec::new(),
        };
        for (i, sub) in r.subs.iter().enumerate() {
            for pattern in &sub.events {
                match pattern {
                    EventPattern::Any => r.wildcard.push(i),
                    EventPattern::Exact(t) => r.exact.entry(t.clone()).or_default().push(i),
                    EventPattern::Prefix(p) => {
                        r.prefixes.entry(p.clone()).or_default().push(i);
                        if !r.prefix_lens.contains(&p.len()) {
                            r.prefix_lens.push(p.len());
                        }
                    }
                }
            }
        }
        r.prefix_lens.sort_unstable();
        r
    }

    /// The targets of the subscriptions an envelope event goes to; `data` is parsed only if a
    /// candidate has a filter that looks into it.
    pub fn matching(&self, event_type: &str, data: &RawValue) -> Vec<T> {
        self.select(event_type, || serde_json::from_str(data.get()).ok(), &[])
    }

    /// The targets of the subscriptions a raw event goes to. `json` is its body when that is
    /// declared JSON (parsed only if a filter looks into `data`); `attributes` are sorted.
    pub fn matching_raw(
        &self,
        event_type: &str,
        json: Option<&[u8]>,
        attributes: &[(String, String)],
    ) -> Vec<T> {
        self.select(
            event_type,
            || json.and_then(|j| serde_json::from_slice(j).ok()),
            attributes,
        )
    }

    fn select(
        &self,
        event_type: &str,
        parse: impl Fn() -> Option<Json>,
        attributes: &[(String, String)],
    ) -> Vec<T> {
        let candidates = self.candidates(event_type);
        let mut parsed: Option<Option<Json>> = None;
        candidates
            .into_iter()
            .filter(|&i| {
                let filter = &self.subs[i].filter;
                if filter.is_everything() {
                    return true;
                }
                let data = if filter.reads_data() {
                    parsed.get_or_insert_with(&parse).as_ref()
                } else {
                    None
                };
                filter.matches(&Subject { data, attributes })
            })
            .map(|i| self.targets[i].clone())
            .collect()
    }
}

impl<T> Matcher<T> {
    /// All subscriptions: the config's in order, then the API's.
    pub fn all(&self) -> &[Arc<Subscription>] {
        &self.subs
    }

    /// Indices of the subscriptions whose event patterns select `event_type`, ascending.
    pub fn candidates(&self, event_type: &str) -> Vec<usize> {
        let mut out: Vec<usize> = self.wildcard.clone();
        if let Some(ids) = self.exact.get(event_type) {
            out.extend_from_slice(ids);
        }
        for &len in &self.prefix_lens {
            if len > event_type.len() {
                break;
            }
            if let Some(ids) = event_type.get(..len).and_then(|p| self.prefixes.get(p)) {
                out.extend_from_slice(ids);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Names of every subscription, in configuration order.
    pub fn names(&self) -> Vec<String> {
        self.names.iter().map(|n| n.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::tests::{parse, sub};

    #[test]
    fn index_yields_only_subscriptions_whose_types_can_match() {
        let mut subs = vec![
            sub("exact", &["invoice.paid"]),
            sub("glob", &["envelope.*"]),
            sub("all", &["*"]),
            sub("both", &["envelope.*", "envelope.completed"]),
            sub("short", &["e*"]),
        ];
        for i in 0..1000 {
            subs.push(sub(&format!("other-{i}"), &[&format!("other.{i}")]));
        }
        let r = Matcher::by_name(subs.into_iter().map(Arc::new).collect());
        let names = |t: &str| -> Vec<String> {
            r.candidates(t)
                .into_iter()
                .map(|i| r.all()[i].name.clone())
                .collect()
        };
        assert_eq!(
            names("envelope.completed"),
            ["glob", "all", "both", "short"]
        );
        assert_eq!(names("invoice.paid"), ["exact", "all"]);
        assert_eq!(names("invoice.paid.extra"), ["all"]);
        assert_eq!(names("other.7"), ["all", "other-7"]);
        assert_eq!(names("envelope"), ["all", "short"]);
        assert_eq!(r.candidates("nothing").len(), 1);
    }

    #[test]
    fn matching_applies_filters() {
        let with_filter =
            parse("{name: f, url: 'http://h/', events: [x], filter: {field: status, equals: ok}}")
                .unwrap();
        let r = Matcher::by_name(vec![Arc::new(with_filter), Arc::new(sub("plain", &["x"]))]);
        let data = RawValue::from_string(r#"{"status":"ok"}"#.into()).unwrap();
        assert_eq!(r.matching("x", &data).len(), 2);
        let data = RawValue::from_string(r#"{"status":"no"}"#.into()).unwrap();
        let names: Vec<_> = r
            .matching("x", &data)
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(names, ["plain"]);
    }

    #[test]
    fn raw_events_match_by_attributes_and_json_bodies() {
        let by_attr =
            parse("{name: zone, url: 'http://h/', events: [x], filter: {attr: zone, equals: eu}}")
                .unwrap();
        let by_field =
            parse("{name: total, url: 'http://h/', events: [x], filter: {field: total, from: 10}}")
                .unwrap();
        let r = Matcher::by_name(vec![Arc::new(by_attr), Arc::new(by_field)]);
        let eu = [("zone".to_string(), "eu".to_string())];
        let names = |v: Vec<Arc<str>>| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(names(r.matching_raw("x", None, &eu)), ["zone"]);
        assert_eq!(
            names(r.matching_raw("x", Some(br#"{"total": 12}"#), &[])),
            ["total"]
        );
        // A body that does not parse has no fields.
        assert!(
            r.matching_raw("x", Some(b"<total>12</total>"), &[])
                .is_empty()
        );
        let data = RawValue::from_string(r#"{"zone":"eu"}"#.into()).unwrap();
        assert!(r.matching("x", &data).is_empty());
    }
}
