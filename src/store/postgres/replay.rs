//! Replay: new deliveries of stored events, pending now with a fresh budget and ttl, for
//! one event (to named subscriptions) or for every event of a time range that matched one
//! subscription (at most once per interval, on the release clock). The event row is shared,
//! so the receiver gets the same `webhook-id`. Under the retire lock, shared as ingest takes
//! it, a tombstoned name gets its tombstone's state.

use std::collections::HashMap;

use tokio_postgres::types::Type;

use super::db::{Db, locks};
use super::dead_letters::take_clock;
use crate::store::{DeliveryId, Release, Replayed, StoreError, replay_scope_key, state_code};

/// The retire lock, shared (`$1` class, `$2` schema).
const RETIRE_SHARED: &str = "SELECT pg_advisory_xact_lock_shared($1, hashtext($2))";

/// `$1` event id, `$2` names, `$3` now, `$4` expiry: kind 0 the event's seq (none if it is
/// unknown), kind 1 each new delivery (id, subscription).
const REPLAY: &str = concat!(
    "WITH ev AS (
    SELECT seq FROM {s}.events WHERE id = $1
), ins AS (
    INSERT INTO {s}.deliveries (event_seq, subscription, state, received_at, next_attempt_at,
                                expires_at, finished_at)
    SELECT ev.seq, n.name, coalesce(t.state, ",
    state_code!(Pending),
    "), $3, $3, $4,
           CASE WHEN t.state = ",
    state_code!(Cancelled),
    " THEN $3 END
    FROM ev CROSS JOIN unnest($2::text[]) WITH ORDINALITY AS n(name, ord)
    LEFT JOIN {s}.tombstones t ON t.name = n.name
    ORDER BY n.ord
    RETURNING id, subscription
)
SELECT 0, seq, NULL::text FROM ev
UNION ALL SELECT 1, id, subscription FROM ins"
);

/// `$1` name, `$2` now, `$3` expiry, `$4` from, `$5` to. A scan of `events` (no index on
/// `received_at`, which would cost every ingest): a bulk replay is rare and rate-limited.
const REPLAY_RANGE: &str = concat!(
    "INSERT INTO {s}.deliveries (event_seq, subscription, state, received_at, next_attempt_at,
                            expires_at, finished_at)
SELECT e.seq, $1, coalesce(t.state, ",
    state_code!(Pending),
    "), $2, $2, $3,
       CASE WHEN t.state = ",
    state_code!(Cancelled),
    " THEN $2 END
FROM {s}.events e LEFT JOIN {s}.tombstones t ON t.name = $1
WHERE e.received_at >= $4 AND e.received_at < $5 AND e.subscriptions::jsonb ? $1
ORDER BY e.seq"
);

/// New deliveries of event `event_id`, one per name in `subscriptions`, in order.
pub(super) async fn replay(
    db: &Db,
    event_id: &str,
    subscriptions: &[String],
    now_ms: i64,
    ttl_ms: i64,
) -> Result<Replayed, StoreError> {
    let mut conn = db.conn().await?;
    let tx = conn.transaction().await.map_err(|e| db.err(e))?;
    tx.query_typed(
        RETIRE_SHARED,
        &[(&locks::RETIRE, Type::INT4), (&db.schema, Type::TEXT)],
    )
    .await
    .map_err(|e| db.err(e))?;
    let rows = tx
        .query_typed(
            &db.sql(REPLAY),
            &[
                (&event_id, Type::TEXT),
                (&subscriptions, Type::TEXT_ARRAY),
                (&now_ms, Type::INT8),
                (&(now_ms + ttl_ms), Type::INT8),
            ],
        )
        .await
        .map_err(|e| db.err(e))?;
    tx.commit().await.map_err(|e| db.err(e))?;
    if !rows.iter().any(|r| r.get::<_, i32>(0) == 0) {
        return Ok(Replayed::NoEvent);
    }
    // RETURNING keeps no order; the names are distinct.
    let by_name: HashMap<String, DeliveryId> = rows
        .iter()
        .filter(|r| r.get::<_, i32>(0) == 1)
        .map(|r| (r.get(2), r.get(1)))
        .collect();
    let ids = subscriptions
        .iter()
        .map(|n| by_name.get(n).copied())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| StoreError::unavailable("a replayed delivery went missing"))?;
    Ok(Replayed::Queued(ids))
}

/// New deliveries to `name` of every event received in `[from_ms, to_ms)` that matched it,
/// unless its replay clock moved less than `min_interval_ms` ago.
pub(super) async fn replay_range(
    db: &Db,
    name: &str,
    (from_ms, to_ms): (i64, i64),
    now_ms: i64,
    min_interval_ms: i64,
    ttl_ms: i64,
) -> Result<Release, StoreError> {
    let mut conn = db.conn().await?;
    let tx = conn.transaction().await.map_err(|e| db.err(e))?;
    let key = replay_scope_key(name);
    if let Some(next_allowed_ms) = take_clock(db, &tx, &key, now_ms, min_interval_ms).await? {
        return Ok(Release::TooSoon { next_allowed_ms });
    }
    tx.query_typed(
        RETIRE_SHARED,
        &[(&locks::RETIRE, Type::INT4), (&db.schema, Type::TEXT)],
    )
    .await
    .map_err(|e| db.err(e))?;
    let queued = tx
        .execute_typed(
            &db.sql(REPLAY_RANGE),
            &[
                (&name, Type::TEXT),
                (&now_ms, Type::INT8),
                (&(now_ms + ttl_ms), Type::INT8),
                (&from_ms, Type::INT8),
                (&to_ms, Type::INT8),
            ],
        )
        .await
        .map_err(|e| db.err(e))?;
    tx.commit().await.map_err(|e| db.err(e))?;
    Ok(Release::Released(queued))
}
