//! Tests of subscription parsing, validation and the declared document.

use serde_yaml::Value;

use super::*;
use crate::yaml::Issues;

mod policy;
mod tls;

/// A subscription entry validated as `subscriptions[0]`, or its problems.
pub(crate) fn parse(yaml: &str) -> Result<Subscription, Vec<String>> {
    let v: Value = serde_yaml::from_str(yaml).unwrap();
    let mut issues = Issues::default();
    let s = Subscription::parse(&v, "subscriptions[0]", &Files::CONFIG, &mut issues);
    if issues.is_empty() {
        Ok(s.unwrap())
    } else {
        Err(issues.0.iter().map(|i| i.to_string()).collect())
    }
}

/// The `final_statuses` of a push subscription that lists `list` (a YAML flow sequence).
pub(crate) fn final_statuses(list: &str) -> FinalStatuses {
    let s = parse(&format!(
        "{{name: a, url: 'http://h/', events: [x], final_statuses: {list}}}"
    ))
    .unwrap();
    s.http().unwrap().final_statuses.clone()
}

/// The `success_code` of a push subscription that sets it to `codes` (YAML).
pub(crate) fn success_codes(codes: &str) -> SuccessCodes {
    let s = parse(&format!(
        "{{name: a, url: 'http://h/', events: [x], success_code: {codes}}}"
    ))
    .unwrap();
    s.http().unwrap().success.clone()
}

/// A valid push subscription for `events`.
pub(crate) fn sub(name: &str, events: &[&str]) -> Subscription {
    let list = events
        .iter()
        .map(|e| format!("{e:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    parse(&format!(
        "{{name: {name}, url: 'http://127.0.0.1:1/', events: [{list}]}}"
    ))
    .unwrap()
}

#[test]
fn defaults() {
    let s = sub("a", &["x"]);
    assert_eq!(s.push().unwrap().retries, 6);
    assert_eq!(s.push().unwrap().timeout, Duration::from_secs(10));
    assert_eq!(s.push().unwrap().max_in_flight, 8);
    assert!(s.http().unwrap().success.contains(204) && !s.http().unwrap().success.contains(300));
    assert!(s.push().unwrap().rate_limit.is_none());
    assert_eq!(s.push().unwrap().backoff, Backoff::default());
}

#[test]
fn schedule_length_sets_default_retries() {
    let s =
        parse("{name: a, url: 'http://h/', events: [x], backoff: {schedule: [1s, 2s]}}").unwrap();
    assert_eq!(s.push().unwrap().retries, 2);
}

