//! `GET /v1/queue`: per subscription the deliveries not finished, those in flight, the
//! oldest's acceptance time, dead letters and orphans, on both stores.

mod common;

use std::time::Duration;

use common::{Answer, Backend, Receiver, TestDb, TestRelay};
use reqwest::Method;
use serde_json::{Value, json};

/// The entry of `name` in the answer.
fn entry<'a>(queue: &'a Value, name: &str) -> &'a Value {
    queue["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subscription"] == name)
        .unwrap_or_else(|| panic!("no {name} in {queue}"))
}

async fn figures_per_subscription_in_configuration_order_then_the_orphans(backend: Backend) {
    let db = TestDb::new(backend);
    // `slow` holds each attempt past the test's end; `dead` fails at once.
    let slow = Receiver::scripted(|_| Answer::status(200).after(Duration::from_secs(30))).await;
    let dead = Receiver::scripted(|_| Answer::status(500)).await;
    let subs = format!(
        "  - {{name: slow, url: '{}', events: [s], max_in_flight: 1}}
  - {{name: dead, url: '{}', events: [d], retries: 0}}
  - {{name: idle, url: 'http://127.0.0.1:9/', events: [never]}}
",
        slow.url("/"),
        dead.url("/")
    );
    // `gone` is paused, so its delivery stays queued; the next start leaves it out.
    let relay = TestRelay::on(
        &db,
        &format!(
            "subscriptions:\n{subs}  - {{name: gone, url: 'http://127.0.0.1:9/', events: [g], paused: true}}\n"
        ),
    )
    .await;
    let (status, _) = relay
        .post(&json!({"type": "g", "id": "g-0", "data": {}}))
        .await;
    assert_eq!(status, 202);
    relay.stop().await;

    let relay = TestRelay::on(&db, &format!("subscriptions:\n{subs}")).await;
    for (kind, id) in [("s", "s-0"), ("s", "s-1"), ("s", "s-2"), ("d", "d-0")] {
        let (status, body) = relay
            .post(&json!({"type": kind, "id": id, "data": {}}))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    slow.wait_for(1).await;
    relay.wait_outcome("dead", "failed", 1.0).await;

    let (status, queue) = relay.api(Method::GET, "/v1/queue", None).await;
    assert_eq!(status, 200, "{queue}");
    let names: Vec<&str> = queue["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subscription"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["slow", "dead", "idle", "gone"], "{queue}");

    let s = entry(&queue, "slow");
    assert_eq!(s["depth"], 3, "{queue}");
    let in_flight = s["in_flight"].as_u64().unwrap();
    assert!((1..=3).contains(&in_flight), "{queue}");
    let (_, first) = relay.event_status("s-0").await;
    assert_eq!(s["oldest_at"], first["received_at"], "{queue}");
    assert_eq!((&s["dead_letters"], &s["orphaned"]), (&json!(0), &json!(0)));

    assert_eq!(
        *entry(&queue, "dead"),
        json!({"subscription": "dead", "depth": 0, "in_flight": 0, "oldest_at": null,
               "dead_letters": 1, "orphaned": 0})
    );
    assert_eq!(
        *entry(&queue, "idle"),
        json!({"subscription": "idle", "depth": 0, "in_flight": 0, "oldest_at": null,
               "dead_letters": 0, "orphaned": 0})
    );
    assert_eq!(entry(&queue, "gone")["orphaned"], 1, "{queue}");
    assert_eq!(entry(&queue, "gone")["depth"], 0, "{queue}");

    // It takes no parameters.
    let (status, error) = relay.api(Method::GET, "/v1/queue?limit=5", None).await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["error"]["code"], "invalid_query");
    assert_eq!(error["error"]["fields"][0]["field"], "limit");
}

crate::both_backends!(figures_per_subscription_in_configuration_order_then_the_orphans);
