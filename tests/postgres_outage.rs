//! PostgreSQL going away under a running relay: down (its port closed), connections cut
//! mid-delivery, backends terminated, and a server that accepts but never answers. Ingest
//! answers `503` + `Retry-After` within `connect_timeout` (never `202` then lost), the
//! relay says so (`/readyz`, `hookrelay_store_up`), stays up, and recovers by itself when the
//! database returns; every event answered `202` is delivered. The server is reached through
//! a proxy the test controls (`common::proxy`).

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::{Mode, Proxy};
use common::{
    Answer, Backend, Receiver, TestDb, TestRelay, deadline, poll, test_database_addr,
    test_database_url,
};
use serde_json::{Value, json};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A relay on a fresh schema reached through a proxy, with one subscription to `url`.
async fn relay_via_proxy(db: &TestDb, url: &str) -> (TestRelay, Proxy) {
    let proxy = Proxy::start(test_database_addr()).await;
    let yaml = format!(
        "{}subscriptions:\n  - {{name: hooks, url: '{url}', events: ['*'], retries: 20, \
         backoff: {{schedule: [100ms, 200ms, 500ms], overload_floor: 0s}}}}\n",
        db.storage_at(proxy.addr, "connect_timeout: 1s")
    );
    (TestRelay::start_in(&yaml, db.dir.clone()).await, proxy)
}