#[test]
fn success_code_forms() {
    assert_eq!(success_codes("200").to_string(), "200");
    assert_eq!(success_codes("'2xx'").to_string(), "2xx");
    assert_eq!(
        success_codes("[200, 202, '3xx']").to_string(),
        "200, 202 or 3xx"
    );
    let s = parse("{name: a, url: 'http://h/', events: [x], success_code: 200}").unwrap();
    assert!(s.http().unwrap().success.contains(200) && !s.http().unwrap().success.contains(204));
    let s = parse("{name: a, url: 'http://h/', events: [x], success_code: [200, '3xx']}").unwrap();
    assert!(
        s.http().unwrap().success.contains(200)
            && s.http().unwrap().success.contains(302)
            && !s.http().unwrap().success.contains(201)
    );
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let errors = parse(
        "{name: Bad Name, url: 'ftp://h/', events: [], retries: 42, timeout: 50ms,
          success_code: 700, max_in_flight: 0, rate_limit: {per_second: 0},
          auth: {basic: {username: u}}, headers: {webhook-id: x}, colour: red}",
    )
    .unwrap_err();
    let expected = [
        "subscriptions[0].colour: unknown field",
        "subscriptions[0].name: \"Bad Name\" must match [a-z0-9_-]{1,64}",
        "subscriptions[0].url: scheme \"ftp\" is not http or https",
        "subscriptions[0].events: must list at least one event type",
        "subscriptions[0].retries: 42 is out of range 0..=20",
        "subscriptions[0].timeout: 50ms is out of range 100ms..=1m",
        "subscriptions[0].success_code: 700 is out of range 100..=599",
        "subscriptions[0].rate_limit.per_second: 0 is out of range 0.0001..=1000000",
        "subscriptions[0].max_in_flight: 0 is out of range 1..=1024",
        "subscriptions[0].auth.basic.password: missing",
        "subscriptions[0].headers.webhook-id: is set by the relay",
    ];
    for e in expected {
        assert!(
            errors.iter().any(|got| got.starts_with(e)),
            "missing {e:?} in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
}

#[test]
fn missing_required_fields() {
    let errors = parse("{}").unwrap_err();
    assert_eq!(
        errors,
        vec![
            "subscriptions[0].name: missing",
            "subscriptions[0].url: missing",
            "subscriptions[0].events: missing"
        ]
    );
}

#[test]
fn credentials_in_url_are_refused() {
    let errors = parse("{name: a, url: 'http://u:p@h/', events: [x]}").unwrap_err();
    assert!(
        errors[0].contains("must not carry credentials"),
        "{errors:?}"
    );
}

#[test]
fn secrets_do_not_show_in_debug() {
    let s = parse(
        "{name: a, url: 'http://h/', events: [x], auth: {basic: {username: u, password: hunter2}}}",
    )
    .unwrap();
    assert!(!format!("{s:?}").contains("hunter2"));
    let s = parse("{name: a, url: 'http://h/', events: [x], auth: {bearer: tok-123}}").unwrap();
    assert!(!format!("{s:?}").contains("tok-123"));
}

#[test]
fn api_documents_default_the_name_and_hide_secrets() {
    let doc = serde_json::json!({
        "url": "http://h/", "events": ["x"], "metrics": true,
        "auth": {"basic": {"username": "u", "password": "pw-1"}},
        "headers": {"x-api-key": "key-1"}
    });
    let mut issues = Issues::default();
    let id = "0190f3c4-0000-7000-8000-000000000000";
    let s = Subscription::from_api(doc, id, (1, 2), &mut issues).unwrap();
    assert!(issues.is_empty());
    assert_eq!(
        (s.name.as_str(), s.source, s.own_metrics),
        (id, Source::Api, true)
    );
    let view = s.view();
    assert_eq!(
        view["auth"],
        serde_json::json!({"basic": {"username": "u"}})
    );
    assert_eq!(view["source"], "api");
    assert_eq!(view["headers"], serde_json::json!({"x-api-key": {}}));
    for secret in ["pw-1", "key-1"] {
        assert!(!view.to_string().contains(secret));
        assert!(!format!("{s:?}").contains(secret));
    }
    // `metrics` is an API field only.
    assert!(parse("{name: a, url: 'http://h/', events: [x], metrics: true}").is_err());
    // The reserved label is no name.
    let mut issues = Issues::default();
    let doc = serde_json::json!({"name": "_api", "url": "http://h/", "events": ["x"]});
    assert!(Subscription::from_api(doc, id, (1, 1), &mut issues).is_none());
    assert_eq!(issues.0[0].path, "name");
}

#[test]
fn omitted_secrets_are_kept_from_the_stored_document() {
    let stored = serde_json::json!({"auth": {"basic": {"username": "u", "password": "pw"}}});
    let mut doc = serde_json::json!({"auth": {"basic": {"username": "v"}}});
    keep_secrets(&mut doc, &stored, true);
    assert_eq!(
        doc["auth"]["basic"],
        serde_json::json!({"username": "v", "password": "pw"})
    );
    for stored in [
        serde_json::json!({"auth": {"bearer": "tok"}}),
        serde_json::json!({"auth": {"bearer": {"token": "tok"}}}),
    ] {
        let mut doc = serde_json::json!({"auth": {"bearer": {}}});
        keep_secrets(&mut doc, &stored, true);
        assert_eq!(doc["auth"]["bearer"], serde_json::json!({"token": "tok"}));
    }
    // A secret that is given wins; a different auth kind takes nothing.
    let mut doc = serde_json::json!({"auth": {"basic": {"username": "u", "password": "new"}}});
    keep_secrets(&mut doc, &stored, true);
    assert_eq!(doc["auth"]["basic"]["password"], "new");
    let mut doc = serde_json::json!({"auth": {"bearer": {}}});
    keep_secrets(&mut doc, &stored, true);
    assert_eq!(doc["auth"]["bearer"], serde_json::json!({}));
    let s =
        parse("{name: a, url: 'http://h/', events: [x], auth: {bearer: {token: t-1}}}").unwrap();
    assert!(matches!(s.http().unwrap().auth, Some(Auth::Bearer(ref t)) if t.expose() == "t-1"));
}

#[test]
fn ordering_is_none_fifo_or_a_key() {
    let s = parse("{name: o, url: 'http://h/', events: [x]}").unwrap();
    assert_eq!(*s.ordering(), DeliveryOrder::None);
    assert_eq!(s.ordering().key_of(None), None);
    let s = parse("{name: o, url: 'http://h/', events: [x], ordering: fifo}").unwrap();
    assert_eq!(s.ordering().key_of(None), Some(String::new()));
    let s = parse("{name: o, url: 'http://h/', events: [x], ordering: {key: sender.id}}").unwrap();
    let data = serde_json::json!({"sender": {"id": "s-1"}});
    assert_eq!(s.ordering().key_of(Some(&data)), Some("\"s-1\"".into()));
    let number = serde_json::json!({"sender": {"id": 7}});
    assert_eq!(s.ordering().key_of(Some(&number)), Some("7".into()));
    // Without the field (or not JSON): the one shared key.
    assert_eq!(
        s.ordering().key_of(Some(&serde_json::json!({}))),
        Some(String::new())
    );
    assert_eq!(s.ordering().key_of(None), Some(String::new()));

    for (yaml, expected) in [
        (
            "ordering: sideways",
            "subscriptions[0].ordering: expected none, fifo or {key: FIELD}",
        ),
        (
            "ordering: {key: 'a..b'}",
            "subscriptions[0].ordering.key: \"a..b\" is not a field path",
        ),
        ("ordering: {}", "subscriptions[0].ordering.key: missing"),
        (
            "ordering: {key: a, by: b}",
            "subscriptions[0].ordering.by: unknown field",
        ),
    ] {
        let errors = parse(&format!(
            "{{name: o, url: 'http://h/', events: [x], {yaml}}}"
        ))
        .unwrap_err();
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "{yaml}: {errors:?}"
        );
    }
    let errors = parse("{name: p, mode: pull, events: [x], ordering: fifo}").unwrap_err();
    assert_eq!(
        errors,
        ["subscriptions[0].ordering: applies to push subscriptions only (this one has mode: pull)"]
    );
}

