//! Tests of what is SQLite's own: files (migrations of old versions, refusals), error
//! mapping and query plans. The behaviour through the `Store` trait is tested for every
//! backend in `store/tests.rs`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rusqlite::Connection;

use super::claims::{CLAIM_DUE, NEXT_DUE};
use super::pull::{NEXT_VISIBLE, REMAINING};
use super::schema::{self, MIGRATIONS, SCHEMA_VERSION, check_file};
use super::{SqliteStore, sql_error};
use crate::event::RawMeta;
use crate::store::settings::{StorageLocation, StorageSettings};
use crate::store::tests::ATTEMPT;
use crate::store::tests::{accepted, claim_ids, metrics, ordered};
use crate::store::{Outcome, Store, StoreError, state_code};

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
    let claimed = s.claim_due("a", 1_000, 10, Duration::ZERO).await.unwrap();
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

#[tokio::test]
async fn a_version_5_file_carries_its_counts_into_the_budget_and_gains_pause_states() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v5.db");
    {
        // Two attempts made before the upgrade: one still pending, one delivered.
        let conn = Connection::open(&path).unwrap();
        for sql in &MIGRATIONS[..5] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(
            "PRAGMA user_version = 5;
             INSERT INTO events (seq, id, type, received_at, data, subscriptions)
                 VALUES (1, 'old', 't', 100, CAST('{}' AS BLOB), '[\"a\", \"b\"]');
             INSERT INTO deliveries (event_seq, subscription, state, attempts, received_at, next_attempt_at, expires_at)
                 VALUES (1, 'a', 0, 2, 100, 100, 9000000000000),
                        (1, 'b', 2, 2, 100, 100, 9000000000000);",
        )
        .unwrap();
    }
    let settings = StorageSettings {
        location: StorageLocation::File(path.clone()),
        ..StorageSettings::default()
    };
    let s = SqliteStore::open(&settings, metrics()).unwrap();
    let claimed = s.claim_due("a", 1_000, 10, Duration::ZERO).await.unwrap();
    assert_eq!((claimed[0].attempts, claimed[0].budget_used), (2, 2));
    s.complete(
        claimed[0].id,
        claimed[0].token,
        Outcome::Delivered { status: 200 },
        ATTEMPT,
    )
    .await
    .unwrap();
    let history = s.attempts(claimed[0].id).await.unwrap().unwrap();
    assert_eq!(history.len(), 1, "the history starts at the upgrade");
    assert_eq!(history[0].number, 3);
    let status = s.event_status("old").await.unwrap().unwrap();
    assert_eq!(
        status.deliveries[1].budget_used, 0,
        "finished: no budget carried"
    );
    let paused = crate::store::PauseState {
        name: "a".into(),
        paused: true,
        reason: "api".into(),
        since_ms: 1,
    };
    s.set_pause_state(paused.clone()).await.unwrap();
    assert_eq!(s.pause_states().await.unwrap(), vec![paused]);
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
