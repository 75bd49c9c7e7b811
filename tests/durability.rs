//! The durable store through the relay: restarts, release, expiry, idempotency, batches,
//! backpressure and dead letters, each on a real SQLite file in a temporary directory.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Answer, Backend, Receiver, TestDb, TestRelay, deadline, poll};
use reqwest::Method;
use serde_json::{Value, json};

fn one_sub(url: &str, extra: &str) -> String {
    format!("subscriptions:\n  - {{name: a, url: '{url}', events: ['*'], {extra}}}\n")
}

/// A receiver that fails until `healthy` is set.
async fn switchable() -> (Receiver, Arc<AtomicBool>) {
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    let rx = Receiver::scripted(move |_| {
        Answer::status(if flag.load(Ordering::SeqCst) {
            200
        } else {
            500
        })
    })
    .await;
    (rx, healthy)
}

async fn delivery_state(relay: &TestRelay, event: &str) -> Value {
    let (status, body) = relay.event_status(event).await;
    assert_eq!(status, 200, "{body}");
    body["deliveries"][0].clone()
}

async fn wait_state(relay: &TestRelay, event: &str, state: &str) -> Value {
    let ok = deadline(|| async { delivery_state(relay, event).await["state"] == state }).await;
    let now = delivery_state(relay, event).await;
    assert!(ok, "delivery of {event} never became {state}: {now}");
    now
}

async fn event_status_follows_each_delivery(backend: Backend) {
    let db = TestDb::new(backend);
    let rx = Receiver::ok().await;
    let relay = TestRelay::on(&db, &one_sub(&rx.url("/"), "")).await;
    let (s, _) = relay
        .post(&json!({"type": "order.done", "id": "op-1", "data": {}}))
        .await;
    assert_eq!(s, 202);
    let d = wait_state(&relay, "op-1", "delivered").await;
    assert_eq!(d["subscription"], "a");
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["last_status"], 200);
    assert!(d["delivered_at"].as_str().unwrap().ends_with('Z'));
    assert!(d["id"].is_i64());
    let (_, body) = relay.event_status("op-1").await;
    assert_eq!(body["type"], "order.done");
    assert!(body["received_at"].is_string());
    let (status, body) = relay.event_status("unknown").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    relay.stop().await;
}

async fn a_restart_mid_backoff_resumes_the_schedule(backend: Backend) {
    let db = TestDb::new(backend);
    let (rx, healthy) = switchable().await;
    let yaml = one_sub(&rx.url("/"), "retries: 3, backoff: {schedule: [1500ms]}");
    let relay = TestRelay::on(&db, &yaml).await;
    relay
        .post(&json!({"type": "t", "id": "e1", "data": {"n": 1}}))
        .await;
    poll(|| async { delivery_state(&relay, "e1").await["attempts"] == 1 }).await;
    let pending = delivery_state(&relay, "e1").await;
    assert_eq!(pending["state"], "pending");
    assert_eq!(pending["last_status"], 500);
    assert_eq!(pending["last_error"], "HTTP 500 Internal Server Error");
    assert!(pending["next_attempt_at"].is_string());
    relay.stop().await;

    healthy.store(true, Ordering::SeqCst);
    let relay = TestRelay::on(&db, &yaml).await;
    let d = wait_state(&relay, "e1", "delivered").await;
    assert_eq!(d["attempts"], 2);
    let got = rx.received();
    assert_eq!(got.len(), 2);
    // The retry waited for its scheduled time (1.5s minus 20% jitter), restart or not.
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(1150),
        "{:?}",
        got[1].at - got[0].at
    );
    assert_eq!(&got[1].body[..], br#"{"n":1}"#);
    relay.stop().await;
}