#[test]
fn email_subscriptions() {
    let s = parse(
        "{name: m, mode: email, events: [x], retries: 2,
          email: {to: [ops@example.com, 'On Call <oncall@example.com>'], from: relay@example.com,
                  smtp: {host: smtp.example.com}}}",
    )
    .unwrap();
    assert!(s.http().is_none() && s.pull().is_none());
    let email = s.email().unwrap();
    assert_eq!(email.to.len(), 2);
    assert_eq!(email.to[1].email.to_string(), "oncall@example.com");
    assert_eq!(email.from.email.to_string(), "relay@example.com");
    assert_eq!(email.subject.render("t", "i"), "t i");
    assert_eq!(
        (email.smtp.port, email.smtp.tls),
        (587, crate::subscription::email::TlsMode::Starttls)
    );
    assert!(email.smtp.credentials.is_none());
    assert_eq!(s.push().unwrap().retries, 2);
    for (tls, port) in [("none", 25), ("starttls", 587), ("tls", 465)] {
        let s = parse(&format!(
            "{{name: m, mode: email, events: [x], email: {{to: a@b.c, from: r@b.c,
               smtp: {{host: h, tls: {tls}}}}}}}"
        ))
        .unwrap();
        assert_eq!(s.email().unwrap().smtp.port, port, "{tls}");
    }
    let s = parse(
        "{name: m, mode: email, events: [x], email: {to: [a@b.c], from: r@b.c,
          subject_template: '[{type}] {id}',
          smtp: {host: h, port: 2525, tls: none, username: u, password: secret-pw}}}",
    )
    .unwrap();
    let email = s.email().unwrap();
    assert_eq!(email.subject.render("a.b", "e1"), "[a.b] e1");
    assert_eq!(email.smtp.port, 2525);
    assert_eq!(email.smtp.credentials.as_ref().unwrap().0, "u");
    assert!(!format!("{s:?}").contains("secret-pw"), "{s:?}");
    let view = s.view().to_string();
    assert!(
        !view.contains("secret-pw") && view.contains("\"username\":\"u\""),
        "{view}"
    );

    let errors = parse(
        "{name: m, mode: email, url: 'http://h/', success_code: 200, headers: {x-a: b},
          auth: {bearer: t}, signing: {secrets: []}, pull: {}, events: [x],
          email: {to: ['not an address', ok@b.c], from: '', subject_template: '{type} {name}',
                  bcc: x, smtp: {host: 'bad host', port: 0, tls: ssl, username: u}}}",
    )
    .unwrap_err();
    let expected = [
        "subscriptions[0].url: applies to HTTP push subscriptions only",
        "subscriptions[0].success_code: applies to HTTP push subscriptions only",
        "subscriptions[0].headers: applies to HTTP push subscriptions only",
        "subscriptions[0].auth: applies to HTTP push subscriptions only",
        "subscriptions[0].signing: applies to HTTP push subscriptions only",
        "subscriptions[0].pull: applies to mode: pull only",
        "subscriptions[0].email.bcc: unknown field",
        "subscriptions[0].email.to[0]: \"not an address\" is not an e-mail address",
        "subscriptions[0].email.from: \"\" is not an e-mail address",
        "subscriptions[0].email.subject_template: unknown placeholder {name}",
        "subscriptions[0].email.smtp.host: \"bad host\" is not a host name",
        "subscriptions[0].email.smtp.port: 0 is out of range",
        "subscriptions[0].email.smtp.tls: \"ssl\" is not none, starttls or tls",
        "subscriptions[0].email.smtp.password: missing",
        "subscriptions[0].signing.secrets: needs 1 to 10 secrets",
    ];
    for e in expected {
        assert!(
            errors.iter().any(|got| got.starts_with(e)),
            "missing {e:?} in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");

    let many: Vec<String> = (0..51).map(|i| format!("r{i}@b.c")).collect();
    let errors = parse(&format!(
        "{{name: m, mode: email, events: [x], email: {{to: [{}], from: r@b.c, smtp: {{host: h}}}}}}",
        many.join(",")
    ))
    .unwrap_err();
    assert_eq!(
        errors,
        ["subscriptions[0].email.to: must list 1..=50 recipients, found 51"]
    );
    let errors = parse("{name: m, mode: email, events: [x]}").unwrap_err();
    assert_eq!(errors, ["subscriptions[0].email: missing"]);
    let errors =
        parse("{name: m, mode: email, events: [x], email: {to: [], from: r@b.c}}").unwrap_err();
    assert_eq!(
        errors,
        [
            "subscriptions[0].email.to: must list 1..=50 recipients, found 0",
            "subscriptions[0].email.smtp: missing"
        ]
    );
    let errors =
        parse("{name: m, url: 'http://h/', events: [x], email: {to: [a@b.c]}}").unwrap_err();
    assert_eq!(
        errors,
        ["subscriptions[0].email: applies to mode: email only"]
    );
}

