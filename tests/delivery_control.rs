//! Delivery control against real receivers: the circuit breaker (opens after its threshold,
//! holds every attempt while open, probes once after the cool-down, then closes and drains
//! or reopens for longer), pause and resume (kept in the store, across a restart, and on
//! PostgreSQL across relays), `410 Gone` pausing the subscription, and the validation of
//! the settings.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Answer, Backend, Receiver, TestDb, TestRelay, deadline, poll};
use reqwest::Method;
use serde_json::{Value, json};

/// A receiver answering 500 until `healthy` is set, then 200.
async fn switchable() -> (Receiver, Arc<AtomicBool>) {
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let rx = Receiver::scripted(move |_| {
        Answer::status(if h.load(Ordering::SeqCst) { 200 } else { 500 })
    })
    .await;
    (rx, healthy)
}

fn one_sub(url: &str, extra: &str) -> String {
    format!(
        "subscriptions:\n  - {{name: a, url: '{url}', events: ['*'], max_in_flight: 1, \
         retries: 20, backoff: {{schedule: [50ms]}}, {extra}}}\n"
    )
}

/// A breaker that opens after 3 failures and cools down for `cool_down`.
fn breaker(cool_down: &str) -> String {
    format!("circuit: {{failures: 3, window: 10s, cool_down: {cool_down}, max_cool_down: 2h}}")
}

async fn delivery(relay: &TestRelay) -> Value {
    let (status, body) = relay.api(Method::GET, "/v1/subscriptions/a", None).await;
    assert_eq!(status, 200, "{body}");
    body["delivery"].clone()
}

async fn wait_delivery_state(relay: &TestRelay, state: &str) -> Value {
    let ok = deadline(|| async { delivery(relay).await["state"] == state }).await;
    let now = delivery(relay).await;
    assert!(ok, "the delivery state never became {state}: {now}");
    now
}

async fn state_gauge(relay: &TestRelay, state: &str) -> Option<f64> {
    relay
        .metric(
            "hookrelay_subscription_state",
            &[("subscription", "a"), ("state", state)],
        )
        .await
}