/// Posts events `{prefix}{n}` one after another until `stop`; returns the ids answered
/// `202` and every other status seen. A status other than 202 or 503 fails the test.
fn post_until(
    relay: &Arc<TestRelay>,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<String>, usize)> {
    let relay = relay.clone();
    tokio::spawn(async move {
        let (mut accepted, mut refused) = (Vec::new(), 0);
        let n = AtomicUsize::new(0);
        while !stop.load(Ordering::SeqCst) {
            let id = format!("{prefix}{}", n.fetch_add(1, Ordering::SeqCst));
            let started = Instant::now();
            let r = relay
                .http
                .post(format!("http://{}/v1/events", relay.addrs.app))
                .header("content-type", "application/json")
                .body(json!({"type": "t", "id": id, "data": {}}).to_string())
                .send()
                .await
                .unwrap();
            let took = started.elapsed();
            match r.status().as_u16() {
                202 => accepted.push(id),
                503 => {
                    assert_eq!(r.headers()["retry-after"], "1");
                    assert!(
                        took < CONNECT_TIMEOUT + Duration::from_millis(500),
                        "a refusal took {took:?}"
                    );
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => panic!("unexpected status {other}"),
            }
        }
        (accepted, refused)
    })
}

/// Waits until the receiver got every id in `ids` (its `webhook-id` header).
async fn all_delivered(rx: &Receiver, ids: &[String]) {
    let ok = deadline(|| async {
        let seen: HashSet<String> = rx
            .received()
            .iter()
            .map(|r| r.headers["webhook-id"].to_str().unwrap().to_string())
            .collect();
        ids.iter().all(|id| seen.contains(id))
    })
    .await;
    assert!(ok, "some events answered 202 were never delivered");
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn down_then_back_refuses_with_503_and_recovers_without_a_restart() {
    let db = TestDb::new(Backend::Postgres);
    let rx = Receiver::ok().await;
    let (relay, proxy) = relay_via_proxy(&db, &rx.url("/")).await;
    let relay = Arc::new(relay);
    let stop = Arc::new(AtomicBool::new(false));
    let posting = post_until(&relay, "e", stop.clone());
    poll(|| async { rx.count() >= 20 }).await;

    // Down: the port closed, every connection cut.
    proxy.set(Mode::Refuse);
    poll(|| async { relay.metric("hookrelay_store_up", &[]).await == Some(0.0) }).await;
    let (status, probe) = relay.readyz().await;
    assert_eq!(status, 200, "as with a full disk: ready, and says why");
    assert_eq!(probe["store"], "the database is unreachable");
    let (status, answer) = relay.post(&json!({"type": "t", "data": {}})).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (503, &json!("store_unavailable"))
    );
    // Pumps back off meanwhile: the relay stays up and answers its probes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(relay.running());
    assert_eq!(relay.readyz().await.0, 200);

    // Back: nothing restarted, ingest accepts again, and everything accepted arrives.
    proxy.set(Mode::Forward);
    poll(|| async { relay.metric("hookrelay_store_up", &[]).await == Some(1.0) }).await;
    let before = relay
        .metric(
            "hookrelay_events_received_total",
            &[("outcome", "accepted")],
        )
        .await;
    poll(|| async {
        relay
            .metric(
                "hookrelay_events_received_total",
                &[("outcome", "accepted")],
            )
            .await
            > before
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let (accepted, refused) = posting.await.unwrap();
    assert!(refused > 0, "the outage refused nothing");
    all_delivered(&rx, &accepted).await;
    assert_eq!(relay.readyz().await.1["store"], Value::Null);
    Arc::into_inner(relay).unwrap().stop().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn an_attempt_that_ends_while_the_database_is_cut_is_recorded_when_it_returns() {
    let db = TestDb::new(Backend::Postgres);
    // Each request is answered after 1.5 s: the outage starts while it is in flight.
    let rx = Receiver::scripted(|_| Answer::status(200).after(Duration::from_millis(1500))).await;
    let (relay, proxy) = relay_via_proxy(&db, &rx.url("/")).await;
    assert_eq!(
        relay
            .post(&json!({"type": "t", "id": "slow", "data": {}}))
            .await
            .0,
        202
    );
    rx.wait_for(1).await;
    proxy.set(Mode::Refuse);
    // The attempt ends (200) with the database away; its outcome waits in the pump.
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.set(Mode::Forward);
    poll(|| async {
        let (status, body) = relay.event_status("slow").await;
        status == 200 && body["deliveries"][0]["state"] == "delivered"
    })
    .await;
    let (_, body) = relay.event_status("slow").await;
    assert_eq!(body["deliveries"][0]["attempts"], 1);
    assert_eq!(rx.count(), 1, "recorded, not attempted again");
    relay.wait_outcome("hooks", "delivered", 1.0).await;
    relay.stop().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn terminated_backends_are_replaced_and_nothing_accepted_is_lost() {
    let db = TestDb::new(Backend::Postgres);
    let rx = Receiver::ok().await;
    let (relay, _proxy) = relay_via_proxy(&db, &rx.url("/")).await;
    let relay = Arc::new(relay);
    let stop = Arc::new(AtomicBool::new(false));
    let posting = post_until(&relay, "k", stop.clone());
    let (admin, conn) = tokio_postgres::connect(&test_database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let schema = db.schema.clone().unwrap();
    let killed = Arc::new(Mutex::new(0i64));
    for _ in 0..5 {
        poll(|| async { rx.count() > 0 }).await;
        let row = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = $1",
                &[&schema],
            )
            .await
            .unwrap();
        *killed.lock().unwrap() += row.get::<_, i64>(0);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        *killed.lock().unwrap() > 0,
        "no backend of the relay was terminated"
    );
    stop.store(true, Ordering::SeqCst);
    let (accepted, _) = posting.await.unwrap();
    assert!(accepted.len() > 10, "{} accepted", accepted.len());
    all_delivered(&rx, &accepted).await;
    // Accepting again, on new connections.
    assert_eq!(relay.post(&json!({"type": "t", "data": {}})).await.0, 202);
    poll(|| async { relay.metric("hookrelay_store_up", &[]).await == Some(1.0) }).await;
    assert!(relay.running());
    Arc::into_inner(relay).unwrap().stop().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn a_server_that_never_answers_holds_ingest_no_longer_than_connect_timeout() {
    let db = TestDb::new(Backend::Postgres);
    let rx = Receiver::ok().await;
    let (relay, proxy) = relay_via_proxy(&db, &rx.url("/")).await;
    assert_eq!(relay.post(&json!({"type": "t", "data": {}})).await.0, 202);
    // Connections stay open and new ones are accepted, but nothing is answered.
    proxy.set(Mode::Hang);
    for _ in 0..3 {
        let started = Instant::now();
        let (status, _) = relay.post(&json!({"type": "t", "data": {}})).await;
        let took = started.elapsed();
        assert_eq!(status, 503);
        assert!(
            took < CONNECT_TIMEOUT + Duration::from_millis(500),
            "ingest held {took:?}"
        );
    }
    poll(|| async { relay.metric("hookrelay_store_up", &[]).await == Some(0.0) }).await;
    proxy.set(Mode::Forward);
    poll(|| async {
        relay
            .post(&json!({"type": "t", "id": "after", "data": {}}))
            .await
            .0
            == 202
    })
    .await;
    poll(|| async { relay.event_status("after").await.1["deliveries"][0]["state"] == "delivered" })
        .await;
    relay.stop().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn attempts_stop_while_their_outcomes_cannot_be_recorded_and_resume_after() {
    let db = TestDb::new(Backend::Postgres);
    let rx = Receiver::scripted(|_| Answer::status(200).after(Duration::from_millis(300))).await;
    let proxy = Proxy::start(test_database_addr()).await;
    let yaml = format!(
        "{}subscriptions:\n  - {{name: hooks, url: '{}', events: ['*'], max_in_flight: 2, \
         retries: 20, backoff: {{schedule: [100ms], overload_floor: 0s}}}}\n",
        db.storage_at(proxy.addr, "connect_timeout: 1s"),
        rx.url("/")
    );
    let relay = TestRelay::start_in(&yaml, db.dir.clone()).await;
    let ids: Vec<String> = (0..40).map(|i| format!("b{i}")).collect();
    for id in &ids {
        let event = json!({"type": "t", "id": id, "data": {}});
        assert_eq!(relay.post(&event).await.0, 202);
    }
    rx.wait_for(1).await;
    proxy.set(Mode::Refuse);
    let at_cut = rx.count();
    // The attempts under way finish, then their outcomes wait: with max_in_flight 2, at
    // most 8 attempts hold a permit, so at most 8 more start. Without the bound every
    // queued delivery would be sent, 300 ms each, two at a time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stalled = rx.count();
    assert!(
        stalled <= at_cut + 8,
        "{stalled} attempts with the store away ({at_cut} at the cut)"
    );
    assert!(
        stalled < ids.len(),
        "everything was sent with the store away"
    );
    proxy.set(Mode::Forward);
    all_delivered(&rx, &ids).await;
    relay
        .wait_outcome("hooks", "delivered", ids.len() as f64)
        .await;
    relay.stop().await;
}
