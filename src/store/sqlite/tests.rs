//! Tests of the SQLite store, through the `Store` trait on in-memory and file databases.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus::Histogram;
use rusqlite::Connection;

use super::claims::{CLAIM_DUE, NEXT_DUE};
use super::pull::{NEXT_VISIBLE, REMAINING};
use super::schema::{self, MIGRATIONS, SCHEMA_VERSION, check_file};
use super::{SqliteStore, WriterMetrics, sql_error};
use crate::event::{Event, RawMeta};
use crate::store::settings::{StorageLocation, StorageSettings};
use crate::store::{
    Accepted, Admission, DeliveryQuery, DeliveryState, EventStatus, NewDelivery, Outcome, PullMode,
    Pulled, QueueStats, Release, Store, StoreError, StoredSubscription, state_code,
};

fn metrics() -> WriterMetrics {
    let h = || Histogram::with_opts(prometheus::HistogramOpts::new("h", "h")).unwrap();
    WriterMetrics {
        commit_duration: h(),
        batch_size: h(),
    }
}

fn memory() -> SqliteStore {
    let settings = StorageSettings {
        location: StorageLocation::Memory,
        ..StorageSettings::default()
    };
    SqliteStore::open(&settings, metrics()).unwrap()
}

fn accepted(id: &str, at: i64, subs: &[&str]) -> Accepted {
    let event = Event {
        id: id.into(),
        event_type: "t".into(),
        data: Bytes::from_static(b"{\"k\":1}"),
        received_at_ms: at,
        raw: None,
    };
    let deliveries = subs.iter().map(|s| NewDelivery::new(Arc::from(*s)));
    Accepted::new(event, deliveries.collect())
}

#[tokio::test]
async fn claims_in_order_and_schedules_retries() {
    let s = memory();
    s.accept(vec![
        accepted("e1", 100, &["a", "b"]),
        accepted("e2", 200, &["a"]),
    ])
    .await
    .unwrap();
    assert!(s.claim_due("a", 50, 10).await.unwrap().is_empty());
    let claimed = s.claim_due("a", 1000, 10).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|d| d.event_id.to_string()).collect();
    assert_eq!(ids, ["e1", "e2"]);
    assert_eq!(&claimed[0].data[..], b"{\"k\":1}");
    assert!(
        s.claim_due("a", 1000, 10).await.unwrap().is_empty(),
        "claimed once"
    );
    s.complete(
        claimed[0].id,
        Outcome::Retry {
            at_ms: 5000,
            status: Some(500),
            error: "HTTP 500".into(),
        },
    )
    .await
    .unwrap();
    s.complete(claimed[1].id, Outcome::Delivered { status: 200 })
        .await
        .unwrap();
    assert_eq!(s.next_due_ms("a").await.unwrap(), Some(5000));
    let again = s.claim_due("a", 5000, 10).await.unwrap();
    assert_eq!(again[0].attempts, 1);
    s.complete(
        again[0].id,
        Outcome::Failed {
            status: None,
            error: "x".into(),
        },
    )
    .await
    .unwrap();
    let stats = s.stats().await.unwrap();
    assert_eq!(
        stats["a"],
        QueueStats {
            depth: 0,
            oldest_ms: None,
            dead_letters: 1,
            orphaned: 0,
        }
    );
    assert_eq!(stats["b"].depth, 1);
    assert_eq!(stats["b"].oldest_ms, Some(100));

    let status = s.event_status("e1").await.unwrap().unwrap();
    let states: Vec<_> = status
        .deliveries
        .iter()
        .map(|d| (d.subscription.as_str(), d.state, d.attempts))
        .collect();
    assert_eq!(
        states,
        [
            ("a", DeliveryState::Failed, 2),
            ("b", DeliveryState::Pending, 0)
        ]
    );
    assert_eq!(status.deliveries[0].last_error.as_deref(), Some("x"));
    assert_eq!(status.deliveries[0].last_status, None);
    assert!(s.event_status("nope").await.unwrap().is_none());
}

