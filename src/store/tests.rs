//! The store's behaviour through the `Store` trait, one suite for every backend: each test
//! is a function of the backend, instantiated once per backend by `store_tests!`. The
//! PostgreSQL instances need a server (`HOOKRELAY_TEST_DATABASE_URL`, default
//! `postgres://root@127.0.0.1:5432/test`), so a plain `cargo test` reports them ignored;
//! each opens its own schema and drops it afterwards, also when the test fails.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus::Histogram;

use crate::event::{Event, RawMeta};
use crate::store::settings::{
    DatabaseUrl, PostgresSettings, StorageLocation, StorageSettings, TlsMode,
};
use crate::store::{
    Accepted, Admission, Attempted, DeliveryQuery, DeliveryState, EventStatus, NewDelivery,
    Outcome, PauseState, PullMode, Pulled, QueueStats, Release, Store, StoredSubscription,
    WriterMetrics,
};

/// The attempt tests record with an outcome when its history is not what they check.
pub(crate) const ATTEMPT: Attempted = Attempted {
    at_ms: 1,
    duration_us: 1,
    result: "success",
};

/// Which store a test runs on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Backend {
    /// SQLite in memory.
    Sqlite,
    /// A fresh schema on the test server.
    Postgres,
}

/// A store under test; for PostgreSQL, its schema is dropped with it.
pub(crate) struct TestStore {
    store: Arc<dyn Store>,
    _schema: Option<SchemaGuard>,
}

impl std::ops::Deref for TestStore {
    type Target = dyn Store;

    fn deref(&self) -> &(dyn Store + 'static) {
        &*self.store
    }
}

impl TestStore {
    /// The store, shared.
    pub(crate) fn shared(&self) -> Arc<dyn Store> {
        self.store.clone()
    }
}

/// Histograms nobody reads.
pub(crate) fn metrics() -> WriterMetrics {
    let h = || Histogram::with_opts(prometheus::HistogramOpts::new("h", "h")).unwrap();
    WriterMetrics {
        commit_duration: h(),
        batch_size: h(),
    }
}

/// The test server's URL.
pub(crate) fn test_url() -> String {
    std::env::var("HOOKRELAY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// Settings for a store in `schema` on the test server.
pub(crate) fn pg_settings(schema: &str) -> PostgresSettings {
    PostgresSettings {
        url: DatabaseUrl::parse(&test_url()).expect("HOOKRELAY_TEST_DATABASE_URL"),
        schema: schema.into(),
        pool: 4,
        tls: TlsMode::Disable,
        ca: None,
        connect_timeout: Duration::from_secs(5),
        prepared_statements: true,
        lease: Duration::from_secs(60),
        direct_url: None,
        sync_interval: Duration::from_secs(1),
    }
}

/// Drops its schema (and everything in it) when dropped, test failed or not.
pub(crate) struct SchemaGuard(pub(crate) String);

impl SchemaGuard {
    /// A fresh schema name, dropped with the guard.
    pub(crate) fn new() -> SchemaGuard {
        SchemaGuard(format!("hr_test_{:016x}", fastrand::u64(..)))
    }
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let schema = self.0.clone();
        // Its own thread and runtime: a drop cannot await, and may run inside a runtime.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(&test_url(), tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                // Bounded: a session of the test's own still holding a lock would otherwise
                // wait on this thread while this thread waits on it.
                client
                    .batch_execute(&format!(
                        "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                    ))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("cannot drop test schema {}: {e}", self.0);
        }
    }
}

impl Backend {
    /// A store with the default settings.
    pub(crate) async fn open(self) -> TestStore {
        self.open_with(|_| {}).await
    }

    /// A store with the default settings changed by `tweak`.
    pub(crate) async fn open_with(self, tweak: impl FnOnce(&mut StorageSettings)) -> TestStore {
        let mut settings = StorageSettings {
            location: StorageLocation::Memory,
            ..StorageSettings::default()
        };
        let guard = match self {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let guard = SchemaGuard::new();
                settings.location = StorageLocation::Postgres(pg_settings(&guard.0));
                Some(guard)
            }
        };
        tweak(&mut settings);
        let opened = crate::store::open(&settings, metrics()).await.unwrap();
        TestStore {
            store: opened.store,
            _schema: guard,
        }
    }
}

/// Instantiates each named test (an `async fn(Backend)`) once per backend.
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                #[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await
                }
            )*
        }
    };
}
pub(crate) use store_tests;

