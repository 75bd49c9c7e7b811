//! How the HTTP API shows a delivery (JSON, with its OpenAPI schema). API types, not part of
//! the store's seam: they live here only until `api.rs` and `ingest.rs` import them elsewhere.

use super::{AttemptInfo, DeliveryId, DeliveryInfo, DeliveryState};
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
            budget_used: self.budget_used,
            recent_attempts: self
                .recent_attempts
                .as_ref()
                .map(|all| all.iter().map(AttemptInfo::view).collect()),
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
    /// Attempts made so far, ever (a release or retry does not reset it).
    attempts: u32,
    /// Attempts counted against the retry budget: since the delivery was created, released,
    /// retried or replayed. Retries left: the subscription's `retries` + 1 - `budget_used`.
    budget_used: u32,
    /// In an event's status only: the delivery's latest attempts (at most 5, oldest first);
    /// all of them at `GET /v1/deliveries/{id}/attempts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, nullable = false)]
    recent_attempts: Option<Vec<AttemptView<'a>>>,
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

impl AttemptInfo {
    /// The API's view (times as RFC 3339, the duration in ms).
    pub fn view(&self) -> AttemptView<'_> {
        AttemptView {
            number: self.number,
            at: rfc3339(self.at_ms),
            duration_ms: self.duration_us as f64 / 1000.0,
            status: self.status,
            result: &self.result,
            error: self.error.as_deref(),
        }
    }
}

/// One attempt of a delivery, from its history.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Attempt)]
pub struct AttemptView<'a> {
    /// Its number among the delivery's attempts, from 1 (never reset).
    number: u32,
    /// When it was sent (RFC 3339, UTC).
    #[schema(format = DateTime, example = "2026-11-22T20:58:50.730Z")]
    at: String,
    /// How long it took, from sending to the verdict, in milliseconds (µs precision).
    #[schema(example = 12.345)]
    duration_ms: f64,
    /// The status the receiver answered (the SMTP reply code for mail), if any.
    #[schema(required = true, example = 503)]
    status: Option<u16>,
    /// The `result` label of `hookrelay_delivery_attempts_total`: `success`, `http_error`,
    /// `smtp_error`, `timeout`, `auth_error` or `connect_error`.
    #[schema(example = "http_error")]
    result: &'a str,
    /// Why it failed (short, free of secrets); `null` when delivered.
    #[schema(required = true, example = "HTTP 503 Service Unavailable")]
    error: Option<&'a str>,
}