#[tokio::test]
async fn duplicates_return_the_original_result() {
    let s = memory();
    let first = s.accept(vec![accepted("e1", 1, &["a"])]).await.unwrap();
    assert!(matches!(&first[..], [Admission::Stored(ids)] if ids.len() == 1));
    let again = s
        .accept(vec![accepted("e1", 2, &["b", "c"])])
        .await
        .unwrap();
    assert_eq!(
        again,
        [Admission::Duplicate {
            subscriptions: vec!["a".into()]
        }]
    );
    assert_eq!(s.stats().await.unwrap()["a"].depth, 1);
    assert!(!s.stats().await.unwrap().contains_key("b"));
}

#[tokio::test]
async fn release_is_rate_limited_per_scope() {
    let s = memory();
    s.accept(vec![accepted("e1", 1, &["a"])]).await.unwrap();
    let d = s.claim_due("a", 10, 1).await.unwrap();
    s.complete(
        d[0].id,
        Outcome::Failed {
            status: Some(500),
            error: "x".into(),
        },
    )
    .await
    .unwrap();
    let all = vec!["a".to_string()];
    assert_eq!(
        s.release(None, all.clone(), 100, 1000).await.unwrap(),
        Release::Released(1)
    );
    assert_eq!(
        s.release(None, all.clone(), 500, 1000).await.unwrap(),
        Release::TooSoon {
            next_allowed_ms: 1100
        }
    );
    // Another scope has its own clock.
    assert_eq!(
        s.release(Some("a".into()), all.clone(), 500, 1000)
            .await
            .unwrap(),
        Release::Released(0)
    );
    assert_eq!(
        s.release(None, all, 1100, 1000).await.unwrap(),
        Release::Released(0)
    );
    let again = s.claim_due("a", 200, 1).await.unwrap();
    assert_eq!(again[0].attempts, 0, "fresh retry budget");
}

#[tokio::test]
async fn expiry_and_pruning() {
    let settings = StorageSettings {
        location: StorageLocation::Memory,
        ttl: Duration::from_millis(100),
        retention: Duration::from_millis(1000),
        ..StorageSettings::default()
    };
    let s = SqliteStore::open(&settings, metrics()).unwrap();
    s.accept(vec![accepted("e1", 0, &["a"]), accepted("e2", 0, &["a"])])
        .await
        .unwrap();
    let d = s.claim_due("a", 0, 1).await.unwrap();
    s.complete(d[0].id, Outcome::Delivered { status: 200 })
        .await
        .unwrap();
    let report = s.housekeeping(100).await.unwrap();
    assert_eq!(report.expired.get("a"), Some(&1));
    assert_eq!(
        s.event_status("e2").await.unwrap().unwrap().deliveries[0].state,
        DeliveryState::Expired
    );
    assert_eq!(s.housekeeping(100).await.unwrap().expired.len(), 0);
    // The delivered row and the expired one are pruned after retention, then their events.
    let now = crate::time::now_ms();
    let report = s.housekeeping(now + 2000).await.unwrap();
    assert_eq!(report.pruned, 4, "{report:?}");
    assert!(s.event_status("e1").await.unwrap().is_none());
}

