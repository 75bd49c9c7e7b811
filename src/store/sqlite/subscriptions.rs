//! Subscriptions as the store sees them: API subscriptions kept in the file, and the
//! deliveries of deleted (cancelled) or config-removed (orphaned) ones.

use rusqlite::{Connection, params};

use super::retired::Retired;
use super::sql_error;
use crate::store::{DeliveryState, PauseState, StoreError, StoredSubscription};

/// Subscriptions registered through the API, oldest first.
pub(super) fn subscriptions(conn: &Connection) -> Result<Vec<StoredSubscription>, StoreError> {
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
}

/// Every stored pause state.
pub(super) fn pause_states(conn: &Connection) -> Result<Vec<PauseState>, StoreError> {
    let mut s = conn
        .prepare_cached("SELECT name, paused, reason, since FROM pause_states")
        .map_err(sql_error)?;
    let rows = s
        .query_map([], |r| {
            Ok(PauseState {
                name: r.get(0)?,
                paused: r.get(1)?,
                reason: r.get(2)?,
                since_ms: r.get(3)?,
            })
        })
        .map_err(sql_error)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(sql_error)
}

/// Records a subscription's pause state.
pub(super) fn set_pause_state(conn: &Connection, p: &PauseState) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO pause_states (name, paused, reason, since) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, reason = excluded.reason,
             since = excluded.since",
    )
    .and_then(|mut s| s.execute(params![p.name, p.paused, p.reason, p.since_ms]))
    .map_err(sql_error)?;
    Ok(())
}

/// Creates an API subscription, or replaces the one with the same id; its name, if deleted
/// earlier, is no longer retired.
pub(super) fn save_subscription(
    conn: &Connection,
    sub: &StoredSubscription,
    retired: &Retired,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO subscriptions (id, name, spec, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
    )
    .and_then(|mut s| {
        s.execute(params![
            sub.id,
            sub.name,
            sub.spec,
            sub.created_at_ms,
            sub.updated_at_ms
        ])
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
}

/// Removes an API subscription and cancels its deliveries; returns how many undelivered
/// ones were cancelled.
pub(super) fn delete_subscription(
    conn: &Connection,
    id: &str,
    name: &str,
    now_ms: i64,
) -> Result<u64, StoreError> {
    conn.execute("DELETE FROM subscriptions WHERE id = ?1", [&id])
        .map_err(sql_error)?;
    conn.execute("DELETE FROM pause_states WHERE name = ?1", [&name])
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
}

/// Orphans the undelivered deliveries of `removed` and resumes the orphans of `restored`;
/// returns (orphaned, resumed).
pub(super) fn retire_subscriptions(
    conn: &Connection,
    removed: &[String],
    restored: &[String],
) -> Result<(u64, u64), StoreError> {
    let json = |names: &[String]| serde_json::to_string(names).unwrap_or_else(|_| "[]".into());
    let orphaned = conn
        .execute(
            "UPDATE deliveries SET state = ?1 WHERE state IN (?2, ?3)
             AND subscription IN (SELECT value FROM json_each(?4))",
            params![
                DeliveryState::Orphaned,
                DeliveryState::Pending,
                DeliveryState::InFlight,
                json(removed)
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
                json(restored)
            ],
        )
        .map_err(sql_error)?;
    Ok((orphaned as u64, resumed as u64))
}

/// Orphans the undelivered deliveries of subscriptions not in `known` and resumes the
/// orphans of those in it; returns (orphaned, resumed).
pub(super) fn sync_subscriptions(
    conn: &Connection,
    known: &[String],
) -> Result<(u64, u64), StoreError> {
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
}
