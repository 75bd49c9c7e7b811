//! Claiming due deliveries for their pump (pending -> in flight), when the next one is due,
//! and handing back claims that were never attempted. Outcomes are recorded in `outcomes`.

use std::sync::Arc;

use bytes::Bytes;
use rusqlite::{Connection, params};

use super::rows::raw_meta;
use super::sql_error;
use crate::store::{Delivery, DeliveryId, StoreError, state_code};

/// `?1` subscription, `?2` now, `?3` limit: due deliveries, oldest due first (through
/// `deliveries_due`).
pub(super) const CLAIM_DUE: &str = concat!(
    "SELECT d.id, d.attempts, e.id, e.type, e.data, e.received_at, e.content_type, e.attributes,
            d.budget_used
     FROM deliveries d JOIN events e ON e.seq = d.event_seq
     WHERE d.subscription = ?1 AND d.state = ",
    state_code!(Pending),
    " AND d.next_attempt_at <= ?2
       AND d.expires_at > ?2
     ORDER BY d.next_attempt_at, d.id LIMIT ?3"
);

/// `?1` subscription: when its next pending delivery is due (through `deliveries_due`).
pub(super) const NEXT_DUE: &str = concat!(
    "SELECT min(next_attempt_at) FROM deliveries WHERE subscription = ?1 AND state = ",
    state_code!(Pending)
);

/// Claims up to `limit` deliveries of `sub` due at `now_ms`.
pub(super) fn claim_due(
    conn: &Connection,
    sub: &str,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<Delivery>, StoreError> {
    let mut select = conn.prepare_cached(CLAIM_DUE).map_err(sql_error)?;
    let name: Arc<str> = Arc::from(sub);
    let claimed: Vec<Delivery> = select
        .query_map(params![sub, now_ms, limit as i64], |r| {
            Ok(Delivery {
                id: r.get(0)?,
                attempts: r.get(1)?,
                budget_used: r.get(8)?,
                event_id: Arc::from(r.get::<_, String>(2)?),
                event_type: Arc::from(r.get::<_, String>(3)?),
                data: Bytes::from(r.get::<_, Vec<u8>>(4)?),
                received_at_ms: r.get(5)?,
                raw: raw_meta(r, 6)?,
                subscription: name.clone(),
                token: 0,
            })
        })
        .map_err(sql_error)?
        .collect::<Result<_, _>>()
        .map_err(sql_error)?;
    let mut mark = conn
        .prepare_cached(concat!(
            "UPDATE deliveries SET state = ",
            state_code!(InFlight),
            " WHERE id = ?1"
        ))
        .map_err(sql_error)?;
    for d in &claimed {
        mark.execute([d.id]).map_err(sql_error)?;
    }
    Ok(claimed)
}

/// When the next pending delivery of `sub` is due, if any.
pub(super) fn next_due_ms(conn: &Connection, sub: &str) -> Result<Option<i64>, StoreError> {
    conn.prepare_cached(NEXT_DUE)
        .and_then(|mut s| s.query_row([sub], |r| r.get(0)))
        .map_err(sql_error)
}

/// Returns claimed deliveries that were never attempted to pending.
pub(super) fn unclaim(conn: &Connection, ids: &[DeliveryId]) -> Result<(), StoreError> {
    let mut s = conn
        .prepare_cached(concat!(
            "UPDATE deliveries SET state = ",
            state_code!(Pending),
            " WHERE id = ?1 AND state = ",
            state_code!(InFlight)
        ))
        .map_err(sql_error)?;
    for id in ids {
        s.execute([id]).map_err(sql_error)?;
    }
    Ok(())
}
