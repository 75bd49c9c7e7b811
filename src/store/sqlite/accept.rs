//! Accepting events: each event once (a repeated id answers with the first result), with
//! one delivery per matched subscription in the state its tombstone or ordering key gives.

use rusqlite::{Connection, params};

use super::retired::Retired;
use super::{ordering, sql_error};
use crate::store::{Accepted, Admission, DeliveryState, StoreError, attributes};

/// Stores a batch of events and their deliveries; `ttl_ms` is the default delivery ttl.
pub(super) fn accept(
    conn: &Connection,
    batch: &[Accepted],
    ttl_ms: i64,
    retired: &Retired,
) -> Result<Vec<Admission>, StoreError> {
    let retired = retired.lock();
    let mut insert_event = conn
        .prepare_cached(
            "INSERT INTO events (id, type, received_at, data, subscriptions, content_type, attributes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING",
        )
        .map_err(sql_error)?;
    let mut insert_delivery = conn
        .prepare_cached(
            "INSERT INTO deliveries (event_seq, subscription, state, received_at, next_attempt_at, expires_at, ordering_key)
             VALUES (?1, ?2, ?5, ?3, ?3, ?4, ?6)",
        )
        .map_err(sql_error)?;
    let mut key_busy = conn.prepare_cached(ordering::KEY_BUSY).map_err(sql_error)?;
    let mut original = conn
        .prepare_cached("SELECT subscriptions FROM events WHERE id = ?1")
        .map_err(sql_error)?;
    let mut out = Vec::with_capacity(batch.len());
    for a in batch {
        let names: Vec<&str> = a.subscriptions().map(|s| &**s).collect();
        let names_json = serde_json::to_string(&names).unwrap_or_else(|_| "[]".into());
        let e = &a.event;
        let (content_type, attributes) = match e.raw.as_deref() {
            None => (None, None),
            Some(raw) => (
                Some(raw.content_type.as_str()),
                attributes::to_json(&raw.attributes),
            ),
        };
        let inserted = insert_event
            .execute(params![
                e.id,
                e.event_type,
                e.received_at_ms,
                &e.data[..],
                names_json,
                content_type,
                attributes
            ])
            .map_err(sql_error)?;
        if inserted == 0 {
            let text: String = original
                .query_row([&e.id], |r| r.get(0))
                .map_err(sql_error)?;
            out.push(Admission::Duplicate {
                subscriptions: serde_json::from_str(&text).unwrap_or_default(),
            });
            continue;
        }
        let seq = conn.last_insert_rowid();
        let mut ids = Vec::with_capacity(a.deliveries.len());
        for d in &a.deliveries {
            let name = &*d.subscription;
            let retired_as = if retired.is_empty() {
                None
            } else {
                retired.get(name).copied()
            };
            let key = d.ordering_key.as_deref();
            // Ordered: behind an unfinished delivery of the same key, it waits.
            let behind = match key {
                Some(k) => key_busy
                    .query_row(params![name, k], |r| r.get::<_, bool>(0))
                    .map_err(sql_error)?,
                None => false,
            };
            let state = match retired_as {
                Some(state) => state,
                None if behind => DeliveryState::Waiting,
                None if d.handed_off => DeliveryState::InFlight,
                None => DeliveryState::Pending,
            };
            let expires = e.received_at_ms + d.ttl_ms.unwrap_or(ttl_ms);
            insert_delivery
                .execute(params![seq, name, e.received_at_ms, expires, state, key])
                .map_err(sql_error)?;
            let id = conn.last_insert_rowid();
            if state == DeliveryState::Cancelled {
                conn.prepare_cached("UPDATE deliveries SET finished_at = ?2 WHERE id = ?1")
                    .and_then(|mut s| s.execute(params![id, e.received_at_ms]))
                    .map_err(sql_error)?;
            }
            ids.push(id);
        }
        out.push(Admission::Stored(ids));
    }
    Ok(out)
}