async fn release_redispatches_dead_letters_once_per_interval(backend: Backend) {
    let db = TestDb::new(backend);
    let (rx, healthy) = switchable().await;
    let relay = TestRelay::on(&db, &one_sub(&rx.url("/"), "retries: 0")).await;
    relay
        .post(&json!({"type": "t", "id": "e1", "data": {}}))
        .await;
    relay
        .post(&json!({"type": "t", "id": "e2", "data": {}}))
        .await;
    wait_state(&relay, "e1", "failed").await;
    wait_state(&relay, "e2", "failed").await;
    relay
        .wait_metric("hookrelay_dead_letters", &[("subscription", "a")], 2.0)
        .await;

    let (s, body) = relay
        .api(
            Method::GET,
            "/v1/deliveries?state=failed&subscription=a",
            None,
        )
        .await;
    assert_eq!(s, 200);
    let listed: Vec<&str> = body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["e1", "e2"], "oldest first");

    healthy.store(true, Ordering::SeqCst);
    let (s, body) = relay
        .api(Method::POST, "/v1/deliveries/release", None)
        .await;
    assert_eq!((s, body), (202, json!({"released": 2})));
    wait_state(&relay, "e1", "delivered").await;
    wait_state(&relay, "e2", "delivered").await;

    let r = relay
        .http
        .post(format!("http://{}/v1/deliveries/release", relay.addrs.api))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait > 3000 && wait <= 3600, "{wait}");
    // A subscription scope has its own interval; an unknown one is 404.
    let (s, _) = relay
        .api(
            Method::POST,
            "/v1/deliveries/release",
            Some(json!({"subscription": "a"})),
        )
        .await;
    assert_eq!(s, 202);
    let (s, _) = relay
        .api(
            Method::POST,
            "/v1/deliveries/release",
            Some(json!({"subscription": "nope"})),
        )
        .await;
    assert_eq!(s, 404);
    relay.stop().await;
}

async fn the_release_interval_survives_a_restart(backend: Backend) {
    let db = TestDb::new(backend);
    let rx = Receiver::ok().await;
    let yaml = one_sub(&rx.url("/"), "");
    let relay = TestRelay::on(&db, &yaml).await;
    let (s, _) = relay
        .api(Method::POST, "/v1/deliveries/release", None)
        .await;
    assert_eq!(s, 202);
    relay.stop().await;
    let relay = TestRelay::on(&db, &yaml).await;
    let (s, body) = relay
        .api(Method::POST, "/v1/deliveries/release", None)
        .await;
    assert_eq!(s, 429, "{body}");
    relay.stop().await;
}

async fn undelivered_notifications_expire_after_the_ttl_and_release_restores_them(
    backend: Backend,
) {
    let db = TestDb::new(backend);
    let (rx, healthy) = switchable().await;
    let relay = TestRelay::on_with(
        &db,
        "ttl: 300ms",
        &one_sub(&rx.url("/"), "retries: 5, backoff: {schedule: [1h]}"),
    )
    .await;
    relay
        .post(&json!({"type": "t", "id": "late", "data": {}}))
        .await;
    let d = wait_state(&relay, "late", "expired").await;
    assert_eq!(d["attempts"], 1);
    relay.wait_outcome("a", "expired", 1.0).await;
    assert_eq!(
        relay
            .metric("hookrelay_queue_depth", &[("subscription", "a")])
            .await,
        Some(0.0)
    );

    healthy.store(true, Ordering::SeqCst);
    let (s, body) = relay
        .api(Method::POST, "/v1/deliveries/release", None)
        .await;
    assert_eq!((s, body), (202, json!({"released": 1})));
    wait_state(&relay, "late", "delivered").await;
    relay.stop().await;
}

