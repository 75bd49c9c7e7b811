//! How rows map to the store's types: delivery states as their codes, attempts and
//! statuses as integers, a raw event's metadata, and the delivery rows the status and
//! dead-letter APIs show.

use tokio_postgres::Row;

use crate::store::{DeliveryInfo, DeliveryState};

/// The delivery columns `info` reads, of a delivery `d` joined to its event `e`.
pub(super) const INFO_COLUMNS: &str = "d.id, d.subscription, e.id, e.type, d.state, d.attempts, d.last_status, d.last_error, d.next_attempt_at, d.delivered_at, d.received_at, d.budget_used";

/// A state from its stored code.
pub(super) fn state(code: i32) -> DeliveryState {
    DeliveryState::from_code(i64::from(code))
}

/// A `DeliveryInfo` from a row of `INFO_COLUMNS`.
pub(super) fn info(row: &Row) -> DeliveryInfo {
    let state = state(row.get(4));
    DeliveryInfo {
        id: row.get(0),
        subscription: row.get(1),
        event_id: row.get(2),
        event_type: row.get(3),
        state,
        attempts: row.get::<_, i32>(5) as u32,
        last_status: row.get::<_, Option<i32>>(6).map(|s| s as u16),
        last_error: row.get(7),
        next_attempt_at_ms: (state == DeliveryState::Pending).then(|| row.get(8)),
        delivered_at_ms: row.get(9),
        received_at_ms: row.get(10),
        budget_used: row.get::<_, i32>(11) as u32,
        recent_attempts: None,
    }
}
