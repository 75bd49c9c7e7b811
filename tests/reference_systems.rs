//! The reference systems of `docs/reference-systems.md`, one test each: the mapped
//! configuration (YAML given to the relay, or subscriptions registered through the API as that
//! system's clients would) exercised end to end with the real relay and real receivers.

mod common;

use common::{Answer, Receiver, TestRelay, poll};
use reqwest::Method;
use serde_json::{Value, json};

/// Posts an event; asserts `202` and returns the names of the subscriptions it matched.
async fn post_matched(relay: &TestRelay, event: &Value) -> Vec<String> {
    let (status, answer) = relay.post(event).await;
    assert_eq!(status, 202, "{event}: {answer}");
    answer["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Field names of a `422` answer.
fn fields(answer: &Value) -> Vec<String> {
    answer["error"]["fields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| f["field"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn event_ids(list: &Value) -> Vec<String> {
    list["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["event_id"].as_str().unwrap().to_string())
        .collect()
}

/// `POST /v1/subscriptions/{sub}/notifications/ack`.
async fn ack(relay: &TestRelay, sub: &str, ids: &[i64]) -> Value {
    let (status, answer) = relay
        .api(
            Method::POST,
            &format!("/v1/subscriptions/{sub}/notifications/ack"),
            Some(json!({ "ids": ids })),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// The body of a GET on the api listener as text (to compare bytes, not parsed JSON).
async fn api_text(relay: &TestRelay, path: &str) -> (u16, String) {
    let r = relay
        .http
        .get(format!("http://{}{path}", relay.addrs.api))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// 000, the clinic-booking API: pushed once whatever the answer (`retries: 0`), a FIFO pull
/// queue (one per call, or `limit` with `remaining`), expiry of what is not pulled in time
/// (`pull.ttl`), and a release of what was not processed, allowed once per interval.
#[tokio::test]
async fn clinic_booking_callbacks_and_pull_queue() {
    // The client's endpoint answers 500, then 400, then 200 to everything.
    let rx =
        Receiver::scripted(|n| Answer::status([500, 400].get(n).copied().unwrap_or(200))).await;
    let relay = TestRelay::start(&format!(
        "release: {{min_interval: 1h}}
subscriptions:
  - name: clinic-push
    url: '{}'
    events: ['*']
    retries: 0
  - name: clinic-pull
    mode: pull
    events: ['*']
    pull: {{ack: auto, ttl: 72h}}
  - name: clinic-pull-short
    mode: pull
    events: ['*']
    pull: {{ack: auto, ttl: 1s}}
",
        rx.url("/notifications")
    ))
    .await;
    let all = ["clinic-push", "clinic-pull", "clinic-pull-short"];

    // Pushed once, whatever the answer: 500, 400 and 200 each get exactly one attempt.
    for (i, kind) in ["slot-booked", "booking-canceled", "booking-moved"]
        .into_iter()
        .enumerate()
    {
        let event = json!({"type": kind, "id": format!("n{i}"), "data": {"visit": i}});
        assert_eq!(post_matched(&relay, &event).await, all);
        rx.wait_for(i + 1).await;
    }
    relay.wait_outcome("clinic-push", "failed", 2.0).await;
    relay.wait_outcome("clinic-push", "delivered", 1.0).await;
    assert_eq!(rx.count(), 3, "a failed push was attempted again");
    assert_eq!(relay.attempts("clinic-push", "http_error").await, Some(2.0));
    let got = rx.received();
    assert_eq!(got[0].path, "/notifications");
    assert_eq!(&got[0].body[..], br#"{"visit":0}"#);

    // Pull: oldest first; one per call by default, or up to `limit` with what remains.
    let (status, one) = relay
        .api(
            Method::GET,
            "/v1/subscriptions/clinic-pull/notifications",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(event_ids(&one), ["n0"]);
    assert_eq!(one["remaining"], 2);
    let (_, rest) = relay
        .api(
            Method::GET,
            "/v1/subscriptions/clinic-pull/notifications?limit=100",
            None,
        )
        .await;
    assert_eq!(event_ids(&rest), ["n1", "n2"]);
    assert_eq!(rest["remaining"], 0);
    assert_eq!(rest["notifications"][0]["type"], "booking-canceled");
    assert_eq!(rest["notifications"][0]["data"], json!({"visit": 1}));
    for bad in [0, 101] {
        let (status, answer) = relay
            .api(
                Method::GET,
                &format!("/v1/subscriptions/clinic-pull/notifications?limit={bad}"),
                None,
            )
            .await;
        assert_eq!(status, 422, "limit={bad}: {answer}");
        assert_eq!(fields(&answer), ["limit"]);
    }
    let (status, _) = relay
        .api(
            Method::GET,
            "/v1/subscriptions/clinic-pull/notifications/next",
            None,
        )
        .await;
    assert_eq!(status, 204, "pulled notifications are not handed out again");
    let event = json!({"type": "slot-booked", "id": "n3", "data": {"visit": 3}});
    assert_eq!(post_matched(&relay, &event).await, all);
    let (status, next) = relay
        .api(
            Method::GET,
            "/v1/subscriptions/clinic-pull/notifications/next",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(next["event_id"], "n3");
    relay.wait_outcome("clinic-pull", "delivered", 4.0).await;

    // Not pulled within the ttl (72h in production, 1s here): expired, never handed out.
    relay
        .wait_outcome("clinic-pull-short", "expired", 4.0)
        .await;
    let (status, expired) = relay
        .api(
            Method::GET,
            "/v1/subscriptions/clinic-pull-short/notifications?limit=100",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(expired, json!({"notifications": [], "remaining": 0}));

    // Release re-dispatches what was not processed correctly (the 500 and the 400), once.
    rx.wait_for(4).await;
    relay.wait_outcome("clinic-push", "delivered", 2.0).await;
    let release = Some(json!({"subscription": "clinic-push"}));
    let (status, released) = relay
        .api(Method::POST, "/v1/deliveries/release", release.clone())
        .await;
    assert_eq!(status, 202, "{released}");
    assert_eq!(released, json!({"released": 2}));
    let got = rx.wait_for(6).await;
    let mut again: Vec<&str> = got[4..]
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap())
        .collect();
    again.sort();
    assert_eq!(again, ["n0", "n1"]);
    relay.wait_outcome("clinic-push", "delivered", 4.0).await;
    // A second release within the interval is refused, with when to come back.
    let (status, refused, headers) = relay
        .api_as(Method::POST, "/v1/deliveries/release", release, None)
        .await;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["error"]["code"], "too_soon");
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((3500..=3600).contains(&wait), "retry-after {wait}");
    assert_eq!(rx.count(), 6);
    relay.stop().await;
}

/// 001, the dashboard service: subscription CRUD (201 with an id, 422 naming the missing
/// fields, `[]` when empty, 404 for an unknown id, 204 for every delete) and subscriptions by
/// event type and by upper-case country code.
#[tokio::test]
async fn dashboard_subscription_crud() {
    let no_register = Receiver::ok().await;
    let gb_invoke = Receiver::ok().await;
    let relay = TestRelay::start("").await;
    let path = "/v1/subscriptions";

    let (status, list) = relay.api(Method::GET, path, None).await;
    assert_eq!((status, list), (200, json!([])));

    // Missing fields: 422 naming each of them.
    let (status, answer) = relay.api(Method::POST, path, Some(json!({}))).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(fields(&answer), ["url", "events"]);
    assert!(
        answer["error"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["reason"] == "missing"),
        "{answer}"
    );
    let (status, answer) = relay
        .api(
            Method::POST,
            path,
            Some(json!({"url": no_register.url("/hook")})),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(fields(&answer), ["events"]);

    // {"url", "country": "NO", "event": "REGISTER"} and {"url", "country": "GB", "event": "INVOKE"}.
    let subscribe = |url: String, country: &str, event: &str| json!({"url": url, "events": [event], "filter": {"field": "country", "equals": country}});
    let (status, created, headers) = relay
        .api_as(
            Method::POST,
            path,
            Some(subscribe(no_register.url("/hook"), "NO", "REGISTER")),
            None,
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let no_id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        headers["location"].to_str().unwrap(),
        format!("{path}/{no_id}")
    );
    let (status, created) = relay
        .api(
            Method::POST,
            path,
            Some(subscribe(gb_invoke.url("/hook"), "GB", "INVOKE")),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let gb_id = created["id"].as_str().unwrap().to_string();
    assert_ne!(no_id, gb_id);

    let (status, list) = relay.api(Method::GET, path, None).await;
    assert_eq!(status, 200);
    let listed: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [no_id.as_str(), gb_id.as_str()]);
    let (status, one) = relay
        .api(Method::GET, &format!("{path}/{no_id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(one["url"], no_register.url("/hook"));
    assert_eq!(one["events"], json!(["REGISTER"]));
    assert_eq!(one["filter"], json!({"field": "country", "equals": "NO"}));
    let (status, _) = relay
        .api(Method::GET, &format!("{path}/17388271632813271"), None)
        .await;
    assert_eq!(status, 404);

    // Events select by type and by country code; codes are upper case, compared exactly.
    let no = vec![no_id.clone()];
    let gb = vec![gb_id.clone()];
    let none: Vec<String> = Vec::new();
    for (event, country, id, expected) in [
        ("REGISTER", "NO", "c1", &no),
        ("REGISTER", "GB", "c2", &none),
        ("CHANGE", "NO", "c3", &none),
        ("REGISTER", "no", "c4", &none),
        ("INVOKE", "GB", "c5", &gb),
        ("DELETE", "GB", "c6", &none),
    ] {
        let e = json!({"type": event, "id": id, "data": {"country": country, "configuration": 7}});
        assert_eq!(
            &post_matched(&relay, &e).await,
            expected,
            "{event} {country}"
        );
    }
    let got = no_register.wait_for(1).await;
    assert_eq!(got[0].headers["webhook-id"], "c1");
    assert_eq!(got[0].headers["hookrelay-event-type"], "REGISTER");
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body, json!({"country": "NO", "configuration": 7}));
    let got = gb_invoke.wait_for(1).await;
    assert_eq!(got[0].headers["webhook-id"], "c5");

    // Delete: 204, also the second time and for an id that never existed.
    for key in [no_id.as_str(), no_id.as_str(), "17388271632813271"] {
        let (status, _) = relay
            .api(Method::DELETE, &format!("{path}/{key}"), None)
            .await;
        assert_eq!(status, 204, "{key}");
    }
    let (status, _) = relay
        .api(Method::GET, &format!("{path}/{no_id}"), None)
        .await;
    assert_eq!(status, 404);
    let e = json!({"type": "REGISTER", "id": "c7", "data": {"country": "NO"}});
    assert_eq!(post_matched(&relay, &e).await, none);
    let (status, _) = relay
        .api(Method::DELETE, &format!("{path}/{gb_id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, list) = relay.api(Method::GET, path, None).await;
    assert_eq!((status, list), (200, json!([])));
    assert_eq!(no_register.count(), 1);
    assert_eq!(gb_invoke.count(), 1);
    relay.stop().await;
}

const MAILBOX: &str = "5b0a2c1e-8f3d-4e6a-9c2b-7d1e0f4a3b21";
const TEMPLATE: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
const SENDER: &str = "9d2f6a40-1c8e-4b7d-a3f5-0e6c2b8d4f17";

/// An envelope that passes every condition of the `contracts` callback.
fn envelope() -> Value {
    json!({
        "mailbox": MAILBOX,
        "envelopeId": "f1c3a2b4-0000-4000-8000-000000000001",
        "label": ["hr", "legal"],
        "status": "COMPLETED",
        "subject": "Додатковий договір №5",
        "receiveDate": "2023-05-10T09:00:00.000Z",
        "expireDate": "2024-02-01T00:00:00Z",
        "template": TEMPLATE,
        "sender": SENDER,
        "scope": "inbox"
    })
}

/// 002, the document platform: a callback is a filter (label any-of, status in, subject
/// contains, date ranges, template and sender in lists, scope), url, retries 0..10, timeout
/// 100..60000 ms, successCode and basic auth; the password is never shown.
#[tokio::test]
async fn document_platform_callback_filter() {
    // contracts: a timeout (answer after 1s > 500ms), then 202 (not the successCode), then 200.
    let rx = Receiver::scripted(|n| match n {
        0 => Answer::status(200).after(std::time::Duration::from_secs(1)),
        1 => Answer::status(202),
        _ => Answer::status(200),
    })
    .await;
    let everything_rx = Receiver::ok().await;
    let relay = TestRelay::start("").await;
    let path = "/v1/subscriptions";
    // The platform's filter, one condition per field, all of them required; a null bound
    // (as the platform shows unset dates) is an open end.
    let filter = json!({"all": [
        {"field": "mailbox", "equals": MAILBOX},
        {"field": "label", "in": ["finance", "legal"]},
        {"field": "status", "in": ["COMPLETED", "CANCELLED"]},
        {"field": "subject", "contains": "договір"},
        {"field": "receiveDate", "from": "2023-02-16T12:34:26.606Z", "to": "2023-12-31T23:59:59.999Z"},
        {"field": "expireDate", "from": "2024-01-01T00:00:00Z", "to": null},
        {"field": "template", "in": [TEMPLATE]},
        {"field": "sender", "in": [SENDER]},
        {"field": "scope", "in": ["inbox"]}
    ]});
    let callback = json!({
        "name": "contracts", "metrics": true,
        "url": rx.url("/callback"), "events": ["envelope.*"], "filter": filter,
        "retries": 10, "timeout": "500ms", "success_code": 200,
        "auth": {"basic": {"username": "platform", "password": "pw-s3cret"}},
        "backoff": {"schedule": ["50ms"], "overload_floor": "0s"}
    });

    // Out of range: retries above what the relay allows, timeout outside 100..60000 ms.
    for (field, value) in [
        ("retries", json!(21)),
        ("retries", json!(-1)),
        ("timeout", json!("99ms")),
        ("timeout", json!("60001ms")),
        // Milliseconds are written with their unit: a bare number is not a duration.
        ("timeout", json!(60000)),
        ("success_code", json!(600)),
    ] {
        let mut bad = callback.clone();
        bad[field] = value.clone();
        let (status, answer) = relay.api(Method::POST, path, Some(bad)).await;
        assert_eq!(status, 422, "{field}: {value}: {answer}");
        assert_eq!(fields(&answer), [field], "{value}");
    }
    // The platform's bounds (retries 10, 60000 ms) are accepted. hookrelay allows up to 20
    // retries, so 11..=20 are accepted too (wider than the platform's 0..10).
    let mut edge = callback.clone();
    edge["name"] = json!("edge");
    edge["timeout"] = json!("60000ms");
    edge["retries"] = json!(11);
    let (status, answer) = relay.api(Method::POST, path, Some(edge)).await;
    assert_eq!(status, 201, "{answer}");
    let (status, _) = relay
        .api(Method::DELETE, &format!("{path}/edge"), None)
        .await;
    assert_eq!(status, 204);
    // A login without a password is refused.
    let mut no_password = callback.clone();
    no_password["auth"] = json!({"basic": {"username": "platform"}});
    let (status, answer) = relay.api(Method::POST, path, Some(no_password)).await;
    assert_eq!(status, 422);
    assert_eq!(fields(&answer), ["auth.basic.password"]);

    let (status, created) = relay.api(Method::POST, path, Some(callback)).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["auth"], json!({"basic": {"username": "platform"}}));
    assert_eq!(created["success_code"], 200);
    assert_eq!(created["retries"], 10);
    assert_eq!(created["timeout"], "500ms");
    // An empty filter matches everything.
    let (status, created) = relay
        .api(
            Method::POST,
            path,
            Some(json!({
                "name": "all-envelopes", "metrics": true, "url": everything_rx.url("/all"),
                "events": ["envelope.*"], "filter": {}, "retries": 0, "timeout": "60000ms"
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    // The password never comes back, in any view.
    for p in [path, "/v1/subscriptions/contracts"] {
        let (status, text) = api_text(&relay, p).await;
        assert_eq!(status, 200);
        assert!(!text.contains("pw-s3cret"), "{text}");
        assert!(text.contains(r#""username":"platform""#), "{text}");
    }

    // Each variant breaks one condition of the filter.
    let mut variants: Vec<(&str, Value)> = vec![
        ("mailbox", json!("00000000-0000-4000-8000-000000000000")),
        ("label", json!(["hr"])),
        ("status", json!("WAITING")),
        ("subject", json!("Рахунок №12")),
        ("receiveDate", json!("2024-01-15T10:00:00Z")),
        ("receiveDate", json!("2023-02-16T12:34:26.605Z")),
        ("expireDate", json!("2023-12-31T23:59:59Z")),
        ("template", json!("11111111-2222-4333-8444-555555555555")),
        ("sender", json!("11111111-2222-4333-8444-555555555555")),
        ("scope", json!("outbox")),
    ];
    variants.push(("label", Value::Null));
    let contracts = vec!["contracts".to_string(), "all-envelopes".to_string()];
    let only_all = vec!["all-envelopes".to_string()];
    for (i, (field, value)) in variants.iter().enumerate() {
        let mut data = envelope();
        if value.is_null() {
            data.as_object_mut().unwrap().remove(*field);
        } else {
            data[*field] = value.clone();
        }
        let e = json!({"type": "envelope.status", "id": format!("v{i}"), "data": data});
        assert_eq!(post_matched(&relay, &e).await, only_all, "{field}: {value}");
    }
    // Other matching envelopes: a label given as one string, the lower date bound itself.
    let mut single_label = envelope();
    single_label["label"] = json!("finance");
    single_label["receiveDate"] = json!("2023-02-16T12:34:26.606Z");
    let e = json!({"type": "envelope.status", "id": "match-1", "data": single_label});
    assert_eq!(post_matched(&relay, &e).await, contracts);
    // The first matching envelope: timed out, then 202 (not successCode 200), then 200.
    relay.wait_outcome("contracts", "delivered", 1.0).await;
    let e = json!({"type": "envelope.status", "id": "match-2", "data": envelope()});
    assert_eq!(post_matched(&relay, &e).await, contracts);
    relay.wait_outcome("contracts", "delivered", 2.0).await;
    assert_eq!(relay.attempts("contracts", "timeout").await, Some(1.0));
    assert_eq!(relay.attempts("contracts", "http_error").await, Some(1.0));
    assert_eq!(relay.attempts("contracts", "success").await, Some(2.0));
    let got = rx.received();
    assert_eq!(got.len(), 4);
    for r in &got {
        // base64("platform:pw-s3cret")
        assert_eq!(r.headers["authorization"], "Basic cGxhdGZvcm06cHctczNjcmV0");
        assert_eq!(r.path, "/callback");
    }
    let seen: Vec<(&str, &str)> = got
        .iter()
        .map(|r| {
            let h = |name: &str| r.headers[name].to_str().unwrap();
            (h("webhook-id"), h("hookrelay-attempt"))
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("match-1", "1"),
            ("match-1", "2"),
            ("match-1", "3"),
            ("match-2", "1")
        ]
    );
    everything_rx.wait_for(variants.len() + 2).await;
    relay.wait_outcome("all-envelopes", "delivered", 13.0).await;
    assert!(
        everything_rx.received()[0]
            .headers
            .get("authorization")
            .is_none()
    );
    relay.stop().await;
}

/// The WAPI notification for the asynchronous `ping-async` of the seed, as the registrar's
/// backend posts it once the operation is done: correlation ids in `data`, the XML as a string.
fn wapi_event(sv_trid: &str, cl_trid: &str, command: &str, xml: &str) -> (String, String) {
    let data = serde_json::to_string(&json!({
        "clTRID": cl_trid, "svTRID": sv_trid, "command": command, "code": 1000, "xml": xml
    }))
    .unwrap();
    let envelope = format!(r#"{{"type":"wapi.{command}","id":"{sv_trid}","data":{data}}}"#);
    (envelope, data)
}

const PING_XML: &str = "<notify>\n <code>1000</code>\n <result>OK</result>\n \
<timestamp>1286957932</timestamp>\n <clTRID>AvrX87Kqk6h3</clTRID>\n \
<svTRID>1286957874.1271.15706</svTRID>\n <command>ping-async</command>\n <ID>2691</ID>\n</notify>";

const DOMAIN_XML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<notify>\n \
<code>1000</code>\n <result>Doména vytvořena &amp; zaplacena</result>\n \
<clTRID>Qx7-žluťoučký</clTRID>\n <svTRID>1286958000.1300.15800</svTRID>\n \
<command>domain-create</command>\n <ID>2692</ID>\n</notify>";

/// 003, the registrar (WAPI): a notification carrying the request's correlation ids is pushed
/// with success = HTTP 200 only (201 and 500 retried), or queued for polling: poll returns
/// the oldest notification not yet acknowledged, ack by its id; the XML travels unchanged.
#[tokio::test]
async fn registrar_notifications_push_and_poll() {
    let rx =
        Receiver::scripted(|n| Answer::status([201, 500].get(n).copied().unwrap_or(200))).await;
    let relay = TestRelay::start(&format!(
        "subscriptions:
  - name: registrar-push
    url: '{}'
    events: ['wapi.*']
    success_code: 200
    retries: 20
    backoff: {{schedule: [50ms]}}
  - name: registrar-poll
    mode: pull
    events: ['wapi.*']
    pull: {{ack: explicit, visibility_timeout: 0s}}
",
        rx.url("/wapi-notify")
    ))
    .await;
    let both = ["registrar-push", "registrar-poll"];

    let (ping, ping_data) = wapi_event(
        "1286957874.1271.15706",
        "AvrX87Kqk6h3",
        "ping-async",
        PING_XML,
    );
    let (status, answer) = relay.post_raw(&ping, "application/json").await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["subscriptions"], json!(both));

    // Push: 201 and 500 are not success; the third attempt's 200 is.
    relay.wait_outcome("registrar-push", "delivered", 1.0).await;
    assert_eq!(
        relay.attempts("registrar-push", "http_error").await,
        Some(2.0)
    );
    let got = rx.received();
    assert_eq!(got.len(), 3);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.headers["webhook-id"], "1286957874.1271.15706");
        assert_eq!(r.headers["hookrelay-attempt"], (i + 1).to_string().as_str());
        assert_eq!(r.headers["hookrelay-event-type"], "wapi.ping-async");
        assert_eq!(&r.body[..], ping_data.as_bytes());
    }
    let body: Value = serde_json::from_slice(&got[2].body).unwrap();
    assert_eq!(body["clTRID"], "AvrX87Kqk6h3");
    assert_eq!(body["xml"], PING_XML);

    // Poll: the oldest unacknowledged notification, again and again until acknowledged.
    let next = "/v1/subscriptions/registrar-poll/notifications/next";
    let (status, first) = relay.api(Method::GET, next, None).await;
    assert_eq!(status, 200);
    assert_eq!(first["event_id"], "1286957874.1271.15706");
    assert_eq!(first["type"], "wapi.ping-async");
    assert_eq!(first["data"]["svTRID"], "1286957874.1271.15706");
    assert_eq!(first["data"]["xml"], PING_XML);
    let ping_id = first["id"].as_i64().unwrap();
    let (status, again) = relay.api(Method::GET, next, None).await;
    assert_eq!(status, 200);
    assert_eq!(again["id"], ping_id, "not acknowledged: handed out again");

    let (domain, domain_data) = wapi_event(
        "1286958000.1300.15800",
        "Qx7-žluťoučký",
        "domain-create",
        DOMAIN_XML,
    );
    let (status, _) = relay.post_raw(&domain, "application/json").await;
    assert_eq!(status, 202);
    relay.wait_outcome("registrar-push", "delivered", 2.0).await;
    let (status, event) = relay.event_status("1286958000.1300.15800").await;
    assert_eq!(status, 200);
    let domain_id = event["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["subscription"] == "registrar-poll")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    // Only a notification handed out can be acknowledged; the oldest stays first.
    assert_eq!(
        ack(&relay, "registrar-poll", &[domain_id]).await,
        json!({"acked": 0, "unknown": [domain_id]})
    );
    let (_, still) = relay.api(Method::GET, next, None).await;
    assert_eq!(still["id"], ping_id);
    assert_eq!(
        ack(&relay, "registrar-poll", &[ping_id]).await,
        json!({"acked": 1, "unknown": []})
    );
    assert_eq!(
        ack(&relay, "registrar-poll", &[ping_id]).await,
        json!({"acked": 0, "unknown": [ping_id]})
    );

    // The next one, its data byte for byte as posted, the XML string unchanged.
    let (status, text) = api_text(&relay, next).await;
    assert_eq!(status, 200);
    assert!(text.contains(&format!(r#""data":{domain_data}"#)), "{text}");
    let second: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(second["id"], domain_id);
    assert_eq!(second["data"]["xml"], DOMAIN_XML);
    assert_eq!(second["data"]["clTRID"], "Qx7-žluťoučký");
    ack(&relay, "registrar-poll", &[domain_id]).await;
    // Empty queue (WAPI's 1003): 204.
    let (status, _) = relay.api(Method::GET, next, None).await;
    assert_eq!(status, 204);
    relay.wait_outcome("registrar-poll", "delivered", 2.0).await;
    poll(|| async { rx.count() == 4 }).await;
    assert_eq!(&rx.received()[3].body[..], domain_data.as_bytes());
    relay.stop().await;
}