#[test]
fn a_patch_that_moves_a_secret_drops_it_unless_it_gives_it_again() {
    let stored = serde_json::json!({"mode": "email",
        "email": {"smtp": {"host": "h", "username": "u", "password": "pw"}}});
    for (patch, kept) in [
        (
            serde_json::json!({"email": {"smtp": {"host": "evil"}}}),
            false,
        ),
        (
            serde_json::json!({"email": {"smtp": {"username": "v"}}}),
            false,
        ),
        (
            serde_json::json!({"email": {"smtp": {"host": "evil", "password": "new"}}}),
            true,
        ),
        (serde_json::json!({"retries": 3}), true),
    ] {
        let mut doc = stored.clone();
        json_patch::merge(&mut doc, &patch);
        crate::subscription::forget_moved_secrets(&mut doc, &stored, &patch);
        assert_eq!(
            doc["email"]["smtp"].get("password").is_some(),
            kept,
            "{patch}"
        );
    }
}

#[test]
fn smtp_password_is_kept_while_the_username_stays() {
    let stored = serde_json::json!({"mode": "email", "email": {"smtp": {"host": "h", "username": "u", "password": "pw"}}});
    let mut doc = Spec(stored.clone()).redacted();
    assert!(doc["email"]["smtp"].get("password").is_none());
    keep_secrets(&mut doc, &stored, true);
    assert_eq!(doc, stored);
    let mut other =
        serde_json::json!({"mode": "email", "email": {"smtp": {"host": "h", "username": "v"}}});
    keep_secrets(&mut other, &stored, true);
    assert!(other["email"]["smtp"].get("password").is_none());
    // Nor to another server.
    let mut moved =
        serde_json::json!({"mode": "email", "email": {"smtp": {"host": "evil", "username": "u"}}});
    keep_secrets(&mut moved, &stored, true);
    assert!(moved["email"]["smtp"].get("password").is_none());
}

