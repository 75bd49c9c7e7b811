//! The embedded store: SQLite (WAL) owned by one writer thread. Callers send jobs over a
//! bounded channel; the thread drains whatever is waiting, runs it all in one transaction and
//! commits once (group commit), so durability costs one fsync per batch, not per request.
//! A full channel is refused at once for ingest (the app gets 503), never buffered.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use prometheus::Histogram;
use rusqlite::types::{FromSql, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension, ToSql, params};
use tokio::sync::{mpsc, oneshot};

use super::{
    Accepted, Admission, Cause, Delivery, DeliveryId, DeliveryInfo, DeliveryQuery, DeliveryState,
    EventStatus, Housekeeping, Notification, Outcome, PullMode, Pulled, QueueStats, Release, Store,
    StoreError, StoredSubscription,
};
use crate::event::RawMeta;
use crate::store::settings::{StorageLocation, StorageSettings, SyncMode};
use crate::store::state_code;

/// `states!(Pending, Waiting)` is the SQL text `"(0, 7)"`, for `state IN` lists.
///
/// States are written into the SQL as literals (through this and `state_code!`), never bound
/// as parameters: SQLite uses a partial index only when the query's WHERE literally implies
/// the index's own (`state = 0`, `state IN (0, 1, 5, 7)`), which `state = ?1` never does.
macro_rules! states {
    ($first:ident $(, $rest:ident)*) => {
        concat!(
            "(",
            $crate::store::state_code!($first)
            $(, ", ", $crate::store::state_code!($rest))*,
            ")"
        )
    };
}

/// The schema this build writes; older files are migrated forward on open.
pub const SCHEMA_VERSION: i64 = 5;
/// Most jobs in one transaction.
const MAX_BATCH: usize = 2048;
/// Rows changed per housekeeping statement, so pruning never holds the writer long.
const HOUSEKEEPING_BATCH: i64 = 1000;
/// How often the size limit is re-checked.
const SIZE_CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Migrations: entry `i` upgrades a file from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    concat!(
        "
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    data BLOB NOT NULL,
    subscriptions TEXT NOT NULL
);
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    event_seq INTEGER NOT NULL,
    subscription TEXT NOT NULL,
    state INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    received_at INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    delivered_at INTEGER,
    finished_at INTEGER
);
CREATE INDEX deliveries_due ON deliveries(subscription, next_attempt_at) WHERE state = ",
        state_code!(Pending),
        ";
CREATE INDEX deliveries_state ON deliveries(state, subscription, received_at);
CREATE INDEX deliveries_event ON deliveries(event_seq);
CREATE INDEX deliveries_expiry ON deliveries(expires_at) WHERE state IN ",
        states!(Pending, Orphaned),
        ";
CREATE INDEX deliveries_finished ON deliveries(finished_at) WHERE state IN ",
        states!(Delivered, Failed, Expired, Cancelled),
        ";
CREATE INDEX events_received ON events(received_at);
CREATE TABLE releases (scope TEXT PRIMARY KEY, released_at INTEGER NOT NULL);
"
    ),
    "
CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
",
    concat!(
        "
CREATE INDEX deliveries_fifo ON deliveries(subscription, id) WHERE state = ",
        state_code!(Pending),
        ";
"
    ),
    // Ordered delivery: a key per delivery of an ordered subscription, the `waiting` state,
    // and an index to find a key's oldest unfinished delivery.
    concat!(
        "
ALTER TABLE deliveries ADD COLUMN ordering_key TEXT;
CREATE INDEX deliveries_order ON deliveries(subscription, ordering_key, id)
    WHERE state IN ",
        states!(Pending, InFlight, Orphaned, Waiting),
        " AND ordering_key IS NOT NULL;
DROP INDEX deliveries_expiry;
CREATE INDEX deliveries_expiry ON deliveries(expires_at) WHERE state IN ",
        states!(Pending, Orphaned, Waiting),
        ";
"
    ),
    // Raw events: their content type and attributes (a JSON object); both NULL for an
    // envelope event (JSON data, no attributes), so existing rows need no rewrite.
    "
ALTER TABLE events ADD COLUMN content_type TEXT;
ALTER TABLE events ADD COLUMN attributes TEXT;
",
];

impl ToSql for DeliveryState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.code()))
    }
}

impl FromSql for DeliveryState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        i64::column_result(value).map(DeliveryState::from_code)
    }
}

/// Histograms the writer fills.
#[derive(Clone)]
pub struct WriterMetrics {
    /// Seconds per transaction, commit included.
    pub commit_duration: Histogram,
    /// Jobs per transaction.
    pub batch_size: Histogram,
}

type Finish = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type Job = Box<dyn FnOnce(Result<&Connection, StoreError>) -> (bool, Finish) + Send>;

/// An attempt outcome waiting for the writer, with whom to tell once it is kept.
type QueuedOutcome = (DeliveryId, Outcome, oneshot::Sender<Result<(), StoreError>>);

/// Attempt outcomes waiting for the writer; one job records all of them.
#[derive(Default)]
struct OutcomeQueue {
    items: Vec<QueuedOutcome>,
    /// A job that will take `items` is on its way to the writer.
    job_queued: bool,
}

type Outcomes = Arc<std::sync::Mutex<OutcomeQueue>>;

/// Takes the queued outcomes for the job that records them. If that job is dropped without
/// running (the writer died), the outcomes are answered with an error instead of waiting.
struct OutcomeBatch {
    outcomes: Outcomes,
    taken: bool,
}

impl OutcomeBatch {
    fn take(&mut self) -> Vec<QueuedOutcome> {
        self.taken = true;
        let mut q = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        q.job_queued = false;
        std::mem::take(&mut q.items)
    }
}

impl Drop for OutcomeBatch {
    fn drop(&mut self) {
        if !self.taken {
            for (_, _, tx) in self.take() {
                let _ = tx.send(Err(stopped()));
            }
        }
    }
}

