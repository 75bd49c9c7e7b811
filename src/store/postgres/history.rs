//! Attempt history: a delivery's attempts (written with their outcomes, by the statement
//! in `outcomes`), and the latest few of each delivery of an event, for its status.

use std::collections::HashMap;

use tokio_postgres::Row;
use tokio_postgres::types::Type;

use super::db::Db;
use crate::store::{AttemptInfo, DeliveryId, DeliveryInfo, RECENT_ATTEMPTS, StoreError};

/// An attempt from `number, at, duration_us, status, result, error` at columns `i..`.
fn attempt(r: &Row, i: usize) -> AttemptInfo {
    AttemptInfo {
        number: r.get::<_, i32>(i) as u32,
        at_ms: r.get(i + 1),
        duration_us: r.get(i + 2),
        status: r.get::<_, Option<i32>>(i + 3).map(|s| s as u16),
        result: r.get(i + 4),
        error: r.get(i + 5),
    }
}

/// The attempts of delivery `id`, oldest first; `None` if there is no such delivery.
pub(super) async fn attempts(
    db: &Db,
    id: DeliveryId,
) -> Result<Option<Vec<AttemptInfo>>, StoreError> {
    let conn = db.conn().await?;
    // One statement: the delivery's row (if any) and its attempts.
    let rows = conn
        .query_typed(
            &db.sql(
                "SELECT a.number, a.at, a.duration_us, a.status, a.result, a.error
                 FROM {s}.deliveries d
                 LEFT JOIN {s}.attempts a ON a.delivery_id = d.id
                 WHERE d.id = $1 ORDER BY a.number",
            ),
            &[(&id, Type::INT8)],
        )
        .await
        .map_err(|e| db.err(e))?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        rows.iter()
            .filter(|r| r.get::<_, Option<i32>>(0).is_some())
            .map(|r| attempt(r, 0))
            .collect(),
    ))
}

/// Sets each delivery's latest attempts (at most `RECENT_ATTEMPTS`, oldest first).
pub(super) async fn attach_recent(
    db: &Db,
    conn: &tokio_postgres::Client,
    deliveries: &mut [DeliveryInfo],
) -> Result<(), StoreError> {
    let ids: Vec<DeliveryId> = deliveries.iter().map(|d| d.id).collect();
    let rows = conn
        .query_typed(
            &db.sql(
                "SELECT d.id, a.number, a.at, a.duration_us, a.status, a.result, a.error
                 FROM unnest($1::int8[]) AS d(id)
                 CROSS JOIN LATERAL (
                    SELECT * FROM {s}.attempts WHERE delivery_id = d.id
                    ORDER BY number DESC LIMIT $2
                 ) a
                 ORDER BY d.id, a.number",
            ),
            &[
                (&ids, Type::INT8_ARRAY),
                (&(RECENT_ATTEMPTS as i64), Type::INT8),
            ],
        )
        .await
        .map_err(|e| db.err(e))?;
    let mut recent: HashMap<DeliveryId, Vec<AttemptInfo>> = HashMap::new();
    for r in &rows {
        recent.entry(r.get(0)).or_default().push(attempt(r, 1));
    }
    for d in deliveries {
        d.recent_attempts = Some(recent.remove(&d.id).unwrap_or_default());
    }
    Ok(())
}
