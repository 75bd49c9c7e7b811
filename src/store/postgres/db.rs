//! The connection side: the pool (deadpool, TLS by rustls), the schema's quoted name that
//! every statement is written with, error mapping, and whether the database answers.
//!
//! The hot statements (accept, claim, outcome, pull) run through a [`Session`]: prepared
//! once per connection and then only bound and executed, so the server does not parse and
//! plan them on every use. With `prepared_statements: false` they are sent unnamed
//! (`query_typed`, nothing left on the server), as every other statement is, for a pooler in
//! transaction mode that keeps no prepared statements (PgBouncer before 1.21). No session
//! settings and no session locks either way.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::{
    ClientWrapper, HookError, ManagerConfig, Object, Pool, RecyclingMethod, Runtime, StatementCache,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, Statement};

use super::tls;
use crate::store::settings::{DatabaseUrl, PostgresSettings};
use crate::store::{Cause, StoreError};

/// Advisory lock classes (the first half of a two-key lock; the second is the schema's
/// hash, so relays on other schemas never wait for each other).
pub(super) mod locks {
    /// Held (per transaction) while the schema is created or migrated.
    pub const MIGRATE: i32 = 0x6872_0001;
    /// Held while an ordering key's head may change or a keyed delivery is stored.
    pub const ORDER: i32 = 0x6872_0002;
    /// Shared by ingest, exclusive for tombstone changes (delete, retire).
    pub const RETIRE: i32 = 0x6872_0003;
    /// Tried (never waited for) by a housekeeping pass: one relay at a time does it.
    pub const HOUSEKEEPING: i32 = 0x6872_0004;
    /// Held (exclusive, to the commit) by every accept group that stores a pull delivery,
    /// from before its INSERT: ids are then given in commit order, so a pull taking the
    /// lowest ids never passes one that commits later. Taken after `RETIRE` and `ORDER`.
    pub const QUEUE: i32 = 0x6872_0005;
}

/// The database's clock, in ms since the epoch, as SQL text for `concat!`. Leases and
/// heartbeats are written and compared by this clock alone, so relays whose clocks differ
/// cannot end each other's leases early.
macro_rules! db_now_ms {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::int8"
    };
}
pub(super) use db_now_ms;

/// The pool and what every operation needs to use it.
pub(super) struct Db {
    pool: Pool,
    /// The schema as an SQL identifier: `"name"`.
    quoted: String,
    /// The schema's name, for lock keys.
    pub(super) schema: String,
    /// The URL, password shown as `***`, for messages.
    pub(super) shown: String,
    /// False since the last operation failed for want of a connection, until one succeeds.
    up: AtomicBool,
    /// `connect_timeout`: how long ingest waits for its group's commit.
    pub(super) connect_timeout: Duration,
    /// The longest any other operation may take before it is abandoned.
    op_timeout: Duration,
    /// `prepared_statements`: whether a [`Session`] prepares its statements.
    prepared: bool,
    /// When an operation was last abandoned, as ms after `epoch` + 1 (0: never).
    abandoned: Arc<AtomicU64>,
    epoch: Instant,
}

impl Db {
    /// A pool for `pg` (nothing connects until the first use).
    pub(super) fn new(pg: &PostgresSettings) -> Result<Db, StoreError> {
        let shown = pg.url.redacted();
        let open_error = |context: String, source: Option<Cause>| StoreError::Open {
            path: shown.clone(),
            context,
            source,
        };
        let config = client_config(&pg.url, pg)
            .map_err(|e| open_error("not a valid PostgreSQL URL".into(), Some(Arc::new(e))))?;
        let manager_config = ManagerConfig {
            // `is_closed` drops connections the server ended; a statement that fails on a
            // dead socket closes the client too, so the next checkout connects anew.
            recycling_method: RecyclingMethod::Fast,
        };
        let manager =
            tls::manager(config, pg, manager_config).map_err(|why| open_error(why, None))?;
        let (epoch, abandoned) = (Instant::now(), Arc::new(AtomicU64::new(0)));
        let seen_abandoned = abandoned.clone();
        let pool = Pool::builder(manager)
            // A connection handed out before an operation was abandoned may be the one
            // still waiting for a server that does not answer (or inside its transaction):
            // it is dropped instead of reused. Timeouts are rare, so the cost is a reconnect.
            .pre_recycle(deadpool_postgres::Hook::sync_fn(move |_, metrics| {
                let at = seen_abandoned.load(Ordering::Relaxed);
                let out = metrics.recycled.unwrap_or(metrics.created);
                if at > 0 && out <= epoch + Duration::from_millis(at - 1) {
                    return Err(HookError::Message(
                        "out when an operation was abandoned".into(),
                    ));
                }
                Ok(())
            }))
            .max_size(pg.pool)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(pg.connect_timeout))
            .create_timeout(Some(pg.connect_timeout))
            .recycle_timeout(Some(pg.connect_timeout))
            .build()
            .map_err(|e| {
                open_error("cannot build the connection pool".into(), Some(Arc::new(e)))
            })?;
        Ok(Db {
            pool,
            quoted: format!("\"{}\"", pg.schema.replace('"', "\"\"")),
            schema: pg.schema.clone(),
            shown,
            up: AtomicBool::new(true),
            connect_timeout: pg.connect_timeout,
            op_timeout: (pg.connect_timeout * 2).max(Duration::from_secs(30)),
            prepared: pg.prepared_statements,
            abandoned,
            epoch,
        })
    }

    /// Runs one store operation, abandoned after the operation timeout: a server that
    /// accepts but never answers cannot hold a caller for ever. Notes how it went (`seen`).
    pub(super) async fn run<T>(
        &self,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = self.within(self.op_timeout, op).await;
        self.seen(result)
    }

    /// `op`, or unavailable after `limit`; the connections out at that moment are not reused.
    pub(super) async fn within<T>(
        &self,
        limit: Duration,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(limit, op).await {
            Ok(result) => result,
            Err(_) => Err(self.abandon(limit)),
        }
    }

    /// Records that an operation was given up after `limit`: the store is marked down and
    /// the connections in use are not reused.
    pub(super) fn abandon(&self, limit: Duration) -> StoreError {
        let at = self.epoch.elapsed().as_millis() as u64 + 1;
        self.abandoned.fetch_max(at, Ordering::Relaxed);
        self.up.store(false, Ordering::Relaxed);
        StoreError::unavailable(format!("PostgreSQL did not answer within {limit:?}"))
    }

    /// `template` with `{s}` replaced by the quoted schema: every table is qualified, so no
    /// `search_path` (session state) is needed.
    pub(super) fn sql(&self, template: &str) -> String {
        template.replace("{s}", &self.quoted)
    }

    /// A pooled connection; unavailable within `connect_timeout` when none can be had.
    pub(super) async fn conn(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|e| {
            self.up.store(false, Ordering::Relaxed);
            StoreError::unavailable_from("cannot reach PostgreSQL", e)
        })
    }

    /// A database error as a store error; a lost connection marks the store down.
    pub(super) fn err(&self, e: tokio_postgres::Error) -> StoreError {
        if is_connection_error(&e) {
            self.up.store(false, Ordering::Relaxed);
        }
        StoreError::unavailable_from("", e)
    }

    /// Notes how an operation went: a success means the database answers.
    pub(super) fn seen<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.is_ok() {
            self.up.store(true, Ordering::Relaxed);
        }
        result
    }

    /// Whether the database answered the last operation.
    pub(super) fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Hot statements on a pooled connection.
    pub(super) fn session<'a>(&self, conn: &'a ClientWrapper) -> Session<'a> {
        Session {
            client: conn,
            cache: &conn.statement_cache,
            prepared: self.prepared,
        }
    }

    /// Hot statements inside a transaction.
    pub(super) fn session_in<'a>(&self, tx: &'a deadpool_postgres::Transaction<'_>) -> Session<'a> {
        Session {
            client: tx.client(),
            cache: &tx.statement_cache,
            prepared: self.prepared,
        }
    }
}

