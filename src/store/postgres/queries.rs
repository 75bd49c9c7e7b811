//! Read-only queries: per-subscription queue figures, an event's status, and pages of
//! deliveries by state. Each is one statement on a pooled connection.

use std::collections::HashMap;

use tokio_postgres::types::Type;

use super::db::Db;
use super::history;
use super::rows::{INFO_COLUMNS, info};
use crate::store::{
    DeliveryInfo, DeliveryQuery, EventStatus, QueueStats, StoreError, attributes, state_code,
};

/// Per-subscription queue figures, for gauges and `GET /v1/queue`.
pub(super) async fn stats(db: &Db) -> Result<HashMap<String, QueueStats>, StoreError> {
    let conn = db.conn().await?;
    let rows = conn
        .query_typed(
            &db.sql(concat!(
                "SELECT subscription,
                    count(*) FILTER (WHERE state IN ",
                states!(Pending, InFlight, Waiting),
                "),
                    count(*) FILTER (WHERE state = ",
                state_code!(InFlight),
                "),
                    min(received_at) FILTER (WHERE state IN ",
                states!(Pending, InFlight, Waiting),
                "),
                    count(*) FILTER (WHERE state = ",
                state_code!(Failed),
                "),
                    count(*) FILTER (WHERE state = ",
                state_code!(Orphaned),
                ")
                 FROM {s}.deliveries WHERE state IN ",
                states!(Pending, InFlight, Waiting, Failed, Orphaned),
                " GROUP BY subscription"
            )),
            &[],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok(rows
        .iter()
        .map(|r| {
            let stats = QueueStats {
                depth: r.get::<_, i64>(1) as u64,
                in_flight: r.get::<_, i64>(2) as u64,
                oldest_ms: r.get(3),
                dead_letters: r.get::<_, i64>(4) as u64,
                orphaned: r.get::<_, i64>(5) as u64,
            };
            (r.get(0), stats)
        })
        .collect())
}

/// An event and its deliveries, unless unknown or pruned.
pub(super) async fn event_status(db: &Db, id: &str) -> Result<Option<EventStatus>, StoreError> {
    let conn = db.conn().await?;
    let Some(head) = conn
        .query_typed_opt(
            &db.sql(
                "SELECT seq, type, received_at, content_type, attributes FROM {s}.events WHERE id = $1",
            ),
            &[(&id, Type::TEXT)],
        )
        .await
        .map_err(|e| db.err(e))?
    else {
        return Ok(None);
    };
    let seq: i64 = head.get(0);
    let rows = conn
        .query_typed(
            &db.sql(&format!(
                "SELECT {INFO_COLUMNS} FROM {{s}}.deliveries d JOIN {{s}}.events e ON e.seq = d.event_seq
                 WHERE d.event_seq = $1 ORDER BY d.id"
            )),
            &[(&seq, Type::INT8)],
        )
        .await
        .map_err(|e| db.err(e))?;
    let mut deliveries: Vec<_> = rows.iter().map(info).collect();
    history::attach_recent(db, &conn, &mut deliveries).await?;
    Ok(Some(EventStatus {
        id: id.to_string(),
        event_type: head.get(1),
        received_at_ms: head.get(2),
        raw: attributes::raw_meta(head.get(3), head.get(4)),
        deliveries,
    }))
}

/// One page of deliveries, oldest first.
pub(super) async fn deliveries(
    db: &Db,
    q: &DeliveryQuery,
) -> Result<Vec<DeliveryInfo>, StoreError> {
    let conn = db.conn().await?;
    let rows = conn
        .query_typed(
            &db.sql(&format!(
                "SELECT {INFO_COLUMNS} FROM {{s}}.deliveries d JOIN {{s}}.events e ON e.seq = d.event_seq
                 WHERE d.state = $1 AND ($2::text IS NULL OR d.subscription = $2) AND d.id > $3
                 ORDER BY d.id LIMIT $4"
            )),
            &[
                (&(q.state.code() as i32), Type::INT4),
                (&q.subscription, Type::TEXT),
                (&q.after.unwrap_or(0), Type::INT8),
                (&(q.limit as i64), Type::INT8),
            ],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok(rows.iter().map(info).collect())
}
