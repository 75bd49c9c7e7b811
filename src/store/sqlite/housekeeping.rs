//! Housekeeping: expires overdue deliveries and prunes terminal ones past retention, then
//! their events, in small batches so a pass never holds the writer long.

use std::sync::atomic::{AtomicI64, Ordering};

use rusqlite::{Connection, params};

use super::{ordering, sql_error};
use crate::store::{DeliveryState, Housekeeping, StoreError};

/// Rows changed per housekeeping statement, so pruning never holds the writer long.
const HOUSEKEEPING_BATCH: i64 = 1000;

/// One pass at `now_ms`: rows finished at or before `cutoff` are pruned; `cursor` is the
/// highest event `seq` the scan for events without deliveries has passed.
pub(super) fn housekeeping(
    conn: &Connection,
    now_ms: i64,
    cutoff: i64,
    cursor: &AtomicI64,
) -> Result<Housekeeping, StoreError> {
    let mut report = Housekeeping::default();
    let mut expire = conn
        .prepare_cached(concat!(
            "UPDATE deliveries SET state = ?1, finished_at = ?2
             WHERE id IN (SELECT id FROM deliveries INDEXED BY deliveries_expiry
                          WHERE state IN ",
            states!(Pending, Orphaned, Waiting),
            " AND expires_at <= ?2 LIMIT ?3)
             RETURNING subscription, ordering_key"
        ))
        .map_err(sql_error)?;
    let rows = expire
        .query_map(
            params![DeliveryState::Expired, now_ms, HOUSEKEEPING_BATCH],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)),
        )
        .map_err(sql_error)?;
    let mut keys = std::collections::HashSet::new();
    for row in rows {
        let (name, key) = row.map_err(sql_error)?;
        if let Some(key) = key {
            keys.insert((name.clone(), key));
        }
        *report.expired.entry(name).or_default() += 1;
    }
    // An expired head lets the next delivery of its key go.
    for (name, key) in keys {
        ordering::promote_next(conn, &name, &key)?;
    }
    // Terminal deliveries past retention with their attempts, then their events once
    // nothing refers to them: driven by what was deleted, so old events still in use are
    // not rescanned.
    let gone: Vec<(i64, i64)> = conn
        .prepare_cached(
            concat!("DELETE FROM deliveries WHERE id IN (SELECT id FROM deliveries INDEXED BY deliveries_finished
             WHERE state IN ", states!(Delivered, Failed, Expired, Cancelled), " AND finished_at <= ?1 LIMIT ?2) RETURNING id, event_seq"),
        )
        .and_then(|mut s| {
            s.query_map(params![cutoff, HOUSEKEEPING_BATCH], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()
        })
        .map_err(sql_error)?;
    let pruned = gone.len();
    let mut forget = conn
        .prepare_cached("DELETE FROM attempts WHERE delivery_id = ?1")
        .map_err(sql_error)?;
    let mut touched = Vec::with_capacity(gone.len());
    for (id, seq) in gone {
        forget.execute([id]).map_err(sql_error)?;
        touched.push(seq);
    }
    touched.sort_unstable();
    touched.dedup();
    // Events that never had a delivery (matched nothing) are found by a cursor over
    // `seq`, which follows acceptance order.
    let mut scan = conn
        .prepare_cached("SELECT seq, received_at FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")
        .map_err(sql_error)?;
    let mut last = cursor.load(Ordering::Relaxed);
    let rows: Vec<(i64, i64)> = scan
        .query_map(params![last, HOUSEKEEPING_BATCH], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .and_then(|rows| rows.collect())
        .map_err(sql_error)?;
    for (seq, received_at) in rows {
        if received_at > cutoff {
            break;
        }
        touched.push(seq);
        last = seq;
    }
    cursor.store(last, Ordering::Relaxed);
    let mut delete_event = conn
        .prepare_cached(
            "DELETE FROM events WHERE seq = ?1 AND received_at <= ?2
             AND NOT EXISTS (SELECT 1 FROM deliveries WHERE event_seq = ?1)",
        )
        .map_err(sql_error)?;
    let mut pruned_events = 0;
    for seq in touched {
        pruned_events += delete_event
            .execute(params![seq, cutoff])
            .map_err(sql_error)?;
    }
    report.pruned = (pruned + pruned_events) as u64;
    Ok(report)
}
