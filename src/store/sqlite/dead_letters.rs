//! Dead letters (failed) and expired deliveries: released back to pending in bulk at most
//! once per interval per scope, retried one by one, or deleted.

use rusqlite::{Connection, OptionalExtension, params};

use super::sql_error;
use crate::store::{DeliveryId, DeliveryState, Release, StoreError, release_scope_key, state_code};

/// Puts the failed and expired deliveries of `scope` (or of all `subscriptions`) back to
/// pending with a fresh budget and ttl, unless the scope was released too recently.
pub(super) fn release(
    conn: &Connection,
    scope: Option<String>,
    subscriptions: Vec<String>,
    now_ms: i64,
    min_interval_ms: i64,
    ttl_ms: i64,
) -> Result<Release, StoreError> {
    let key = release_scope_key(scope.as_deref());
    if let Some(next_allowed_ms) = take_clock(conn, &key, now_ms, min_interval_ms)? {
        return Ok(Release::TooSoon { next_allowed_ms });
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
                ", budget_used = 0, next_attempt_at = ?1, expires_at = ?2,
             finished_at = NULL, ordering_key = NULL
             WHERE state IN ",
                states!(Failed, Expired),
                " AND subscription IN (SELECT value FROM json_each(?3))"
            ),
            params![now_ms, now_ms + ttl_ms, names_json],
        )
        .map_err(sql_error)?;
    Ok(Release::Released(released as u64))
}

/// Moves the clock of `key` (a release's or a bulk replay's scope) to `now_ms`, unless it
/// moved less than `min_interval_ms` ago: then nothing changes and the answer is when it may
/// move next. Within the caller's writer job, so the work it allows is in the same commit.
pub(super) fn take_clock(
    conn: &Connection,
    key: &str,
    now_ms: i64,
    min_interval_ms: i64,
) -> Result<Option<i64>, StoreError> {
    let last: Option<i64> = conn
        .query_row(
            "SELECT released_at FROM releases WHERE scope = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql_error)?;
    if let Some(at) = last
        && now_ms < at + min_interval_ms
    {
        return Ok(Some(at + min_interval_ms));
    }
    conn.execute(
        "INSERT INTO releases (scope, released_at) VALUES (?1, ?2)
         ON CONFLICT (scope) DO UPDATE SET released_at = excluded.released_at",
        params![key, now_ms],
    )
    .map_err(sql_error)?;
    Ok(None)
}

/// Puts one failed or expired delivery of one of `subscriptions` back to pending; returns its
/// state and subscription before.
pub(super) fn retry_delivery(
    conn: &Connection,
    id: DeliveryId,
    now_ms: i64,
    subscriptions: &[String],
    ttl_ms: i64,
) -> Result<Option<(DeliveryState, String)>, StoreError> {
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
                ", budget_used = 0, next_attempt_at = ?2, expires_at = ?3,
             finished_at = NULL, ordering_key = NULL WHERE id = ?1"
            ),
            params![id, now_ms, now_ms + ttl_ms],
        )
        .map_err(sql_error)?;
    }
    Ok(before)
}

/// Removes one delivery unless an attempt is under way or due; returns its state before.
pub(super) fn delete_delivery(
    conn: &Connection,
    id: DeliveryId,
) -> Result<Option<DeliveryState>, StoreError> {
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
        conn.execute("DELETE FROM attempts WHERE delivery_id = ?1", [id])
            .map_err(sql_error)?;
    }
    Ok(before)
}