/// Opens the transaction of [`Session::query_in_order`].
pub(super) const BEGIN_IN_ORDER: &str = "BEGIN; SET LOCAL enable_bitmapscan = off";

/// A parameter and its type, as `query_typed` takes them.
pub(super) type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// Runs statements on one connection, prepared (and cached per connection) or unnamed.
pub(super) struct Session<'a> {
    client: &'a Client,
    cache: &'a StatementCache,
    prepared: bool,
}

/// A statement ready to run: named on the server, or text sent unnamed with each run.
pub(super) enum Ready<'q> {
    Named(Statement),
    Unnamed(&'q str),
}

impl Session<'_> {
    /// `sql` made ready for `params`' types: prepared once per connection, then cached.
    /// Running a ready statement sends it at once, so several can be pipelined in order.
    pub(super) async fn ready<'q>(
        &self,
        sql: &'q str,
        params: &[Param<'_>],
    ) -> Result<Ready<'q>, tokio_postgres::Error> {
        if !self.prepared {
            return Ok(Ready::Unnamed(sql));
        }
        let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
        let statement = self.cache.prepare_typed(self.client, sql, &types).await?;
        Ok(Ready::Named(statement))
    }

    /// The rows of a ready statement with `params`.
    pub(super) async fn run(
        &self,
        statement: &Ready<'_>,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        match statement {
            Ready::Unnamed(sql) => self.client.query_typed(sql, params).await,
            Ready::Named(statement) => {
                let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
                self.client.query(statement, &values).await
            }
        }
    }

    /// The rows of a claim `sql` with `params`, in a transaction of its own (one round trip)
    /// with bitmap scans off. A backlog of one subscription is a correlation the planner
    /// does not see (it guesses a few due rows where there are thousands), and would read
    /// and sort every due row for a batch; this way it walks the index in the claim's order
    /// and reads only the rows it takes, whatever the backlog. A failed statement aborts
    /// the transaction, which the COMMIT then ends.
    pub(super) async fn query_in_order(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        // Prepared first: a statement that waited for its Parse would go after the COMMIT.
        let statement = self.ready(sql, params).await?;
        let (begin, rows, commit) = futures_util::future::join3(
            self.client.batch_execute(BEGIN_IN_ORDER),
            self.run(&statement, params),
            self.client.batch_execute("COMMIT"),
        )
        .await;
        begin.and(rows).and_then(|rows| commit.map(|()| rows))
    }

    /// The rows of `sql` with `params` (none for a statement that returns none).
    pub(super) async fn query(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = self.ready(sql, params).await?;
        self.run(&statement, params).await
    }
}

/// The settings of every connection to `url`: the application name (unless the URL names
/// one), `connect_timeout`, keepalives, and a bound on a dead peer.
pub(super) fn client_config(
    url: &DatabaseUrl,
    pg: &PostgresSettings,
) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.expose().parse()?;
    if config.get_application_name().is_none() {
        config.application_name("hookrelay");
    }
    config
        .connect_timeout(pg.connect_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        // A dead peer fails a statement in this time instead of the kernel's 15 minutes.
        .tcp_user_timeout(pg.connect_timeout.max(Duration::from_secs(10)));
    Ok(config)
}

/// A failure of the connection rather than of a statement: the socket, or the server
/// ending the session (shutdown, terminated backend, not accepting connections).
pub(super) fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        None => true,
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                ]
                .contains(code)
        }
    }
}

/// A unique key refused the write.
pub(super) fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}