async fn an_app_id_is_accepted_once(backend: Backend) {
    let db = TestDb::new(backend);
    let rx = Receiver::ok().await;
    let relay = TestRelay::on(&db, &one_sub(&rx.url("/"), "")).await;
    let (s, first) = relay
        .post(&json!({"type": "t", "id": "same", "data": {"v": 1}}))
        .await;
    assert_eq!((s, first["subscriptions"].clone()), (202, json!(["a"])));
    // A different body with the same id is still the same event.
    let (s, again) = relay
        .post(&json!({"type": "other", "id": "same", "data": {"v": 2}}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        again,
        json!({"id": "same", "subscriptions": ["a"], "duplicate": true})
    );
    wait_state(&relay, "same", "delivered").await;
    let (_, status) = relay.event_status("same").await;
    assert_eq!(status["deliveries"].as_array().unwrap().len(), 1);
    assert_eq!(status["type"], "t");
    assert_eq!(
        relay
            .metric(
                "hookrelay_events_received_total",
                &[("outcome", "duplicate")]
            )
            .await,
        Some(1.0)
    );
    assert_eq!(rx.count(), 1);
    assert_eq!(&rx.received()[0].body[..], br#"{"v":1}"#);
    relay.stop().await;
}

async fn batches_are_all_or_nothing(backend: Backend) {
    let db = TestDb::new(backend);
    let rx = Receiver::ok().await;
    let relay = TestRelay::on(
        &db,
        &format!("limits: {{max_batch: 3}}\n{}", one_sub(&rx.url("/"), "")),
    )
    .await;
    let url = format!("http://{}/v1/events/batch", relay.addrs.app);
    let post = |body: Value| {
        let http = relay.http.clone();
        let url = url.clone();
        async move {
            let r = http
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            (
                s,
                serde_json::from_str::<Value>(&r.text().await.unwrap()).unwrap(),
            )
        }
    };
    let (s, body) = post(json!([
        {"type": "t", "id": "b1", "data": {}},
        {"type": "t", "data": {}},
    ]))
    .await;
    assert_eq!(s, 202, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0], json!({"id": "b1", "subscriptions": ["a"]}));
    rx.wait_for(2).await;

    let (s, body) = post(json!([
        {"type": "t", "id": "ok-1", "data": {}},
        {"type": "t", "id": "bad one", "data": {}},
    ]))
    .await;
    assert_eq!(s, 422);
    assert_eq!(body["error"]["fields"][0]["field"], "[1].id");
    assert_eq!(
        relay.event_status("ok-1").await.0,
        404,
        "nothing of a refused batch is stored"
    );

    let (s, _) = post(json!([{"type": "t", "data": 1}, {"type": "t", "data": 2}, {"type": "t", "data": 3}, {"type": "t", "data": 4}])).await;
    assert_eq!(s, 413);
    let (s, body) = post(json!({"type": "t", "data": 1})).await;
    assert_eq!(
        (s, body["error"]["code"].clone()),
        (422, json!("invalid_batch"))
    );
    let (s, body) = post(json!([{"type": "t", "id": "b1", "data": {}}])).await;
    assert_eq!(
        (s, body["results"][0]["duplicate"].clone()),
        (202, json!(true))
    );
    // Counted per event, not per request.
    let m = relay.metrics().await;
    assert_eq!(
        common::sample(
            &m,
            "hookrelay_events_received_total",
            &[("outcome", "accepted")]
        ),
        Some(2.0)
    );
    assert_eq!(
        common::sample(
            &m,
            "hookrelay_events_received_total",
            &[("outcome", "duplicate")]
        ),
        Some(1.0)
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_full_write_queue_answers_503() {
    let (relay, db) =
        TestRelay::start_with_storage("queue_capacity: 1", "subscriptions: []\n").await;
    // Another process holds the write lock: the writer waits, its queue fills.
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut posts = Vec::new();
    for i in 0..10 {
        let http = relay.http.clone();
        let url = format!("http://{}/v1/events", relay.addrs.app);
        let refused = refused.clone();
        posts.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .header("content-type", "application/json")
                .body(json!({"type": "t", "id": format!("q{i}"), "data": {}}).to_string())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            if status == 503 {
                assert!(r.headers().get("retry-after").is_some());
                refused.fetch_add(1, Ordering::SeqCst);
            }
            status
        }));
    }
    // Refusals come at once, while the lock is still held.
    poll(|| async { refused.load(Ordering::SeqCst) >= 8 }).await;
    // Scrapes read on their own connection: they answer while the writer waits.
    let busy = relay
        .metric("hookrelay_events_rejected_total", &[("reason", "busy")])
        .await;
    assert!(busy >= Some(8.0), "{busy:?}");
    lock.execute_batch("ROLLBACK").unwrap();
    let mut accepted = 0;
    for p in posts {
        match p.await.unwrap() {
            202 => accepted += 1,
            503 => {}
            other => panic!("{other}"),
        }
    }
    let busy = relay
        .metric("hookrelay_events_rejected_total", &[("reason", "busy")])
        .await;
    assert!(busy >= Some(8.0), "{busy:?}");
    assert!(
        accepted <= 2,
        "only the job in the writer and the one queued get through"
    );
    relay.stop().await;
}

