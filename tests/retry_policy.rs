//! Issue 16: a subscription's retry policy (`final_statuses`) and adaptive concurrency
//! (`max_in_flight: auto`), against real receivers on 127.0.0.1.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Answer, Backend, Receiver, TestDb, TestRelay, deadline, poll};
use hookrelay::Config;
use reqwest::Method;
use serde_json::{Value, json};

fn sub(name: &str, url: &str, extra: &str) -> String {
    format!("  - {{name: {name}, url: '{url}', events: ['*'], {extra}}}\n")
}

fn config(subs: &[String]) -> String {
    format!("subscriptions:\n{}", subs.concat())
}

/// Fast retries, and none of the 60 s floor a 429 would otherwise impose.
const QUICK: &str = "retries: 4, backoff: {schedule: [10ms], overload_floor: 0s}";

/// The delivery of `event` to `subscription`, as `GET /v1/events/{id}` shows it.
async fn delivery(relay: &TestRelay, event: &str, subscription: &str) -> Value {
    let (status, body) = relay.event_status(event).await;
    assert_eq!(status, 200, "{body}");
    body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["subscription"] == subscription)
        .unwrap_or_else(|| panic!("no delivery to {subscription}: {body}"))
        .clone()
}

/// On both stores: the dead letter is the store's, whichever it is.
async fn a_final_status_fails_the_delivery_after_one_attempt(backend: Backend) {
    let db = TestDb::new(backend);
    let finals = Receiver::scripted(|_| Answer::status(422)).await;
    let control = Receiver::scripted(|_| Answer::status(422)).await;
    let relay = TestRelay::on(
        &db,
        &config(&[
            sub(
                "strict",
                &finals.url("/"),
                &format!("{QUICK}, final_statuses: [400, 422]"),
            ),
            sub("lenient", &control.url("/"), QUICK),
        ]),
    )
    .await;
    relay
        .post(&json!({"type": "t", "id": "e1", "data": {}}))
        .await;
    relay.wait_outcome("strict", "failed", 1.0).await;
    relay.wait_outcome("lenient", "failed", 1.0).await;
    assert_eq!(finals.count(), 1, "a final status is not retried");
    assert_eq!(control.count(), 5, "without it, a 422 is retried");

    let d = delivery(&relay, "e1", "strict").await;
    assert_eq!(d["state"], "failed", "{d}");
    assert_eq!(d["attempts"], 1, "{d}");
    assert_eq!(d["last_status"], 422, "{d}");
    let error = d["last_error"].as_str().unwrap();
    assert!(
        error.starts_with("HTTP 422 Unprocessable Entity") && error.contains("final_statuses"),
        "{d}"
    );
    assert_eq!(
        relay
            .metric("hookrelay_dead_letters", &[("subscription", "strict")])
            .await,
        Some(1.0)
    );
    relay.stop().await;
}

crate::both_backends!(a_final_status_fails_the_delivery_after_one_attempt);

#[tokio::test]
async fn a_class_fails_at_once_but_429_and_408_still_retry() {
    let not_found = Receiver::scripted(|_| Answer::status(404)).await;
    let busy = Receiver::scripted(|n| Answer::status([429, 408, 200][n.min(2)])).await;
    let relay = TestRelay::start(&config(&[
        sub(
            "class",
            &not_found.url("/"),
            &format!("{QUICK}, final_statuses: ['4xx']"),
        ),
        sub(
            "busy",
            &busy.url("/"),
            &format!("{QUICK}, final_statuses: ['4xx']"),
        ),
    ]))
    .await;
    relay
        .post(&json!({"type": "t", "id": "e1", "data": {}}))
        .await;
    relay.wait_outcome("class", "failed", 1.0).await;
    relay.wait_outcome("busy", "delivered", 1.0).await;
    assert_eq!(not_found.count(), 1);
    assert_eq!(busy.count(), 3, "429 and 408 were retried");
    let d = delivery(&relay, "e1", "class").await;
    assert_eq!(
        (d["state"].as_str(), d["last_status"].as_u64()),
        (Some("failed"), Some(404))
    );
    relay.stop().await;
}

#[tokio::test]
async fn naming_429_makes_it_final() {
    let busy = Receiver::scripted(|_| Answer::status(429)).await;
    let relay = TestRelay::start(&config(&[sub(
        "named",
        &busy.url("/"),
        &format!("{QUICK}, final_statuses: ['4xx', 429]"),
    )]))
    .await;
    relay.post(&json!({"type": "t", "data": {}})).await;
    relay.wait_outcome("named", "failed", 1.0).await;
    assert_eq!(busy.count(), 1);
    relay.stop().await;
}

