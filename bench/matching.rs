//! Matching cost against 10 and 10,000 subscriptions, in process (no I/O).
//!
//! `cargo bench --bench matching` reports, per registry size:
//! - match time per event for a type one subscription selects exactly, with and without a
//!   filter on that subscription, and for a type nothing selects;
//! - the same over a realistic mixed registry (many exact types over several namespaces,
//!   prefix globs, a few wildcards, about half the subscriptions filtered), with a rotating
//!   mix of events: mean time per event, mean candidates and matches; and the same mix on a
//!   fresh version of the index each round, where every type's candidates are looked up
//!   afresh (the first events after a change, or an app with more types than are kept);
//! - how many subscriptions the type index hands to the filter (the rest are never looked at);
//! - the time to build the index, and what one subscription change (add, update, remove)
//!   costs the catalog in memory before it is swapped in.

/// The relay's allocator: matching allocates per event, and the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hookrelay::matching::{Matcher, Place};
use hookrelay::subscription::{Source, Subscription};
use hookrelay::yaml::Issues;
use serde_json::value::RawValue;

/// A subscription from its YAML mapping's inner text.
fn parse(name: &str, rest: &str) -> Subscription {
    let yaml = format!("{{name: {name}, url: 'http://127.0.0.1:9/', {rest}}}");
    let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    let mut issues = Issues::default();
    Subscription::parse(
        &v,
        "bench",
        &hookrelay::subscription::Files::CONFIG,
        &mut issues,
    )
    .unwrap_or_else(|| panic!("valid subscription: {yaml}: {issues:?}"))
}

/// One subscription per event type `type.{i}`; every tenth has a filter.
fn registry(n: usize) -> Matcher<Arc<str>> {
    let subs = (0..n)
        .map(|i| {
            let filter = if i % 10 == 0 {
                ", filter: {all: [{field: amount, from: 10}, {field: currency, in: [EUR, USD]}]}"
            } else {
                ""
            };
            Arc::new(parse(
                &format!("s{i}"),
                &format!("events: ['type.{i}']{filter}"),
            ))
        })
        .collect();
    Matcher::by_name(subs)
}

const NAMESPACES: [&str; 8] = [
    "orders",
    "payments",
    "users",
    "shipping",
    "billing",
    "inventory",
    "auth",
    "reports",
];
const VERBS: [&str; 5] = ["created", "updated", "deleted", "completed", "failed"];
/// Distinct exact types in the mixed registry.
const TYPES: usize = 1_000;

/// The `t`-th exact type: `{namespace}.{verb}.{t}`.
fn exact_type(t: usize) -> String {
    let t = t % TYPES;
    format!(
        "{}.{}.{t}",
        NAMESPACES[t % NAMESPACES.len()],
        VERBS[(t / NAMESPACES.len()) % VERBS.len()]
    )
}

/// The filter of mixed subscription `i`: half have none, the rest one of several kinds (the
/// subscriptions of one type get different ones).
fn mixed_filter(i: usize) -> &'static str {
    match (i + i / TYPES) % 20 {
        0..=9 => "",
        10 | 11 => ", filter: {field: amount, from: 10, to: 1000}",
        12 | 13 => ", filter: {field: currency, in: [EUR, USD]}",
        14 => {
            ", filter: {all: [{field: status, equals: paid}, {field: customer.tier, in: [gold, silver]}]}"
        }
        15 => ", filter: {any: [{field: region, equals: eu}, {not: {field: test, equals: true}}]}",
        16 => ", filter: {field: customer.id, exists: true}",
        17 => ", filter: {field: note, contains: urgent, ignore_case: true}",
        18 => ", filter: {attr: zone, equals: eu}",
        _ => ", filter: {field: /customer/tier, equals: gold}",
    }
}

/// Mixed subscription `i`: mostly exact types (1,000 over 8 namespaces), every fiftieth a
/// prefix glob, every 4,000th (from the sixth) a wildcard, every seventh a second type.
fn mixed(i: usize) -> Subscription {
    let events = if i % 4000 == 5 {
        "'*'".to_string()
    } else if i % 50 == 1 {
        let t = i / 50;
        match t % 2 {
            0 => format!("'{}.*'", NAMESPACES[t % NAMESPACES.len()]),
            _ => format!(
                "'{}.{}.*'",
                NAMESPACES[t % NAMESPACES.len()],
                VERBS[t % VERBS.len()]
            ),
        }
    } else if i % 7 == 3 {
        format!("'{}', '{}'", exact_type(i), exact_type(i + 1))
    } else {
        format!("'{}'", exact_type(i))
    };
    parse(
        &format!("m{i}"),
        &format!("events: [{events}]{}", mixed_filter(i)),
    )
}

