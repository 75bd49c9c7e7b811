//! The schema: its version in `schema_version`, and migrating it forward at start inside
//! one transaction holding an advisory lock, so relays starting together do not race. A
//! schema newer than this build stops the start.

use tokio_postgres::types::Type;

use super::db::{Db, locks};
use crate::store::{StoreError, state_code};

/// The schema this build writes; older ones are migrated forward at start.
pub const SCHEMA_VERSION: i32 = 5;

/// Migrations: entry `i` upgrades a schema from version `i` to `i + 1`. `{s}` is the
/// quoted schema. States are literals (`state_code!`, `states!`) so that the partial
/// indexes serve the queries that spell the same literals.
pub(super) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5];

/// The tables of one relay's queue.
const V1: &str = concat!(
    "
CREATE TABLE {s}.events (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text NOT NULL UNIQUE,
    type text NOT NULL,
    received_at bigint NOT NULL,
    data bytea NOT NULL,
    subscriptions text NOT NULL,
    content_type text,
    attributes text
);
CREATE TABLE {s}.deliveries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_seq bigint NOT NULL,
    subscription text NOT NULL,
    state integer NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    received_at bigint NOT NULL,
    next_attempt_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    last_status integer,
    last_error text,
    delivered_at bigint,
    finished_at bigint,
    ordering_key text
);
CREATE INDEX deliveries_due ON {s}.deliveries (subscription, next_attempt_at) WHERE state = ",
    state_code!(Pending),
    ";
CREATE INDEX deliveries_fifo ON {s}.deliveries (subscription, id) WHERE state = ",
    state_code!(Pending),
    ";
CREATE INDEX deliveries_state ON {s}.deliveries (state, subscription, id);
CREATE INDEX deliveries_event ON {s}.deliveries (event_seq);
CREATE INDEX deliveries_order ON {s}.deliveries (subscription, ordering_key, id)
    WHERE state IN ",
    states!(Pending, InFlight, Orphaned, Waiting),
    " AND ordering_key IS NOT NULL;
CREATE INDEX deliveries_expiry ON {s}.deliveries (expires_at) WHERE state IN ",
    states!(Pending, Orphaned, Waiting),
    ";
CREATE INDEX deliveries_finished ON {s}.deliveries (finished_at) WHERE state IN ",
    states!(Delivered, Failed, Expired, Cancelled),
    ";
CREATE TABLE {s}.releases (scope text PRIMARY KEY, released_at bigint NOT NULL);
CREATE TABLE {s}.subscriptions (
    id text PRIMARY KEY,
    name text NOT NULL UNIQUE,
    spec text NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL
);
CREATE TABLE {s}.tombstones (name text PRIMARY KEY, state integer NOT NULL);
"
);

/// Several relays on one schema: each claim names its relay (`claim_owner`, a `replicas`
/// row), counts the claims of its delivery (`claim_token`, which fences outcomes) and
/// lasts until `lease_until` (ms, the database's clock). Version 1 claims have no owner:
/// they are pending again. The due index also orders by id and holds `expires_at`, so a
/// claim walks it in the claim's order and reads only the rows it takes.
const V2: &str = concat!(
    "
DROP INDEX {s}.deliveries_due;
CREATE INDEX deliveries_due ON {s}.deliveries (subscription, next_attempt_at, id)
    INCLUDE (expires_at) WHERE state = ",
    state_code!(Pending),
    ";
ALTER TABLE {s}.deliveries ADD COLUMN claim_owner bigint,
    ADD COLUMN claim_token bigint NOT NULL DEFAULT 0,
    ADD COLUMN lease_until bigint;
UPDATE {s}.deliveries SET state = ",
    state_code!(Pending),
    " WHERE state = ",
    state_code!(InFlight),
    ";
CREATE INDEX deliveries_lease ON {s}.deliveries (lease_until) WHERE state = ",
    state_code!(InFlight),
    " AND lease_until IS NOT NULL;
CREATE TABLE {s}.replicas (
    num bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text UNIQUE NOT NULL,
    host text NOT NULL,
    started_at bigint,
    heartbeat_at bigint
);
"
);