store_tests!(
    claims_in_order_and_schedules_retries,
    duplicates_return_the_original_result,
    release_is_rate_limited_per_scope,
    expiry_and_pruning,
    deleting_a_subscription_cancels_its_deliveries_also_those_stored_later,
    retiring_a_config_subscription_orphans_its_deliveries_until_it_returns,
    ordered_deliveries_go_one_at_a_time_per_key,
    an_expired_head_lets_its_key_go_and_unordering_frees_the_rest,
    pulls_take_the_oldest_and_hide_or_consume_them,
    notifications_past_their_ttl_are_not_handed_out,
    orphans_wait_for_their_subscription,
    dead_letters_can_be_listed_retried_and_deleted,
    handed_off_deliveries_are_claimed_already_and_unclaim_returns_them,
    a_batch_is_one_admission_per_event_and_repeats_inside_it_are_duplicates,
    raw_events_keep_their_content_type_and_attributes,
    concurrent_claims_and_pulls_never_share_a_delivery,
    concurrent_accepts_are_all_stored,
    keys_holding_nul_or_backslash_are_stored_and_kept_apart,
    pause_states_are_kept_replaced_and_forgotten_with_the_api_subscription,
);

async fn pause_states_are_kept_replaced_and_forgotten_with_the_api_subscription(b: Backend) {
    let s = b.open().await;
    assert_eq!(s.pause_states().await.unwrap(), vec![]);
    let state = |name: &str, paused: bool, reason: &str, since_ms: i64| PauseState {
        name: name.into(),
        paused,
        reason: reason.into(),
        since_ms,
    };
    s.set_pause_state(state("from-yaml", true, "api", 1))
        .await
        .unwrap();
    s.set_pause_state(state("api-sub", true, "gone", 2))
        .await
        .unwrap();
    s.set_pause_state(state("from-yaml", false, "api", 3))
        .await
        .unwrap();
    let mut got = s.pause_states().await.unwrap();
    got.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(
        got,
        vec![
            state("api-sub", true, "gone", 2),
            state("from-yaml", false, "api", 3)
        ]
    );
    let sub = StoredSubscription {
        id: "id-1".into(),
        name: "api-sub".into(),
        spec: r#"{"url":"http://h/"}"#.into(),
        created_at_ms: 1,
        updated_at_ms: 1,
    };
    s.save_subscription(sub).await.unwrap();
    s.delete_subscription("id-1".into(), "api-sub".into(), 5)
        .await
        .unwrap();
    assert_eq!(
        s.pause_states().await.unwrap(),
        vec![state("from-yaml", false, "api", 3)]
    );
}

