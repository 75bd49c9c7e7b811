//! Matching cost against 10 and 10,000 subscriptions, in process (no I/O).
//!
//! `cargo bench --bench matching` reports, per registry size:
//! - match time per event for a type one subscription selects exactly, with and without a
//!   filter on that subscription, and for a type nothing selects;
//! - how many subscriptions the type index hands to the filter (the rest are never looked at);
//! - the time to build the index (what a subscription change costs before it is swapped in).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hookrelay::matching::Matcher;
use hookrelay::subscription::Subscription;
use hookrelay::yaml::Issues;
use serde_json::value::RawValue;

/// One subscription per event type `type.{i}`; every tenth has a filter.
fn registry(n: usize) -> Matcher<Arc<str>> {
    let mut subs = Vec::with_capacity(n);
    for i in 0..n {
        let filter = if i % 10 == 0 {
            ", filter: {all: [{field: amount, from: 10}, {field: currency, in: [EUR, USD]}]}"
        } else {
            ""
        };
        let yaml =
            format!("{{name: s{i}, url: 'http://127.0.0.1:9/', events: ['type.{i}']{filter}}}");
        let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let mut issues = Issues::default();
        let sub = Subscription::parse(
            &v,
            "bench",
            &hookrelay::subscription::Files::CONFIG,
            &mut issues,
        )
        .expect("valid subscription");
        subs.push(Arc::new(sub));
    }
    Matcher::by_name(subs)
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
    for n in [10, 10_000] {
        let subs: Vec<_> = registry(n).all().to_vec();
        let (per, _) = time_per_call(|| Matcher::by_name(subs.clone()).all().len());
        println!(
            "index build, {n} subscriptions: {:.3} ms",
            per.as_secs_f64() * 1e3
        );
    }
}