#[test]
fn pull_subscriptions() {
    let s = parse("{name: p, mode: pull, events: [x]}").unwrap();
    let pull = s.pull().unwrap();
    assert!(s.http().is_none());
    assert_eq!(pull.ack, AckMode::Explicit);
    assert_eq!(pull.visibility_timeout, Duration::from_secs(30));
    assert_eq!(pull.ttl, Duration::from_secs(72 * 3600));
    assert!(pull.token.is_none());
    let s = parse(
        "{name: p, mode: pull, events: [x], pull: {ack: auto, visibility_timeout: 0s, ttl: 1h, token: t}}",
    )
    .unwrap();
    let pull = s.pull().unwrap();
    assert_eq!(
        (pull.ack, pull.visibility_timeout),
        (AckMode::Auto, Duration::ZERO)
    );
    assert_eq!(format!("{:?}", pull.token), "Some(<redacted>)");

    let errors = parse(
        "{name: p, mode: pull, url: 'http://h/', events: [x], retries: 2,
          pull: {ack: maybe, visibility_timeout: 13h, ttl: 0s, token: '', extra: 1}}",
    )
    .unwrap_err();
    let expected = [
        "subscriptions[0].url: applies to push subscriptions only",
        "subscriptions[0].retries: applies to push subscriptions only",
        "subscriptions[0].pull.extra: unknown field",
        "subscriptions[0].pull.ack: \"maybe\" is not explicit or auto",
        "subscriptions[0].pull.visibility_timeout: 13h is out of range",
        "subscriptions[0].pull.ttl: 0s is out of range",
        "subscriptions[0].pull.token: must be visible ASCII",
    ];
    for e in expected {
        assert!(
            errors.iter().any(|got| got.starts_with(e)),
            "missing {e:?} in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    let errors =
        parse("{name: p, mode: poll, url: 'http://h/', events: [x], pull: {}}").unwrap_err();
    assert_eq!(
        errors,
        [
            "subscriptions[0].mode: \"poll\" is not push, pull or email",
            "subscriptions[0].pull: applies to mode: pull only"
        ]
    );
}

#[test]
fn bad_event_patterns() {
    let errors = parse("{name: a, url: 'http://h/', events: ['a*b', 'x y', '']}").unwrap_err();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors[0].starts_with("subscriptions[0].events[0]: \"a*b\" is not an event type pattern")
    );
}

