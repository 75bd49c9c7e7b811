//! Delivery behaviour against real receivers on 127.0.0.1.

mod common;

use std::time::{Duration, Instant};

use common::{Answer, Receiver, TestRelay};
use serde_json::json;

fn sub(name: &str, url: &str, extra: &str) -> String {
    format!("  - {{name: {name}, url: '{url}', events: ['*'], {extra}}}\n")
}

fn config(subs: &[String]) -> String {
    format!("subscriptions:\n{}", subs.concat())
}

#[tokio::test]
async fn body_and_headers_arrive_exactly_with_basic_auth() {
    let rx = Receiver::ok().await;
    let relay = TestRelay::start(&config(&[sub(
        "billing",
        &rx.url("/hook"),
        "auth: {basic: {username: relay, password: 's3cr:et'}}, headers: {x-tenant: acme}",
    )]))
    .await;
    let body =
        r#"{"type":"invoice.paid","id":"evt-1","data":{"amount": 12.50, "note":"caf\u00e9"}}"#;
    let (status, answer) = relay.post_raw(body, "application/json").await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer, json!({"id": "evt-1", "subscriptions": ["billing"]}));

    let got = rx.wait_for(1).await;
    let r = &got[0];
    assert_eq!(&r.body[..], br#"{"amount": 12.50, "note":"caf\u00e9"}"#);
    let h = |name: &str| r.headers.get(name).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(h("content-type").as_deref(), Some("application/json"));
    assert_eq!(h("webhook-id").as_deref(), Some("evt-1"));
    assert_eq!(h("hookrelay-event-type").as_deref(), Some("invoice.paid"));
    assert_eq!(h("hookrelay-attempt").as_deref(), Some("1"));
    assert_eq!(h("x-tenant").as_deref(), Some("acme"));
    assert!(h("user-agent").unwrap().starts_with("hookrelay/"));
    // base64("relay:s3cr:et")
    assert_eq!(
        h("authorization").as_deref(),
        Some("Basic cmVsYXk6czNjcjpldA==")
    );
    let ts: u64 = h("webhook-timestamp").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(ts <= now && now - ts < 60);
    relay.stop().await;
}

#[tokio::test]
async fn bearer_token_is_sent() {
    let rx = Receiver::ok().await;
    let relay = TestRelay::start(&config(&[sub(
        "b",
        &rx.url("/"),
        "auth: {bearer: tok-123}",
    )]))
    .await;
    relay.post(&json!({"type": "t", "data": {}})).await;
    let got = rx.wait_for(1).await;
    assert_eq!(got[0].headers["authorization"], "Bearer tok-123");
    relay.stop().await;
}

#[tokio::test]
async fn retry_after_500_then_success() {
    let rx = Receiver::scripted(|n| Answer::status(if n == 0 { 500 } else { 200 })).await;
    let relay = TestRelay::start(&config(&[sub(
        "a",
        &rx.url("/"),
        "retries: 3, backoff: {schedule: [50ms]}",
    )]))
    .await;
    relay
        .post(&json!({"type": "t", "id": "e1", "data": [1]}))
        .await;
    let got = rx.wait_for(2).await;
    assert_eq!(got[0].headers["hookrelay-attempt"], "1");
    assert_eq!(got[1].headers["hookrelay-attempt"], "2");
    assert_eq!(got[0].headers["webhook-id"], got[1].headers["webhook-id"]);
    relay.wait_outcome("a", "delivered", 1.0).await;
    let m = relay.metrics().await;
    let attempts = |result| {
        common::sample(
            &m,
            "hookrelay_delivery_attempts_total",
            &[("subscription", "a"), ("result", result)],
        )
    };
    assert_eq!(attempts("http_error"), Some(1.0));
    assert_eq!(attempts("success"), Some(1.0));
    assert_eq!(rx.count(), 2);
    relay.stop().await;
}

