//! The answers agree with the served OpenAPI document: the disagreements a schema-driven
//! fuzzer found, kept closed. (`.ci/schema-check` runs the fuzzer itself.)

mod common;

use common::TestRelay;
use reqwest::Method;
use serde_json::{Value, json};

/// The `fields` of a 422 answer with their reasons.
fn fields(answer: &Value) -> Vec<(String, String)> {
    answer["error"]["fields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    let s = |k: &str| f[k].as_str().unwrap().to_string();
                    (s("field"), s("reason"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn json_scalars_of_the_wrong_type_are_refused_not_coerced() {
    let relay = TestRelay::start("").await;
    // `ordering.key` false was read as the text "false" and echoed back as a boolean.
    let (status, answer) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(
                json!({"url": "http://127.0.0.1:9/", "events": ["x"], "ordering": {"key": false}}),
            ),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    let got = fields(&answer);
    assert_eq!(got.len(), 1, "{answer}");
    assert_eq!(got[0].0, "ordering.key");
    assert!(got[0].1.contains("expected a string"), "{answer}");

    // Nor numbers for strings, digit strings for integers, or text for booleans.
    let (status, answer) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(
                json!({"name": 123, "url": "http://127.0.0.1:9/", "events": ["x"],
                        "retries": "3", "metrics": "true"}),
            ),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    let mut got: Vec<String> = fields(&answer).into_iter().map(|(f, _)| f).collect();
    got.sort();
    assert_eq!(got, ["metrics", "name", "retries"], "{answer}");

    let (_, list) = relay.api(Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(list, json!([]));
    relay.stop().await;
}

#[tokio::test]
async fn a_null_filter_combinator_is_refused() {
    let relay = TestRelay::start("").await;
    // It was stored as a filter that silently matched nothing, and echoed back.
    let (status, answer) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"url": "http://127.0.0.1:9/", "events": ["x"],
                        "filter": {"any": [{"any": null}]}})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(
        fields(&answer),
        [(
            "filter.any[0].any".to_string(),
            "expected a list of filters, found null".to_string()
        )]
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_null_release_body_and_integral_float_ack_ids_are_taken_as_documented() {
    let relay = TestRelay::start(
        "subscriptions:
  - {name: poll, mode: pull, events: ['*']}
",
    )
    .await;
    // The document's release body is optional and its scope nullable: `null` releases all.
    let (status, answer) = relay
        .api(Method::POST, "/v1/deliveries/release", Some(Value::Null))
        .await;
    assert_eq!(status, 202, "{answer}");
    // JSON Schema's `integer` includes 8.0.
    let (status, answer) = relay
        .api(
            Method::POST,
            "/v1/subscriptions/poll/notifications/ack",
            Some(json!({"ids": [8.0, 9]})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"acked": 0, "unknown": [8, 9]}));
    relay.stop().await;
}

#[tokio::test]
async fn replay_bodies_the_document_allows_are_taken_as_the_default() {
    let rx = common::Receiver::ok().await;
    let relay = TestRelay::start(&format!(
        "subscriptions:\n  - {{name: a, url: '{}', events: ['*']}}\n",
        rx.url("/")
    ))
    .await;
    relay
        .post(&json!({"id": "e1", "type": "t", "data": {}}))
        .await;
    // The body is optional and `subscriptions` nullable: each means every subscription.
    for body in [Value::Null, json!({}), json!({"subscriptions": null})] {
        let (status, answer) = relay
            .api(Method::POST, "/v1/events/e1/replay", Some(body))
            .await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["deliveries"][0]["subscription"], "a", "{answer}");
    }
    rx.wait_for(4).await;
    relay.stop().await;
}