pub(crate) fn accepted(id: &str, at: i64, subs: &[&str]) -> Accepted {
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

async fn claims_in_order_and_schedules_retries(b: Backend) {
    let s = b.open().await;
    s.accept(vec![
        accepted("e1", 100, &["a", "b"]),
        accepted("e2", 200, &["a"]),
    ])
    .await
    .unwrap();
    assert!(
        s.claim_due("a", 50, 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = s.claim_due("a", 1000, 10, Duration::ZERO).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|d| d.event_id.to_string()).collect();
    assert_eq!(ids, ["e1", "e2"]);
    let stats = s.stats().await.unwrap();
    assert_eq!((stats["a"].depth, stats["a"].in_flight), (2, 2));
    assert_eq!((stats["b"].depth, stats["b"].in_flight), (1, 0));
    assert_eq!(&claimed[0].data[..], b"{\"k\":1}");
    assert!(
        s.claim_due("a", 1000, 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "claimed once"
    );
    s.complete(
        claimed[0].id,
        claimed[0].token,
        Outcome::Retry {
            at_ms: 5000,
            status: Some(500),
            error: "HTTP 500".into(),
        },
        ATTEMPT,
    )
    .await
    .unwrap();
    s.complete(
        claimed[1].id,
        claimed[1].token,
        Outcome::Delivered { status: 200 },
        ATTEMPT,
    )
    .await
    .unwrap();
    assert_eq!(s.next_due_ms("a").await.unwrap(), Some(5000));
    let again = s.claim_due("a", 5000, 10, Duration::ZERO).await.unwrap();
    assert_eq!(again[0].attempts, 1);
    s.complete(
        again[0].id,
        again[0].token,
        Outcome::Failed {
            status: None,
            error: "x".into(),
        },
        ATTEMPT,
    )
    .await
    .unwrap();
    let stats = s.stats().await.unwrap();
    assert_eq!(
        stats["a"],
        QueueStats {
            depth: 0,
            in_flight: 0,
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

async fn duplicates_return_the_original_result(b: Backend) {
    let s = b.open().await;
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

async fn release_is_rate_limited_per_scope(b: Backend) {
    let s = b.open().await;
    s.accept(vec![accepted("e1", 1, &["a"])]).await.unwrap();
    let d = s.claim_due("a", 10, 1, Duration::ZERO).await.unwrap();
    s.complete(
        d[0].id,
        d[0].token,
        Outcome::Failed {
            status: Some(500),
            error: "x".into(),
        },
        ATTEMPT,
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
    let again = s.claim_due("a", 200, 1, Duration::ZERO).await.unwrap();
    assert_eq!(
        (again[0].attempts, again[0].budget_used),
        (1, 0),
        "fresh retry budget, the count kept"
    );
}

async fn expiry_and_pruning(b: Backend) {
    let s = b
        .open_with(|st| {
            st.ttl = Duration::from_millis(100);
            st.retention = Duration::from_millis(1000);
        })
        .await;
    s.accept(vec![accepted("e1", 0, &["a"]), accepted("e2", 0, &["a"])])
        .await
        .unwrap();
    let d = s.claim_due("a", 0, 1, Duration::ZERO).await.unwrap();
    s.complete(
        d[0].id,
        d[0].token,
        Outcome::Delivered { status: 200 },
        ATTEMPT,
    )
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

async fn deleting_a_subscription_cancels_its_deliveries_also_those_stored_later(b: Backend) {
    let s = b.open().await;
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
    let dead = s.claim_due("api-sub", 0, 1, Duration::ZERO).await.unwrap();
    let failed = Outcome::Failed {
        status: Some(500),
        error: "HTTP 500".into(),
    };
    s.complete(dead[0].id, dead[0].token, failed, ATTEMPT)
        .await
        .unwrap();
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
    assert!(
        s.claim_due("api-sub", 100, 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.claim_due("other", 100, 10, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        1
    );
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
    assert_eq!(
        s.claim_due("api-sub", 100, 10, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn retiring_a_config_subscription_orphans_its_deliveries_until_it_returns(b: Backend) {
    let s = b.open().await;
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
    assert!(
        s.claim_due("gone", 100, 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.claim_due("kept", 100, 10, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        1
    );
    // Back in the config: both resume, and new deliveries are pending as usual.
    let (orphaned, resumed) = s
        .retire_subscriptions(vec![], vec!["gone".into()])
        .await
        .unwrap();
    assert_eq!((orphaned, resumed), (0, 2));
    s.accept(vec![accepted("e2", 2, &["gone"])]).await.unwrap();
    assert_eq!(
        s.claim_due("gone", 100, 10, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        3
    );
}

pub(crate) fn ordered(id: &str, at: i64, sub: &str, key: &str) -> Accepted {
    let mut a = accepted(id, at, &[sub]);
    a.deliveries[0].ordering_key = Some(key.to_string());
    a
}

/// A key is any value of the data: a NUL in it (which PostgreSQL's text cannot hold) is
/// stored, and keys that differ only by an escape stay different keys.
async fn keys_holding_nul_or_backslash_are_stored_and_kept_apart(b: Backend) {
    let s = b.open().await;
    s.accept(vec![
        ordered("n1", 1, "o", "\"a\u{0}\""),
        ordered("n2", 2, "o", "\"a\\0\""),
        ordered("n3", 3, "o", "\"a\u{0}\""),
    ])
    .await
    .unwrap();
    // Two keys, so two heads; the third waits behind the first.
    assert_eq!(claim_ids(&*s, "o").await, ["n1", "n2"]);
    let n1 = s.event_status("n1").await.unwrap().unwrap().deliveries[0].id;
    // Its first claim (PostgreSQL counts a delivery's claims; SQLite ignores tokens).
    s.complete(n1, 1, Outcome::Delivered { status: 200 }, ATTEMPT)
        .await
        .unwrap();
    assert_eq!(claim_ids(&*s, "o").await, ["n3"]);
}

/// The event ids of the deliveries `sub` can claim now (far in the future).
pub(crate) async fn claim_ids(s: &dyn Store, sub: &str) -> Vec<String> {
    s.claim_due(sub, 1_000_000, 100, Duration::ZERO)
        .await
        .unwrap()
        .iter()
        .map(|d| d.event_id.to_string())
        .collect()
}

async fn ordered_deliveries_go_one_at_a_time_per_key(b: Backend) {
    let s = b.open().await;
    s.accept(vec![
        ordered("a1", 1, "o", "\"a\""),
        ordered("b1", 2, "o", "\"b\""),
        ordered("a2", 3, "o", "\"a\""),
        ordered("a3", 4, "o", "\"a\""),
    ])
    .await
    .unwrap();
    // Only the head of each key is claimable.
    assert_eq!(claim_ids(&*s, "o").await, ["a1", "b1"]);
    assert_eq!(
        s.event_status("a2").await.unwrap().unwrap().deliveries[0].state,
        DeliveryState::Waiting
    );
    let id_of = |status: EventStatus| status.deliveries[0].id;
    let a1 = id_of(s.event_status("a1").await.unwrap().unwrap());
    // A retry keeps the key blocked; the head is retried first.
    s.complete(
        a1,
        1,
        Outcome::Retry {
            at_ms: 50,
            status: Some(500),
            error: "HTTP 500".into(),
        },
        ATTEMPT,
    )
    .await
    .unwrap();
    assert_eq!(claim_ids(&*s, "o").await, ["a1"]);
    // It finally fails: the next one goes.
    s.complete(
        a1,
        2,
        Outcome::Failed {
            status: Some(500),
            error: "HTTP 500".into(),
        },
        ATTEMPT,
    )
    .await
    .unwrap();
    assert_eq!(claim_ids(&*s, "o").await, ["a2"]);
    let a2 = id_of(s.event_status("a2").await.unwrap().unwrap());
    s.complete(a2, 1, Outcome::Delivered { status: 200 }, ATTEMPT)
        .await
        .unwrap();
    assert_eq!(claim_ids(&*s, "o").await, ["a3"]);
    // Released, the dead letter goes out again without blocking its key.
    s.accept(vec![ordered("a4", 5, "o", "\"a\"")])
        .await
        .unwrap();
    let released = s.release(None, vec!["o".into()], 100, 0).await.unwrap();
    assert_eq!(released, Release::Released(1));
    assert_eq!(claim_ids(&*s, "o").await, ["a1"]);
    let a3 = id_of(s.event_status("a3").await.unwrap().unwrap());
    s.complete(a3, 1, Outcome::Delivered { status: 200 }, ATTEMPT)
        .await
        .unwrap();
    assert_eq!(claim_ids(&*s, "o").await, ["a4"]);
}

async fn an_expired_head_lets_its_key_go_and_unordering_frees_the_rest(b: Backend) {
    let s = b.open().await;
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
    assert_eq!(claim_ids(&*s, "o").await, ["n1", "n2"]);
}
async fn pulls_take_the_oldest_and_hide_or_consume_them(b: Backend) {
    let s = b.open().await;
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

async fn notifications_past_their_ttl_are_not_handed_out(b: Backend) {
    let s = b.open().await;
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

async fn orphans_wait_for_their_subscription(b: Backend) {
    let s = b.open().await;
    s.accept(vec![accepted("e1", 0, &["gone", "kept"])])
        .await
        .unwrap();
    assert_eq!(
        s.sync_subscriptions(vec!["kept".into()]).await.unwrap(),
        (1, 0)
    );
    assert_eq!(s.stats().await.unwrap()["gone"].orphaned, 1);
    assert!(
        s.claim_due("gone", 10, 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.sync_subscriptions(vec!["kept".into(), "gone".into()])
            .await
            .unwrap(),
        (0, 1)
    );
    assert_eq!(
        s.claim_due("gone", 10, 10, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn dead_letters_can_be_listed_retried_and_deleted(b: Backend) {
    let s = b.open().await;
    s.accept(vec![accepted("e1", 0, &["a"]), accepted("e2", 0, &["a"])])
        .await
        .unwrap();
    for d in s.claim_due("a", 10, 10, Duration::ZERO).await.unwrap() {
        s.complete(
            d.id,
            d.token,
            Outcome::Failed {
                status: Some(500),
                error: "HTTP 500".into(),
            },
            ATTEMPT,
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
    assert_eq!(
        s.claim_due("a", 20, 10, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.delete_delivery(next[0].id).await.unwrap(),
        Some(DeliveryState::Failed)
    );
    assert_eq!(s.delete_delivery(next[0].id).await.unwrap(), None);
    assert!(s.deliveries(q).await.unwrap().is_empty());
}

async fn handed_off_deliveries_are_claimed_already_and_unclaim_returns_them(b: Backend) {
    let s = b.open().await;
    let mut a = accepted("e1", 10, &["a", "b"]);
    a.deliveries[0].handed_off = true;
    let admitted = s.accept(vec![a]).await.unwrap();
    let [Admission::Stored(ids)] = &admitted[..] else {
        panic!("{admitted:?}")
    };
    let status = s.event_status("e1").await.unwrap().unwrap();
    let states: Vec<_> = status.deliveries.iter().map(|d| (d.id, d.state)).collect();
    assert_eq!(
        states,
        [
            (ids[0], DeliveryState::InFlight),
            (ids[1], DeliveryState::Pending)
        ]
    );
    // In memory already: the feeder does not claim it again.
    assert!(
        s.claim_due("a", 100, 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    s.unclaim(vec![(ids[0], 1)]).await.unwrap();
    let claimed = s.claim_due("a", 100, 10, Duration::ZERO).await.unwrap();
    assert_eq!(claimed.iter().map(|d| d.id).collect::<Vec<_>>(), [ids[0]]);
    // An outcome for a delivery no longer in flight changes nothing.
    s.unclaim(vec![(ids[0], claimed[0].token)]).await.unwrap();
    s.delete_subscription("x".into(), "a".into(), 20)
        .await
        .unwrap();
    s.complete(
        ids[0],
        claimed[0].token,
        Outcome::Delivered { status: 200 },
        ATTEMPT,
    )
    .await
    .unwrap();
    let status = s.event_status("e1").await.unwrap().unwrap();
    assert_eq!(status.deliveries[0].state, DeliveryState::Cancelled);
}

async fn a_batch_is_one_admission_per_event_and_repeats_inside_it_are_duplicates(b: Backend) {
    let s = b.open().await;
    s.accept(vec![accepted("old", 1, &["a"])]).await.unwrap();
    let admitted = s
        .accept(vec![
            accepted("n1", 2, &["a", "b"]),
            accepted("old", 2, &["b"]),
            accepted("n1", 2, &["c"]),
            accepted("n2", 2, &[]),
        ])
        .await
        .unwrap();
    assert!(matches!(&admitted[0], Admission::Stored(ids) if ids.len() == 2));
    assert_eq!(
        admitted[1..],
        [
            Admission::Duplicate {
                subscriptions: vec!["a".into()]
            },
            Admission::Duplicate {
                subscriptions: vec!["a".into(), "b".into()]
            },
            Admission::Stored(vec![]),
        ]
    );
    let Admission::Stored(ids) = &admitted[0] else {
        unreachable!()
    };
    let status = s.event_status("n1").await.unwrap().unwrap();
    let stored: Vec<_> = status
        .deliveries
        .iter()
        .map(|d| (d.id, d.subscription.as_str()))
        .collect();
    assert_eq!(stored, [(ids[0], "a"), (ids[1], "b")]);
    assert!(!s.stats().await.unwrap().contains_key("c"));
    assert!(s.event_status("n2").await.unwrap().is_some());
}

async fn raw_events_keep_their_content_type_and_attributes(b: Backend) {
    let s = b.open().await;
    let raw = Arc::new(RawMeta {
        content_type: "application/xml".into(),
        attributes: vec![("zone".into(), "eu".into())],
    });
    let mut xml = accepted("xml", 5, &["a", "q"]);
    xml.event.data = Bytes::from_static(b"<a>\x00\xff</a>");
    xml.event.raw = Some(raw.clone());
    let mut bare = accepted("bare", 6, &["a"]);
    bare.event.raw = Some(Arc::new(RawMeta {
        content_type: "text/plain".into(),
        attributes: vec![],
    }));
    s.accept(vec![xml, bare]).await.unwrap();
    let claimed = s.claim_due("a", 100, 10, Duration::ZERO).await.unwrap();
    assert_eq!(&claimed[0].data[..], b"<a>\x00\xff</a>");
    assert_eq!(claimed[0].raw.as_deref(), Some(&*raw));
    assert_eq!(claimed[0].content_type(), "application/xml");
    assert_eq!(claimed[1].content_type(), "text/plain");
    assert!(claimed[1].raw.as_ref().unwrap().attributes.is_empty());
    let pulled = s.pull("q".into(), 100, 5, PullMode::Consume).await.unwrap();
    assert_eq!(pulled.notifications[0].raw.as_deref(), Some(&*raw));
    let status = s.event_status("xml").await.unwrap().unwrap();
    assert_eq!(status.raw.as_deref(), Some(&*raw));
}

async fn concurrent_claims_and_pulls_never_share_a_delivery(b: Backend) {
    let s = b.open().await;
    let events: Vec<Accepted> = (0..200)
        .map(|i| accepted(&format!("e{i}"), i, &["push", "pull"]))
        .collect();
    s.accept(events).await.unwrap();
    let store = s.shared();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let ids: Vec<i64> = if i % 2 == 0 {
                    let claimed = store
                        .claim_due("push", 1_000, 7, Duration::ZERO)
                        .await
                        .unwrap();
                    claimed.iter().map(|d| d.id).collect()
                } else {
                    let pulled = store
                        .pull("pull".into(), 1_000, 7, PullMode::Hide(60_000))
                        .await
                        .unwrap();
                    pulled.notifications.iter().map(|n| n.id).collect()
                };
                if ids.is_empty() {
                    return got;
                }
                got.extend(ids);
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!((n, all.len()), (400, 400), "each handed out once");
}

async fn concurrent_accepts_are_all_stored(b: Backend) {
    let s = b.open().await;
    let store = s.shared();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let batch = vec![
                    accepted(&format!("c{i}"), i, &["a"]),
                    accepted(&format!("c{}", (i + 1) % 64), i, &["a"]),
                ];
                store.accept(batch).await.unwrap()
            })
        })
        .collect();
    let mut stored = 0;
    for t in tasks {
        for admission in t.await.unwrap() {
            if matches!(admission, Admission::Stored(_)) {
                stored += 1;
            }
        }
    }
    assert_eq!(stored, 64, "each id stored once");
    assert_eq!(s.stats().await.unwrap()["a"].depth, 64);
}

#[test]
fn stored_state_codes_never_change() {
    // Database files hold these numbers: a change here strands every existing delivery.
    let codes: Vec<(&str, i64)> = DeliveryState::ALL
        .iter()
        .map(|s| (s.as_str(), s.code()))
        .collect();
    assert_eq!(
        codes,
        [
            ("pending", 0),
            ("in_flight", 1),
            ("delivered", 2),
            ("failed", 3),
            ("expired", 4),
            ("orphaned", 5),
            ("cancelled", 6),
            ("waiting", 7),
        ]
    );
    for state in DeliveryState::ALL {
        assert_eq!(DeliveryState::from_code(state.code()), state);
    }
    assert_eq!(DeliveryState::from_code(99), DeliveryState::Pending);
}
