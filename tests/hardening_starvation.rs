//! No subscription, and no group of API subscriptions, can take the delivery capacity that
//! others need: a config subscription keeps its own slots while API subscriptions hang.

mod common;

use std::time::{Duration, Instant};

use common::{Answer, Receiver, TestRelay};
use reqwest::Method;
use serde_json::json;

/// Posts `n` events of `kind` with ids `prefix-i`.
async fn post(relay: &TestRelay, kind: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let (status, answer) = relay
            .post(&json!({"type": kind, "id": format!("{prefix}-{i}"), "data": {}}))
            .await;
        assert_eq!(status, 202, "{answer}");
    }
}

#[tokio::test]
async fn a_config_subscription_keeps_its_rate_while_api_subscriptions_hang() {
    // Each healthy delivery takes 150 ms, so its rate is set by its 8 slots.
    let live = Receiver::scripted(|_| Answer::status(200).after(Duration::from_millis(150))).await;
    let hang = Receiver::scripted(|_| Answer::status(200).after(Duration::from_secs(60))).await;
    let relay = TestRelay::start(&format!(
        "delivery: {{max_in_flight_total: 32}}\nshutdown: {{grace: 0s}}\nsubscriptions:\n  - {{name: live, url: '{}', events: [work], max_in_flight: 8}}\n",
        live.url("/")
    ))
    .await;

    let started = Instant::now();
    post(&relay, "work", "alone", 40).await;
    live.wait_for(40).await;
    let alone = started.elapsed();

    // API subscriptions asking for far more than the whole relay has, all hanging.
    for i in 0..4 {
        let (status, answer) = relay
            .api(
                Method::POST,
                "/v1/subscriptions",
                Some(json!({
                    "name": format!("hang-{i}"),
                    "url": hang.url("/"),
                    "events": ["noise"],
                    "max_in_flight": 1024,
                    "timeout": "60s",
                    "retries": 0,
                })),
            )
            .await;
        assert_eq!(status, 201, "{answer}");
    }
    post(&relay, "noise", "noise", 64).await;
    // Let the hanging subscriptions take every slot they can get.
    assert!(common::deadline(|| async { hang.count() >= 4 }).await);

    let started = Instant::now();
    post(&relay, "work", "busy", 40).await;
    live.wait_for(80).await;
    let busy = started.elapsed();
    assert!(
        busy <= alone * 2 + Duration::from_millis(500),
        "the healthy subscription fell below half its alone-rate: {alone:?} alone, {busy:?} with hanging API subscriptions"
    );
    // Together the API subscriptions hold at most their share: a quarter of 32.
    assert!(
        hang.count() <= 8,
        "API subscriptions hold {} attempts, above delivery.api_max_in_flight",
        hang.count()
    );
    relay.stop().await;
}

#[tokio::test]
async fn one_hanging_api_subscription_leaves_room_for_another() {
    let ok = Receiver::ok().await;
    let hang = Receiver::scripted(|_| Answer::status(200).after(Duration::from_secs(60))).await;
    let relay = TestRelay::start(
        "delivery: {max_in_flight_total: 16, api_max_in_flight: 8}\nshutdown: {grace: 0s}\nsubscriptions: []\n",
    )
    .await;
    for (name, url, events) in [
        ("hang", hang.url("/"), "noise"),
        ("fine", ok.url("/"), "work"),
    ] {
        let (status, answer) = relay
            .api(
                Method::POST,
                "/v1/subscriptions",
                Some(json!({"name": name, "url": url, "events": [events], "max_in_flight": 1024, "timeout": "60s"})),
            )
            .await;
        assert_eq!(status, 201, "{answer}");
    }
    post(&relay, "noise", "noise", 32).await;
    assert!(common::deadline(|| async { hang.count() >= 4 }).await);
    post(&relay, "work", "work", 20).await;
    ok.wait_for(20).await;
    assert!(
        hang.count() <= 4,
        "one API subscription holds {} of the 8 shared slots; at most half",
        hang.count()
    );
    relay.stop().await;
}