/// The SQLite store.
pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    /// The read-only connection for queries that change nothing (file databases only).
    reader: Option<Arc<std::sync::Mutex<Connection>>>,
    /// Highest event `seq` the pruning scan has passed.
    prune_cursor: Arc<std::sync::atomic::AtomicI64>,
    outcomes: Outcomes,
    over_size: Arc<AtomicBool>,
    /// Subscriptions deleted (state `cancelled`) or gone from the config (`orphaned`) since
    /// the start, with the state their new deliveries get. Only writer jobs touch it, so an
    /// event matched before the change but stored after it never leaves a pending delivery
    /// that no pump will send.
    retired: Retired,
    ttl_ms: i64,
    retention_ms: i64,
}

impl SqliteStore {
    /// Opens (creating, migrating) the database and starts the writer thread.
    pub fn open(
        settings: &StorageSettings,
        metrics: WriterMetrics,
    ) -> Result<SqliteStore, StoreError> {
        let conn = open_connection(settings)?;
        // Reads (scrapes, status, lists, due times) use their own connection, so they never
        // wait for or delay a group commit. WAL lets it read while the writer writes; an
        // in-memory database has one connection, so there reads go through the writer.
        let reader = match &settings.location {
            StorageLocation::File(path) => {
                let r = Connection::open_with_flags(
                    path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .and_then(|r| {
                    r.busy_timeout(BUSY_TIMEOUT)?;
                    Ok(r)
                })
                .map_err(|e| StoreError::Open {
                    path: path.display().to_string(),
                    context: "cannot open a read connection".into(),
                    source: Some(Arc::new(e)),
                })?;
                Some(Arc::new(std::sync::Mutex::new(r)))
            }
            StorageLocation::Memory => None,
        };
        let (jobs, rx) = mpsc::channel(settings.queue_capacity);
        let over_size = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            conn,
            rx,
            metrics,
            max_size: settings.max_size,
            over_size: over_size.clone(),
        };
        std::thread::Builder::new()
            .name("hookrelay-store".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::unavailable_from("cannot start the writer thread", e))?;
        Ok(SqliteStore {
            jobs,
            reader,
            prune_cursor: Arc::default(),
            retired: Retired::default(),
            outcomes: Outcomes::default(),
            over_size,
            ttl_ms: settings.ttl.as_millis() as i64,
            retention_ms: settings.retention.as_millis() as i64,
        })
    }

    /// Runs a query that changes nothing: on the read connection, off the async runtime.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let Some(reader) = self.reader.clone() else {
            return self.run(false, f).await;
        };
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|e| e.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::unavailable_from("read task failed", e))?
    }

    /// Runs `f` in the writer's next transaction and returns its result once committed.
    /// `admission` jobs are refused at once when the channel is full.
    async fn run<T, F>(&self, admission: bool, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| match conn {
            Err(e) => {
                let _ = tx.send(Err(e));
                (false, Box::new(|_| {}))
            }
            Ok(conn) => {
                let result = f(conn);
                let ok = result.is_ok();
                let finish: Finish = Box::new(move |commit| {
                    let _ = tx.send(commit.and(result));
                });
                (ok, finish)
            }
        });
        if admission {
            self.jobs.try_send(job).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    StoreError::Busy("the store's write queue is full".into())
                }
                mpsc::error::TrySendError::Closed(_) => stopped(),
            })?;
        } else {
            self.jobs.send(job).await.map_err(|_| stopped())?;
        }
        rx.await.map_err(|_| stopped())?
    }

    /// Like `run`, and once `f` succeeds, changes the tombstones by `marks` inside the same
    /// job (so later jobs of the batch see them); puts them back if the commit fails.
    async fn run_marking<T, F>(
        &self,
        marks: Vec<(String, Option<DeliveryState>)>,
        f: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let retired = self.retired.clone();
        let job: Job = Box::new(move |conn| {
            let result = conn.and_then(f);
            let ok = result.is_ok();
            let undo = if ok { retired.mark(marks) } else { Vec::new() };
            let finish: Finish = Box::new(move |commit| {
                if commit.is_err() {
                    retired.mark(undo);
                }
                let _ = tx.send(commit.and(result));
            });
            (ok, finish)
        });
        self.jobs.send(job).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::unavailable("the store's writer has stopped")
}

fn sql_error(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => StoreError::unavailable_from("disk full", e),
        Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => {
            StoreError::Busy("the database is locked".into())
        }
        _ => StoreError::unavailable_from("", e),
    }
}

fn open_connection(settings: &StorageSettings) -> Result<Connection, StoreError> {
    let (conn, shown) = match &settings.location {
        StorageLocation::Memory => (Connection::open_in_memory(), ":memory:".to_string()),
        StorageLocation::File(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                    path: path.display().to_string(),
                    context: format!("cannot create directory {}", dir.display()),
                    source: Some(Arc::new(e)),
                })?;
            }
            (Connection::open(path), path.display().to_string())
        }
    };
    // Every refusal names the file; `failed(context)` maps an SQLite error into one.
    let fail = |context: String, source: Option<rusqlite::Error>| StoreError::Open {
        path: shown.clone(),
        context,
        source: source.map(|e| Arc::new(e) as Cause),
    };
    let failed = |context: &str| {
        let context = context.to_string();
        move |e| fail(context, Some(e))
    };
    let conn = conn.map_err(failed(""))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(failed(""))?;
    // Any first read tells a database from another kind of file.
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .and_then(|v| conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(v)))
        .map_err(failed("unreadable (corrupt, or not a hookrelay database)"))?;
    if version > SCHEMA_VERSION {
        return Err(fail(
            format!(
                "its schema version {version} is newer than this hookrelay supports ({SCHEMA_VERSION}); run a newer hookrelay"
            ),
            None,
        ));
    }
    let sync = match settings.sync {
        SyncMode::Full => "FULL",
        SyncMode::Normal => "NORMAL",
    };
    let journal = match settings.location {
        StorageLocation::Memory => "MEMORY",
        StorageLocation::File(_) => "WAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = {journal};
         PRAGMA synchronous = {sync};
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -32768;
"
    ))
    .map_err(failed(""))?;
    let check = conn
        .query_row("PRAGMA quick_check(1)", [], |r| r.get::<_, String>(0))
        .map_err(failed("integrity check failed"))?;
    if check != "ok" {
        return Err(fail(format!("integrity check failed: {check}"), None));
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let to = from as i64 + 1;
        conn.execute_batch(&format!(
            "BEGIN; {sql}; PRAGMA user_version = {to}; COMMIT;"
        ))
        .map_err(failed(&format!("migration to schema version {to} failed")))?;
    }
    // Attempts cut short by a crash are made again (at-least-once).
    conn.execute(
        "UPDATE deliveries SET state = ?1 WHERE state = ?2",
        params![DeliveryState::Pending, DeliveryState::InFlight],
    )
    .map_err(failed(""))?;
    Ok(conn)
}

