//! How the HTTP API shows a delivery (JSON, with its OpenAPI schema). API types, not part of
//! the store's seam: they live here only until `api.rs` and `ingest.rs` import them elsewhere.

use super::{DeliveryId, DeliveryInfo, DeliveryState};
use crate::time::rfc3339;

impl DeliveryInfo {
    /// The API's view (times as RFC 3339).
    pub fn view(&self) -> DeliveryView<'_> {
        DeliveryView {
            event_id: &self.event_id,
            event_type: &self.event_type,
            received_at: rfc3339(self.received_at_ms),
            status: self.status(),
        }
    }

    /// Where it stands, without the event's fields (as an event's status lists it).
    pub fn status(&self) -> DeliveryStatus<'_> {
        DeliveryStatus {
            id: self.id,
            subscription: &self.subscription,
            state: self.state,
            attempts: self.attempts,
            last_status: self.last_status,
            last_error: self.last_error.as_deref(),
            next_attempt_at: self.next_attempt_at_ms.map(rfc3339),
            delivered_at: self.delivered_at_ms.map(rfc3339),
        }
    }
}

/// Where one delivery stands.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DeliveryStatus<'a> {
    /// Delivery id.
    #[schema(value_type = i64)]
    id: DeliveryId,
    /// Subscription name.
    #[schema(example = "billing")]
    subscription: &'a str,
    /// Its state.
    state: DeliveryState,
    /// Attempts made so far.
    attempts: u32,
    /// HTTP status of the last attempt, if it got one.
    #[schema(required = true, example = 204)]
    last_status: Option<u16>,
    /// Why the last attempt failed.
    #[schema(required = true)]
    last_error: Option<&'a str>,
    /// When the next attempt is due (RFC 3339, UTC); set only while `pending`.
    #[schema(required = true, format = DateTime)]
    next_attempt_at: Option<String>,
    /// When it was delivered (RFC 3339, UTC).
    #[schema(required = true, format = DateTime)]
    delivered_at: Option<String>,
}

/// A delivery as the dead-letter API lists it: where it stands, and its event.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Delivery)]
pub struct DeliveryView<'a> {
    /// Event id.
    event_id: &'a str,
    /// Event type.
    #[serde(rename = "type")]
    event_type: &'a str,
    /// When the event was accepted (RFC 3339, UTC).
    #[schema(format = DateTime)]
    received_at: String,
    #[serde(flatten)]
    status: DeliveryStatus<'a>,
}