#[test]
fn encodings() {
    let with = |e: &str| {
        parse(&format!(
            "{{name: e, url: 'http://h/', events: [x], encoding: {e}}}"
        ))
    };
    assert_eq!(sub("d", &["x"]).http().unwrap().encoding, Encoding::Raw);
    assert_eq!(with("raw").unwrap().http().unwrap().encoding, Encoding::Raw);
    assert_eq!(
        with("envelope").unwrap().http().unwrap().encoding,
        Encoding::Envelope
    );
    assert_eq!(
        with("{form: {field: request}}")
            .unwrap()
            .http()
            .unwrap()
            .encoding,
        Encoding::Form {
            field: "request".into()
        }
    );
    let cases = [
        (
            "xml",
            "subscriptions[0].encoding: \"xml\" is not raw, envelope or",
        ),
        (
            "{form: {}}",
            "subscriptions[0].encoding.form.field: missing",
        ),
        (
            "{form: request}",
            "subscriptions[0].encoding.form: expected a mapping",
        ),
        (
            "{form: {field: ''}}",
            "subscriptions[0].encoding.form.field: \"\" must be",
        ),
        (
            "{form: {field: a, x: 1}}",
            "subscriptions[0].encoding.form.x: unknown",
        ),
        ("{json: {}}", "subscriptions[0].encoding.json: unknown"),
    ];
    for (e, expected) in cases {
        let errors = with(e).expect_err(e);
        assert!(
            errors.iter().any(|m| m.starts_with(expected)),
            "{e}: {errors:?}"
        );
    }
    let errors = parse("{name: p, mode: pull, events: [x], encoding: envelope}").unwrap_err();
    assert!(
        errors[0].starts_with("subscriptions[0].encoding: applies to push"),
        "{errors:?}"
    );
}

#[test]
fn oauth2_settings_parse_with_defaults() {
    let s = parse(
        "{name: a, url: 'https://h/', events: [x], auth: {oauth2: {
           token_url: 'https://idp.example/token', client_id: relay, client_secret: s3cret,
           scopes: [webhooks.write, b], audience: 'https://h'}}}",
    )
    .unwrap();
    let Some(Auth::OAuth2(o)) = &s.http().unwrap().auth else {
        panic!("not oauth2");
    };
    assert_eq!(o.token_url.as_str(), "https://idp.example/token");
    assert_eq!(o.client_id, "relay");
    assert_eq!(o.client_secret.expose(), "s3cret");
    assert_eq!(o.scopes, ["webhooks.write", "b"]);
    assert_eq!(o.audience.as_deref(), Some("https://h"));
    assert_eq!(o.style, ClientAuthStyle::Basic);
    let shown = format!("{s:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("client_secret: \"<redacted>\""), "{shown}");
    // Plain http to a loopback token endpoint is fine (a sidecar's local IdP proxy).
    parse(
        "{name: a, url: 'https://h/', events: [x], auth: {oauth2: {
           token_url: 'http://127.0.0.1:8080/t', client_id: c, client_secret: s,
           auth_style: body}}}",
    )
    .unwrap();
}

#[test]
fn oauth2_problems_are_named_by_path() {
    let errors = parse(
        "{name: a, url: 'https://h/', events: [x], auth: {oauth2: {
           token_url: 'http://idp.example/token', client_id: '', scopes: [ok, 'a b'],
           auth_style: post, realm: x}}}",
    )
    .unwrap_err();
    assert_eq!(
        errors,
        [
            "subscriptions[0].auth.oauth2.realm: unknown field (expected one of: token_url, client_id, client_secret, scopes, audience, auth_style)",
            "subscriptions[0].auth.oauth2.token_url: must be https (http only to a loopback address)",
            "subscriptions[0].auth.oauth2.client_id: must not be empty or hold control characters",
            "subscriptions[0].auth.oauth2.client_secret: missing",
            "subscriptions[0].auth.oauth2.scopes[1]: \"a b\" is not a scope (no spaces, quotes or backslashes)",
            "subscriptions[0].auth.oauth2.auth_style: \"post\" is not basic or body",
        ]
    );
    let errors = parse(
        "{name: a, url: 'https://h/', events: [x], auth: {bearer: t, oauth2: {
           token_url: 'https://i/t', client_id: c, client_secret: s}}}",
    )
    .unwrap_err();
    assert_eq!(
        errors,
        ["subscriptions[0].auth: use one of basic, bearer or oauth2"]
    );
    let errors = parse("{name: a, url: 'https://h/', events: [x], auth: {}}").unwrap_err();
    assert_eq!(
        errors,
        ["subscriptions[0].auth: needs basic, bearer or oauth2"]
    );
}
