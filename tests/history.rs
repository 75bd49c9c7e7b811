//! Attempt history and replay: every attempt of a delivery is on record (also across a
//! restart and a release, which starts the retry budget over but keeps the count), and an
//! event or a time range is delivered again as new deliveries with the event's own
//! `webhook-id`.

mod common;

use std::collections::BTreeSet;

use common::{Answer, Backend, Receiver, TestDb, TestRelay, poll};
use reqwest::Method;
use serde_json::{Value, json};

fn header(r: &common::Received, name: &str) -> String {
    r.headers[name].to_str().unwrap().to_string()
}

/// The one delivery of event `id` to `sub`, from the event's status.
async fn delivery_of(relay: &TestRelay, id: &str, sub: &str) -> Value {
    let (status, body) = relay.event_status(id).await;
    assert_eq!(status, 200, "{body}");
    let found: Vec<&Value> = body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["subscription"] == sub)
        .collect();
    assert_eq!(found.len(), 1, "{body}");
    found[0].clone()
}

async fn attempts_of(relay: &TestRelay, delivery: i64) -> Vec<Value> {
    let path = format!("/v1/deliveries/{delivery}/attempts");
    let (status, body) = relay.api(Method::GET, &path, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], delivery);
    body["attempts"].as_array().unwrap().clone()
}

