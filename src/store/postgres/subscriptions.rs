//! Subscriptions as the store sees them: API subscriptions kept in the database, the
//! deliveries of deleted (cancelled) or config-removed (orphaned) ones, and their
//! tombstones (`tombstones`), which ingest reads in the same transaction as it stores.
//! Tombstone changes take the retire lock exclusively, ingest shares it, so a delivery
//! matched before a delete but stored after it is cancelled, never left pending.

use tokio_postgres::Transaction;
use tokio_postgres::types::Type;

use super::db::{Db, is_unique_violation, locks};
use super::replicas::{LIVE_WITHIN_MS, declared_elsewhere};
use crate::store::{PauseState, StoreError, StoredSubscription, state_code};

/// Subscriptions registered through the API, oldest first.
pub(super) async fn subscriptions(db: &Db) -> Result<Vec<StoredSubscription>, StoreError> {
    let conn = db.conn().await?;
    let rows = conn
        .query_typed(
            &db.sql(
                "SELECT id, name, spec, created_at, updated_at FROM {s}.subscriptions
                 ORDER BY created_at, id",
            ),
            &[],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok(rows
        .iter()
        .map(|r| StoredSubscription {
            id: r.get(0),
            name: r.get(1),
            spec: r.get(2),
            created_at_ms: r.get(3),
            updated_at_ms: r.get(4),
        })
        .collect())
}

/// Every stored pause state.
pub(super) async fn pause_states(db: &Db) -> Result<Vec<PauseState>, StoreError> {
    let conn = db.conn().await?;
    let rows = conn
        .query_typed(
            &db.sql("SELECT name, paused, reason, since FROM {s}.pause_states"),
            &[],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok(rows
        .iter()
        .map(|r| PauseState {
            name: r.get(0),
            paused: r.get(1),
            reason: r.get(2),
            since_ms: r.get(3),
        })
        .collect())
}

/// Records a subscription's pause state.
pub(super) async fn set_pause_state(db: &Db, p: &PauseState) -> Result<(), StoreError> {
    let conn = db.conn().await?;
    conn.execute_typed(
        &db.sql(
            "INSERT INTO {s}.pause_states (name, paused, reason, since) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET paused = excluded.paused,
                 reason = excluded.reason, since = excluded.since",
        ),
        &[
            (&p.name, Type::TEXT),
            (&p.paused, Type::BOOL),
            (&p.reason, Type::TEXT),
            (&p.since_ms, Type::INT8),
        ],
    )
    .await
    .map_err(|e| db.err(e))?;
    Ok(())
}

/// Creates an API subscription, or replaces the one with the same id; its name, if
/// deleted earlier, is no longer retired.
pub(super) async fn save_subscription(db: &Db, sub: &StoredSubscription) -> Result<(), StoreError> {
    let mut conn = db.conn().await?;
    let tx = conn.transaction().await.map_err(|e| db.err(e))?;
    tx.execute_typed(
        &db.sql(
            "INSERT INTO {s}.subscriptions (id, name, spec, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
        ),
        &[
            (&sub.id, Type::TEXT),
            (&sub.name, Type::TEXT),
            (&sub.spec, Type::TEXT),
            (&sub.created_at_ms, Type::INT8),
            (&sub.updated_at_ms, Type::INT8),
        ],
    )
    .await
    .map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::Conflict(format!("the name {:?} is already in use", sub.name))
        } else {
            db.err(e)
        }
    })?;
    tx.execute_typed(
        &db.sql("DELETE FROM {s}.tombstones WHERE name = $1"),
        &[(&sub.name, Type::TEXT)],
    )
    .await
    .map_err(|e| db.err(e))?;
    changed(db, &tx).await?;
    tx.commit().await.map_err(|e| db.err(e))
}

