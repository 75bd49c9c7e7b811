//! Pull subscriptions: consumers take their oldest available notifications, consumed at
//! once (`ack: auto`) or hidden until acknowledged (`ack: explicit`). `SKIP LOCKED` keeps
//! concurrent pulls from handing out the same notification.

use std::collections::HashMap;

use bytes::Bytes;
use tokio_postgres::types::Type;

use super::db::Db;
use crate::store::{
    DeliveryId, Notification, PullMode, Pulled, StoreError, attributes, state_code,
};

/// `$1` subscription, `$2` now, `$3` limit, `$4` the new due time: the oldest available,
/// taken (`$5` true: delivered) or hidden until `$4`, with their events.
const TAKE: &str = concat!(
    "WITH picked AS (
    SELECT id FROM {s}.deliveries
    WHERE subscription = $1 AND state = ",
    state_code!(Pending),
    " AND next_attempt_at <= $2 AND expires_at > $2
    ORDER BY id LIMIT $3
    FOR UPDATE SKIP LOCKED
), taken AS (
    UPDATE {s}.deliveries d SET attempts = d.attempts + 1, budget_used = d.budget_used + 1,
        state = CASE WHEN $5 THEN ",
    state_code!(Delivered),
    " ELSE d.state END,
        next_attempt_at = CASE WHEN $5 THEN d.next_attempt_at ELSE $4 END,
        delivered_at = CASE WHEN $5 THEN $4 END,
        finished_at = CASE WHEN $5 THEN $4 END
    FROM picked WHERE d.id = picked.id
    RETURNING d.id, d.budget_used, d.event_seq
)
SELECT t.id, e.id, e.type, e.received_at, e.data, t.budget_used, e.content_type, e.attributes
FROM taken t JOIN {s}.events e ON e.seq = t.event_seq
ORDER BY t.id"
);

/// Takes up to `limit` of the oldest available notifications of `subscription`.
pub(super) async fn pull(
    db: &Db,
    subscription: &str,
    now_ms: i64,
    limit: usize,
    mode: PullMode,
) -> Result<Pulled, StoreError> {
    let (consume, at) = match mode {
        PullMode::Consume => (true, now_ms),
        PullMode::Hide(ms) => (false, now_ms + ms),
    };
    let conn = db.conn().await?;
    let session = db.session(&conn);
    let rows = session
        .query_in_order(
            &db.sql(TAKE),
            &[
                (&subscription, Type::TEXT),
                (&now_ms, Type::INT8),
                (&(limit as i64), Type::INT8),
                (&at, Type::INT8),
                (&consume, Type::BOOL),
            ],
        )
        .await
        .map_err(|e| db.err(e))?;
    let notifications = rows
        .iter()
        .map(|r| Notification {
            id: r.get(0),
            event_id: r.get(1),
            event_type: r.get(2),
            received_at_ms: r.get(3),
            data: Bytes::copy_from_slice(r.get::<_, &[u8]>(4)),
            // Counted with this pull: more than one means it was handed out before.
            redelivered: r.get::<_, i32>(5) > 1,
            raw: attributes::raw_meta(r.get(6), r.get(7)),
        })
        .collect();
    let left = session
        .query(
            &db.sql(concat!(
                "SELECT count(*) FILTER (WHERE next_attempt_at <= $2 AND expires_at > $2),
                        min(next_attempt_at) FILTER (WHERE next_attempt_at > $2)
                 FROM {s}.deliveries WHERE subscription = $1 AND state = ",
                state_code!(Pending)
            )),
            &[(&subscription, Type::TEXT), (&now_ms, Type::INT8)],
        )
        .await
        .map_err(|e| db.err(e))?;
    let left = left
        .first()
        .ok_or_else(|| StoreError::unavailable("an aggregate returned no row"))?;
    Ok(Pulled {
        notifications,
        remaining: left.get::<_, i64>(0) as u64,
        next_visible_ms: left.get(1),
    })
}

/// Acknowledges pulled notifications; returns the ids that were not waiting for one.
pub(super) async fn ack(
    db: &Db,
    subscription: &str,
    ids: &[DeliveryId],
    now_ms: i64,
) -> Result<Vec<DeliveryId>, StoreError> {
    let conn = db.conn().await?;
    let rows = db
        .session(&conn)
        .query(
            &db.sql(concat!(
                "UPDATE {s}.deliveries SET state = ",
                state_code!(Delivered),
                ", delivered_at = $3, finished_at = $3
                 WHERE id = ANY($1) AND subscription = $2 AND state = ",
                state_code!(Pending),
                " AND budget_used > 0 RETURNING id"
            )),
            &[
                (&ids, Type::INT8_ARRAY),
                (&subscription, Type::TEXT),
                (&now_ms, Type::INT8),
            ],
        )
        .await
        .map_err(|e| db.err(e))?;
    // Each acknowledged id counts once: a repeat in the list is reported like an unknown one.
    let mut acked: HashMap<DeliveryId, bool> = rows.iter().map(|r| (r.get(0), true)).collect();
    Ok(ids
        .iter()
        .filter(|id| !acked.get_mut(id).is_some_and(std::mem::take))
        .copied()
        .collect())
}