async fn each_attempt_is_on_record_across_a_restart(backend: Backend) {
    let db = TestDb::new(backend);
    // Two failures, then success; the failures take a little time.
    let rx = Receiver::scripted(|n| match n {
        0 | 1 => Answer::status(503).after(std::time::Duration::from_millis(20)),
        _ => Answer::status(200),
    })
    .await;
    let yaml = format!(
        "subscriptions:\n  - {{name: s, url: '{}', events: ['*'], retries: 3, backoff: {{schedule: [30ms]}}}}\n",
        rx.url("/")
    );
    let relay = TestRelay::on(&db, &yaml).await;
    relay
        .post(&json!({"id": "h1", "type": "t", "data": {}}))
        .await;
    relay.wait_outcome("s", "delivered", 1.0).await;
    let numbers: Vec<String> = rx
        .received()
        .iter()
        .map(|r| header(r, "hookrelay-attempt"))
        .collect();
    assert_eq!(numbers, ["1", "2", "3"]);
    let d = delivery_of(&relay, "h1", "s").await;
    let id = d["id"].as_i64().unwrap();
    assert_eq!(
        (d["attempts"].as_u64(), d["budget_used"].as_u64()),
        (Some(3), Some(3))
    );
    let check = |all: &[Value]| {
        let seen: Vec<_> = all
            .iter()
            .map(|a| {
                (
                    a["number"].as_u64().unwrap(),
                    a["status"].as_u64(),
                    a["result"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (1, Some(503), "http_error"),
                (2, Some(503), "http_error"),
                (3, Some(200), "success")
            ]
        );
        assert!(all[0]["error"].as_str().unwrap().contains("503"), "{all:?}");
        assert!(all[2]["error"].is_null());
        for a in all {
            assert!(a["duration_ms"].as_f64().unwrap() > 0.0, "{a}");
        }
        // The failures waited 20 ms at the receiver.
        assert!(all[0]["duration_ms"].as_f64().unwrap() >= 20.0, "{all:?}");
        let times: Vec<&str> = all.iter().map(|a| a["at"].as_str().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    };
    let all = attempts_of(&relay, id).await;
    check(&all);
    assert_eq!(
        d["recent_attempts"].as_array().unwrap(),
        &all,
        "the event status shows them"
    );
    relay.stop().await;

    let relay = TestRelay::on(&db, &yaml).await;
    check(&attempts_of(&relay, id).await);
    // Unknown deliveries: 404 in the API's error shape.
    for path in [
        "/v1/deliveries/999999/attempts",
        "/v1/deliveries/nope/attempts",
    ] {
        let (status, body) = relay.api(Method::GET, path, None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{body}"
        );
    }
    relay.stop().await;
}

async fn a_released_dead_letter_keeps_its_count_and_gets_a_fresh_budget(backend: Backend) {
    let db = TestDb::new(backend);
    let rx = Receiver::scripted(|n| Answer::status(if n < 2 { 500 } else { 200 })).await;
    let yaml = format!(
        "release: {{min_interval: 0s}}\nsubscriptions:\n  - {{name: s, url: '{}', events: ['*'], retries: 1, backoff: {{schedule: [10ms]}}}}\n",
        rx.url("/")
    );
    let relay = TestRelay::on(&db, &yaml).await;
    relay
        .post(&json!({"id": "d1", "type": "t", "data": {}}))
        .await;
    relay.wait_outcome("s", "failed", 1.0).await;
    let d = delivery_of(&relay, "d1", "s").await;
    assert_eq!(
        (
            d["state"].as_str(),
            d["attempts"].as_u64(),
            d["budget_used"].as_u64()
        ),
        (Some("failed"), Some(2), Some(2))
    );
    let (status, body) = relay
        .api(Method::POST, "/v1/deliveries/release", None)
        .await;
    assert_eq!((status, &body), (202, &json!({"released": 1})));
    relay.wait_outcome("s", "delivered", 1.0).await;
    let d = delivery_of(&relay, "d1", "s").await;
    assert_eq!(
        (
            d["state"].as_str(),
            d["attempts"].as_u64(),
            d["budget_used"].as_u64()
        ),
        (Some("delivered"), Some(3), Some(1))
    );
    let results: Vec<_> = attempts_of(&relay, d["id"].as_i64().unwrap())
        .await
        .iter()
        .map(|a| (a["number"].as_u64().unwrap(), a["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(results, [(1, 500), (2, 500), (3, 200)]);
    assert_eq!(header(&rx.received()[2], "hookrelay-attempt"), "3");
    relay.stop().await;
}

async fn a_replayed_event_arrives_again_with_its_webhook_id(backend: Backend) {
    let db = TestDb::new(backend);
    let rx = Receiver::ok().await;
    let yaml = format!(
        "subscriptions:\n  - {{name: a, url: '{url}', events: ['*']}}\n  - {{name: b, url: '{url}', events: ['*']}}\n  - {{name: p, mode: pull, events: ['*']}}\n",
        url = rx.url("/")
    );
    let relay = TestRelay::on(&db, &yaml).await;
    relay
        .post(&json!({"id": "r1", "type": "t", "data": {"k": 1}}))
        .await;
    relay.wait_outcome("a", "delivered", 1.0).await;
    relay.wait_outcome("b", "delivered", 1.0).await;

    let (status, body) = relay
        .api(
            Method::POST,
            "/v1/events/r1/replay",
            Some(json!({"subscriptions": ["a"]})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(body["deliveries"][0]["subscription"], "a");
    let new_id = body["deliveries"][0]["id"].as_i64().unwrap();
    relay.wait_outcome("a", "delivered", 2.0).await;
    let got = rx.wait_for(3).await;
    assert!(got.iter().all(|r| header(r, "webhook-id") == "r1"));
    assert_eq!(got[0].body, got[2].body);
    assert_eq!(header(&got[2], "hookrelay-attempt"), "1", "a new delivery");
    let replayed = attempts_of(&relay, new_id).await;
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0]["result"], "success");
    let (_, status_body) = relay.event_status("r1").await;
    assert_eq!(status_body["deliveries"].as_array().unwrap().len(), 4);

    // No body: every subscription with a delivery of it, the pull one left out.
    let (status, body) = relay.api(Method::POST, "/v1/events/r1/replay", None).await;
    assert_eq!(status, 202, "{body}");
    let names: BTreeSet<&str> = body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["subscription"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["a", "b"]));
    assert_eq!(
        body["skipped"],
        json!([{"subscription": "p", "reason": "pull"}])
    );
    relay.wait_outcome("a", "delivered", 3.0).await;
    relay.wait_outcome("b", "delivered", 2.0).await;

    // Refusals name what is wrong.
    let (status, body) = relay
        .api(Method::POST, "/v1/events/nope/replay", None)
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (status, body) = relay
        .api(
            Method::POST,
            "/v1/events/r1/replay",
            Some(json!({"subscriptions": ["a", "zz", "p", 3]})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_replay")),
        "{body}"
    );
    let fields: Vec<&str> = body["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["subscriptions[1]", "subscriptions[2]", "subscriptions[3]"]
    );
    let (status, _) = relay
        .api(
            Method::POST,
            "/v1/events/r1/replay",
            Some(json!({"subscriptions": []})),
        )
        .await;
    assert_eq!(status, 422);
    relay.stop().await;
}

/// Posts event `id` of `type`, then waits until the clock has moved past its acceptance, so
/// the next event is accepted at a later millisecond; returns its acceptance time.
async fn post_apart(relay: &TestRelay, id: &str, event_type: &str) -> String {
    let (status, _) = relay
        .post(&json!({"id": id, "type": event_type, "data": {}}))
        .await;
    assert_eq!(status, 202);
    let (_, body) = relay.event_status(id).await;
    let at = body["received_at"].as_str().unwrap().to_string();
    poll(|| async { chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true) > at })
        .await;
    at
}

async fn a_range_replay_redelivers_exactly_the_events_in_the_range(backend: Backend) {
    let db = TestDb::new(backend);
    let rx = Receiver::ok().await;
    let yaml = format!(
        "release: {{min_interval: 1h}}\nsubscriptions:\n  - {{name: a, url: '{}', events: ['a.*']}}\n  - {{name: b, url: '{}', events: ['*']}}\n  - {{name: p, mode: pull, events: ['*']}}\n",
        rx.url("/"),
        rx.url("/b")
    );
    let relay = TestRelay::on(&db, &yaml).await;
    post_apart(&relay, "e1", "a.x").await;
    let from = post_apart(&relay, "e2", "a.x").await;
    post_apart(&relay, "e3", "other").await;
    post_apart(&relay, "e4", "a.x").await;
    let to = post_apart(&relay, "e5", "a.x").await;
    relay.wait_outcome("a", "delivered", 4.0).await;
    relay.wait_outcome("b", "delivered", 5.0).await;

    let (status, body) = relay
        .api(
            Method::POST,
            "/v1/subscriptions/a/replay",
            Some(json!({"from": from, "to": to})),
        )
        .await;
    assert_eq!((status, &body), (202, &json!({"queued": 2})));
    relay.wait_outcome("a", "delivered", 6.0).await;
    let to_a: Vec<String> = rx
        .received()
        .iter()
        .filter(|r| r.path == "/")
        .map(|r| header(r, "webhook-id"))
        .collect();
    assert_eq!(to_a.len(), 6, "{to_a:?}");
    assert_eq!(
        to_a[4..].iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([&"e2".to_string(), &"e4".to_string()])
    );
    // Rate-limited like a release, per subscription.
    let (status, body, headers) = relay
        .api_as(
            Method::POST,
            "/v1/subscriptions/a/replay",
            Some(json!({"from": from, "to": to})),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("too_soon")),
        "{body}"
    );
    assert!(headers.contains_key("retry-after"));
    // Refusals.
    let (status, _) = relay
        .api(
            Method::POST,
            "/v1/subscriptions/zz/replay",
            Some(json!({"from": from, "to": to})),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = relay
        .api(
            Method::POST,
            "/v1/subscriptions/p/replay",
            Some(json!({"from": from, "to": to})),
        )
        .await;
    assert_eq!(status, 409);
    let (status, body) = relay
        .api(
            Method::POST,
            "/v1/subscriptions/b/replay",
            Some(json!({"from": to, "to": from})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["fields"][0]["field"].as_str()),
        (422, Some("to")),
        "{body}"
    );
    // Nothing more arrived.
    assert_eq!(rx.received().iter().filter(|r| r.path == "/").count(), 6);
    relay.stop().await;
}

crate::both_backends!(
    each_attempt_is_on_record_across_a_restart,
    a_released_dead_letter_keeps_its_count_and_gets_a_fresh_budget,
    a_replayed_event_arrives_again_with_its_webhook_id,
    a_range_replay_redelivers_exactly_the_events_in_the_range,
);
