//! Pull delivery: FIFO notification queues polled on the api listener.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Backend, TestDb, TestRelay, poll};

use reqwest::Method;
use serde_json::{Value, json};

fn pull_sub(name: &str, pull: &str) -> String {
    format!("  - {{name: {name}, mode: pull, events: ['*'], pull: {{{pull}}}}}\n")
}

fn config(subs: &[String]) -> String {
    format!(
        "release: {{min_interval: 0s}}\nsubscriptions:\n{}",
        subs.concat()
    )
}

/// Posts `n` events with ids `{prefix}{i}` in batches, in order.
async fn post_many(relay: &TestRelay, prefix: &str, n: usize) {
    let all: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("{prefix}{i}"), "type": "t", "data": {"i": i}}))
        .collect();
    for chunk in all.chunks(250) {
        let r = relay
            .http
            .post(format!("http://{}/v1/events/batch", relay.addrs.app))
            .header("content-type", "application/json")
            .body(Value::Array(chunk.to_vec()).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
}

async fn get(relay: &TestRelay, path: &str) -> (u16, Value) {
    relay.api(Method::GET, path, None).await
}

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

fn event_ids(list: &Value) -> Vec<String> {
    list["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["event_id"].as_str().unwrap().to_string())
        .collect()
}

async fn fifo_across_a_thousand_notifications_and_a_restart(backend: Backend) {
    let db = TestDb::new(backend);
    let yaml = config(&[pull_sub("poll", "ack: auto")]);
    let relay = TestRelay::on(&db, &yaml).await;
    post_many(&relay, "e", 1000).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let (status, list) = get(&relay, "/v1/subscriptions/poll/notifications?limit=100").await;
        assert_eq!(status, 200);
        got.extend(event_ids(&list));
    }
    let (_, one) = get(&relay, "/v1/subscriptions/poll/notifications/next").await;
    got.push(one["event_id"].as_str().unwrap().to_string());
    assert_eq!(one["type"], "t");
    assert_eq!(one["data"], json!({"i": 300}));
    assert!(one["received_at"].as_str().unwrap().ends_with('Z'));
    relay.stop().await;

    let relay = TestRelay::on(&db, &yaml).await;
    loop {
        let (_, list) = get(&relay, "/v1/subscriptions/poll/notifications?limit=100").await;
        let ids = event_ids(&list);
        if ids.is_empty() {
            assert_eq!(list["remaining"], 0);
            break;
        }
        got.extend(ids);
    }
    let expected: Vec<String> = (0..1000).map(|i| format!("e{i}")).collect();
    assert_eq!(got, expected);
    // Counters restart with the process: 1000 less the 301 pulled before the restart.
    relay.wait_outcome("poll", "delivered", 699.0).await;
    relay.stop().await;
}

async fn limit_bounds_remaining_and_the_empty_queue(backend: Backend) {
    let db = TestDb::new(backend);
    let relay = TestRelay::on(&db, &config(&[pull_sub("poll", "ack: auto")])).await;
    let (status, _) = get(&relay, "/v1/subscriptions/poll/notifications/next").await;
    assert_eq!(status, 204);
    let (status, empty) = get(&relay, "/v1/subscriptions/poll/notifications?limit=5").await;
    assert_eq!(status, 200);
    assert_eq!(empty, json!({"notifications": [], "remaining": 0}));
    for bad in ["0", "101", "x"] {
        let (status, answer) = get(
            &relay,
            &format!("/v1/subscriptions/poll/notifications?limit={bad}"),
        )
        .await;
        assert_eq!(status, 422, "limit={bad}");
        assert_eq!(answer["error"]["fields"][0]["field"], "limit");
    }

    post_many(&relay, "e", 150).await;
    let (_, list) = get(&relay, "/v1/subscriptions/poll/notifications").await;
    assert_eq!(event_ids(&list), ["e0"], "limit defaults to 1");
    assert_eq!(list["remaining"], 149);
    let (_, list) = get(&relay, "/v1/subscriptions/poll/notifications?limit=100").await;
    assert_eq!(event_ids(&list).len(), 100);
    assert_eq!(list["remaining"], 49);
    let (_, list) = get(&relay, "/v1/subscriptions/poll/notifications?limit=100").await;
    assert_eq!(event_ids(&list).len(), 49);
    assert_eq!(list["remaining"], 0);
    relay.stop().await;
}

async fn concurrent_pullers_get_disjoint_sets(backend: Backend, pullers: usize) {
    let db = TestDb::new(backend);
    let relay = Arc::new(TestRelay::on(&db, &config(&[pull_sub("poll", "ack: auto")])).await);
    post_many(&relay, "e", 400).await;
    let mut tasks = Vec::new();
    for _ in 0..pullers {
        let relay = relay.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let (_, list) = get(&relay, "/v1/subscriptions/poll/notifications?limit=7").await;
                let ids = event_ids(&list);
                if ids.is_empty() {
                    return mine;
                }
                mine.extend(ids);
            }
        }));
    }
    let mut union = HashSet::new();
    let mut total = 0;
    for t in tasks {
        let mine = t.await.unwrap();
        total += mine.len();
        union.extend(mine);
    }
    assert_eq!(total, 400, "a notification went to two pullers");
    assert_eq!(union.len(), 400);
    Arc::into_inner(relay).unwrap().stop().await;
}

