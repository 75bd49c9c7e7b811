//! Matching: which subscriptions an event goes to. An index by event type (exact types, prefix
//! globs probed only at the lengths and last bytes that exist, wildcards) narrows the
//! candidates, so matching never scans subscriptions whose types cannot match; then their
//! filters decide.
//!
//! The index is made of persistent collections (`imbl`): a change copies only the few nodes
//! on its path and shares the rest with the version it came from, so it costs about the same
//! at 10 subscriptions as at 10,000, and a reader keeps the version it loaded. Each version
//! remembers the candidates of the types it has seen (`Memo`), since apps send few types.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use imbl::shared_ptr::DefaultSharedPtr;
use imbl::{GenericHashMap, OrdMap, Vector};
use serde_json::Value as Json;
use serde_json::value::RawValue;

use crate::filter::Subject;
use crate::subscription::{EventPattern, Source, Subscription};

/// Where a subscription stands in the order matches come in: the config's by position, then
/// the API's by id (a UUIDv7, so in creation order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Place {
    /// Its position in the config file's list.
    Config(usize),
    /// An API subscription's id.
    Api(Arc<str>),
}

impl Place {
    /// The place of an API subscription.
    pub fn api(sub: &Subscription) -> Place {
        Place::Api(Arc::from(sub.id.as_str()))
    }
}

/// A subscription in the index, with its place and target.
#[derive(Debug)]
struct Entry<T> {
    place: Place,
    sub: Arc<Subscription>,
    target: T,
}

/// The prefixes of one length: which bytes they end with (most end with `.`).
#[derive(Debug, Clone, Copy)]
struct PrefixLen {
    len: usize,
    last: [u64; 4],
}

impl PrefixLen {
    /// Whether some prefix of this length may be `event_type`'s.
    fn may_start(&self, event_type: &[u8]) -> bool {
        let Some(&b) = self.len.checked_sub(1).and_then(|i| event_type.get(i)) else {
            return true;
        };
        self.last[usize::from(b / 64)] & (1 << (b % 64)) != 0
    }
}

/// The entries one pattern selects, ascending by place.
type Bucket<T> = Vector<Arc<Entry<T>>>;

/// The entries that may match one event type, in order.
type Candidates<T> = Arc<[Arc<Entry<T>>]>;

/// Most event types whose candidates one version remembers; past it, it starts over.
const MEMO_TYPES: usize = 1024;
/// Most candidates it holds over all types (8 bytes each): a registry of many wildcards
/// would otherwise hold that many per type.
const MEMO_ENTRIES: usize = 131_072;

/// The candidates of the event types one version of the index has looked up: probing the
/// buckets and merging them took most of matching's time. SipHash, not foldhash: the keys
/// are the senders' event types. Never copied: a changed index starts with none.
#[derive(Debug)]
struct Memo<T>(RwLock<MemoMap<T>>);

#[derive(Debug)]
struct MemoMap<T> {
    by_type: HashMap<Box<str>, Candidates<T>>,
    /// Candidates held, over all types.
    entries: usize,
}

impl<T> Default for Memo<T> {
    fn default() -> Self {
        Memo(RwLock::new(MemoMap {
            by_type: HashMap::new(),
            entries: 0,
        }))
    }
}

impl<T> Memo<T> {
    fn get(&self, event_type: &str) -> Option<Candidates<T>> {
        let memo = self.0.read().unwrap_or_else(|e| e.into_inner());
        memo.by_type.get(event_type).cloned()
    }

    fn put(&self, event_type: &str, candidates: Candidates<T>) {
        if candidates.len() > MEMO_ENTRIES {
            return;
        }
        let mut memo = self.0.write().unwrap_or_else(|e| e.into_inner());
        // Many types (ids in them, say): start over rather than grow or pick what to drop.
        if memo.by_type.len() >= MEMO_TYPES || memo.entries + candidates.len() > MEMO_ENTRIES {
            memo.by_type.clear();
            memo.entries = 0;
        }
        memo.entries += candidates.len();
        if let Some(old) = memo.by_type.insert(event_type.into(), candidates) {
            // Two lookups of a new type raced; the first one's list goes.
            memo.entries -= old.len();
        }
    }

