//! Attempt history: a delivery's attempts (written with their outcomes, in `outcomes`), and
//! the latest few of each delivery of an event, for its status. Reads only.

use rusqlite::{Connection, OptionalExtension, params};

use super::sql_error;
use crate::store::{AttemptInfo, DeliveryId, DeliveryInfo, RECENT_ATTEMPTS, StoreError};

/// The history columns `attempt` reads, from `attempts`.
const COLUMNS: &str = "number, at, duration_us, status, result, error";

fn attempt(r: &rusqlite::Row<'_>) -> rusqlite::Result<AttemptInfo> {
    Ok(AttemptInfo {
        number: r.get(0)?,
        at_ms: r.get(1)?,
        duration_us: r.get(2)?,
        status: r.get(3)?,
        result: r.get(4)?,
        error: r.get(5)?,
    })
}

/// The attempts of delivery `id`, oldest first; `None` if there is no such delivery.
pub(super) fn attempts(
    conn: &Connection,
    id: DeliveryId,
) -> Result<Option<Vec<AttemptInfo>>, StoreError> {
    let known = conn
        .prepare_cached("SELECT 1 FROM deliveries WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |_| Ok(())).optional())
        .map_err(sql_error)?;
    if known.is_none() {
        return Ok(None);
    }
    let mut s = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM attempts WHERE delivery_id = ?1 ORDER BY number"
        ))
        .map_err(sql_error)?;
    let rows = s
        .query_map([id], attempt)
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(sql_error)?;
    Ok(Some(rows))
}

/// Sets each delivery's latest attempts (at most `RECENT_ATTEMPTS`, oldest first).
pub(super) fn attach_recent(
    conn: &Connection,
    deliveries: &mut [DeliveryInfo],
) -> Result<(), StoreError> {
    let mut s = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM attempts WHERE delivery_id = ?1
             ORDER BY number DESC LIMIT ?2"
        ))
        .map_err(sql_error)?;
    for d in deliveries.iter_mut() {
        let mut rows = s
            .query_map(params![d.id, RECENT_ATTEMPTS as i64], attempt)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(sql_error)?;
        rows.reverse();
        d.recent_attempts = Some(rows);
    }
    Ok(())
}