#[test]
fn yaml_validation_names_the_contradiction() {
    let err = Config::from_yaml(
        "subscriptions:\n  - {name: a, url: 'http://10.0.0.1/', events: [x], success_code: [200, 202], final_statuses: [404, 202, 404, '2xx', 'bad']}\n",
        "t.yaml",
        &|_| None,
    )
    .unwrap_err()
    .to_string();
    for expected in [
        "subscriptions[0].final_statuses[1]: 202 contradicts success_code: 202 would be both delivered and final",
        "subscriptions[0].final_statuses[2]: 404 is listed twice (with 404)",
        "subscriptions[0].final_statuses[3]: \"2xx\" contradicts success_code: 200 would be both delivered and final",
        "subscriptions[0].final_statuses[4]: \"bad\" is not a status code or a class such as \"4xx\"",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    let err = Config::from_yaml(
        "subscriptions:\n  - {name: a, url: 'http://10.0.0.1/', events: [x], max_in_flight: {auto: false, max: 9}}\n",
        "t.yaml",
        &|_| None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("subscriptions[0].max_in_flight.auto: must be true"),
        "{err}"
    );
}

#[tokio::test]
async fn api_validation_names_the_contradiction_and_shows_the_policy() {
    let relay = TestRelay::start("api: {allowed_destinations: ['10.0.0.0/8']}").await;
    let (status, answer) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(
                json!({"url": "http://10.0.0.1/", "events": ["x"], "success_code": 204,
                "final_statuses": ["4xx", 204, 404, 700]}),
            ),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    let fields: Vec<(String, String)> = answer["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["field"].as_str().unwrap().to_string(),
                f["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        fields,
        [
            (
                "final_statuses[1]".to_string(),
                "204 contradicts success_code: 204 would be both delivered and final".to_string()
            ),
            (
                "final_statuses[2]".to_string(),
                "404 is listed twice (with \"4xx\")".to_string()
            ),
            (
                "final_statuses[3]".to_string(),
                "700 is out of range 100..=599".to_string()
            ),
        ],
        "{answer}"
    );

    let (status, created) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"url": "http://10.0.0.1/", "events": ["x"],
                "final_statuses": ["4xx", 429], "max_in_flight": {"auto": true, "max": 16}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["final_statuses"], json!(["4xx", 429]));
    assert_eq!(created["max_in_flight"], json!({"auto": true, "max": 16}));
    let (status, answer) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"url": "http://10.0.0.1/", "events": ["x"], "max_in_flight": "lots"})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["fields"][0]["field"], "max_in_flight");
    relay.stop().await;
}

/// A receiver that answers 200 after 10 ms while it has at most `knee` requests in
/// hand, and 25 ms slower for each request beyond that: it queues like a real server
/// past its capacity. Returns its URL and the most requests it had at once.
async fn congested_receiver(knee: usize) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let in_hand = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let state = (in_hand, peak.clone(), served.clone());
    let app = axum::Router::new()
        .fallback(
            move |axum::extract::State((in_hand, peak, served)): axum::extract::State<(
                Arc<AtomicUsize>,
                Arc<AtomicUsize>,
                Arc<AtomicUsize>,
            )>| async move {
                let now = in_hand.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                let extra = now.saturating_sub(knee) as u32;
                tokio::time::sleep(Duration::from_millis(10) + Duration::from_millis(25) * extra)
                    .await;
                in_hand.fetch_sub(1, Ordering::SeqCst);
                served.fetch_add(1, Ordering::SeqCst);
                "ok"
            },
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, peak, served)
}

/// `hookrelay_delivery_concurrency_limit` of a subscription.
async fn limit(relay: &TestRelay, name: &str) -> Option<f64> {
    relay
        .metric(
            "hookrelay_delivery_concurrency_limit",
            &[("subscription", name)],
        )
        .await
}

#[tokio::test]
async fn auto_concurrency_settles_below_max_where_latency_rises() {
    const EVENTS: usize = 300;
    let (auto_url, auto_peak, auto_served) = congested_receiver(4).await;
    let (fixed_url, fixed_peak, _) = congested_receiver(4).await;
    let relay = TestRelay::start(&config(&[
        sub("auto", &auto_url, "max_in_flight: {auto: true, max: 32}"),
        sub("fixed", &fixed_url, "max_in_flight: 32"),
    ]))
    .await;
    assert_eq!(limit(&relay, "auto").await, Some(1.0), "auto starts at one");
    assert_eq!(limit(&relay, "fixed").await, Some(32.0));

    let batch: Vec<Value> = (0..EVENTS)
        .map(|i| json!({"type": "t", "id": format!("e{i}"), "data": {"i": i}}))
        .collect();
    for chunk in batch.chunks(100) {
        let r = relay
            .http
            .post(format!("http://{}/v1/events/batch", relay.addrs.app))
            .header("content-type", "application/json")
            .body(Value::Array(chunk.to_vec()).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());
    }
    let drained = deadline(|| async { auto_served.load(Ordering::SeqCst) >= EVENTS }).await;
    assert!(
        drained,
        "served {} of {EVENTS}",
        auto_served.load(Ordering::SeqCst)
    );
    let settled = limit(&relay, "auto").await.unwrap();
    poll(|| async { fixed_peak.load(Ordering::SeqCst) > 16 }).await;
    let (auto_peak, fixed_peak) = (
        auto_peak.load(Ordering::SeqCst),
        fixed_peak.load(Ordering::SeqCst),
    );
    println!("auto: limit {settled}, peak at the receiver {auto_peak}; fixed: peak {fixed_peak}");
    assert!(
        (2.0..=10.0).contains(&settled),
        "the limit settles near the receiver's knee (4), below max: {settled}"
    );
    assert!(
        auto_peak <= 12,
        "the receiver never had more than a few beyond its knee: {auto_peak}"
    );
    // The same receiver under a fixed limit (so the test can tell): it gets all 32 at once.
    assert!(fixed_peak > 16, "{fixed_peak}");
    assert_eq!(limit(&relay, "fixed").await, Some(32.0));
    relay.stop().await;
}