    fn forget(&mut self) {
        let memo = self.0.get_mut().unwrap_or_else(|e| e.into_inner());
        memo.by_type.clear();
        memo.entries = 0;
    }
}

/// Buckets by type or prefix. foldhash, not SipHash: a lookup hashes the event type once per
/// prefix length, and the keys are the operators' patterns, not the senders' input.
type ByKey<T> = GenericHashMap<Arc<str>, Bucket<T>, foldhash::fast::RandomState, DefaultSharedPtr>;

/// The subscriptions in force, indexed by event type for matching, each with its target `T`:
/// what a match yields (the relay's is the subscription's dispatch lane, which carries
/// everything ingest needs to store and hand over a delivery, so nothing is looked up again).
/// A published one is never changed: a change is made to a clone (cheap: it shares every
/// node) and swapped in atomically.
#[derive(Debug)]
pub struct Matcher<T> {
    /// Every entry, in order.
    entries: OrdMap<Place, Arc<Entry<T>>>,
    exact: ByKey<T>,
    prefixes: ByKey<T>,
    /// How many prefixes there are of each length and last byte.
    prefix_counts: OrdMap<(usize, u8), usize>,
    /// The lengths in `prefix_counts`, ascending, each with its last bytes, so a lookup
    /// probes only lengths that exist and where the type's byte is one a prefix ends with
    /// (rewritten only when a pair comes or goes).
    prefix_lens: Arc<[PrefixLen]>,
    wildcard: Bucket<T>,
    memo: Memo<T>,
}

// Not derived: that would ask `T: Clone`, and the entries are shared, never cloned.
impl<T> Clone for Matcher<T> {
    fn clone(&self) -> Self {
        Matcher {
            entries: self.entries.clone(),
            exact: self.exact.clone(),
            prefixes: self.prefixes.clone(),
            prefix_counts: self.prefix_counts.clone(),
            prefix_lens: self.prefix_lens.clone(),
            wildcard: self.wildcard.clone(),
            memo: Memo::default(),
        }
    }
}

impl<T> Default for Matcher<T> {
    fn default() -> Self {
        Matcher {
            entries: OrdMap::new(),
            exact: ByKey::default(),
            prefixes: ByKey::default(),
            prefix_counts: OrdMap::new(),
            prefix_lens: Arc::new([]),
            wildcard: Vector::new(),
            memo: Memo::default(),
        }
    }
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
    /// Builds the index of `entries`, each a subscription and its target, in order: the
    /// config's (placed by their position here), then the API's.
    pub fn new(entries: impl IntoIterator<Item = (Arc<Subscription>, T)>) -> Self {
        let mut r = Matcher::default();
        for (i, (sub, target)) in entries.into_iter().enumerate() {
            let place = match sub.source {
                Source::Config => Place::Config(i),
                Source::Api => Place::api(&sub),
            };
            r.insert(place, sub, target);
        }
        r
    }

    /// Puts `sub` at `place`, replacing the one there. O(log n).
    pub fn insert(&mut self, place: Place, sub: Arc<Subscription>, target: T) {
        self.remove(&place);
        self.memo.forget();
        let entry = Arc::new(Entry {
            place: place.clone(),
            sub,
            target,
        });
        for pattern in &entry.sub.events {
            match pattern {
                EventPattern::Any => put(&mut self.wildcard, &entry),
                EventPattern::Exact(t) => {
                    put_keyed(&mut self.exact, t, &entry);
                }
                EventPattern::Prefix(p) => {
                    if put_keyed(&mut self.prefixes, p, &entry) {
                        self.count_prefix(p, true);
                    }
                }
            }
        }
        self.entries.insert(place, entry);
    }

    /// Removes the subscription at `place`; whether there was one. O(log n).
    pub fn remove(&mut self, place: &Place) -> bool {
        let Some(entry) = self.entries.remove(place) else {
            return false;
        };
        self.memo.forget();
        for pattern in &entry.sub.events {
            match pattern {
                EventPattern::Any => {
                    take(&mut self.wildcard, place);
                }
                EventPattern::Exact(t) => {
                    take_keyed(&mut self.exact, t, place);
                }
                EventPattern::Prefix(p) => {
                    if take_keyed(&mut self.prefixes, p, place) {
                        self.count_prefix(p, false);
                    }
                }
            }
        }
        true
    }

