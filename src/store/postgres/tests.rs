//! What is PostgreSQL's own: the schema's migration and version check, group commit, and
//! losing the server (refused, connections killed) without reopening the store. The
//! behaviour through the `Store` trait is tested for every backend in `store/tests.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Histogram;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::{PostgresStore, SCHEMA_VERSION};
use crate::store::settings::{PostgresSettings, StorageLocation, StorageSettings};
use crate::store::tests::{SchemaGuard, accepted, metrics, pg_settings, test_url};
use crate::store::{Store, StoreError, WriterMetrics};

/// Storage settings around `pg`.
pub(super) fn storage(pg: &PostgresSettings) -> StorageSettings {
    StorageSettings {
        location: StorageLocation::Postgres(pg.clone()),
        ..StorageSettings::default()
    }
}

async fn open(pg: &PostgresSettings) -> Result<PostgresStore, StoreError> {
    PostgresStore::open(pg, &storage(pg), metrics()).await
}

/// A direct connection to the test server.
pub(super) async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&test_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// Polls `cond` every 20 ms for up to 10 s.
pub(super) async fn eventually<F, Fut>(mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn relays_starting_together_migrate_once_and_reopening_changes_nothing() {
    let schema = SchemaGuard::new();
    let pg = pg_settings(&schema.0);
    let (a, b) = tokio::join!(open(&pg), open(&pg));
    let (a, b) = (a.unwrap(), b.unwrap());
    a.accept(vec![accepted("e1", 1, &["x"])]).await.unwrap();
    drop((a, b));
    let again = open(&pg).await.unwrap();
    assert_eq!(
        again
            .claim_due("x", 10, 10, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        1
    );
    let versions: Vec<i32> = admin()
        .await
        .query(
            &format!("SELECT version FROM \"{}\".schema_version", schema.0),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [SCHEMA_VERSION]);
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn a_newer_schema_stops_the_start() {
    let schema = SchemaGuard::new();
    let pg = pg_settings(&schema.0);
    drop(open(&pg).await.unwrap());
    admin()
        .await
        .batch_execute(&format!(
            "UPDATE \"{}\".schema_version SET version = 99",
            schema.0
        ))
        .await
        .unwrap();
    let err = open(&pg).await.unwrap_err().to_string();
    assert!(
        err.contains("schema version 99 is newer than this hookrelay supports")
            && err.contains(&schema.0),
        "{err}"
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn a_version_4_schema_gains_the_pause_states() {
    let schema = SchemaGuard::new();
    let pg = pg_settings(&schema.0);
    drop(open(&pg).await.unwrap());
    // As version 4 left it: no pause_states.
    admin()
        .await
        .batch_execute(&format!(
            "DROP TABLE \"{0}\".pause_states; UPDATE \"{0}\".schema_version SET version = 4",
            schema.0
        ))
        .await
        .unwrap();
    let s = open(&pg).await.unwrap();
    let paused = crate::store::PauseState {
        name: "a".into(),
        paused: true,
        reason: "api".into(),
        since_ms: 1,
    };
    s.set_pause_state(paused.clone()).await.unwrap();
    assert_eq!(s.pause_states().await.unwrap(), vec![paused]);
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn concurrent_accepts_share_transactions() {
    let schema = SchemaGuard::new();
    let pg = pg_settings(&schema.0);
    let h = || Histogram::with_opts(prometheus::HistogramOpts::new("h", "h")).unwrap();
    let batch_size = h();
    let written = WriterMetrics {
        commit_duration: h(),
        batch_size: batch_size.clone(),
    };
    let store = Arc::new(
        PostgresStore::open(&pg, &storage(&pg), written)
            .await
            .unwrap(),
    );
    let n = 200;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .accept(vec![accepted(&format!("g{i}"), i, &["a"])])
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // Every request went through a transaction; they shared fewer transactions.
    assert_eq!(batch_size.get_sample_sum(), n as f64);
    let transactions = batch_size.get_sample_count();
    assert!(transactions < n as u64 / 2, "{transactions} transactions");
    assert_eq!(store.stats().await.unwrap()["a"].depth, n as u64);
}

/// A TCP proxy to the test server that can be cut (its port then refuses) and restored.
struct Proxy {
    port: u16,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(port: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = url::Url::parse(&test_url()).unwrap();
        let upstream = format!(
            "{}:{}",
            target.host_str().unwrap(),
            target.port().unwrap_or(5432)
        );
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                links.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Proxy { port, task }
    }

    /// Closes the port and every connection through it.
    fn cut(self) -> u16 {
        self.task.abort();
        self.port
    }

    /// The test server's URL through this proxy, with a password to redact.
    fn url(&self) -> String {
        let mut url = url::Url::parse(&test_url()).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.set_password(Some("pw-7f3a")).unwrap();
        url.to_string()
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn an_unreachable_server_is_unavailable_within_connect_timeout_and_recovery_needs_no_reopen()
{
    let schema = SchemaGuard::new();
    let proxy = Proxy::start(0).await;
    let mut pg = pg_settings(&schema.0);
    pg.url = crate::store::settings::DatabaseUrl::parse(&proxy.url()).unwrap();
    pg.connect_timeout = Duration::from_secs(1);
    let store = open(&pg).await.unwrap();
    store
        .accept(vec![accepted("before", 1, &["a"])])
        .await
        .unwrap();
    assert!(store.up() && store.refusing().is_none());

    let port = proxy.cut();
    let started = Instant::now();
    let err = store
        .accept(vec![accepted("during", 2, &["a"])])
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("pw-7f3a"), "{text}");
    assert!(!store.up());
    assert_eq!(store.refusing(), Some("the database is unreachable"));
    assert!(store.healthy(), "the store keeps running");
    assert!(store.claim_due("a", 10, 10, Duration::ZERO).await.is_err());

    // The server is back on the same address: the same store works again.
    let _proxy = Proxy::start(port).await;
    assert!(
        eventually(|| async {
            store
                .accept(vec![accepted("after", 3, &["a"])])
                .await
                .is_ok()
        })
        .await
    );
    assert!(store.up() && store.refusing().is_none());
    let claimed = store.claim_due("a", 10, 10, Duration::ZERO).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|d| d.event_id.to_string()).collect();
    assert_eq!(ids, ["before", "after"], "nothing refused was stored");
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn a_server_refusing_at_start_fails_the_open_quickly_without_the_password() {
    let port = Proxy::start(0).await.cut();
    let schema = SchemaGuard::new();
    let mut pg = pg_settings(&schema.0);
    pg.url = crate::store::settings::DatabaseUrl::parse(&format!(
        "postgres://app:pw-7f3a@127.0.0.1:{port}/test"
    ))
    .unwrap();
    pg.connect_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = open(&pg).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    let text = format!("{err} {err:?}");
    assert!(
        text.contains(&format!("postgres://app:***@127.0.0.1:{port}/test")),
        "{text}"
    );
    assert!(!text.contains("pw-7f3a"), "{text}");
    assert!(!format!("{pg:?}").contains("pw-7f3a"));
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn killed_connections_are_replaced_without_reopening_the_store() {
    let schema = SchemaGuard::new();
    let mut pg = pg_settings(&schema.0);
    // Its own application name, so only this store's connections are killed.
    let app = format!("hr_kill_{}", &schema.0[8..]);
    pg.url = crate::store::settings::DatabaseUrl::parse(&format!(
        "{}?application_name={app}",
        test_url()
    ))
    .unwrap();
    let store = open(&pg).await.unwrap();
    store.accept(vec![accepted("e1", 1, &["a"])]).await.unwrap();
    assert_eq!(store.stats().await.unwrap()["a"].depth, 1);
    let killed: i64 = admin()
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1, "no connection of {app} to kill");
    // Each failure drops its connection; the pool connects anew.
    assert!(
        eventually(|| async { store.accept(vec![accepted("e2", 2, &["a"])]).await.is_ok() }).await
    );
    assert!(
        eventually(|| async {
            store
                .claim_due("a", 10, 10, Duration::ZERO)
                .await
                .is_ok_and(|c| c.len() == 2)
        })
        .await
    );
    assert!(store.up());
}

#[test]
fn the_store_and_its_settings_never_show_the_password() {
    let pg = PostgresSettings {
        url: crate::store::settings::DatabaseUrl::parse("postgres://u:pw-7f3a@db:5432/x").unwrap(),
        ..pg_settings("s")
    };
    let shown = format!("{:?}", storage(&pg));
    assert!(shown.contains("postgres://u:***@db:5432/x"), "{shown}");
    assert!(!shown.contains("pw-7f3a"), "{shown}");
    let db = super::db::Db::new(&pg).unwrap();
    assert_eq!(db.shown, "postgres://u:***@db:5432/x");
}

#[tokio::test]
#[ignore = "needs PostgreSQL at HOOKRELAY_TEST_DATABASE_URL"]
async fn a_claim_reads_only_the_rows_it_takes_whatever_the_backlog() {
    let schema = SchemaGuard::new();
    let pg = pg_settings(&schema.0);
    let store = open(&pg).await.unwrap();
    let s = format!("\"{}\"", schema.0);
    let admin = admin().await;
    // 20,000 deliveries of `busy` due now among 180,000 finished ones of nine others: a
    // backlog the planner's row estimate does not see (it multiplies the selectivities).
    admin
        .batch_execute(&format!(
            "INSERT INTO {s}.events (id, type, received_at, data, subscriptions)
               SELECT 'e' || g, 't', 1, '\\x7b7d', '[]' FROM generate_series(1, 20000) g;
             INSERT INTO {s}.deliveries (event_seq, subscription, state, received_at,
                                         next_attempt_at, expires_at, finished_at)
               SELECT g % 20000 + 1, CASE WHEN g % 10 = 9 THEN 'busy' ELSE 's' || g % 10 END,
                      CASE WHEN g % 10 = 9 THEN 0 ELSE 2 END, 1,
                      CASE WHEN g % 10 = 9 THEN 1 ELSE 3600000 END, 86400000,
                      CASE WHEN g % 10 = 9 THEN NULL ELSE 1 END
               FROM generate_series(0, 199999) g;
             ANALYZE {s}.deliveries;"
        ))
        .await
        .unwrap();
    let db = &store.db;
    let conn = db.conn().await.unwrap();
    conn.batch_execute(super::db::BEGIN_IN_ORDER).await.unwrap();
    let explain = format!(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {}",
        db.sql(super::claims::CLAIM_DUE)
    );
    let params: [super::db::Param<'_>; 5] = [
        (&"busy", tokio_postgres::types::Type::TEXT),
        (&2_i64, tokio_postgres::types::Type::INT8),
        (&256_i64, tokio_postgres::types::Type::INT8),
        (&1_i64, tokio_postgres::types::Type::INT8),
        (&60_000_i64, tokio_postgres::types::Type::INT8),
    ];
    let rows = conn.query_typed(&explain, &params).await.unwrap();
    conn.batch_execute("ROLLBACK").await.unwrap();
    let plan: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let text = plan.join("\n");
    assert!(!text.contains("Bitmap") && !text.contains("Sort"), "{text}");
    // The scan of the due index stops at the batch: it reads 256 of the 20,000.
    let scans: Vec<&String> = plan
        .iter()
        .filter(|l| l.contains("on deliveries_due") || l.contains("using deliveries_due"))
        .collect();
    assert_eq!(scans.len(), 1, "{text}");
    assert!(
        scans[0].contains("Index Scan using deliveries_due") && scans[0].contains("rows=256 "),
        "{text}"
    );
}