struct Writer {
    conn: Connection,
    rx: mpsc::Receiver<Job>,
    metrics: WriterMetrics,
    max_size: Option<u64>,
    over_size: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self) {
        let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
        let mut size_checked = Instant::now() - SIZE_CHECK_EVERY;
        self.check_size();
        while let Some(first) = self.rx.blocking_recv() {
            jobs.push(first);
            while jobs.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            let size = jobs.len();
            self.transaction(&mut jobs);
            self.metrics
                .commit_duration
                .observe(started.elapsed().as_secs_f64());
            self.metrics.batch_size.observe(size as f64);
            if size_checked.elapsed() >= SIZE_CHECK_EVERY {
                self.check_size();
                size_checked = Instant::now();
            }
        }
        // Every sender is gone: the relay is stopping. Closing checkpoints the WAL.
        if let Err((_, e)) = self.conn.close() {
            tracing::warn!(error = %e, "closing the store");
        }
    }

    fn transaction(&mut self, jobs: &mut Vec<Job>) {
        let conn = &self.conn;
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let err = sql_error(e);
            tracing::error!(error = %err, "store transaction could not start");
            for job in jobs.drain(..) {
                let (_, finish) = job(Err(err.clone()));
                finish(Err(err.clone()));
            }
            return;
        }
        let mut finishes = Vec::with_capacity(jobs.len());
        let mut aborted = None;
        for job in jobs.drain(..) {
            if let Some(err) = &aborted {
                let (_, finish) = job(Err(StoreError::clone(err)));
                finish(Err(StoreError::clone(err)));
                continue;
            }
            // A savepoint per job: one failing job leaves the others' writes intact.
            let run = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]));
            let _ = run("SAVEPOINT job");
            let (ok, finish) = job(Ok(conn));
            if !ok {
                let _ = run("ROLLBACK TO job");
            }
            let _ = run("RELEASE job");
            finishes.push(finish);
            // SQLite rolls the whole transaction back by itself on some errors (disk full,
            // I/O): then nothing of this batch is kept, and no later job may run outside it.
            if conn.is_autocommit() {
                aborted = Some(StoreError::unavailable(
                    "the store's transaction was rolled back",
                ));
            }
        }
        let commit = match aborted {
            Some(err) => Err(err),
            None => conn.execute_batch("COMMIT").map_err(sql_error),
        };
        if let Err(e) = &commit {
            tracing::error!(error = %e, "store commit failed");
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        for finish in finishes {
            finish(commit.clone());
        }
    }

    fn check_size(&self) {
        let Some(max) = self.max_size else { return };
        let used = self
            .conn
            .query_row(
                "SELECT (SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count()), (SELECT page_size FROM pragma_page_size())",
                [],
                |r| Ok(r.get::<_, i64>(0)? * r.get::<_, i64>(1)?),
            )
            .unwrap_or(0);
        let over = used as u64 > max;
        if over != self.over_size.swap(over, Ordering::Relaxed) {
            if over {
                tracing::warn!(
                    used,
                    max,
                    "store is above storage.max_size: ingest answers 503"
                );
            } else {
                tracing::info!(used, max, "store is below storage.max_size again");
            }
        }
    }
}

/// A raw event's attributes as stored: a JSON object, or NULL when it has none.
fn attributes_json(attributes: &[(String, String)]) -> Option<String> {
    if attributes.is_empty() {
        return None;
    }
    let map: serde_json::Map<String, serde_json::Value> = attributes
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    Some(serde_json::Value::Object(map).to_string())
}

/// A raw event's content type and attributes from columns `i` and `i + 1`; `None` (both
/// NULL) for an envelope event.
fn raw_meta(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<Arc<RawMeta>>> {
    let Some(content_type) = row.get::<_, Option<String>>(i)? else {
        return Ok(None);
    };
    let attributes = match row.get::<_, Option<String>>(i + 1)? {
        None => Vec::new(),
        Some(text) => {
            let map: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&text).unwrap_or_default();
            map.into_iter()
                .filter_map(|(k, v)| match v {
                    serde_json::Value::String(v) => Some((k, v)),
                    _ => None,
                })
                .collect()
        }
    };
    Ok(Some(Arc::new(RawMeta {
        content_type,
        attributes,
    })))
}

const INFO_COLUMNS: &str = "d.id, d.subscription, e.id, e.type, d.state, d.attempts, d.last_status, d.last_error, d.next_attempt_at, d.delivered_at, d.received_at";