#[tokio::test]
async fn zero_retries_means_exactly_one_attempt() {
    let rx = Receiver::scripted(|_| Answer::status(500)).await;
    let relay = TestRelay::start(&config(&[sub(
        "a",
        &rx.url("/"),
        "retries: 0, backoff: {schedule: [10ms]}",
    )]))
    .await;
    relay.post(&json!({"type": "t", "data": {}})).await;
    relay.wait_outcome("a", "failed", 1.0).await;
    // Failed is final: the store holds it as a dead letter and nothing schedules it again.
    assert_eq!(rx.count(), 1);
    assert_eq!(
        relay
            .metric("hookrelay_dead_letters", &[("subscription", "a")])
            .await,
        Some(1.0)
    );
    assert_eq!(
        relay
            .metric("hookrelay_queue_depth", &[("subscription", "a")])
            .await,
        Some(0.0)
    );
    relay.stop().await;
}

#[tokio::test]
async fn timeout_counts_as_a_failed_attempt() {
    let rx = Receiver::scripted(|_| Answer::status(200).after(Duration::from_secs(2))).await;
    let relay = TestRelay::start(&config(&[sub(
        "slow",
        &rx.url("/"),
        "timeout: 100ms, retries: 1, backoff: {schedule: [10ms], overload_floor: 0s}",
    )]))
    .await;
    relay.post(&json!({"type": "t", "data": {}})).await;
    relay.wait_outcome("slow", "failed", 1.0).await;
    assert_eq!(relay.attempts("slow", "timeout").await, Some(2.0));
    relay.stop().await;
}

#[tokio::test]
async fn success_code_200_rejects_204() {
    let rx = Receiver::scripted(|_| Answer::status(204)).await;
    let relay = TestRelay::start(&config(&[sub(
        "strict",
        &rx.url("/"),
        "success_code: 200, retries: 1, backoff: {schedule: [10ms]}",
    )]))
    .await;
    relay.post(&json!({"type": "t", "data": {}})).await;
    relay.wait_outcome("strict", "failed", 1.0).await;
    assert_eq!(rx.count(), 2);
    let (_, dead) = relay
        .api(
            reqwest::Method::GET,
            "/v1/deliveries?subscription=strict",
            None,
        )
        .await;
    assert_eq!(
        dead["deliveries"][0]["last_error"],
        "HTTP 204 No Content, expected 200 (after 2 attempts)"
    );
    relay.stop().await;
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let target = Receiver::ok().await;
    let location = target.url("/elsewhere");
    let rx =
        Receiver::scripted(move |_| Answer::status(302).header("location", location.clone())).await;
    let relay = TestRelay::start(&config(&[sub("r", &rx.url("/"), "retries: 0")])).await;
    relay.post(&json!({"type": "t", "data": {}})).await;
    relay.wait_outcome("r", "failed", 1.0).await;
    assert_eq!(relay.attempts("r", "http_error").await, Some(1.0));
    assert_eq!(target.count(), 0);
    relay.stop().await;
}

#[tokio::test]
async fn gone_fails_at_once_with_on_gone_fail() {
    let rx = Receiver::scripted(|_| Answer::status(410)).await;
    let relay = TestRelay::start(&config(&[sub(
        "g",
        &rx.url("/"),
        "retries: 5, backoff: {schedule: [10ms]}, on_gone: fail",
    )]))
    .await;
    relay.post(&json!({"type": "t", "data": {}})).await;
    relay.wait_outcome("g", "failed", 1.0).await;
    assert_eq!(rx.count(), 1);
    relay.stop().await;
}

