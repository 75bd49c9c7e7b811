//! (a) Three relay processes on one PostgreSQL schema share their API subscriptions: one
//! created through A's API receives the events posted to B and C, an update through B is in
//! force on C, a delete through C stops deliveries on A, each within `PROPAGATION` (measured:
//! well under a second). A subscription that two relays' config files declare and the third's
//! lacks (mid rolling update) is not orphaned when the third starts, nor is one a relay's file
//! gains by a reload when a fourth starts without it. Once with the `LISTEN` connection, once
//! by the periodic resync alone (its listener pointed at a port where nothing listens, as
//! through a pooler).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::replicas::Replica;
use common::{Answer, Backend, Receiver, TestDb, api_request, deadline};
use reqwest::Method;
use serde_json::{Value, json};

/// How soon a change through one relay must be in force on the others. The times printed
/// are tens to hundreds of milliseconds (docs/operations.md); the bound leaves room for a
/// loaded CI machine and still fails a relay that waits for the next `sync_interval: 30s`
/// (the LISTEN test) or never resyncs.
const PROPAGATION: Duration = Duration::from_secs(5);

/// `method path` on `relay`'s API: status and JSON answer.
async fn api(relay: &Replica, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let (status, body, _) = api_request(&http, relay.binary.api, method, path, body, None).await;
    (status, body)
}

