//! Three relay processes on one PostgreSQL schema: a pull subscription is one queue (a
//! consumer polling any relay takes the notifications every relay accepted, oldest first,
//! each once, a long poll waking for another relay's events), and an ordering key holds
//! across relays (in post order, never two at once).

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use common::replicas::{start_all, wait_replicas};
use common::{Backend, TestDb, api_request};
use reqwest::Method;
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// A request to a relay's API listener at `at`: the status and the JSON answer.
async fn api(at: SocketAddr, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let (status, answer, _) = api_request(&client(), at, method, path, body, None).await;
    (status, answer)
}

/// Posts one event to the app listener at `app`; returns the status.
async fn post(app: &str, event: &Value) -> u16 {
    client()
        .post(format!("http://{app}/v1/events"))
        .header("content-type", "application/json")
        .body(event.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// When an event's post was sent and when its 202 came back.
#[derive(Clone, Copy)]
struct Posted {
    sent: Instant,
    accepted: Instant,
}

/// Posts `n` events `{prefix}{i}` to the app listener at `app`, one after the other (each
/// accepted before the next is sent).
async fn post_in_turn(app: String, prefix: &str, n: usize) -> Vec<(String, Posted)> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{prefix}{i}");
        let sent = Instant::now();
        let status = post(&app, &json!({"type": "t", "id": id, "data": {"i": i}})).await;
        assert_eq!(status, 202, "{id}");
        out.push((
            id,
            Posted {
                sent,
                accepted: Instant::now(),
            },
        ));
    }
    out
}

