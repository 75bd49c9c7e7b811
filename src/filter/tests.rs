//! Tests of filter compilation and evaluation.

use super::*;
use serde_json::json;

fn compile(yaml: &str) -> Result<Filter, Vec<String>> {
    let v: Value = serde_yaml::from_str(yaml).unwrap();
    let mut issues = Issues::default();
    let f = Filter::compile(&v, "filter", &mut issues);
    if issues.is_empty() {
        Ok(f.unwrap())
    } else {
        Err(issues.0.iter().map(|i| i.to_string()).collect())
    }
}

/// (filter, data, expected) rows.
fn check(rows: &[(&str, Json, bool)]) {
    for (filter, data, expected) in rows {
        let f = compile(filter).unwrap_or_else(|e| panic!("{filter}: {e:?}"));
        assert_eq!(
            f.matches(&Subject::data(data)),
            *expected,
            "filter {filter} on {data}"
        );
    }
}

/// (filter, attributes, expected) rows, for a raw event without JSON data.
type Attrs<'a> = &'a [(&'a str, &'a str)];

fn check_attrs(rows: &[(&str, Attrs<'_>, bool)]) {
    for (filter, attrs, expected) in rows {
        let f = compile(filter).unwrap_or_else(|e| panic!("{filter}: {e:?}"));
        let mut attributes: Vec<(String, String)> = attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        attributes.sort();
        let subject = Subject {
            data: None,
            attributes: &attributes,
        };
        assert_eq!(
            f.matches(&subject),
            *expected,
            "filter {filter} on {attrs:?}"
        );
    }
}

#[test]
fn attributes() {
    let zone: &[(&str, &str)] = &[
        ("zone", "EU-West"),
        ("prio", "3"),
        ("at", "2024-05-01T00:00:00Z"),
    ];
    check_attrs(&[
        ("{attr: zone, equals: EU-West}", zone, true),
        ("{attr: zone, equals: eu-west}", zone, false),
        (
            "{attr: zone, equals: eu-west, ignore_case: true}",
            zone,
            true,
        ),
        ("{attr: zone, in: [us, EU-West]}", zone, true),
        ("{attr: zone, in: [us, eu]}", zone, false),
        ("{attr: zone, contains: West}", zone, true),
        (
            "{attr: zone, contains: west, ignore_case: true}",
            zone,
            true,
        ),
        ("{attr: zone, exists: true}", zone, true),
        ("{attr: other, exists: false}", zone, true),
        ("{attr: other, equals: x}", zone, false),
        ("{attr: prio, equals: 3}", zone, true),
        ("{attr: prio, in: [1, 3]}", zone, true),
        ("{attr: prio, from: 2, to: 5}", zone, true),
        ("{attr: prio, from: 4}", zone, false),
        ("{attr: zone, from: 4}", zone, false),
        ("{attr: at, from: '2024-01-01T00:00:00Z'}", zone, true),
        ("{not: {attr: zone, equals: EU-West}}", zone, false),
        // `field` looks into data only: a raw event without JSON data has no fields.
        ("{field: zone, exists: false}", zone, true),
        ("{field: zone, equals: EU-West}", zone, false),
        (
            "{all: [{attr: zone, exists: true}, {field: x, exists: false}]}",
            zone,
            true,
        ),
    ]);
    // Envelope events have no attributes.
    check(&[("{attr: zone, exists: false}", json!({"zone": "eu"}), true)]);
    assert!(!compile("{attr: a, equals: 1}").unwrap().reads_data());
    assert!(
        compile("{any: [{attr: a, equals: 1}, {field: b, equals: 1}]}")
            .unwrap()
            .reads_data()
    );
}

#[test]
fn equals() {
    check(&[
        (
            "{field: status, equals: COMPLETED}",
            json!({"status": "COMPLETED"}),
            true,
        ),
        (
            "{field: status, equals: COMPLETED}",
            json!({"status": "completed"}),
            false,
        ),
        (
            "{field: status, equals: COMPLETED, ignore_case: true}",
            json!({"status": "completed"}),
            true,
        ),
        ("{field: n, equals: 3}", json!({"n": 3}), true),
        ("{field: n, equals: 3}", json!({"n": 3.0}), true),
        ("{field: n, equals: 3}", json!({"n": "3"}), false),
        ("{field: ok, equals: true}", json!({"ok": true}), true),
        ("{field: a.b, equals: x}", json!({"a": {"b": "x"}}), true),
        (
            "{field: items.1.sku, equals: y}",
            json!({"items": [{"sku": "x"}, {"sku": "y"}]}),
            true,
        ),
        (
            "{field: /a~1b/c, equals: x}",
            json!({"a/b": {"c": "x"}}),
            true,
        ),
        ("{field: missing, equals: x}", json!({}), false),
        ("{field: a.b, equals: x}", json!({"a": "scalar"}), false),
    ]);
}

#[test]
fn in_list_and_arrays() {
    check(&[
        (
            "{field: status, in: [COMPLETED, CANCELLED]}",
            json!({"status": "CANCELLED"}),
            true,
        ),
        (
            "{field: status, in: [COMPLETED, CANCELLED]}",
            json!({"status": "WAITING"}),
            false,
        ),
        (
            "{field: labels, in: [urgent]}",
            json!({"labels": ["x", "urgent"]}),
            true,
        ),
        (
            "{field: labels, in: [urgent]}",
            json!({"labels": []}),
            false,
        ),
        (
            "{field: labels, in: [URGENT], ignore_case: true}",
            json!({"labels": ["Urgent"]}),
            true,
        ),
        ("{field: code, in: [1, 2]}", json!({"code": 2}), true),
    ]);
}

#[test]
fn contains() {
    check(&[
        (
            "{field: subject, contains: contract}",
            json!({"subject": "new contract 7"}),
            true,
        ),
        (
            "{field: subject, contains: contract}",
            json!({"subject": "New Contract"}),
            false,
        ),
        (
            "{field: subject, contains: contract, ignore_case: true}",
            json!({"subject": "New CONTRACT"}),
            true,
        ),
        (
            "{field: tags, contains: b}",
            json!({"tags": ["a", "b"]}),
            true,
        ),
        (
            "{field: tags, contains: c}",
            json!({"tags": ["a", "b"]}),
            false,
        ),
        ("{field: n, contains: '1'}", json!({"n": 12}), false),
    ]);
}

#[test]
fn ranges() {
    let from_to = "{field: at, from: '2023-02-16T00:00:00Z', to: '2023-03-01T00:00:00Z'}";
    check(&[
        (from_to, json!({"at": "2023-02-16T00:00:00Z"}), true),
        (from_to, json!({"at": "2023-03-01T00:00:00Z"}), true),
        (from_to, json!({"at": "2023-02-15T23:59:59.999Z"}), false),
        (from_to, json!({"at": "2023-03-01T02:00:00+03:00"}), true),
        (from_to, json!({"at": "2023-03-01T00:00:00.001Z"}), false),
        (from_to, json!({"at": "not a date"}), false),
        (from_to, json!({"at": 5}), false),
        (
            "{field: at, from: '2023-02-16T00:00:00Z'}",
            json!({"at": "2030-01-01T00:00:00Z"}),
            true,
        ),
        (
            "{field: amount, from: 10, to: 20.5}",
            json!({"amount": 20.5}),
            true,
        ),
        (
            "{field: amount, from: 10, to: 20.5}",
            json!({"amount": 9}),
            false,
        ),
        ("{field: amount, to: 0}", json!({"amount": -3}), true),
        ("{field: amount, from: 10}", json!({"amount": "11"}), false),
    ]);
}

#[test]
fn exists() {
    check(&[
        ("{field: a, exists: true}", json!({"a": 0}), true),
        ("{field: a, exists: true}", json!({"a": null}), false),
        ("{field: a, exists: false}", json!({}), true),
        ("{field: a, exists: false}", json!({"a": "x"}), false),
    ]);
}

#[test]
fn combinators() {
    let f = "
all:
  - { field: status, in: [COMPLETED, CANCELLED] }
  - any:
      - { field: labels, in: [urgent] }
      - not: { field: scope, equals: outbox }
";
    check(&[
        (f, json!({"status": "COMPLETED", "scope": "inbox"}), true),
        (f, json!({"status": "COMPLETED", "scope": "outbox"}), false),
        (
            f,
            json!({"status": "COMPLETED", "scope": "outbox", "labels": ["urgent"]}),
            true,
        ),
        (f, json!({"status": "WAITING", "scope": "inbox"}), false),
        ("{}", json!({"anything": 1}), true),
        ("{all: []}", json!(1), true),
        ("{not: {field: a, exists: true}}", json!({}), true),
    ]);
}

/// The document platform's callback filter (seeds/002), field by field.
#[test]
fn document_platform_callback_filter() {
    let f = "
all:
  - { field: label, in: [finance, legal] }
  - { field: status, in: [COMPLETED, CANCELLED] }
  - { field: subject, contains: договір, ignore_case: true }
  - { field: receiveDate, from: '2023-02-16T12:34:26.606Z', to: '2023-03-16T00:00:00Z' }
  - { field: expireDate, from: '2023-04-01T00:00:00Z', to: '2023-12-31T23:59:59Z' }
  - { field: template, in: [3fa85f64-5717-4562-b3fc-2c963f66afa6] }
  - { field: sender.id, in: [9b2d7e1c-0000-4000-8000-000000000001] }
  - { field: scope, in: [inbox] }
";
    let base = json!({
        "label": ["finance"],
        "status": "COMPLETED",
        "subject": "Додаткова угода до Договір №5",
        "receiveDate": "2023-02-20T10:00:00.000Z",
        "expireDate": "2023-06-01T00:00:00Z",
        "template": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "sender": {"id": "9b2d7e1c-0000-4000-8000-000000000001"},
        "scope": "inbox"
    });
    let filter = compile(f).unwrap();
    assert!(filter.matches(&Subject::data(&base)));
    let changes: &[(&str, Json)] = &[
        ("label", json!(["hr"])),
        ("status", json!("WAITING")),
        ("subject", json!("рахунок")),
        ("receiveDate", json!("2023-02-16T12:34:26.605Z")),
        ("expireDate", json!("2024-01-01T00:00:00Z")),
        ("template", json!("00000000-0000-0000-0000-000000000000")),
        ("sender", json!({"id": "someone-else"})),
        ("scope", json!("outbox")),
    ];
    for (field, value) in changes {
        let mut data = base.clone();
        data[*field] = value.clone();
        assert!(
            !filter.matches(&Subject::data(&data)),
            "changing {field} must stop the match"
        );
        data.as_object_mut().unwrap().remove(*field);
        assert!(
            !filter.matches(&Subject::data(&data)),
            "without {field} nothing matches"
        );
    }
    // An empty filter matches everything, as in the platform.
    assert!(compile("{}").unwrap().matches(&Subject::data(&json!({}))));
}

#[test]
fn compile_errors_name_the_path() {
    let cases: &[(&str, &str)] = &[
        (
            "{field: at, from: yesterday}",
            "filter.from: \"yesterday\" is not an RFC 3339 timestamp",
        ),
        (
            "{field: at, from: 1, to: '2023-01-01T00:00:00Z'}",
            "filter: from and to must both be",
        ),
        ("{field: at, from: 5, to: 1}", "filter: from is after to"),
        ("{field: a}", "filter: needs one operator"),
        (
            "{field: a, equals: 1, contains: 2}",
            "filter: has several operators (equals, contains)",
        ),
        ("{equals: 1}", "filter.field: missing"),
        (
            "{field: a, attr: b, equals: 1}",
            "filter: has both field and attr",
        ),
        (
            "{attr: B, equals: 1}",
            "filter.attr: \"B\" is not an attribute name",
        ),
        (
            "{field: a, equals: [1]}",
            "filter.equals: expected a string, number or boolean, found a list",
        ),
        (
            "{field: a, exists: true, ignore_case: true}",
            "filter.ignore_case: applies only to",
        ),
        (
            "{attr: a, to: 2000-01-01T00:00:00Z, ignore_case: false}",
            "filter.ignore_case: applies only to",
        ),
        (
            "{field: 'a..b', equals: 1}",
            "filter.field: \"a..b\" is not a field path",
        ),
        (
            "{all: [{field: a, equals: 1}, {field: b, frm: 1}]}",
            "filter.all[1].frm: unknown field",
        ),
        (
            "{any: {field: a}}",
            "filter.any: expected a list, found a mapping",
        ),
        ("{not: {field: a, in: x}}", "filter.not.in: expected a list"),
        (
            "{field: a, in: []}",
            "filter.in: is empty, so nothing can match",
        ),
        ("{any: []}", "filter.any: is empty, so nothing can match"),
        ("[1]", "filter: expected a mapping, found a list"),
    ];
    for (yaml, expected) in cases {
        let errors = compile(yaml).expect_err(yaml);
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "{yaml}: {errors:?} should include {expected}"
        );
    }
}

#[test]
fn a_null_combinator_is_an_error_not_a_filter_left_out() {
    // `{any: [{any: null}]}` compiled to an `any` of nothing: it silently matched nothing.
    for (yaml, want) in [
        (
            "{any: [{any: null}]}",
            "filter.any[0].any: expected a list of filters, found null",
        ),
        (
            "{all: null}",
            "filter.all: expected a list of filters, found null",
        ),
        ("{not: null}", "filter.not: expected a filter, found null"),
    ] {
        let got = compile(yaml).map(|_| ()).unwrap_err();
        assert_eq!(got, [want], "{yaml}");
    }
}