async fn two_concurrent_pullers_in_auto_mode_get_disjoint_sets(backend: Backend) {
    concurrent_pullers_get_disjoint_sets(backend, 2).await;
}

#[tokio::test]
async fn eight_concurrent_pullers_in_auto_mode_get_disjoint_sets() {
    concurrent_pullers_get_disjoint_sets(Backend::Sqlite, 8).await;
}

async fn explicit_without_visibility_timeout_returns_the_oldest_until_acked(backend: Backend) {
    let db = TestDb::new(backend);
    let relay = TestRelay::on(
        &db,
        &config(&[pull_sub("reg", "ack: explicit, visibility_timeout: 0s")]),
    )
    .await;
    post_many(&relay, "e", 3).await;
    let (_, first) = get(&relay, "/v1/subscriptions/reg/notifications/next").await;
    let (_, again) = get(&relay, "/v1/subscriptions/reg/notifications/next").await;
    assert_eq!(first["event_id"], "e0");
    assert_eq!(again["id"], first["id"]);
    relay
        .wait_metric(
            "hookrelay_pull_redelivered_total",
            &[("subscription", "reg")],
            1.0,
        )
        .await;
    let (_, list) = get(&relay, "/v1/subscriptions/reg/notifications?limit=10").await;
    assert_eq!(event_ids(&list), ["e0", "e1", "e2"]);
    assert_eq!(list["remaining"], 3, "nothing is hidden");

    // Acked out of order: e2 first, then e0; unknown and repeated ids are reported.
    let ids: Vec<i64> = list["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ack(&relay, "reg", &[ids[2]]).await,
        json!({"acked": 1, "unknown": []})
    );
    assert_eq!(
        ack(&relay, "reg", &[ids[0], ids[2], 999_999]).await,
        json!({"acked": 1, "unknown": [ids[2], 999_999]})
    );
    let (_, next) = get(&relay, "/v1/subscriptions/reg/notifications/next").await;
    assert_eq!(next["event_id"], "e1");
    relay.wait_outcome("reg", "delivered", 2.0).await;
    // Only what was pulled can be acknowledged.
    post_many(&relay, "late", 1).await;
    let late = ids[2] + 1;
    assert_eq!(
        ack(&relay, "reg", &[late]).await,
        json!({"acked": 0, "unknown": [late]})
    );
    relay.stop().await;
}

async fn explicit_with_visibility_timeout_hides_then_redelivers(backend: Backend) {
    let db = TestDb::new(backend);
    let relay = TestRelay::on(
        &db,
        &config(&[pull_sub("reg", "ack: explicit, visibility_timeout: 300ms")]),
    )
    .await;
    post_many(&relay, "e", 2).await;
    let (_, first) = get(&relay, "/v1/subscriptions/reg/notifications/next").await;
    assert_eq!(first["event_id"], "e0");
    // Hidden: the next pull gets the second, then nothing.
    let (_, second) = get(&relay, "/v1/subscriptions/reg/notifications?limit=10").await;
    assert_eq!(event_ids(&second), ["e1"]);
    assert_eq!(second["remaining"], 0);
    // After the timeout the un-acked e0 (the oldest) comes back first, counted; a long poll
    // waiting meanwhile gets it as soon as it is visible again.
    let started = Instant::now();
    let (status, back) = get(&relay, "/v1/subscriptions/reg/notifications/next?wait=20s").await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(back["event_id"], "e0");
    assert_eq!(back["id"], first["id"]);
    relay
        .wait_metric(
            "hookrelay_pull_redelivered_total",
            &[("subscription", "reg")],
            1.0,
        )
        .await;
    ack(&relay, "reg", &[back["id"].as_i64().unwrap()]).await;
    relay.stop().await;
}