/// Polls `relay` until `GET /v1/subscriptions/shared` satisfies `cond`; the time it took, or
/// `None` after `limit`.
async fn seen_within(
    relay: &Replica,
    limit: Duration,
    cond: impl Fn(u16, &Value) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() <= limit {
        let (status, body) = api(relay, Method::GET, "/v1/subscriptions/shared", None).await;
        if cond(status, &body) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// The subscriptions an event was matched to on `relay`, and their states.
async fn matched(relay: &Replica, id: &str) -> Vec<(String, String)> {
    let (status, body) = relay.event_status(id).await;
    assert_eq!(status, 200, "{id}: {body}");
    body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["subscription"].as_str().unwrap_or_default().to_string(),
                d["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The `webhook-id`s a receiver got.
fn ids(receiver: &Receiver) -> Vec<String> {
    receiver
        .received()
        .iter()
        .filter_map(|r| r.headers.get("webhook-id")?.to_str().ok().map(String::from))
        .collect()
}

fn event(kind: &str, id: &str) -> Value {
    json!({"type": kind, "id": id, "data": {}})
}

async fn api_subscriptions_are_shared(pg: &str) {
    let db = TestDb::new(Backend::Postgres);
    // The config subscription's receiver refuses until told otherwise: its deliveries stay
    // pending across the third relay's start.
    let refusing = Arc::new(AtomicBool::new(true));
    let flag = refusing.clone();
    let yaml_rx = Receiver::scripted(move |_| {
        Answer::status(if flag.load(Ordering::SeqCst) {
            503
        } else {
            200
        })
    })
    .await;
    let first = Receiver::ok().await;
    let second = Receiver::ok().await;
    let with_x = format!(
        "subscriptions:\n  - {{name: yaml-x, url: '{}', events: ['yaml.*'], retries: 20, backoff: {{schedule: [300ms], overload_floor: 0s}}, circuit: {{cool_down: 300ms}}}}\n",
        yaml_rx.url("/x")
    );
    let a = Replica::start(&db, "cat-a", pg, &with_x);
    let b = Replica::start(&db, "cat-b", pg, &with_x);
    let yaml_ids: Vec<String> = (0..6).map(|i| format!("y-{i}")).collect();
    for (i, id) in yaml_ids.iter().enumerate() {
        let relay = if i % 2 == 0 { &a } else { &b };
        assert_eq!(relay.post(&event("yaml.e", id)).await, 202);
    }
    assert!(deadline(|| async { yaml_rx.count() >= 6 }).await);
    // C's file lacks yaml-x (a rolling update in progress): its start must not orphan it.
    let c_own = format!(
        "subscriptions:\n  - {{name: c-own, url: '{}', events: ['c.*']}}\n",
        yaml_rx.url("/c")
    );
    let c = Replica::start(&db, "cat-c", pg, &c_own);
    for id in &yaml_ids {
        let states = matched(&a, id).await;
        assert!(
            states
                .iter()
                .all(|(s, st)| s == "yaml-x" && st != "orphaned"),
            "{id} after C started: {states:?}"
        );
    }
    refusing.store(false, Ordering::SeqCst);
    let all_delivered = deadline(|| async {
        for id in &yaml_ids {
            if matched(&a, id).await != [("yaml-x".to_string(), "delivered".to_string())] {
                return false;
            }
        }
        true
    })
    .await;
    assert!(all_delivered, "yaml-x deliveries were not all delivered");

    // Created through A: in force on B and C within `PROPAGATION`.
    let (status, created) = api(
        &a,
        Method::POST,
        "/v1/subscriptions",
        Some(json!({"name": "shared", "url": first.url("/one"), "events": ["api.*"]})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    for relay in [&b, &c] {
        let took = seen_within(relay, PROPAGATION, |s, _| s == 200).await;
        println!("create via A seen on {}: {took:?}", relay.host);
        assert!(took.is_some(), "{} did not see the create", relay.host);
    }
    for (relay, id) in [(&b, "api-b"), (&c, "api-c")] {
        assert_eq!(relay.post(&event("api.e", id)).await, 202);
    }
    assert!(deadline(|| async { first.count() >= 2 }).await);
    let mut got = ids(&first);
    got.sort();
    assert_eq!(got, ["api-b", "api-c"]);

    // Updated through B (a new URL): in force on C within `PROPAGATION`.
    let (status, updated) = api(
        &b,
        Method::PATCH,
        "/v1/subscriptions/shared",
        Some(json!({"url": second.url("/two")})),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    let new_url = second.url("/two");
    let took = seen_within(&c, PROPAGATION, |s, body| {
        s == 200 && body["url"] == new_url.as_str()
    })
    .await;
    println!("update via B seen on C: {took:?}");
    assert!(took.is_some(), "C did not see the update");
    assert_eq!(c.post(&event("api.e", "api-c2")).await, 202);
    assert!(deadline(|| async { second.count() >= 1 }).await);
    assert_eq!(ids(&second), ["api-c2"]);

    // Deleted through C: gone from A within `PROPAGATION`; A matches nothing to it any more.
    let (status, _) = api(&c, Method::DELETE, "/v1/subscriptions/shared", None).await;
    assert_eq!(status, 204);
    let took = seen_within(&a, PROPAGATION, |s, _| s == 404).await;
    println!("delete via C seen on A: {took:?}");
    assert!(took.is_some(), "A did not see the delete");
    assert_eq!(a.post(&event("api.e", "api-a3")).await, 202);
    assert!(
        matched(&a, "api-a3").await.is_empty(),
        "A still matched an event to the deleted subscription"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ids(&second), ["api-c2"]);
    assert_eq!(ids(&first).len(), 2);

    // An API subscription named as C's config one: in force on A and B, left out on C,
    // whose config subscription keeps the name.
    let (status, clash) = api(
        &a,
        Method::POST,
        "/v1/subscriptions",
        Some(json!({"name": "c-own", "url": first.url("/clash"), "events": ["c.*"]})),
    )
    .await;
    assert_eq!(status, 201, "{clash}");
    let logged = deadline(|| async {
        !c.take_logged("API subscription registered through another relay left out: this relay's config file declares the name").is_empty()
    })
    .await;
    assert!(logged, "C did not leave the clashing subscription out");
    let (status, own) = api(&c, Method::GET, "/v1/subscriptions/c-own", None).await;
    assert_eq!(
        (status, own["source"].as_str()),
        (200, Some("config")),
        "{own}"
    );
    let on_b = deadline(|| async {
        let (status, on_b) = api(&b, Method::GET, "/v1/subscriptions/c-own", None).await;
        status == 200 && on_b["source"] == "api"
    })
    .await;
    assert!(on_b, "B does not have the API subscription c-own");

    // C's file gains c-new by a reload; its deliveries (to a refusing receiver) stay
    // pending when D starts without it.
    refusing.store(true, Ordering::SeqCst);
    let path = db.dir.path().join("cat-c.yaml");
    let mut file = std::fs::read_to_string(&path).unwrap();
    file.push_str(&format!(
        "  - {{name: c-new, url: '{}', events: ['new.*'], retries: 20, backoff: {{schedule: [300ms], overload_floor: 0s}}, circuit: {{cool_down: 300ms}}}}\n",
        yaml_rx.url("/new")
    ));
    std::fs::write(&path, file).unwrap();
    let reloaded = deadline(|| async { !c.take_logged("config reloaded").is_empty() }).await;
    assert!(reloaded, "C did not reload its file");
    assert_eq!(c.post(&event("new.e", "n-1")).await, 202);
    let d = Replica::start(&db, "cat-d", pg, "");
    let states = matched(&d, "n-1").await;
    assert_eq!(states.len(), 1, "{states:?}");
    assert_eq!(states[0].0, "c-new");
    assert_ne!(
        states[0].1, "orphaned",
        "D's start orphaned c-new, which C declares"
    );
    refusing.store(false, Ordering::SeqCst);
    let delivered = deadline(|| async {
        matched(&d, "n-1").await == [("c-new".to_string(), "delivered".to_string())]
    })
    .await;
    assert!(delivered, "c-new's delivery was not delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn api_subscriptions_are_shared_through_listen_notify() {
    // A long interval: only the notifications can make it within the second.
    api_subscriptions_are_shared("sync_interval: 30s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn api_subscriptions_are_shared_by_the_periodic_resync_alone() {
    // Nothing listens on port 1: no notification ever arrives.
    api_subscriptions_are_shared(
        "direct_url: 'postgres://root@127.0.0.1:1/test', sync_interval: 300ms",
    )
    .await;
}
