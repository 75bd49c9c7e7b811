//! Replay: new deliveries of stored events, pending now with a fresh budget and ttl, for
//! one event (to named subscriptions) or for every event of a time range that matched one
//! subscription (at most once per interval, on the release clock). The event row is shared,
//! so the receiver gets the same `webhook-id`. A tombstoned name gets its tombstone's
//! state, as at ingest.

use rusqlite::{Connection, OptionalExtension, params};

use super::dead_letters::take_clock;
use super::retired::Retired;
use super::sql_error;
use crate::store::{DeliveryState, Release, Replayed, StoreError, replay_scope_key, state_code};

/// `?1` event seq, `?2` subscription, `?3` state, `?4` now, `?5` expiry.
const INSERT: &str = concat!(
    "INSERT INTO deliveries (event_seq, subscription, state, received_at, next_attempt_at,
                             expires_at, finished_at)
     VALUES (?1, ?2, ?3, ?4, ?4, ?5, CASE WHEN ?3 = ",
    state_code!(Cancelled),
    " THEN ?4 END)"
);

/// The state a new delivery to `name` gets: its tombstone's, or pending.
fn state_for(retired: &Retired, name: &str) -> DeliveryState {
    retired
        .lock()
        .get(name)
        .copied()
        .unwrap_or(DeliveryState::Pending)
}

/// New deliveries of event `event_id`, one per name in `subscriptions`, in order.
pub(super) fn replay(
    conn: &Connection,
    event_id: &str,
    subscriptions: &[String],
    now_ms: i64,
    ttl_ms: i64,
    retired: &Retired,
) -> Result<Replayed, StoreError> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT seq FROM events WHERE id = ?1")
        .and_then(|mut s| s.query_row([event_id], |r| r.get(0)).optional())
        .map_err(sql_error)?;
    let Some(seq) = seq else {
        return Ok(Replayed::NoEvent);
    };
    let mut insert = conn.prepare_cached(INSERT).map_err(sql_error)?;
    let mut ids = Vec::with_capacity(subscriptions.len());
    for name in subscriptions {
        let state = state_for(retired, name);
        insert
            .execute(params![seq, name, state, now_ms, now_ms + ttl_ms])
            .map_err(sql_error)?;
        ids.push(conn.last_insert_rowid());
    }
    Ok(Replayed::Queued(ids))
}

/// New deliveries to `name` of every event received in `[from_ms, to_ms)` that matched it,
/// unless its replay clock moved less than `min_interval_ms` ago.
#[allow(clippy::too_many_arguments)]
pub(super) fn replay_range(
    conn: &Connection,
    name: &str,
    from_ms: i64,
    to_ms: i64,
    now_ms: i64,
    min_interval_ms: i64,
    ttl_ms: i64,
    retired: &Retired,
) -> Result<Release, StoreError> {
    let key = replay_scope_key(name);
    if let Some(next_allowed_ms) = take_clock(conn, &key, now_ms, min_interval_ms)? {
        return Ok(Release::TooSoon { next_allowed_ms });
    }
    let state = state_for(retired, name);
    // Through `events_received`; the names an event matched are its `subscriptions`.
    let queued = conn
        .execute(
            concat!(
                "INSERT INTO deliveries (event_seq, subscription, state, received_at,
                                         next_attempt_at, expires_at, finished_at)
                 SELECT seq, ?1, ?2, ?3, ?3, ?4, CASE WHEN ?2 = ",
                state_code!(Cancelled),
                " THEN ?3 END
                 FROM events INDEXED BY events_received
                 WHERE received_at >= ?5 AND received_at < ?6
                   AND EXISTS (SELECT 1 FROM json_each(events.subscriptions) WHERE value = ?1)
                 ORDER BY seq"
            ),
            params![name, state, now_ms, now_ms + ttl_ms, from_ms, to_ms],
        )
        .map_err(sql_error)?;
    Ok(Release::Released(queued as u64))
}