#[tokio::test]
async fn above_max_size_ingest_answers_503() {
    let (relay, _) = TestRelay::start_with_storage("max_size: 256KiB", "subscriptions: []\n").await;
    let filler = "x".repeat(16 * 1024);
    let mut refused = None;
    for i in 0..2000 {
        let (s, body) = relay
            .post(&json!({"type": "t", "id": format!("f{i}"), "data": filler}))
            .await;
        if s == 503 {
            refused = Some((i, body));
            break;
        }
        assert_eq!(s, 202);
    }
    let (i, body) = refused.expect("max_size never enforced");
    assert!(i >= 10, "refused too early, after {i} events");
    assert_eq!(body["error"]["code"], "store_unavailable");
    relay.stop().await;
}

async fn dead_letters_one_by_one(backend: Backend) {
    let db = TestDb::new(backend);
    let (rx, healthy) = switchable().await;
    let relay = TestRelay::on(&db, &one_sub(&rx.url("/"), "retries: 0")).await;
    for id in ["d1", "d2", "d3"] {
        relay
            .post(&json!({"type": "t", "id": id, "data": {}}))
            .await;
        wait_state(&relay, id, "failed").await;
    }
    let (s, page) = relay
        .api(Method::GET, "/v1/deliveries?state=failed&limit=2", None)
        .await;
    assert_eq!(s, 200);
    let page_ids: Vec<i64> = page["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(page_ids.len(), 2);
    let next = page["next_after"].as_i64().unwrap();
    let (_, rest) = relay
        .api(
            Method::GET,
            &format!("/v1/deliveries?state=failed&limit=2&after={next}"),
            None,
        )
        .await;
    assert_eq!(rest["deliveries"][0]["event_id"], "d3");
    assert_eq!(rest["next_after"], Value::Null);

    healthy.store(true, Ordering::SeqCst);
    let (s, body) = relay
        .api(
            Method::POST,
            &format!("/v1/deliveries/{}/retry", page_ids[0]),
            None,
        )
        .await;
    assert_eq!((s, body["state"].clone()), (202, json!("pending")));
    wait_state(&relay, "d1", "delivered").await;
    let (s, _) = relay
        .api(
            Method::POST,
            &format!("/v1/deliveries/{}/retry", page_ids[0]),
            None,
        )
        .await;
    assert_eq!(s, 409, "a delivered one cannot be retried");

    let (s, _) = relay
        .api(
            Method::DELETE,
            &format!("/v1/deliveries/{}", page_ids[1]),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, _) = relay
        .api(
            Method::DELETE,
            &format!("/v1/deliveries/{}", page_ids[1]),
            None,
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = relay
        .api(Method::POST, "/v1/deliveries/999999/retry", None)
        .await;
    assert_eq!(s, 404);
    let (s, body) = relay
        .api(Method::GET, "/v1/deliveries?state=bogus&limit=0", None)
        .await;
    assert_eq!(s, 422);
    assert_eq!(body["error"]["fields"].as_array().unwrap().len(), 2);
    let state = body["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "state")
        .unwrap();
    assert_eq!(
        state["reason"],
        "must be one of pending, in_flight, delivered, failed, expired, orphaned, cancelled, waiting"
    );
    relay.stop().await;
}

async fn deliveries_of_a_removed_subscription_wait_as_orphans(backend: Backend) {
    let db = TestDb::new(backend);
    let (rx, healthy) = switchable().await;
    let with_a = one_sub(&rx.url("/"), "retries: 5, backoff: {schedule: [1h]}");
    let relay = TestRelay::on(&db, &with_a).await;
    relay
        .post(&json!({"type": "t", "id": "o1", "data": {}}))
        .await;
    poll(|| async { delivery_state(&relay, "o1").await["attempts"] == 1 }).await;
    relay.stop().await;

    let relay = TestRelay::on(&db, "subscriptions: []\n").await;
    assert_eq!(delivery_state(&relay, "o1").await["state"], "orphaned");
    assert_eq!(
        relay.metric("hookrelay_orphaned_deliveries", &[]).await,
        Some(1.0)
    );
    relay.stop().await;

    healthy.store(true, Ordering::SeqCst);
    let relay = TestRelay::on(&db, &with_a).await;
    let (s, _) = relay
        .api(
            Method::POST,
            &format!(
                "/v1/deliveries/{}/retry",
                delivery_state(&relay, "o1").await["id"]
            ),
            None,
        )
        .await;
    assert_eq!(
        s, 409,
        "a resumed orphan is pending again, not a dead letter"
    );
    relay.stop().await;
}

async fn a_dead_letter_of_a_removed_subscription_is_not_retried(backend: Backend) {
    let db = TestDb::new(backend);
    let rx = Receiver::scripted(|_| Answer::status(500)).await;
    let relay = TestRelay::on(&db, &one_sub(&rx.url("/"), "retries: 0")).await;
    relay
        .post(&json!({"type": "t", "id": "gone-1", "data": {}}))
        .await;
    let failed = wait_state(&relay, "gone-1", "failed").await;
    relay.stop().await;
    let relay = TestRelay::on(&db, "subscriptions: []\n").await;
    let (s, body) = relay
        .api(
            Method::POST,
            &format!("/v1/deliveries/{}/retry", failed["id"]),
            None,
        )
        .await;
    assert_eq!(s, 409, "{body}");
    assert_eq!(delivery_state(&relay, "gone-1").await["state"], "failed");
    relay.stop().await;
}

#[tokio::test]
async fn an_event_whose_client_gave_up_is_still_delivered() {
    let rx = Receiver::ok().await;
    let (relay, db) = TestRelay::start_with_storage("sync: full", &one_sub(&rx.url("/"), "")).await;
    // The writer waits on a lock held elsewhere, so the request outlives its client.
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let sent = impatient
        .post(format!("http://{}/v1/events", relay.addrs.app))
        .header("content-type", "application/json")
        .body(json!({"type": "t", "id": "gave-up", "data": {}}).to_string())
        .send()
        .await;
    assert!(sent.is_err(), "the client should have timed out");
    lock.execute_batch("ROLLBACK").unwrap();
    // Stored once the lock is gone; then handed over and delivered, not stranded in flight.
    let got = rx.wait_for(1).await;
    assert_eq!(got[0].headers["webhook-id"], "gave-up");
    wait_state(&relay, "gave-up", "delivered").await;
    relay.stop().await;
}

crate::both_backends!(
    undelivered_notifications_expire_after_the_ttl_and_release_restores_them,
    event_status_follows_each_delivery,
    a_restart_mid_backoff_resumes_the_schedule,
    release_redispatches_dead_letters_once_per_interval,
    the_release_interval_survives_a_restart,
    an_app_id_is_accepted_once,
    batches_are_all_or_nothing,
    dead_letters_one_by_one,
    deliveries_of_a_removed_subscription_wait_as_orphans,
    a_dead_letter_of_a_removed_subscription_is_not_retried,
);
