//! How the store's types map to columns: delivery states as their codes, a raw event's
//! content type and attributes, and the delivery rows the status and dead-letter APIs show.

use std::sync::Arc;

use rusqlite::ToSql;
use rusqlite::types::{FromSql, FromSqlResult, ToSqlOutput, ValueRef};

use crate::event::RawMeta;
use crate::store::{DeliveryInfo, DeliveryState, attributes};

impl ToSql for DeliveryState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.code()))
    }
}

impl FromSql for DeliveryState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        i64::column_result(value).map(DeliveryState::from_code)
    }
}

/// A raw event's content type and attributes from columns `i` and `i + 1`; `None` (both
/// NULL) for an envelope event.
pub(super) fn raw_meta(
    row: &rusqlite::Row<'_>,
    i: usize,
) -> rusqlite::Result<Option<Arc<RawMeta>>> {
    Ok(attributes::raw_meta(row.get(i)?, row.get(i + 1)?))
}

/// The delivery columns `info` reads, of a delivery `d` joined to its event `e`.
pub(super) const INFO_COLUMNS: &str = "d.id, d.subscription, e.id, e.type, d.state, d.attempts, d.last_status, d.last_error, d.next_attempt_at, d.delivered_at, d.received_at, d.budget_used";

/// A `DeliveryInfo` from a row of `INFO_COLUMNS`.
pub(super) fn info(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryInfo> {
    let state: DeliveryState = row.get(4)?;
    Ok(DeliveryInfo {
        id: row.get(0)?,
        subscription: row.get(1)?,
        event_id: row.get(2)?,
        event_type: row.get(3)?,
        state,
        attempts: row.get(5)?,
        last_status: row.get(6)?,
        last_error: row.get(7)?,
        next_attempt_at_ms: if state == DeliveryState::Pending {
            row.get(8)?
        } else {
            None
        },
        delivered_at_ms: row.get(9)?,
        received_at_ms: row.get(10)?,
        budget_used: row.get(11)?,
        recent_attempts: None,
    })
}