/// Holds for `d`, checking `still` all along (a state that must not change).
async fn holds_for<F, Fut>(d: Duration, mut still: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + d;
    while Instant::now() < end {
        assert!(still().await, "changed while it should have held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn post(relay: &TestRelay, id: &str) {
    let (s, body) = relay
        .post(&json!({"type": "t", "id": id, "data": {"n": id}}))
        .await;
    assert_eq!(s, 202, "{body}");
}

#[tokio::test]
async fn the_breaker_opens_after_the_threshold_and_holds_every_attempt() {
    let (rx, _) = switchable().await;
    let relay = TestRelay::start(&one_sub(&rx.url("/"), &breaker("1h"))).await;
    for i in 0..5 {
        post(&relay, &format!("e-{i}")).await;
    }
    let open = wait_delivery_state(&relay, "open").await;
    assert_eq!(open["reason"], "failures");
    assert_eq!(open["last_error"], "HTTP 500 Internal Server Error");
    assert!(open["since"].as_str().unwrap().ends_with('Z'));
    assert_eq!(rx.count(), 3);
    // Open: nothing goes out, new events included, though retries fall due every 50 ms.
    post(&relay, "e-late").await;
    holds_for(Duration::from_millis(800), || async { rx.count() == 3 }).await;
    assert_eq!(state_gauge(&relay, "open").await, Some(1.0));
    assert_eq!(state_gauge(&relay, "active").await, Some(0.0));
    let (_, list) = relay.api(Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(list[0]["delivery"]["state"], "open", "{list}");
    // The deliveries wait in the queue, none failed.
    for i in 0..5 {
        let (_, body) = relay.event_status(&format!("e-{i}")).await;
        assert_eq!(body["deliveries"][0]["state"], "pending", "{body}");
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_probe_after_the_cool_down_closes_it_and_the_backlog_drains() {
    let (rx, healthy) = switchable().await;
    let relay = TestRelay::start(&one_sub(&rx.url("/"), &breaker("700ms"))).await;
    for i in 0..10 {
        post(&relay, &format!("e-{i}")).await;
    }
    wait_delivery_state(&relay, "open").await;
    let opened = Instant::now();
    assert_eq!(rx.count(), 3);
    healthy.store(true, Ordering::SeqCst);
    // One probe, after the cool-down; then the other nine.
    rx.wait_for(4).await;
    assert!(opened.elapsed() >= Duration::from_millis(500));
    poll(|| async {
        let mut delivered = 0;
        for i in 0..10 {
            let (_, b) = relay.event_status(&format!("e-{i}")).await;
            delivered += usize::from(b["deliveries"][0]["state"] == "delivered");
        }
        delivered == 10
    })
    .await;
    let d = wait_delivery_state(&relay, "active").await;
    assert_eq!(d["reason"], "probe_succeeded");
    assert_eq!(state_gauge(&relay, "active").await, Some(1.0));
    assert_eq!(rx.count(), 13);
    relay.stop().await;
}

#[tokio::test]
async fn a_failed_probe_reopens_it_for_longer() {
    let (rx, _) = switchable().await;
    let relay = TestRelay::start(&one_sub(&rx.url("/"), &breaker("400ms"))).await;
    for i in 0..3 {
        post(&relay, &format!("e-{i}")).await;
    }
    wait_delivery_state(&relay, "open").await;
    // The probe fails: open again, now for 800 ms.
    rx.wait_for(4).await;
    let reopened = Instant::now();
    let d = wait_delivery_state(&relay, "open").await;
    assert_eq!(d["reason"], "probe_failed");
    // Exactly one probe, then nothing for at least most of the doubled cool-down.
    holds_for(Duration::from_millis(600), || async { rx.count() == 4 }).await;
    rx.wait_for(5).await;
    assert!(reopened.elapsed() >= Duration::from_millis(700));
    relay.stop().await;
}

#[tokio::test]
async fn the_breaker_opens_on_the_failure_ratio_without_a_streak() {
    // Two of every three requests fail: never 50 in a row. The sixth succeeds, and only a
    // failure opens the breaker: the seventh (5 of 7).
    let rx = Receiver::scripted(|n| Answer::status(if n % 3 == 2 { 200 } else { 500 })).await;
    let circuit = "circuit: {failures: 50, failure_ratio: 0.5, min_attempts: 6, cool_down: 5s}";
    let relay = TestRelay::start(&one_sub(&rx.url("/"), circuit)).await;
    for i in 0..4 {
        post(&relay, &format!("e-{i}")).await;
    }
    let open = wait_delivery_state(&relay, "open").await;
    assert_eq!(open["reason"], "failure_ratio", "{open}");
    assert_eq!(rx.count(), 7);
    // Open: nothing more goes out before the cool-down, though retries fall due every 50 ms.
    holds_for(Duration::from_millis(800), || async { rx.count() == 7 }).await;
    assert_eq!(delivery(&relay).await["state"], "open");
    relay.stop().await;
}

async fn pause(relay: &TestRelay, what: &str) -> Value {
    let (s, body) = relay
        .api(Method::POST, &format!("/v1/subscriptions/a/{what}"), None)
        .await;
    assert_eq!(s, 200, "{body}");
    body
}

fn ids_received(rx: &Receiver) -> Vec<String> {
    rx.received()
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_string())
        .collect()
}

async fn pause_keeps_and_resume_delivers_in_order(backend: Backend) {
    let db = TestDb::new(backend);
    let rx = Receiver::ok().await;
    let yaml = one_sub(&rx.url("/"), "ordering: fifo");
    let relay = TestRelay::on(&db, &yaml).await;
    let body = pause(&relay, "pause").await;
    assert_eq!(body["delivery"]["state"], "paused");
    assert_eq!(body["delivery"]["reason"], "api");
    assert_eq!(state_gauge(&relay, "paused").await, Some(1.0));
    for i in 0..5 {
        post(&relay, &format!("p-{i}")).await;
    }
    holds_for(Duration::from_millis(500), || async { rx.count() == 0 }).await;
    // Still paused after a restart (kept in the store); more events queue meanwhile.
    relay.stop().await;
    let relay = TestRelay::on(&db, &yaml).await;
    assert_eq!(delivery(&relay).await["state"], "paused");
    for i in 5..8 {
        post(&relay, &format!("p-{i}")).await;
    }
    holds_for(Duration::from_millis(300), || async { rx.count() == 0 }).await;
    let body = pause(&relay, "resume").await;
    assert_eq!(body["delivery"]["state"], "active");
    rx.wait_for(8).await;
    let want: Vec<String> = (0..8).map(|i| format!("p-{i}")).collect();
    assert_eq!(ids_received(&rx), want);
    relay.stop().await;
}

async fn a_410_pauses_and_keeps_the_delivery(backend: Backend) {
    let db = TestDb::new(backend);
    let rx = Receiver::scripted(|n| Answer::status(if n == 0 { 410 } else { 200 })).await;
    let relay = TestRelay::on(&db, &one_sub(&rx.url("/"), "")).await;
    post(&relay, "g-1").await;
    let d = wait_delivery_state(&relay, "paused").await;
    assert_eq!(d["reason"], "gone");
    assert_eq!(d["last_error"], "HTTP 410 Gone: the receiver asked to stop");
    // Pending, not failed: it goes again on resume.
    poll(|| async {
        let (_, body) = relay.event_status("g-1").await;
        body["deliveries"][0]["state"] == "pending"
    })
    .await;
    post(&relay, "g-2").await;
    holds_for(Duration::from_millis(300), || async { rx.count() == 1 }).await;
    pause(&relay, "resume").await;
    rx.wait_for(3).await;
    assert_eq!(ids_received(&rx), ["g-1", "g-1", "g-2"]);
    relay.stop().await;
}

crate::both_backends!(
    pause_keeps_and_resume_delivers_in_order,
    a_410_pauses_and_keeps_the_delivery
);

#[tokio::test]
async fn on_gone_fail_fails_the_delivery() {
    let rx = Receiver::scripted(|_| Answer::status(410)).await;
    let relay = TestRelay::start(&one_sub(&rx.url("/"), "on_gone: fail")).await;
    post(&relay, "g-1").await;
    relay.wait_outcome("a", "failed", 1.0).await;
    assert_eq!(delivery(&relay).await["state"], "active");
    relay.stop().await;
}

#[tokio::test]
async fn yaml_paused_starts_paused_until_resumed_through_the_api() {
    let db = TestDb::new(Backend::Sqlite);
    let rx = Receiver::ok().await;
    let yaml = one_sub(&rx.url("/"), "paused: true");
    let relay = TestRelay::on(&db, &yaml).await;
    let d = delivery(&relay).await;
    assert_eq!(
        (d["state"].as_str(), d["reason"].as_str()),
        (Some("paused"), Some("config"))
    );
    post(&relay, "y-1").await;
    holds_for(Duration::from_millis(300), || async { rx.count() == 0 }).await;
    pause(&relay, "resume").await;
    rx.wait_for(1).await;
    // The stored state wins over the file's `paused: true` from now on.
    relay.stop().await;
    let relay = TestRelay::on(&db, &yaml).await;
    assert_eq!(delivery(&relay).await["state"], "active");
    relay.stop().await;
}

#[tokio::test]
async fn pull_subscriptions_have_no_delivery_state() {
    let relay =
        TestRelay::start("subscriptions:\n  - {name: a, mode: pull, events: ['*']}\n").await;
    let (s, body) = relay.api(Method::GET, "/v1/subscriptions/a", None).await;
    assert_eq!(s, 200);
    assert!(body.get("delivery").is_none(), "{body}");
    // No state series either: a pull subscription has no delivery state.
    assert!(
        !relay
            .metrics()
            .await
            .contains("hookrelay_subscription_state{")
    );
    let (s, body) = relay
        .api(Method::POST, "/v1/subscriptions/a/pause", None)
        .await;
    assert_eq!((s, body["error"]["code"].as_str()), (409, Some("conflict")));
    let (s, _) = relay
        .api(Method::POST, "/v1/subscriptions/nope/pause", None)
        .await;
    assert_eq!(s, 404);
    relay.stop().await;
}

#[tokio::test]
async fn bad_circuit_settings_name_the_field() {
    let relay = TestRelay::start("").await;
    let bad = [
        (json!({"failures": 0}), "circuit.failures"),
        (json!({"cool_down": "10ms"}), "circuit.cool_down"),
        (
            json!({"cool_down": "1m", "max_cool_down": "30s"}),
            "circuit.max_cool_down",
        ),
        (json!({"window": "2h"}), "circuit.window"),
        (json!({"failures": 3, "colldown": "1s"}), "circuit.colldown"),
        (json!("on"), "circuit"),
        (json!({"failure_ratio": 0}), "circuit.failure_ratio"),
        (json!({"failure_ratio": 1.5}), "circuit.failure_ratio"),
        (json!({"failure_ratio": "half"}), "circuit.failure_ratio"),
        (
            json!({"failure_ratio": 0.5, "min_attempts": 0}),
            "circuit.min_attempts",
        ),
        (json!({"min_attempts": 10}), "circuit.min_attempts"),
    ];
    for (circuit, field) in bad {
        let doc = json!({"url": "http://127.0.0.1:9/", "events": ["*"], "circuit": circuit});
        let (s, body) = relay
            .api(Method::POST, "/v1/subscriptions", Some(doc))
            .await;
        assert_eq!(s, 422, "{body}");
        let fields: Vec<&str> = body["error"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, [field], "{body}");
    }
    let doc = json!({"url": "http://127.0.0.1:9/", "events": ["*"], "on_gone": "ignore"});
    let (s, body) = relay
        .api(Method::POST, "/v1/subscriptions", Some(doc))
        .await;
    assert_eq!(s, 422);
    assert_eq!(body["error"]["fields"][0]["field"], "on_gone");
    // The same rules in the file, with the YAML path.
    let err = hookrelay::Config::from_yaml(
        "subscriptions:\n  - {name: a, url: 'http://h/', events: ['*'], circuit: {failures: 0}}\n",
        "t.yaml",
        &|_| None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("subscriptions[0].circuit.failures"), "{err}");
    let err = hookrelay::Config::from_yaml(
        "subscriptions:\n  - {name: a, url: 'http://h/', events: ['*'], circuit: {min_attempts: 5}}\n",
        "t.yaml",
        &|_| None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("subscriptions[0].circuit.min_attempts") && err.contains("failure_ratio"),
        "{err}"
    );
    // `off` and an API subscription with a breaker of its own are fine.
    let doc = json!({"name": "b", "url": "http://127.0.0.1:9/", "events": ["*"],
        "circuit": {"failures": 2, "cool_down": "500ms", "failure_ratio": 1, "min_attempts": 3},
        "paused": true});
    let (s, body) = relay
        .api(Method::POST, "/v1/subscriptions", Some(doc))
        .await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(body["delivery"]["state"], "paused");
    let doc = json!({"name": "c", "url": "http://127.0.0.1:9/", "events": ["*"], "circuit": "off"});
    let (s, body) = relay
        .api(Method::POST, "/v1/subscriptions", Some(doc))
        .await;
    assert_eq!(s, 201, "{body}");
    relay.stop().await;
}

/// On PostgreSQL, a pause through one relay holds on the other within about a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn a_pause_reaches_the_other_relays() {
    let db = TestDb::new(Backend::Postgres);
    let rx = Receiver::ok().await;
    let yaml = one_sub(&rx.url("/"), "");
    let (a, b) = (
        TestRelay::on(&db, &yaml).await,
        TestRelay::on(&db, &yaml).await,
    );
    pause(&a, "pause").await;
    let paused = Instant::now();
    wait_delivery_state(&b, "paused").await;
    let took = paused.elapsed();
    eprintln!("the pause reached the other relay in {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    post(&b, "r-1").await;
    holds_for(Duration::from_millis(300), || async { rx.count() == 0 }).await;
    pause(&b, "resume").await;
    wait_delivery_state(&a, "active").await;
    rx.wait_for(1).await;
    a.stop().await;
    b.stop().await;
}