#[tokio::test]
async fn deleting_a_subscription_cancels_its_deliveries_also_those_stored_later() {
    let s = memory();
    let sub = StoredSubscription {
        id: "id-1".into(),
        name: "api-sub".into(),
        spec: r#"{"url":"http://h/"}"#.into(),
        created_at_ms: 1,
        updated_at_ms: 1,
    };
    s.save_subscription(sub.clone()).await.unwrap();
    assert_eq!(s.subscriptions().await.unwrap(), vec![sub]);
    s.accept(vec![accepted("e0", 0, &["api-sub"])])
        .await
        .unwrap();
    let dead = s.claim_due("api-sub", 0, 1).await.unwrap();
    let failed = Outcome::Failed {
        status: Some(500),
        error: "HTTP 500".into(),
    };
    s.complete(dead[0].id, failed).await.unwrap();
    s.accept(vec![accepted("e1", 0, &["api-sub", "other"])])
        .await
        .unwrap();
    let cancelled = s
        .delete_subscription("id-1".into(), "api-sub".into(), 5)
        .await
        .unwrap();
    assert_eq!(cancelled, 1);
    assert!(s.subscriptions().await.unwrap().is_empty());
    // Matched before the delete, stored after it: cancelled too, never left pending.
    s.accept(vec![accepted("e2", 6, &["api-sub"])])
        .await
        .unwrap();
    let status = s.event_status("e2").await.unwrap().unwrap();
    assert_eq!(status.deliveries[0].state, DeliveryState::Cancelled);
    assert!(s.claim_due("api-sub", 100, 10).await.unwrap().is_empty());
    assert_eq!(s.claim_due("other", 100, 10).await.unwrap().len(), 1);
    // The name in use again: new deliveries are pending as usual.
    let again = StoredSubscription {
        id: "id-2".into(),
        name: "api-sub".into(),
        spec: "{}".into(),
        created_at_ms: 7,
        updated_at_ms: 7,
    };
    s.save_subscription(again).await.unwrap();
    // The old subscription's dead letter went with it: nothing to release to the new one.
    let release = s
        .release(None, vec!["api-sub".into()], 100, 0)
        .await
        .unwrap();
    assert_eq!(release, Release::Released(0));
    s.accept(vec![accepted("e3", 8, &["api-sub"])])
        .await
        .unwrap();
    assert_eq!(s.claim_due("api-sub", 100, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn retiring_a_config_subscription_orphans_its_deliveries_until_it_returns() {
    let s = memory();
    s.accept(vec![accepted("e0", 0, &["gone", "kept"])])
        .await
        .unwrap();
    let (orphaned, resumed) = s
        .retire_subscriptions(vec!["gone".into()], vec![])
        .await
        .unwrap();
    assert_eq!((orphaned, resumed), (1, 0));
    // Matched before the reload, stored after it: orphaned too, never left pending.
    s.accept(vec![accepted("e1", 1, &["gone"])]).await.unwrap();
    let status = s.event_status("e1").await.unwrap().unwrap();
    assert_eq!(status.deliveries[0].state, DeliveryState::Orphaned);
    assert!(s.claim_due("gone", 100, 10).await.unwrap().is_empty());
    assert_eq!(s.claim_due("kept", 100, 10).await.unwrap().len(), 1);
    // Back in the config: both resume, and new deliveries are pending as usual.
    let (orphaned, resumed) = s
        .retire_subscriptions(vec![], vec!["gone".into()])
        .await
        .unwrap();
    assert_eq!((orphaned, resumed), (0, 2));
    s.accept(vec![accepted("e2", 2, &["gone"])]).await.unwrap();
    assert_eq!(s.claim_due("gone", 100, 10).await.unwrap().len(), 3);
}

fn ordered(id: &str, at: i64, sub: &str, key: &str) -> Accepted {
    let mut a = accepted(id, at, &[sub]);
    a.deliveries[0].ordering_key = Some(key.to_string());
    a
}

async fn claim_ids(s: &SqliteStore, sub: &str) -> Vec<String> {
    s.claim_due(sub, 1_000_000, 100)
        .await
        .unwrap()
        .iter()
        .map(|d| d.event_id.to_string())
        .collect()
}

#[tokio::test]
async fn ordered_deliveries_go_one_at_a_time_per_key() {
    let s = memory();
    s.accept(vec![
        ordered("a1", 1, "o", "\"a\""),
        ordered("b1", 2, "o", "\"b\""),
        ordered("a2", 3, "o", "\"a\""),
        ordered("a3", 4, "o", "\"a\""),
    ])
    .await
    .unwrap();
    // Only the head of each key is claimable.
    assert_eq!(claim_ids(&s, "o").await, ["a1", "b1"]);
    assert_eq!(
        s.event_status("a2").await.unwrap().unwrap().deliveries[0].state,
        DeliveryState::Waiting
    );
    let id_of = |status: EventStatus| status.deliveries[0].id;
    let a1 = id_of(s.event_status("a1").await.unwrap().unwrap());
    // A retry keeps the key blocked; the head is retried first.
    s.complete(
        a1,
        Outcome::Retry {
            at_ms: 50,
            status: Some(500),
            error: "HTTP 500".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(claim_ids(&s, "o").await, ["a1"]);
    // It finally fails: the next one goes.
    s.complete(
        a1,
        Outcome::Failed {
            status: Some(500),
            error: "HTTP 500".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(claim_ids(&s, "o").await, ["a2"]);
    let a2 = id_of(s.event_status("a2").await.unwrap().unwrap());
    s.complete(a2, Outcome::Delivered { status: 200 })
        .await
        .unwrap();
    assert_eq!(claim_ids(&s, "o").await, ["a3"]);
    // Released, the dead letter goes out again without blocking its key.
    s.accept(vec![ordered("a4", 5, "o", "\"a\"")])
        .await
        .unwrap();
    let released = s.release(None, vec!["o".into()], 100, 0).await.unwrap();
    assert_eq!(released, Release::Released(1));
    assert_eq!(claim_ids(&s, "o").await, ["a1"]);
    let a3 = id_of(s.event_status("a3").await.unwrap().unwrap());
    s.complete(a3, Outcome::Delivered { status: 200 })
        .await
        .unwrap();
    assert_eq!(claim_ids(&s, "o").await, ["a4"]);
}

#[tokio::test]
async fn an_expired_head_lets_its_key_go_and_unordering_frees_the_rest() {
    let s = memory();
    let mut head = ordered("h", 0, "o", "");
    head.deliveries[0].ttl_ms = Some(10);
    s.accept(vec![
        head,
        ordered("n1", 1, "o", ""),
        ordered("n2", 2, "o", ""),
    ])
    .await
    .unwrap();
    s.housekeeping(100).await.unwrap();
    let state = |st: EventStatus| st.deliveries[0].state;
    assert_eq!(
        state(s.event_status("h").await.unwrap().unwrap()),
        DeliveryState::Expired
    );
    assert_eq!(
        state(s.event_status("n1").await.unwrap().unwrap()),
        DeliveryState::Pending
    );
    assert_eq!(
        state(s.event_status("n2").await.unwrap().unwrap()),
        DeliveryState::Waiting
    );
    // Ordering turned off: nothing waits any more.
    assert_eq!(s.clear_ordering(vec!["o".into()]).await.unwrap(), 2);
    assert_eq!(claim_ids(&s, "o").await, ["n1", "n2"]);
}

#[tokio::test]
async fn a_version_3_file_is_migrated_and_keeps_its_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.db");
    {
        let conn = Connection::open(&path).unwrap();
        for sql in &MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(
            "PRAGMA user_version = 3;
             INSERT INTO events (seq, id, type, received_at, data, subscriptions)
             VALUES (1, 'old', 't', 1, X'7B7D', '[\"a\"]');
             INSERT INTO deliveries (event_seq, subscription, state, received_at, next_attempt_at, expires_at)
             VALUES (1, 'a', 0, 1, 1, 9999999999999);",
        )
        .unwrap();
    }
    let settings = StorageSettings {
        location: StorageLocation::File(path),
        ..StorageSettings::default()
    };
    let s = SqliteStore::open(&settings, metrics()).unwrap();
    assert_eq!(claim_ids(&s, "a").await, ["old"]);
    s.accept(vec![
        ordered("new1", 2, "o", ""),
        ordered("new2", 3, "o", ""),
    ])
    .await
    .unwrap();
    assert_eq!(claim_ids(&s, "o").await, ["new1"]);
}

#[tokio::test]
async fn pulls_take_the_oldest_and_hide_or_consume_them() {
    let s = memory();
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        s.accept(vec![accepted(id, i as i64, &["q"])])
            .await
            .unwrap();
    }
    let ids = |p: &Pulled| -> Vec<String> {
        p.notifications.iter().map(|n| n.event_id.clone()).collect()
    };
    // Hidden for 100 ms: the next pull skips it, then it is back, marked redelivered.
    let p = s
        .pull("q".into(), 10, 1, PullMode::Hide(100))
        .await
        .unwrap();
    assert_eq!((ids(&p), p.remaining), (vec!["a".to_string()], 2));
    assert!(!p.notifications[0].redelivered);
    let p = s
        .pull("q".into(), 20, 5, PullMode::Hide(100))
        .await
        .unwrap();
    assert_eq!(
        (ids(&p), p.remaining),
        (vec!["b".to_string(), "c".to_string()], 0)
    );
    let p = s
        .pull("q".into(), 115, 5, PullMode::Hide(100))
        .await
        .unwrap();
    assert_eq!(ids(&p), ["a"]);
    assert!(p.notifications[0].redelivered);
    let a = p.notifications[0].id;
    assert_eq!(
        s.ack("q".into(), vec![a, a, 77], 116).await.unwrap(),
        vec![a, 77]
    );
    assert_eq!(
        s.ack("other".into(), vec![a + 1], 116).await.unwrap(),
        vec![a + 1]
    );
    // Consumed: gone for good.
    let p = s.pull("q".into(), 500, 5, PullMode::Consume).await.unwrap();
    assert_eq!(
        (ids(&p), p.remaining),
        (vec!["b".to_string(), "c".to_string()], 0)
    );
    let p = s
        .pull("q".into(), 10_000, 5, PullMode::Consume)
        .await
        .unwrap();
    assert!(p.notifications.is_empty());
    let status = s.event_status("b").await.unwrap().unwrap();
    assert_eq!(status.deliveries[0].state, DeliveryState::Delivered);
}

#[tokio::test]
async fn notifications_past_their_ttl_are_not_handed_out() {
    let s = memory();
    let mut late = accepted("late", 0, &["q"]);
    late.deliveries[0].ttl_ms = Some(1000);
    s.accept(vec![late, accepted("kept", 0, &["q"])])
        .await
        .unwrap();
    // Before housekeeping has expired it, a pull already skips it.
    let p = s
        .pull("q".into(), 1000, 5, PullMode::Hide(0))
        .await
        .unwrap();
    let got: Vec<&str> = p
        .notifications
        .iter()
        .map(|n| n.event_id.as_str())
        .collect();
    assert_eq!((got, p.remaining), (vec!["kept"], 1));
}

#[tokio::test]
async fn orphans_wait_for_their_subscription() {
    let s = memory();
    s.accept(vec![accepted("e1", 0, &["gone", "kept"])])
        .await
        .unwrap();
    assert_eq!(
        s.sync_subscriptions(vec!["kept".into()]).await.unwrap(),
        (1, 0)
    );
    assert_eq!(s.stats().await.unwrap()["gone"].orphaned, 1);
    assert!(s.claim_due("gone", 10, 10).await.unwrap().is_empty());
    assert_eq!(
        s.sync_subscriptions(vec!["kept".into(), "gone".into()])
            .await
            .unwrap(),
        (0, 1)
    );
    assert_eq!(s.claim_due("gone", 10, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn dead_letters_can_be_listed_retried_and_deleted() {
    let s = memory();
    s.accept(vec![accepted("e1", 0, &["a"]), accepted("e2", 0, &["a"])])
        .await
        .unwrap();
    for d in s.claim_due("a", 10, 10).await.unwrap() {
        s.complete(
            d.id,
            Outcome::Failed {
                status: Some(500),
                error: "HTTP 500".into(),
            },
        )
        .await
        .unwrap();
    }
    let q = DeliveryQuery {
        state: DeliveryState::Failed,
        subscription: Some("a".into()),
        after: None,
        limit: 1,
    };
    let page = s.deliveries(q.clone()).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].event_id, "e1");
    let next = s
        .deliveries(DeliveryQuery {
            after: Some(page[0].id),
            ..q.clone()
        })
        .await
        .unwrap();
    assert_eq!(next[0].event_id, "e2");
    assert_eq!(
        s.retry_delivery(page[0].id, 20, vec!["a".into()])
            .await
            .unwrap()
            .unwrap()
            .0,
        DeliveryState::Failed
    );
    assert_eq!(s.claim_due("a", 20, 10).await.unwrap().len(), 1);
    assert_eq!(
        s.delete_delivery(next[0].id).await.unwrap(),
        Some(DeliveryState::Failed)
    );
    assert_eq!(s.delete_delivery(next[0].id).await.unwrap(), None);
    assert!(s.deliveries(q).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_version_3_file_migrates_in_place_and_keeps_raw_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.db");
    {
        // A file as the previous release left it: schema 3, one envelope event waiting.
        let conn = Connection::open(&path).unwrap();
        for sql in &MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(
            "PRAGMA user_version = 3;
             INSERT INTO events (seq, id, type, received_at, data, subscriptions)
                 VALUES (1, 'old', 't', 100, CAST('{\"k\":1}' AS BLOB), '[\"a\"]');
             INSERT INTO deliveries (event_seq, subscription, state, received_at, next_attempt_at, expires_at)
                 VALUES (1, 'a', 0, 100, 100, 9000000000000);",
        )
        .unwrap();
    }
    let settings = StorageSettings {
        location: StorageLocation::File(path.clone()),
        ..StorageSettings::default()
    };
    let s = SqliteStore::open(&settings, metrics()).unwrap();
    let raw = Arc::new(RawMeta {
        content_type: "application/xml".into(),
        attributes: vec![("zone".into(), "eu".into())],
    });
    let mut xml = accepted("new", 200, &["a"]);
    xml.event.data = Bytes::from_static(b"<a/>");
    xml.event.raw = Some(raw.clone());
    s.accept(vec![xml]).await.unwrap();
    let claimed = s.claim_due("a", 1_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert_eq!(
        (&*claimed[0].event_id, claimed[0].raw.as_ref()),
        ("old", None)
    );
    assert_eq!(&claimed[0].data[..], b"{\"k\":1}");
    assert_eq!(&*claimed[1].event_id, "new");
    assert_eq!(claimed[1].raw.as_deref(), Some(&*raw));
    let status = s.event_status("new").await.unwrap().unwrap();
    assert_eq!(status.raw.as_deref(), Some(&*raw));
    drop(s);
    let version: i64 = Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

#[test]
fn errors_keep_their_cause_as_source() {
    use std::error::Error;
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x42u8; 8192]).unwrap();
    let err = check_file(&garbage).unwrap_err();
    let cause = err.source().expect("the SQLite error is kept");
    assert!(cause.to_string().contains("not a database"), "{cause}");

    let conn = Connection::open_in_memory().unwrap();
    let err = conn
        .execute("INSERT INTO nowhere VALUES (1)", [])
        .map_err(sql_error)
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    let cause = err.source().expect("the SQLite error is kept").to_string();
    assert_eq!(err.to_string(), format!("store unavailable: {cause}"));
    // One error answers many callers.
    assert!(err.clone().source().is_some());
}

#[test]
fn refuses_corrupt_and_newer_files() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x42u8; 8192]).unwrap();
    let err = check_file(&garbage).unwrap_err().to_string();
    assert!(
        err.contains("garbage.db") && err.contains("not a database"),
        "{err}"
    );

    let newer = dir.path().join("newer.db");
    Connection::open(&newer)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    let err = check_file(&newer).unwrap_err().to_string();
    assert!(err.contains("schema version 99 is newer"), "{err}");
}

#[test]
fn due_queries_use_the_partial_index() {
    // SQLite uses a partial index only when the WHERE literally implies its predicate. Were
    // the state bound as a parameter (or written with another code), a claim would read and
    // sort a subscription's backlog. Statements naming their index (INDEXED BY) fail to
    // prepare instead, so the tests that run them already cover those.
    let settings = StorageSettings {
        location: StorageLocation::Memory,
        ..StorageSettings::default()
    };
    let conn = schema::open_connection(&settings).unwrap();
    let plan = |sql: &str| -> String {
        let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let mut rows = explain.raw_query();
        let mut steps = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            steps.push(row.get::<_, String>(3).unwrap());
        }
        steps.join("; ")
    };
    for sql in [CLAIM_DUE, NEXT_DUE, REMAINING, NEXT_VISIBLE] {
        let steps = plan(sql);
        assert!(steps.contains("deliveries_due"), "{steps}\n{sql}");
    }
    let bound = CLAIM_DUE.replace(concat!("d.state = ", state_code!(Pending)), "d.state = ?4");
    assert_ne!(bound, CLAIM_DUE);
    let steps = plan(&bound);
    assert!(!steps.contains("deliveries_due"), "{steps}");
}
