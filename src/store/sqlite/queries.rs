//! Read-only queries: per-subscription queue figures, an event's status (with each
//! delivery's latest attempts), and pages of deliveries by state. They run on the read connection, never delaying a commit.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::rows::{INFO_COLUMNS, info, raw_meta};
use super::{history, sql_error};
use crate::store::{DeliveryInfo, DeliveryQuery, EventStatus, QueueStats, StoreError, state_code};

/// Per-subscription queue figures, for gauges and `GET /v1/queue`.
pub(super) fn stats(conn: &Connection) -> Result<HashMap<String, QueueStats>, StoreError> {
    let mut out: HashMap<String, QueueStats> = HashMap::new();
    let mut live = conn
        .prepare_cached(concat!(
            "SELECT subscription, count(*), count(*) FILTER (WHERE state = ",
            state_code!(InFlight),
            "), min(received_at) FROM deliveries
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
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })
        .map_err(sql_error)?;
    for row in rows {
        let (name, depth, in_flight, oldest) = row.map_err(sql_error)?;
        let e = out.entry(name).or_default();
        e.depth = depth as u64;
        e.in_flight = in_flight as u64;
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
}

/// An event and its deliveries, unless unknown or pruned.
pub(super) fn event_status(conn: &Connection, id: &str) -> Result<Option<EventStatus>, StoreError> {
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
    let mut deliveries: Vec<DeliveryInfo> = s
        .query_map([seq], info)
        .map_err(sql_error)?
        .collect::<Result<_, _>>()
        .map_err(sql_error)?;
    history::attach_recent(conn, &mut deliveries)?;
    Ok(Some(EventStatus {
        id: id.to_string(),
        event_type,
        received_at_ms,
        raw,
        deliveries,
    }))
}

/// One page of deliveries, oldest first.
pub(super) fn deliveries(
    conn: &Connection,
    q: &DeliveryQuery,
) -> Result<Vec<DeliveryInfo>, StoreError> {
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
}
