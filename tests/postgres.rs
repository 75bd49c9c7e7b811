//! The relay on PostgreSQL storage: events accepted, delivered to a real receiver, and
//! their status read back. Needs a server at `HOOKRELAY_TEST_DATABASE_URL` (default
//! `postgres://root@127.0.0.1:5432/test`); each test uses its own schema and drops it.

mod common;

use common::{Backend, Receiver, TestDb, TestRelay, poll};
use serde_json::{Value, json};

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn events_are_accepted_delivered_and_their_status_read_on_postgres() {
    let db = TestDb::new(Backend::Postgres);
    let rx = Receiver::ok().await;
    let relay = TestRelay::on(
        &db,
        &format!(
            "subscriptions:\n  - {{name: hooks, url: '{}', events: ['*']}}\n",
            rx.url("/hook"),
        ),
    )
    .await;
    let (status, answer) = relay
        .post(&json!({"type": "order.paid", "id": "evt-1", "data": {"n": 1}}))
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer, json!({"id": "evt-1", "subscriptions": ["hooks"]}));
    let batch = json!([
        {"type": "order.paid", "id": "evt-2", "data": {"n": 2}},
        {"type": "order.paid", "id": "evt-3", "data": {"n": 3}},
    ]);
    let r = relay
        .http
        .post(format!("http://{}/v1/events/batch", relay.addrs.app))
        .header("content-type", "application/json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    // A repeated id is answered with the first result, not stored twice.
    let (status, _) = relay
        .post(&json!({"type": "order.paid", "id": "evt-1", "data": {"n": 9}}))
        .await;
    assert_eq!(status, 200);

    let got = rx.wait_for(3).await;
    let mut bodies: Vec<Value> = got
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    bodies.sort_by_key(|b| b["n"].as_i64());
    assert_eq!(bodies, [json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]);
    poll(|| async {
        let (status, body) = relay.event_status("evt-1").await;
        status == 200 && body["deliveries"][0]["state"] == "delivered"
    })
    .await;
    let (_, body) = relay.event_status("evt-1").await;
    assert_eq!(body["deliveries"][0]["subscription"], "hooks");
    assert_eq!(relay.event_status("unknown").await.0, 404);
    assert_eq!(relay.metric("hookrelay_store_up", &[]).await, Some(1.0));
    assert_eq!(rx.count(), 3, "each event delivered once");
    relay.stop().await;
}
