//! One pull queue across relays sharing a schema: notifications accepted concurrently by
//! several relays are handed out in id order, and no id is handed out ahead of one that
//! commits later (the queue lock of `accept`).

use std::sync::Arc;
use std::time::Duration;

use super::PostgresStore;
use super::tests::storage;
use crate::store::tests::{SchemaGuard, accepted, metrics, pg_settings};
use crate::store::{Accepted, Admission, PullMode, Store};
use crate::time::now_ms;

/// `count` events for pull subscription `queue` (and push subscription `p`), ids
/// `prefix-n`.
fn pulled_batch(prefix: &str, queue: &str, from: usize, count: usize) -> Vec<Accepted> {
    (from..from + count)
        .map(|n| {
            let mut a = accepted(&format!("{prefix}-{n}"), now_ms(), &["p", queue]);
            for d in &mut a.deliveries {
                d.pulled = &*d.subscription == queue;
            }
            a
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn a_pull_across_relays_takes_ids_in_commit_order_and_skips_none() {
    let schema = SchemaGuard::new();
    let pg = pg_settings(&schema.0);
    let mut stores = Vec::new();
    for host in ["host-a", "host-b", "host-c"] {
        let store = PostgresStore::open_as(&pg, &storage(&pg), metrics(), host)
            .await
            .unwrap();
        stores.push(Arc::new(store));
    }
    // Rounds, each on a queue of its own: without the queue lock, one round in three or so
    // hands an id out ahead of one that commits later.
    for round in 0..ROUNDS {
        one_round(&stores, &format!("q{round}")).await;
    }
}

const ROUNDS: usize = 6;
const WRITERS: usize = 3;
const CALLS: usize = 10;
const EVENTS: usize = 20;

/// Every relay accepts for `queue` from several tasks at once (groups of different relays
/// overlap in the database) while the consumer polls the third relay, acknowledging as it
/// goes: it takes every id, each once, in increasing order.
async fn one_round(stores: &[Arc<PostgresStore>], queue: &str) {
    let mut writers = Vec::new();
    for (r, store) in stores.iter().enumerate() {
        for w in 0..WRITERS {
            let (store, queue) = (store.clone(), queue.to_string());
            writers.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for call in 0..CALLS {
                    let prefix = format!("{queue}r{r}w{w}");
                    let batch = pulled_batch(&prefix, &queue, call * EVENTS, EVENTS);
                    for admission in store.accept(batch).await.unwrap() {
                        let Admission::Stored(stored) = admission else {
                            panic!("a new event was taken for a duplicate");
                        };
                        // The pull delivery is the second of each event.
                        ids.push(stored[1]);
                    }
                }
                ids
            }));
        }
    }
    let total = stores.len() * WRITERS * CALLS * EVENTS;
    let consumer = &stores[2];
    let mut taken: Vec<i64> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while taken.len() < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {total} taken",
            taken.len()
        );
        let pulled = consumer
            .pull(queue.into(), now_ms(), 7, PullMode::Hide(600_000))
            .await
            .unwrap();
        let ids: Vec<i64> = pulled.notifications.iter().map(|n| n.id).collect();
        for id in &ids {
            if let Some(last) = taken.last() {
                assert!(
                    id > last,
                    "id {id} handed out after {last}: it committed after a later id was taken"
                );
            }
            taken.push(*id);
        }
        if ids.is_empty() {
            tokio::task::yield_now().await;
        } else {
            let unknown = consumer.ack(queue.into(), ids, now_ms()).await.unwrap();
            assert!(unknown.is_empty(), "not acknowledged: {unknown:?}");
        }
    }
    let mut stored = Vec::new();
    for w in writers {
        stored.extend(w.await.unwrap());
    }
    stored.sort_unstable();
    // Each once, none lost: what was taken is exactly what was stored, in order.
    assert_eq!(taken, stored);
    let left = consumer
        .pull(queue.into(), now_ms(), 10, PullMode::Consume)
        .await
        .unwrap();
    assert!(left.notifications.is_empty());
}
