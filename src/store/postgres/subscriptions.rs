//! Subscriptions as the store sees them: API subscriptions kept in the database, the
//! deliveries of deleted (cancelled) or config-removed (orphaned) ones, and their
//! tombstones (`tombstones`), which ingest reads in the same transaction as it stores.
//! Tombstone changes take the retire lock exclusively, ingest shares it, so a delivery
//! matched before a delete but stored after it is cancelled, never left pending.

use tokio_postgres::Transaction;
use tokio_postgres::types::Type;

use super::db::{Db, is_unique_violation, locks};
use crate::store::{StoreError, StoredSubscription, state_code};

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
    tx.commit().await.map_err(|e| db.err(e))
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
    tombstone(db, &tx, &[name.to_string()], state_code!(Cancelled)).await?;
    tx.commit().await.map_err(|e| db.err(e))?;
    Ok(cancelled)
}

/// Orphans the undelivered deliveries of `removed` and resumes the orphans of `restored`,
/// with their tombstones; returns (orphaned, resumed).
pub(super) async fn retire_subscriptions(
    db: &Db,
    removed: &[String],
    restored: &[String],
) -> Result<(u64, u64), StoreError> {
    let mut conn = db.conn().await?;
    let tx = conn.transaction().await.map_err(|e| db.err(e))?;
    lock_retire(db, &tx).await?;
    let (orphaned, resumed) = move_orphans(db, &tx, removed, restored, false).await?;
    tombstone(db, &tx, removed, state_code!(Orphaned)).await?;
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
pub(super) async fn sync_subscriptions(
    db: &Db,
    known: &[String],
) -> Result<(u64, u64), StoreError> {
    let mut conn = db.conn().await?;
    let tx = conn.transaction().await.map_err(|e| db.err(e))?;
    lock_retire(db, &tx).await?;
    let moved = move_orphans(db, &tx, known, known, true).await?;
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
/// not in it) and resumes the orphans of `resume`.
async fn move_orphans(
    db: &Db,
    tx: &Transaction<'_>,
    orphan: &[String],
    resume: &[String],
    unknown: bool,
) -> Result<(u64, u64), StoreError> {
    let which = if unknown {
        "NOT (subscription = ANY($1))"
    } else {
        "subscription = ANY($1)"
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
            &[(&orphan, Type::TEXT_ARRAY)],
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
