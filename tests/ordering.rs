//! Ordered delivery: per key (a field of `data`) or for the whole subscription (`fifo`),
//! deliveries reach the receiver in acceptance order, also across retries and restarts.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use common::{Backend, TestDb, TestRelay, poll};
use serde_json::{Value, json};

/// A receiver that answers `500` to the first attempt of the events `fail` picks, and
/// records every attempt's `(key, seq)` in arrival order.
#[derive(Clone)]
struct OrderedReceiver {
    attempts: Arc<Mutex<Vec<(String, u64)>>>,
    failed_once: Arc<Mutex<HashSet<u64>>>,
    fail: Arc<dyn Fn(u64) -> bool + Send + Sync>,
}

impl OrderedReceiver {
    async fn start(
        fail: impl Fn(u64) -> bool + Send + Sync + 'static,
    ) -> (OrderedReceiver, String) {
        let rx = OrderedReceiver {
            attempts: Arc::default(),
            failed_once: Arc::default(),
            fail: Arc::new(fail),
        };
        let app = axum::Router::new().fallback(receive).with_state(rx.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (rx, url)
    }

    fn attempts(&self) -> Vec<(String, u64)> {
        self.attempts.lock().unwrap().clone()
    }
}

async fn receive(State(rx): State<OrderedReceiver>, _: HeaderMap, body: Bytes) -> StatusCode {
    let data: Value = serde_json::from_slice(&body).unwrap();
    let seq = data["seq"].as_u64().unwrap();
    let key = data["sender"].as_str().unwrap_or("").to_string();
    rx.attempts.lock().unwrap().push((key, seq));
    if (rx.fail)(seq) && rx.failed_once.lock().unwrap().insert(seq) {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::OK
}

/// Per key: the seqs attempted, in arrival order.
fn by_key(attempts: &[(String, u64)]) -> HashMap<String, Vec<u64>> {
    let mut out: HashMap<String, Vec<u64>> = HashMap::new();
    for (key, seq) in attempts {
        out.entry(key.clone()).or_default().push(*seq);
    }
    out
}

async fn each_key_arrives_in_order_while_keys_interleave(backend: Backend) {
    let db = TestDb::new(backend);
    // Every third event of each key fails its first attempt.
    let (rx, url) = OrderedReceiver::start(|seq| (seq / 3) % 3 == 0).await;
    let relay = TestRelay::on(
        &db,
        &format!(
            "subscriptions:\n  - {{name: ordered, url: '{url}', events: ['*'], max_in_flight: 8, \
         retries: 5, backoff: {{schedule: [30ms]}}, ordering: {{key: sender}}}}\n"
        ),
    )
    .await;
    let keys = ["a", "b", "c"];
    for seq in 0..300u64 {
        let event = json!({"type": "t", "data": {"sender": keys[seq as usize % 3], "seq": seq}});
        assert_eq!(relay.post(&event).await.0, 202);
    }
    relay.wait_outcome("ordered", "delivered", 300.0).await;

    let attempts = rx.attempts();
    for (key, seqs) in by_key(&attempts) {
        // Strictly in acceptance order: a retry repeats its seq, nothing overtakes it.
        assert!(
            seqs.windows(2).all(|w| w[0] <= w[1]),
            "key {key} out of order: {seqs:?}"
        );
        let mut unique = seqs.clone();
        unique.dedup();
        assert_eq!(unique.len(), 100, "key {key}: {unique:?}");
        assert_eq!(
            seqs.len(),
            100 + 34,
            "key {key}: one retry per failed event"
        );
    }
    // Keys go on while another waits for its retry: the arrivals switch keys often.
    let switches = attempts.windows(2).filter(|w| w[0].0 != w[1].0).count();
    assert!(
        switches > 100,
        "keys did not interleave: {switches} switches"
    );
    relay.stop().await;
}

async fn fifo_holds_across_a_restart(backend: Backend) {
    let db = TestDb::new(backend);
    // Event 0 fails its first attempt; the others wait behind its retry, and still do after
    // the relay restarts. (A head that fails for good lets the next go: the store's tests.)
    let (rx, url) = OrderedReceiver::start(|seq| seq == 0).await;
    let yaml = format!(
        "subscriptions:\n  - {{name: fifo, url: '{url}', events: ['*'], max_in_flight: 4, \
         retries: 1, backoff: {{schedule: [1500ms]}}, ordering: fifo}}\n"
    );
    let relay = TestRelay::on(&db, &yaml).await;
    for seq in 0..5u64 {
        relay
            .post(&json!({"type": "t", "data": {"seq": seq}}))
            .await;
    }
    // The head failed once and waits for its retry; nothing behind it was attempted.
    poll(|| async { !rx.attempts().is_empty() }).await;
    relay.stop().await;
    assert_eq!(rx.attempts(), [(String::new(), 0)]);

    let relay = TestRelay::on(&db, &yaml).await;
    relay.wait_outcome("fifo", "delivered", 5.0).await;
    let seqs: Vec<u64> = rx.attempts().iter().map(|(_, s)| *s).collect();
    assert_eq!(seqs, [0, 0, 1, 2, 3, 4]);
    relay.stop().await;
}

crate::both_backends!(
    each_key_arrives_in_order_while_keys_interleave,
    fifo_holds_across_a_restart,
);