fn info(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryInfo> {
    let state: DeliveryState = row.get(4)?;
    Ok(DeliveryInfo {
        id: row.get(0)?,
        subscription: row.get(1)?,
        event_id: row.get(2)?,
        event_type: row.get(3)?,
        state,
        attempts: row.get(5)?,
        last_status: row.get(6)?,
        last_error: row.get(7)?,
        next_attempt_at_ms: if state == DeliveryState::Pending {
            row.get(8)?
        } else {
            None
        },
        delivered_at_ms: row.get(9)?,
        received_at_ms: row.get(10)?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    fn healthy(&self) -> bool {
        !self.jobs.is_closed()
    }

    async fn accept(&self, batch: Vec<Accepted>) -> Result<Vec<Admission>, StoreError> {
        if self.over_size.load(Ordering::Relaxed) {
            return Err(StoreError::Busy(
                "the store is above storage.max_size".into(),
            ));
        }
        let ttl = self.ttl_ms;
        let retired = self.retired.clone();
        self.run(true, move |conn| {
            let retired = retired.lock();
            let mut insert_event = conn
                .prepare_cached(
                    "INSERT INTO events (id, type, received_at, data, subscriptions, content_type, attributes)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING",
                )
                .map_err(sql_error)?;
            let mut insert_delivery = conn
                .prepare_cached(
                    "INSERT INTO deliveries (event_seq, subscription, state, received_at, next_attempt_at, expires_at, ordering_key)
                     VALUES (?1, ?2, ?5, ?3, ?3, ?4, ?6)",
                )
                .map_err(sql_error)?;
            let mut key_busy = conn
                .prepare_cached(
                    concat!("SELECT EXISTS (SELECT 1 FROM deliveries INDEXED BY deliveries_order
                     WHERE subscription = ?1 AND ordering_key = ?2 AND state IN ", states!(Pending, InFlight, Orphaned, Waiting), ")"),
                )
                .map_err(sql_error)?;
            let mut original = conn
                .prepare_cached("SELECT subscriptions FROM events WHERE id = ?1")
                .map_err(sql_error)?;
            let mut out = Vec::with_capacity(batch.len());
            for a in batch {
                let names: Vec<&str> = a.subscriptions().map(|s| &**s).collect();
                let names_json = serde_json::to_string(&names).unwrap_or_else(|_| "[]".into());
                let e = &a.event;
                let (content_type, attributes) = match e.raw.as_deref() {
                    None => (None, None),
                    Some(raw) => (Some(raw.content_type.as_str()), attributes_json(&raw.attributes)),
                };
                let inserted = insert_event
                    .execute(params![
                        e.id,
                        e.event_type,
                        e.received_at_ms,
                        &e.data[..],
                        names_json,
                        content_type,
                        attributes
                    ])
                    .map_err(sql_error)?;
                if inserted == 0 {
                    let text: String = original.query_row([&e.id], |r| r.get(0)).map_err(sql_error)?;
                    out.push(Admission::Duplicate {
                        subscriptions: serde_json::from_str(&text).unwrap_or_default(),
                    });
                    continue;
                }
                let seq = conn.last_insert_rowid();
                let mut ids = Vec::with_capacity(a.deliveries.len());
                for d in &a.deliveries {
                    let name = &*d.subscription;
                    let retired_as = if retired.is_empty() { None } else { retired.get(name).copied() };
                    let key = d.ordering_key.as_deref();
                    // Ordered: behind an unfinished delivery of the same key, it waits.
                    let behind = match key {
                        Some(k) => key_busy.query_row(params![name, k], |r| r.get::<_, bool>(0)).map_err(sql_error)?,
                        None => false,
                    };
                    let state = match retired_as {
                        Some(state) => state,
                        None if behind => DeliveryState::Waiting,
                        None if d.handed_off => DeliveryState::InFlight,
                        None => DeliveryState::Pending,
                    };
                    let expires = e.received_at_ms + d.ttl_ms.unwrap_or(ttl);
                    insert_delivery
                        .execute(params![seq, name, e.received_at_ms, expires, state, key])
                        .map_err(sql_error)?;
                    let id = conn.last_insert_rowid();
                    if state == DeliveryState::Cancelled {
                        conn.prepare_cached("UPDATE deliveries SET finished_at = ?2 WHERE id = ?1")
                            .and_then(|mut s| s.execute(params![id, e.received_at_ms]))
                            .map_err(sql_error)?;
                    }
                    ids.push(id);
                }
                out.push(Admission::Stored(ids));
            }
            Ok(out)
        })
        .await
    }

    async fn claim_due(
        &self,
        subscription: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let sub = subscription.to_string();
        self.run(false, move |conn| {
            let mut select = conn
                .prepare_cached(
                    concat!("SELECT d.id, d.attempts, e.id, e.type, e.data, e.received_at, e.content_type, e.attributes
                     FROM deliveries d JOIN events e ON e.seq = d.event_seq
                     WHERE d.subscription = ?1 AND d.state = ", state_code!(Pending), " AND d.next_attempt_at <= ?2
                       AND d.expires_at > ?2
                     ORDER BY d.next_attempt_at, d.id LIMIT ?3"),
                )
                .map_err(sql_error)?;
            let name: Arc<str> = Arc::from(sub.as_str());
            let claimed: Vec<Delivery> = select
                .query_map(params![sub, now_ms, limit as i64], |r| {
                    Ok(Delivery {
                        id: r.get(0)?,
                        attempts: r.get(1)?,
                        event_id: Arc::from(r.get::<_, String>(2)?),
                        event_type: Arc::from(r.get::<_, String>(3)?),
                        data: Bytes::from(r.get::<_, Vec<u8>>(4)?),
                        received_at_ms: r.get(5)?,
                        raw: raw_meta(r, 6)?,
                        subscription: name.clone(),
                    })
                })
                .map_err(sql_error)?
                .collect::<Result<_, _>>()
                .map_err(sql_error)?;
            let mut mark = conn
                .prepare_cached(concat!("UPDATE deliveries SET state = ", state_code!(InFlight), " WHERE id = ?1"))
                .map_err(sql_error)?;
            for d in &claimed {
                mark.execute([d.id]).map_err(sql_error)?;
            }
            Ok(claimed)
        })
        .await
    }

    async fn next_due_ms(&self, subscription: &str) -> Result<Option<i64>, StoreError> {
        let sub = subscription.to_string();
        self.read(move |conn| {
            conn.prepare_cached(concat!(
                "SELECT min(next_attempt_at) FROM deliveries WHERE subscription = ?1 AND state = ",
                state_code!(Pending)
            ))
            .and_then(|mut s| s.query_row([sub], |r| r.get(0)))
            .map_err(sql_error)
        })
        .await
    }

    async fn complete(&self, id: DeliveryId, outcome: Outcome) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        // Outcomes are coalesced: the first one queued sends a job that records all queued
        // by the time it runs, so a busy relay writes them in bulk.
        let send_job = {
            let mut q = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
            q.items.push((id, outcome, tx));
            !std::mem::replace(&mut q.job_queued, true)
        };
        if send_job {
            let mut guard = OutcomeBatch {
                outcomes: self.outcomes.clone(),
                taken: false,
            };
            let job: Job = Box::new(move |conn| {
                let batch = guard.take();
                let result = conn.and_then(|conn| record_outcomes(conn, &batch));
                let ok = result.is_ok();
                let finish: Finish = Box::new(move |commit| {
                    let outcome = commit.and(result);
                    for (_, _, tx) in batch {
                        let _ = tx.send(outcome.clone());
                    }
                });
                (ok, finish)
            });
            // If the writer is gone, the job is dropped here and its guard answers everyone.
            let _ = self.jobs.send(job).await;
        }
        rx.await.map_err(|_| stopped())?
    }

    async fn unclaim(&self, ids: Vec<DeliveryId>) -> Result<(), StoreError> {
        self.run(false, move |conn| {
            let mut s = conn
                .prepare_cached(concat!(
                    "UPDATE deliveries SET state = ",
                    state_code!(Pending),
                    " WHERE id = ?1 AND state = ",
                    state_code!(InFlight)
                ))
                .map_err(sql_error)?;
            for id in ids {
                s.execute([id]).map_err(sql_error)?;
            }
            Ok(())
        })
        .await
    }

    async fn stats(&self) -> Result<HashMap<String, QueueStats>, StoreError> {
        self.read(|conn| {
            let mut out: HashMap<String, QueueStats> = HashMap::new();
            let mut live = conn
                .prepare_cached(concat!(
                    "SELECT subscription, count(*), min(received_at) FROM deliveries
                     WHERE state IN ",
                    states!(Pending, InFlight, Waiting),
                    " GROUP BY subscription"
                ))
                .map_err(sql_error)?;
            let rows = live
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                    ))
                })
                .map_err(sql_error)?;
            for row in rows {
                let (name, depth, oldest) = row.map_err(sql_error)?;
                let e = out.entry(name).or_default();
                e.depth = depth as u64;
                e.oldest_ms = oldest;
            }
            let mut dead = conn
                .prepare_cached(concat!(
                    "SELECT subscription, count(*) FILTER (WHERE state = ",
                    state_code!(Failed),
                    "),
                     count(*) FILTER (WHERE state = ",
                    state_code!(Orphaned),
                    ")
                     FROM deliveries WHERE state IN ",
                    states!(Failed, Orphaned),
                    " GROUP BY subscription"
                ))
                .map_err(sql_error)?;
            let rows = dead
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(sql_error)?;
            for row in rows {
                let (name, dead, orphaned) = row.map_err(sql_error)?;
                let e = out.entry(name).or_default();
                e.dead_letters = dead as u64;
                e.orphaned = orphaned as u64;
            }
            Ok(out)
        })
        .await
    }

    async fn event_status(&self, id: &str) -> Result<Option<EventStatus>, StoreError> {
        let id = id.to_string();
        self.read(move |conn| {
            let head = conn
                .prepare_cached(
                    "SELECT seq, type, received_at, content_type, attributes FROM events WHERE id = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([&id], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            raw_meta(r, 3)?,
                        ))
                    })
                    .optional()
                })
                .map_err(sql_error)?;
            let Some((seq, event_type, received_at_ms, raw)) = head else {
                return Ok(None);
            };
            let mut s = conn
                .prepare_cached(&format!(
                    "SELECT {INFO_COLUMNS} FROM deliveries d JOIN events e ON e.seq = d.event_seq
                     WHERE d.event_seq = ?1 ORDER BY d.id"
                ))
                .map_err(sql_error)?;
            let deliveries = s
                .query_map([seq], info)
                .map_err(sql_error)?
                .collect::<Result<_, _>>()
                .map_err(sql_error)?;
            Ok(Some(EventStatus {
                id,
                event_type,
                received_at_ms,
                raw,
                deliveries,
            }))
        })
        .await
    }

    async fn deliveries(&self, q: DeliveryQuery) -> Result<Vec<DeliveryInfo>, StoreError> {
        self.read(move |conn| {
            // Two statements, so each can walk its index in id order instead of sorting.
            let by_subscription = if q.subscription.is_some() {
                "AND d.subscription = ?2"
            } else {
                "AND ?2 IS NULL"
            };
            let mut s = conn
                .prepare_cached(&format!(
                    "SELECT {INFO_COLUMNS} FROM deliveries d JOIN events e ON e.seq = d.event_seq
                     WHERE d.state = ?1 {by_subscription} AND d.id > ?3
                     ORDER BY d.id LIMIT ?4"
                ))
                .map_err(sql_error)?;
            let rows = s
                .query_map(
                    params![
                        q.state.code(),
                        q.subscription,
                        q.after.unwrap_or(0),
                        q.limit as i64
                    ],
                    info,
                )
                .map_err(sql_error)?
                .collect::<Result<_, _>>()
                .map_err(sql_error)?;
            Ok(rows)
        })
        .await
    }

    async fn release(
        &self,
        scope: Option<String>,
        subscriptions: Vec<String>,
        now_ms: i64,
        min_interval_ms: i64,
    ) -> Result<Release, StoreError> {
        let ttl = self.ttl_ms;
        self.run(false, move |conn| {
            let key = scope
                .as_deref()
                .map_or_else(|| "*".to_string(), |s| format!("subscription:{s}"));
            let last: Option<i64> = conn
                .query_row(
                    "SELECT released_at FROM releases WHERE scope = ?1",
                    [&key],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql_error)?;
            if let Some(at) = last
                && now_ms < at + min_interval_ms
            {
                return Ok(Release::TooSoon {
                    next_allowed_ms: at + min_interval_ms,
                });
            }
            let names = match &scope {
                Some(s) => vec![s.clone()],
                None => subscriptions,
            };
            let names_json = serde_json::to_string(&names).unwrap_or_else(|_| "[]".into());
            let released = conn
                .execute(
                    concat!(
                        "UPDATE deliveries SET state = ",
                        state_code!(Pending),
                        ", attempts = 0, next_attempt_at = ?1, expires_at = ?2,
                     finished_at = NULL, ordering_key = NULL
                     WHERE state IN ",
                        states!(Failed, Expired),
                        " AND subscription IN (SELECT value FROM json_each(?3))"
                    ),
                    params![now_ms, now_ms + ttl, names_json],
                )
                .map_err(sql_error)?;
            conn.execute(
                "INSERT INTO releases (scope, released_at) VALUES (?1, ?2)
                 ON CONFLICT (scope) DO UPDATE SET released_at = excluded.released_at",
                params![key, now_ms],
            )
            .map_err(sql_error)?;
            Ok(Release::Released(released as u64))
        })
        .await
    }

    async fn retry_delivery(
        &self,
        id: DeliveryId,
        now_ms: i64,
        subscriptions: Vec<String>,
    ) -> Result<Option<(DeliveryState, String)>, StoreError> {
        let ttl = self.ttl_ms;
        self.run(false, move |conn| {
            let before = conn
                .query_row(
                    "SELECT state, subscription FROM deliveries WHERE id = ?1",
                    [id],
                    |r| Ok((r.get::<_, DeliveryState>(0)?, r.get::<_, String>(1)?)),
                )
                .optional()
                .map_err(sql_error)?;
            if let Some((DeliveryState::Failed | DeliveryState::Expired, sub)) = &before
                && subscriptions.contains(sub)
            {
                conn.execute(
                    concat!(
                        "UPDATE deliveries SET state = ",
                        state_code!(Pending),
                        ", attempts = 0, next_attempt_at = ?2, expires_at = ?3,
                     finished_at = NULL, ordering_key = NULL WHERE id = ?1"
                    ),
                    params![id, now_ms, now_ms + ttl],
                )
                .map_err(sql_error)?;
            }
            Ok(before)
        })
        .await
    }

    async fn delete_delivery(&self, id: DeliveryId) -> Result<Option<DeliveryState>, StoreError> {
        self.run(false, move |conn| {
            let before = conn
                .query_row("SELECT state FROM deliveries WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(sql_error)?;
            if let Some(state) = before
                && !matches!(state, DeliveryState::Pending | DeliveryState::InFlight)
            {
                conn.execute("DELETE FROM deliveries WHERE id = ?1", [id])
                    .map_err(sql_error)?;
            }
            Ok(before)
        })
        .await
    }

    async fn subscriptions(&self) -> Result<Vec<StoredSubscription>, StoreError> {
        self.read(|conn| {
            let mut s = conn
                .prepare("SELECT id, name, spec, created_at, updated_at FROM subscriptions ORDER BY created_at, id")
                .map_err(sql_error)?;
            let rows = s
                .query_map([], |r| {
                    Ok(StoredSubscription {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        spec: r.get(2)?,
                        created_at_ms: r.get(3)?,
                        updated_at_ms: r.get(4)?,
                    })
                })
                .map_err(sql_error)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(sql_error)
        })
        .await
    }

    async fn save_subscription(&self, sub: StoredSubscription) -> Result<(), StoreError> {
        let retired = self.retired.clone();
        self.run(false, move |conn| {
            conn.prepare_cached(
                "INSERT INTO subscriptions (id, name, spec, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
            )
            .and_then(|mut s| {
                s.execute(params![sub.id, sub.name, sub.spec, sub.created_at_ms, sub.updated_at_ms])
            })
            .map_err(|e| match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::ConstraintViolation) => {
                    StoreError::Conflict(format!("the name {:?} is already in use", sub.name))
                }
                _ => sql_error(e),
            })?;
            // A name deleted earlier is in use again.
            retired.lock().remove(&sub.name);
            Ok(())
        })
        .await
    }

    async fn delete_subscription(
        &self,
        id: String,
        name: String,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        // The tombstone: events matched before the delete but stored after it are cancelled.
        let marks = vec![(name.clone(), Some(DeliveryState::Cancelled))];
        self.run_marking(marks, move |conn| {
            conn.execute("DELETE FROM subscriptions WHERE id = ?1", [&id])
                .map_err(sql_error)?;
            let cancelled = conn
                .execute(
                    "UPDATE deliveries SET state = ?1, finished_at = ?2
                     WHERE subscription = ?3 AND state IN (?4, ?5, ?6, ?7)",
                    params![
                        DeliveryState::Cancelled,
                        now_ms,
                        name,
                        DeliveryState::Pending,
                        DeliveryState::InFlight,
                        DeliveryState::Orphaned,
                        DeliveryState::Waiting
                    ],
                )
                .map_err(sql_error)?;
            // Its dead letters go too: a later subscription of the same name must not
            // release them to its own URL. Already counted as failed or expired.
            conn.execute(
                "UPDATE deliveries SET state = ?1 WHERE subscription = ?2 AND state IN (?3, ?4)",
                params![
                    DeliveryState::Cancelled,
                    name,
                    DeliveryState::Failed,
                    DeliveryState::Expired
                ],
            )
            .map_err(sql_error)?;
            Ok(cancelled as u64)
        })
        .await
    }

    async fn clear_ordering(&self, subscriptions: Vec<String>) -> Result<u64, StoreError> {
        self.run(false, move |conn| {
            let names = serde_json::to_string(&subscriptions).unwrap_or_else(|_| "[]".into());
            let released = conn
                .prepare_cached(concat!(
                    "UPDATE deliveries SET state = CASE state WHEN ",
                    state_code!(Waiting),
                    " THEN ",
                    state_code!(Pending),
                    " ELSE state END,
                     ordering_key = NULL
                     WHERE id IN (SELECT id FROM deliveries INDEXED BY deliveries_order
                                  WHERE subscription IN (SELECT value FROM json_each(?1))
                                  AND ordering_key IS NOT NULL AND state IN ",
                    states!(Pending, InFlight, Orphaned, Waiting),
                    ")"
                ))
                .and_then(|mut stmt| stmt.execute([names]))
                .map_err(sql_error)?;
            Ok(released as u64)
        })
        .await
    }

    async fn retire_subscriptions(
        &self,
        removed: Vec<String>,
        restored: Vec<String>,
    ) -> Result<(u64, u64), StoreError> {
        // Tombstones: events matched before the reload but stored after it are orphaned.
        let marks = removed
            .iter()
            .map(|n| (n.clone(), Some(DeliveryState::Orphaned)))
            .chain(restored.iter().map(|n| (n.clone(), None)))
            .collect();
        self.run_marking(marks, move |conn| {
            let json =
                |names: &[String]| serde_json::to_string(names).unwrap_or_else(|_| "[]".into());
            let orphaned = conn
                .execute(
                    "UPDATE deliveries SET state = ?1 WHERE state IN (?2, ?3)
                     AND subscription IN (SELECT value FROM json_each(?4))",
                    params![
                        DeliveryState::Orphaned,
                        DeliveryState::Pending,
                        DeliveryState::InFlight,
                        json(&removed)
                    ],
                )
                .map_err(sql_error)?;
            let resumed = conn
                .execute(
                    "UPDATE deliveries SET state = ?1 WHERE state = ?2
                     AND subscription IN (SELECT value FROM json_each(?3))",
                    params![
                        DeliveryState::Pending,
                        DeliveryState::Orphaned,
                        json(&restored)
                    ],
                )
                .map_err(sql_error)?;
            Ok((orphaned as u64, resumed as u64))
        })
        .await
    }

    async fn pull(
        &self,
        subscription: String,
        now_ms: i64,
        limit: usize,
        mode: PullMode,
    ) -> Result<Pulled, StoreError> {
        self.run(false, move |conn| {
            let mut select = conn
                .prepare_cached(
                    // INDEXED BY: without statistics the planner prefers the due-time
                    // index, reading and sorting the whole backlog to return its head.
                    concat!("SELECT d.id, e.id, e.type, e.received_at, e.data, d.attempts, e.content_type, e.attributes
                     FROM deliveries d INDEXED BY deliveries_fifo
                     JOIN events e ON e.seq = d.event_seq
                     WHERE d.subscription = ?1 AND d.state = ", state_code!(Pending), " AND d.next_attempt_at <= ?2
                       AND d.expires_at > ?2
                     ORDER BY d.id LIMIT ?3"),
                )
                .map_err(sql_error)?;
            let notifications = select
                .query_map(params![subscription, now_ms, limit as i64], |r| {
                    Ok(Notification {
                        id: r.get(0)?,
                        event_id: r.get(1)?,
                        event_type: r.get(2)?,
                        received_at_ms: r.get(3)?,
                        data: Bytes::from(r.get::<_, Vec<u8>>(4)?),
                        redelivered: r.get::<_, i64>(5)? > 0,
                        raw: raw_meta(r, 6)?,
                    })
                })
                .map_err(sql_error)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql_error)?;
            let mut update = match mode {
                PullMode::Consume => conn.prepare_cached(concat!(
                    "UPDATE deliveries SET state = ", state_code!(Delivered), ", attempts = attempts + 1,
                     delivered_at = ?2, finished_at = ?2 WHERE id = ?1",
                )),
                PullMode::Hide(_) => conn.prepare_cached(
                    "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = ?2
                     WHERE id = ?1",
                ),
            }
            .map_err(sql_error)?;
            let at = match mode {
                PullMode::Consume => now_ms,
                PullMode::Hide(ms) => now_ms + ms,
            };
            for n in &notifications {
                update.execute(params![n.id, at]).map_err(sql_error)?;
            }
            let remaining: i64 = conn
                .prepare_cached(
                    concat!("SELECT count(*) FROM deliveries
                     WHERE subscription = ?1 AND state = ", state_code!(Pending), " AND next_attempt_at <= ?2
                       AND expires_at > ?2"),
                )
                .and_then(|mut s| s.query_row(params![subscription, now_ms], |r| r.get(0)))
                .map_err(sql_error)?;
            let next_visible_ms: Option<i64> = conn
                .prepare_cached(
                    concat!("SELECT min(next_attempt_at) FROM deliveries
                     WHERE subscription = ?1 AND state = ", state_code!(Pending), " AND next_attempt_at > ?2"),
                )
                .and_then(|mut s| s.query_row(params![subscription, now_ms], |r| r.get(0)))
                .map_err(sql_error)?;
            Ok(Pulled {
                notifications,
                remaining: remaining as u64,
                next_visible_ms,
            })
        })
        .await
    }

    async fn ack(
        &self,
        subscription: String,
        ids: Vec<DeliveryId>,
        now_ms: i64,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        self.run(false, move |conn| {
            let mut update = conn
                .prepare_cached(concat!(
                    "UPDATE deliveries SET state = ",
                    state_code!(Delivered),
                    ", delivered_at = ?3, finished_at = ?3
                     WHERE id = ?1 AND subscription = ?2 AND state = ",
                    state_code!(Pending),
                    " AND attempts > 0"
                ))
                .map_err(sql_error)?;
            let mut unknown = Vec::new();
            for id in ids {
                if update
                    .execute(params![id, subscription, now_ms])
                    .map_err(sql_error)?
                    == 0
                {
                    unknown.push(id);
                }
            }
            Ok(unknown)
        })
        .await
    }

    async fn sync_subscriptions(&self, known: Vec<String>) -> Result<(u64, u64), StoreError> {
        self.run(false, move |conn| {
            let names = serde_json::to_string(&known).unwrap_or_else(|_| "[]".into());
            let orphaned = conn
                .execute(
                    "UPDATE deliveries SET state = ?1 WHERE state IN (?2, ?3)
                     AND subscription NOT IN (SELECT value FROM json_each(?4))",
                    params![
                        DeliveryState::Orphaned,
                        DeliveryState::Pending,
                        DeliveryState::InFlight,
                        names
                    ],
                )
                .map_err(sql_error)?;
            let resumed = conn
                .execute(
                    "UPDATE deliveries SET state = ?1 WHERE state = ?2
                     AND subscription IN (SELECT value FROM json_each(?3))",
                    params![DeliveryState::Pending, DeliveryState::Orphaned, names],
                )
                .map_err(sql_error)?;
            Ok((orphaned as u64, resumed as u64))
        })
        .await
    }

    async fn housekeeping(&self, now_ms: i64) -> Result<Housekeeping, StoreError> {
        let cutoff = now_ms - self.retention_ms;
        let cursor = self.prune_cursor.clone();
        self.run(false, move |conn| {
            let mut report = Housekeeping::default();
            let mut expire = conn
                .prepare_cached(
                    concat!("UPDATE deliveries SET state = ?1, finished_at = ?2
                     WHERE id IN (SELECT id FROM deliveries INDEXED BY deliveries_expiry
                                  WHERE state IN ", states!(Pending, Orphaned, Waiting), " AND expires_at <= ?2 LIMIT ?3)
                     RETURNING subscription, ordering_key"),
                )
                .map_err(sql_error)?;
            let rows = expire
                .query_map(params![DeliveryState::Expired, now_ms, HOUSEKEEPING_BATCH], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
                })
                .map_err(sql_error)?;
            let mut keys = std::collections::HashSet::new();
            for row in rows {
                let (name, key) = row.map_err(sql_error)?;
                if let Some(key) = key {
                    keys.insert((name.clone(), key));
                }
                *report.expired.entry(name).or_default() += 1;
            }
            // An expired head lets the next delivery of its key go.
            for (name, key) in keys {
                promote_next(conn, &name, &key)?;
            }
            // Terminal deliveries past retention, then their events once nothing refers to
            // them: driven by what was deleted, so old events still in use are not rescanned.
            let mut touched: Vec<i64> = conn
                .prepare_cached(
                    concat!("DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries INDEXED BY deliveries_finished
                     WHERE state IN ", states!(Delivered, Failed, Expired, Cancelled), " AND finished_at <= ?1 LIMIT ?2) RETURNING event_seq"),
                )
                .and_then(|mut s| {
                    s.query_map(params![cutoff, HOUSEKEEPING_BATCH], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()
                })
                .map_err(sql_error)?;
            let pruned = touched.len();
            touched.sort_unstable();
            touched.dedup();
            // Events that never had a delivery (matched nothing) are found by a cursor over
            // `seq`, which follows acceptance order.
            let mut scan = conn
                .prepare_cached("SELECT seq, received_at FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")
                .map_err(sql_error)?;
            let mut last = cursor.load(Ordering::Relaxed);
            let rows: Vec<(i64, i64)> = scan
                .query_map(params![last, HOUSEKEEPING_BATCH], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect())
                .map_err(sql_error)?;
            for (seq, received_at) in rows {
                if received_at > cutoff {
                    break;
                }
                touched.push(seq);
                last = seq;
            }
            cursor.store(last, Ordering::Relaxed);
            let mut delete_event = conn
                .prepare_cached(
                    "DELETE FROM events WHERE seq = ?1 AND received_at <= ?2
                     AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_seq = ?1)",
                )
                .map_err(sql_error)?;
            let mut pruned_events = 0;
            for seq in touched {
                pruned_events += delete_event.execute(params![seq, cutoff]).map_err(sql_error)?;
            }
            report.pruned = (pruned + pruned_events) as u64;
            Ok(report)
        })
        .await
    }
}

/// Writes a batch of attempt outcomes; only rows still in flight change.
/// Tombstones of retired subscriptions: name -> the state their new deliveries get.
#[derive(Clone, Default)]
struct Retired(Arc<std::sync::Mutex<HashMap<String, DeliveryState>>>);

impl Retired {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, DeliveryState>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets (`Some`) or clears (`None`) each name's tombstone; returns what undoes it.
    fn mark(
        &self,
        changes: Vec<(String, Option<DeliveryState>)>,
    ) -> Vec<(String, Option<DeliveryState>)> {
        let mut map = self.lock();
        let mut undo: Vec<_> = changes
            .into_iter()
            .map(|(name, state)| {
                let before = match state {
                    Some(s) => map.insert(name.clone(), s),
                    None => map.remove(&name),
                };
                (name, before)
            })
            .collect();
        // Undone in reverse, so a name changed twice gets its first value back.
        undo.reverse();
        undo
    }
}

fn record_outcomes(conn: &Connection, batch: &[QueuedOutcome]) -> Result<(), StoreError> {
    let now = crate::time::now_ms();
    let mut update = conn
        .prepare_cached(concat!(
            "UPDATE deliveries SET state = ?2, attempts = attempts + 1, last_status = ?3,
             last_error = ?4, next_attempt_at = coalesce(?5, next_attempt_at),
             delivered_at = ?6, finished_at = ?7
             WHERE id = ?1 AND state = ",
            state_code!(InFlight)
        ))
        .map_err(sql_error)?;
    // A rowid lookup after final outcomes only: RETURNING on every update costs a statement
    // journal per row.
    let mut keyed = conn
        .prepare_cached(
            "SELECT subscription, ordering_key FROM deliveries
             WHERE id = ?1 AND ordering_key IS NOT NULL",
        )
        .map_err(sql_error)?;
    for (id, outcome, _) in batch {
        let (state, status, error, next, delivered, finished) = match outcome {
            Outcome::Delivered { status } => (
                DeliveryState::Delivered,
                Some(status),
                None,
                None,
                Some(now),
                Some(now),
            ),
            Outcome::Retry {
                at_ms,
                status,
                error,
            } => (
                DeliveryState::Pending,
                status.as_ref(),
                Some(error),
                Some(at_ms),
                None,
                None,
            ),
            Outcome::Failed { status, error } => (
                DeliveryState::Failed,
                status.as_ref(),
                Some(error),
                None,
                None,
                Some(now),
            ),
        };
        let changed = update
            .execute(params![id, state, status, error, next, delivered, finished])
            .map_err(sql_error)?;
        // A finished head lets the next delivery of its key go.
        if changed == 1 && state != DeliveryState::Pending {
            let ordered = keyed
                .query_row([id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .optional()
                .map_err(sql_error)?;
            if let Some((name, key)) = ordered {
                promote_next(conn, &name, &key)?;
            }
        }
    }
    Ok(())
}

/// Makes the oldest unfinished delivery of an ordering key pending if it was waiting: the
/// deliveries before it are finished. Safe to call at any time: it changes nothing while
/// the key's head is pending, in flight or orphaned.
fn promote_next(conn: &Connection, subscription: &str, key: &str) -> Result<(), StoreError> {
    conn.prepare_cached(concat!(
        "UPDATE deliveries SET state = ",
        state_code!(Pending),
        "
         WHERE id = (SELECT id FROM deliveries INDEXED BY deliveries_order
                     WHERE subscription = ?1 AND ordering_key = ?2 AND state IN ",
        states!(Pending, InFlight, Orphaned, Waiting),
        "
                     ORDER BY id LIMIT 1)
         AND state = ",
        state_code!(Waiting)
    ))
    .and_then(|mut s| s.execute(params![subscription, key]))
    .map_err(sql_error)?;
    Ok(())
}

/// Opens `path` as a store would, for tests of refusals.
#[cfg(test)]
fn check_file(path: &std::path::Path) -> Result<(), StoreError> {
    let settings = StorageSettings {
        location: StorageLocation::File(path.to_path_buf()),
        ..StorageSettings::default()
    };
    open_connection(&settings).map(|_| ())
}

#[cfg(test)]
mod tests;
