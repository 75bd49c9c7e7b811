//! Ordered delivery: of an ordering key's unfinished deliveries only the oldest (the head)
//! may be pending or in flight; the later ones are `waiting` until promoted one at a time.

use rusqlite::{Connection, params};

use super::sql_error;
use crate::store::{StoreError, state_code};

/// `?1` subscription, `?2` key: whether the key has an unfinished delivery, so a new one
/// must wait behind it.
pub(super) const KEY_BUSY: &str = concat!(
    "SELECT EXISTS (SELECT 1 FROM deliveries INDEXED BY deliveries_order
     WHERE subscription = ?1 AND ordering_key = ?2 AND state IN ",
    states!(Pending, InFlight, Orphaned, Waiting),
    ")"
);

/// Makes the oldest unfinished delivery of an ordering key pending if it was waiting: the
/// deliveries before it are finished. Safe to call at any time: it changes nothing while
/// the key's head is pending, in flight or orphaned.
pub(super) fn promote_next(
    conn: &Connection,
    subscription: &str,
    key: &str,
) -> Result<(), StoreError> {
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

/// Lifts ordering from the undelivered deliveries of `subscriptions`: waiting ones become
/// pending, and none keeps its key; returns how many changed.
pub(super) fn clear_ordering(
    conn: &Connection,
    subscriptions: &[String],
) -> Result<u64, StoreError> {
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
}