fn mixed_registry(n: usize) -> Matcher<Arc<str>> {
    Matcher::by_name((0..n).map(|i| Arc::new(mixed(i))).collect())
}

/// One event of the rotating mix: an envelope (`data`) or a raw event (JSON body and
/// attributes).
enum Probe {
    Envelope(String, Box<RawValue>),
    Raw(String, Vec<u8>, Vec<(String, String)>),
}

impl Probe {
    fn run(&self, r: &Matcher<Arc<str>>) -> usize {
        match self {
            Probe::Envelope(t, data) => r.matching(t, data).len(),
            Probe::Raw(t, body, attrs) => r.matching_raw(t, Some(body), attrs).len(),
        }
    }

    fn event_type(&self) -> &str {
        match self {
            Probe::Envelope(t, _) | Probe::Raw(t, _, _) => t,
        }
    }
}

/// Events whose types hit many, few or no subscriptions, with data that passes or fails
/// the filters.
fn probes() -> Vec<Probe> {
    let passes = r#"{"amount": 25, "currency": "EUR", "status": "paid", "region": "eu",
        "customer": {"id": "c-1", "tier": "gold"}, "note": "URGENT: call back"}"#;
    let fails = r#"{"amount": 5, "currency": "GBP", "status": "open", "region": "us",
        "test": true, "customer": {"tier": "bronze"}, "note": "later"}"#;
    let envelope = |t: String, data: &str| {
        Probe::Envelope(t, RawValue::from_string(data.to_string()).unwrap())
    };
    let eu = vec![("zone".to_string(), "eu".to_string())];
    let mut out = Vec::new();
    for k in [0, 7, 42, 99, 500, 777, 998] {
        out.push(envelope(exact_type(k), passes));
        out.push(envelope(exact_type(k + 3), fails));
    }
    // Types no exact subscription selects: only globs and wildcards.
    out.push(envelope("orders.created.5000".into(), passes));
    out.push(envelope("payments.refunded".into(), fails));
    out.push(envelope("nothing.here".into(), passes));
    out.push(Probe::Raw(
        exact_type(18),
        passes.as_bytes().to_vec(),
        eu.clone(),
    ));
    out.push(Probe::Raw(
        exact_type(38),
        fails.as_bytes().to_vec(),
        vec![],
    ));
    out.push(Probe::Raw("audit.logged".into(), b"{}".to_vec(), eu));
    out
}

/// Mean time of `f` over enough rounds to fill about half a second.
fn time_per_call(mut f: impl FnMut() -> usize) -> (Duration, usize) {
    let mut sink = 0;
    let mut rounds = 1u32;
    loop {
        let started = Instant::now();
        for _ in 0..rounds {
            sink += std::hint::black_box(f());
        }
        let took = started.elapsed();
        if took > Duration::from_millis(500) {
            return (took / rounds, sink);
        }
        rounds *= 2;
    }
}

/// What the catalog does in memory per change: the index in its state edited
/// (`Matcher::insert`, `remove`) under a mutex, a copy of it swapped in (`publish`), and the
/// replaced version dropped.
struct Catalogish {
    index: Mutex<Matcher<Arc<str>>>,
    matcher: ArcSwap<Matcher<Arc<str>>>,
}

impl Catalogish {
    fn new(n: usize) -> Catalogish {
        let subs = (0..n).map(|i| {
            let sub = Arc::new(api_sub(i, 0));
            let name: Arc<str> = Arc::from(sub.name.as_str());
            (sub, name)
        });
        let index = Matcher::new(subs);
        Catalogish {
            matcher: ArcSwap::from_pointee(index.clone()),
            index: Mutex::new(index),
        }
    }

    fn put(&mut self, sub: Arc<Subscription>) {
        let lane: Arc<str> = Arc::from(sub.name.as_str());
        let place = Place::api(&sub);
        self.index.lock().unwrap().insert(place, sub, lane);
    }

