//! One pull queue across relays sharing a schema: notifications accepted concurrently by
//! several relays are handed out in id order, and no id is handed out ahead of one that
//! commits later (the queue lock of `accept`): a group held up between its ids and its
//! commit holds back the groups after it.

use std::sync::Arc;
use std::time::Duration;

use super::PostgresStore;
use super::db::locks;
use super::tests::{admin, eventually, storage};
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
    // Rounds, each on a queue of its own: without the queue lock, one round in five or so
    // hands an id out ahead of one that commits later.
    for round in 0..ROUNDS {
        one_round(&stores, &format!("q{round}")).await;
    }
    // Run here rather than as a test of its own: the two at once in one process have made
    // this one's store calls stall (seen twice, not understood; see the branch's report).
    a_group_committing_late_holds_back_the_notifications_stored_after_it().await;
}

const ROUNDS: usize = 10;
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

/// A group of relay A is held up after its INSERT drew its ids (a test trigger waits for a
/// lock the test holds) while relay B stores a later notification: B's group waits for A's
/// (queue lock), so the consumer sees neither until A commits, then both in id order.
/// Without the lock B commits first, the consumer takes B's higher id, then A's lower one.
async fn a_group_committing_late_holds_back_the_notifications_stored_after_it() {
    const HOLD: i32 = 4242;
    let schema = SchemaGuard::new();
    let pg = pg_settings(&schema.0);
    let a = PostgresStore::open_as(&pg, &storage(&pg), metrics(), "host-a")
        .await
        .unwrap();
    let b = Arc::new(
        PostgresStore::open_as(&pg, &storage(&pg), metrics(), "host-b")
            .await
            .unwrap(),
    );
    let s = &schema.0;
    let db = admin().await;
    db.batch_execute(&format!(
        "CREATE FUNCTION \"{s}\".hold() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM pg_advisory_xact_lock_shared({HOLD}, 1); RETURN NEW; END $$;
         CREATE TRIGGER hold AFTER INSERT ON \"{s}\".deliveries FOR EACH ROW
             WHEN (NEW.subscription = 'slow') EXECUTE FUNCTION \"{s}\".hold();
         SELECT pg_advisory_lock({HOLD}, 1);"
    ))
    .await
    .unwrap();
    let waiting_on = |class: i32| {
        let db = &db;
        async move {
            let row = db
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                     AND classid::int8 = $1::int8
                     AND objid::int8 IN (1, hashtext($2)::int8 & 4294967295)",
                    &[&i64::from(class), &s],
                )
                .await
                .unwrap();
            row.get::<_, i64>(0) > 0
        }
    };

    // A's group: a notification of `q` and a delivery of `slow`, which holds it up.
    let mut late = accepted("late", now_ms(), &["q", "slow"]);
    late.deliveries[0].pulled = true;
    let a_accepts = tokio::spawn(async move { a.accept(vec![late]).await });
    assert!(
        eventually(|| waiting_on(HOLD)).await,
        "A's group was not held up"
    );
    // B's: a later notification of `q`, stored (without the lock) or waiting for A's group.
    let b_accepts = {
        let b = b.clone();
        tokio::spawn(async move { b.accept(pulled_batch("after", "q", 0, 1)).await })
    };
    assert!(
        eventually(|| async { b_accepts.is_finished() || waiting_on(locks::QUEUE).await }).await
    );
    let mut taken: Vec<i64> = Vec::new();
    let first = b
        .pull("q".into(), now_ms(), 10, PullMode::Hide(600_000))
        .await
        .unwrap();
    taken.extend(first.notifications.iter().map(|n| n.id));

    db.batch_execute(&format!("SELECT pg_advisory_unlock({HOLD}, 1)"))
        .await
        .unwrap();
    let Admission::Stored(late_ids) = &a_accepts.await.unwrap().unwrap()[0] else {
        panic!("a new event was taken for a duplicate")
    };
    let Admission::Stored(after_ids) = &b_accepts.await.unwrap().unwrap()[0] else {
        panic!("a new event was taken for a duplicate")
    };
    assert!(late_ids[0] < after_ids[1], "A's group drew its ids first");
    let rest = b
        .pull("q".into(), now_ms(), 10, PullMode::Hide(600_000))
        .await
        .unwrap();
    taken.extend(rest.notifications.iter().map(|n| n.id));
    assert_eq!(
        taken,
        [late_ids[0], after_ids[1]],
        "handed out out of order, or one was lost"
    );
}
