//! Relays sharing a schema, through the store: claims with tokens and leases, renewal,
//! takeover, hand-back at stop, a restarted relay on its host, one housekeeping pass at a
//! time, tombstones kept for the others, names declared by the others left in force, the
//! catalog revision and its notifications, and the migration to schema version 2.

use std::time::Duration;

use super::tests::{admin, eventually, storage};
use super::{PostgresStore, SCHEMA_VERSION};
use crate::store::settings::PostgresSettings;
use crate::store::tests::{ATTEMPT, SchemaGuard, accepted, metrics, pg_settings};
use crate::store::{Admission, Store};

/// A store on `pg` for a relay on `host`.
async fn open_on(pg: &PostgresSettings, host: &str) -> PostgresStore {
    PostgresStore::open_as(pg, &storage(pg), metrics(), host)
        .await
        .unwrap()
}

/// A delivery's state, claim token and remaining lease (ms, by the database's clock).
async fn claim_of(schema: &str, id: i64) -> (i32, i64, Option<i64>) {
    let row = admin()
        .await
        .query_one(
            &format!(
                "SELECT state, claim_token,
                        lease_until - (extract(epoch from clock_timestamp()) * 1000)::int8
                 FROM \"{schema}\".deliveries WHERE id = $1"
            ),
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Ends the lease of delivery `id` now (as if its relay had stopped renewing it).
async fn lapse(schema: &str, id: i64) {
    admin()
        .await
        .execute(
            &format!("UPDATE \"{schema}\".deliveries SET lease_until = 0 WHERE id = $1"),
            &[&id],
        )
        .await
        .unwrap();
}

const IN_FLIGHT: i32 = crate::store::state_code!(InFlight);
const PENDING: i32 = crate::store::state_code!(Pending);

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn an_outcome_of_a_claim_taken_over_is_fenced_and_changes_nothing() {
    let schema = SchemaGuard::new();
    let pg = pg_settings(&schema.0);
    let (a, b) = (open_on(&pg, "host-a").await, open_on(&pg, "host-b").await);
    a.accept(vec![accepted("e1", 1, &["x"])]).await.unwrap();
    let mine = a.claim_due("x", 10, 10, Duration::ZERO).await.unwrap();
    assert_eq!(mine[0].token, 1);
    let id = mine[0].id;
    // Held with a lease: another relay neither claims nor takes it.
    assert!(
        b.claim_due("x", 10, 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(b.take_over_lapsed().await.unwrap().is_empty());

    lapse(&schema.0, id).await;
    assert_eq!(b.take_over_lapsed().await.unwrap(), ["x"]);
    let theirs = b.claim_due("x", 10, 10, Duration::ZERO).await.unwrap();
    assert_eq!((theirs[0].id, theirs[0].token), (id, 2));
    // The first claim's late outcome is fenced: the row stays the second claim's.
    let late = a
        .complete(
            id,
            1,
            crate::store::Outcome::Delivered { status: 200 },
            ATTEMPT,
        )
        .await
        .unwrap();
    assert_eq!(late, crate::store::Completed::Fenced);
    assert_eq!(claim_of(&schema.0, id).await.0, IN_FLIGHT);
    // Nor can the first claim hand it back.
    a.unclaim(vec![(id, 1)]).await.unwrap();
    assert_eq!(claim_of(&schema.0, id).await.0, IN_FLIGHT);
    let retry = crate::store::Outcome::Retry {
        at_ms: 50,
        status: Some(503),
        error: "HTTP 503".into(),
    };
    assert_eq!(
        b.complete(id, 2, retry, ATTEMPT).await.unwrap(),
        crate::store::Completed::Recorded
    );
    let status = b.event_status("e1").await.unwrap().unwrap();
    assert_eq!(
        (
            status.deliveries[0].attempts,
            status.deliveries[0].last_status
        ),
        (1, Some(503)),
        "one attempt recorded, the second claim's"
    );
    let (state, _, lease) = claim_of(&schema.0, id).await;
    assert_eq!(
        (state, lease),
        (PENDING, None),
        "the lease ends with the outcome"
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn claims_are_renewed_while_held_and_forgotten_once_lost() {
    let schema = SchemaGuard::new();
    let mut pg = pg_settings(&schema.0);
    pg.lease = Duration::from_secs(5);
    let a = open_on(&pg, "host-a").await;
    let mut fresh = accepted("handed", 1, &["x"]);
    fresh.deliveries[0].handed_off = true;
    let admitted = a
        .accept(vec![fresh, accepted("due", 2, &["x"])])
        .await
        .unwrap();
    let Admission::Stored(ids) = &admitted[0] else {
        panic!("{admitted:?}")
    };
    let handed = ids[0];
    let claimed = a
        .claim_due("x", 10, 10, Duration::from_secs(2))
        .await
        .unwrap();
    let due = claimed[0].id;
    // Leases: at least the timeout plus 10 s, by the database's clock.
    let (state, token, lease) = claim_of(&schema.0, handed).await;
    assert_eq!((state, token), (IN_FLIGHT, 1));
    assert!((9_000..=10_000).contains(&lease.unwrap()), "{lease:?}");
    let lease = claim_of(&schema.0, due).await.2.unwrap();
    assert!((11_000..=12_000).contains(&lease), "{lease:?}");

    // Shortened by hand, both are renewed (every third of the 5 s lease) to their length.
    for id in [handed, due] {
        admin()
            .await
            .execute(
                &format!(
                    "UPDATE \"{}\".deliveries SET lease_until = (extract(epoch from clock_timestamp()) * 1000)::int8 + 3000 WHERE id = $1",
                    schema.0
                ),
                &[&id],
            )
            .await
            .unwrap();
    }
    assert!(
        eventually(|| async {
            claim_of(&schema.0, handed).await.2.unwrap() > 8_000
                && claim_of(&schema.0, due).await.2.unwrap() > 10_000
        })
        .await,
        "not renewed"
    );

    // Claimed again meanwhile by another relay (token 2): lost, no longer renewed.
    admin()
        .await
        .execute(
            &format!(
                "UPDATE \"{}\".deliveries SET claim_token = 2 WHERE id = $1",
                schema.0
            ),
            &[&due],
        )
        .await
        .unwrap();
    assert!(
        eventually(|| async { a.held.len() == 1 }).await,
        "only the handed-off claim is still held"
    );
    assert_eq!(super::leases::renew(&a.db, &a.held).await.unwrap(), 0);
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn relays_see_each_other_and_a_stop_hands_claims_back() {
    let schema = SchemaGuard::new();
    let pg = pg_settings(&schema.0);
    let a = open_on(&pg, "host-a").await;
    let b = open_on(&pg, "host-b").await;
    assert_eq!(b.replicas(), 2);
    super::replicas::heartbeat(&a.db, &a.me).await.unwrap();
    assert_eq!(a.replicas(), 2);
    a.accept(vec![accepted("e1", 1, &["x"]), accepted("e2", 2, &["x"])])
        .await
        .unwrap();
    assert_eq!(
        a.claim_due("x", 10, 10, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(
        b.claim_due("x", 10, 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    // Due work of another relay is seen by subscription.
    a.accept(vec![accepted("e3", 3, &["y"])]).await.unwrap();
    assert_eq!(b.due_subscriptions(10).await.unwrap(), ["y"]);
    assert!(b.due_subscriptions(2).await.unwrap().is_empty());

    assert_eq!(a.leave().await.unwrap(), 2);
    let taken = b.claim_due("x", 10, 10, Duration::ZERO).await.unwrap();
    assert_eq!(
        taken.iter().map(|d| d.token).collect::<Vec<_>>(),
        [2, 2],
        "claimed again at once"
    );
    super::replicas::heartbeat(&b.db, &b.me).await.unwrap();
    assert_eq!(b.replicas(), 1, "a left the registry");
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn a_relay_restarted_on_its_host_takes_its_predecessors_claims_at_once() {
    let schema = SchemaGuard::new();
    let pg = pg_settings(&schema.0);
    let crashed = open_on(&pg, "pod-1").await;
    crashed
        .accept(vec![accepted("e1", 1, &["x"])])
        .await
        .unwrap();
    assert_eq!(
        crashed
            .claim_due("x", 10, 10, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        1
    );
    // Gone without leaving (kill -9): another host's relay waits for the lease...
    drop(crashed);
    let other = open_on(&pg, "pod-2").await;
    assert!(
        other
            .claim_due("x", 10, 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    // ...but the relay that replaces it on its host does not.
    let again = open_on(&pg, "pod-1").await;
    let claimed = again.claim_due("x", 10, 10, Duration::ZERO).await.unwrap();
    assert_eq!((claimed.len(), claimed[0].token), (1, 2));
    let hosts: Vec<String> = admin()
        .await
        .query(
            &format!("SELECT host FROM \"{}\".replicas ORDER BY host", schema.0),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(hosts, ["pod-1", "pod-2"], "the predecessor's row is gone");
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn housekeeping_runs_on_one_relay_at_a_time_and_forgets_dead_relays() {
    let schema = SchemaGuard::new();
    let mut pg = pg_settings(&schema.0);
    pg.lease = Duration::from_secs(5);
    let a = open_on(&pg, "host-a").await;
    let mut short = accepted("e1", 0, &["x"]);
    short.deliveries[0].ttl_ms = Some(10);
    a.accept(vec![short]).await.unwrap();
    // Another relay's pass holds the lock: this pass is skipped.
    let mut holder = admin().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&super::db::locks::HOUSEKEEPING, &schema.0],
    )
    .await
    .unwrap();
    assert!(a.housekeeping(100).await.unwrap().expired.is_empty());
    tx.rollback().await.unwrap();
    assert_eq!(
        a.housekeeping(100).await.unwrap().expired.get("x"),
        Some(&1)
    );

    // A relay silent for longer than the lease is removed.
    admin()
        .await
        .execute(
            &format!(
                "INSERT INTO \"{}\".replicas (id, host, started_at, heartbeat_at) VALUES ('dead-000000', 'dead', 0, 0)",
                schema.0
            ),
            &[],
        )
        .await
        .unwrap();
    a.housekeeping(100).await.unwrap();
    let left: i64 = admin()
        .await
        .query_one(
            &format!("SELECT count(*) FROM \"{}\".replicas", schema.0),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1, "only the live relay is left");
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn names_another_live_relay_declares_are_not_orphaned() {
    let schema = SchemaGuard::new();
    let pg = pg_settings(&schema.0);
    let (a, b) = (open_on(&pg, "host-a").await, open_on(&pg, "host-b").await);
    b.declare(vec!["only-b".into()]).await.unwrap();
    a.accept(vec![accepted("e1", 1, &["only-b"])])
        .await
        .unwrap();
    let state = |s: crate::store::EventStatus| s.deliveries[0].state;
    // a starts (its file lacks only-b) and reloads a file that drops it: b still has it.
    a.declare(vec!["kept".into()]).await.unwrap();
    assert_eq!(
        a.sync_subscriptions(vec!["kept".into()]).await.unwrap(),
        (0, 0)
    );
    assert_eq!(
        a.retire_subscriptions(vec!["only-b".into()], vec![])
            .await
            .unwrap(),
        (0, 0)
    );
    a.accept(vec![accepted("e2", 2, &["only-b"])])
        .await
        .unwrap();
    for id in ["e1", "e2"] {
        assert_eq!(
            state(a.event_status(id).await.unwrap().unwrap()),
            crate::store::DeliveryState::Pending,
            "{id}"
        );
    }
    // Once no live relay declares it, a start orphans it.
    b.declare(vec![]).await.unwrap();
    assert_eq!(
        a.sync_subscriptions(vec!["kept".into()]).await.unwrap(),
        (2, 0)
    );
    // A relay registered anew (taken for dead) declares its names again.
    b.declare(vec!["only-b".into()]).await.unwrap();
    admin()
        .await
        .execute(
            &format!(
                "DELETE FROM \"{}\".replicas WHERE host = 'host-b'",
                schema.0
            ),
            &[],
        )
        .await
        .unwrap();
    super::replicas::heartbeat(&b.db, &b.me).await.unwrap();
    let declared: Vec<String> = admin()
        .await
        .query_one(
            &format!(
                "SELECT declared FROM \"{}\".replicas WHERE host = 'host-b'",
                schema.0
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(declared, ["only-b"]);
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn every_change_to_api_subscriptions_moves_the_revision_and_notifies() {
    let schema = SchemaGuard::new();
    let pg = pg_settings(&schema.0);
    let (a, b) = (open_on(&pg, "host-a").await, open_on(&pg, "host-b").await);
    let signal = b.catalog_signal().expect("a listener");
    // The listener signals once connected; take that one first.
    tokio::time::timeout(Duration::from_secs(5), signal.notified())
        .await
        .expect("the listener connects");
    let r0 = b.catalog_revision().await.unwrap().unwrap();
    let sub = crate::store::StoredSubscription {
        id: "id-1".into(),
        name: "n".into(),
        spec: "{}".into(),
        created_at_ms: 1,
        updated_at_ms: 1,
    };
    a.save_subscription(sub.clone()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), signal.notified())
        .await
        .expect("a notification for the create");
    let r1 = b.catalog_revision().await.unwrap().unwrap();
    assert!(r1 > r0, "{r0} -> {r1}");
    a.save_subscription(crate::store::StoredSubscription {
        updated_at_ms: 2,
        ..sub
    })
    .await
    .unwrap();
    // One notification per change, each taken before the next change.
    tokio::time::timeout(Duration::from_secs(2), signal.notified())
        .await
        .expect("a notification for the update");
    let r2 = b.catalog_revision().await.unwrap().unwrap();
    assert!(r2 > r1, "{r1} -> {r2}");
    a.delete_subscription("id-1".into(), "n".into(), 3)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(2), signal.notified())
        .await
        .expect("a notification for the delete");
    assert!(b.catalog_revision().await.unwrap().unwrap() > r2);
    // Another schema's changes are not signalled here.
    let other = SchemaGuard::new();
    let c = open_on(&pg_settings(&other.0), "host-c").await;
    c.save_subscription(crate::store::StoredSubscription {
        id: "id-2".into(),
        name: "m".into(),
        spec: "{}".into(),
        created_at_ms: 1,
        updated_at_ms: 1,
    })
    .await
    .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), signal.notified())
            .await
            .is_err(),
        "signalled for another schema"
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn a_relay_starting_keeps_the_tombstones_of_names_it_does_not_know() {
    let schema = SchemaGuard::new();
    let pg = pg_settings(&schema.0);
    let a = open_on(&pg, "host-a").await;
    a.retire_subscriptions(vec!["gone".into()], vec![])
        .await
        .unwrap();
    // Another relay starts without "gone" in its config: a's tombstone stays in force.
    let b = open_on(&pg, "host-b").await;
    b.sync_subscriptions(vec!["kept".into()]).await.unwrap();
    a.accept(vec![accepted("e1", 1, &["gone"])]).await.unwrap();
    let state = |s: crate::store::EventStatus| s.deliveries[0].state;
    assert_eq!(
        state(a.event_status("e1").await.unwrap().unwrap()),
        crate::store::DeliveryState::Orphaned
    );
    // One that has it in force lifts it.
    b.sync_subscriptions(vec!["kept".into(), "gone".into()])
        .await
        .unwrap();
    a.accept(vec![accepted("e2", 2, &["gone"])]).await.unwrap();
    assert_eq!(
        state(a.event_status("e2").await.unwrap().unwrap()),
        crate::store::DeliveryState::Pending
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn a_version_1_schema_is_migrated_with_its_claims_pending_again() {
    let schema = SchemaGuard::new();
    let quoted = format!("\"{}\"", schema.0);
    let client = admin().await;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {quoted};
             CREATE TABLE {quoted}.schema_version (version integer NOT NULL);
             INSERT INTO {quoted}.schema_version VALUES (1);
             {}
             INSERT INTO {quoted}.events (id, type, received_at, data, subscriptions)
                 VALUES ('e1', 't', 1, '\\x7b7d', '[\"x\"]');
             INSERT INTO {quoted}.deliveries (event_seq, subscription, state, received_at, next_attempt_at, expires_at)
                 SELECT seq, 'x', {IN_FLIGHT}, 1, 1, 9000000000000 FROM {quoted}.events;",
            super::schema::MIGRATIONS[0].replace("{s}", &quoted)
        ))
        .await
        .unwrap();
    let store = open_on(&pg_settings(&schema.0), "host-a").await;
    let claimed = store.claim_due("x", 10, 10, Duration::ZERO).await.unwrap();
    assert_eq!((claimed.len(), claimed[0].token), (1, 1));
    let version: i32 = client
        .query_one(&format!("SELECT version FROM {quoted}.schema_version"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, SCHEMA_VERSION);
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn a_version_3_schema_carries_each_undelivered_count_into_the_budget() {
    let schema = SchemaGuard::new();
    let quoted = format!("\"{}\"", schema.0);
    let client = admin().await;
    let before: String = super::schema::MIGRATIONS[..3]
        .iter()
        .map(|m| m.replace("{s}", &quoted))
        .collect();
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {quoted};
             CREATE TABLE {quoted}.schema_version (version integer NOT NULL);
             INSERT INTO {quoted}.schema_version VALUES (3);
             {before}
             INSERT INTO {quoted}.events (id, type, received_at, data, subscriptions)
                 VALUES ('e1', 't', 1, '\\x7b7d', '[\"x\"]');
             INSERT INTO {quoted}.deliveries (event_seq, subscription, state, attempts, received_at, next_attempt_at, expires_at)
                 SELECT seq, 'x', 0, 2, 1, 1, 9000000000000 FROM {quoted}.events;"
        ))
        .await
        .unwrap();
    let store = open_on(&pg_settings(&schema.0), "host-a").await;
    let claimed = store.claim_due("x", 10, 10, Duration::ZERO).await.unwrap();
    assert_eq!((claimed[0].attempts, claimed[0].budget_used), (2, 2));
    store
        .complete(
            claimed[0].id,
            claimed[0].token,
            crate::store::Outcome::Delivered { status: 200 },
            ATTEMPT,
        )
        .await
        .unwrap();
    let history = store.attempts(claimed[0].id).await.unwrap().unwrap();
    assert_eq!(history.iter().map(|a| a.number).collect::<Vec<_>>(), [3]);
}
