//! Tests of a push subscription's retry policy (`final_statuses`) and concurrency
//! (`max_in_flight`).

use super::{final_statuses, parse, sub};
use crate::subscription::Concurrency;

#[test]
fn final_statuses_default_to_none_and_take_codes_and_classes() {
    assert!(sub("a", &["x"]).http().unwrap().final_statuses.is_empty());
    let f = final_statuses("[400, 404, '422']");
    assert!(f.contains(400) && f.contains(404) && f.contains(422) && !f.contains(401));
    let f = final_statuses("['4xx']");
    assert!(f.contains(400) && f.contains(499) && !f.contains(500));
    assert!(
        !f.contains(408) && !f.contains(429),
        "a class leaves 408 and 429 retryable"
    );
    let f = final_statuses("['4xx', 408, 429]");
    assert!(f.contains(408) && f.contains(429), "unless they are named");
    assert!(final_statuses("[]").is_empty());
}

#[test]
fn final_statuses_name_their_contradictions() {
    let errors = parse(
        "{name: a, url: 'http://h/', events: [x], success_code: [200, 422],
          final_statuses: [400, 422, 400, '4xx', '2xx', 'oops', '6xx', 700, 429, 3.5]}",
    )
    .unwrap_err();
    let at = |i: usize| format!("subscriptions[0].final_statuses[{i}]: ");
    assert_eq!(
        errors,
        vec![
            format!(
                "{}422 contradicts success_code: 422 would be both delivered and final",
                at(1)
            ),
            format!("{}400 is listed twice (with 400)", at(2)),
            format!("{}\"4xx\" is listed twice (with 400)", at(3)),
            format!(
                "{}\"2xx\" contradicts success_code: 200 would be both delivered and final",
                at(4)
            ),
            format!(
                "{}\"oops\" is not a status code or a class such as \"4xx\"",
                at(5)
            ),
            format!("{}\"6xx\" is not a class from \"1xx\" to \"5xx\"", at(6)),
            format!("{}700 is out of range 100..=599", at(7)),
            format!("{}3.5 is out of range 100..=599", at(9)),
        ],
        "{errors:#?}"
    );
    // 429 stays apart from a class: naming both is no duplicate.
    assert!(
        parse("{name: a, url: 'http://h/', events: [x], final_statuses: ['4xx', 429]}").is_ok()
    );
    let email = parse(
        "{name: a, mode: email, events: [x], final_statuses: [400],
          email: {to: a@example.com, from: b@example.com, smtp: {host: mail.example.com}}}",
    )
    .unwrap_err();
    assert_eq!(
        email,
        vec![
            "subscriptions[0].final_statuses: applies to HTTP push subscriptions only (this one has mode: email)"
        ]
    );
    assert!(parse("{name: a, url: 'http://h/', events: [x], final_statuses: 404}").is_err());
}

#[test]
fn max_in_flight_is_fixed_or_auto_with_a_ceiling() {
    let push = |yaml: &str| {
        let s = parse(&format!(
            "{{name: a, url: 'http://h/', events: [x], {yaml}}}"
        ))
        .unwrap();
        let p = s.push().unwrap();
        (p.max_in_flight, p.concurrency)
    };
    assert_eq!(push("retries: 1"), (8, Concurrency::Fixed));
    assert_eq!(push("max_in_flight: 16"), (16, Concurrency::Fixed));
    assert_eq!(push("max_in_flight: auto"), (64, Concurrency::Auto));
    assert_eq!(push("max_in_flight: {auto: true}"), (64, Concurrency::Auto));
    assert_eq!(
        push("max_in_flight: {auto: true, max: 20}"),
        (20, Concurrency::Auto)
    );
    let bad = |yaml: &str| {
        parse(&format!(
            "{{name: a, url: 'http://h/', events: [x], max_in_flight: {yaml}}}"
        ))
        .unwrap_err()
    };
    assert_eq!(
        bad("{auto: false, max: 4}"),
        vec![
            "subscriptions[0].max_in_flight.auto: must be true; for a fixed limit write max_in_flight: N"
        ]
    );
    assert_eq!(
        bad("{max: 4}"),
        vec![
            "subscriptions[0].max_in_flight: needs auto: true (or write a number for a fixed limit)"
        ]
    );
    assert_eq!(
        bad("{auto: true, max: 0}"),
        vec!["subscriptions[0].max_in_flight.max: 0 is out of range 1..=1024"]
    );
    assert_eq!(
        bad("sometimes"),
        vec![
            "subscriptions[0].max_in_flight: \"sometimes\" is not a number, auto or {auto: true, max: N}"
        ]
    );
    assert_eq!(
        bad("{auto: true, min: 2}").len(),
        1,
        "unknown keys are named"
    );
}