/// The notifications of a pull answer: (notification id, event id).
fn notifications(list: &Value) -> Vec<(i64, String)> {
    list["notifications"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|n| {
            (
                n["id"].as_i64().unwrap(),
                n["event_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

const PULL_YAML: &str = "release: {min_interval: 0s}\nsubscriptions:\n  - {name: q, mode: pull, events: ['t'], pull: {ack: explicit, visibility_timeout: 60s}}\n  - {name: lp, mode: pull, events: ['lp'], pull: {ack: auto}}\n";

/// (b) A and B accept events at once while a consumer polls C with explicit acks: it takes
/// every event once, none lost, oldest first: each relay's in its accept order, and an
/// event accepted anywhere before another was posted comes first. Then a long poll on C
/// returns an event accepted by A.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn a_consumer_on_one_relay_takes_every_relays_events_oldest_first_each_once() {
    const EACH: usize = 150;
    let db = TestDb::new(Backend::Postgres);
    let relays = start_all(&db, &["pull-a", "pull-b", "pull-c"], "", PULL_YAML);
    wait_replicas(&relays.iter().collect::<Vec<_>>(), 3.0).await;
    let consumer = relays[2].binary.api;

    let posters: Vec<_> = [(0, "a-"), (1, "b-")]
        .into_iter()
        .map(|(r, prefix)| {
            let app = relays[r].binary.app.clone();
            tokio::spawn(async move { post_in_turn(app, prefix, EACH).await })
        })
        .collect();
    // Polled while the others post, each batch acknowledged before the next poll.
    let mut taken: Vec<(i64, String)> = Vec::new();
    let end = Instant::now() + Duration::from_secs(60);
    while taken.len() < 2 * EACH {
        assert!(
            Instant::now() < end,
            "only {} of {} taken",
            taken.len(),
            2 * EACH
        );
        let (status, list) = api(
            consumer,
            Method::GET,
            "/v1/subscriptions/q/notifications?limit=7&wait=1s",
            None,
        )
        .await;
        assert_eq!(status, 200, "{list}");
        let batch = notifications(&list);
        if batch.is_empty() {
            continue;
        }
        let ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
        let (status, answer) = api(
            consumer,
            Method::POST,
            "/v1/subscriptions/q/notifications/ack",
            Some(json!({ "ids": ids })),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["acked"], ids.len(), "{answer}");
        taken.extend(batch);
    }
    let mut posted: HashMap<String, Posted> = HashMap::new();
    for p in posters {
        posted.extend(p.await.unwrap());
    }

    // Each once, none lost.
    let events: Vec<&str> = taken.iter().map(|(_, e)| e.as_str()).collect();
    let unique: HashSet<&str> = events.iter().copied().collect();
    assert_eq!(unique.len(), events.len(), "an event was taken twice");
    assert_eq!(unique.len(), posted.len());
    assert!(posted.keys().all(|id| unique.contains(id.as_str())));
    // Handed out in queue order, which is commit order.
    assert!(
        taken.windows(2).all(|w| w[0].0 < w[1].0),
        "not in id order: {taken:?}"
    );
    // Each relay's events in its accept order.
    for prefix in ["a-", "b-"] {
        let mine: Vec<usize> = events
            .iter()
            .filter_map(|e| e.strip_prefix(prefix))
            .map(|i| i.parse().unwrap())
            .collect();
        assert_eq!(mine, (0..EACH).collect::<Vec<_>>(), "{prefix} out of order");
    }
    // Across relays: an event accepted before another was even posted is taken first.
    let position: HashMap<&str, usize> = events.iter().enumerate().map(|(i, e)| (*e, i)).collect();
    let mut compared = 0;
    for (x, px) in &posted {
        for (y, py) in &posted {
            if x[..2] != y[..2] && px.accepted < py.sent {
                compared += 1;
                assert!(
                    position[x.as_str()] < position[y.as_str()],
                    "{x} was accepted before {y} was posted, yet taken after it"
                );
            }
        }
    }
    assert!(compared > 0);
    let (_, left) = api(
        consumer,
        Method::GET,
        "/v1/subscriptions/q/notifications?limit=10",
        None,
    )
    .await;
    assert_eq!(left, json!({"notifications": [], "remaining": 0}));

    // A long poll on C, waiting on an empty queue, returns the event A accepts meanwhile
    // (within the 1 s pickup of another relay's arrivals, not at the end of its wait).
    let poller = {
        tokio::spawn(async move {
            let (status, answer) = api(
                consumer,
                Method::GET,
                "/v1/subscriptions/lp/notifications/next?wait=20s",
                None,
            )
            .await;
            (status, answer, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poller.is_finished(), "the long poll did not wait");
    assert_eq!(
        relays[0]
            .post(&json!({"type": "lp", "id": "woke", "data": {}}))
            .await,
        202
    );
    let posted_at = Instant::now();
    let (status, answer, answered_at) = poller.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["event_id"], "woke", "{answer}");
    let after = answered_at - posted_at;
    assert!(
        after < Duration::from_secs(3),
        "the long poll took {after:?} to see A's event"
    );
}

/// A receiver for one ordering key: records each request's `seq` (the body is the data), counts requests in flight
/// (more than one at a time is recorded), holds each a little, and fails the first attempt
/// of every fifth event.
#[derive(Default)]
struct KeyReceiver {
    seqs: Mutex<Vec<u64>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    failed_once: Mutex<HashSet<u64>>,
}

async fn receive_keyed(State(rx): State<Arc<KeyReceiver>>, Json(body): Json<Value>) -> StatusCode {
    let now = rx.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    rx.most_in_flight.fetch_max(now, Ordering::SeqCst);
    let seq = body["seq"].as_u64().unwrap_or(u64::MAX);
    rx.seqs.lock().unwrap().push(seq);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let fail = seq % 5 == 0 && rx.failed_once.lock().unwrap().insert(seq);
    rx.in_flight.fetch_sub(1, Ordering::SeqCst);
    if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

/// (e) One ordering key posted alternately to A and B arrives in post order (a retry
/// repeats its event; nothing overtakes it) and never two requests at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn one_ordering_key_posted_to_two_relays_arrives_in_post_order_one_at_a_time() {
    const EVENTS: u64 = 40;
    let rx = Arc::new(KeyReceiver::default());
    let app = axum::Router::new()
        .fallback(axum::routing::post(receive_keyed))
        .with_state(rx.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let db = TestDb::new(Backend::Postgres);
    let yaml = format!(
        "subscriptions:\n  - {{name: ordered, url: '{url}', events: ['*'], max_in_flight: 8, \
         retries: 5, backoff: {{schedule: [100ms], overload_floor: 0s}}, ordering: {{key: sender}}}}\n"
    );
    let relays = start_all(&db, &["key-a", "key-b", "key-c"], "", &yaml);
    wait_replicas(&relays.iter().collect::<Vec<_>>(), 3.0).await;

    for seq in 0..EVENTS {
        let relay = &relays[(seq % 2) as usize];
        let event = json!({"type": "t", "data": {"sender": "one", "seq": seq}});
        assert_eq!(relay.post(&event).await, 202, "event {seq}");
    }
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let mut delivered = 0.0;
        for r in &relays {
            delivered += r
                .metric(
                    "hookrelay_deliveries_total",
                    &[("subscription", "ordered"), ("outcome", "delivered")],
                )
                .await
                .unwrap_or(0.0);
        }
        if delivered >= EVENTS as f64 {
            break;
        }
        assert!(Instant::now() < end, "{delivered} of {EVENTS} delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let seqs = rx.seqs.lock().unwrap().clone();
    assert!(
        seqs.windows(2).all(|w| w[0] <= w[1]),
        "out of post order: {seqs:?}"
    );
    let mut unique = seqs.clone();
    unique.dedup();
    assert_eq!(unique, (0..EVENTS).collect::<Vec<_>>());
    assert_eq!(
        seqs.len() as u64,
        EVENTS + EVENTS.div_ceil(5),
        "one retry per failed event: {seqs:?}"
    );
    assert_eq!(
        rx.most_in_flight.load(Ordering::SeqCst),
        1,
        "two requests of the key at once"
    );
}