    /// Counts a prefix whose bucket came (`added`) or went; the lengths to probe are rewritten
    /// when a length and last byte come or go (bounded by the distinct pairs, not by n).
    fn count_prefix(&mut self, prefix: &str, added: bool) {
        // An empty prefix (which validation refuses) is probed at every type.
        let key = (prefix.len(), prefix.as_bytes().last().copied().unwrap_or(0));
        let count = self.prefix_counts.get(&key).copied().unwrap_or(0);
        match (added, count) {
            (true, _) => {
                self.prefix_counts.insert(key, count + 1);
            }
            (false, 0) => return,
            (false, 1) => {
                self.prefix_counts.remove(&key);
            }
            (false, _) => {
                self.prefix_counts.insert(key, count - 1);
                return;
            }
        }
        if added && count > 0 {
            return;
        }
        let mut lens: Vec<PrefixLen> = Vec::new();
        for &(len, b) in self.prefix_counts.keys() {
            if lens.last().is_none_or(|l| l.len != len) {
                lens.push(PrefixLen { len, last: [0; 4] });
            }
            if let Some(l) = lens.last_mut() {
                l.last[usize::from(b / 64)] |= 1 << (b % 64);
            }
        }
        self.prefix_lens = lens.into();
    }

    /// Removes every config subscription; they come back with [`Matcher::insert`] at their new
    /// places. O(c log n) for c config subscriptions.
    pub fn clear_config(&mut self) {
        let places: Vec<Place> = self
            .entries
            .keys()
            .take_while(|p| matches!(p, Place::Config(_)))
            .cloned()
            .collect();
        for place in places {
            self.remove(&place);
        }
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
        let candidates = self.memo.get(event_type).unwrap_or_else(|| {
            let found: Candidates<T> = self
                .candidate_entries(event_type)
                .into_iter()
                .cloned()
                .collect();
            self.memo.put(event_type, found.clone());
            found
        });
        let mut parsed: Option<Option<Json>> = None;
        let mut out = Vec::with_capacity(candidates.len());
        let matched = candidates
            .iter()
            .filter(|e| {
                let filter = &e.sub.filter;
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
            .map(|e| e.target.clone());
        out.extend(matched);
        out
    }
}

impl<T> Matcher<T> {
    /// All subscriptions: the config's in order, then the API's.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Subscription>> {
        self.entries.values().map(|e| &e.sub)
    }

    /// How many subscriptions there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The subscriptions whose event patterns select `event_type`, in order.
    pub fn candidates(&self, event_type: &str) -> Vec<&Arc<Subscription>> {
        self.candidate_entries(event_type)
            .into_iter()
            .map(|e| &e.sub)
            .collect()
    }

    fn candidate_entries<'a>(&'a self, event_type: &str) -> Vec<&'a Arc<Entry<T>>> {
        let mut out: Vec<&Arc<Entry<T>>> = Vec::new();
        // Each bucket is in order: only several need sorting together.
        let mut buckets = 0;
        let mut add = |bucket: &'a Bucket<T>| {
            if !bucket.is_empty() {
                buckets += 1;
                // By chunk: a bucket of up to 64 is one slice.
                for chunk in bucket.leaves() {
                    out.extend(chunk.iter());
                }
            }
        };
        add(&self.wildcard);
        if let Some(bucket) = self.exact.get(event_type) {
            add(bucket);
        }
        for l in self.prefix_lens.iter() {
            if l.len > event_type.len() {
                break;
            }
            if !l.may_start(event_type.as_bytes()) {
                continue;
            }
            if let Some(bucket) = event_type.get(..l.len).and_then(|p| self.prefixes.get(p)) {
                add(bucket);
            }
        }
        if buckets > 1 {
            // Stable sort: it merges the buckets' sorted runs instead of sorting afresh.
            out.sort_by(|a, b| a.place.cmp(&b.place));
            // A subscription with two patterns that both select the type is there twice.
            out.dedup_by(|a, b| Arc::ptr_eq(*a, *b));
        }
        out
    }

    /// Names of every subscription, in order.
    pub fn names(&self) -> Vec<String> {
        self.entries.values().map(|e| e.sub.name.clone()).collect()
    }
}