/// Shared API subscriptions: every change to `subscriptions` bumps `catalog_revision` in
/// its transaction, so a relay sees that its catalog is stale by reading one row (which
/// works through any pooler); each relay records the names its config file declares
/// (`declared`), so one whose file lacks a name another's has does not orphan it.
const V3: &str = "
CREATE TABLE {s}.catalog_revision (revision bigint NOT NULL);
INSERT INTO {s}.catalog_revision (revision) VALUES (0);
ALTER TABLE {s}.replicas ADD COLUMN declared text[] NOT NULL DEFAULT '{}';
";

/// Attempt history: one row per attempt, written by the outcome's statement; `attempts`
/// counts them ever, `budget_used` since the last release (the retry budget). Undelivered
/// rows carry their count over; finished ones need no budget. No foreign key: the check
/// would cost every outcome a lookup, and the two deletes of deliveries delete their
/// attempts in the same statement.
const V4: &str = concat!(
    "
CREATE TABLE {s}.attempts (
    delivery_id bigint NOT NULL,
    number integer NOT NULL,
    at bigint NOT NULL,
    duration_us bigint NOT NULL,
    status integer,
    result text NOT NULL,
    error text,
    PRIMARY KEY (delivery_id, number)
);
ALTER TABLE {s}.deliveries ADD COLUMN budget_used integer NOT NULL DEFAULT 0;
UPDATE {s}.deliveries SET budget_used = attempts WHERE state IN ",
    states!(Pending, InFlight, Orphaned, Waiting),
    ";
"
);

/// Delivery control: whether a subscription is paused, set through the API or by a
/// `410 Gone`, by name; every relay reads it each second.
const V5: &str = "
CREATE TABLE {s}.pause_states (
    name text PRIMARY KEY,
    paused boolean NOT NULL,
    reason text NOT NULL,
    since bigint NOT NULL
);
";

/// A failure to open the store, naming the server (redacted) and the schema.
fn open_error(db: &Db, context: String, source: Option<tokio_postgres::Error>) -> StoreError {
    StoreError::Open {
        path: format!("{} (schema {})", db.shown, db.schema),
        context,
        source: source.map(|e| std::sync::Arc::new(e) as crate::store::Cause),
    }
}

/// `open_error` with `context`, for `map_err`.
fn failed(db: &Db, context: &str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    let context = context.to_string();
    move |e| open_error(db, context, Some(e))
}

/// Creates the schema if missing, refuses one newer than this build and applies the missing
/// migrations, in one transaction under the migration lock. Other relays may be running on
/// the schema: their claims and tombstones are left alone.
pub(super) async fn migrate(db: &Db) -> Result<(), StoreError> {
    let mut conn = db.conn().await.map_err(|e| StoreError::Open {
        path: db.shown.clone(),
        context: String::new(),
        source: Some(std::sync::Arc::new(e)),
    })?;
    let tx = conn.transaction().await.map_err(failed(db, ""))?;
    match migrate_in(db, &tx).await {
        Ok(()) => tx.commit().await.map_err(failed(db, "")),
        Err(e) => {
            // Rolled back now, not when the connection happens to close: its locks would
            // hold up whoever comes next.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// The migration's statements inside `tx`.
async fn migrate_in(db: &Db, tx: &tokio_postgres::Transaction<'_>) -> Result<(), StoreError> {
    tx.query_typed(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[(&locks::MIGRATE, Type::INT4), (&db.schema, Type::TEXT)],
    )
    .await
    .map_err(failed(db, "cannot take the migration lock"))?;
    tx.batch_execute(&db.sql(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.schema_version (version integer NOT NULL);",
    ))
    .await
    .map_err(failed(db, "cannot create the schema"))?;
    let version: i32 = tx
        .query_typed(&db.sql("SELECT max(version) FROM {s}.schema_version"), &[])
        .await
        .map_err(failed(db, ""))?
        .first()
        .and_then(|r| r.get::<_, Option<i32>>(0))
        .unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Err(open_error(
            db,
            format!(
                "its schema version {version} is newer than this hookrelay supports ({SCHEMA_VERSION}); run a newer hookrelay"
            ),
            None,
        ));
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let to = from + 1;
        tx.batch_execute(&db.sql(sql)).await.map_err(failed(
            db,
            &format!("migration to schema version {to} failed"),
        ))?;
    }
    if version < SCHEMA_VERSION {
        tx.batch_execute(&db.sql(&format!(
            "DELETE FROM {{s}}.schema_version; INSERT INTO {{s}}.schema_version VALUES ({SCHEMA_VERSION});"
        )))
        .await
        .map_err(failed(db, ""))?;
    }
    Ok(())
}
