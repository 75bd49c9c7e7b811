//! Ingest and ops endpoints: every refusal answers with its status and the JSON error shape.

mod common;

use std::time::Duration;

use common::{Answer, Receiver, TestRelay, poll};
use serde_json::{Value, json};

async fn relay() -> TestRelay {
    TestRelay::start("limits: {max_body: 1KiB}\nsubscriptions: []\n").await
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not a JSON error: {body}"))
}

#[tokio::test]
async fn unmatched_event_is_accepted_with_no_subscriptions() {
    let r = relay().await;
    let (status, body) = r.post(&json!({"type": "a.b", "data": {"x": 1}})).await;
    assert_eq!(status, 202);
    assert_eq!(body["subscriptions"], json!([]));
    let id = body["id"].as_str().unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(id, id.to_lowercase());
    assert_eq!(&id[14..15], "7", "a UUIDv7");
    r.stop().await;
}

#[tokio::test]
async fn malformed_json_is_400_with_position() {
    let r = relay().await;
    let (status, body) = r
        .post_raw("{\"type\": \"t\",\n \"data\": }", "application/json")
        .await;
    assert_eq!(status, 400);
    assert_eq!(error_code(&body), "malformed_json");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("line 2, column"), "{message}");
    r.stop().await;
}

#[tokio::test]
async fn oversize_body_is_413() {
    let r = relay().await;
    let big = json!({"type": "t", "data": "x".repeat(2000)});
    let (status, body) = r.post(&big).await;
    assert_eq!(status, 413);
    assert_eq!(error_code(&body), "too_large");
    // Without Content-Length the body is cut off while it is read.
    let chunks = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(big.to_string())]);
    let resp = r
        .http
        .post(format!("http://{}/v1/events", r.addrs.app))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let rejected = r
        .metric(
            "hookrelay_events_rejected_total",
            &[("reason", "too_large")],
        )
        .await;
    assert_eq!(rejected, Some(2.0));
    r.stop().await;
}

#[tokio::test]
async fn non_json_is_415() {
    let r = relay().await;
    let (status, body) = r
        .post_raw("type=t", "application/x-www-form-urlencoded")
        .await;
    assert_eq!(status, 415);
    assert_eq!(error_code(&body), "unsupported_media_type");
    let (status, _) = r
        .post_raw(
            r#"{"type":"t","data":1}"#,
            "application/cloudevents+json; charset=utf-8",
        )
        .await;
    assert_eq!(status, 202, "+json types are JSON");
    r.stop().await;
}

#[tokio::test]
async fn invalid_envelopes_are_422_naming_the_field() {
    let r = relay().await;
    let cases = [
        (json!({"data": {}}), "type"),
        (json!({"type": "has space", "data": {}}), "type"),
        (
            json!({"type": "t", "id": "x".repeat(129), "data": {}}),
            "id",
        ),
        (json!({"type": "t", "id": 7, "data": {}}), "id"),
        (json!({"type": "t"}), "data"),
        (json!({"type": "t", "data": null}), "data"),
        (json!({"type": "t", "data": {}, "extra": 1}), "envelope"),
        (json!([1, 2]), "envelope"),
    ];
    for (envelope, field) in cases {
        let (status, body) = r.post(&envelope).await;
        assert_eq!(status, 422, "{envelope}: {body}");
        assert_eq!(error_code(&body), "invalid_event");
        assert_eq!(
            body["error"]["fields"][0]["field"], field,
            "{envelope}: {body}"
        );
        assert!(body["error"]["fields"][0]["reason"].is_string());
    }
    let rejected = r
        .metric("hookrelay_events_rejected_total", &[("reason", "invalid")])
        .await;
    assert_eq!(rejected, Some(8.0));
    r.stop().await;
}