/// Puts `entry` into `bucket` at its place, replacing one there.
fn put<T>(bucket: &mut Bucket<T>, entry: &Arc<Entry<T>>) {
    match bucket.binary_search_by(|e| e.place.cmp(&entry.place)) {
        Ok(i) => {
            bucket.set(i, entry.clone());
        }
        Err(i) => bucket.insert(i, entry.clone()),
    }
}

/// Puts `entry` into the bucket of `key`; whether that bucket is new.
fn put_keyed<T>(map: &mut ByKey<T>, key: &str, entry: &Arc<Entry<T>>) -> bool {
    match map.get_mut(key) {
        Some(bucket) => {
            put(bucket, entry);
            false
        }
        None => {
            map.insert(Arc::from(key), Vector::unit(entry.clone()));
            true
        }
    }
}

/// Takes the entry at `place` out of `bucket`.
fn take<T>(bucket: &mut Bucket<T>, place: &Place) {
    if let Ok(i) = bucket.binary_search_by(|e| e.place.cmp(place)) {
        bucket.remove(i);
    }
}

/// Takes the entry at `place` out of the bucket of `key`; whether that bucket is now gone.
fn take_keyed<T>(map: &mut ByKey<T>, key: &str, place: &Place) -> bool {
    let Some(bucket) = map.get_mut(key) else {
        return false;
    };
    take(bucket, place);
    if bucket.is_empty() {
        map.remove(key);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::subscription::tests::{parse, sub};

    fn names(subs: Vec<&Arc<Subscription>>) -> Vec<String> {
        subs.into_iter().map(|s| s.name.clone()).collect()
    }

    #[test]
    fn remembered_candidates_follow_every_change() {
        let mut r = Matcher::by_name(vec![Arc::new(sub("a", &["x"]))]);
        let data = RawValue::from_string("{}".into()).unwrap();
        let matching = |r: &Matcher<Arc<str>>| -> Vec<String> {
            r.matching("x", &data)
                .iter()
                .map(|n| n.to_string())
                .collect()
        };
        assert_eq!(matching(&r), ["a"]);
        // Changed in place (the catalog's working copy) and as a published clone.
        r.insert(
            Place::Config(1),
            Arc::new(sub("b", &["x.*", "x"])),
            "b".into(),
        );
        assert_eq!(matching(&r), ["a", "b"]);
        let published = r.clone();
        assert_eq!(matching(&published), ["a", "b"]);
        r.remove(&Place::Config(0));
        assert_eq!(matching(&r), ["b"]);
        assert_eq!(matching(&published), ["a", "b"]);
    }

    #[test]
    fn remembers_a_bounded_number_of_types_and_candidates() {
        let r = Matcher::by_name(vec![Arc::new(sub("all", &["*"]))]);
        let data = RawValue::from_string("{}".into()).unwrap();
        let held = |r: &Matcher<Arc<str>>| {
            let memo = r.memo.0.read().unwrap();
            (memo.by_type.len(), memo.entries)
        };
        for i in 0..MEMO_TYPES + 10 {
            assert_eq!(r.matching(&format!("t.{i}"), &data).len(), 1);
            let (types, entries) = held(&r);
            assert!((1..=MEMO_TYPES).contains(&types), "{types} types kept");
            assert_eq!(entries, types);
        }
        assert_eq!(held(&r), (10, 10));
        // Long lists (many wildcards): fewer types fit, the candidates held stay bounded.
        let entry = Arc::new(Entry {
            place: Place::Config(0),
            sub: Arc::new(sub("w", &["*"])),
            target: (),
        });
        let memo = Memo::default();
        let held = || {
            let m = memo.0.read().unwrap();
            (m.by_type.len(), m.entries)
        };
        let per_type = MEMO_ENTRIES / 3;
        for i in 0..5 {
            memo.put(&format!("t.{i}"), vec![entry.clone(); per_type].into());
            let (types, entries) = held();
            assert!(entries <= MEMO_ENTRIES, "{entries} candidates held");
            assert_eq!(entries, types * per_type);
        }
        assert_eq!(held(), (2, 2 * per_type));
        assert!(memo.get("t.4").is_some() && memo.get("t.2").is_none());
        // A list longer than the whole bound is not kept.
        memo.put("huge", vec![entry; MEMO_ENTRIES + 1].into());
        assert!(memo.get("huge").is_none());
    }

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
        let names = |t: &str| names(r.candidates(t));
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

    /// The subscriptions a test has put in, by place.
    type InForce = BTreeMap<Place, Arc<Subscription>>;

    /// A small xorshift, so the sequence of changes is the same on every run.
    struct Dice(u64);

    impl Dice {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    const PATTERNS: [&str; 11] = [
        "a.x", "a.y", "b.x", "a.*", "a.x.*", "b.*", "*", "c", "a.x", "a-*", "ab*",
    ];
    const PROBES: [&str; 13] = [
        "a.x", "a.y", "b.x", "a.x.1", "a.z", "b", "c", "d", "a.", "", "a-1", "abc", "a.xy",
    ];

    /// A random subscription at `place`: one or two patterns, maybe the same twice (which
    /// validation refuses, but the index must not count it twice).
    fn random_sub(dice: &mut Dice, place: &Place, generation: usize) -> Arc<Subscription> {
        let mut s = match place {
            Place::Config(i) => sub(&format!("c{i}-{generation}"), &["x"]),
            Place::Api(id) => {
                let mut s = sub(&format!("a{id}-{generation}"), &["x"]);
                s.id = id.to_string();
                s.source = Source::Api;
                s
            }
        };
        s.events = (0..1 + dice.below(2))
            .map(|_| match PATTERNS[dice.below(PATTERNS.len())] {
                "*" => EventPattern::Any,
                p => match p.strip_suffix('*') {
                    Some(prefix) => EventPattern::Prefix(prefix.to_string()),
                    None => EventPattern::Exact(p.to_string()),
                },
            })
            .collect();
        Arc::new(s)
    }

    /// Checks `index` against a fresh build of `current` and against the patterns themselves.
    fn check(index: &Matcher<Arc<str>>, current: &InForce) {
        let fresh = Matcher::by_name(current.values().cloned().collect());
        let all = |m: &Matcher<Arc<str>>| names(m.all().collect());
        assert_eq!(all(index), all(&fresh));
        assert_eq!(index.len(), current.len());
        for probe in PROBES {
            let expected: Vec<String> = current
                .values()
                .filter(|s| s.events.iter().any(|p| p.matches(probe)))
                .map(|s| s.name.clone())
                .collect();
            assert_eq!(names(index.candidates(probe)), expected, "{probe:?}");
            assert_eq!(names(fresh.candidates(probe)), expected, "{probe:?}");
            let data = RawValue::from_string("{}".into()).unwrap();
            let matched: Vec<String> = index
                .matching(probe, &data)
                .iter()
                .map(|n| n.to_string())
                .collect();
            assert_eq!(matched, expected, "{probe:?}");
        }
    }

    #[test]
    fn changes_give_the_candidates_of_a_fresh_build() {
        let mut dice = Dice(0x9E37_79B9_7F4A_7C15);
        let mut index: Matcher<Arc<str>> = Matcher::default();
        let mut current: InForce = BTreeMap::new();
        let mut kept: Option<(Matcher<Arc<str>>, InForce)> = None;
        for step in 0..3000 {
            let key = dice.below(30);
            let place = if key < 8 {
                Place::Config(key)
            } else {
                Place::Api(Arc::from(format!("0190-{key:03}")))
            };
            if dice.below(3) == 0 {
                assert_eq!(index.remove(&place), current.remove(&place).is_some());
            } else {
                let s = random_sub(&mut dice, &place, step);
                index.insert(place.clone(), s.clone(), Arc::from(s.name.as_str()));
                current.insert(place, s);
            }
            if dice.below(50) == 0 {
                index.clear_config();
                current.retain(|p, _| matches!(p, Place::Api(_)));
            }
            check(&index, &current);
            if step == 1500 {
                kept = Some((index.clone(), current.clone()));
            }
        }
        // A copy taken earlier is untouched by the changes made since.
        let (kept, then) = kept.unwrap();
        check(&kept, &then);
        // Emptied, nothing is left behind in the buckets.
        for place in current.keys() {
            assert!(index.remove(place));
        }
        assert!(index.is_empty());
        assert!(index.exact.is_empty() && index.prefixes.is_empty());
        assert!(index.prefix_counts.is_empty() && index.prefix_lens.is_empty());
        assert!(index.wildcard.is_empty());
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