    fn remove(&mut self, id: &str) {
        let place = Place::Api(Arc::from(id));
        self.index.lock().unwrap().remove(&place);
    }

    fn publish(&self) {
        let old = {
            let index = self.index.lock().unwrap();
            self.matcher.swap(Arc::new(index.clone()))
        };
        drop(old);
    }
}

/// Mixed subscription `i` as the API stores it (ids in creation order); `version` varies
/// its filter so an update changes something.
fn api_sub(i: usize, version: usize) -> Subscription {
    let mut sub = mixed(i + version * 7);
    sub.name = format!("a{i}");
    sub.id = format!("0190a000-0000-7000-8000-{i:012}");
    sub.source = Source::Api;
    sub
}

/// Mean time of one add, one update and one remove at `n` subscriptions, each change
/// applied and published; the subscriptions are parsed before the clock starts.
fn change_costs(n: usize) -> [(&'static str, Duration); 3] {
    let mut c = Catalogish::new(n);
    let fresh = Arc::new(api_sub(n + 1, 0));
    let versions = [Arc::new(api_sub(n / 2, 1)), Arc::new(api_sub(n / 2, 2))];
    let (mut add, mut update, mut remove) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut rounds = 0u32;
    while add + update + remove < Duration::from_millis(1500) {
        let started = Instant::now();
        c.put(fresh.clone());
        c.publish();
        let added = Instant::now();
        c.remove(&fresh.id);
        c.publish();
        let removed = Instant::now();
        c.put(versions[rounds as usize % 2].clone());
        c.publish();
        let updated = Instant::now();
        add += added - started;
        remove += removed - added;
        update += updated - removed;
        rounds += 1;
    }
    [
        ("add", add / rounds),
        ("update", update / rounds),
        ("remove", remove / rounds),
    ]
}

fn main() {
    let data =
        RawValue::from_string(r#"{"amount": 25, "currency": "EUR", "note": "x"}"#.into()).unwrap();
    println!("| subscriptions | event | candidates | matched | match time per event |");
    println!("|---:|---|---:|---:|---:|");
    for n in [10, 10_000] {
        let r = registry(n);
        for (label, event_type) in [
            ("exact type, no filter", "type.7"),
            ("exact type, filter", "type.0"),
            ("unknown type", "nothing.here"),
        ] {
            let candidates = r.candidates(event_type).len();
            let matched = r.matching(event_type, &data).len();
            let (per, _) = time_per_call(|| r.matching(event_type, &data).len());
            println!(
                "| {n} | {label} | {candidates} | {matched} | {:.0} ns |",
                per.as_secs_f64() * 1e9
            );
        }
    }
    let probes = probes();
    for n in [10, 10_000] {
        let r = mixed_registry(n);
        let candidates: usize = probes
            .iter()
            .map(|p| r.candidates(p.event_type()).len())
            .sum();
        let matched: usize = probes.iter().map(|p| p.run(&r)).sum();
        let events = probes.len() as f64;
        let (per, _) = time_per_call(|| probes.iter().map(|p| p.run(&r)).sum());
        // A fresh version per round (as after a change): every type is looked up afresh.
        let (cold, _) = time_per_call(|| {
            let fresh = r.clone();
            probes.iter().map(|p| p.run(&fresh)).sum()
        });
        for (label, per) in [("rotating", per), ("each type's first", cold)] {
            println!(
                "| {n} | mixed ({} events, {label}) | {:.1} mean | {:.1} mean | {:.0} ns |",
                probes.len(),
                candidates as f64 / events,
                matched as f64 / events,
                per.as_secs_f64() * 1e9 / events
            );
        }
    }
    for n in [10, 10_000] {
        let subs: Vec<_> = registry(n).all().cloned().collect();
        let (per, _) = time_per_call(|| Matcher::by_name(subs.clone()).len());
        println!(
            "index build, {n} subscriptions: {:.3} ms",
            per.as_secs_f64() * 1e3
        );
    }
    for n in [10, 10_000] {
        for (what, per) in change_costs(n) {
            println!(
                "one change ({what}), {n} mixed subscriptions: {:.3} ms",
                per.as_secs_f64() * 1e3
            );
        }
    }
}
