//! Pull subscriptions: consumers take their oldest available notifications, consumed at
//! once (`ack: auto`) or hidden until acknowledged (`ack: explicit`).

use bytes::Bytes;
use rusqlite::{Connection, params};

use super::rows::raw_meta;
use super::sql_error;
use crate::store::{DeliveryId, Notification, PullMode, Pulled, StoreError, state_code};

/// `?1` subscription, `?2` now: how many are available (through `deliveries_due`).
pub(super) const REMAINING: &str = concat!(
    "SELECT count(*) FROM deliveries
     WHERE subscription = ?1 AND state = ",
    state_code!(Pending),
    " AND next_attempt_at <= ?2
       AND expires_at > ?2"
);

/// `?1` subscription, `?2` now: when the next hidden one is visible again (through
/// `deliveries_due`).
pub(super) const NEXT_VISIBLE: &str = concat!(
    "SELECT min(next_attempt_at) FROM deliveries
     WHERE subscription = ?1 AND state = ",
    state_code!(Pending),
    " AND next_attempt_at > ?2"
);

/// Takes up to `limit` of the oldest available notifications of `subscription`.
pub(super) fn pull(
    conn: &Connection,
    subscription: &str,
    now_ms: i64,
    limit: usize,
    mode: PullMode,
) -> Result<Pulled, StoreError> {
    let mut select = conn
        .prepare_cached(
            // INDEXED BY: without statistics the planner prefers the due-time
            // index, reading and sorting the whole backlog to return its head.
            concat!("SELECT d.id, e.id, e.type, e.received_at, e.data, d.budget_used, e.content_type, e.attributes
             FROM deliveries d INDEXED BY deliveries_fifo
             JOIN events e ON e.seq = d.event_seq
             WHERE d.subscription = ?1 AND d.state = ", state_code!(Pending), " AND d.next_attempt_at <= ?2
               AND d.expires_at > ?2
             ORDER BY d.id LIMIT ?3"),
        )
        .map_err(sql_error)?;
    let notifications = select
        .query_map(params![subscription, now_ms, limit as i64], |r| {
            Ok(Notification {
                id: r.get(0)?,
                event_id: r.get(1)?,
                event_type: r.get(2)?,
                received_at_ms: r.get(3)?,
                data: Bytes::from(r.get::<_, Vec<u8>>(4)?),
                redelivered: r.get::<_, i64>(5)? > 0,
                raw: raw_meta(r, 6)?,
            })
        })
        .map_err(sql_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql_error)?;
    let mut update = match mode {
        PullMode::Consume => conn.prepare_cached(concat!(
            "UPDATE deliveries SET state = ",
            state_code!(Delivered),
            ", attempts = attempts + 1, budget_used = budget_used + 1,
             delivered_at = ?2, finished_at = ?2 WHERE id = ?1",
        )),
        PullMode::Hide(_) => conn.prepare_cached(
            "UPDATE deliveries SET attempts = attempts + 1, budget_used = budget_used + 1,
             next_attempt_at = ?2
             WHERE id = ?1",
        ),
    }
    .map_err(sql_error)?;
    let at = match mode {
        PullMode::Consume => now_ms,
        PullMode::Hide(ms) => now_ms + ms,
    };
    for n in &notifications {
        update.execute(params![n.id, at]).map_err(sql_error)?;
    }
    let remaining: i64 = conn
        .prepare_cached(REMAINING)
        .and_then(|mut s| s.query_row(params![subscription, now_ms], |r| r.get(0)))
        .map_err(sql_error)?;
    let next_visible_ms: Option<i64> = conn
        .prepare_cached(NEXT_VISIBLE)
        .and_then(|mut s| s.query_row(params![subscription, now_ms], |r| r.get(0)))
        .map_err(sql_error)?;
    Ok(Pulled {
        notifications,
        remaining: remaining as u64,
        next_visible_ms,
    })
}

/// Acknowledges pulled notifications; returns the ids that were not waiting for one.
pub(super) fn ack(
    conn: &Connection,
    subscription: &str,
    ids: &[DeliveryId],
    now_ms: i64,
) -> Result<Vec<DeliveryId>, StoreError> {
    let mut update = conn
        .prepare_cached(concat!(
            "UPDATE deliveries SET state = ",
            state_code!(Delivered),
            ", delivered_at = ?3, finished_at = ?3
             WHERE id = ?1 AND subscription = ?2 AND state = ",
            state_code!(Pending),
            " AND budget_used > 0"
        ))
        .map_err(sql_error)?;
    let mut unknown = Vec::new();
    for id in ids {
        if update
            .execute(params![id, subscription, now_ms])
            .map_err(sql_error)?
            == 0
        {
            unknown.push(*id);
        }
    }
    Ok(unknown)
}
