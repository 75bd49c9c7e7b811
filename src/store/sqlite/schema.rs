//! The database file: its schema (migrations) and opening it, refusing a foreign, corrupt or
//! newer file, checking its integrity, then migrating it forward.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, params};

use super::Reader;

use crate::store::settings::{StorageLocation, StorageSettings, SyncMode};
use crate::store::{Cause, DeliveryState, StoreError, state_code};

/// The write connection's page cache, KiB. What a write touches (the tails of the tables, the
/// due index's live part) fits; the rest is a read from the OS's cache away. 32 MiB doubled
/// peak RSS under wrk's 32 connections (56 against 29 MB) for 1-13% more accepted/s.
const WRITER_CACHE_KIB: u32 = 8192;
/// The read connection's page cache, KiB: status and the gauges' counts, read once each.
const READER_CACHE_KIB: u32 = 1024;

/// The schema this build writes; older files are migrated forward on open.
pub const SCHEMA_VERSION: i64 = 7;
/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

// The partial indexes below (`WHERE state = 0`, `WHERE state IN (...)`) serve only queries
// whose WHERE literally implies their predicate, which is why the SQL spells states as
// literals (`state_code!`, `states!`).

/// Migrations: entry `i` upgrades a file from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // Attempt history: one row per attempt, written with its outcome; `attempts` counts
    // them ever, `budget_used` since the last release (the retry budget). Undelivered rows
    // carry their count over; finished ones need no budget.
    concat!(
        "
CREATE TABLE attempts (
    delivery_id INTEGER NOT NULL,
    number INTEGER NOT NULL,
    at INTEGER NOT NULL,
    duration_us INTEGER NOT NULL,
    status INTEGER,
    result TEXT NOT NULL,
    error TEXT,
    PRIMARY KEY (delivery_id, number)
) WITHOUT ROWID;
ALTER TABLE deliveries ADD COLUMN budget_used INTEGER NOT NULL DEFAULT 0;
UPDATE deliveries SET budget_used = attempts WHERE state IN ",
        states!(Pending, InFlight, Orphaned, Waiting),
        ";
"
    ),
    // Delivery control: whether a subscription is paused, set through the API or by a
    // `410 Gone`, by name (config subscriptions have no row in `subscriptions`).
    "
CREATE TABLE pause_states (
    name TEXT PRIMARY KEY,
    paused INTEGER NOT NULL,
    reason TEXT NOT NULL,
    since INTEGER NOT NULL
);
",
];

/// Opens the writer's connection: creates the file, refuses one that is not a hookrelay
/// database or is newer than this build, checks its integrity and migrates it forward.
pub(super) fn open_connection(settings: &StorageSettings) -> Result<Connection, StoreError> {
    let (conn, shown) = match &settings.location {
        StorageLocation::Memory => (Connection::open_in_memory(), ":memory:".to_string()),
        StorageLocation::Postgres(pg) => {
            return Err(StoreError::Open {
                path: pg.url.redacted(),
                context: "not an SQLite database".into(),
                source: None,
            });
        }
        StorageLocation::File(path) => {
            // Created private before SQLite opens it, which would create it 0644.
            super::file::prepare(path).map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                context: "cannot create it or make it private".into(),
                source: Some(Arc::new(e)),
            })?;
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
        StorageLocation::Memory | StorageLocation::Postgres(_) => "MEMORY",
        StorageLocation::File(_) => "WAL",
    };
    // Only takes on a new file (before its first table): pruned pages can then be given
    // back to the volume when the disk is full (`space.rs`). Older files keep reusing them.
    conn.execute_batch(&format!(
        "PRAGMA auto_vacuum = INCREMENTAL;
         PRAGMA journal_mode = {journal};
         PRAGMA synchronous = {sync};
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -{WRITER_CACHE_KIB};
"
    ))
    .map_err(failed(""))?;
    let check = conn
        .query_row("PRAGMA quick_check(1)", [], |r| r.get::<_, String>(0))
        .map_err(failed("integrity check failed"))?;
    if check != "ok" {
        return Err(fail(format!("integrity check failed: {check}"), None));
    }
    if (version as usize) < MIGRATIONS.len() {
        // One transaction, one fsync, for every step due: a new database took seven (about
        // 100 ms of a fresh start); a failed step still rolls all back and is named.
        conn.execute_batch("BEGIN")
            .map_err(failed("migration failed"))?;
        for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let to = from as i64 + 1;
            if let Err(e) = conn.execute_batch(&format!("{sql}; PRAGMA user_version = {to};")) {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(failed(&format!("migration to schema version {to} failed"))(
                    e,
                ));
            }
        }
        conn.execute_batch("COMMIT")
            .map_err(failed("migration failed"))?;
    }
    // Attempts cut short by a crash are made again (at-least-once).
    conn.execute(
        "UPDATE deliveries SET state = ?1 WHERE state = ?2",
        params![DeliveryState::Pending, DeliveryState::InFlight],
    )
    .map_err(failed(""))?;
    Ok(conn)
}

/// The read-only connection of a file database, for queries that change nothing. WAL lets
/// it read while the writer writes; an in-memory database has one connection only (`None`).
pub(super) fn open_reader(settings: &StorageSettings) -> Result<Option<Reader>, StoreError> {
    let StorageLocation::File(path) = &settings.location else {
        return Ok(None);
    };
    let reader = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .and_then(|r| {
        r.busy_timeout(BUSY_TIMEOUT)?;
        r.execute_batch(&format!("PRAGMA cache_size = -{READER_CACHE_KIB}"))?;
        Ok(r)
    })
    .map_err(|e| StoreError::Open {
        path: path.display().to_string(),
        context: "cannot open a read connection".into(),
        source: Some(Arc::new(e)),
    })?;
    Ok(Some(Arc::new(tokio::sync::Mutex::new(reader))))
}

/// Opens `path` as a store would, for tests of refusals.
#[cfg(test)]
pub(super) fn check_file(path: &std::path::Path) -> Result<(), StoreError> {
    let settings = StorageSettings {
        location: StorageLocation::File(path.to_path_buf()),
        ..StorageSettings::default()
    };
    open_connection(&settings).map(|_| ())
}
