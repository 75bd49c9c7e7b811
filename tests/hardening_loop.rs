//! Delivery loops (issue 13, item 1): a subscription whose host name resolves to the relay's
//! own ingest, a relay's delivery posted back to it, two relays subscribed to each other, and
//! an SMTP host on the relay's own port. Names are mapped with `delivery.hosts`, never by
//! editing the machine's files.

mod common;

use common::{Receiver, TestRelay, free_port};
use reqwest::Method;
use serde_json::{Value, json};

/// A name the tests map to 127.0.0.1.
const LOOP_HOST: &str = "loop.hookrelay.test";

/// A relay whose app listener is on `app`, with `LOOP_HOST` mapped to 127.0.0.1.
fn config(app: u16, subscriptions: &str) -> String {
    format!(
        "listen: {{app: '127.0.0.1:{app}', api: '127.0.0.1:0', ops: '127.0.0.1:0'}}
delivery: {{hosts: {{{LOOP_HOST}: 127.0.0.1}}}}
{subscriptions}"
    )
}

async fn accepted(relay: &TestRelay) -> Option<f64> {
    relay
        .metric(
            "hookrelay_events_received_total",
            &[("outcome", "accepted")],
        )
        .await
}

/// The failed deliveries' `last_error` of a subscription.
async fn last_error(relay: &TestRelay, subscription: &str) -> String {
    let (_, dead) = relay
        .api(
            Method::GET,
            &format!("/v1/deliveries?subscription={subscription}"),
            None,
        )
        .await;
    dead["deliveries"][0]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Posts a raw event to a relay's ingest with the given `hookrelay-via` values.
async fn post_via(relay: &TestRelay, path: &str, via: &[&str], body: &str) -> (u16, Value) {
    let mut req = relay
        .http
        .post(format!("http://{}{path}", relay.addrs.app))
        .header("content-type", "application/json")
        .body(body.to_string());
    if path == "/v1/events" {
        req = req.header("hookrelay-event-type", "t");
    }
    for v in via {
        req = req.header("hookrelay-via", *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_config_subscription_through_a_name_never_reaches_the_relay() {
    let app = free_port();
    let relay = TestRelay::start(&config(
        app,
        &format!(
            "subscriptions:\n  - {{name: self, url: 'http://{LOOP_HOST}:{app}/v1/events', events: ['*'], retries: 0}}\n"
        ),
    ))
    .await;
    let (status, answer) = relay.post(&json!({"type": "t", "data": {}})).await;
    assert_eq!(status, 202, "{answer}");
    relay.wait_outcome("self", "failed", 1.0).await;
    assert_eq!(relay.attempts("self", "connect_error").await, Some(1.0));
    let error = last_error(&relay, "self").await;
    assert!(
        error.contains("destination is one of the relay's own listeners"),
        "{error}"
    );
    // Only the event the test posted: the delivery was never ingested.
    assert_eq!(accepted(&relay).await, Some(1.0));
    relay.stop().await;
}

#[tokio::test]
async fn an_api_subscription_through_a_name_never_reaches_the_relay() {
    let relay = TestRelay::start(&format!(
        "delivery: {{hosts: {{{LOOP_HOST}: 127.0.0.1}}}}\n"
    ))
    .await;
    let url = format!("http://{LOOP_HOST}:{}/v1/events", relay.addrs.app.port());
    // A name is accepted when registered; it is refused once resolved.
    let (status, created) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(
                json!({"name": "self", "url": url, "events": ["*"], "retries": 0, "metrics": true}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    relay.post(&json!({"type": "t", "data": {}})).await;
    relay.wait_outcome("self", "failed", 1.0).await;
    assert_eq!(relay.attempts("self", "connect_error").await, Some(1.0));
    let error = last_error(&relay, "self").await;
    assert!(error.contains("own listeners"), "{error}");
    assert_eq!(accepted(&relay).await, Some(1.0));
    relay.stop().await;
}

#[tokio::test]
async fn a_relay_refuses_its_own_deliveries_and_long_paths_with_508() {
    let rx = Receiver::ok().await;
    let relay = TestRelay::start(&format!(
        "subscriptions:\n  - {{name: out, url: '{}', events: ['*']}}\n",
        rx.url("/hook")
    ))
    .await;
    assert_eq!(
        relay
            .metric("hookrelay_events_rejected_total", &[("reason", "loop")])
            .await,
        Some(0.0),
        "the series exists from the start"
    );
    relay.post(&json!({"type": "t", "data": {}})).await;
    let got = rx.wait_for(1).await;
    let id = got[0].headers["hookrelay-via"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 16, "{id}");

    // Its own delivery, posted back (as a proxy or another name would): 508.
    let (status, answer) = post_via(&relay, "/v1/events", &[&id], "{}").await;
    assert_eq!(status, 508, "{answer}");
    assert_eq!(answer["error"]["code"], "loop_detected", "{answer}");
    assert_eq!(
        answer["error"]["fields"][0]["field"],
        "headers.hookrelay-via"
    );
    // Among others, in a folded or repeated header; and on a batch.
    let (status, _) = post_via(&relay, "/v1/events", &["a1,b2", &id], "{}").await;
    assert_eq!(status, 508);
    let batch = r#"[{"type":"t","data":{}}]"#;
    let (status, answer) = post_via(&relay, "/v1/events/batch", &[&id], batch).await;
    assert_eq!(status, 508, "{answer}");
    // Eight relays passed already: the limit, whoever they are.
    let eight = (0..8)
        .map(|i| format!("r{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let (status, answer) = post_via(&relay, "/v1/events", &[&eight], "{}").await;
    assert_eq!(status, 508, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("8 relays")
    );
    relay
        .wait_metric(
            "hookrelay_events_rejected_total",
            &[("reason", "loop")],
            4.0,
        )
        .await;
    // Malformed is invalid, not a loop.
    let (status, answer) = post_via(&relay, "/v1/events", &["a b"], "{}").await;
    assert_eq!(status, 422, "{answer}");

    // Another relay's delivery is taken, and its path is carried on.
    let (status, answer) = post_via(&relay, "/v1/events", &["upstream1"], "{}").await;
    assert_eq!(status, 202, "{answer}");
    let got = rx.wait_for(2).await;
    assert_eq!(
        got[1].headers["hookrelay-via"],
        format!("upstream1,{id}").as_str()
    );
    assert_eq!(accepted(&relay).await, Some(2.0));
    relay.stop().await;
}

#[tokio::test]
async fn two_relays_subscribed_to_each_other_stop_after_one_round() {
    let a = TestRelay::start("").await;
    let b = TestRelay::start("").await;
    for (from, to, name) in [(&a, &b, "to-b"), (&b, &a, "to-a")] {
        let url = format!("http://{}/v1/events", to.addrs.app);
        let (status, created) = from
            .api(
                Method::POST,
                "/v1/subscriptions",
                Some(json!({"name": name, "url": url, "events": ["*"], "retries": 0, "metrics": true})),
            )
            .await;
        assert_eq!(status, 201, "{created}");
    }
    let (status, _) = post_via(&a, "/v1/events", &[], "{}").await;
    assert_eq!(status, 202);
    // A -> B is taken; B -> A comes back naming A: refused, and the loop ends there.
    a.wait_outcome("to-b", "delivered", 1.0).await;
    b.wait_outcome("to-a", "failed", 1.0).await;
    assert!(last_error(&b, "to-a").await.contains("508"));
    a.wait_metric(
        "hookrelay_events_rejected_total",
        &[("reason", "loop")],
        1.0,
    )
    .await;
    assert_eq!(accepted(&a).await, Some(1.0));
    assert_eq!(accepted(&b).await, Some(1.0));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn an_smtp_host_on_the_relays_own_port_is_refused_at_connect() {
    let app = free_port();
    let relay = TestRelay::start(&config(
        app,
        &format!(
            "subscriptions:
  - name: mail
    mode: email
    events: ['*']
    retries: 0
    email:
      to: [ops@example.org]
      from: relay@example.net
      smtp: {{host: {LOOP_HOST}, port: {app}, tls: none}}
"
        ),
    ))
    .await;
    relay.post(&json!({"type": "t", "data": {}})).await;
    relay.wait_outcome("mail", "failed", 1.0).await;
    assert_eq!(relay.attempts("mail", "connect_error").await, Some(1.0));
    let error = last_error(&relay, "mail").await;
    assert!(
        error.contains("destination is one of the relay's own listeners"),
        "{error}"
    );
    relay.stop().await;
}