#[tokio::test]
async fn an_envelope_with_several_problems_lists_them_all_in_one_422() {
    let r = relay().await;
    let (status, body) = r
        .post_raw(
            r#"{"id": "has space", "colour": "red", "data": null}"#,
            "application/json",
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["error"],
        json!({
            "code": "invalid_event",
            "message": "unknown member \"colour\" (expected type, id, data); type: missing; id: must be a string matching [A-Za-z0-9._:-]{1,128}; data: must not be null",
            "fields": [
                {"field": "envelope", "reason": "unknown member \"colour\" (expected type, id, data)"},
                {"field": "type", "reason": "missing"},
                {"field": "id", "reason": "must be a string matching [A-Za-z0-9._:-]{1,128}"},
                {"field": "data", "reason": "must not be null"},
            ]
        })
    );
    // In a batch each field names its element.
    let resp = r
        .http
        .post(format!("http://{}/v1/events/batch", r.addrs.app))
        .header("content-type", "application/json")
        .body(r#"[{"type": "t", "data": 1}, {"id": 7}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(
        body["error"]["message"],
        "event [1]: type: missing; id: must be a string matching [A-Za-z0-9._:-]{1,128}; data: missing"
    );
    assert_eq!(
        body["error"]["fields"],
        json!([
            {"field": "[1].type", "reason": "missing"},
            {"field": "[1].id", "reason": "must be a string matching [A-Za-z0-9._:-]{1,128}"},
            {"field": "[1].data", "reason": "missing"},
        ])
    );
    r.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let r = relay().await;
    let resp = r
        .http
        .get(format!("http://{}/nope", r.addrs.app))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(error_code(&body), "not_found");
    let resp = r
        .http
        .get(format!("http://{}/v1/events", r.addrs.app))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(error_code(&body), "method_not_allowed");
    r.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let r = relay().await;
    for path in ["/healthz", "/readyz"] {
        let resp = r
            .http
            .get(format!("http://{}{path}", r.addrs.ops))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    r.stop().await;
}

#[tokio::test]
async fn not_ready_while_shutting_down() {
    // An attempt held by the receiver keeps the relay in its grace period.
    let rx = Receiver::scripted(|_| Answer::status(200).after(Duration::from_secs(3))).await;
    let mut r = TestRelay::start(&format!(
        "shutdown: {{grace: 10s}}\nsubscriptions:\n  - {{name: slow, url: '{}', events: ['*']}}\n",
        rx.url("/")
    ))
    .await;
    r.post(&json!({"type": "t", "data": {}})).await;
    rx.wait_for(1).await;
    r.begin_stop();
    // Not ready from the start of the shutdown: 503, or no longer accepting at all.
    let probe = || async {
        match r
            .http
            .get(format!("http://{}/readyz", r.addrs.ops))
            .send()
            .await
        {
            Ok(resp) => resp.status() == 503,
            Err(_) => true,
        }
    };
    poll(probe).await;
    assert!(r.running(), "the relay was still finishing its attempt");
    r.stop().await;
    assert_eq!(rx.count(), 1);
}

#[tokio::test]
async fn ingest_token_is_required_when_set() {
    let r = TestRelay::start("ingest: {token: t0ken}\n").await;
    let url = format!("http://{}/v1/events", r.addrs.app);
    let body = json!({"type": "t", "data": {}}).to_string();
    for auth in [None, Some("Bearer wrong"), Some("t0ken")] {
        let mut req = r
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{auth:?}");
    }
    let resp = r
        .http
        .post(&url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer t0ken")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    r.stop().await;
}

#[tokio::test]
async fn with_an_ingest_token_a_request_without_it_is_401_and_counted() {
    let r = TestRelay::start("ingest: {token: s3cret}\nsubscriptions: []\n").await;
    let (status, body) = r.post(&json!({"type": "a.b", "data": {}})).await;
    assert_eq!(status, 401);
    assert_eq!(error_code(&body), "unauthorized");
    let resp = r
        .http
        .post(format!("http://{}/v1/events", r.addrs.app))
        .header("content-type", "application/json")
        .header("authorization", "Bearer wrong")
        .body(json!({"type": "a.b", "data": {}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let rejected = [("reason", "unauthorized")];
    r.wait_metric("hookrelay_events_rejected_total", &rejected, 2.0)
        .await;
    // Counted once: a refused request is no received event.
    let outcome = [("outcome", "rejected")];
    assert_eq!(
        r.metric("hookrelay_events_received_total", &outcome).await,
        None
    );
    let resp = r
        .http
        .post(format!("http://{}/v1/events", r.addrs.app))
        .header("content-type", "application/json")
        .header("authorization", "Bearer s3cret")
        .body(json!({"type": "a.b", "data": {}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    r.stop().await;
}