#[tokio::test]
async fn connection_refused_is_a_connect_error() {
    // Bind and drop, so the port is (almost certainly) closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let relay = TestRelay::start(&config(&[sub(
        "c",
        &format!("http://127.0.0.1:{port}/"),
        "retries: 0",
    )]))
    .await;
    relay.post(&json!({"type": "t", "data": {}})).await;
    relay
        .wait_metric(
            "hookrelay_delivery_attempts_total",
            &[("subscription", "c"), ("result", "connect_error")],
            1.0,
        )
        .await;
    relay.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let rx = Receiver::scripted(|n| {
        if n == 0 {
            Answer::status(503).header("retry-after", "1")
        } else {
            Answer::status(200)
        }
    })
    .await;
    // Base delay 600ms: Retry-After 1s lies within [delay, 2 x delay] with any jitter.
    let relay = TestRelay::start(&config(&[sub(
        "ra",
        &rx.url("/"),
        "retries: 1, backoff: {schedule: [600ms]}",
    )]))
    .await;
    relay.post(&json!({"type": "t", "data": {}})).await;
    let got = rx.wait_for(2).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "retried after {gap:?}, before Retry-After"
    );
    relay.stop().await;
}

#[tokio::test]
async fn rate_limit_spaces_attempts() {
    let rx = Receiver::ok().await;
    let (n, rate, burst) = (12u32, 20.0, 2u32);
    let relay = TestRelay::start(&config(&[sub(
        "limited",
        &rx.url("/"),
        &format!("rate_limit: {{per_second: {rate}, burst: {burst}}}"),
    )]))
    .await;
    let started = Instant::now();
    for i in 0..n {
        relay
            .post(&json!({"type": "t", "id": format!("e{i}"), "data": {}}))
            .await;
    }
    let got = rx.wait_for(n as usize).await;
    let took = got.last().unwrap().at - started;
    let floor = Duration::from_secs_f64(f64::from(n - burst) / rate);
    // Lower bound only (minus clock granularity): a limiter can be slower, never faster.
    assert!(
        took + Duration::from_millis(5) >= floor,
        "{n} attempts took {took:?}, floor {floor:?}"
    );
    assert!(
        relay
            .metric(
                "hookrelay_rate_limited_total",
                &[("subscription", "limited")]
            )
            .await
            .unwrap()
            >= 1.0
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_dead_subscriber_does_not_slow_another() {
    let dead = Receiver::scripted(|_| Answer::status(200).after(Duration::from_secs(5))).await;
    let live = Receiver::ok().await;
    let relay = TestRelay::start(&config(&[
        sub(
            "dead",
            &dead.url("/"),
            "timeout: 3s, retries: 0, max_in_flight: 1",
        ),
        sub("live", &live.url("/"), "max_in_flight: 4"),
    ]))
    .await;
    for i in 0..20 {
        let (status, _) = relay
            .post(&json!({"type": "t", "id": format!("e{i}"), "data": {}}))
            .await;
        assert_eq!(status, 202);
    }
    live.wait_for(20).await;
    // Every live delivery landed while the dead receiver still holds its first attempt.
    let m = relay.metrics().await;
    for result in ["success", "http_error", "timeout", "connect_error"] {
        let n = common::sample(
            &m,
            "hookrelay_delivery_attempts_total",
            &[("subscription", "dead"), ("result", result)],
        );
        assert_eq!(
            n,
            Some(0.0),
            "dead subscriber finished an attempt ({result}) before live got everything"
        );
    }
    assert_eq!(
        dead.count(),
        1,
        "max_in_flight 1 holds the dead subscriber to one attempt"
    );
    relay.stop().await;
}

#[tokio::test]
async fn filters_and_types_select_subscriptions() {
    let rx = Receiver::ok().await;
    let relay = TestRelay::start(&format!(
        "subscriptions:\n  - {{name: done, url: '{}', events: ['envelope.*'], filter: {{field: status, in: [COMPLETED]}}}}\n",
        rx.url("/")
    ))
    .await;
    let (s, a) = relay
        .post(&json!({"type": "envelope.updated", "data": {"status": "WAITING"}}))
        .await;
    assert_eq!((s, a["subscriptions"].clone()), (202, json!([])));
    let (s, a) = relay
        .post(&json!({"type": "invoice.paid", "data": {"status": "COMPLETED"}}))
        .await;
    assert_eq!((s, a["subscriptions"].clone()), (202, json!([])));
    let (s, a) = relay
        .post(&json!({"type": "envelope.updated", "id": "yes", "data": {"status": "COMPLETED"}}))
        .await;
    assert_eq!((s, a["subscriptions"].clone()), (202, json!(["done"])));
    let got = rx.wait_for(1).await;
    assert_eq!(got[0].headers["webhook-id"], "yes");
    relay
        .wait_metric(
            "hookrelay_events_matched_total",
            &[("subscription", "done")],
            1.0,
        )
        .await;
    relay.stop().await;
}

#[tokio::test]
async fn metrics_exist_from_start_and_count() {
    let rx = Receiver::ok().await;
    let relay = TestRelay::start(&config(&[sub("m", &rx.url("/"), "")])).await;
    let m = relay.metrics().await;
    for (name, labels) in [
        (
            "hookrelay_events_matched_total",
            vec![("subscription", "m")],
        ),
        (
            "hookrelay_deliveries_total",
            vec![("subscription", "m"), ("outcome", "delivered")],
        ),
        (
            "hookrelay_delivery_attempts_total",
            vec![("subscription", "m"), ("result", "timeout")],
        ),
        ("hookrelay_queue_depth", vec![("subscription", "m")]),
        (
            "hookrelay_delivery_duration_seconds_count",
            vec![("subscription", "m")],
        ),
        (
            "hookrelay_events_received_total",
            vec![("outcome", "accepted")],
        ),
    ] {
        assert_eq!(
            common::sample(&m, name, &labels),
            Some(0.0),
            "{name}{labels:?} at start"
        );
    }
    // Nothing waits, and m has no rate limit: neither series exists.
    for name in [
        "hookrelay_oldest_pending_timestamp_seconds",
        "hookrelay_rate_limited_total",
    ] {
        assert_eq!(common::sample(&m, name, &[("subscription", "m")]), None);
    }
    assert!(m.contains("hookrelay_build_info{commit=\""));
    assert!(m.contains("process_resident_memory_bytes"));

    relay.post(&json!({"type": "t", "data": {}})).await;
    relay.wait_outcome("m", "delivered", 1.0).await;
    let m = relay.metrics().await;
    assert_eq!(
        common::sample(
            &m,
            "hookrelay_events_received_total",
            &[("outcome", "accepted")]
        ),
        Some(1.0)
    );
    assert_eq!(
        common::sample(
            &m,
            "hookrelay_events_matched_total",
            &[("subscription", "m")]
        ),
        Some(1.0)
    );
    assert_eq!(
        common::sample(
            &m,
            "hookrelay_delivery_duration_seconds_count",
            &[("subscription", "m")]
        ),
        Some(1.0)
    );
    assert_eq!(
        common::sample(&m, "hookrelay_queue_depth", &[("subscription", "m")]),
        Some(0.0)
    );
    relay.stop().await;
}

#[tokio::test]
async fn queue_depth_and_oldest_pending_track_undelivered_work() {
    let rx = Receiver::scripted(|_| Answer::status(500)).await;
    let relay = TestRelay::start(&config(&[sub(
        "q",
        &rx.url("/"),
        "retries: 5, backoff: {schedule: [1h]}",
    )]))
    .await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    relay.post(&json!({"type": "t", "data": {}})).await;
    relay.post(&json!({"type": "t", "data": {}})).await;
    rx.wait_for(2).await;
    relay
        .wait_metric("hookrelay_queue_depth", &[("subscription", "q")], 2.0)
        .await;
    let oldest = relay
        .metric(
            "hookrelay_oldest_pending_timestamp_seconds",
            &[("subscription", "q")],
        )
        .await
        .unwrap();
    assert!(
        oldest >= before.floor() && oldest < before + 60.0,
        "{oldest} vs {before}"
    );
    relay.stop().await;
}
