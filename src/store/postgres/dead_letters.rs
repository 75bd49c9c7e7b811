//! Dead letters (failed) and expired deliveries: released back to pending in bulk at most
//! once per interval per scope (the clock kept in `releases`), retried one by one, or
//! deleted.

use tokio_postgres::types::Type;

use super::db::Db;
use super::rows::state;
use crate::store::{DeliveryId, DeliveryState, Release, StoreError, release_scope_key, state_code};

/// Puts the failed and expired deliveries of `scope` (or of all `subscriptions`) back to
/// pending with a fresh budget and ttl, unless the scope was released too recently.
pub(super) async fn release(
    db: &Db,
    scope: Option<String>,
    subscriptions: Vec<String>,
    now_ms: i64,
    min_interval_ms: i64,
    ttl_ms: i64,
) -> Result<Release, StoreError> {
    let key = release_scope_key(scope.as_deref());
    let mut conn = db.conn().await?;
    let tx = conn.transaction().await.map_err(|e| db.err(e))?;
    if let Some(next_allowed_ms) = take_clock(db, &tx, &key, now_ms, min_interval_ms).await? {
        return Ok(Release::TooSoon { next_allowed_ms });
    }
    let names = match scope {
        Some(s) => vec![s],
        None => subscriptions,
    };
    let released = tx
        .execute_typed(
            &db.sql(concat!(
                "UPDATE {s}.deliveries SET state = ",
                state_code!(Pending),
                ", budget_used = 0, next_attempt_at = $1, expires_at = $2,
                 finished_at = NULL, ordering_key = NULL
                 WHERE state IN ",
                states!(Failed, Expired),
                " AND subscription = ANY($3)"
            )),
            &[
                (&now_ms, Type::INT8),
                (&(now_ms + ttl_ms), Type::INT8),
                (&names, Type::TEXT_ARRAY),
            ],
        )
        .await
        .map_err(|e| db.err(e))?;
    tx.commit().await.map_err(|e| db.err(e))?;
    Ok(Release::Released(released))
}

/// Moves the clock of `key` (a release's or a bulk replay's scope) to `now_ms` in `tx`,
/// unless it moved less than `min_interval_ms` ago: then the answer is when it may move
/// next. The row lock makes concurrent requests of one scope take turns.
pub(super) async fn take_clock(
    db: &Db,
    tx: &tokio_postgres::Transaction<'_>,
    key: &str,
    now_ms: i64,
    min_interval_ms: i64,
) -> Result<Option<i64>, StoreError> {
    let moved = tx
        .query_typed(
            &db.sql(
                "INSERT INTO {s}.releases (scope, released_at) VALUES ($1, $2)
                 ON CONFLICT (scope) DO UPDATE SET released_at = excluded.released_at
                 WHERE {s}.releases.released_at + $3 <= excluded.released_at
                 RETURNING released_at",
            ),
            &[
                (&key, Type::TEXT),
                (&now_ms, Type::INT8),
                (&min_interval_ms, Type::INT8),
            ],
        )
        .await
        .map_err(|e| db.err(e))?;
    if !moved.is_empty() {
        return Ok(None);
    }
    let last: i64 = tx
        .query_typed_one(
            &db.sql("SELECT released_at FROM {s}.releases WHERE scope = $1"),
            &[(&key, Type::TEXT)],
        )
        .await
        .map_err(|e| db.err(e))?
        .get(0);
    Ok(Some(last + min_interval_ms))
}

/// Puts one failed or expired delivery of one of `subscriptions` back to pending; returns
/// its state and subscription before.
pub(super) async fn retry_delivery(
    db: &Db,
    id: DeliveryId,
    now_ms: i64,
    subscriptions: &[String],
    ttl_ms: i64,
) -> Result<Option<(DeliveryState, String)>, StoreError> {
    let conn = db.conn().await?;
    let row = conn
        .query_typed_opt(
            &db.sql(concat!(
                "WITH before AS (
                    SELECT id, state, subscription FROM {s}.deliveries WHERE id = $1 FOR UPDATE
                 ), retried AS (
                    UPDATE {s}.deliveries d SET state = ",
                state_code!(Pending),
                ", budget_used = 0, next_attempt_at = $2, expires_at = $3,
                        finished_at = NULL, ordering_key = NULL
                    FROM before b
                    WHERE d.id = b.id AND b.state IN ",
                states!(Failed, Expired),
                " AND b.subscription = ANY($4)
                 )
                 SELECT state, subscription FROM before"
            )),
            &[
                (&id, Type::INT8),
                (&now_ms, Type::INT8),
                (&(now_ms + ttl_ms), Type::INT8),
                (&subscriptions, Type::TEXT_ARRAY),
            ],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok(row.map(|r| (state(r.get(0)), r.get(1))))
}

/// Removes one delivery unless an attempt is under way or due; returns its state before.
pub(super) async fn delete_delivery(
    db: &Db,
    id: DeliveryId,
) -> Result<Option<DeliveryState>, StoreError> {
    let conn = db.conn().await?;
    let row = conn
        .query_typed_opt(
            &db.sql(concat!(
                "WITH before AS (
                    SELECT id, state FROM {s}.deliveries WHERE id = $1 FOR UPDATE
                 ), gone AS (
                    DELETE FROM {s}.deliveries d USING before b
                    WHERE d.id = b.id AND b.state NOT IN ",
                states!(Pending, InFlight),
                "
                    RETURNING d.id
                 ), forgotten AS (
                    DELETE FROM {s}.attempts a USING gone g WHERE a.delivery_id = g.id
                 )
                 SELECT state FROM before"
            )),
            &[(&id, Type::INT8)],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok(row.map(|r| state(r.get(0))))
}
