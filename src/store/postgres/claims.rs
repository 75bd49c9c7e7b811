//! Claiming due deliveries for their pump (pending -> in flight) in one statement, when the
//! next one is due, and handing back claims that were never attempted. `SKIP LOCKED`: a
//! row another transaction is changing is left to it.

use std::sync::Arc;

use bytes::Bytes;
use tokio_postgres::types::Type;

use super::db::Db;
use crate::store::{Delivery, DeliveryId, StoreError, attributes, state_code};

/// `$1` subscription, `$2` now, `$3` limit: due deliveries (through `deliveries_due`),
/// marked in flight and returned with their events.
const CLAIM_DUE: &str = concat!(
    "WITH due AS (
    SELECT id FROM {s}.deliveries
    WHERE subscription = $1 AND state = ",
    state_code!(Pending),
    " AND next_attempt_at <= $2 AND expires_at > $2
    ORDER BY next_attempt_at, id LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE {s}.deliveries d SET state = ",
    state_code!(InFlight),
    "
FROM due, {s}.events e
WHERE d.id = due.id AND e.seq = d.event_seq
RETURNING d.id, d.attempts, e.id, e.type, e.data, e.received_at, e.content_type, e.attributes,
          d.next_attempt_at"
);

/// Claims up to `limit` deliveries of `sub` due at `now_ms`, oldest due first.
pub(super) async fn claim_due(
    db: &Db,
    sub: &str,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<Delivery>, StoreError> {
    let conn = db.conn().await?;
    let rows = db
        .session(&conn)
        .query(
            &db.sql(CLAIM_DUE),
            &[
                (&sub, Type::TEXT),
                (&now_ms, Type::INT8),
                (&(limit as i64), Type::INT8),
            ],
        )
        .await
        .map_err(|e| db.err(e))?;
    let name: Arc<str> = Arc::from(sub);
    let mut claimed: Vec<(i64, Delivery)> = rows
        .iter()
        .map(|r| {
            let delivery = Delivery {
                id: r.get(0),
                attempts: r.get::<_, i32>(1) as u32,
                event_id: Arc::from(r.get::<_, &str>(2)),
                event_type: Arc::from(r.get::<_, &str>(3)),
                data: Bytes::copy_from_slice(r.get::<_, &[u8]>(4)),
                received_at_ms: r.get(5),
                raw: attributes::raw_meta(r.get(6), r.get(7)),
                subscription: name.clone(),
            };
            (r.get(8), delivery)
        })
        .collect();
    // RETURNING keeps no order.
    claimed.sort_by_key(|(due, d)| (*due, d.id));
    Ok(claimed.into_iter().map(|(_, d)| d).collect())
}

/// When the next pending delivery of `sub` is due, if any.
pub(super) async fn next_due_ms(db: &Db, sub: &str) -> Result<Option<i64>, StoreError> {
    let conn = db.conn().await?;
    let rows = db
        .session(&conn)
        .query(
            &db.sql(concat!(
                "SELECT min(next_attempt_at) FROM {s}.deliveries WHERE subscription = $1 AND state = ",
                state_code!(Pending)
            )),
            &[(&sub, Type::TEXT)],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok(rows.first().and_then(|row| row.get(0)))
}

/// Returns claimed deliveries that were never attempted to pending.
pub(super) async fn unclaim(db: &Db, ids: &[DeliveryId]) -> Result<(), StoreError> {
    let conn = db.conn().await?;
    db.session(&conn)
        .query(
            &db.sql(concat!(
                "UPDATE {s}.deliveries SET state = ",
                state_code!(Pending),
                " WHERE id = ANY($1) AND state = ",
                state_code!(InFlight)
            )),
            &[(&ids, Type::INT8_ARRAY)],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok(())
}