/// The catalog's revision: bumped by every change to `subscriptions`.
pub(super) async fn catalog_revision(db: &Db) -> Result<i64, StoreError> {
    let conn = db.conn().await?;
    let row = conn
        .query_typed_one(
            &db.sql("SELECT max(revision) FROM {s}.catalog_revision"),
            &[],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok(row.get::<_, Option<i64>>(0).unwrap_or(0))
}

/// The channel every relay's listener `LISTEN`s on; the payload is `<schema>\tc`.
pub(super) const CHANNEL: &str = "hookrelay";

/// In the transaction of a change to `subscriptions`: bumps the catalog's revision (the
/// periodic resync reads it) and notifies the listening relays (at commit). The update
/// serialises concurrent changes on the row, so revisions are never reused.
async fn changed(db: &Db, tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute_typed(
        &db.sql("UPDATE {s}.catalog_revision SET revision = revision + 1"),
        &[],
    )
    .await
    .map_err(|e| db.err(e))?;
    tx.query_typed(
        "SELECT pg_notify($1, $2 || E'\\tc')",
        &[(&CHANNEL, Type::TEXT), (&db.schema, Type::TEXT)],
    )
    .await
    .map_err(|e| db.err(e))?;
    Ok(())
}

/// Takes the retire lock exclusively: ingest groups in progress finish first, later ones
/// see this transaction's tombstones.
async fn lock_retire(db: &Db, tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.query_typed(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[(&locks::RETIRE, Type::INT4), (&db.schema, Type::TEXT)],
    )
    .await
    .map_err(|e| db.err(e))?;
    Ok(())
}

/// Sets the tombstone of `names` to `state`.
async fn tombstone(
    db: &Db,
    tx: &Transaction<'_>,
    names: &[String],
    state: i32,
) -> Result<(), StoreError> {
    tx.execute_typed(
        &db.sql(
            "INSERT INTO {s}.tombstones (name, state) SELECT n, $2 FROM unnest($1::text[]) AS n
             ON CONFLICT (name) DO UPDATE SET state = excluded.state",
        ),
        &[(&names, Type::TEXT_ARRAY), (&state, Type::INT4)],
    )
    .await
    .map_err(|e| db.err(e))?;
    Ok(())
}

/// Removes an API subscription and cancels its deliveries (its dead letters too, so a
/// later subscription of the name cannot release them); returns how many undelivered ones
/// were cancelled. Its tombstone cancels the deliveries of events stored later.
pub(super) async fn delete_subscription(
    db: &Db,
    id: &str,
    name: &str,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let mut conn = db.conn().await?;
    let tx = conn.transaction().await.map_err(|e| db.err(e))?;
    lock_retire(db, &tx).await?;
    tx.execute_typed(
        &db.sql("DELETE FROM {s}.subscriptions WHERE id = $1"),
        &[(&id, Type::TEXT)],
    )
    .await
    .map_err(|e| db.err(e))?;
    let cancelled = tx
        .execute_typed(
            &db.sql(concat!(
                "UPDATE {s}.deliveries SET state = ",
                state_code!(Cancelled),
                ", finished_at = $2 WHERE subscription = $1 AND state IN ",
                states!(Pending, InFlight, Orphaned, Waiting)
            )),
            &[(&name, Type::TEXT), (&now_ms, Type::INT8)],
        )
        .await
        .map_err(|e| db.err(e))?;
    tx.execute_typed(
        &db.sql(concat!(
            "UPDATE {s}.deliveries SET state = ",
            state_code!(Cancelled),
            " WHERE subscription = $1 AND state IN ",
            states!(Failed, Expired)
        )),
        &[(&name, Type::TEXT)],
    )
    .await
    .map_err(|e| db.err(e))?;
    tx.execute_typed(
        &db.sql("DELETE FROM {s}.pause_states WHERE name = $1"),
        &[(&name, Type::TEXT)],
    )
    .await
    .map_err(|e| db.err(e))?;
    tombstone(db, &tx, &[name.to_string()], state_code!(Cancelled)).await?;
    changed(db, &tx).await?;
    tx.commit().await.map_err(|e| db.err(e))?;
    Ok(cancelled)
}

/// Orphans the undelivered deliveries of `removed` and resumes the orphans of `restored`,
/// with their tombstones; returns (orphaned, resumed).
///
/// Names another live relay's config file declares stay in force (that relay still
/// delivers them: the files differ mid rolling update), as do names of API subscriptions.
pub(super) async fn retire_subscriptions(
    db: &Db,
    me: i64,
    removed: &[String],
    restored: &[String],
) -> Result<(u64, u64), StoreError> {
    let mut conn = db.conn().await?;
    let tx = conn.transaction().await.map_err(|e| db.err(e))?;
    lock_retire(db, &tx).await?;
    let removed: Vec<String> = tx
        .query_typed(
            &db.sql(&format!(
                "SELECT n FROM unnest($1::text[]) AS n
                 WHERE NOT {} AND NOT EXISTS (SELECT 1 FROM {{s}}.subscriptions WHERE name = n)",
                declared_elsewhere("n", "$2", "$3")
            )),
            &[
                (&removed, Type::TEXT_ARRAY),
                (&me, Type::INT8),
                (&LIVE_WITHIN_MS, Type::INT8),
            ],
        )
        .await
        .map_err(|e| db.err(e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (orphaned, resumed) = move_orphans(db, &tx, me, &removed, restored, false).await?;
    tombstone(db, &tx, &removed, state_code!(Orphaned)).await?;
    tx.execute_typed(
        &db.sql("DELETE FROM {s}.tombstones WHERE name = ANY($1)"),
        &[(&restored, Type::TEXT_ARRAY)],
    )
    .await
    .map_err(|e| db.err(e))?;
    tx.commit().await.map_err(|e| db.err(e))?;
    Ok((orphaned, resumed))
}

/// Orphans the undelivered deliveries of subscriptions not in `known` and resumes the
/// orphans of those in it; returns (orphaned, resumed). The tombstones of `known` names go
/// (a name retired or deleted before and in force again); those of other names stay, for
/// the relays sharing the schema that may still match them.
/// Names another live relay's config file declares count as known.
pub(super) async fn sync_subscriptions(
    db: &Db,
    me: i64,
    known: &[String],
) -> Result<(u64, u64), StoreError> {
    let mut conn = db.conn().await?;
    let tx = conn.transaction().await.map_err(|e| db.err(e))?;
    lock_retire(db, &tx).await?;
    let moved = move_orphans(db, &tx, me, known, known, true).await?;
    tx.execute_typed(
        &db.sql("DELETE FROM {s}.tombstones WHERE name = ANY($1)"),
        &[(&known, Type::TEXT_ARRAY)],
    )
    .await
    .map_err(|e| db.err(e))?;
    tx.commit().await.map_err(|e| db.err(e))?;
    Ok(moved)
}

/// Orphans pending and in-flight deliveries of `orphan` (with `unknown`: of every name
/// not in it that no other live relay `me` declares) and resumes the orphans of `resume`.
async fn move_orphans(
    db: &Db,
    tx: &Transaction<'_>,
    me: i64,
    orphan: &[String],
    resume: &[String],
    unknown: bool,
) -> Result<(u64, u64), StoreError> {
    let which = if unknown {
        format!(
            "NOT (subscription = ANY($1)) AND NOT {}",
            declared_elsewhere("subscription", "$2", "$3")
        )
    } else {
        // `$2`, `$3` unused but typed, so both forms take the same parameters.
        "subscription = ANY($1) AND $2::int8 IS NOT NULL AND $3::int8 IS NOT NULL".to_string()
    };
    let orphaned = tx
        .execute_typed(
            &db.sql(&format!(
                concat!(
                    "UPDATE {{s}}.deliveries SET state = ",
                    state_code!(Orphaned),
                    " WHERE state IN ",
                    states!(Pending, InFlight),
                    " AND {}"
                ),
                which
            )),
            &[
                (&orphan, Type::TEXT_ARRAY),
                (&me, Type::INT8),
                (&LIVE_WITHIN_MS, Type::INT8),
            ],
        )
        .await
        .map_err(|e| db.err(e))?;
    let resumed = tx
        .execute_typed(
            &db.sql(concat!(
                "UPDATE {s}.deliveries SET state = ",
                state_code!(Pending),
                " WHERE state = ",
                state_code!(Orphaned),
                " AND subscription = ANY($1)"
            )),
            &[(&resume, Type::TEXT_ARRAY)],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok((orphaned, resumed))
}