async fn unacknowledged_notifications_expire_after_the_ttl_and_release_restores_them(
    backend: Backend,
) {
    let db = TestDb::new(backend);
    let relay = TestRelay::on(
        &db,
        &config(&[pull_sub(
            "slow",
            "ack: explicit, visibility_timeout: 0s, ttl: 1s",
        )]),
    )
    .await;
    post_many(&relay, "e", 2).await;
    relay
        .wait_metric("hookrelay_queue_depth", &[("subscription", "slow")], 2.0)
        .await;
    relay.wait_outcome("slow", "expired", 2.0).await;
    relay
        .wait_metric("hookrelay_queue_depth", &[("subscription", "slow")], 0.0)
        .await;
    let (status, _) = get(&relay, "/v1/subscriptions/slow/notifications/next").await;
    assert_eq!(status, 204);
    let (status, released) = relay
        .api(
            Method::POST,
            "/v1/deliveries/release",
            Some(json!({"subscription": "slow"})),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(released["released"], 2);
    let (_, list) = get(&relay, "/v1/subscriptions/slow/notifications?limit=10").await;
    assert_eq!(event_ids(&list), ["e0", "e1"]);
    relay.stop().await;
}

#[tokio::test]
async fn a_token_guards_the_queue_and_push_subscriptions_cannot_be_pulled() {
    let yaml = format!(
        "{}  - {{name: pushed, url: 'http://127.0.0.1:9/', events: [x]}}\n",
        config(&[pull_sub("secure", "ack: auto, token: pull-t0ken")])
    );
    let relay = TestRelay::start(&yaml).await;
    post_many(&relay, "e", 1).await;
    let call = |path: &'static str, token: Option<&'static str>| {
        relay.api_as(Method::GET, path, None, token)
    };
    for token in [None, Some("wrong")] {
        let (status, answer, headers) =
            call("/v1/subscriptions/secure/notifications/next", token).await;
        assert_eq!(status, 401, "{answer}");
        assert_eq!(headers["www-authenticate"], "Bearer");
    }
    let (status, n, _) = call(
        "/v1/subscriptions/secure/notifications/next",
        Some("pull-t0ken"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(n["event_id"], "e0");
    let (status, _, _) = call("/v1/subscriptions/pushed/notifications/next", None).await;
    assert_eq!(status, 409);
    let (status, _, _) = call("/v1/subscriptions/nope/notifications/next", None).await;
    assert_eq!(status, 404);
    // The token never shows in the subscription's view.
    let (_, view) = get(&relay, "/v1/subscriptions/secure").await;
    assert_eq!(view["pull"], json!({"ack": "auto"}));
    relay.stop().await;
}

#[tokio::test]
async fn the_api_token_applies_when_the_subscription_has_none() {
    let relay = TestRelay::start(&format!(
        "api: {{token: api-t0ken}}\n{}",
        config(&[pull_sub("p", "")])
    ))
    .await;
    let path = "/v1/subscriptions/p/notifications/next";
    let (status, _, _) = relay.api_as(Method::GET, path, None, None).await;
    assert_eq!(status, 401);
    let (status, _, _) = relay
        .api_as(Method::GET, path, None, Some("api-t0ken"))
        .await;
    assert_eq!(status, 204);
    // Without a valid token, an unknown subscription is not told apart.
    let path = "/v1/subscriptions/nope/notifications/next";
    let (status, _, _) = relay.api_as(Method::GET, path, None, None).await;
    assert_eq!(status, 401);
    relay.stop().await;
}

async fn a_long_poll_returns_when_an_event_arrives(backend: Backend) {
    let db = TestDb::new(backend);
    let relay = Arc::new(TestRelay::on(&db, &config(&[pull_sub("lp", "ack: auto")])).await);
    // An empty long poll holds for its wait (served past limits.request_timeout's budget).
    let started = Instant::now();
    let (status, _) = get(&relay, "/v1/subscriptions/lp/notifications/next?wait=1s").await;
    assert_eq!(status, 204);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let (status, answer) = get(&relay, "/v1/subscriptions/lp/notifications/next?wait=31s").await;
    assert_eq!(status, 422, "{answer}");
    // HEAD would consume without returning anything: refused.
    post_many(&relay, "h", 1).await;
    let (status, _) = relay
        .api(
            Method::HEAD,
            "/v1/subscriptions/lp/notifications/next",
            None,
        )
        .await;
    assert_eq!(status, 405);
    let (_, kept) = get(&relay, "/v1/subscriptions/lp/notifications/next").await;
    assert_eq!(kept["event_id"], "h0");

    let waiting = {
        let relay = relay.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let got = get(
                &relay,
                "/v1/subscriptions/lp/notifications?limit=10&wait=20s",
            )
            .await;
            (got, started.elapsed())
        })
    };
    post_many(&relay, "e", 1).await;
    let ((status, list), took) = waiting.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(event_ids(&list), ["e0"]);
    assert!(
        took < Duration::from_secs(10),
        "the long poll took {took:?}"
    );
    Arc::into_inner(relay).unwrap().stop().await;
}

async fn a_pull_subscription_registered_through_the_api(backend: Backend) {
    let db = TestDb::new(backend);
    let relay = TestRelay::on(&db, "").await;
    let (status, created) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"name": "inbox", "mode": "pull", "events": ["mail.*"], "pull": {"token": "t-1"}})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["pull"], json!({}));
    let (status, refused) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"mode": "pull", "url": "http://127.0.0.1:9/", "events": ["x"], "retries": 1})),
        )
        .await;
    assert_eq!(status, 422);
    let fields: Vec<&str> = refused["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["url", "retries"]);
    relay
        .post(&json!({"id": "m1", "type": "mail.in", "data": {"subject": "hi"}}))
        .await;
    let (status, n, _) = relay
        .api_as(
            Method::GET,
            "/v1/subscriptions/inbox/notifications/next",
            None,
            Some("t-1"),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(n["data"], json!({"subject": "hi"}));
    // The data comes byte for byte as it was posted.
    relay
        .post_raw(
            r#"{"id": "m2", "type": "mail.in", "data": {"z": 1,  "a": 2.50}}"#,
            "application/json",
        )
        .await;
    let text = relay
        .http
        .get(format!(
            "http://{}/v1/subscriptions/inbox/notifications/next",
            relay.addrs.api
        ))
        .bearer_auth("t-1")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(r#""data":{"z": 1,  "a": 2.50}"#), "{text}");
    // A PATCH that leaves the token out keeps it.
    let (status, _) = relay
        .api(
            Method::PATCH,
            "/v1/subscriptions/inbox",
            Some(json!({"pull": {"ack": "auto"}})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = relay
        .api_as(
            Method::GET,
            "/v1/subscriptions/inbox/notifications/next",
            None,
            None,
        )
        .await;
    assert_eq!(status, 401);
    // A PATCH with null removes it.
    let (status, _) = relay
        .api(
            Method::PATCH,
            "/v1/subscriptions/inbox",
            Some(json!({"pull": {"token": null}})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = get(&relay, "/v1/subscriptions/inbox/notifications/next").await;
    assert_eq!(status, 204);
    relay.stop().await;
}

#[tokio::test]
async fn the_concurrency_limit_covers_every_route_of_a_router() {
    let relay = Arc::new(
        TestRelay::start(&format!(
            "limits: {{max_concurrent_requests: 1}}\n{}",
            config(&[pull_sub("lp", "ack: auto")])
        ))
        .await,
    );
    let holder = {
        let relay = relay.clone();
        tokio::spawn(
            async move { get(&relay, "/v1/subscriptions/lp/notifications/next?wait=5s").await },
        )
    };
    // While the long poll holds the notification routes' one slot, the other notification
    // route is shed too; the management routes have a budget of their own.
    poll(|| async { get(&relay, "/v1/subscriptions/lp/notifications").await.0 == 503 }).await;
    assert_eq!(get(&relay, "/v1/subscriptions").await.0, 200);
    post_many(&relay, "e", 1).await;
    assert_eq!(holder.await.unwrap().0, 200);
    Arc::into_inner(relay).unwrap().stop().await;
}

#[tokio::test]
async fn a_long_poll_ends_when_its_subscription_changes() {
    let relay = Arc::new(TestRelay::start("").await);
    let (status, _) = relay
        .api(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"name": "q", "mode": "pull", "events": ["*"], "pull": {"token": "old-t"}})),
        )
        .await;
    assert_eq!(status, 201);
    let waiting = {
        let relay = relay.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let (status, body, _) = relay
                .api_as(
                    Method::GET,
                    "/v1/subscriptions/q/notifications?wait=20s",
                    None,
                    Some("old-t"),
                )
                .await;
            (status, body, started.elapsed())
        })
    };
    // A PUT that leaves `pull` out keeps the token; it still replaces the subscription, which
    // ends the poll without handing it anything, even as events arrive.
    poll(|| async {
        let (status, _) = relay
            .api(
                Method::PUT,
                "/v1/subscriptions/q",
                Some(json!({"mode": "pull", "events": ["*"]})),
            )
            .await;
        assert_eq!(status, 200);
        waiting.is_finished()
    })
    .await;
    let (status, body, took) = waiting.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["notifications"], json!([]));
    assert!(took < Duration::from_secs(10));
    let (status, _) = get(&relay, "/v1/subscriptions/q/notifications/next").await;
    assert_eq!(status, 401, "the token was kept");
    Arc::into_inner(relay).unwrap().stop().await;
}

crate::both_backends!(
    two_concurrent_pullers_in_auto_mode_get_disjoint_sets,
    fifo_across_a_thousand_notifications_and_a_restart,
    limit_bounds_remaining_and_the_empty_queue,
    explicit_without_visibility_timeout_returns_the_oldest_until_acked,
    explicit_with_visibility_timeout_hides_then_redelivers,
    unacknowledged_notifications_expire_after_the_ttl_and_release_restores_them,
    a_long_poll_returns_when_an_event_arrives,
    a_pull_subscription_registered_through_the_api,
);
